"""What every figure shares: headless backend, atomic saving, axis conventions a paper needs, and
one colour per method (the same method looks the same in every figure)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: jobs run on cluster nodes without a display
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from ..io import atomic_path  # noqa: E402

__all__ = ["METHOD_COLORS", "METRIC_SPAN", "RANDOM_ARCHS_COLOR", "integer_axis", "method_color", "min_span", "plt",
           "save", "zero_floor"]

# One colour per method, in every figure (comparison, search curves, ranking, architectures): a reader
# who learns "random search is orange" in one figure finds it orange in the next. The scaled and the
# unscaled ShuffleNetV2 are the same blocks: purple and brown, near each other but told apart.
METHOD_COLORS: dict[str, str] = {
    "detnas": "#1f77b4",  # blue
    "random": "#ff7f0e",  # orange
    "clsnas": "#2ca02c",  # green
    "scratch": "#d62728",  # red
    "shufflenetv2": "#9467bd",  # purple
    "shufflenetv2_unscaled": "#8c564b",  # brown
    "random_archs": "#7f7f7f",  # grey: random_arch_<i> and their summary row "random archs (n=N)"
}
RANDOM_ARCHS_COLOR = METHOD_COLORS["random_archs"]
# the smallest y range an AP or top-1 axis (a fraction in [0, 1]) shows: a difference in the fourth
# decimal stays a hair's breadth instead of filling the panel
METRIC_SPAN = 0.05


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


def method_color(label: str, default: str = "0.2") -> str:
    """The colour of a method by its name, as figures label it.

    ``random_arch_<i>`` and the comparison's summary row ``random archs (n=N)`` share the random
    architectures' colour; a label naming several methods that chose the same network
    (``detnas+scratch``, the ranking's shared points) takes the first one's; ``default`` for a name
    that is not a method (a published architecture, a typed-in encoding)."""
    first = str(label).split("+")[0].strip()
    if first.startswith("random_arch_") or first.startswith("random archs"):
        return METHOD_COLORS["random_archs"]
    return METHOD_COLORS.get(first, default)


def min_span(ax, span: float = METRIC_SPAN, *, floor: float | None = 0.0, ceiling: float | None = 1.0) -> None:
    """Widen the y range to at least ``span``, around the data's middle, within ``floor`` and
    ``ceiling`` (an AP or a top-1 lies in [0, 1]).

    Matplotlib fits the axis to the data: two AP curves 0.0003 apart fill the panel and read as a
    gap. A span of at least 0.05 in AP units (fractions in [0, 1]) draws such a difference as the
    sliver it is."""
    lo, hi = ax.get_ylim()
    if hi - lo >= span:
        return
    mid = (lo + hi) / 2
    lo, hi = mid - span / 2, mid + span / 2
    if ceiling is not None and hi > ceiling:
        lo, hi = ceiling - span, ceiling
    if floor is not None and lo < floor:
        lo, hi = floor, floor + span
    ax.set_ylim(lo, hi)
