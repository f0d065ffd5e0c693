"""Aspect-ratio grouping of detection training batches.

A detector pads every image of a batch to the batch's largest height and largest width (torchvision:
rounded up to a multiple of 32), so a landscape and a portrait image in one batch make a square
canvas that is about 40 % padding, computed and then thrown away. Batches drawn from one aspect
group (width >= height, or width < height: the two groups of the reference detection recipes) keep
the padding to a few per cent; ``benchmarks/input_pipeline.py`` measures it on a COCO-like size mix.
"""

from __future__ import annotations

from typing import Any, Iterable, Iterator, Sequence

from torch.utils.data import Sampler

__all__ = ["GroupedBatchSampler", "aspect_ratio_groups"]


def aspect_ratio_groups(sizes: Iterable[tuple[int, int]]) -> list[int]:
    """The group of each image size ``(width, height)`` in pixels: 0 landscape or square
    (width >= height), 1 portrait."""
    groups = []
    for width, height in sizes:
        if width <= 0 or height <= 0:
            raise ValueError(f"image sizes must be positive, got {width}x{height} (WxH)")
        groups.append(0 if width >= height else 1)
    return groups


class GroupedBatchSampler(Sampler[list[Any]]):
    """Batches of ``batch_size`` dataset indices, every batch from one group, out of an endless
    stream of indices (e.g. ``engine.InfiniteSampler``), or of ``(index, ...)`` tuples such as its
    ``draws()``, which are batched as they come.

    Indices are taken in stream order into one buffer per group (``group_ids[index]``); a buffer
    that reaches ``batch_size`` is emitted as a batch. So every index of the stream is emitted
    exactly once, in stream order within its group; at most ``batch_size - 1`` indices per group
    wait for their batch at any time. The batch sequence is a function of the stream alone:
    iterating starts the stream from its beginning and skips the first ``start`` batches, so a run
    resumed after ``start`` steps draws exactly the batches an uninterrupted run would have (the
    replay is index arithmetic, about a second per million indices).
    """

    def __init__(self, indices: Iterable[Any], group_ids: Sequence[int], batch_size: int, *, start: int = 0) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if start < 0:
            raise ValueError(f"start must be >= 0, got {start}")
        if not group_ids:
            raise ValueError("group_ids is empty: there are no images to batch")
        self.indices, self.group_ids = indices, list(group_ids)
        self.batch_size, self.start = batch_size, start

    def __iter__(self) -> Iterator[list[Any]]:
        buffers: dict[int, list[Any]] = {}
        emitted = 0
        for item in self.indices:
            group = self.group_ids[item[0] if isinstance(item, tuple) else item]
            buffer = buffers.setdefault(group, [])
            buffer.append(item)
            if len(buffer) == self.batch_size:
                del buffers[group]
                if emitted >= self.start:
                    yield buffer
                emitted += 1
