"""Users' own datasets through the real Snakemake DAG (micro settings): a one-file COCO export with a
held-out test set, a VOC-layout export with its own classes; bad boxes dropped or refused."""

import json
from pathlib import Path

import pytest
import yaml
from own_data import coco_export, voc_export

from workflow import ROOT, make_workdir, planned, snakemake

MICRO = yaml.safe_load((ROOT / "tests" / "data" / "micro_config.yaml").read_text())


def _workdir(tmp_path, datasets: dict) -> Path:
    """The micro config plus one experiment per dataset (named like it), micro settings throughout."""
    config = json.loads(json.dumps(MICRO))
    config["detection_data"].update(datasets)
    for name in datasets:
        config["experiments"][name] = {**config["experiments"]["shapes_fpn"], "data": name}
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return make_workdir(tmp_path / "wd", path)


def _coco(tmp_path, **more):
    ann = coco_export(tmp_path / "export")
    return {"type": "coco", "train": {"annotations": str(ann), "images": [str(tmp_path / "export" / "images")]},
            "test": {"holdout": 4, "seed": 0}, "split": {"size": 0.25, "seed": 0}, **more}


def _voc(tmp_path, **more):
    return {"type": "voc", "root": str(voc_export(tmp_path)), "train": [[2007, "trainval"]],
            "test": {"holdout": 0.25, "seed": 0}, "classes": "auto", "split": {"size": 0.25, "seed": 0}, **more}


@pytest.fixture(scope="module")
def own_run(tmp_path_factory) -> Path:
    """Both exports as two experiments of one workflow, run once to their final.json (side by side)."""
    tmp = tmp_path_factory.mktemp("own")
    wd = _workdir(tmp, {"own_coco": _coco(tmp / "coco"), "own_voc": _voc(tmp / "voc")})
    snakemake(wd, "--cores", "2", "results/own_coco/final.json", "results/own_voc/final.json")
    return wd


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["coco", "voc"])
def test_own_dataset_end_to_end(own_run, layout):
    name = f"own_{layout}"
    wd = own_run
    final = json.loads((wd / f"results/{name}/final.json").read_text())
    classes = ["crate", "forklift", "person"] if layout == "coco" else ["bin", "cart", "pedestrian"]
    assert final["classes"] == classes and final["test_images"] == 4 and 0.0 <= final["AP"] <= 1.0
    log = (wd / f"results/logs/split_detection/{name}.log").read_text()
    bad = "img_002.jpg: dropped 1 bad box(es)" if layout == "coco" else "(VOC2007/Annotations/frame0003.xml): dropped 1 bad box(es)"
    assert bad in log and "split: 2 bad boxes dropped (bad_boxes: drop)" in log
    metrics = json.loads((wd / f"results/data/detection/{name}/split_metrics.json").read_text())
    assert metrics["classes"] == classes and metrics["dropped_boxes"] == 2
    test = {i["file_name"] for i in json.loads((wd / f"results/data/detection/{name}/test.json").read_text())["images"]}
    for part in ("train", "supernet_train", "search_val"):
        data = json.loads((wd / f"results/data/detection/{name}/{part}.json").read_text())
        assert not {i["file_name"] for i in data["images"]} & test, part


@pytest.mark.slow
def test_bad_boxes_error_stops_the_split(tmp_path):
    wd = _workdir(tmp_path, {"own_coco": _coco(tmp_path, bad_boxes="error")})
    proc = snakemake(wd, "--cores", "1", "results/data/detection/own_coco/test.json", check=False)
    assert proc.returncode != 0
    log = (wd / "results/logs/split_detection/own_coco.log").read_text()
    assert "image img_002.jpg: annotation" in log and "has zero or negative size" in log
    assert not (wd / "results/data/detection/own_coco/test.json").exists()


def test_new_keys_plan_and_unknown_ones_are_refused(tmp_path):
    entries = {"own_coco": _coco(tmp_path, bad_boxes="error"),
               "own_voc": _voc(tmp_path, classes=["bin", "cart", "pedestrian"], bad_boxes="drop")}
    wd = _workdir(tmp_path, entries)
    jobs = planned(wd, "results/own_coco/final.json", "results/own_voc/final.json")
    assert jobs["split_detection"] == 2 and jobs["evaluate_detnas"] == 2

    entries["own_voc"]["test"] = {"holdout": 0.25, "sed": 1}
    wd = _workdir(tmp_path / "typo", entries)
    proc = snakemake(wd, "-n", check=False)
    assert proc.returncode != 0
    assert "\ndetection_data.own_voc.test.sed: unknown key (did you mean 'seed'?)\n" in proc.stderr
