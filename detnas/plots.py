"""Plots a person would rather look at than read: training curves, search curves, comparisons."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import matplotlib

matplotlib.use("Agg")  # headless: jobs run on cluster nodes without a display
import matplotlib.pyplot as plt  # noqa: E402

from .io import atomic_path  # noqa: E402

__all__ = ["plot_search_curves", "plot_training_curves"]


def _save(fig: plt.Figure, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=Path(path).suffix.lstrip(".") or "png", dpi=110, bbox_inches="tight")
    plt.close(fig)


def plot_training_curves(history: Sequence[dict[str, float]], path: str | Path, *, title: str) -> None:
    """Loss terms and learning rate against the step, from ``Progress.history`` rows."""
    fig, (ax_loss, ax_lr) = plt.subplots(1, 2, figsize=(10, 3.6), layout="constrained")
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


def plot_search_curves(
    histories: dict[str, Sequence[Any]], path: str | Path, *, population: int, ylabel: str
) -> None:
    """Best-so-far fitness (solid) and the mean of the best ``population`` so far (dashed) against
    the generation, one colour per method (the paper's Fig. 2 for DetNAS vs random search).

    ``histories``: method -> scored candidates with ``generation`` and ``fitness``.
    """
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for i, (method, history) in enumerate(histories.items()):
        gens = sorted({c.generation for c in history})
        best, mean = [], []
        for g in gens:
            so_far = sorted((c.fitness for c in history if c.generation <= g), reverse=True)
            best.append(so_far[0])
            mean.append(sum(so_far[:population]) / len(so_far[:population]))
        color = f"C{i}"
        ax.plot(gens, best, "-o", color=color, label=f"{method}: best", ms=3)
        ax.plot(gens, mean, "--", color=color, label=f"{method}: top-{population} mean")
    ax.set_xlabel("generation")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    _save(fig, path)


def plot_comparison(table: Any, curves: dict[str, Any], path: str | Path, *, title: str) -> None:
    """Methods side by side (test mmAP, backbone MFLOPs, top-1) and the search curves.

    ``table``: a pandas DataFrame with method, AP, mflops, top1 (and ``<col>_std`` for a row that is
    a mean, drawn as a point with an error bar); ``curves``: method -> history DataFrame
    (generation, fitness) of a search.
    """
    fig, axes = plt.subplots(1, 4, figsize=(17, 3.8))
    methods = list(table["method"])
    colors = [f"C{i}" for i in range(len(methods))]
    # a row with a spread (``<col>_std``: the random architectures) is a point with an error bar
    spread = table["AP_std"].notna() if "AP_std" in table else [False] * len(methods)
    # the experiment's headline figure by its name: COCO mmAP (AP), VOC 2007 mAP@0.5 (mAP50_voc07)
    primary = "primary_value" if "primary_value" in table else "AP"
    named = table["primary_metric"].dropna() if "primary_metric" in table else []
    primary_label = f"test {named.iloc[0]}" if len(named) else "test mmAP"
    for ax, col, label in zip(axes[:3], (primary, "mflops", "top1"),
                              (primary_label, "backbone MFLOPs (224x224)", "top-1 (classification val)")):
        values = [float(v) if v == v and v is not None else 0.0 for v in table[col]]
        errors = table[f"{col}_std"] if f"{col}_std" in table else [float("nan")] * len(methods)
        bars = ax.bar(methods, [0.0 if s else v for v, s in zip(values, spread)], color=colors)
        ax.bar_label(bars, labels=["" if s else (f"{v:.3f}" if col != "mflops" else f"{v:.1f}")
                                   for v, s in zip(values, spread)], fontsize=7)
        for x, (v, e, s) in enumerate(zip(values, errors, spread)):
            if s:
                ax.errorbar(x, v, yerr=0.0 if e != e else float(e), fmt="o", color=colors[x], capsize=4)
                ax.annotate(f"{v:.3f}" if col != "mflops" else f"{v:.1f}", (x, v), xytext=(6, 0),
                            textcoords="offset points", fontsize=7, va="center")
        ax.set_title(label, fontsize=10)
        ax.tick_params(axis="x", labelrotation=30, labelsize=8)
        ax.grid(axis="y", alpha=0.3)
    ax = axes[3]
    for i, (method, hist) in enumerate(curves.items()):
        gens = sorted(hist["generation"].unique())
        best = [hist[hist["generation"] <= g]["fitness"].max() for g in gens]
        ax.plot(gens, best, "-o", ms=3, color=f"C{methods.index(method) if method in methods else i}", label=method)
    ax.set_title("search: best mmAP so far (search split)", fontsize=10)
    ax.set_xlabel("generation")
    ax.grid(alpha=0.3)
    if curves:
        ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    _save(fig, path)
