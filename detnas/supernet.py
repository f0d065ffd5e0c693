"""The weight-sharing supernet and the standalone network a path of it becomes.

Both classes share one skeleton: ``stem`` (3x3 stride-2 conv, BN, ReLU), ``stage1``..``stage4``
(the searchable blocks; stage outputs C2..C5 at strides 4, 8, 16, 32) and, for classification only,
``conv_last`` (1x1 to ``space.last_channels``, 1024 but 1728 for large_x1.8; BN, ReLU), ``pool``, ``dropout``, ``classifier``. The named children
are in forward order, so torchvision's ``IntermediateLayerGetter`` / ``BackboneWithFPN`` can pick
C2..C5 out of either network.

In the supernet every block position is a ``ChoiceBlock`` holding one module per choice (each with
its own BN). The path is set explicitly with ``set_arch`` / ``set_path``; forward has no randomness.
Choices off the path never run, so after a backward pass their parameters have ``grad is None`` and
an optimizer (SGD skips such parameters) leaves their momentum and weight decay untouched.
"""

from __future__ import annotations

import re
from typing import Callable

from torch import Tensor, nn

from .blocks import CHOICES, make_block
from .space import Arch, BlockSpec, SearchSpace

__all__ = ["ChoiceBlock", "SinglePathNet", "Supernet", "get_path", "inactive_modules", "set_path"]



class ChoiceBlock(nn.Module):
    """One searchable block position: all choices, of which ``active`` runs."""

    def __init__(self, spec: BlockSpec) -> None:
        super().__init__()
        self.choices = nn.ModuleList(
            make_block(c, spec.in_channels, spec.out_channels, spec.stride) for c in range(len(CHOICES))
        )
        self.active = 0

    def forward(self, x: Tensor) -> Tensor:
        return self.choices[self.active](x)

    def extra_repr(self) -> str:
        return f"active={self.active}"


class _Skeleton(nn.Module):
    def __init__(
        self,
        space: SearchSpace,
        make_position: Callable[[BlockSpec], nn.Module],
        num_classes: int | None,
        dropout: float,
    ) -> None:
        super().__init__()
        self.space = space
        self.num_classes = num_classes
        self.stem = nn.Sequential(
            nn.Conv2d(3, space.stem_channels, 3, 2, 1, bias=False),
            nn.BatchNorm2d(space.stem_channels),
            nn.ReLU(inplace=True),
        )
        specs = space.blocks()
        for s in range(1, len(space.stage_blocks) + 1):
            self.add_module(f"stage{s}", nn.Sequential(*(make_position(b) for b in specs if b.stage == s)))
        if num_classes is not None:
            self.conv_last = nn.Sequential(
                nn.Conv2d(space.stage_channels[-1], space.last_channels, 1, bias=False),
                nn.BatchNorm2d(space.last_channels),
                nn.ReLU(inplace=True),
            )
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.dropout = nn.Dropout(dropout)
            self.classifier = nn.Linear(space.last_channels, num_classes, bias=False)

    @property
    def stage_names(self) -> list[str]:
        return [f"stage{s}" for s in range(1, len(self.space.stage_blocks) + 1)]

    @property
    def feature_channels(self) -> dict[str, int]:
        """Channels of the stage outputs C2..C5 (strides 4, 8, 16, 32), by child name."""
        return dict(zip(self.stage_names, self.space.stage_channels))

    def features(self, x: Tensor) -> list[Tensor]:
        """[C2, C3, C4, C5] for an image batch (B, 3, H, W)."""
        x = self.stem(x)
        out = []
        for name in self.stage_names:
            x = getattr(self, name)(x)
            out.append(x)
        return out

    def forward(self, x: Tensor) -> Tensor:
        """Logits (B, num_classes) for a classification network, else C5 (B, C, H/32, W/32)."""
        x = self.features(x)[-1]
        if self.num_classes is None:
            return x
        x = self.pool(self.conv_last(x)).flatten(1)
        return self.classifier(self.dropout(x))


class SinglePathNet(_Skeleton):
    """A standalone network: one block per position, the class the final retraining trains."""

    def __init__(
        self, space: SearchSpace, arch: Arch | str, *, num_classes: int | None = None, dropout: float = 0.1
    ) -> None:
        arch = space.parse(arch)
        genes = iter(arch.genes)
        super().__init__(
            space,
            lambda spec: make_block(next(genes), spec.in_channels, spec.out_channels, spec.stride),
            num_classes,
            dropout,
        )
        self.arch = arch


class Supernet(_Skeleton):
    """The weight-sharing supernet: every block position holds all four choices."""

    def __init__(
        self, space: SearchSpace, *, num_classes: int | None = None, dropout: float = 0.1
    ) -> None:
        super().__init__(space, ChoiceBlock, num_classes, dropout)

    def set_arch(self, arch: Arch | str) -> None:
        set_path(self, self.space.parse(arch))

    @property
    def arch(self) -> Arch:
        return get_path(self)

    def extract(self, arch: Arch | str) -> SinglePathNet:
        """The path ``arch`` as a ``SinglePathNet`` with this supernet's weights copied into it."""
        arch = self.space.parse(arch)
        ref = next(self.parameters())
        child = SinglePathNet(
            self.space,
            arch,
            num_classes=self.num_classes,
            dropout=self.dropout.p if self.num_classes is not None else 0.1,
        ).to(device=ref.device, dtype=ref.dtype)
        child.load_state_dict(_path_state_dict(self.state_dict(), arch))
        child.train(self.training)
        return child


_CHOICE_KEY = re.compile(r"^(stage\d+\.\d+\.)choices\.(\d+)\.(.+)$")


def _path_state_dict(state: dict[str, Tensor], arch: Arch) -> dict[str, Tensor]:
    """Supernet keys ``stageS.i.choices.c.*`` of the path -> standalone keys ``stageS.i.*``."""
    blocks = sorted({m.group(1) for m in map(_CHOICE_KEY.match, state) if m}, key=_block_order)
    chosen = {prefix: str(g) for prefix, g in zip(blocks, arch.genes)}
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        m = _CHOICE_KEY.match(key)
        if m is None:
            out[key] = value.clone()
        elif chosen[m.group(1)] == m.group(2):
            out[m.group(1) + m.group(3)] = value.clone()
    return out


def _block_order(prefix: str) -> tuple[int, int]:
    stage, index = prefix.rstrip(".").split(".")
    return int(stage.removeprefix("stage")), int(index)


def _choice_blocks(module: nn.Module) -> list[ChoiceBlock]:
    return [m for m in module.modules() if isinstance(m, ChoiceBlock)]


def set_path(module: nn.Module, arch: Arch) -> None:
    """Set the path of every supernet inside ``module`` (a supernet, a detector, a DDP wrapper)."""
    blocks = _choice_blocks(module)
    if len(blocks) != len(arch):
        raise ValueError(
            f"architecture {arch} has {len(arch)} blocks, the model has {len(blocks)} choice blocks"
        )
    for block, choice in zip(blocks, arch.genes):
        block.active = choice


def get_path(module: nn.Module) -> Arch:
    """The path currently set on the supernet inside ``module``."""
    return Arch(tuple(b.active for b in _choice_blocks(module)))


def inactive_modules(module: nn.Module) -> set[nn.Module]:
    """Every submodule of a choice that is off the current path."""
    off: set[nn.Module] = set()
    for block in _choice_blocks(module):
        for c, choice in enumerate(block.choices):
            if c != block.active:
                off.update(choice.modules())
    return off
