"""FLOPs (multiply-accumulates) and parameter counts.

The paper's "FLOPs" are MACs of conv and linear layers only (no BN, ReLU, bias) at a 224x224 input,
and the search constraint counts the BACKBONE only: stem + searchable blocks (no last conv, no FPN,
no head). The EA checks thousands of candidates, so ``CostTable`` measures every (block, choice)
once and a path's cost is a sum along it. The table is measured on the real modules (built on the
meta device, so no memory is allocated): the network is defined once, in ``blocks.py``.
``count_macs`` counts any built network directly; the tests check the two agree.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from .blocks import CHOICES, make_block
from .space import Arch, SearchSpace
from .supernet import LAST_CHANNELS

__all__ = ["CostTable", "cost_table", "count_macs", "count_params"]

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
        with torch.device("meta"):
            stem = nn.Sequential(
                nn.Conv2d(3, space.stem_channels, 3, 2, 1, bias=False), nn.BatchNorm2d(space.stem_channels)
            )
            size = _out_size(input_size, 2)
            self.stem_macs = _meta_macs(stem, (1, 3, input_size, input_size))
            self.stem_params = count_params(stem)
            for k, spec in enumerate(space.blocks()):
                for c in range(len(CHOICES)):
                    block = make_block(c, spec.in_channels, spec.out_channels, spec.stride)
                    self.macs[k, c] = _meta_macs(block, (1, spec.in_channels, size, size))
                    self.params[k, c] = count_params(block)
                size = _out_size(size, spec.stride)
            c_last, n_last = space.stage_channels[-1], LAST_CHANNELS
            # 1x1 conv to 1024 + BN (2 x 1024 affine); classifier added per class count
            self.last_conv_macs = c_last * n_last * size * size
            self.last_conv_params = c_last * n_last + 2 * n_last
        self._rows = np.arange(n)

    def backbone_macs(self, arch: Arch) -> int:
        """Backbone MACs at ``input_size`` (stem + searchable blocks)."""
        return int(self.stem_macs + self.macs[self._rows, arch.genes].sum())

    def backbone_params(self, arch: Arch) -> int:
        """Parameters of stem + searchable blocks (the detection backbone)."""
        return int(self.stem_params + self.params[self._rows, arch.genes].sum())

    def classifier_params(self, arch: Arch, num_classes: int = 1000) -> int:
        """Parameters of the whole classification network (backbone + last conv + linear)."""
        return self.backbone_params(arch) + self.last_conv_params + LAST_CHANNELS * num_classes

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
