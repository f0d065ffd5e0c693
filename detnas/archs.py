"""The architectures published with DetNAS, as data: name -> (space, encoding)."""

from __future__ import annotations

from typing import NamedTuple

from .space import Arch, SearchSpace, get_space

__all__ = ["PUBLISHED", "Published", "get_published"]


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
