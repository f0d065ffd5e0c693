"""The cluster's failures, reproduced on CPU: SIGTERM to the whole process group of a training job
with loader workers and 2 gloo ranks (as SLURM signals every process of a job at its time limit, on
scancel and on preemption), the random numbers of several ranks, a rank that fails mid-search, and
the collectives' timeout."""

from __future__ import annotations

import datetime
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import ROOT, TINY_DETECTOR, as_json, run_detnas, save_search_inputs

LAUNCH2 = [sys.executable, "-m", "detnas.launch", "--nproc", "2"]


def _env(**extra: str) -> dict[str, str]:
    """This test's environment (its own MLflow store) with one thread per process."""
    return {**os.environ, "OMP_NUM_THREADS": "1", **extra}

STOPPED = re.compile(r"stop requested \(SIGTERM\): checkpointed at step (\d+)")

PRETRAIN = {
    "space": "tiny", "image_size": 32, "batch_size": 8, "seed": 0, "checkpoint_every": 100000, "log_every": 5,
    "schedule": {"iterations": 40, "lr": 0.05, "policy": "linear", "weight_decay": 4e-5},
}
FINETUNE = {
    "space": "tiny", "detector": TINY_DETECTOR, "batch_size": 4, "seed": 0, "checkpoint_every": 100000,
    "log_every": 5, "schedule": {"iterations": 30, "lr": 0.02, "policy": "step", "milestones": [20],
                                 "warmup_iterations": 5, "weight_decay": 1e-4},
}


def _mlflow(experiment: str) -> str:
    return as_json({"experiment": experiment, "run_name": experiment, "tags": {"stage": experiment}})


def _pretrain_cmd(split: Path, out: Path, threads: int) -> list[str]:
    return ["pretrain", "--settings", as_json(PRETRAIN), "--split", str(split), "--weights", str(out / "weights.pt"),
            "--metrics", str(out / "metrics.json"), "--curves", str(out / "curves.png"),
            "--checkpoint-dir", str(out / "checkpoints"), "--threads", str(threads), "--mlflow", _mlflow("pretrain")]


def _finetune_cmd(train: Path, out: Path, threads: int) -> list[str]:
    return ["finetune", "--settings", as_json(FINETUNE), "--train", str(train), "--weights", str(out / "weights.pt"),
            "--metrics", str(out / "metrics.json"), "--curves", str(out / "curves.png"),
            "--checkpoint-dir", str(out / "checkpoints"), "--threads", str(threads), "--mlflow", _mlflow("finetune")]


def _descendants(pid: int) -> list[int]:
    """``pid`` and every process below it."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        children = subprocess.run(["pgrep", "-P", str(p)], capture_output=True, text=True).stdout.split()
        todo += [int(c) for c in children]
    return out


def _terminate_job_mid_run(cmd: list[str], log: Path, total: int) -> subprocess.Popen:
    """Start ``cmd`` as a job of its own; once it logged step 10, SIGTERM every process of the job
    (launcher, torchrun, ranks, loader workers; torchrun puts each rank in a process group of its
    own) at once, as SLURM does at a time limit, on scancel and on preemption; wait for it to end."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=_env(), start_new_session=True)
    t = time.time()
    while f"step 10/{total}" not in log.read_text():
        assert proc.poll() is None, log.read_text()[-3000:]
        assert time.time() - t < 240, "never reached step 10"
        time.sleep(0.05)
    job = _descendants(proc.pid)
    for pid in job:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    proc.wait(timeout=120)
    proc.job = job  # the processes signalled
    return proc


def _loss(metrics_file: Path) -> list[tuple[int, float]]:
    return [(r["step"], r["loss"]) for r in json.loads(metrics_file.read_text())["history"]]


def _run_of(experiment: str):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    return client.search_runs([client.get_experiment_by_name(experiment).experiment_id])


def _check_stop_and_resume(cmd: list[str], out: Path, experiment: str, total: int, ref: Path) -> None:
    first = _terminate_job_mid_run(LAUNCH2 + cmd, out / "first.log", total)
    text = (out / "first.log").read_text()
    # launcher, torchrun, 2 ranks and their loader workers (one each) were all signalled
    assert len(first.job) >= 6, first.job
    assert first.returncode == 143, text[-3000:]
    assert "exited unexpectedly" not in text and "Traceback" not in text.split("stop requested")[0], text[-3000:]
    (stopped,) = {int(s) for s in STOPPED.findall(text)}  # once: rank 0 logs, the others are quiet
    assert stopped >= 10
    ckpt = torch.load(out / "checkpoints" / "last.pt", weights_only=True)
    assert ckpt["step"] == stopped and len(ckpt["rng"]) == 2  # each rank's own generator
    (run,) = _run_of(experiment)
    assert run.info.status == "KILLED" and run.data.tags["error"].startswith("stopped"), run.data.tags

    second = run_detnas(*cmd, launcher=LAUNCH2, env={"OMP_NUM_THREADS": "1"})
    assert f"at step {stopped}" in second.stdout, second.stdout[-3000:]
    assert second.stdout.count("resuming from") == 1  # rank 0's log only
    (run,) = _run_of(experiment)
    assert run.info.status == "FINISHED" and "error" not in run.data.tags
    # the resumed run is the uninterrupted one: the same losses, step by step, and the same weights
    assert _loss(out / "metrics.json") == _loss(ref / "metrics.json")
    got = torch.load(out / "weights.pt", weights_only=True)["state_dict"]
    want = torch.load(ref / "weights.pt", weights_only=True)["state_dict"]
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in got)


def test_sigterm_to_every_process_of_a_two_rank_pretraining_with_workers(cls_split, tmp_path):
    ref, out = tmp_path / "ref", tmp_path / "out"
    run_detnas(*_pretrain_cmd(cls_split, ref, 4), launcher=LAUNCH2, env={"OMP_NUM_THREADS": "1",
               "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/ref.db"})
    _check_stop_and_resume(_pretrain_cmd(cls_split, out, 4), out, "pretrain", PRETRAIN["schedule"]["iterations"], ref)


def test_sigterm_to_every_process_of_a_two_rank_finetuning_with_workers(det_source, tmp_path):
    data = save_search_inputs(det_source, tmp_path / "data")
    train = data / "supernet_train.json"
    ref, out = tmp_path / "ref", tmp_path / "out"
    run_detnas(*_finetune_cmd(train, ref, 4), launcher=LAUNCH2, env={"OMP_NUM_THREADS": "1",
               "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/ref.db"})
    _check_stop_and_resume(_finetune_cmd(train, out, 4), out, "finetune", FINETUNE["schedule"]["iterations"], ref)


def test_sigterm_to_every_process_of_a_single_process_job_with_workers(cls_split, tmp_path):
    cmd = [sys.executable, "-m", "detnas", *_pretrain_cmd(cls_split, tmp_path, 3)]  # 2 loader workers
    first = _terminate_job_mid_run(cmd, tmp_path / "first.log", PRETRAIN["schedule"]["iterations"])
    text = (tmp_path / "first.log").read_text()
    assert len(first.job) == 3 and first.returncode == 143, text[-3000:]
    (stopped,) = {int(s) for s in STOPPED.findall(text)}
    (run,) = _run_of("pretrain")
    assert run.info.status == "KILLED"
    second = run_detnas(*_pretrain_cmd(cls_split, tmp_path, 3))
    assert f"at step {stopped}" in second.stdout


def test_ranks_draw_their_own_random_numbers(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         str(ROOT / "tests" / "rng_worker.py"), str(tmp_path)],
        capture_output=True, text=True, timeout=300, env=_env(),
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert "OK rank 0" in out and "OK rank 1" in out


SEARCH = {"method": "detnas", "population": 6, "parents": 2, "generations": 3, "max_mflops": 40,
          "recalibration_images": 4, "eval_images": 6, "batch_size": 4, "seed": 0}


@pytest.mark.parametrize("failing", [0, 1])
def test_a_rank_failing_mid_search_ends_the_job_at_once(det_source, tmp_path, failing):
    data = save_search_inputs(det_source, tmp_path / "data")
    args = ["search", "--settings", as_json(SEARCH), "--supernet", str(data / "supernet.pt"),
            "--val", str(data / "search_val.json"), "--recal", str(data / "supernet_train.json"),
            "--arch-out", str(tmp_path / "arch.json"), "--history", str(tmp_path / "history.csv"),
            "--curve", str(tmp_path / "curve.png"), "--checkpoint-dir", str(tmp_path / "ck"), "--threads", "1"]
    t = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         str(ROOT / "tests" / "failing_search.py"), *args],
        capture_output=True, text=True, timeout=600,
        env=_env(FAILING_RANK=str(failing), DETNAS_DIST_TIMEOUT_MINUTES="10"),
    )
    seconds = time.monotonic() - t
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert f"rank {failing}/2: RuntimeError: scoring failed on this rank" in out, out[-4000:]
    # a hang would last the 10-minute timeout; the whole job, scoring included, takes well under one
    assert seconds < 120, (seconds, out[-3000:])
    assert not (tmp_path / "arch.json").exists()


def test_the_collectives_timeout_reaches_the_process_groups(monkeypatch):
    import torch.distributed as dist

    from detnas import distributed

    calls = {}
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(dist, "init_process_group", lambda backend, **kw: calls.update(init=(backend, kw)))
    monkeypatch.setattr(dist, "get_backend", lambda: "nccl")  # as on CUDA: a gloo control group beside it
    monkeypatch.setattr(dist, "new_group", lambda **kw: calls.update(control=kw) or "control-group")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("DETNAS_DIST_TIMEOUT_MINUTES", "7.5")
    d = distributed.init_distributed("cpu")
    assert calls["init"] == ("gloo", {"timeout": datetime.timedelta(minutes=7.5)})
    assert calls["control"] == {"backend": "gloo", "timeout": datetime.timedelta(minutes=7.5)}
    assert d.control == "control-group" and d.rank == 1
    monkeypatch.delenv("DETNAS_DIST_TIMEOUT_MINUTES")
    assert distributed.timeout_minutes() == distributed.DEFAULT_TIMEOUT_MINUTES == 60
    for bad in ("0", "-3", "soon"):
        monkeypatch.setenv("DETNAS_DIST_TIMEOUT_MINUTES", bad)
        with pytest.raises(ValueError, match=f"DETNAS_DIST_TIMEOUT_MINUTES='{bad}'"):
            distributed.timeout_minutes()


def test_launch_sets_the_timeout_for_its_processes(tmp_path):
    out = tmp_path / "check.json"
    launch = [sys.executable, "-m", "detnas.launch", "--nproc", "2"]
    proc = subprocess.run([*launch, "--timeout-minutes", "3", "selfcheck", "--out", str(out)],
                          capture_output=True, text=True, timeout=120, env=_env())
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert [r["timeout_minutes"] for r in json.loads(out.read_text())["ranks"]] == [3.0, 3.0]
    assert "collectives time out after 3 min" in proc.stdout
    bad = subprocess.run([*launch, "--timeout-minutes", "0", "selfcheck"], capture_output=True, text=True,
                         timeout=60, env=_env())
    assert bad.returncode == 2 and "--timeout-minutes must be > 0" in bad.stderr
