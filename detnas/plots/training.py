"""Training curves: loss terms and learning rate against the step."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from .style import integer_axis, plt, save, zero_floor

__all__ = ["plot_training_curves"]


def plot_training_curves(history: Sequence[dict[str, float]], path: str | Path, *, title: str) -> None:
    """Loss terms and learning rate against the step, from ``Progress.history`` rows."""
    from ..engine import TIMING_KEYS  # torch: only where a training stage plots
    fig, (ax_loss, ax_lr) = plt.subplots(1, 2, figsize=(10, 3.6), layout="constrained")
    steps = [r["step"] for r in history]
    keys = [k for k in (history[0] if history else {}) if k not in ("step", "lr", *TIMING_KEYS)]
    for k in keys:
        ax_loss.plot(steps, [r.get(k, float("nan")) for r in history], label=k, lw=1.6 if k == "loss" else 1.0)
    ax_loss.set_xlabel("step")
    ax_loss.set_ylabel("loss")
    integer_axis(ax_loss.xaxis)
    zero_floor(ax_loss)
    ax_loss.grid(alpha=0.3)
    if len(keys) > 1:
        ax_loss.legend(fontsize=8)
    ax_lr.plot(steps, [r["lr"] for r in history], color="tab:orange")
    ax_lr.set_xlabel("step")
    integer_axis(ax_lr.xaxis)
    zero_floor(ax_lr)
    ax_lr.set_ylabel("learning rate")
    ax_lr.grid(alpha=0.3)
    fig.suptitle(title, fontsize=10)
    save(fig, path)
