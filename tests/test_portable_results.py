"""Results that move: a copied or moved results folder still opens. The MLflow store records its
artifacts relative to itself, and split files record the image folders inside their own folder
relative to it (the whole workflow's copy is checked in test_workflow.py)."""

import json
import shutil
from pathlib import Path

import pytest
from test_messy_data import MLFLOW, _coco_settings, _export, _folders, _jpegs

from detnas.data.classification import read_split
from detnas.data.coco import DetectionDataset
from detnas.io import portable_path, recorded_path
from detnas.stages.split import run_split_classification, run_split_detection
from detnas.tracking import StageRun, artifact_root, ui_command


def test_portable_path_is_relative_inside_its_base_only(tmp_path):
    base = tmp_path / "results" / "data"
    assert portable_path(base / "source" / "images", base) == "source/images"
    assert portable_path(base, base) == "."
    outside = tmp_path / "datasets" / "coco"
    assert portable_path(outside, base) == str(outside)
    assert portable_path(base / ".." / "x", base) == str(tmp_path / "results" / "x")  # not inside
    assert recorded_path("source/images", base) == base / "source" / "images"
    assert recorded_path(str(outside), base) == outside


def test_artifacts_sit_next_to_the_store_under_a_relative_address(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    monkeypatch.chdir(tmp_path)
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")  # the working folder's results/ must stay untouched
    store = tmp_path / "a" / "mlflow.db"
    uri = f"sqlite:///{store}"
    (tmp_path / "metrics.json").write_text('{"loss": 1}')
    with StageRun(experiment="moving", run_name="job", tracking_uri=uri) as run:
        run.log_artifacts(tmp_path / "metrics.json")
        run.log_table({"method": ["detnas"], "AP": [0.5]}, "comparison.json")
    with pytest.raises(RuntimeError):
        with StageRun(experiment="moving", run_name="failing", tracking_uri=uri) as failed:
            raise RuntimeError("boom")  # its log_tail.txt is an artifact too
    assert not (tmp_path / "cwd" / "results").exists()
    assert artifact_root(uri) == store.parent / "mlflow-artifacts"
    assert ui_command(uri) == f"mlflow ui --backend-store-uri {uri} --artifacts-destination {store.parent}/mlflow-artifacts --port 5000"
    client = MlflowClient(uri)
    assert client.get_experiment_by_name("moving").artifact_location == "mlflow-artifacts:/moving"
    got = client.get_run(run.run_id).info.artifact_uri
    assert got == f"mlflow-artifacts:/moving/{run.run_id}/artifacts"
    on_disk = store.parent / "mlflow-artifacts" / "moving" / run.run_id / "artifacts"
    assert sorted(p.name for p in on_disk.iterdir()) == ["comparison.json", "metrics.json"]
    assert json.loads((on_disk / "comparison.json").read_text()) == {"columns": ["method", "AP"], "data": [["detnas", 0.5]]}
    assert (store.parent / "mlflow-artifacts" / "moving" / failed.run_id / "artifacts" / "log_tail.txt").is_file()

    shutil.move(tmp_path / "a", tmp_path / "b")  # the store moves with its artifacts
    moved = MlflowClient(f"sqlite:///{tmp_path / 'b' / 'mlflow.db'}")
    assert sorted(a.path for a in moved.list_artifacts(run.run_id)) == ["comparison.json", "metrics.json"]
    local = moved.download_artifacts(run.run_id, "metrics.json", str(tmp_path / "dl"))
    assert Path(local).read_text() == '{"loss": 1}'


def test_a_split_records_image_folders_inside_its_folder_relative_to_it(tmp_path):
    out = tmp_path / "results" / "data" / "mine"
    inside = out / "source"  # as the demo's synthesized data
    files = _jpegs(inside, 6)
    ann = _export(inside, files)
    run_split_detection(_coco_settings(ann, inside / "images", test={"holdout": 2, "seed": 0}), out_dir=out,
                        mlflow=MLFLOW)
    for part in ("train", "supernet_train", "search_val", "test"):
        assert json.loads((out / f"{part}.json").read_text())["detnas"]["image_roots"] == ["source/images"]
    shutil.move(tmp_path / "results", tmp_path / "archive")  # a moved copy still finds its images
    ds = DetectionDataset(tmp_path / "archive" / "data" / "mine" / "train.json")
    image, target = ds[0]
    assert image.shape[0] == 3 and len(target["boxes"]) == 2

    elsewhere = tmp_path / "datasets"  # a dataset the config names elsewhere keeps its absolute path
    ann2 = _export(elsewhere, _jpegs(elsewhere, 6))
    out2 = tmp_path / "results2"
    run_split_detection(_coco_settings(ann2, elsewhere / "images"), out_dir=out2, mlflow=MLFLOW)
    assert json.loads((out2 / "test.json").read_text())["detnas"]["image_roots"] == [str(elsewhere / "images")]


def test_a_classification_split_records_its_folders_relative_when_inside(tmp_path):
    out = tmp_path / "results" / "cls" / "split.json"
    source = out.parent / "source"
    _folders(source / "train", ["a", "b"])
    _folders(source / "val", ["a", "b"], n=2)
    settings = {"train": str(source / "train"), "val": str(source / "val"), "holdout": {"size": 2, "seed": 0}}
    run_split_classification(settings, out=out, mlflow=MLFLOW)
    written = json.loads(out.read_text())
    assert (written["root"], written["val_root"]) == ("source/train", "source/val")
    shutil.move(tmp_path / "results", tmp_path / "moved")
    split = read_split(tmp_path / "moved" / "cls" / "split.json")
    assert split["root"] == str(tmp_path / "moved" / "cls" / "source" / "train")
    assert Path(split["val_root"]).is_dir() and (Path(split["root"]) / "a" / "0.jpg").is_file()
