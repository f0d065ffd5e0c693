"""The pretrain stage end to end on tiny data: outputs, MLflow, kill/resume, torchrun (SIGTERM: test_preemption)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from conftest import ROOT, as_json, run_detnas

SETTINGS = {
    "space": "tiny", "image_size": 32, "batch_size": 8, "seed": 0, "checkpoint_every": 10, "log_every": 5,
    "schedule": {"iterations": 30, "lr": 0.05, "policy": "linear", "weight_decay": 4e-5},
}


def pretrain_args(split: Path, out: Path, settings=SETTINGS, extra=()):
    return [
        "pretrain", "--settings", as_json(settings), "--split", str(split),
        "--weights", str(out / "supernet.pt"), "--metrics", str(out / "metrics.json"),
        "--curves", str(out / "curves.png"), "--checkpoint-dir", str(out / "checkpoints"), "--threads", "1",
        "--mlflow", as_json({"experiment": "pretrain-test", "run_name": "pretrain test",
                             "tags": {"stage": "pretrain_supernet", "method": "supernet", "space": "tiny"}}),
        *extra,
    ]


def test_pretrain_writes_outputs_and_tracks_mlflow(cls_split, tmp_path):
    from mlflow.tracking import MlflowClient

    proc = run_detnas(*pretrain_args(cls_split, tmp_path))
    assert "step 30/30" in proc.stdout and "img/s" in proc.stdout
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["iterations"] == 30 and [r["step"] for r in metrics["history"]] == [5, 10, 15, 20, 25, 30]
    ckpt = torch.load(tmp_path / "supernet.pt", weights_only=True)
    assert ckpt["kind"] == "supernet" and ckpt["space"] == "tiny" and len(ckpt["classes"]) == 8
    assert any(".choices.3." in k for k in ckpt["state_dict"])
    assert (tmp_path / "curves.png").stat().st_size > 1000
    assert not (tmp_path / "checkpoints" / "last.pt").exists()  # removed once the outputs exist

    client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    exp = client.get_experiment_by_name("pretrain-test")
    (run,) = client.search_runs([exp.experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.tags["stage"] == "pretrain_supernet" and run.data.tags["method"] == "supernet"
    assert run.data.tags["git_commit"]
    assert run.data.params["schedule.lr"] == "0.05" and run.data.params["space"] == "tiny"
    history = client.get_metric_history(run.info.run_id, "loss")
    assert [m.step for m in history] == [5, 10, 15, 20, 25, 30]
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"metrics.json", "curves.png"} <= artifacts


def _start(args, log):
    return subprocess.Popen([sys.executable, "-m", "detnas", *args], stdout=log, stderr=subprocess.STDOUT, text=True)


def _wait_for(predicate, timeout=120.0):
    t = time.time()
    while not predicate():
        if time.time() - t > timeout:
            raise AssertionError("timed out")
        time.sleep(0.05)


def test_killed_run_resumes_and_finishes(cls_split, tmp_path):
    settings = {**SETTINGS, "schedule": {**SETTINGS["schedule"], "iterations": 60}}
    args = pretrain_args(cls_split, tmp_path, settings)
    with open(tmp_path / "first.log", "w") as log:
        proc = _start(args, log)
        ckpt = tmp_path / "checkpoints" / "last.pt"
        _wait_for(ckpt.exists)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (tmp_path / "metrics.json").exists()
    saved = torch.load(ckpt, weights_only=True)["step"]
    assert 10 <= saved < 60
    second = run_detnas(*args)
    assert f"resuming from {ckpt} at step" in second.stdout
    resumed_at = int(second.stdout.split("at step ")[1].split()[0])
    assert resumed_at >= saved
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    steps = [r["step"] for r in metrics["history"]]
    assert steps[-1] == 60 and steps == sorted(set(steps))  # same step count, no step logged twice

    # one MLflow run for the job across both attempts, its curve whole: every 5th step once
    from mlflow.tracking import MlflowClient

    client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    (run,) = client.search_runs([client.get_experiment_by_name("pretrain-test").experiment_id])
    assert run.info.status == "FINISHED" and "error" not in run.data.tags
    assert f"MLflow: continuing run {run.info.run_id}" in second.stdout
    for key in ("loss", "lr"):
        assert sorted(m.step for m in client.get_metric_history(run.info.run_id, key)) == list(range(5, 61, 5)), key


def test_changed_settings_do_not_resume_a_foreign_checkpoint(cls_split, tmp_path):
    settings = {**SETTINGS, "schedule": {**SETTINGS["schedule"], "iterations": 60}}
    with open(tmp_path / "first.log", "w") as log:
        proc = _start(pretrain_args(cls_split, tmp_path, settings), log)
        _wait_for((tmp_path / "checkpoints" / "last.pt").exists)
        proc.kill()
        proc.wait()
    other = {**SETTINGS, "seed": 1}
    out = run_detnas(*pretrain_args(cls_split, tmp_path, other)).stdout
    assert "is stale: the stage's settings differ; deleted it, starting from step 0" in out and "resuming" not in out
    assert "step 5/30" in out  # from the first step


def test_changed_input_content_at_the_same_path_does_not_resume(cls_split, tmp_path):
    """The split file is rewritten in place (e.g. an upstream rerun): its checkpoint is stale."""
    split = tmp_path / "split.json"
    split.write_text(cls_split.read_text())
    settings = {**SETTINGS, "schedule": {**SETTINGS["schedule"], "iterations": 60}}
    args = pretrain_args(split, tmp_path, settings)
    with open(tmp_path / "first.log", "w") as log:
        proc = _start(args, log)
        _wait_for((tmp_path / "checkpoints" / "last.pt").exists)
        proc.kill()
        proc.wait()
    data = json.loads(split.read_text())
    data["holdout"] = data["holdout"][1:]  # one more training image
    split.write_text(json.dumps(data))
    out = run_detnas(*args).stdout
    assert "is stale: input content differs: split; deleted it, starting from step 0" in out
    assert "resuming" not in out and "step 5/60" in out


def test_failed_job_leaves_a_failed_run_with_the_error(cls_split, tmp_path):
    from mlflow.tracking import MlflowClient

    bad = {**SETTINGS, "schedule": {**SETTINGS["schedule"], "lr": 1e30}}  # diverges at once
    proc = run_detnas(*pretrain_args(cls_split, tmp_path, bad), check=False)
    assert proc.returncode != 0
    client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    (run,) = client.search_runs([client.get_experiment_by_name("pretrain-test").experiment_id])
    assert run.info.status == "FAILED"
    assert run.data.tags["error"].startswith("FloatingPointError: loss is")
    tail = Path(client.download_artifacts(run.info.run_id, "log_tail.txt", str(tmp_path)))
    text = tail.read_text()
    assert "pretrain supernet: " in text and "Traceback" in text and "FloatingPointError" in text


def test_torchrun_two_processes_train_one_path_per_step(cls_split, tmp_path):
    proc = run_detnas(
        *pretrain_args(cls_split, tmp_path),
        launcher=[sys.executable, "-m", "detnas.launch", "--nproc", "2"],
        env={"OMP_NUM_THREADS": "1"},
    )
    assert "launch: " in proc.stdout and "--nproc_per_node=2" in proc.stdout
    assert "2 process(es)" in proc.stdout  # one torchrun, one process group of 2
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["history"][-1]["step"] == 30


def test_ddp_invariants_under_torchrun():
    """Unused choices keep grad None under DDP, gradients agree, diverging paths are caught."""
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         str(ROOT / "tests" / "ddp_worker.py")],
        capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "OK rank 0" in proc.stdout and "OK rank 1" in proc.stdout


def test_bad_settings_fail_with_a_clear_message(cls_split, tmp_path):
    bad = {**SETTINGS, "schedule": {**SETTINGS["schedule"], "policy": "cosine"}}
    proc = run_detnas(*pretrain_args(cls_split, tmp_path, bad), check=False)
    assert proc.returncode == 2 and "schedule policy must be 'linear' or 'step', got 'cosine'" in proc.stderr


def test_final_networks_train_on_the_holdout_too(cls_split, tmp_path):
    """The supernet leaves ClsNAS's held-out images out; a retrained network uses every training image."""
    short = {**SETTINGS, "schedule": {**SETTINGS["schedule"], "iterations": 2}}
    run_detnas(*pretrain_args(cls_split, tmp_path / "supernet", short))
    run_detnas(*pretrain_args(cls_split, tmp_path / "net", short, extra=("--arch", "01230123")))
    held = len(json.loads(cls_split.read_text())["holdout"])
    supernet = json.loads((tmp_path / "supernet" / "metrics.json").read_text())["images"]
    net = json.loads((tmp_path / "net" / "metrics.json").read_text())["images"]
    assert net == 96 and supernet == net - held == 80
