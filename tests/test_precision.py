"""Mixed precision (``amp``) and NHWC convolutions (``channels_last``) in every training and scoring
stage, against float32 on contiguous tensors, on tiny synthetic data (a CPU computes bf16 and fp16
autocast too, with the same 16-bit formats as a GPU).

Tolerances, with the differences measured on this project's CPU in brackets:

- Training (pre-training and detection fine-tuning of the supernet, 4 steps each): step 1, the same
  weights and images, so the forward pass's rounding alone: bf16 1e-2 relative [pre-training 1.0e-2,
  fine-tuning 5e-4 of the total loss, every term], channels_last 1e-5 / 1e-4 [0, 1e-7]. The 4 steps
  together: 5e-2 / 3e-2 [bf16 2.7e-2, 4.9e-3; channels_last 6.1e-3, 9.0e-3]. Loose, because training
  a fresh supernet on 8 images per step is chaotic (see the comment above the tests).
- Scoring (a candidate's mmAP after BN recalibration) and evaluation (test AP, AP50, AP75) of a
  detector trained to AP ~0.25: bf16 within 0.02 [search 0.0011, evaluate 0], channels_last within
  0.005 [0, 0]. The box coordinates stay float32 under autocast (``detectors``), so bf16 moves
  scores, hardly boxes.
- Resume stays exact under bf16 (SIGKILL, then a rerun) and under fp16 with its gradient scaler:
  the same loss history and the same weights, bit for bit.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import TINY_DETECTOR, as_json, run_detnas
from torch import nn

from detnas.checkpoint import Checkpointer
from detnas.data.coco import prepare_detection
from detnas.detectors import DetectorSettings, build_detector
from detnas.distributed import Dist
from detnas.engine import TIMING_KEYS, Progress, Schedule, make_sgd, train, uniform_path
from detnas.io import load_checkpoint, save_checkpoint, write_json_atomic
from detnas.precision import Precision, resolve_amp, resolve_channels_last
from detnas.space import get_space
from detnas.supernet import Supernet

CPU = torch.device("cpu")
FLOAT32 = {"amp": "off", "channels_last": False}

# a freshly initialised supernet on 8 images per step: the first steps of its training are comparable
CLS = {"space": "tiny", "image_size": 32, "batch_size": 8, "seed": 0, "checkpoint_every": 1000, "log_every": 1,
       "schedule": {"iterations": 4, "lr": 0.01, "policy": "linear", "weight_decay": 4e-5}}
# proposals and sampled RoIs cut to the demo's sizes: 64 px images hold few objects, and 2000 x 512
# would be most of each step's time
DETECTOR = {**TINY_DETECTOR, "rpn_pre_nms_top_n_train": 200, "rpn_post_nms_top_n_train": 100,
            "rpn_batch_size_per_image": 64, "box_batch_size_per_image": 64}
DET = {"space": "tiny", "detector": DETECTOR, "batch_size": 4, "seed": 0, "checkpoint_every": 1000, "log_every": 1,
       "schedule": {"iterations": 4, "lr": 0.02, "policy": "step", "weight_decay": 1e-4}}
TRAINED = {**DET, **FLOAT32, "log_every": 20, "schedule": {**DET["schedule"], "iterations": 120, "lr": 0.04}}
ARCH = "01230123"
BF16 = ({"amp": "bf16"}, {"amp": "bf16", "memory_format": "contiguous"})
NHWC = ({"channels_last": True}, {"amp": "off", "memory_format": "channels_last"})


# -- settings --------------------------------------------------------------------------------------

def test_settings_resolve_per_device():
    assert resolve_amp("auto", CPU) is None and resolve_channels_last("auto", CPU) is False
    assert resolve_amp("bf16", CPU) == torch.bfloat16 and resolve_amp("fp16", CPU) == torch.float16
    assert resolve_amp("off", CPU) is None and resolve_amp(False, CPU) is None  # YAML's reading of `off`
    assert resolve_channels_last(True, CPU) is True
    with pytest.raises(ValueError, match="amp must be one of auto, bf16, fp16, off, got 'fp8'"):
        resolve_amp("fp8", CPU)
    with pytest.raises(ValueError, match="channels_last must be true, false or auto, got 'yes'"):
        resolve_channels_last("yes", CPU)
    p = Precision.resolve("fp16", "auto", CPU)
    assert p.describe() == {"amp": "fp16", "memory_format": "contiguous"} and p.grad_scaler() is not None
    assert Precision.resolve("bf16", True, CPU).grad_scaler() is None  # bf16 has float32's range
    assert Precision().describe() == {"amp": "off", "memory_format": "contiguous"}


def test_detector_boxes_and_anchors_stay_float32_under_bf16():
    """Anchors take the feature maps' dtype and boxes are decoded in the regression's: both float32."""
    torch.manual_seed(0)
    model = build_detector(Supernet(get_space("tiny")), num_classes=3, settings=DetectorSettings.from_dict(DETECTOR))
    model.eval()
    with torch.no_grad(), Precision.resolve("bf16", True, CPU).autocast():
        features = model.backbone(torch.rand(1, 3, 64, 64))
        (out,) = model([torch.rand(3, 64, 64)])
    assert all(f.dtype == torch.float32 for f in features.values())
    assert out["boxes"].dtype == out["scores"].dtype == torch.float32


def test_selfcheck_reports_the_resolved_precision(tmp_path):
    from detnas.stages.selfcheck import run_selfcheck

    assert run_selfcheck(out=tmp_path / "s.json", expect_processes=1, device="cpu", amp="bf16", channels_last=True) == 0
    (rank,) = json.loads((tmp_path / "s.json").read_text())["ranks"]
    assert rank["amp"] == "bf16" and rank["memory_format"] == "channels_last"
    run_selfcheck(out=tmp_path / "auto.json", expect_processes=1, device="cpu")
    (rank,) = json.loads((tmp_path / "auto.json").read_text())["ranks"]
    assert (rank["amp"], rank["memory_format"]) == ("off", "contiguous")  # auto on a CPU


# -- stages ----------------------------------------------------------------------------------------

def _pretrain(split: Path, out: Path, settings: dict, arch: str | None = None) -> dict:
    from detnas.stages.pretrain import run_pretrain

    run_pretrain({**CLS, **settings}, split_file=split, weights_out=out / "weights.pt",
                 metrics_out=out / "metrics.json", curves_out=out / "curves.png", checkpoint_dir=out / "ck", arch=arch,
                 val_root=None, mlflow={"experiment": "precision", "run_name": "pretrain"}, threads=1, device="cpu")
    return json.loads((out / "metrics.json").read_text())


def _finetune(train_file: Path, out: Path, settings: dict, arch: str | None = None) -> dict:
    from detnas.stages.finetune import run_finetune

    run_finetune({**DET, **settings}, train_file=train_file, init=None, arch=arch, weights_out=out / "detector.pt",
                 metrics_out=out / "metrics.json", curves_out=out / "curves.png", checkpoint_dir=out / "ck",
                 mlflow={"experiment": "precision", "run_name": "finetune"}, threads=1, device="cpu")
    return json.loads((out / "metrics.json").read_text())


def _column(metrics: dict, key: str, rows: int | None = None) -> list[float]:
    return [r[key] for r in metrics["history"][:rows]]


def _as_supernet(detector_file: Path, out: Path) -> None:
    """The standalone detector of ``detector_file`` as a detection supernet whose path ARCH holds its
    weights (the other choices keep their initial ones): a supernet with a trained path to score."""
    ckpt = load_checkpoint(detector_file)
    torch.manual_seed(0)
    supernet = build_detector(Supernet(get_space("tiny")), num_classes=ckpt["num_classes"],
                              settings=DetectorSettings.from_dict(ckpt["detector"]))
    # standalone backbone.body.stageS.i.* -> supernet backbone.body.stageS.i.choices.<gene>.*
    genes = {f"backbone.body.stage{b.stage}.{b.index}.": g for b, g in zip(get_space("tiny").blocks(), ARCH)}
    state = supernet.state_dict()
    for key, value in ckpt["state_dict"].items():
        block = next((b for b in genes if key.startswith(b)), None)
        state[key if block is None else f"{block}choices.{genes[block]}.{key[len(block):]}"] = value
    supernet.load_state_dict(state)
    save_checkpoint({**ckpt, "arch": None, "state_dict": supernet.state_dict()}, out)


@pytest.fixture(scope="module")
def float32_runs(cls_split, det_source, tmp_path_factory):
    """The float32, contiguous references: the first steps of supernet pre-training and fine-tuning,
    a standalone detector fine-tuned far enough on 8 images for an AP well above 0 on them (what
    the AP comparisons need; 120 steps, ~20 s), and a detection supernet with that detector on one
    path, to score it."""
    root = tmp_path_factory.mktemp("float32")
    data = prepare_detection(det_source / "instances_train.json", [det_source / "images"])
    write_json_atomic(data, root / "train.json")
    eight = sorted(im["id"] for im in data["images"])[:8]
    write_json_atomic({**data, "images": [im for im in data["images"] if im["id"] in eight],
                       "annotations": [a for a in data["annotations"] if a["image_id"] in eight]}, root / "eight.json")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root}/mlflow.db")
        runs = {
            "pretrain": _pretrain(cls_split, root / "pretrain", FLOAT32),
            "finetune": _finetune(root / "train.json", root / "finetune", FLOAT32),
            "detector": _finetune(root / "eight.json", root / "detector", TRAINED, arch=ARCH),
        }
    _as_supernet(root / "detector" / "detector.pt", root / "supernet.pt")
    return root, runs


# Training a fresh supernet on 8-16 images per step is chaotic: reruns are bit-identical, but a change
# of rounding grows ~10x per step (measured: channels_last's float32 summation order, 1e-7 in step 1,
# is 1e-2 by step 3 and 1e-1 by step 10, at any lr). So each history is 4 steps: step 1 (the same
# weights and images: the forward pass's rounding alone) closely, the 4 steps' mean loosely.
@pytest.mark.parametrize("setting, expected, first, mean", [(*BF16, 2e-2, 5e-2), (*NHWC, 1e-5, 2e-2)],
                         ids=["bf16", "channels_last"])
def test_pretrain_losses_match_float32(float32_runs, cls_split, tmp_path, setting, expected, first, mean):
    _, ref = float32_runs
    got = _pretrain(cls_split, tmp_path, setting)
    assert got["precision"] == expected
    a, b = _column(ref["pretrain"], "loss"), _column(got, "loss")
    assert _column(got, "step") == [1, 2, 3, 4]
    assert b[0] == pytest.approx(a[0], rel=first)
    assert sum(b) == pytest.approx(sum(a), rel=mean)


@pytest.mark.parametrize("setting, expected, first, mean", [(*BF16, 1e-2, 3e-2), (*NHWC, 1e-4, 3e-2)],
                         ids=["bf16", "channels_last"])
def test_finetune_losses_match_float32(float32_runs, tmp_path, setting, expected, first, mean):
    """Each loss term within a share of the total loss: a small term depends on which proposals and
    RoIs are sampled, which a rounding can change (loss_box_reg, ~0.03 of a total ~2, moves by up to
    50% of itself from step 2 on: under 1% of the total)."""
    root, ref = float32_runs
    got = _finetune(root / "train.json", tmp_path, setting)
    assert got["precision"] == expected and _column(got, "step") == [1, 2, 3, 4]
    total = _column(ref["finetune"], "loss")
    for key in ("loss", "loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"):
        a, b = _column(ref["finetune"], key), _column(got, key)
        assert abs(b[0] - a[0]) <= first * total[0], key
        assert abs(sum(b) - sum(a)) <= mean * sum(total), key
    saved = torch.load(tmp_path / "detector.pt", weights_only=True)["precision"]
    assert saved == {"amp": "auto", "channels_last": "auto", **setting}  # what `evaluate` takes by default


# bf16 keeps 8 bits of mantissa: on 8 images (~16 boxes) one detection that crosses IoU 0.5 or swaps
# rank with another moves AP50 by ~0.03 (measured 0.033 on a CPU with AVX512-BF16 kernels, 0 on others)
@pytest.mark.parametrize("setting, tol", [({"amp": "bf16", "channels_last": False}, 0.05),
                                          ({"amp": "off", "channels_last": True}, 0.005)], ids=["bf16", "channels_last"])
def test_search_fitness_matches_float32(float32_runs, cls_split, setting, tol):
    """One candidate's fitness: the detection supernet's mmAP after BN recalibration (DetNAS); the
    classification supernet's top-1 (ClsNAS) is computed too (its supernet is untrained here: near
    chance, not compared)."""
    from detnas.scoring import build_scorer

    root, _ = float32_runs
    common = dict(eval_images=None, recalibration_images=8, batch_size=4, seed=0, device=CPU)
    fitness = {}
    for name, precision in (("float32", Precision()), ("other", Precision.resolve(**setting, device=CPU))):
        det, space = build_scorer("detection", root / "supernet.pt", root / "eight.json", root / "eight.json",
                                  precision=precision, **common)
        fitness[name] = det(space.parse(ARCH)), det.last_metrics
        cls, _ = build_scorer("classification", root / "pretrain" / "weights.pt", cls_split, None,
                              precision=precision, **common)
        assert 0 <= cls(space.parse(ARCH)) <= 1
    (ap, metrics), (_, metrics_other) = fitness["float32"], fitness["other"]
    assert ap > 0.1  # a trained path: the comparison means something
    for key in ("AP", "AP50", "AP75"):
        assert metrics_other[key] == pytest.approx(metrics[key], abs=tol), key


@pytest.mark.parametrize("setting, expected, tol", [(*BF16, 0.02), (*NHWC, 0.005)], ids=["bf16", "channels_last"])
def test_evaluate_ap_matches_float32(float32_runs, tmp_path, setting, expected, tol):
    from detnas.stages.evaluate import run_evaluate

    root, _ = float32_runs
    write_json_atomic({"arch": ARCH, "fitness": None, "evaluations": 0}, tmp_path / "arch.json")
    write_json_atomic({"num_classes": 8, "top1": None}, tmp_path / "cls.json")

    def evaluate(name: str, **override) -> dict:
        run_evaluate(detector=root / "detector" / "detector.pt", test_file=root / "eight.json",
                     arch_file=tmp_path / "arch.json", classifier_metrics=tmp_path / "cls.json",
                     out=tmp_path / f"{name}.json", info={"experiment": "precision", "method": name},
                     primary_metric="AP", batch_size=4, mlflow={"experiment": "precision", "run_name": name},
                     threads=1, device="cpu", **override)
        return json.loads((tmp_path / f"{name}.json").read_text())

    ref = evaluate("trained")  # by default the detector's own setting: it was fine-tuned in float32
    got = evaluate("other", **setting)
    assert ref["precision"] == {"amp": "off", "memory_format": "contiguous"} and got["precision"] == expected
    assert ref["AP"] > 0.1  # a trained detector: the comparison means something
    for key in ("AP", "AP50", "AP75"):
        assert got[key] == pytest.approx(ref[key], abs=tol), key


# -- exact resume ----------------------------------------------------------------------------------

def _pretrain_args(split: Path, out: Path, settings: dict) -> list[str]:
    return ["pretrain", "--settings", as_json(settings), "--split", str(split), "--weights", str(out / "weights.pt"),
            "--metrics", str(out / "metrics.json"), "--curves", str(out / "curves.png"),
            "--checkpoint-dir", str(out / "ck"), "--threads", "1",
            "--mlflow", as_json({"experiment": "precision", "run_name": "resume"})]


def _same_history(a: dict, b: dict) -> None:
    drop = lambda rows: [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in rows]  # noqa: E731
    assert drop(a["history"]) == drop(b["history"])


def _same_weights(a: Path, b: Path) -> None:
    wa, wb = (torch.load(p, weights_only=True)["state_dict"] for p in (a, b))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_killed_bf16_pretraining_resumes_exactly(cls_split, tmp_path):
    """SIGKILL once a checkpoint exists, rerun: the history and weights of an uninterrupted run."""
    settings = {**CLS, "amp": "bf16", "checkpoint_every": 10, "log_every": 5,
                "schedule": {**CLS["schedule"], "iterations": 60}}
    run_detnas(*_pretrain_args(cls_split, tmp_path / "whole", settings))
    out = tmp_path / "killed"
    with open(tmp_path / "first.log", "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "detnas", *_pretrain_args(cls_split, out, settings)],
                                stdout=log, stderr=subprocess.STDOUT, text=True)
        t = time.time()
        while not (out / "ck" / "last.pt").exists():
            assert proc.poll() is None and time.time() - t < 120, (tmp_path / "first.log").read_text()[-2000:]
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert not (out / "metrics.json").exists()  # killed mid-run
    second = run_detnas(*_pretrain_args(cls_split, out, settings))
    assert "resuming from" in second.stdout and "(amp bf16, contiguous)" in second.stdout
    whole, resumed = (json.loads((p / "metrics.json").read_text()) for p in (tmp_path / "whole", out))
    _same_history(whole, resumed)
    _same_weights(tmp_path / "whole" / "weights.pt", out / "weights.pt")


def _train_fp16(checkpoint_dir: Path) -> tuple[nn.Module, torch.amp.GradScaler, list[dict]]:
    """10 fp16 steps of a tiny supernet (dropout on), checkpointed every 5; resumes from
    ``checkpoint_dir`` when it holds a checkpoint."""
    dist = Dist(0, 1, 0, CPU)
    precision = Precision.resolve("fp16", False, CPU)
    space = get_space("tiny")
    torch.manual_seed(0)
    model = Supernet(space, num_classes=4, dropout=0.2)
    schedule = Schedule(iterations=10, lr=0.1)
    optimizer = make_sgd(model, schedule)
    scaler = precision.grad_scaler()
    checkpointer = Checkpointer(checkpoint_dir, settings={"amp": "fp16"}, inputs={}, every=5, dist=dist)
    start, history = checkpointer.resume(model, optimizer, scaler)
    g = torch.Generator().manual_seed(1)
    data = [(torch.randn(4, 3, 32, 32, generator=g), torch.randint(0, 4, (4,), generator=g)) for _ in range(10)]
    progress = Progress(total=10, every=5, history=history)
    train(model=model, step_losses=lambda b: {"loss": nn.functional.cross_entropy(model(b[0]), b[1])},
          batches=iter(data[start:]), optimizer=optimizer, schedule=schedule, start_step=start, progress=progress,
          checkpointer=checkpointer, path_for_step=lambda step: uniform_path(space, 0, step), dist=dist,
          precision=precision, scaler=scaler)
    return model, scaler, progress.history


def test_fp16_scaler_state_is_checkpointed_and_restored(tmp_path):
    model, scaler, history = _train_fp16(tmp_path / "whole")
    saved = torch.load(tmp_path / "whole" / "last.pt", weights_only=True)  # written after step 5
    assert saved["step"] == 5 and saved["scaler"] != torch.amp.GradScaler("cpu").state_dict()  # 5 steps counted
    (tmp_path / "resumed").mkdir()
    (tmp_path / "resumed" / "last.pt").write_bytes((tmp_path / "whole" / "last.pt").read_bytes())
    resumed_model, resumed_scaler, resumed_history = _train_fp16(tmp_path / "resumed")
    assert resumed_scaler.state_dict() == scaler.state_dict()  # a fresh scaler would count 5 steps, not 10
    _same_history({"history": history}, {"history": resumed_history})
    a, b = model.state_dict(), resumed_model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
