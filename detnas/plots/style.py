"""What every figure shares: headless backend, atomic saving, axis conventions a paper needs."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: jobs run on cluster nodes without a display
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from ..io import atomic_path  # noqa: E402

__all__ = ["integer_axis", "plt", "save", "zero_floor"]


def save(fig: plt.Figure, path: str | Path) -> None:
    """Write ``fig`` to ``path`` atomically (the format from the suffix) and close it."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=Path(path).suffix.lstrip(".") or "png", dpi=110, bbox_inches="tight")
    plt.close(fig)


def integer_axis(axis) -> None:
    """Ticks at whole numbers only (generations, steps): no "2.5" generation."""
    axis.set_major_locator(MaxNLocator(integer=True))


def zero_floor(ax) -> None:
    """An AP, top-1 or FLOPs axis never shows values below zero."""
    lo, hi = ax.get_ylim()
    if lo < 0:
        ax.set_ylim(0, max(hi, 1e-9))
