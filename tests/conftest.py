"""Shared fixtures: tiny synthetic datasets made once per test session, and helpers to run stages."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from detnas.data.synthetic import synthesize_classification, synthesize_detection
from detnas.io import write_json_atomic

ROOT = Path(__file__).resolve().parents[1]


# minutes of the suite on this project's machine, longest first (the rest take well under one each)
_LONG_MODULES = ["test_resume", "test_workflow", "test_plan_dag", "test_slurm", "test_preemption", "test_search", "test_pretrain_stage",
                 "test_own_data_workflow"]


def pytest_collection_modifyitems(config, items):
    """The longest test modules first: ``make test`` runs two test processes (pytest-xdist,
    ``--dist loadfile``: a module's tests in one process, so its module-scoped fixtures are made
    once), which then finish close together. The order of the tests in a module is kept."""
    def rank(item) -> int:
        module = item.module.__name__.rsplit(".", 1)[-1]
        return _LONG_MODULES.index(module) if module in _LONG_MODULES else len(_LONG_MODULES)

    items.sort(key=rank)


def _tree(path: Path) -> set[Path] | None:
    return set(path.rglob("*")) if path.exists() else None


@pytest.fixture(scope="session", autouse=True)
def _checkout_results_untouched():
    """The tests write nowhere in the checkout's results/ (the pipeline's folder, maybe holding a
    user's demo): each works in its own temporary folder and MLflow store."""
    results = ROOT / "results"
    before = _tree(results)
    yield
    after = _tree(results)
    added = sorted(str(p.relative_to(ROOT)) for p in (after or set()) - (before or set()))
    assert not added and (before is not None or after is None), f"the tests wrote under {results}: {added[:8]}"


@pytest.fixture(autouse=True)
def _isolated_mlflow(tmp_path, monkeypatch):
    """Every test tracks into its own SQLite store unless it sets MLFLOW_TRACKING_URI itself."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")


@pytest.fixture(scope="session", autouse=True)
def _store_artifacts_readable():
    """The tests read the stores' artifacts with MLflow's own client, as ``read_store`` lets a user:
    a SQLite store's ``mlflow-artifacts:/`` addresses resolve to the folder beside it."""
    from detnas.tracking import read_store

    read_store("sqlite://")


@pytest.fixture(scope="session")
def micro_run(tmp_path_factory) -> Path:
    """The micro workflow (tests/data/micro_config.yaml), every target, run once per test session.
    Tests that only read its outputs share this folder and must not change it; a test that edits
    the config, deletes outputs or reruns jobs works on ``workflow.clone_workdir(micro_run, ...)``."""
    import fcntl

    from workflow import run_micro

    # one run for the whole session: under pytest-xdist every worker's base folder is a child of the
    # session's, so the first worker that needs it runs it (holding the lock) and the others wait for
    # it instead of running the same DAG again beside it
    base = tmp_path_factory.getbasetemp()
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    dest, done = shared / "micro_shared", shared / "micro_shared.done"
    with open(shared / "micro_shared.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not done.exists():
            shutil.rmtree(dest, ignore_errors=True)
            run_micro(dest / "wd")
            done.write_text("ok\n")
    return dest / "wd"


@pytest.fixture(scope="session")
def cls_split(tmp_path_factory) -> Path:
    """An 8-class 32 px ImageFolder dataset (12 train + 4 val per class) and its split.json."""
    from detnas.data.classification import scan_image_folder, split_classification

    root = tmp_path_factory.mktemp("cls")
    synthesize_classification(root / "source", train_per_class=12, val_per_class=4, image_size=32, seed=0)
    split = split_classification(root / "source" / "train", holdout=16, seed=0)
    split["val_root"] = str(root / "source" / "val")
    split["val_images"] = len(scan_image_folder(root / "source" / "val")[1])
    write_json_atomic(split, root / "split.json")
    return root / "split.json"


@pytest.fixture(scope="session")
def det_source(tmp_path_factory) -> Path:
    """A 64 px synthetic detection dataset: 24 train and 8 test images."""
    root = tmp_path_factory.mktemp("det") / "source"
    synthesize_detection(root, num_train=24, num_test=8, image_size=64, seed=0, max_objects=3)
    return root


@pytest.fixture(scope="session")
def test_file(det_source, tmp_path_factory) -> Path:
    """``det_source``'s test split in the internal format (8 images of 64 px: no large box, so APl
    is undefined), as the split stage writes test.json; read only."""
    from detnas.data.coco import prepare_detection

    path = tmp_path_factory.mktemp("det_test") / "test.json"
    write_json_atomic(prepare_detection(det_source / "instances_test.json", [det_source / "images"]), path)
    return path


TINY_DETECTOR = dict(min_size=64, max_size=64, fpn_channels=16, head_conv_channels=16, head_fc_channels=32,
                     anchor_sizes=[8, 16, 32, 48, 64], rpn_post_nms_top_n_test=50, rpn_pre_nms_top_n_test=100)


def save_search_inputs(det_source: Path, root: Path, supernet_name: str = "supernet.pt") -> Path:
    """What a detection search reads, on tiny data: ``supernet_train.json`` (its recalibration images),
    ``search_val.json`` (6 images) and an untrained tiny detection supernet saved as a fine-tuned one
    (``root / supernet_name``, seeded, so every caller gets the same weights). Returns ``root``."""
    import torch

    from detnas.data.coco import prepare_detection, split_detection
    from detnas.detectors import DetectorSettings, build_detector
    from detnas.io import save_checkpoint
    from detnas.space import get_space
    from detnas.supernet import Supernet

    data = prepare_detection(det_source / "instances_train.json", [det_source / "images"])
    train, val = split_detection(data, size=6, seed=0)
    write_json_atomic(train, root / "supernet_train.json")
    write_json_atomic(val, root / "search_val.json")
    torch.manual_seed(0)
    model = build_detector(Supernet(get_space("tiny")), num_classes=5,
                           settings=DetectorSettings.from_dict(TINY_DETECTOR))
    save_checkpoint({"kind": "detector", "space": "tiny", "arch": None, "detector": dict(TINY_DETECTOR),
                     "num_classes": 5, "category_ids": [1, 2, 3, 4, 5], "state_dict": model.state_dict()},
                    root / supernet_name)
    return root


def evaluate_found_boxes(tmp_path: Path, test_file: Path, monkeypatch, *, primary: str, classifier: dict,
                         mlflow: dict, experiment: str = "x", batch_size: int = 4, shift: int = 0,
                         detector_metrics: dict | None = None, pictures: bool = False) -> tuple[dict, object]:
    """``run_evaluate`` on a stand-in detector whose detections are the test split's own (non-crowd)
    boxes, score 1, with ``classifier`` as the retraining's classifier metrics (and
    ``detector_metrics`` as its fine-tuning's). ``shift``: each image gets the boxes of the image
    ``shift`` places later instead (a detector that ignores the pixels). Returns final.json and the
    test split's ``DetectionImages``."""
    import torch
    from torch import nn

    import detnas.stages.evaluate as evaluate_stage
    from detnas.evaluate import DetectionImages, detection_array
    from detnas.space import get_space

    data = DetectionImages.load(test_file)
    arch = str(get_space("tiny").uniform(0))
    meta = {"arch": arch, "space": "tiny", "category_ids": data.category_ids}
    monkeypatch.setattr(evaluate_stage, "detector_from_checkpoint", lambda path, device: (nn.Identity(), meta))

    def found(model, images, *, batch_size, device, precision=None):
        targets = images.targets[shift:] + images.targets[:shift]
        outputs = [{"boxes": t["boxes"], "labels": t["labels"], "scores": torch.ones(len(t["labels"]))}
                   for t in targets]
        return detection_array(outputs, images.image_ids, images.category_ids)

    monkeypatch.setattr(evaluate_stage, "detect_array", found)
    write_json_atomic({"arch": arch, "fitness": 0.5, "evaluations": 3}, tmp_path / "arch.json")
    write_json_atomic(classifier, tmp_path / "cls.json")
    if detector_metrics is not None:
        write_json_atomic(detector_metrics, tmp_path / "detector_metrics.json")
    out = tmp_path / "final.json"
    evaluate_stage.run_evaluate(
        detector=tmp_path / "detector.pt", test_file=test_file, arch_file=tmp_path / "arch.json",
        classifier_metrics=tmp_path / "cls.json", out=out, info={"experiment": experiment, "method": "detnas"},
        primary_metric=primary, batch_size=batch_size, mlflow=mlflow, threads=1, device="cpu",
        detector_metrics=None if detector_metrics is None else tmp_path / "detector_metrics.json",
        pictures=tmp_path / "detections.png" if pictures else None,
    )
    return json.loads(out.read_text()), data


def run_detnas(*args: str, env: dict[str, str] | None = None, check: bool = True, timeout: float = 300,
               launcher: list[str] | None = None) -> subprocess.CompletedProcess:
    """``python -m detnas <args>`` in a subprocess (as the workflow runs it)."""
    cmd = (launcher or [sys.executable, "-m", "detnas"]) + list(args)
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd[:6])} ... failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def as_json(obj) -> str:
    return json.dumps(obj)
