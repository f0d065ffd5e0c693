"""COCO box metrics, and an evaluator that computes them in another process.

The metrics are COCOeval's (pycocotools), computed by faster-coco-eval's C++ reimplementation where
it imports (about six times faster on COCO-sized sets; the tests hold its figures to pycocotools' to
1e-12 on crowd regions, empty images and detections, size ranges, id gaps and image subsets), and by
pycocotools otherwise (one line on stderr says so). ``DETNAS_COCO_EVAL=pycocotools`` forces the
reference.

Detections travel as one float64 array of rows ``(image_id, x, y, w, h, score, category_id)``
(COCO's own numpy result format, boxes rounded to 3 decimals): converting a candidate's 500,000
detections into Python dicts would cost the process that drives the GPU a second per candidate.

``Evaluator`` runs the evaluations in a separate process (no GIL shared with the model's process),
so that one candidate's COCOeval overlaps the next candidate's recalibration and forward passes.
At most ``in_flight`` evaluations are queued or running; a submit beyond that waits for the oldest.

This module imports neither torch nor the rest of detnas: an evaluator process starts in a second.
"""

from __future__ import annotations

import contextlib
import gc
import io
import multiprocessing
import os
import sys
from collections import deque
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Any, Sequence

import numpy as np

__all__ = ["BACKEND", "COCO_METRICS", "Evaluator", "box_metrics", "coco_box_metrics", "results_array",
           "results_dicts"]

COCO_METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")  # COCOeval's stats[0..5]

_FORCED = os.environ.get("DETNAS_COCO_EVAL", "").strip()
if _FORCED not in ("", "pycocotools", "faster-coco-eval"):
    raise ValueError(f"DETNAS_COCO_EVAL must be 'pycocotools' or 'faster-coco-eval', got {_FORCED!r}")
try:
    if _FORCED == "pycocotools":
        raise ImportError("DETNAS_COCO_EVAL=pycocotools")
    import faster_coco_eval as _fast
    from faster_coco_eval.core.faster_eval_api import COCOeval_faster as _FastEval

    BACKEND = "faster-coco-eval"
except ImportError as _e:
    if _FORCED == "faster-coco-eval":
        raise
    _fast = _FastEval = None
    BACKEND = "pycocotools"
    if _FORCED != "pycocotools":
        print(f"note: faster-coco-eval does not import ({_e}); COCO metrics through pycocotools (same figures, "
              f"about six times slower)", file=sys.stderr, flush=True)
        os.environ["DETNAS_COCO_EVAL"] = "pycocotools"  # the evaluator processes need not say it again

from pycocotools.coco import COCO as _RefCOCO  # noqa: E402  (the reference, and the fallback)
from pycocotools.cocoeval import COCOeval as _RefEval  # noqa: E402

_FIELDS = 7  # image_id, x, y, w, h, score, category_id


def results_array(results: Sequence[dict[str, Any]] | np.ndarray) -> np.ndarray:
    """COCO results (dicts with image_id, bbox xywh, score, category_id) as an (N, 7) float64 array."""
    if isinstance(results, np.ndarray):
        if results.ndim != 2 or results.shape[1] != _FIELDS:
            raise ValueError(f"detections must be an (N, {_FIELDS}) array, got shape {results.shape}")
        return results.astype(np.float64, copy=False)
    out = np.empty((len(results), _FIELDS), dtype=np.float64)
    for i, r in enumerate(results):
        out[i] = (r["image_id"], *r["bbox"], r["score"], r["category_id"])
    return out


def results_dicts(detections: np.ndarray) -> list[dict[str, Any]]:
    """The rows of an (N, 7) detections array as COCO result dicts (Python numbers)."""
    return [{"image_id": int(r[0]), "category_id": int(r[6]), "bbox": [r[1], r[2], r[3], r[4]], "score": r[5]}
            for r in detections.tolist()]


def _index(dataset: dict[str, Any], fast: bool) -> Any:
    """A ground-truth index of ``dataset`` (COCO's dict) for the backend, its annotations numbered
    1..N: COCOeval (both backends) marks a ground-truth box as unmatched with the id 0, so a box
    whose id is 0 in an export would count its true detection as a false positive."""
    dataset = {**dataset, "annotations": [{**a, "id": i} for i, a in enumerate(dataset.get("annotations", []), start=1)]}
    if fast:
        return _fast.COCO(dataset)
    with contextlib.redirect_stdout(io.StringIO()):
        gt = _RefCOCO()
        gt.dataset = dataset
        gt.createIndex()
    return gt


def _loaded(gt: Any, detections: np.ndarray, fast: bool) -> Any:
    """``detections`` as a result index over ``gt``; an empty one keeps the images and categories.

    faster-coco-eval's: the annotations ``loadRes`` makes of box results (id = position + 1, area
    = w * h, not crowd), built straight from the array's columns, without the box polygon it adds
    for segmentation (a box evaluation never reads it): a third of the evaluation's time at the
    paper's size went into converting the detections."""
    if fast:
        if not len(detections):
            return gt.loadRes([])
        unknown = set(np.unique(detections[:, 0]).astype(int).tolist()) - set(gt.imgs)
        if unknown:
            raise ValueError(f"detections name image ids the ground truth does not have: {sorted(unknown)[:5]}")
        images, categories = (detections[:, i].astype(np.int64).tolist() for i in (0, 6))
        boxes, scores = detections[:, 1:5].tolist(), detections[:, 5].tolist()
        areas = (detections[:, 3] * detections[:, 4]).tolist()
        anns = [{"id": n, "image_id": i, "category_id": c, "bbox": b, "score": sc, "area": a, "iscrowd": 0}
                for n, i, c, b, sc, a in zip(range(1, len(images) + 1), images, categories, boxes, scores, areas)]
        res = _fast.COCO()
        res.dataset = {"images": list(gt.dataset["images"]), "categories": list(gt.dataset["categories"]),
                       "annotations": anns}
        res.createIndex()
        return res
    if len(detections):
        return gt.loadRes(results_dicts(detections))
    dt = _RefCOCO()
    dt.dataset = {"images": list(gt.dataset["images"]), "categories": list(gt.dataset["categories"]),
                  "annotations": []}
    with contextlib.redirect_stdout(io.StringIO()):
        dt.createIndex()
    return dt


def box_metrics(gt: Any, detections: np.ndarray, image_ids: Sequence[int] | None = None, *, by_size: bool = True,
                fast: bool | None = None) -> dict[str, float | None]:
    """COCO box metrics of ``detections`` (an (N, 7) array) against the index ``gt`` of ``_index``
    (see ``coco_box_metrics``); ``fast`` picks the backend (default: faster-coco-eval where it imports)."""
    fast = BACKEND == "faster-coco-eval" if fast is None else fast
    with contextlib.redirect_stdout(io.StringIO()), _no_gc():  # pycocotools prints progress and tables
        dt = _loaded(gt, detections, fast)
        ev = _FastEval(gt, dt, "bbox", print_function=lambda *a, **k: None) if fast else _RefEval(gt, dt, "bbox")
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
            stats = list(ev.stats[:6])
        else:
            stats = [_mean_precision(ev), _mean_precision(ev, 0.5), _mean_precision(ev, 0.75)]
    # COCOeval's -1 is "no ground truth of that kind": undefined, so None (null in JSON)
    return {k: None if v < 0 else float(v) for k, v in zip(COCO_METRICS, stats)}


@contextlib.contextmanager
def _no_gc() -> Any:
    """The cyclic garbage collector off: an evaluation makes millions of small dicts, lists and
    arrays without cycles, which the collector would scan again and again (a fifth of the time)."""
    was_on = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_on:
            gc.enable()


def _mean_precision(ev: Any, iou: float | None = None) -> float:
    """COCOeval.summarize's AP over every IoU threshold (or at ``iou``), for its first object size
    range and last detection limit: the mean of the precisions that are defined, -1 where none is."""
    precision = ev.eval["precision"][:, :, :, 0, -1]  # (IoU thresholds, recall points, categories)
    if iou is not None:
        precision = precision[np.where(iou == ev.params.iouThrs)[0]]  # as summarize selects it
    defined = precision[precision > -1]
    return float(np.mean(defined)) if defined.size else -1.0


def coco_box_metrics(coco: Any, results: Sequence[dict[str, Any]] | np.ndarray, image_ids: Sequence[int] | None = None,
                     *, by_size: bool = True, fast: bool | None = None) -> dict[str, float | None]:
    """AP, AP50, AP75, APs, APm, APl (COCO's AP@[.5:.95] etc., as fractions) of ``results`` (COCO
    result dicts or an (N, 7) array) on ``image_ids`` (default: every image of ``coco``, a pycocotools
    index). No detections at all scores 0 wherever a box exists.

    A figure is None where no (non-crowd) ground-truth box counts for it: APs/APm/APl when no box
    of that size exists (COCOeval's -1), all six only when the images hold no box at all. None
    means "not defined", never "0".

    ``by_size=False``: AP, AP50 and AP75 only, the same values, in about a third of the time (what a
    search scores every candidate with): COCOeval matches every image and category once per object
    size range, and accumulates per detection limit; this asks it for all sizes and 100 detections.
    ``fast``: False for pycocotools itself.
    """
    fast = BACKEND == "faster-coco-eval" if fast is None else fast
    cache = f"_detnas_eval_index_{'fast' if fast else 'ref'}"  # indexed once per ground truth and backend
    gt = getattr(coco, cache, None)
    if gt is None:
        gt = _index(coco.dataset, fast)
        setattr(coco, cache, gt)
    return box_metrics(gt, results_array(results), image_ids, by_size=by_size, fast=fast)


# -- the evaluator process ----------------------------------------------------------------------

_WORKER_GT: dict[str, Any] = {}


def _worker_init(datasets: dict[str, dict[str, Any]]) -> None:
    import signal

    # the parent decides when to stop (SIGINT from a terminal reaches the whole group); SIGTERM,
    # which SLURM sends to every process of a job, still ends this one
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    fast = BACKEND == "faster-coco-eval"
    _WORKER_GT.update({name: _index(d, fast) for name, d in datasets.items()})


def _worker_metrics(name: str, detections: np.ndarray, image_ids: Sequence[int] | None,
                    by_size: bool) -> tuple[dict[str, float | None], float]:
    import time

    t = time.perf_counter()
    metrics = box_metrics(_WORKER_GT[name], detections, image_ids, by_size=by_size)
    return metrics, time.perf_counter() - t


def _ready() -> str:
    return BACKEND


class Evaluator:
    """COCO box metrics computed in a separate process, at most ``in_flight`` at a time.

    ``datasets``: name -> COCO dataset dict (the ground truth, indexed once in the process).
    ``submit(name, detections, image_ids, by_size=)`` returns a Future of ``(metrics, seconds)``;
    it blocks while ``in_flight`` evaluations are pending, so the detections held in memory are
    bounded. ``workers`` > 1 runs that many evaluations side by side (the evaluate stage's test-set
    figures). Use as a context manager; leaving it waits for what is pending.
    """

    def __init__(self, datasets: dict[str, dict[str, Any]], *, in_flight: int = 1, workers: int = 1) -> None:
        if in_flight < 1 or workers < 1:
            raise ValueError(f"in_flight and workers must be >= 1, got {in_flight} and {workers}")
        # spawn: a fork of a process with CUDA, loader and MLflow threads may inherit a held lock
        self._pool = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                                         initializer=_worker_init, initargs=(datasets,))
        self.in_flight = in_flight
        self._pending: deque[Future] = deque()
        # the processes start (and index the ground truth) while the caller prepares its model
        self._started = [self._pool.submit(_ready) for _ in range(workers)]

    def submit(self, name: str, detections: np.ndarray, image_ids: Sequence[int] | None = None, *,
               by_size: bool = True) -> Future:
        while self._pending and self._pending[0].done():
            self._pending.popleft()
        while len(self._pending) >= self.in_flight:
            self._pending.popleft().exception()  # wait; its owner reads the result or the error
        future = self._pool.submit(_worker_metrics, name, detections, None if image_ids is None else list(image_ids),
                                   by_size)
        self._pending.append(future)
        return future

    def close(self, wait: bool = True) -> None:
        """Stop the process: after what is pending, or (``wait=False``) dropping it."""
        self._pool.shutdown(wait=wait, cancel_futures=not wait)

    def __enter__(self) -> "Evaluator":
        return self

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        self.close(wait=exc_type is None)  # after an error, do not wait for evaluations nobody reads
