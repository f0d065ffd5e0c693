"""FLOPs (multiply-accumulates) and parameter counts.

The paper's "FLOPs" are MACs of conv and linear layers only (no BN, ReLU, bias) at a 224x224 input,
and the search constraint counts the BACKBONE only: stem + searchable blocks (no last conv, no FPN,
no head). The EA checks thousands of candidates, so ``CostTable`` measures every (block, choice)
once and a path's cost is a sum along it. The table is measured on the real modules (built on the
meta device, so no memory is allocated): the network is defined once, in ``blocks.py``.
``count_macs`` counts any built network directly; the tests check the two agree.

``match_width`` finds the width factor at which a path of a preset space costs a given number of
MACs: the FLOPs-matched hand-crafted baselines ("ShuffleNetV2-20, scaled to 300M FLOPs").
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Callable, NamedTuple

import numpy as np
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from .blocks import CHOICES, make_block
from .space import Arch, SearchSpace, scale_space

__all__ = ["CostTable", "WidthMatch", "cost_table", "count_macs", "count_params", "match_width", "path_macs"]

INPUT_SIZE = 224


def count_macs(model: nn.Module, input_size: int | tuple[int, int] = INPUT_SIZE) -> int:
    """MACs of one forward pass of ``model`` on a (1, 3, H, W) input, counted by torch.

    ``FlopCounterMode`` counts 2 FLOPs per multiply-accumulate of conv/linear/matmul; halved here.
    """
    h, w = (input_size, input_size) if isinstance(input_size, int) else input_size
    ref = next(model.parameters())
    x = torch.zeros(1, 3, h, w, device=ref.device, dtype=ref.dtype)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(x)
    finally:
        model.train(was_training)
    return counter.get_total_flops() // 2


def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _meta_macs(module: nn.Module, shape: tuple[int, ...]) -> int:
    with FlopCounterMode(display=False) as counter:
        module(torch.empty(shape, device="meta"))
    return counter.get_total_flops() // 2


@lru_cache(maxsize=4096)
def _block_cost(choice: int, in_channels: int, out_channels: int, stride: int, size: int) -> tuple[int, int]:
    """(MACs, params) of one block on a (1, in_channels, size, size) input.

    Cached: a stage repeats one stride-1 block, and a width search measures many spaces (tens of ms
    per block, mostly FlopCounterMode's dispatch).
    """
    with torch.device("meta"):
        block = make_block(choice, in_channels, out_channels, stride)
        return _meta_macs(block, (1, in_channels, size, size)), count_params(block)


def _stem_cost(channels: int, input_size: int) -> tuple[int, int]:
    with torch.device("meta"):
        stem = nn.Sequential(nn.Conv2d(3, channels, 3, 2, 1, bias=False), nn.BatchNorm2d(channels))
        return _meta_macs(stem, (1, 3, input_size, input_size)), count_params(stem)


class CostTable:
    """Per-(block, choice) MACs and params of a space at a square input size.

    ``macs[k, c]``: MACs of block k with choice c; ``stem_macs``: the stem's. A path's backbone
    MACs are ``stem_macs + macs[range(n), genes].sum()``.
    """

    def __init__(self, space: SearchSpace, input_size: int = INPUT_SIZE) -> None:
        self.space = space
        self.input_size = input_size
        n = space.num_blocks
        self.macs = np.zeros((n, len(CHOICES)), dtype=np.int64)
        self.params = np.zeros((n, len(CHOICES)), dtype=np.int64)
        self.stem_macs, self.stem_params = _stem_cost(space.stem_channels, input_size)
        size = _out_size(input_size, 2)
        for k, spec in enumerate(space.blocks()):
            for c in range(len(CHOICES)):
                self.macs[k, c], self.params[k, c] = _block_cost(c, spec.in_channels, spec.out_channels, spec.stride, size)
            size = _out_size(size, spec.stride)
        c_last, n_last = space.stage_channels[-1], space.last_channels
        # 1x1 conv to last_channels + BN (2 x last_channels affine); classifier added per class count
        self.last_conv_macs = c_last * n_last * size * size
        self.last_conv_params = c_last * n_last + 2 * n_last
        self._last = n_last
        self._rows = np.arange(n)

    def backbone_macs(self, arch: Arch) -> int:
        """Backbone MACs at ``input_size`` (stem + searchable blocks)."""
        return int(self.stem_macs + self.macs[self._rows, arch.genes].sum())

    def backbone_params(self, arch: Arch) -> int:
        """Parameters of stem + searchable blocks (the detection backbone)."""
        return int(self.stem_params + self.params[self._rows, arch.genes].sum())

    def classifier_params(self, arch: Arch, num_classes: int = 1000) -> int:
        """Parameters of the whole classification network (backbone + last conv + linear)."""
        return self.backbone_params(arch) + self.last_conv_params + self._last * num_classes

    def within(self, min_mflops: float | None = None, max_mflops: float | None = None) -> Callable[[Arch], bool]:
        """The FLOPs constraint of a search: ``arch -> min <= backbone MFLOPs <= max`` (None: unbounded)."""
        lo = -np.inf if min_mflops is None else min_mflops
        hi = np.inf if max_mflops is None else max_mflops
        return lambda arch: bool(lo <= self.backbone_macs(arch) / 1e6 <= hi)

    def bounds(self) -> tuple[int, int]:
        """The smallest and largest backbone MACs over the whole space."""
        return (
            int(self.stem_macs + self.macs.min(axis=1).sum()),
            int(self.stem_macs + self.macs.max(axis=1).sum()),
        )


def _out_size(size: int, stride: int) -> int:
    # 3x3 (or kxk with padding k//2) conv: ceil(size / stride)
    return (size - 1) // stride + 1


@lru_cache(maxsize=16)
def cost_table(space: SearchSpace, input_size: int = INPUT_SIZE) -> CostTable:
    """The (cached) cost table of ``space``."""
    return CostTable(space, input_size)


def path_macs(space: SearchSpace, arch: Arch, input_size: int = INPUT_SIZE) -> int:
    """Backbone MACs of one path (stem + its blocks), measured block by block like ``CostTable``.

    The same number as ``cost_table(space).backbone_macs(arch)`` without measuring the other choices
    of every block: a width search prices dozens of spaces.
    """
    arch = space.parse(arch)
    macs, _ = _stem_cost(space.stem_channels, input_size)
    size = _out_size(input_size, 2)
    for spec, choice in zip(space.blocks(), arch.genes):
        macs += _block_cost(choice, spec.in_channels, spec.out_channels, spec.stride, size)[0]
        size = _out_size(size, spec.stride)
    return macs


class WidthMatch(NamedTuple):
    """A path of a width-scaled preset whose backbone MACs match a target (see ``match_width``)."""

    space: SearchSpace  # the scaled space, e.g. "small@w1.0703"
    arch: Arch
    factor: float  # every channel count of the preset times this, rounded to even
    macs: int  # backbone MACs at 224x224
    target_macs: int

    @property
    def relative_error(self) -> float:
        """(macs - target) / target: negative below the target."""
        return (self.macs - self.target_macs) / self.target_macs


def match_width(
    space: SearchSpace, arch: Arch, target_macs: float, *, tolerance: float = 0.02, input_size: int = INPUT_SIZE
) -> WidthMatch:
    """The width factor at which ``arch`` of the preset ``space`` costs ``target_macs`` backbone MACs.

    Bisection on the factor (on its 10^-4 grid, the precision of scaled space names) with the
    channels rounded to even numbers: MACs grow with the factor up to that rounding. The result is
    the widest network at or under the target (a baseline gets no more than the searched
    architectures are allowed); when rounding leaves that one more than ``tolerance`` below, the
    nearby factors are priced and the closest network within ``tolerance`` either side is taken.
    ValueError names the target and the closest network found when none is within ``tolerance``.
    """
    arch = space.parse(arch)
    scale_space(space, 1.0)  # ValueError unless a preset: at() below reads every ValueError as "too narrow"
    target = int(round(target_macs))
    if target <= 0:
        raise ValueError(f"target backbone MACs must be positive, got {target_macs!r}")
    macs_of: dict[tuple[int, ...], int] = {}  # many factors round to the same channels: price each once

    def at(units: int) -> WidthMatch | None:
        """The network at factor units / 10^4; None when that leaves a stage without new channels."""
        try:
            scaled = scale_space(space, units / 10_000)
        except ValueError:
            return None
        key = (scaled.stem_channels, *scaled.stage_channels)
        if key not in macs_of:
            macs_of[key] = path_macs(scaled, arch, input_size)
        return WidthMatch(scaled, arch, units / 10_000, macs_of[key], target)

    def fits(units: int) -> bool:
        m = at(units)
        return m is not None and m.macs <= target

    # MACs grow about as the square of the width (the 1x1 convolutions dominate): bracket around that
    guess = max(1, round(10_000 * math.sqrt(target / path_macs(space, arch, input_size))))
    lo, hi = max(1, int(guess * 0.99)), int(guess * 1.01) + 1
    while not fits(lo):
        if at(lo) is None or lo == 1:  # no narrower network: the target is out of reach below
            return _closest(space, target, tolerance, [m for u in range(lo, hi + 1) if (m := at(u)) is not None])
        lo = max(1, int(lo * 0.9))
    while fits(hi):
        lo, hi = hi, int(hi * 1.1) + 1
    while hi - lo > 1:  # invariant: lo fits, hi does not
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    best = at(lo)
    assert best is not None
    if -best.relative_error <= tolerance:
        return best
    # rounding jumped over the window: price the networks around it (MACs ~ width^2, so +-tolerance
    # in width covers more than +-tolerance in MACs) and take the closest, either side of the target
    reach = int(lo * tolerance) + 1
    return _closest(space, target, tolerance,
                    [m for u in range(max(1, lo - reach), lo + reach + 1) if (m := at(u)) is not None])


def _closest(space: SearchSpace, target: int, tolerance: float, candidates: list[WidthMatch]) -> WidthMatch:
    if not candidates:
        raise ValueError(f"space {space.name!r}: no width factor gives a network near {target / 1e6:.1f} M MACs")
    best = min(candidates, key=lambda m: (abs(m.relative_error), m.macs > target))
    if abs(best.relative_error) > tolerance:
        raise ValueError(
            f"space {space.name!r}: no width factor puts {best.arch} within {tolerance:.0%} of {target / 1e6:.1f} M "
            f"MACs; closest: {best.space.name} at {best.macs / 1e6:.2f} M ({best.relative_error:+.1%})"
        )
    return best
