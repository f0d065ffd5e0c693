"""Ranking quality: supernet fitness against the retrained network's test metric, one panel per supernet."""

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
    """One panel per side of ``ranking`` (the ranking.json dict): x the supernet fitness, y the test
    metric of the retrained network, every point labelled by the method(s) that chose it and
    coloured as the (first) method is in every figure (``style.METHOD_COLORS``; the random
    architectures share one colour)."""
    sides = list(ranking["sides"])
    fig, axes = plt.subplots(1, len(sides), figsize=(4.6 * len(sides), 4.3), squeeze=False)
    metric = ranking.get("metric", "AP")
    for ax, side in zip(axes[0], sides):
        c = ranking["sides"][side]
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
        lines = [_PANEL_TITLES.get(side, side), _stats_text(c)]
        secondary = c.get("secondary")
        if secondary is not None:
            lines.append(f"vs retrained {secondary['metric']}: {_stats_text(secondary)}")
        ax.set_title("\n".join(lines), fontsize=8.5)
        ax.set_xlabel(f"supernet fitness ({c.get('fitness_metric', side)}, 0-1)", fontsize=9)
        ax.set_ylabel(f"retrained: test {metric} (0-1)", fontsize=9)
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
        ax.margins(x=0.12, y=0.12)  # room for the labels
        zero_floor(ax)
        lo, hi = ax.get_xlim()  # fitness is an AP or a top-1 too: no axis below zero
        if lo < 0:
            ax.set_xlim(0, max(hi, 1e-9))
    fig.suptitle(f"{title}\n([lo, hi]: 90% bootstrap intervals)", fontsize=10)
    fig.tight_layout()
    save(fig, path)
