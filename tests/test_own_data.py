"""Users' own datasets through the split stage: one-file COCO exports with a held-out test set,
VOC-layout exports with their own classes, bad boxes by policy."""

import json

import pytest
from conftest import as_json, run_detnas
from own_data import coco_export, voc_export

from detnas.data.coco import DataError, DetectionDataset
from detnas.stages.split import run_split_detection

MLFLOW = {"experiment": "data", "run_name": "split", "tags": {"stage": "split"}}


def _coco_settings(ann, images, test, **more):
    return {"entry": "detection_data.mine", "sources": {"type": "coco", "train": {"annotations": str(ann), "images": [str(images)]},
            "test": test}, "split": {"size": 0.25, "seed": 0}, "check_images": True, "bad_boxes": "drop", **more}


def _read(out, name):
    return json.loads((out / f"{name}.json").read_text())


def test_test_set_held_out_of_one_coco_file(tmp_path):
    ann = coco_export(tmp_path / "export")
    settings = _coco_settings(ann, tmp_path / "export" / "images", {"holdout": 4, "seed": 3})
    run_split_detection(settings, out_dir=tmp_path / "a", mlflow=MLFLOW)
    train, test = _read(tmp_path / "a", "train"), _read(tmp_path / "a", "test")
    sup, val = _read(tmp_path / "a", "supernet_train"), _read(tmp_path / "a", "search_val")
    names = {p: {i["file_name"] for i in d["images"]} for p, d in (("train", train), ("test", test), ("sup", sup), ("val", val))}
    ids = {p: {i["id"] for i in d["images"]} for p, d in (("train", train), ("test", test))}
    assert len(names["test"]) == 4 and len(names["train"]) == 12
    assert not names["test"] & names["train"] and not ids["test"] & ids["train"]
    assert names["sup"] | names["val"] == names["train"] and not (names["sup"] | names["val"]) & names["test"]
    assert all(a["image_id"] in ids["test"] for a in test["annotations"])
    assert not {a["id"] for a in test["annotations"]} & {a["id"] for a in train["annotations"]}
    # what training loads never contains a test image
    assert not set(DetectionDataset(tmp_path / "a" / "supernet_train.json", train=True).image_ids) & ids["test"]
    # the same seed draws the same test set; another seed another one
    run_split_detection(settings, out_dir=tmp_path / "b", mlflow=MLFLOW)
    assert _read(tmp_path / "b", "test") == test
    run_split_detection({**settings, "sources": {**settings["sources"], "test": {"holdout": 0.25, "seed": 4}}},
                        out_dir=tmp_path / "c", mlflow=MLFLOW)
    assert {i["file_name"] for i in _read(tmp_path / "c", "test")["images"]} != names["test"]
    # category ids keep their gaps; the crowd box stays (for evaluation), the bad boxes are counted
    metrics = json.loads((tmp_path / "a" / "split_metrics.json").read_text())
    assert metrics["classes"] == ["crate", "forklift", "person"] and metrics["dropped_boxes"] == 2
    assert sorted(c["id"] for c in train["categories"]) == [2, 5, 9]
    # an image without annotations and one with only a crowd box: kept, counted
    assert metrics["train"]["images_without_boxes"] + metrics["test"]["images_without_boxes"] == 2
    assert len(train["images"]) + len(test["images"]) == 16
    assert any(a["iscrowd"] for a in train["annotations"] + test["annotations"])


def test_same_file_as_train_and_test_names_the_entry_files_and_option(tmp_path):
    ann = coco_export(tmp_path / "export")
    images = tmp_path / "export" / "images"
    settings = _coco_settings(ann, images, {"annotations": str(ann), "images": [str(images)]})
    with pytest.raises(DataError) as e:
        run_split_detection(settings, out_dir=tmp_path / "out", mlflow=MLFLOW)
    msg = str(e.value)
    assert msg.startswith("detection_data.mine: 16 test images are also training images")
    assert msg.count(str(ann)) == 2 and "detection_data.mine.test to {holdout: N, seed: S}" in msg
    assert not (tmp_path / "out").exists()


def test_bad_boxes_error_policy_names_the_file(tmp_path):
    ann = coco_export(tmp_path / "export")
    settings = _coco_settings(ann, tmp_path / "export" / "images", {"holdout": 4, "seed": 0}, bad_boxes="error")
    proc = run_detnas("split-detection", "--settings", as_json(settings), "--out-dir", str(tmp_path / "out"),
                      "--mlflow", as_json(MLFLOW), check=False)
    assert proc.returncode == 2
    assert f"{ann}: image img_002.jpg: annotation" in proc.stderr and "has zero or negative size" in proc.stderr
    assert not (tmp_path / "out").exists()


def test_voc_export_with_auto_classes_and_holdout(tmp_path):
    root = voc_export(tmp_path)
    settings = {"entry": "detection_data.yard", "classes": "auto", "bad_boxes": "drop", "check_images": True,
                "sources": {"type": "voc", "root": str(root), "train": [["2007", "trainval"]],
                            "test": {"holdout": 0.25, "seed": 0}},
                "split": {"size": 0.25, "seed": 0}}
    proc = run_detnas("split-detection", "--settings", as_json(settings), "--out-dir", str(tmp_path / "out"),
                      "--mlflow", as_json(MLFLOW))
    assert "split: 3 classes: bin, cart, pedestrian" in proc.stdout
    assert "VOC2007/JPEGImages/frame0003.jpg (VOC2007/Annotations/frame0003.xml): dropped 1 bad box(es)" in proc.stderr
    assert "frame0007.xml): dropped 1 bad box(es): [29.0, 9.0, 61.0, 21.0] lies outside the 64x48 image" in proc.stderr
    test = _read(tmp_path / "out", "test")
    assert [c["name"] for c in test["categories"]] == ["bin", "cart", "pedestrian"] and len(test["images"]) == 4
    assert any(a["iscrowd"] for a in _read(tmp_path / "out", "train")["annotations"] + test["annotations"])
