"""Evaluation: detections as COCO results, COCO box metrics (``detnas.coco_eval``), classification
top-1, and the prepared image sets a search job scores every candidate on (decoded once, reused for
every candidate).

Every detector forward of the pipeline on images without targets goes through ``model_batches``: the
evaluate stage on its test split, a search scoring its candidates, and ``detect`` on a user's image
files (``detnas.data.image_files``). An ``ImageSource`` is what it reads from: the image ids in order
and ``decoded(lo, hi)``; ``DetectionImages`` and ``ImageFiles`` are the two. ``inference_precision``
is the one place where a checkpoint's fine-tuning precision and a command's ``--amp`` /
``--channels-last`` become the precision of those forwards.
"""

from __future__ import annotations

import contextlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Protocol, Sequence

import numpy as np
import torch
from pycocotools.coco import COCO
from torch import Tensor, nn

from .coco_eval import COCO_METRICS, coco_box_metrics, results_dicts
from .data.coco import DetectionDataset
from .data.images import decode_rgb8
from .precision import Precision

__all__ = [
    "COCO_METRICS",
    "DetectionImages",
    "ImageSource",
    "coco_box_metrics",
    "detect_array",
    "detection_array",
    "detection_results",
    "image_batches",
    "inference_precision",
    "model_batches",
    "top1_counts",
]


class ImageSource(Protocol):
    """Images a detector runs on, in order: their ids (the ``image_id`` of their COCO results), the
    dataset's category ids (label k is ``category_ids[k - 1]``) and the images themselves, decoded
    on demand."""

    image_ids: Sequence[int]
    category_ids: Sequence[int]

    def __len__(self) -> int: ...

    def decoded(self, lo: int, hi: int) -> list[Tensor]:
        """Images ``lo:hi`` as uint8 (3, H, W) RGB tensors."""
        ...


def image_batches(source: ImageSource, batch_size: int, device: torch.device,
                  threads: int = 2) -> Iterator[tuple[int, list[Tensor]]]:
    """(index of the batch's first image, images float in [0, 1] (3, H, W) on ``device``) in order;
    the next batch is decoded on ``threads`` worker threads while the caller computes on this one
    (torchvision's decoders release the GIL)."""
    if batch_size < 1:
        raise ValueError(f"batch size must be >= 1, got {batch_size}")
    starts = list(range(0, len(source), batch_size))
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        pending = pool.submit(source.decoded, 0, batch_size) if starts else None
        for n, i in enumerate(starts):
            decoded = pending.result()
            if n + 1 < len(starts):
                pending = pool.submit(source.decoded, starts[n + 1], starts[n + 1] + batch_size)
            yield i, [im.to(device, non_blocking=True).float().div_(255.0) for im in decoded]


@dataclass
class DetectionImages:
    """The images of an annotation file with their targets, kept in memory as their encoded file
    bytes (JPEG/PNG as on disk) and decoded batch by batch, or decoded (uint8 (3, H, W)) with
    ``decoded=True``.

    A search job loads its search-validation and recalibration images once and scores every
    candidate on them. Encoded, 5,000 COCO images take ~0.8 GB instead of ~4.6 GB decoded; decoding a
    batch runs on worker threads while the model computes on the batch before it.
    """

    images: list[Tensor]  # encoded bytes (uint8, 1-D), or decoded uint8 (3, H, W)
    targets: list[dict[str, Any]]
    image_ids: list[int]
    category_ids: list[int]
    coco: COCO
    ann_file: Path
    encoded: bool = True
    decode_threads: int = 2

    @classmethod
    def load(cls, ann_file: str | Path, *, limit: int | None = None, seed: int = 0, with_objects: bool = False,
             decoded: bool = False) -> "DetectionImages":
        """All images of ``ann_file``, or ``limit`` of them drawn with ``seed`` (sorted by id).

        ``with_objects``: only images with at least one (non-crowd) box (recalibration forwards
        images in training mode, which needs targets). ``decoded``: keep decoded tensors (4-10x the
        memory; what the search kept before).
        """
        ds = DetectionDataset(Path(ann_file), train=False, skip_empty=with_objects, uint8=True)
        ids = sorted(ds.image_ids)
        if limit is not None and limit < len(ids):
            ids = sorted(np.random.default_rng(seed).choice(ids, size=limit, replace=False).tolist())
        index = {image_id: i for i, image_id in enumerate(ds.image_ids)}
        if decoded:
            items = [ds[index[i]] for i in ids]
            return cls([im for im, _ in items], [t for _, t in items], ids, ds.category_ids, ds.coco, Path(ann_file),
                       encoded=False)
        images = [ds.encoded(index[i]) for i in ids]
        return cls(images, [ds.target(index[i]) for i in ids], ids, ds.category_ids, ds.coco, Path(ann_file))

    def __len__(self) -> int:
        return len(self.images)

    def nbytes(self) -> int:
        """Bytes the images hold in memory (encoded or decoded)."""
        return sum(im.numel() * im.element_size() for im in self.images)

    def decoded(self, lo: int, hi: int) -> list[Tensor]:
        """Images ``lo:hi`` as (3, H, W) uint8 tensors (decoded from their bytes where kept encoded)."""
        if not self.encoded:
            return self.images[lo:hi]
        out = []
        for im, image_id in zip(self.images[lo:hi], self.image_ids[lo:hi]):
            name = self.coco.imgs[image_id]["file_name"]  # changed on disk after the split checked it: say which
            out.append(decode_rgb8(im, f"'{name}' (id {image_id}) of {self.ann_file}"))
        return out

    def batches(self, batch_size: int, device: torch.device) -> Iterable[tuple[list[Tensor], list[dict[str, Any]]]]:
        """(images float in [0, 1] on ``device``, targets on ``device``) in order; the next batch is
        decoded on worker threads while the caller computes on this one (``image_batches``)."""
        for i, ims in image_batches(self, batch_size, device, self.decode_threads):
            tgs = [{k: v.to(device) if isinstance(v, Tensor) else v for k, v in t.items()}
                   for t in self.targets[i:i + len(ims)]]
            yield ims, tgs


def detection_array(outputs: Sequence[dict[str, Tensor]], image_ids: Sequence[int],
                    category_ids: Sequence[int]) -> np.ndarray:
    """torchvision detections (XYXY boxes, labels 1..K) -> COCO results as one (N, 7) float64 array
    of rows (image_id, x, y, w, h, score, category_id) (``detnas.coco_eval``), boxes rounded to 3
    decimals, dataset category ids.

    A label outside 1..K is dropped: label k is category ``category_ids[k - 1]``, so label 0 would
    silently become the last category through negative indexing. Our Faster R-CNN never reports 0
    (torchvision drops its background column) and our RetinaNet masks its class-0 logit
    (``detnas.detectors``); this keeps any other model from scoring a background box as a class.
    """
    cats = np.asarray(category_ids, dtype=np.float64)
    rows = []
    for out, image_id in zip(outputs, image_ids):
        if len(out["boxes"]) == 0:
            continue
        boxes = out["boxes"].detach().cpu().to(torch.float64).numpy()
        labels = out["labels"].detach().cpu().numpy()
        keep = (labels >= 1) & (labels <= len(cats))
        scores = out["scores"].detach().cpu().to(torch.float64).numpy()[keep]
        boxes, labels = boxes[keep], labels[keep]
        block = np.empty((len(boxes), 7))
        block[:, 0] = image_id
        block[:, 1:3] = boxes[:, :2]
        block[:, 3:5] = boxes[:, 2:] - boxes[:, :2]
        block[:, 1:5] = np.round(block[:, 1:5], 3)
        block[:, 5] = scores
        block[:, 6] = cats[labels - 1]
        rows.append(block)
    return np.concatenate(rows) if rows else np.empty((0, 7))


def detection_results(outputs: Sequence[dict[str, Tensor]], image_ids: Sequence[int], category_ids: Sequence[int]) -> list[dict[str, Any]]:
    """``detection_array`` as COCO result dicts (xywh boxes, dataset category ids)."""
    return results_dicts(detection_array(outputs, image_ids, category_ids))


def inference_precision(meta: dict[str, Any], device: torch.device, *, amp: str | bool | None = None,
                        channels_last: bool | str | None = None) -> Precision:
    """The precision a detector's inference runs in on ``device``: ``amp`` and ``channels_last`` as
    given, None for the setting the detector was fine-tuned with (its checkpoint's ``precision``;
    "auto" for a checkpoint without it), resolved for ``device`` (``detnas.precision``)."""
    trained = meta.get("precision") or {}
    return Precision.resolve(trained.get("amp", "auto") if amp is None else amp,
                             trained.get("channels_last", "auto") if channels_last is None else channels_last,
                             device)


def model_batches(model: nn.Module, source: ImageSource, *, batch_size: int, device: torch.device,
                  precision: Precision | None = None) -> Iterator[tuple[Sequence[int], list[dict[str, Tensor]]]]:
    """(image ids, torchvision detections: boxes XYXY float32 in the image's pixels, scores, labels
    1..K) of ``source``'s images, batch by batch, the model in eval mode without gradients (its mode
    is restored at the end), each forward under ``precision``'s autocast (None: as the caller set it
    up; the boxes come out in float32 either way: ``detnas.detectors``)."""
    was_training = model.training
    model.eval()
    autocast = precision.autocast if precision is not None else contextlib.nullcontext
    try:
        for i, ims in image_batches(source, batch_size, device, getattr(source, "decode_threads", 2)):
            # no_grad and autocast around the forward only: a generator's context would stay entered
            # in the caller's code between two batches
            with torch.no_grad(), autocast():
                outputs = model(ims)
            yield source.image_ids[i:i + len(ims)], outputs
    finally:
        model.train(was_training)


def detect_array(model: nn.Module, data: ImageSource, *, batch_size: int, device: torch.device,
                 precision: Precision | None = None) -> np.ndarray:
    """The (N, 7) detections array (``detection_array``) of ``model`` on ``data``'s images
    (``model_batches``: eval mode, restored; ``precision``'s autocast)."""
    blocks = [detection_array(outputs, ids, data.category_ids)
              for ids, outputs in model_batches(model, data, batch_size=batch_size, device=device, precision=precision)]
    return np.concatenate(blocks) if blocks else np.empty((0, 7))


@torch.no_grad()
def top1_counts(model: nn.Module, batches: Iterable[tuple[Tensor, Tensor]], device: torch.device) -> tuple[int, int]:
    """(images whose arg-max logit is the label, images) over ``batches`` (eval mode; the mode is
    restored)."""
    was_training = model.training
    model.eval()
    correct = total = 0
    for x, y in batches:
        pred = model(x.to(device)).argmax(1).cpu()
        correct += int((pred == y).sum())
        total += len(y)
    model.train(was_training)
    return correct, total
