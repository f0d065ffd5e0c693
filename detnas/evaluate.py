"""Evaluation: COCO box metrics through pycocotools, classification top-1, and the prepared image
sets a search job scores every candidate on (decoded once, reused for every candidate)."""

from __future__ import annotations

import contextlib
import io
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from torch import Tensor, nn
from torchvision.io import ImageReadMode, decode_image

from .data.coco import DetectionDataset

__all__ = [
    "COCO_METRICS",
    "DetectionImages",
    "coco_box_metrics",
    "detect",
    "detection_results",
    "evaluate_detector",
    "top1_counts",
]

# pycocotools' stats[0..5]
COCO_METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


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
            try:
                out.append(decode_image(im, mode=ImageReadMode.RGB))
            except RuntimeError as e:  # changed on disk after the split checked it: name the file
                name = self.coco.imgs[image_id]["file_name"]
                raise ValueError(f"{self.ann_file}: image '{name}' (id {image_id}) does not decode: {e}") from e
        return out

    def batches(self, batch_size: int, device: torch.device) -> Iterable[tuple[list[Tensor], list[dict[str, Any]]]]:
        """(images float in [0, 1] on ``device``, targets on ``device``) in order; the next batch is
        decoded on worker threads while the caller computes on this one."""
        starts = list(range(0, len(self.images), batch_size))
        with ThreadPoolExecutor(max_workers=max(1, self.decode_threads)) as pool:
            pending = pool.submit(self.decoded, 0, batch_size) if starts else None
            for n, i in enumerate(starts):
                decoded = pending.result()
                if n + 1 < len(starts):
                    pending = pool.submit(self.decoded, starts[n + 1], starts[n + 1] + batch_size)
                ims = [im.to(device, non_blocking=True).float().div_(255.0) for im in decoded]
                tgs = [{k: v.to(device) if isinstance(v, Tensor) else v for k, v in t.items()}
                       for t in self.targets[i:i + batch_size]]
                yield ims, tgs


def detection_results(outputs: Sequence[dict[str, Tensor]], image_ids: Sequence[int], category_ids: Sequence[int]) -> list[dict[str, Any]]:
    """torchvision detections (XYXY boxes, labels 1..K) -> COCO results (xywh, dataset category ids).

    A label outside 1..K is dropped: label k is category ``category_ids[k - 1]``, so label 0 would
    silently become the last category through Python's negative indexing. Our Faster R-CNN never
    reports 0 (torchvision drops its background column) and our RetinaNet masks its class-0 logit
    (``detnas.detectors``); this keeps any other model from scoring a background box as a class.
    """
    results = []
    for out, image_id in zip(outputs, image_ids):
        boxes = out["boxes"].detach().cpu().to(torch.float64)
        if len(boxes) == 0:
            continue
        xywh = torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], 1).tolist()
        for box, label, score in zip(xywh, out["labels"].tolist(), out["scores"].tolist()):
            if not 1 <= label <= len(category_ids):
                continue
            results.append({"image_id": int(image_id), "category_id": int(category_ids[label - 1]),
                            "bbox": [round(v, 3) for v in box], "score": float(score)})
    return results


def _results_coco(coco: COCO, results: list[dict[str, Any]]) -> COCO:
    """``results`` as a pycocotools index; an empty one by hand, since ``loadRes([])`` fails."""
    if results:
        return coco.loadRes(results)
    dt = COCO()
    dt.dataset = {"images": list(coco.dataset["images"]), "categories": list(coco.dataset["categories"]),
                  "annotations": []}
    dt.createIndex()
    return dt


def coco_box_metrics(coco: COCO, results: list[dict[str, Any]], image_ids: Sequence[int] | None = None, *,
                     by_size: bool = True) -> dict[str, float | None]:
    """AP, AP50, AP75, APs, APm, APl (COCO's AP@[.5:.95] etc., as fractions) of ``results`` on
    ``image_ids`` (default: every image of ``coco``). No detections at all scores 0 wherever a box exists.

    A figure is None where no (non-crowd) ground-truth box counts for it: APs/APm/APl when no box
    of that size exists (COCOeval's -1), all six only when the images hold no box at all. None
    means "not defined", never "0".

    ``by_size=False``: AP, AP50 and AP75 only, the same values, in about a third of the time (what a
    search scores every candidate with): COCOeval matches every image and category once per object
    size range, and accumulates per detection limit; this asks it for all sizes and 100 detections.
    """
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress and tables
        dt = _results_coco(coco, results)
        ev = COCOeval(coco, dt, iouType="bbox")
        if image_ids is not None:
            ev.params.imgIds = list(image_ids)
        if not by_size:
            all_sizes = ev.params.areaRngLbl.index("all")
            ev.params.areaRng, ev.params.areaRngLbl = [ev.params.areaRng[all_sizes]], ["all"]
            ev.params.maxDets = [100]
        ev.evaluate()
        ev.accumulate()
        if by_size:
            ev.summarize()
            stats = ev.stats[:6]
        else:
            stats = [_mean_precision(ev), _mean_precision(ev, 0.5), _mean_precision(ev, 0.75)]
    # COCOeval's -1 is "no ground truth of that kind": undefined, so None (null in JSON)
    return {k: None if v < 0 else float(v) for k, v in zip(COCO_METRICS, stats)}


def _mean_precision(ev: COCOeval, iou: float | None = None) -> float:
    """COCOeval.summarize's AP over every IoU threshold (or at ``iou``), for its first object size
    range and last detection limit: the mean of the precisions that are defined, -1 where none is."""
    precision = ev.eval["precision"][:, :, :, 0, -1]  # (IoU thresholds, recall points, categories)
    if iou is not None:
        precision = precision[np.where(iou == ev.params.iouThrs)[0]]
    defined = precision[precision > -1]
    return float(np.mean(defined)) if defined.size else -1.0


@torch.no_grad()
def detect(model: nn.Module, data: DetectionImages, *, batch_size: int, device: torch.device) -> list[dict[str, Any]]:
    """COCO results of ``model`` (eval mode; the mode is restored) on prepared images."""
    was_training = model.training
    model.eval()
    outputs: list[dict[str, Tensor]] = []
    for ims, _ in data.batches(batch_size, device):
        outputs.extend(model(ims))
    model.train(was_training)
    return detection_results(outputs, data.image_ids, data.category_ids)


def evaluate_detector(model: nn.Module, data: DetectionImages, *, batch_size: int, device: torch.device,
                      by_size: bool = True) -> dict[str, float | None]:
    """COCO box metrics of ``model`` on prepared images (see ``coco_box_metrics``)."""
    return coco_box_metrics(data.coco, detect(model, data, batch_size=batch_size, device=device), data.image_ids,
                            by_size=by_size)


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
