"""The COCO evaluation backends: faster-coco-eval gives pycocotools' figures (held to 1e-12 against
pycocotools' own COCOeval on randomized cases with crowd regions, empty images and detections, size
ranges, id gaps and image subsets), the fallback gives the same numbers, and the evaluator process
gives what the in-process call gives."""

import contextlib
import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from detnas import coco_eval
from detnas.coco_eval import COCO_METRICS, Evaluator, box_metrics, coco_box_metrics, results_array

pytestmark = pytest.mark.skipif(coco_eval.BACKEND != "faster-coco-eval",
                                reason="faster-coco-eval does not import (the fallback is tested in a subprocess)")

ROOT = Path(__file__).resolve().parents[1]


def _case(seed: int, *, images: int = 24, classes: int = 4, empty_images: int = 3, crowd: float = 0.15,
          detections: int = 12) -> tuple[dict, list[dict]]:
    """A dataset with sparse image, category and annotation ids, crowd boxes of every size, images
    without boxes, and detections near the boxes, elsewhere and of the wrong class."""
    rng = np.random.default_rng(seed)
    ims = [{"id": int(5 * i + 2 + i % 3), "width": 640, "height": 480, "file_name": f"{i}.jpg"} for i in range(images)]
    cats = [{"id": int(3 * c + 1 + (c > 1) * 40), "name": f"c{c}"} for c in range(classes)]
    anns, dts, next_id = [], [], 7
    for n, im in enumerate(ims):
        boxes = 0 if n < empty_images else int(rng.integers(1, 6))
        for _ in range(boxes):
            side = float(rng.choice([12.0, 40.0, 150.0]) * rng.uniform(0.6, 1.6))  # small, medium, large
            w, h = side, side * rng.uniform(0.5, 1.5)
            x, y = rng.uniform(0, 640 - w), rng.uniform(0, 480 - h)
            c = cats[int(rng.integers(classes))]["id"]
            anns.append({"id": next_id, "image_id": im["id"], "category_id": c, "bbox": [x, y, w, h], "area": w * h,
                         "iscrowd": int(rng.random() < crowd)})
            next_id += int(rng.integers(1, 4))  # id gaps
            for _ in range(int(rng.integers(0, 3))):
                cc = c if rng.random() < 0.8 else cats[int(rng.integers(classes))]["id"]
                dts.append({"image_id": im["id"], "category_id": cc, "score": float(rng.random()),
                            "bbox": [round(float(v), 3) for v in (x + rng.normal(0, side / 8), y + rng.normal(0, side / 8),
                                                                  w * rng.uniform(0.7, 1.3), h * rng.uniform(0.7, 1.3))]})
        for _ in range(int(rng.integers(0, detections))):
            w, h = rng.uniform(5, 200, 2)
            dts.append({"image_id": im["id"], "category_id": cats[int(rng.integers(classes))]["id"],
                        "score": float(rng.random()),
                        "bbox": [round(float(v), 3) for v in (rng.uniform(0, 500), rng.uniform(0, 400), w, h)]})
    return {"images": ims, "categories": cats, "annotations": anns}, dts


def _pycocotools(dataset: dict, results: list[dict], image_ids=None, *, by_size: bool = True) -> dict:
    """The reference, straight from pycocotools (stats[0..5]; AP, AP50, AP75 of all sizes, 100 detections)."""
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = dataset
        gt.createIndex()
        if results:
            dt = gt.loadRes([dict(r) for r in results])
        else:
            dt = COCO()
            dt.dataset = {"images": dataset["images"], "categories": dataset["categories"], "annotations": []}
            dt.createIndex()
        ev = COCOeval(gt, dt, "bbox")
        if image_ids is not None:
            ev.params.imgIds = list(image_ids)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return {k: None if v < 0 else float(v) for k, v in zip(COCO_METRICS, ev.stats[:6])}


def _gt(dataset: dict) -> COCO:
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = dataset
        gt.createIndex()
    return gt


def _close(a: dict, b: dict, tol: float = 1e-12) -> bool:
    return a.keys() == b.keys() and all((a[k] is None) == (b[k] is None) and (a[k] is None or abs(a[k] - b[k]) <= tol)
                                        for k in a)


@pytest.mark.parametrize("seed", range(12))
def test_faster_backend_equals_pycocotools_on_random_cases(seed):
    dataset, results = _case(seed, crowd=0.0 if seed % 4 == 0 else 0.15, empty_images=seed % 3)
    ids = [im["id"] for im in dataset["images"]]
    subsets = [None, ids[::2], ids[seed % 5:seed % 5 + 7]]
    for image_ids in subsets:
        for res in (results, results[::3], []):
            want = _pycocotools(dataset, res, image_ids)
            for fast in (True, False):
                got = coco_box_metrics(_gt(dataset), res, image_ids, fast=fast)
                assert _close(got, want), (seed, fast, image_ids is None, len(res), got, want)
                short = coco_box_metrics(_gt(dataset), res, image_ids, by_size=False, fast=fast)
                assert _close(short, {k: want[k] for k in ("AP", "AP50", "AP75")})
    assert 0 < _pycocotools(dataset, results)["AP"] < 1  # the cases score something: not a comparison of zeros


def test_undefined_sizes_and_images_without_boxes_match(test_file):
    # the project's own test split (64 px: no large box) and a ground truth of only crowd regions
    from detnas.evaluate import DetectionImages, detection_results
    import torch

    data = DetectionImages.load(test_file)
    outs = [{"boxes": t["boxes"] + 2.0, "labels": t["labels"], "scores": torch.linspace(1, 0.1, len(t["labels"]))}
            for t in data.targets]
    results = detection_results(outs, data.image_ids, data.category_ids)
    want = _pycocotools(data.coco.dataset, results, data.image_ids)
    assert want["APl"] is None and want["AP"] > 0
    assert _close(coco_box_metrics(data.coco, results, data.image_ids), want)
    dataset, res = _case(3)
    only_crowd = {**dataset, "annotations": [{**a, "iscrowd": 1} for a in dataset["annotations"]]}
    want = _pycocotools(only_crowd, res)
    assert all(v is None for v in want.values())
    assert coco_box_metrics(_gt(only_crowd), res) == want


def test_annotation_id_zero_is_matched():
    # COCOeval marks unmatched with the id 0: an export numbering its boxes from 0 must not lose one
    box = [10.0, 10.0, 50.0, 50.0]
    dataset = {"images": [{"id": 1, "width": 100, "height": 100, "file_name": "a.jpg"}],
               "categories": [{"id": 1, "name": "a"}],
               "annotations": [{"id": i, "image_id": 1, "category_id": 1, "bbox": box, "area": 2500.0, "iscrowd": 0}
                               for i in (0, 1)]}
    dataset["annotations"][1]["bbox"] = [60.0, 60.0, 30.0, 30.0]
    perfect = [{"image_id": 1, "category_id": 1, "bbox": a["bbox"], "score": 0.9} for a in dataset["annotations"]]
    assert _pycocotools(dataset, perfect)["AP"] < 1  # pycocotools itself loses the box with id 0
    for fast in (True, False):
        assert coco_box_metrics(_gt(dataset), perfect, fast=fast)["AP"] == pytest.approx(1.0)


def test_arrays_and_dicts_give_the_same_figures():
    dataset, results = _case(5)
    arr = results_array(results)
    assert arr.shape == (len(results), 7)
    gt = _gt(dataset)
    assert coco_box_metrics(gt, arr) == coco_box_metrics(gt, results)
    with pytest.raises(ValueError, match="7"):
        results_array(np.zeros((3, 6)))


def test_the_evaluator_process_gives_the_in_process_figures():
    cases = [_case(s) for s in (1, 2)]
    with Evaluator({"a": cases[0][0], "b": cases[1][0]}, in_flight=2) as ev:
        futures = [(ev.submit(name, results_array(res), by_size=by_size), dataset, res, by_size)
                   for name, (dataset, res) in zip("ab", cases) for by_size in (True, False)]
        assert len(ev._pending) <= 2  # a submit beyond in_flight waited for the oldest
        for future, dataset, res, by_size in futures:
            metrics, seconds = future.result()
            assert metrics == box_metrics(coco_eval._index(dataset, True), results_array(res), by_size=by_size)
            assert seconds >= 0


def test_an_error_in_the_evaluator_reaches_the_caller():
    dataset, res = _case(1)
    with Evaluator({"a": dataset}) as ev:
        bad = results_array(res)
        bad[0, 0] = 10 ** 6  # an image the ground truth does not have
        with pytest.raises(Exception, match="(?i)not correspond|image"):
            ev.submit("a", bad).result()


@pytest.mark.parametrize("how", ["forced", "missing"])
def test_fallback_gives_the_same_figures(how):
    # the fallback in a fresh interpreter: forced by DETNAS_COCO_EVAL, or faster-coco-eval not importable
    code = f"""
import sys, json
{'sys.modules["faster_coco_eval"] = None' if how == 'missing' else ''}
sys.path.insert(0, {str(ROOT / 'tests')!r})
from test_coco_eval import _case, _gt
from detnas import coco_eval
dataset, res = _case(7)
print(json.dumps([coco_eval.BACKEND, coco_eval.coco_box_metrics(_gt(dataset), res)]))
"""
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    if how == "forced":
        env["DETNAS_COCO_EVAL"] = "pycocotools"
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert p.returncode == 0, p.stderr
    import json

    backend, metrics = json.loads(p.stdout.strip().splitlines()[-1])
    assert backend == "pycocotools"
    dataset, res = _case(7)
    assert _close(metrics, _pycocotools(dataset, res))
    notes = [line for line in p.stderr.splitlines() if "faster-coco-eval" in line]
    assert len(notes) == (1 if how == "missing" else 0), p.stderr  # one line says why, where it was not asked for
