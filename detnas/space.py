"""Search spaces as values, and architectures as digit strings.

A search space is a ShuffleNetV2-like backbone skeleton: a 3x3 stride-2 stem and four stages whose
first block has stride 2. Every block picks one of four choices (see ``blocks.CHOICES``); an
architecture is one choice per block, written as a digit string, e.g. ``"21202112331300313132"``.

Randomness always comes from an explicit ``numpy.random.Generator``: the same seed gives the same
sequence of samples, mutations and crossovers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, NamedTuple

import numpy as np

__all__ = [
    "NUM_CHOICES",
    "Arch",
    "BlockSpec",
    "SearchSpace",
    "SPACES",
    "get_space",
]

NUM_CHOICES = 4


class BlockSpec(NamedTuple):
    """Where a searchable block sits: stage (1-4), index in the stage, channels and stride."""

    stage: int
    index: int
    in_channels: int
    out_channels: int
    stride: int


@dataclass(frozen=True, order=True)
class Arch:
    """One choice (0..3) per searchable block. ``str(arch)`` is its digit-string encoding."""

    genes: tuple[int, ...]

    def __post_init__(self) -> None:
        for i, g in enumerate(self.genes):
            if not isinstance(g, (int, np.integer)) or not 0 <= int(g) < NUM_CHOICES:
                raise ValueError(
                    f"architecture gene {i} must be an integer in 0..{NUM_CHOICES - 1}, got {g!r}"
                )
        object.__setattr__(self, "genes", tuple(int(g) for g in self.genes))

    @classmethod
    def parse(cls, encoding: str, num_blocks: int | None = None) -> "Arch":
        """Parse ``"2120..."``; spaces and underscores between digits are ignored.

        Raises ValueError naming the encoding when a character is not a digit in 0..3 or the length
        differs from ``num_blocks``.
        """
        if not isinstance(encoding, str):
            raise ValueError(f"architecture encoding must be a string, got {encoding!r}")
        digits = encoding.replace(" ", "").replace("_", "")
        bad = [ch for ch in digits if ch not in "0123"]
        if bad or not digits:
            raise ValueError(
                f"architecture encoding {encoding!r} must be digits 0-3 (one per block); "
                f"bad characters: {''.join(sorted(set(bad))) or '(empty)'}"
            )
        if num_blocks is not None and len(digits) != num_blocks:
            raise ValueError(
                f"architecture encoding {encoding!r} has {len(digits)} digits, "
                f"the search space has {num_blocks} blocks"
            )
        return cls(tuple(int(ch) for ch in digits))

    def __str__(self) -> str:
        return "".join(str(g) for g in self.genes)

    def __len__(self) -> int:
        return len(self.genes)

    def __iter__(self) -> Iterator[int]:
        return iter(self.genes)

    def __getitem__(self, i: int) -> int:
        return self.genes[i]


@dataclass(frozen=True)
class SearchSpace:
    """A backbone skeleton: stem width, stage widths, blocks per stage.

    Stage outputs C2..C5 have strides 4, 8, 16, 32 (stem stride 2, first block of each stage
    stride 2, no max-pool).
    """

    name: str
    stem_channels: int
    stage_channels: tuple[int, ...]
    stage_blocks: tuple[int, ...]

    def __post_init__(self) -> None:
        if len(self.stage_channels) != len(self.stage_blocks) or not self.stage_blocks:
            raise ValueError(
                f"space {self.name!r}: stage_channels {self.stage_channels} and stage_blocks "
                f"{self.stage_blocks} must be non-empty and of the same length"
            )
        prev = self.stem_channels
        for c, n in zip(self.stage_channels, self.stage_blocks):
            # stride-1 blocks split channels in halves; stride-2 blocks output c - prev new channels
            if c % 2 or c <= prev or n < 1:
                raise ValueError(
                    f"space {self.name!r}: stage widths must be even and increasing, blocks >= 1; "
                    f"got channels {self.stage_channels} after stem {self.stem_channels}, "
                    f"blocks {self.stage_blocks}"
                )
            prev = c

    @property
    def num_blocks(self) -> int:
        return sum(self.stage_blocks)

    def blocks(self) -> list[BlockSpec]:
        """The searchable blocks in order (the order of the genes)."""
        specs = []
        in_ch = self.stem_channels
        for s, (out_ch, n) in enumerate(zip(self.stage_channels, self.stage_blocks), start=1):
            for i in range(n):
                specs.append(BlockSpec(s, i, in_ch, out_ch, 2 if i == 0 else 1))
                in_ch = out_ch
        return specs

    def size(self) -> int:
        """Number of architectures in the space (4 ** num_blocks)."""
        return NUM_CHOICES**self.num_blocks

    def parse(self, encoding: str | Arch) -> Arch:
        """An Arch of this space from its encoding; ValueError names the bad value."""
        if isinstance(encoding, Arch):
            if len(encoding) != self.num_blocks:
                raise ValueError(
                    f"architecture {encoding} has {len(encoding)} blocks, space {self.name!r} "
                    f"has {self.num_blocks}"
                )
            return encoding
        return Arch.parse(encoding, self.num_blocks)

    def uniform(self, choice: int) -> Arch:
        """Every block the same choice (choice 0 everywhere is the hand-crafted ShuffleNetV2)."""
        return Arch((choice,) * self.num_blocks)

    def sample(self, rng: np.random.Generator) -> Arch:
        """A uniformly random architecture."""
        return Arch(tuple(int(g) for g in rng.integers(0, NUM_CHOICES, self.num_blocks)))

    def mutate(self, arch: Arch, rng: np.random.Generator, prob: float = 0.1) -> Arch:
        """Each gene is redrawn uniformly with probability ``prob`` (it may draw its old value)."""
        if not 0.0 <= prob <= 1.0:
            raise ValueError(f"mutation probability must be in [0, 1], got {prob}")
        arch = self.parse(arch)
        redraw = rng.random(self.num_blocks) < prob
        new = rng.integers(0, NUM_CHOICES, self.num_blocks)
        return Arch(tuple(int(n) if r else g for g, r, n in zip(arch.genes, redraw, new)))

    def crossover(self, a: Arch, b: Arch, rng: np.random.Generator) -> Arch:
        """Uniform crossover: each gene from ``a`` or ``b`` with probability 1/2."""
        a, b = self.parse(a), self.parse(b)
        pick = rng.random(self.num_blocks) < 0.5
        return Arch(tuple(x if p else y for x, y, p in zip(a.genes, b.genes, pick)))


def _widen(space: SearchSpace, name: str, stem: int, channels: tuple[int, ...]) -> SearchSpace:
    return SearchSpace(name, stem, channels, space.stage_blocks)


_SMALL = SearchSpace("small", 16, (64, 160, 320, 640), (4, 4, 8, 4))
_LARGE = SearchSpace("large", 48, (96, 240, 480, 960), (8, 8, 16, 8))

# Name -> space. ``tiny`` is the CPU space of the demo and the tests (8 blocks, 4^8 = 65,536 paths).
SPACES: dict[str, SearchSpace] = {
    "tiny": SearchSpace("tiny", 16, (32, 64, 128, 256), (2, 2, 2, 2)),
    "small": _SMALL,
    "large": _LARGE,
    # The 3.8G DetNASNet: the large space widened x1.8 (the authors' channel numbers).
    "large_x1.8": _widen(_LARGE, "large_x1.8", 72, (172, 432, 864, 1728)),
}


def get_space(name: str) -> SearchSpace:
    """The preset space called ``name``; ValueError lists the known ones."""
    try:
        return SPACES[name]
    except KeyError:
        raise ValueError(f"unknown search space {name!r}; known: {', '.join(SPACES)}") from None
