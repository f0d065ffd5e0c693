"""A retrained detector as ONNX models at one fixed input size, and the check that ONNX Runtime
computes what PyTorch does.

What is exported:

- ``FixedSizeDetector``: the whole torchvision detector (normalization, backbone, FPN, RPN or
  RetinaNet head, box decoding, NMS) on one image of a fixed size: input ``images`` float32
  (1, 3, H, W), RGB in [0, 1], already letterboxed to (H, W) (``letterbox``); outputs ``boxes``
  (N, 4) XYXY in input pixels, ``scores`` (N,), ``labels`` (N,) int64 1..K (label k is the k-th
  category id of the checkpoint). The transform's resize is made a no-op (``_NoResize``): the input
  already has the size the graph was traced at, and a resize by 1.0 would only add an interpolation.
  N is data-dependent, from 0 to the detector's ``detections_per_image``.
- ``BackboneFeatures``: the backbone body alone (stem and stages, the feature maps the FPN takes:
  C2..C5 for Faster R-CNN, C3..C5 for RetinaNet), on the same input (it normalizes as the detector
  does), with its weights.

The default input size is (H, W) = (``min_size``, ``max_size``) of the detector's settings: for a
landscape image, ``letterbox``'s scale min(H / h, W / w) is then the very scale the detector's own
transform resizes by, min(min_size / h, max_size / w), and the resizing is the same call
(``interpolate``, bilinear, ``recompute_scale_factor``), so the detector sees the same pixels.

Exporter: the TorchScript-based one, ``torch.onnx.export(..., dynamo=False)``. The torch.export-based
exporter (``dynamo=True``, the default since torch 2.9; needs onnxscript) was tried on both
detectors with torch 2.14.1 / torchvision 0.29.1 and fails at its first step: ``torch.export``
cannot trace torchvision's NMS, which branches on the number of boxes that passed the score
threshold, a data-dependent size (``GuardOnDataDependentSymNode``: ``boxes.numel() > 4000`` in
``batched_nms`` for RetinaNet, ``if boxes.numel() == 0`` in its coordinate trick for Faster R-CNN).
The TorchScript exporter scripts that function (``_script_if_tracing``) into an ONNX ``If``, so the
graph also runs on an image without any detection. ``exporter="dynamo"`` stays selectable for a later torch.
The tracer's warnings (Python values of shapes becoming constants) are expected at a fixed size and
silenced.

Parity (``parity``): the exported files run in ONNX Runtime (CPUExecutionProvider) and the same
wrappers in PyTorch (float32, CPU) on real images letterboxed to the input size; detections are
matched by order after sorting by score (stable; among scores tied within the score tolerance, whose
order neither side fixes, by label and box), boxes within ``BOX_TOLERANCE`` x max(H, W) px,
scores within ``SCORE_TOLERANCE``, labels equal; feature maps within ``FEATURE_TOLERANCE``. The one
disagreement allowed is at a cut: where candidates score alike within the score tolerance at the
lowest score of an image, which of them makes the ``detections_per_image`` top-k (or the score
threshold) is decided by rounding, and a swap there is counted (``cut_swaps``), not failed, up to
``MAX_CUT_SWAPS`` of an image's detections (``compare_detections``).
"""

from __future__ import annotations

import copy
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection.transform import GeneralizedRCNNTransform

__all__ = [
    "BOX_TOLERANCE",
    "EXPORTERS",
    "FEATURE_TOLERANCE",
    "MAX_CUT_SWAPS",
    "SCORE_TOLERANCE",
    "BackboneFeatures",
    "FixedSizeDetector",
    "ParityError",
    "compare_detections",
    "export_onnx",
    "letterbox",
    "onnx_session",
    "parity",
]

BOX_TOLERANCE = 1e-3  # x max(H, W): 0.8 px at 800x1333, 0.064 px at 64x64
SCORE_TOLERANCE = 1e-4
FEATURE_TOLERANCE = 1e-4
# at most this fraction of an image's detections may be swapped at a cut (compare_detections): more
# means the model's scores barely tell its candidates apart (an untrained head scoring every anchor
# alike), and parity is not shown
MAX_CUT_SWAPS = 0.1
EXPORTERS = ("torchscript", "dynamo")


class ParityError(ValueError):
    """ONNX Runtime does not compute what PyTorch does (the message gives the figures). A
    ValueError so that the command line reports it on one line, like any refused input."""


class _NoResize(GeneralizedRCNNTransform):
    """torchvision's detection transform without its resize: normalization and batching only."""

    def resize(self, image: Tensor, target: dict[str, Tensor] | None = None) -> tuple[Tensor, dict[str, Tensor] | None]:
        return image, target


class FixedSizeDetector(nn.Module):
    """A copy of ``detector`` (eval mode) taking one letterboxed image (1, 3, H, W) in [0, 1] and
    returning (boxes (N, 4) XYXY, scores (N,), labels (N,)) in the input's pixels."""

    def __init__(self, detector: nn.Module) -> None:
        super().__init__()
        self.detector = copy.deepcopy(detector).eval()
        t = self.detector.transform
        self.detector.transform = _NoResize(t.min_size, t.max_size, t.image_mean, t.image_std,
                                            size_divisible=t.size_divisible, fixed_size=t.fixed_size)
        self.eval()  # the exporter puts a module back in the mode it found it in: eval, not a new module's train

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        (out,) = self.detector([images[0]])
        return out["boxes"], out["scores"], out["labels"]


class BackboneFeatures(nn.Module):
    """A copy of ``detector``'s backbone body (stem and stages, eval mode) on the detector's input
    (1, 3, H, W) in [0, 1], normalized as the detector's transform does; returns the feature maps
    the FPN takes, shallowest first (``names``: their stage names; ``levels``: C2..C5)."""

    def __init__(self, detector: nn.Module) -> None:
        super().__init__()
        self.body = copy.deepcopy(detector.backbone.body).eval()
        t = detector.transform
        self.register_buffer("mean", torch.tensor(t.image_mean, dtype=torch.float32).view(3, 1, 1))
        self.register_buffer("std", torch.tensor(t.image_std, dtype=torch.float32).view(3, 1, 1))
        returned = self.body.return_layers  # stage name -> output key, in forward order
        stages = list(detector.backbone.body.keys())  # the body's children in order: stem, stage1..
        self.names = [n for n in stages if n in returned]
        self.levels = [f"C{stages.index(n) + 1}" for n in self.names]  # stem is index 0; stage1 is C2
        self.eval()

    def forward(self, images: Tensor) -> tuple[Tensor, ...]:
        return tuple(self.body((images - self.mean) / self.std).values())


def letterbox(image: Tensor, size: tuple[int, int], mean: Sequence[float]) -> tuple[Tensor, float]:
    """A uint8 (3, h, w) image -> (float32 (1, 3, H, W) in [0, 1], scale): resized by
    min(H / h, W / w) as torchvision's detection transform resizes (bilinear, ``recompute_scale_factor``),
    placed top-left and padded with ``mean`` (the detector's mean colour, which normalizes to 0 as
    torchvision's own batch padding is). A box of the output maps back to the image by dividing by
    ``scale``."""
    height, width = size
    h, w = image.shape[-2:]
    scale = min(height / h, width / w)
    x = image.float().div(255.0)[None]
    resized = F.interpolate(x, scale_factor=scale, mode="bilinear", recompute_scale_factor=True, align_corners=False)
    out = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1).expand(1, 3, height, width).clone()
    rh, rw = min(height, resized.shape[-2]), min(width, resized.shape[-1])
    out[..., :rh, :rw] = resized[..., :rh, :rw]
    return out, scale


def _export_failure(exc: BaseException) -> str:
    """torch.export's reason, on one line: its "Exception summary" and "Caused by" lines (the rest
    of its message is advice), else the message's start."""
    lines = [line.strip() for line in str(exc).splitlines()]
    picked = []
    if "## Exception summary" in lines:
        picked += [line for line in lines[lines.index("## Exception summary") + 1:] if line][:1]
    picked += [line for line in lines if line.startswith("Caused by:")][:1]
    text = " ".join(picked) if picked else " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:400]}"


def export_onnx(module: nn.Module, example: Tensor, path: Path, *, output_names: Sequence[str], opset: int,
                exporter: str = "torchscript") -> None:
    """``module`` as ONNX at ``path`` (weights inside), traced on ``example``, input named ``images``
    at its fixed shape; checked with ``onnx.checker``. ValueError when ``exporter`` ("torchscript" or
    "dynamo", see the module docstring) cannot export it."""
    import onnx

    if exporter not in EXPORTERS:
        raise ValueError(f"exporter must be one of {', '.join(EXPORTERS)}, got {exporter!r}")
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer warnings: shapes as constants, expected at a fixed size
        try:
            torch.onnx.export(module, (example,), str(path), dynamo=exporter == "dynamo", opset_version=opset,
                              input_names=["images"], output_names=list(output_names), do_constant_folding=True,
                              verbose=False)
        except Exception as exc:
            if exporter == "torchscript":
                raise
            raise ValueError(f"the dynamo exporter cannot export this model ({_export_failure(exc)}); "
                             f"use the torchscript exporter") from exc
    onnx.checker.check_model(str(path))


def onnx_session(path: Path, threads: int = 0) -> Any:
    """An ONNX Runtime session on the CPU (``threads``: intra-op threads, 0 for its default)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    options.log_severity_level = 3  # errors only
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


def _by_score(boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, ...]:
    order = np.argsort(-scores, kind="stable")
    return boxes[order].astype(np.float64), scores[order].astype(np.float64), labels[order]


def _tie_order(tb: np.ndarray, ts: np.ndarray, tl: np.ndarray, ob: np.ndarray, os_: np.ndarray, ol: np.ndarray,
               score_tolerance: float) -> np.ndarray:
    """For each PyTorch detection in score order, the ONNX detection it is compared with: the next
    one in score order, except among scores within ``score_tolerance`` of its own, whose order
    neither side fixes (an untrained head scores thousands of anchors alike): there the unused one
    of the same label with the closest box (max coordinate difference), else the closest box."""
    n = min(len(ts), len(os_))
    used = np.zeros(len(os_), dtype=bool)
    pick = np.empty(n, dtype=np.int64)
    for i in range(n):
        tied = np.flatnonzero(~used & (np.abs(os_ - ts[i]) <= score_tolerance))
        if len(tied) == 0:
            tied = np.flatnonzero(~used)[:1]  # scores apart: the order decides, and the score check fails
        diff = np.abs(ob[tied] - tb[i]).max(axis=1) + np.where(ol[tied] == tl[i], 0.0, np.inf)
        if not np.isfinite(diff).any():
            diff = np.abs(ob[tied] - tb[i]).max(axis=1)
        pick[i] = tied[int(np.argmin(diff))]
        used[pick[i]] = True
    return pick


def compare_detections(torch_out: Sequence[np.ndarray], onnx_out: Sequence[np.ndarray], *,
                       box_tolerance_px: float, score_tolerance: float = SCORE_TOLERANCE) -> dict[str, Any]:
    """One image's (boxes, scores, labels) from PyTorch and from ONNX Runtime, matched by order after
    sorting each by score (detections whose scores tie within ``score_tolerance`` matched by label
    and box: ``_tie_order``).

    A pair agrees when its labels are equal and its boxes within ``box_tolerance_px``. A pair that
    does not, or a detection one side has beyond the other's count, is a *cut swap* when its scores
    lie within ``score_tolerance`` of the lowest score of the image: at a cut (the
    ``detections_per_image`` top-k, the score threshold) which of two candidates scoring alike to
    1e-7 survives is decided by the last bits of either runtime, not by the model. The figures:
    counts, the largest box difference over agreeing pairs, the largest difference of the sorted
    scores, the fraction of pairs with equal labels (1.0 with none), the cut swaps and the other
    disagreements (``mismatches``); ``passed`` when there are no mismatches, the scores agree and at
    most ``MAX_CUT_SWAPS`` of the detections are cut swaps."""
    tb, ts, tl = _by_score(*(np.asarray(a) for a in torch_out))
    ob, os_, ol = _by_score(*(np.asarray(a) for a in onnx_out))
    n = min(len(ts), len(os_))
    pick = _tie_order(tb, ts, tl, ob, os_, ol, score_tolerance)
    box_diff = np.abs(tb[:n] - ob[pick]).max(axis=1) if n else np.zeros(0)
    same_label = tl[:n] == ol[pick]
    agree = same_label & (box_diff <= box_tolerance_px)
    floor = min(ts.min(initial=np.inf), os_.min(initial=np.inf)) + score_tolerance
    at_cut = (ts[:n] <= floor) & (os_[pick] <= floor)
    extra = np.concatenate([ts[n:], os_[n:]])  # detections only one side reports
    swaps = int(np.sum(~agree & at_cut) + np.sum(extra <= floor))
    mismatches = int(np.sum(~agree & ~at_cut) + np.sum(extra > floor))
    score = float(np.abs(ts[:n] - os_[:n]).max()) if n else 0.0  # sorted scores compare whatever the tie order
    return {
        "torch_detections": int(len(ts)),
        "onnx_detections": int(len(os_)),
        "matched": int(agree.sum()),
        "max_box_abs_diff": float(box_diff[agree].max()) if agree.any() else 0.0,
        "max_score_diff": score,
        "label_agreement": float(same_label.mean()) if n else 1.0,
        "cut_swaps": swaps,
        "mismatches": mismatches,
        "passed": bool(mismatches == 0 and score <= score_tolerance
                       and swaps <= MAX_CUT_SWAPS * max(len(ts), len(os_))),
    }


def parity(detector: FixedSizeDetector, backbone: BackboneFeatures, detector_onnx: Path, backbone_onnx: Path,
           inputs: Sequence[tuple[str, Tensor]], *, threads: int = 0) -> dict[str, Any]:
    """Run both exported files in ONNX Runtime and both wrappers in PyTorch on ``inputs`` ((name,
    letterboxed (1, 3, H, W)) pairs) and compare (see the module docstring): per image
    (``compare_detections`` plus ``feature_max_diff``) and over all, with the tolerances used and
    ``passed``."""
    if not inputs:
        raise ValueError("parity needs at least one image")
    height, width = inputs[0][1].shape[-2:]
    box_tol = BOX_TOLERANCE * max(height, width)
    det_session, bb_session = onnx_session(detector_onnx, threads), onnx_session(backbone_onnx, threads)
    rows = []
    detector.eval()
    backbone.eval()
    with torch.no_grad():
        for name, x in inputs:
            feed = {"images": x.numpy()}
            row = {"image": name, **compare_detections([t.numpy() for t in detector(x)], det_session.run(None, feed),
                                                       box_tolerance_px=box_tol)}
            features = zip((f.numpy() for f in backbone(x)), bb_session.run(None, feed))
            row["feature_max_diff"] = max(float(np.abs(t.astype(np.float64) - o).max()) for t, o in features)
            row["passed"] = row["passed"] and row["feature_max_diff"] <= FEATURE_TOLERANCE
            rows.append(row)
    return {
        "images": len(rows),
        "detections_compared": sum(r["matched"] for r in rows),
        "cut_swaps": sum(r["cut_swaps"] for r in rows),
        "mismatches": sum(r["mismatches"] for r in rows),
        "max_box_abs_diff": max(r["max_box_abs_diff"] for r in rows),
        "max_score_diff": max(r["max_score_diff"] for r in rows),
        "label_agreement": min(r["label_agreement"] for r in rows),
        "counts_equal": all(r["torch_detections"] == r["onnx_detections"] for r in rows),
        "feature_max_diff": max(r["feature_max_diff"] for r in rows),
        "box_tolerance_px": box_tol,
        "score_tolerance": SCORE_TOLERANCE,
        "feature_tolerance": FEATURE_TOLERANCE,
        "passed": all(r["passed"] for r in rows),
        "per_image": rows,
    }
