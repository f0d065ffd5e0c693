"""Search spaces as values, and architectures as digit strings.

A search space is a ShuffleNetV2-like backbone skeleton: a 3x3 stride-2 stem and four stages whose
first block has stride 2. Every block picks one of four choices (see ``blocks.CHOICES``); an
architecture is one choice per block, written as a digit string, e.g. ``"21202112331300313132"``.

Randomness always comes from an explicit ``numpy.random.Generator``: the same seed gives the same
sequence of samples, mutations and crossovers.

A preset space can be width-scaled: ``"small@w1.0703"`` is ``small`` with every channel count (stem and
stages) multiplied by 1.0703 and rounded to an even number (the FLOPs-matched hand-crafted baselines).
The name alone rebuilds the space, so checkpoints and arch.json files that store it stay readable.
"""

from __future__ import annotations

import re
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
    "scale_space",
    "space_of_arch",
    "split_space_name",
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
    last_channels: int = 1024  # the classification network's last 1x1 conv (not part of the backbone)

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


def _widen(space: SearchSpace, name: str, stem: int, channels: tuple[int, ...], last: int) -> SearchSpace:
    return SearchSpace(name, stem, channels, space.stage_blocks, last)


_SMALL = SearchSpace("small", 16, (64, 160, 320, 640), (4, 4, 8, 4))
_LARGE = SearchSpace("large", 48, (96, 240, 480, 960), (8, 8, 16, 8))

# Name -> space. ``tiny`` is the CPU space of the demo and the tests (8 blocks, 4^8 = 65,536 paths).
SPACES: dict[str, SearchSpace] = {
    "tiny": SearchSpace("tiny", 16, (32, 64, 128, 256), (2, 2, 2, 2)),
    "small": _SMALL,
    "large": _LARGE,
    # The 3.8G DetNASNet: the large space widened x1.8 (the authors' channel numbers).
    # Its classifier's last conv is 1728 wide too (the authors' DetNASNet 3.8 model), not 1024.
    "large_x1.8": _widen(_LARGE, "large_x1.8", 72, (172, 432, 864, 1728), 1728),
}


# "<preset>@w<factor>", the factor written with exactly WIDTH_DECIMALS decimals: one name per space
WIDTH_DECIMALS = 4
_WIDTH_UNIT = 10**WIDTH_DECIMALS
_SCALED_NAME = re.compile(rf"^(?P<base>.+)@w(?P<units>\d+)\.(?P<frac>\d{{{WIDTH_DECIMALS}}})$")


def _even_scaled(channels: int, units: int) -> int:
    # channels * units / 10^4, rounded half up to an even number, in integers: the same name gives
    # the same channels on every machine (no float rounding at the .5 boundaries)
    return 2 * ((channels * units + _WIDTH_UNIT) // (2 * _WIDTH_UNIT))


def scale_space(space: SearchSpace, factor: float) -> SearchSpace:
    """``space`` (a preset) with every channel count times ``factor``, rounded to an even number.

    The factor is rounded to ``WIDTH_DECIMALS`` decimals and written into the name
    (``"small@w1.0703"``), which ``get_space`` parses back to the same channels. ValueError names the
    factor when it leaves a stage without new channels (widths must stay even and increasing).
    """
    if space.name not in SPACES or SPACES[space.name] != space:
        raise ValueError(f"only a preset space can be width-scaled ({', '.join(SPACES)}), got {space.name!r}")
    units = round(factor * _WIDTH_UNIT)
    if units < 1:
        raise ValueError(f"space {space.name!r}: width factor must be at least {1 / _WIDTH_UNIT}, got {factor!r}")
    name = f"{space.name}@w{units // _WIDTH_UNIT}.{units % _WIDTH_UNIT:0{WIDTH_DECIMALS}d}"
    stem = _even_scaled(space.stem_channels, units)
    if stem < 2:
        raise ValueError(f"space {name!r}: width factor {factor} leaves the stem without channels")
    channels = tuple(_even_scaled(c, units) for c in space.stage_channels)
    return SearchSpace(name, stem, channels, space.stage_blocks, space.last_channels)


def split_space_name(name: str) -> tuple[str, float]:
    """``(preset name, width factor)`` of a space name: ``"small@w1.0703"`` -> ``("small", 1.0703)``,
    ``"small"`` -> ``("small", 1.0)``. The name is not checked against the presets."""
    m = _SCALED_NAME.match(name)
    if m is None:
        return name, 1.0
    return m["base"], (int(m["units"]) * _WIDTH_UNIT + int(m["frac"])) / _WIDTH_UNIT  # 1.0937, not 1.0937000000000001


def get_space(name: str) -> SearchSpace:
    """The preset space called ``name``, or a width-scaled preset (``"small@w1.0703"``).

    ValueError lists the known presets, or names the malformed factor.
    """
    if name in SPACES:
        return SPACES[name]
    if "@w" in name:
        base, factor = split_space_name(name)
        if base == name:  # "@w" but not "<preset>@w<digits>.<4 digits>"
            raise ValueError(
                f"scaled search space {name!r}: write it <preset>@w<factor> with {WIDTH_DECIMALS} decimals, "
                f"e.g. 'small@w1.0703'"
            )
        if base not in SPACES:
            raise ValueError(f"scaled search space {name!r}: unknown preset {base!r}; known: {', '.join(SPACES)}")
        space = scale_space(SPACES[base], factor)
        if space.name != name:  # e.g. a leading zero, "small@w01.0703": one name per space
            raise ValueError(f"scaled search space {name!r}: write it {space.name!r}")
        return space
    raise ValueError(
        f"unknown search space {name!r}; known: {', '.join(SPACES)} (or a width-scaled one, e.g. 'small@w1.0703')"
    )


def space_of_arch(arch_space: str, settings_space: str | None) -> SearchSpace:
    """The space of a chosen architecture (arch.json's ``space``) that a stage configured for
    ``settings_space`` retrains: the same space, or a width-scaled one of it (the FLOPs-matched
    baselines). ValueError names both when the architecture belongs to another space."""
    space = get_space(arch_space)
    base, _ = split_space_name(arch_space)
    if settings_space is not None and settings_space not in (arch_space, base):
        raise ValueError(
            f"the architecture's space {arch_space!r} is neither the settings' space {settings_space!r} nor a "
            f"width-scaled one of it; retrain it with a pretrain entry of space {base!r}"
        )
    return space
