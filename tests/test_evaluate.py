import contextlib
import os
import io
import json

import numpy as np
import pytest
import torch
from conftest import evaluate_found_boxes
from pycocotools.coco import COCO

from detnas.data.coco import prepare_detection
from detnas.detectors import DetectorSettings, build_detector
from detnas.evaluate import COCO_METRICS, DetectionImages, coco_box_metrics, detection_results
from detnas.io import write_json_atomic
from detnas.space import get_space
from detnas.supernet import Supernet


def _ground_truth_as_outputs(data: DetectionImages):
    return [{"boxes": t["boxes"], "labels": t["labels"], "scores": torch.ones(len(t["labels"]))} for t in data.targets]


def test_perfect_predictions_score_one(test_file):
    data = DetectionImages.load(test_file)
    results = detection_results(_ground_truth_as_outputs(data), data.image_ids, data.category_ids)
    metrics = coco_box_metrics(data.coco, results, data.image_ids)
    assert metrics["AP"] == pytest.approx(1.0) and metrics["AP50"] == pytest.approx(1.0)
    assert metrics["AP75"] == pytest.approx(1.0)


def test_wrong_category_or_shifted_boxes_score_lower(test_file):
    data = DetectionImages.load(test_file)
    outputs = _ground_truth_as_outputs(data)
    wrong = [{**o, "labels": o["labels"] % len(data.category_ids) + 1} for o in outputs]
    assert coco_box_metrics(data.coco, detection_results(wrong, data.image_ids, data.category_ids))["AP"] < 0.2
    shifted = [{**o, "boxes": o["boxes"] + 4.0} for o in outputs]
    m = coco_box_metrics(data.coco, detection_results(shifted, data.image_ids, data.category_ids))
    assert 0.0 < m["AP"] < 1.0


def test_no_detections_score_zero(test_file):
    data = DetectionImages.load(test_file)
    empty = [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64), "scores": torch.zeros(0)}
             for _ in data.image_ids]
    results = detection_results(empty, data.image_ids, data.category_ids)
    assert results == []
    # 64 px images hold no large box (area > 96^2): APl is undefined, the rest 0
    assert coco_box_metrics(data.coco, results) == {**{k: 0.0 for k in COCO_METRICS}, "APl": None}


def _coco(annotations: list[dict]) -> COCO:
    coco = COCO()
    coco.dataset = {"images": [{"id": i, "width": 400, "height": 400, "file_name": f"{i}.jpg"} for i in (1, 2)],
                    "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}], "annotations": annotations}
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def test_sizes_without_ground_truth_are_null_not_zero():
    # only large boxes (area > 96^2 = 9216): COCOeval's APs and APm are -1, "no ground truth"
    boxes = [(1, 1, [10, 10, 150, 120]), (2, 2, [50, 40, 200, 100])]
    coco = _coco([{"id": i, "image_id": im, "category_id": c, "bbox": b, "area": b[2] * b[3], "iscrowd": 0}
                  for i, (im, c, b) in enumerate(boxes, 1)])
    perfect = [{"image_id": im, "category_id": c, "bbox": b, "score": 0.9} for im, c, b in boxes]
    m = coco_box_metrics(coco, perfect)
    assert m["APs"] is None and m["APm"] is None
    assert m["AP"] == pytest.approx(1.0) and m["APl"] == pytest.approx(1.0)
    m = coco_box_metrics(coco, [])  # no detections: 0 where a box exists, still None where none does
    assert m == {"AP": 0.0, "AP50": 0.0, "AP75": 0.0, "APs": None, "APm": None, "APl": 0.0}
    assert json.loads(json.dumps(m))["APs"] is None  # null in final.json


def test_search_metrics_are_the_full_evaluations(test_file):
    # by_size=False (every search candidate): AP, AP50, AP75 exactly as the full COCOeval gives them,
    # on noisy boxes with scores, a wrong class, crowd regions, an image with no box, no detections
    data = DetectionImages.load(test_file)
    rng = np.random.default_rng(0)
    outputs = []
    for o in _ground_truth_as_outputs(data):
        n = len(o["labels"])
        boxes = o["boxes"] + torch.from_numpy(rng.normal(0, 3, (n, 4))).float()
        labels = torch.where(torch.from_numpy(rng.random(n) < 0.2), o["labels"] % len(data.category_ids) + 1,
                             o["labels"])
        outputs.append({"boxes": boxes, "labels": labels, "scores": torch.from_numpy(rng.random(n)).float()})
    noisy = detection_results(outputs, data.image_ids, data.category_ids)
    boxes = [(1, 1, [10, 10, 150, 120], 0), (1, 2, [200, 200, 20, 20], 0), (1, 1, [250, 20, 100, 100], 1)]
    crowd = _coco([{"id": i, "image_id": im, "category_id": c, "bbox": b, "area": b[2] * b[3], "iscrowd": z}
                   for i, (im, c, b, z) in enumerate(boxes, 1)])  # image 2 has no box
    inside_crowd = [{"image_id": 1, "category_id": 1, "bbox": [260, 30, 40, 40], "score": 0.95},
                    {"image_id": 1, "category_id": 1, "bbox": [12, 8, 150, 118], "score": 0.7},
                    {"image_id": 2, "category_id": 2, "bbox": [0, 0, 50, 50], "score": 0.9},
                    {"image_id": 1, "category_id": 2, "bbox": [205, 195, 20, 20], "score": 0.5}]
    cases = [(data.coco, noisy, data.image_ids), (data.coco, noisy[::3], data.image_ids[:5]), (data.coco, [], None),
             (crowd, inside_crowd, None)]
    seen = set()
    for coco, results, ids in cases:
        full = coco_box_metrics(coco, results, ids)
        fast = coco_box_metrics(coco, results, ids, by_size=False)
        assert fast == {k: full[k] for k in ("AP", "AP50", "AP75")}
        seen.add(round(fast["AP"], 6))
    assert len(seen) == 4 and 0 < fast["AP"] < 1  # four different scores, the last one partial


def test_background_and_out_of_range_labels_are_dropped():
    # label 0 would be category_ids[-1] (the last class) by negative indexing; K + 1 would not exist
    out = [{"boxes": torch.tensor([[0.0, 0, 10, 10]] * 4), "labels": torch.tensor([0, 1, 3, 4]),
            "scores": torch.tensor([0.9, 0.8, 0.7, 0.6])}]
    results = detection_results(out, [5], [1, 7, 90])
    assert [r["category_id"] for r in results] == [1, 90]


def test_retinanet_never_reports_label_zero():
    small = dict(min_size=64, max_size=64, fpn_channels=16, anchor_sizes=[8, 16, 32, 48, 64])
    torch.manual_seed(0)
    space = get_space("tiny")
    body = Supernet(space)
    settings = DetectorSettings.from_dict({"name": "retinanet", **small})
    model = build_detector(body, num_classes=3, settings=settings).eval()
    body.set_arch(space.sample(np.random.default_rng(0)))
    # the class logits are laid out anchor-major ((A * (K + 1)) channels, index a * (K + 1) + k):
    # make class 0 score sigmoid(10) everywhere and class 2 sigmoid(5), the others sigmoid(-10)
    conv = model.head.classification_head.cls_logits
    bias = torch.full((conv.out_channels // 4, 4), -10.0)
    bias[:, 0], bias[:, 2] = 10.0, 5.0
    with torch.no_grad():
        conv.weight.zero_()
        conv.bias.copy_(bias.flatten())
        (out,) = model([torch.rand(3, 64, 64)])
    # every place goes to class 2, none to the background logit
    assert len(out["labels"]) == settings.detections_per_image and set(out["labels"].tolist()) == {2}


def test_results_use_dataset_category_ids_and_xywh():
    out = [{"boxes": torch.tensor([[10.0, 20.0, 30.0, 60.0]]), "labels": torch.tensor([2]), "scores": torch.tensor([0.9])}]
    (r,) = detection_results(out, [42], [1, 7, 90])  # sparse ids, as in COCO
    assert r == {"image_id": 42, "category_id": 7, "bbox": [10.0, 20.0, 20.0, 40.0], "score": pytest.approx(0.9)}


def test_sparse_category_ids_round_trip(tmp_path, det_source):
    # remap the synthetic categories to sparse ids (like COCO's 1..90 with gaps)
    data = json.loads((det_source / "instances_test.json").read_text())
    remap = {c["id"]: c["id"] * 10 + 3 for c in data["categories"]}
    for c in data["categories"]:
        c["id"] = remap[c["id"]]
    for a in data["annotations"]:
        a["category_id"] = remap[a["category_id"]]
    (tmp_path / "sparse.json").write_text(json.dumps(data))
    path = tmp_path / "prepared.json"
    write_json_atomic(prepare_detection(tmp_path / "sparse.json", [det_source / "images"]), path)
    images = DetectionImages.load(path)
    assert images.category_ids == sorted(remap.values())
    results = detection_results(_ground_truth_as_outputs(images), images.image_ids, images.category_ids)
    assert coco_box_metrics(images.coco, results)["AP"] == pytest.approx(1.0)


def test_final_records_the_precision_of_training_and_evaluation(tmp_path, test_file, monkeypatch):
    from mlflow.tracking import MlflowClient

    bf16 = {"amp": "bf16", "memory_format": "channels_last"}
    final, _ = evaluate_found_boxes(tmp_path, test_file, monkeypatch, primary="AP",
                                    mlflow={"experiment": "precision-record", "run_name": "evaluate"},
                                    classifier={"num_classes": 8, "top1": 0.9, "precision": bf16},
                                    detector_metrics={"history": [], "precision": bf16})
    assert final["precision"] == {"amp": "off", "memory_format": "contiguous"}  # this evaluation, on a CPU
    assert final["trained_precision"] == {"classifier": bf16, "detector": bf16}
    assert 0 < final["seconds"] < 600  # the evaluation's own time: the plan's seconds per test image
    client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    (run,) = client.search_runs([client.get_experiment_by_name("precision-record").experiment_id])
    assert run.data.tags["precision"] == ("evaluated off contiguous; classifier trained bf16 channels_last; "
                                          "detector trained bf16 channels_last")
