"""Architecture patterns (the paper's Fig. 4): each backbone as a row of blocks coloured by choice.

A block is one unit wide whatever the space, so a 40-block backbone draws twice as long as a
20-block one; stages are separated by a gap and sit on a light band. The colours follow the paper:
3x3 blue, 5x5 yellow, 7x7 orange, and the Xception block a darker, taller blue (it is three 3x3
convolutions deep).
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple, Sequence

from matplotlib.axes import Axes
from matplotlib.patches import Patch, Rectangle

from ..flops import cost_table
from ..space import Arch, SearchSpace
from .style import method_color, plt, save

__all__ = ["CHOICE_COLORS", "CHOICE_NAMES", "RowLayout", "draw_architectures", "fmt_macs", "layout_row",
           "plot_architectures"]

# indexed by the block choice (detnas.blocks.CHOICES: shufflenet_3x3, _5x5, _7x7, xception_3x3)
CHOICE_NAMES: tuple[str, ...] = ("ShuffleNetV2 3x3", "ShuffleNetV2 5x5", "ShuffleNetV2 7x7", "Xception 3x3")
CHOICE_COLORS: tuple[str, ...] = ("#9ecae1", "#f6c644", "#e8702a", "#2b5d9c")
_HEIGHTS = (0.52, 0.52, 0.52, 0.78)  # in row pitches: the Xception block is the deeper one
STAGE_GAP = 0.7  # blank space between stages, in block widths
_HEADER = 0.55  # room above a row whose stage layout differs from the row above, for the stage names


class RowLayout(NamedTuple):
    """One backbone as drawn: where each block sits and which choice it shows."""

    label: str  # the row's name and its backbone MACs, e.g. "detnas  299.6M"
    space: str  # the search space's name, e.g. "small@w1.0703"
    choices: tuple[int, ...]  # one per block, 0..3 (the architecture's genes)
    x: tuple[float, ...]  # left edge of each block, in block widths from the row's start
    stage_starts: tuple[int, ...]  # index of the first block of each stage
    macs: int  # backbone MACs (stem + searchable blocks) at 224x224


def fmt_macs(macs: float) -> str:
    """MACs as the paper writes FLOPs: "299.6M" below 1e9, "1.31G" from there."""
    return f"{macs / 1e9:.2f}G" if macs >= 1e9 else f"{macs / 1e6:.1f}M"


def layout_row(label: str, space: SearchSpace, arch: Arch) -> RowLayout:
    """Where the blocks of ``arch`` go: unit-wide blocks, ``STAGE_GAP`` between stages."""
    arch = space.parse(arch)
    x: list[float] = []
    starts: list[int] = []
    left = 0.0
    for k, spec in enumerate(space.blocks()):
        if spec.index == 0:  # the stride-2 block that opens a stage
            if k:
                left += STAGE_GAP
            starts.append(k)
        x.append(left)
        left += 1.0
    macs = cost_table(space).backbone_macs(arch)
    return RowLayout(f"{label}  {fmt_macs(macs)}", space.name, arch.genes, tuple(x), tuple(starts), macs)


def _stage_spans(row: RowLayout) -> list[tuple[float, float]]:
    """(left, right) of each stage, in block widths."""
    ends = [*row.stage_starts[1:], len(row.choices)]
    return [(row.x[a], row.x[b - 1] + 1.0) for a, b in zip(row.stage_starts, ends)]


def _block_counts(row: RowLayout) -> tuple[int, ...]:
    return tuple(b - a for a, b in zip(row.stage_starts, [*row.stage_starts[1:], len(row.choices)]))


def draw_architectures(ax: Axes, rows: Sequence[tuple[str, SearchSpace, Arch]]) -> list[RowLayout]:
    """Draw ``rows`` (label, space, arch) top to bottom on ``ax``; returns what was drawn.

    Each block is a ``Rectangle`` with gid ``"block"`` (stage bands: ``"stage"``), in row order then
    block order. A row named by a method (``detnas``, ``random_arch_1``, ...) has its label in the
    method's colour (``style.METHOD_COLORS``); other labels are black. Stage names go above the
    first row of every run of rows with the same stage layout.
    """
    layouts = [layout_row(*row) for row in rows]
    width = max((row.x[-1] + 1.0 for row in layouts), default=1.0)
    ax.set_xlim(-0.4, width + 0.4)
    # "stage 1" needs about half an inch; over fewer blocks than that only the number fits
    inches_per_block = ax.get_position().width * ax.figure.get_figwidth() / (width + 0.8)
    y = 0.0
    ys: list[float] = []
    previous: tuple[int, ...] | None = None
    for row in layouts:
        counts = _block_counts(row)
        if counts != previous:  # a new stage layout: name its stages above this row
            y -= _HEADER if previous is None else _HEADER + 0.3
            short = min(counts) * inches_per_block < 0.5
            for k, (a, b) in enumerate(_stage_spans(row), start=1):
                ax.text((a + b) / 2, y + 0.02, str(k) if short else f"stage {k}", ha="center", va="bottom",
                        fontsize=7.5, color="0.35")
            previous = counts
        y -= 0.5
        ys.append(y)
        for a, b in _stage_spans(row):
            ax.add_patch(Rectangle((a - 0.18, y - 0.47), b - a + 0.36, 0.94, facecolor="0.94", edgecolor="none",
                                   gid="stage", zorder=0))
        for left, choice in zip(row.x, row.choices):
            h = _HEIGHTS[choice]
            ax.add_patch(Rectangle((left + 0.06, y - h / 2), 0.88, h, facecolor=CHOICE_COLORS[choice],
                                   edgecolor="white", linewidth=0.5, gid="block", zorder=2))
        y -= 0.5
    ax.set_ylim(y - 0.05, 0.0)
    ax.set_yticks(ys, [row.label for row in layouts], fontsize=9)
    for tick, (name, _, _) in zip(ax.get_yticklabels(), rows):  # a method's name in its colour, as in every figure
        tick.set_color(method_color(name, default="black"))
    ax.tick_params(axis="y", length=0, pad=6)
    ax.set_xticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)
    return layouts


def plot_architectures(rows: Sequence[tuple[str, SearchSpace, Arch]], path: str | Path, *,
                       title: str) -> list[RowLayout]:
    """The architectures of ``rows`` (label, space, arch) as rows of coloured blocks, saved to ``path``.

    At most about 900 px wide (at ``style.save``'s 110 dpi, labels included); 0.3 inch per row. Spaces
    of different depths share the figure: a row is as long as its backbone is deep. Returns the rows
    as drawn (choices, block positions, stages, MACs).
    """
    if not rows:
        raise ValueError("no architectures to draw")
    spaces = [space for _, space, _ in rows]
    # the axes in inches: blocks at most 0.3 inch wide (a shallow space does not blow up), 6 inches
    # at most (room for the row labels within ~900 px); a row pitch of 0.3 inch, a stage-name header
    # per change of stage layout
    blocks = max(s.num_blocks + STAGE_GAP * (len(s.stage_blocks) - 1) for s in spaces) + 0.8
    headers = sum(1 for i, s in enumerate(spaces) if i == 0 or s.stage_blocks != spaces[i - 1].stage_blocks)
    pitches = len(rows) + _HEADER * headers + 0.3 * (headers - 1) + 0.05
    fig = plt.figure(figsize=(min(6.0, 0.3 * blocks), 0.3 * pitches))
    ax = fig.add_axes((0.0, 0.0, 1.0, 1.0))  # labels, title and legend lie outside; save() crops to them
    layouts = draw_architectures(ax, rows)
    ax.set_title(title, fontsize=10, pad=4)
    handles = [Patch(facecolor=c, label=n) for c, n in zip(CHOICE_COLORS, CHOICE_NAMES)]
    narrow = fig.get_figwidth() < 5.0  # four entries in a row need about five inches
    ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=2 if narrow else 4,
              frameon=False, fontsize=8.5, handlelength=1.2, columnspacing=1.6)
    ax.annotate("backbone MACs at 224x224", xy=(0, 0), xycoords="axes fraction", xytext=(-6, -4),
                textcoords="offset points", ha="right", va="top", fontsize=7.5, color="0.35")
    save(fig, path)
    return layouts
