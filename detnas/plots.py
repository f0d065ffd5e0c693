"""Plots a person would rather look at than read: training curves, search curves, comparisons."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")  # headless: jobs run on cluster nodes without a display
import matplotlib.pyplot as plt  # noqa: E402

from .io import atomic_path  # noqa: E402

__all__ = ["plot_training_curves"]


def _save(fig: plt.Figure, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=Path(path).suffix.lstrip(".") or "png", dpi=110, bbox_inches="tight")
    plt.close(fig)


def plot_training_curves(history: Sequence[dict[str, float]], path: str | Path, *, title: str) -> None:
    """Loss terms and learning rate against the step, from ``Progress.history`` rows."""
    fig, (ax_loss, ax_lr) = plt.subplots(1, 2, figsize=(10, 3.6))
    steps = [r["step"] for r in history]
    keys = [k for k in (history[0] if history else {}) if k not in ("step", "lr", "images_per_s")]
    for k in keys:
        ax_loss.plot(steps, [r.get(k, float("nan")) for r in history], label=k, lw=1.6 if k == "loss" else 1.0)
    ax_loss.set_xlabel("step")
    ax_loss.set_ylabel("loss")
    ax_loss.grid(alpha=0.3)
    if len(keys) > 1:
        ax_loss.legend(fontsize=8)
    ax_lr.plot(steps, [r["lr"] for r in history], color="tab:orange")
    ax_lr.set_xlabel("step")
    ax_lr.set_ylabel("learning rate")
    ax_lr.grid(alpha=0.3)
    fig.suptitle(title)
    _save(fig, path)
