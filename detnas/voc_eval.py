"""PASCAL VOC detection AP at IoU 0.5, in numpy: the 2007 11-point metric (the paper's VOC numbers)
and the 2010+ area-under-curve variant.

The semantics are the official devkit's (``VOCevaldet.m``, ``VOCap.m``; py-faster-rcnn's
``voc_eval.py`` is a port), per class:

- detections are sorted by score, descending (a stable sort: ties keep their input order, as
  MATLAB's ``sort`` does);
- each is matched to the ground-truth box of its image with the highest IoU (the first one on a
  tie), difficult boxes included;
- IoU >= 0.5 with a non-difficult box not yet matched: true positive, and the box is matched;
  with a box matched before: false positive (a duplicate); with a difficult box: ignored, neither
  true nor false positive. IoU < 0.5, or no box of the class in the image: false positive. The
  devkit tests ``ov >= minoverlap``; py-faster-rcnn's port tests ``>``, which differs only for an
  IoU of exactly 0.5: we follow the devkit;
- the number of positives counts non-difficult boxes only.

Boxes are COCO ``[x, y, w, h]`` in continuous pixels and IoU is the plain continuous one. The devkit
adds 1 to every width and height because its corners are 1-based inclusive pixel indices; our
annotations come from those corners as ``x = xmin - 1, w = xmax - xmin + 1`` (``detnas.data.voc``),
so our box spans ``[xmin - 1, xmax]`` and the plain IoU of two such boxes equals the devkit's IoU of
the original corners (tests/test_voc_metric.py checks it).

In the internal annotation format a VOC ``difficult`` object is ``iscrowd: 1``: that is the flag
read here.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Collection, Iterable, Mapping

import numpy as np

__all__ = ["VOC_METRICS", "ap_area", "ap_11point", "iou_xywh", "voc_ap"]

# the two class-averaged figures of ``voc_ap``; the first is the paper's (METHOD.md section 5)
VOC_METRICS = ("mAP50_voc07", "mAP50_voc12")

# Recall thresholds 0, 0.1, ..., 1.0 as exact tenths: py-faster-rcnn's ``np.arange(0., 1.1, 0.1)``
# yields 0.30000000000000004 (and 0.6000000000000001, 0.7000000000000001), so a recall of exactly
# 3/10 would miss the 0.3 point there. The metric is defined on the tenths.
_RECALL_POINTS = np.arange(11) / 10.0


def iou_xywh(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one box (4,) with each of ``boxes`` (N, 4), all ``[x, y, w, h]``; (N,). Degenerate
    pairs (union 0) have IoU 0."""
    x1 = np.maximum(box[0], boxes[:, 0])
    y1 = np.maximum(box[1], boxes[:, 1])
    x2 = np.minimum(box[0] + box[2], boxes[:, 0] + boxes[:, 2])
    y2 = np.minimum(box[1] + box[3], boxes[:, 1] + boxes[:, 3])
    inter = np.clip(x2 - x1, 0.0, None) * np.clip(y2 - y1, 0.0, None)
    union = box[2] * box[3] + boxes[:, 2] * boxes[:, 3] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def ap_11point(recall: np.ndarray, precision: np.ndarray) -> float:
    """VOC 2007: the mean over t in {0, 0.1, ..., 1} of the best precision at recall >= t (0 where
    no point reaches t)."""
    return float(np.mean([precision[recall >= t].max() if (recall >= t).any() else 0.0 for t in _RECALL_POINTS]))


def ap_area(recall: np.ndarray, precision: np.ndarray) -> float:
    """VOC 2010+: the area under the monotone precision envelope (precision at recall r = the best
    precision at any recall >= r), summed over the recall steps. ``recall`` is non-decreasing."""
    mrec = np.concatenate(([0.0], recall, [1.0]))
    mpre = np.concatenate(([0.0], precision, [0.0]))
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    step = np.flatnonzero(mrec[1:] != mrec[:-1])
    return float(np.sum((mrec[step + 1] - mrec[step]) * mpre[step + 1]))


def _pr_curve(
    dets: list[tuple[int, float, np.ndarray]],
    gts: Mapping[int, tuple[np.ndarray, np.ndarray]],
    n_pos: int,
    iou_threshold: float,
) -> tuple[np.ndarray, np.ndarray]:
    """(recall, precision) after each counted detection of one class, in score order.

    ``dets``: (image id, score, xywh box); ``gts``: image id -> (boxes (N, 4), difficult (N,) bool).
    Ignored detections (matched to a difficult box) are left out of the curve: the devkit keeps them
    with tp = fp = 0, which only repeats the previous point and so never changes either AP.
    """
    order = np.argsort(-np.array([s for _, s, _ in dets], dtype=np.float64), kind="stable")
    matched = {image_id: np.zeros(len(boxes), dtype=bool) for image_id, (boxes, _) in gts.items()}
    outcome: list[bool] = []  # True: true positive, False: false positive
    for i in order:
        image_id, _, box = dets[i]
        boxes, difficult = gts.get(image_id, (np.zeros((0, 4)), np.zeros(0, dtype=bool)))
        if len(boxes) == 0:
            outcome.append(False)
            continue
        overlaps = iou_xywh(box, boxes)
        j = int(np.argmax(overlaps))
        if overlaps[j] < iou_threshold:
            outcome.append(False)
        elif difficult[j]:
            continue
        elif matched[image_id][j]:
            outcome.append(False)  # a second detection of a box already found
        else:
            matched[image_id][j] = True
            outcome.append(True)
    tp = np.cumsum(np.array(outcome, dtype=np.float64))
    return tp / n_pos, tp / np.arange(1, len(tp) + 1)  # every counted detection is a TP or an FP


def voc_ap(
    detections: Iterable[Mapping[str, Any]],
    ground_truth: Iterable[Mapping[str, Any]],
    classes: Mapping[int, str],
    *,
    image_ids: Collection[int] | None = None,
    iou_threshold: float = 0.5,
) -> dict[str, Any]:
    """VOC AP per class and averaged over classes.

    ``detections``: COCO results (``image_id``, ``category_id``, ``bbox`` [x, y, w, h], ``score``);
    ``ground_truth``: COCO annotations (``image_id``, ``category_id``, ``bbox``, ``iscrowd``: 1 for a
    VOC ``difficult`` object); ``classes``: category id -> name, every class to report;
    ``image_ids``: score on these images only (default: all). Returns::

        {"mAP50_voc07": float | None, "mAP50_voc12": float | None,
         "per_class": {name: {"ap_voc07": float | None, "ap_voc12": float | None,
                              "positives": int, "detections": int}}}

    APs are fractions in [0, 1]. A class without detections has AP 0. A class without a
    non-difficult ground-truth box has no defined recall: its APs are None and it is left out of
    the means (the devkit would divide by zero); the means are None when every class is.
    """
    if len(set(classes.values())) != len(classes):
        raise ValueError(f"VOC AP: class names must be distinct (per-class APs are keyed by name), got {dict(classes)}")
    keep = None if image_ids is None else set(image_ids)
    boxes: dict[int, dict[int, list[list[float]]]] = defaultdict(lambda: defaultdict(list))
    difficult: dict[int, dict[int, list[bool]]] = defaultdict(lambda: defaultdict(list))
    for a in ground_truth:
        if keep is not None and a["image_id"] not in keep:
            continue
        if a["category_id"] not in classes:
            raise ValueError(f"VOC AP: ground-truth annotation {a.get('id')} has category_id {a['category_id']}, "
                             f"not one of the classes {dict(classes)}")
        boxes[a["category_id"]][a["image_id"]].append([float(v) for v in a["bbox"]])
        difficult[a["category_id"]][a["image_id"]].append(bool(a.get("iscrowd", 0)))
    dets: dict[int, list[tuple[int, float, np.ndarray]]] = defaultdict(list)
    for d in detections:
        if keep is not None and d["image_id"] not in keep:
            continue
        if d["category_id"] not in classes:
            raise ValueError(f"VOC AP: a detection on image {d['image_id']} has category_id {d['category_id']}, "
                             f"not one of the classes {dict(classes)}")
        dets[d["category_id"]].append((d["image_id"], float(d["score"]), np.asarray(d["bbox"], dtype=np.float64)))

    per_class: dict[str, dict[str, Any]] = {}
    for category_id, name in classes.items():
        gts = {image_id: (np.asarray(b, dtype=np.float64).reshape(-1, 4),
                          np.asarray(difficult[category_id][image_id], dtype=bool))
               for image_id, b in boxes[category_id].items()}
        n_pos = int(sum((~d).sum() for _, d in gts.values()))
        row: dict[str, Any] = {"ap_voc07": None, "ap_voc12": None, "positives": n_pos,
                               "detections": len(dets[category_id])}
        if n_pos > 0:
            if dets[category_id]:
                recall, precision = _pr_curve(dets[category_id], gts, n_pos, iou_threshold)
                row.update(ap_voc07=ap_11point(recall, precision), ap_voc12=ap_area(recall, precision))
            else:
                row.update(ap_voc07=0.0, ap_voc12=0.0)
        per_class[name] = row

    def mean(key: str) -> float | None:
        values = [r[key] for r in per_class.values() if r[key] is not None]
        return float(np.mean(values)) if values else None

    return {"mAP50_voc07": mean("ap_voc07"), "mAP50_voc12": mean("ap_voc12"), "per_class": per_class}
