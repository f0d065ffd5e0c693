"""Search curves: fitness against the generation (the paper's Fig. 2)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from .style import integer_axis, plt, save, zero_floor

__all__ = ["plot_search_curves"]


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
    save(fig, path)
