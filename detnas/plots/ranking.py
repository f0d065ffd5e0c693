"""Ranking quality: each score (the supernets' fitness, the training-free scores) against the retrained
network's test metric, one panel per score, side by side."""

from __future__ import annotations

import math
import textwrap
from pathlib import Path
from typing import Any

from .style import method_color, plt, save, zero_floor

__all__ = ["plot_ranking"]

_PANEL_TITLES = {
    "detection": "detection supernet: mmAP on the search split",
    "classification": "classification supernet: top-1 on held-out images",
}


def _interval(ci: list[float] | None) -> str:
    return "" if ci is None else f" [{ci[0]:.2f}, {ci[1]:.2f}]"


def _stats_text(c: dict[str, Any]) -> str:
    """Tau and rho with their 90% intervals, and n; or why they are undefined."""
    if c.get("kendall_tau") is None:
        return textwrap.fill(f"n = {c['n']}: no rank correlation ({c.get('reason') or 'undefined'})", 80)
    return (f"Kendall \u03c4 {c['kendall_tau']:.2f}{_interval(c.get('kendall_tau_ci90'))}, "
            f"Spearman \u03c1 {c['spearman_rho']:.2f}{_interval(c.get('spearman_rho_ci90'))}, n = {c['n']}")


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def plot_ranking(ranking: dict[str, Any], path: str | Path, *, title: str) -> None:
    """One panel per score of ``ranking`` (the ranking.json dict): the supernets' sides first, then the
    training-free scores. x the score, y the test metric of the retrained network, every point
    labelled by the method(s) that chose it and coloured as the (first) method is in every figure
    (``style.METHOD_COLORS``; the random architectures share one colour). A panel's title gives tau
    and rho over every point and over the random architectures alone."""
    panels = [(side, c, True) for side, c in ranking["sides"].items()]
    panels += [(name, c, False) for name, c in (ranking.get("training_free") or {}).items()]
    random_only = (ranking.get("random_archs") or {}).get("scores") or {}
    cols = min(4, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 4.4 * rows), squeeze=False)
    metric = ranking.get("metric", "AP")
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    for ax, (side, c, supernet) in zip(axes.flat, panels):
        shown = [p for p in ranking["points"]
                 if _finite(p["fitness"].get(side, {}).get("value")) and _finite(p.get("test_value"))]
        at: dict[tuple[float, float], list[str]] = {}
        for p in shown:
            x, y = p["fitness"][side]["value"], p["test_value"]
            ax.scatter([x], [y], s=28, color=method_color(p["label"]), edgecolor="black", linewidth=0.4, zorder=3,
                       clip_on=False)
            at.setdefault((x, y), []).append(p["label"])
        for (x, y), labels in at.items():  # points on the same spot share one label, not a smudge of several
            ax.annotate(textwrap.fill(", ".join(labels), 40), (x, y), xytext=(4, 3), textcoords="offset points",
                        fontsize=7)
        # the statistics in the title, not in a box over the points: [lo, hi] are 90% bootstrap intervals
        lines = [_PANEL_TITLES.get(side, side if supernet else f"training-free: {side}"), _stats_text(c)]
        secondary = c.get("secondary")
        if secondary is not None:
            lines.append(f"vs retrained {secondary['metric']}: {_stats_text(secondary)}")
        if side in random_only:
            lines.append(f"random archs alone: {_stats_text(random_only[side])}")
        ax.set_title("\n".join(lines), fontsize=8)
        unit = c.get("fitness_metric", side)
        ax.set_xlabel(f"supernet fitness ({unit}, 0-1)" if supernet else f"{unit} (no training)", fontsize=9)
        ax.set_ylabel(f"retrained: test {metric} (0-1)", fontsize=9)
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
        ax.margins(x=0.12, y=0.12)  # room for the labels
        zero_floor(ax)
        lo, hi = ax.get_xlim()  # a supernet's fitness is an AP or a top-1 too: no axis below zero
        if supernet and lo < 0:
            ax.set_xlim(0, max(hi, 1e-9))
    fig.suptitle(f"{title}\n([lo, hi]: 90% bootstrap intervals)", fontsize=10)
    fig.tight_layout()
    save(fig, path)
