"""Search curves: fitness against the generation (the paper's Fig. 2), over repeated searches."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
from matplotlib.patches import Patch

from .style import integer_axis, method_color, min_span, plt, save, zero_floor

__all__ = ["curve_data", "plot_search_curves"]


def _per_generation(history: Sequence[Any], population: int, generations: list[int]) -> tuple[list[float], list[float]]:
    """Best fitness so far and the mean of the best ``population`` so far, after each generation."""
    best, mean = [], []
    for g in generations:
        so_far = sorted((c.fitness for c in history if c.generation <= g), reverse=True)
        best.append(so_far[0] if so_far else float("nan"))
        k = so_far[:population]
        mean.append(sum(k) / len(k) if k else float("nan"))
    return best, mean


def curve_data(repeats: Sequence[Sequence[Any]], population: int) -> dict[str, Any]:
    """What a method's curves are drawn from: per generation, the mean, min and max over the repeats
    of the best fitness so far and of the top-``population`` mean.

    ``repeats``: one history per repeat, each a sequence of candidates with ``generation`` and
    ``fitness``. Returns {"generations": [...], "repeats": R, "best": {"mean", "min", "max"},
    "top_k_mean": {...}}, each a list with one value per generation (min = max = mean for R = 1).
    """
    generations = sorted({c.generation for h in repeats for c in h})
    curves = [_per_generation(h, population, generations) for h in repeats]
    out: dict[str, Any] = {"generations": generations, "repeats": len(repeats)}
    for i, name in enumerate(("best", "top_k_mean")):
        values = np.array([c[i] for c in curves], dtype=float)  # (repeats, generations)
        out[name] = {"mean": np.nanmean(values, 0).tolist(), "min": np.nanmin(values, 0).tolist(),
                     "max": np.nanmax(values, 0).tolist()}
    return out


def plot_search_curves(
    histories: dict[str, Sequence[Any]], path: str | Path, *, population: int, ylabel: str, title: str = ""
) -> dict[str, dict[str, Any]]:
    """Best fitness so far (solid) and the mean of the best ``population`` so far (dashed) against
    the generation, each method in its colour (``style.METHOD_COLORS``): the paper's Fig. 2 for
    DetNAS vs random search.

    ``histories``: method -> its repeats (a list of histories), or a single history; a history is a
    sequence of candidates with ``generation`` and ``fitness``. With several repeats each line is
    the mean over the repeats and the shaded band spans their min and max, a legend entry of its
    own (a note in a corner would hide behind the legend). The fitness is an AP or a top-1, a
    fraction: the y range spans at least ``style.METRIC_SPAN``, so a gap in the fourth decimal
    looks as small as it is. Returns the curve data drawn, per method (see ``curve_data``).
    """
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    drawn: dict[str, dict[str, Any]] = {}
    for method, runs in histories.items():
        repeats = runs if runs and isinstance(runs[0], (list, tuple)) else [runs]
        data = drawn[method] = curve_data(repeats, population)
        gens, color = data["generations"], method_color(method)
        suffix = f" (mean of {data['repeats']} runs)" if data["repeats"] > 1 else ""
        for key, style, label in (("best", "-o", "best"), ("top_k_mean", "--", f"top-{population} mean")):
            ax.plot(gens, data[key]["mean"], style, color=color, ms=3, label=f"{method}: {label}{suffix}")
            if data["repeats"] > 1:
                ax.fill_between(gens, data[key]["min"], data[key]["max"], color=color, alpha=0.15, lw=0)
    ax.set_xlabel("generation")
    ax.set_ylabel(ylabel)
    integer_axis(ax.xaxis)
    zero_floor(ax)
    min_span(ax)
    ax.grid(alpha=0.3)
    handles, _ = ax.get_legend_handles_labels()
    if any(d["repeats"] > 1 for d in drawn.values()):
        handles.append(Patch(facecolor="0.5", alpha=0.3, lw=0, label="band: min to max over the runs"))
    ax.legend(handles=handles, fontsize=8)
    if title:
        ax.set_title(title, fontsize=10)
    save(fig, path)
    return drawn
