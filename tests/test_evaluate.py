import json

import pytest
import torch

from detnas.data.coco import prepare_detection
from detnas.evaluate import COCO_METRICS, DetectionImages, coco_box_metrics, detection_results
from detnas.io import write_json_atomic


@pytest.fixture(scope="module")
def test_file(det_source, tmp_path_factory):
    path = tmp_path_factory.mktemp("eval") / "test.json"
    write_json_atomic(prepare_detection(det_source / "instances_test.json", [det_source / "images"]), path)
    return path


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
    assert coco_box_metrics(data.coco, results) == {k: 0.0 for k in COCO_METRICS}


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
