"""Did a network learn? Two checks the pipeline applies to every training and every evaluated detector.

- ``loss_health``: the training loss over the last part of the schedule against the part before it.
  A loss that rises at the end (a learning rate too high for the schedule, a diverging run) is
  flagged. Only the end counts: Faster R-CNN's total loss may rise early on as the RPN starts to
  propose real objects and the box head gets more positives to regress.
- ``chance_health``: a detector's AP50 on the test split against the AP50 of the same detections
  moved to other images (each image gets the detections of the next one, a cyclic shift over the
  sorted image ids). The shifted detections keep everything a detector could know without looking
  at the image (how many boxes, of which classes and sizes, where they usually are, how confident),
  so their AP50 is what "predicting the dataset's typical boxes" scores. A detector within
  ``CHANCE_MARGIN`` of it, or below, is flagged as no better than chance.

Both return plain dicts, written into ``metrics.json`` and ``final.json`` under ``health``.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

__all__ = ["CHANCE_MARGIN", "LOSS_RISE", "chance_health", "health_summary", "loss_health", "loss_health_line",
           "shifted_detections", "training_health"]

LOSS_RISE = 0.10  # the last part's mean loss this much above the part before it: flagged
TAIL = 0.25  # the last part: this share of the logged steps (and the same share before it)
CHANCE_MARGIN = 0.05  # AP50 within this of the shifted detections' AP50 (or below): flagged


def loss_health(history: Sequence[dict[str, Any]], key: str = "loss") -> dict[str, Any]:
    """Mean ``key`` over the last ``TAIL`` of the logged steps against the ``TAIL`` before it.

    Returns {"checked", "rising", "last", "before", "rise", "steps"}; ``checked`` False (with
    ``reason``) when fewer than 4 finite values were logged: too short to tell.
    """
    logged = [(int(r["step"]), float(r[key])) for r in history
              if r.get(key) is not None and math.isfinite(float(r[key]))]
    if len(logged) < 4:
        return {"checked": False, "rising": False, "reason": f"{len(logged)} logged {key} values: too few to tell"}
    k = max(1, round(len(logged) * TAIL))
    last, before = [v for _, v in logged[-k:]], [v for _, v in logged[-2 * k:-k]]
    mean_last, mean_before = sum(last) / len(last), sum(before) / len(before)
    rise = mean_last / mean_before - 1 if mean_before > 0 else 0.0
    return {"checked": True, "rising": rise > LOSS_RISE, "last": mean_last, "before": mean_before, "rise": rise,
            "steps": [logged[-2 * k][0], logged[-1][0]]}


def training_health(metrics: dict[str, Any]) -> dict[str, Any]:
    """The loss health of a training stage's metrics.json: the ``health`` it wrote, or (a file
    written before the check existed) computed from its ``history``."""
    return metrics.get("health") or loss_health(metrics.get("history") or [])


def loss_health_line(check: dict[str, Any]) -> str:
    """One log line for a ``loss_health`` result; a flagged one starts with "HEALTH WARNING"."""
    if not check.get("checked"):
        return f"health: loss trend not checked ({check.get('reason')})"
    first, end = check["steps"]
    trend = f"mean loss {check['before']:.4g} -> {check['last']:.4g} ({check['rise']:+.1%}) over steps {first}-{end}"
    if check["rising"]:
        return (f"HEALTH WARNING: the loss rose over the last quarter of the schedule: {trend} (more than "
                f"{LOSS_RISE:.0%}); the network may not have learned: check the learning rate and warm-up")
    return f"health: {trend}: not rising"


def shifted_detections(results: Sequence[dict[str, Any]] | np.ndarray,
                       image_ids: Sequence[int]) -> list[dict[str, Any]] | np.ndarray:
    """``results`` (COCO detections: dicts, or an (N, 7) array of ``detnas.coco_eval``) with each
    image's detections given to the next image (sorted ids, the last to the first): what the
    detector would score if it ignored the pixels."""
    order = sorted(image_ids)
    target = {a: b for a, b in zip(order, order[1:] + order[:1])} if len(order) >= 2 else {}
    if isinstance(results, np.ndarray):
        ids = np.asarray(order, dtype=np.float64)
        shifted = results[np.isin(results[:, 0], ids) & (len(ids) >= 2)].copy()
        shifted[:, 0] = np.roll(ids, -1)[np.searchsorted(ids, shifted[:, 0])]
        return shifted
    return [{**r, "image_id": target[r["image_id"]]} for r in results if r["image_id"] in target]


def chance_health(ap50: float | None, shifted_ap50: float | None) -> dict[str, Any]:
    """{"checked", "at_chance", "AP50", "AP50_shifted", "margin"}: at chance when the detector's
    AP50 is within ``CHANCE_MARGIN`` of (or below) the shifted detections' AP50."""
    if ap50 is None or shifted_ap50 is None:
        return {"checked": False, "at_chance": False, "reason": "AP50 undefined (no ground-truth box)"}
    return {"checked": True, "at_chance": ap50 <= shifted_ap50 + CHANCE_MARGIN, "AP50": ap50,
            "AP50_shifted": shifted_ap50, "margin": CHANCE_MARGIN}


def health_summary(*, losses: dict[str, dict[str, Any] | None], chance: dict[str, Any] | None) -> dict[str, Any]:
    """The ``health`` of final.json: ``ok``, ``flags`` (one short sentence each) and the checks.
    ``losses``: training name (e.g. "classifier", "detector") -> its ``loss_health``."""
    flags = []
    for name, check in losses.items():
        if check and check.get("rising"):
            flags.append(f"{name} loss rose {check['rise']:+.0%} over the last quarter of its schedule")
    if chance and chance.get("at_chance"):
        flags.append(f"test AP50 {chance['AP50']:.3f} is no better than chance ({chance['AP50_shifted']:.3f} with "
                     f"every image's detections moved to another image)")
    return {"ok": not flags, "flags": flags, "losses": losses, "chance": chance}
