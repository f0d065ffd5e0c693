"""The architectures published with DetNAS, as data: name -> (space, encoding); and the paper's
FLOPs-matched hand-crafted baselines: name -> (space, budget), their width found by ``flops.match_width``."""

from __future__ import annotations

from functools import lru_cache
from typing import TYPE_CHECKING, NamedTuple

from .space import Arch, SearchSpace, get_space

if TYPE_CHECKING:
    from .flops import WidthMatch

__all__ = ["PUBLISHED", "SCALED_BASELINES", "Published", "ScaledBaseline", "get_published", "scaled_shufflenetv2"]


class Published(NamedTuple):
    space: str
    encoding: str
    description: str


PUBLISHED: dict[str, Published] = {
    "coco_fpn_300m": Published("small", "21202112331300313132", "DetNAS, COCO, Faster R-CNN + FPN"),
    "coco_retinanet_300m": Published("small", "23113213311133203333", "DetNAS, COCO, RetinaNet"),
    "voc_fpn_300m": Published("small", "21031303201133333331", "DetNAS, VOC, Faster R-CNN + FPN"),
    "voc_retinanet_300m": Published("small", "13002333233332202311", "DetNAS, VOC, RetinaNet"),
    "spos_300m": Published("small", "21012020202300003233", "SPOS, searched on ImageNet"),
    "shufflenetv2_20": Published("small", "0" * 20, "hand-crafted ShuffleNetV2-20"),
    "detnasnet": Published(
        "large", "0031210203123320211320222131033313333333", "DetNASNet (1.3G), COCO FPN"
    ),
    "detnasnet_3.8": Published(
        "large_x1.8", "0031210203123320211320222131033313333333", "DetNASNet (3.8G), COCO FPN"
    ),
    "shufflenetv2_40": Published("large", "0" * 40, "hand-crafted ShuffleNetV2-40"),
}


def get_published(name: str) -> tuple[SearchSpace, Arch]:
    """The space and architecture of a published model; ValueError lists the known names."""
    try:
        entry = PUBLISHED[name]
    except KeyError:
        raise ValueError(
            f"unknown published architecture {name!r}; known: {', '.join(PUBLISHED)}"
        ) from None
    space = get_space(entry.space)
    return space, space.parse(entry.encoding)


class ScaledBaseline(NamedTuple):
    space: str  # the preset whose all-3x3 path is widened
    mflops: float  # the backbone budget it is scaled to (MACs / 1e6 at 224x224)
    description: str


# The paper's hand-crafted baselines: every block choice 0, every channel count times one factor.
SCALED_BASELINES: dict[str, ScaledBaseline] = {
    "shufflenetv2_20_300m": ScaledBaseline("small", 300, "ShuffleNetV2-20 (scaled to 300M)"),
    "shufflenetv2_40_1300m": ScaledBaseline("large", 1300, "ShuffleNetV2-40 (scaled to 1300M, DetNASNet's budget)"),
}


@lru_cache(maxsize=32)
def scaled_shufflenetv2(space: str | SearchSpace, mflops: float) -> "WidthMatch":
    """The all-3x3 ShuffleNetV2 of preset ``space`` widened to ``mflops`` backbone MFLOPs (within 2%,
    at or under when the channel rounding allows). ValueError names the budget when 2% is out of reach."""
    from .flops import match_width  # torch: imported when a width is searched, not by `archs` users

    base = get_space(space) if isinstance(space, str) else space
    return match_width(base, base.uniform(0), mflops * 1e6, tolerance=0.02)
