"""Reruns through the real Snakemake DAG: resumable state is used only for the inputs that made it."""

import re
import csv
import json

import pytest
import torch

from workflow import clone_workdir, edit_config, make_workdir, planned, snakemake

SEARCH = "results/shapes_fpn/detnas/search/history.csv"
CKPT = "results/shapes_fpn/detnas/search/checkpoints"


def _scores(wd):
    with open(wd / SEARCH) as f:
        return {r["arch"]: float(r["fitness"]) for r in csv.DictReader(f)}


def _log(wd):
    return (wd / "results/logs/search/shapes_fpn_detnas.log").read_text()


@pytest.mark.slow
def test_search_state_is_not_reused_for_another_supernet(micro_run, tmp_path):
    wd = clone_workdir(micro_run, tmp_path / "wd")  # the micro run's search has run there
    assert planned(wd, SEARCH) == {}
    first = _scores(wd)
    assert (wd / CKPT / "scores.jsonl").is_file()  # kept: a later rerun with the same inputs may resume

    # a fine-tuning setting changes: the supernet is retrained, and the search scores everything anew
    edit_config(wd, "schedule: {iterations: 6, lr: 0.01", "schedule: {iterations: 7, lr: 0.01")
    assert planned(wd, SEARCH) == {"finetune_supernet": 1, "search": 1}
    snakemake(wd, "--cores", "2", SEARCH)
    log = _log(wd)
    assert "is stale: input content differs: supernet; deleted it, every candidate is scored anew" in log
    assert "resuming the search" not in log
    second = _scores(wd)
    assert second != first
    rows = [json.loads(line) for line in (wd / CKPT / "scores.jsonl").read_text().splitlines()]
    assert len(rows) == len(second)  # every candidate of this search was scored by this search

    # the supernet's content changes at the same path (written by hand): the same
    weights = wd / "results/shapes_fpn/supernet_pretrained/supernet.pt"
    ckpt = torch.load(weights, weights_only=True)
    ckpt.pop("_digest")  # a file of another content, not a damaged one (whose digest would not match)
    for v in ckpt["state_dict"].values():
        if v.is_floating_point():
            v.mul_(0.5)
    torch.save(ckpt, weights)
    assert planned(wd, SEARCH) == {"search": 1}
    snakemake(wd, "--cores", "2", SEARCH)
    assert "is stale: input content differs: supernet" in _log(wd)
    assert _scores(wd) != second


@pytest.mark.slow
def test_unchanged_inputs_resume_the_search(micro_run, tmp_path):
    """A rerun of the same search (e.g. after a kill) resumes: nothing is scored twice."""
    wd = clone_workdir(micro_run, tmp_path / "wd")  # the micro run's search has run there
    first = (wd / SEARCH).read_text()
    (wd / SEARCH).unlink()  # as if the job had died before writing its outputs
    snakemake(wd, "--cores", "2", SEARCH)
    log = _log(wd)
    # both repeats (micro: search.repeats 2) resume after their last generation; nothing is scored again
    assert re.search(r"resuming the search \(repeat 1: generation 2, repeat 2: generation 2; \d+ candidates "
                     r"already scored\)", log), log[-2000:]
    assert not re.search(r"\] \d+ scored \(", log)
    assert (wd / SEARCH).read_text() == first


PRETRAIN = "results/pretrain/micro/supernet.pt"


def _kill_during_pretraining(wd):
    """Start Snakemake on the pre-training target, SIGKILL it and its job once a checkpoint exists."""
    import os
    import signal
    import subprocess
    import sys
    import time

    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{wd}/results/mlflow.db"}
    with open(wd / "snakemake.log", "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "snakemake", "--cores", "2", PRETRAIN], cwd=wd, env=env,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        ckpt = wd / "results/pretrain/micro/checkpoints/last.pt"
        deadline = time.time() + 300
        while not ckpt.exists():
            assert proc.poll() is None and time.time() < deadline, (wd / "snakemake.log").read_text()[-3000:]
            time.sleep(0.1)
        os.killpg(proc.pid, signal.SIGKILL)  # Snakemake and its job die at once, as on a lost node
        proc.wait()
    return torch.load(ckpt, weights_only=True)["step"]


def _pretrain_runs(wd):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{wd}/results/mlflow.db")
    exp = client.get_experiment_by_name("pretrain-micro")
    return client, client.search_runs([exp.experiment_id])


@pytest.mark.slow
def test_killed_snakemake_and_pretraining_job_resume(tmp_path):
    wd = make_workdir(tmp_path)
    edit_config(wd, "schedule: {iterations: 10, lr: 0.05", "schedule: {iterations: 60, lr: 0.05")
    saved = _kill_during_pretraining(wd)
    snakemake(wd, "--unlock")  # Snakemake itself was killed: its lock stays
    snakemake(wd, "--cores", "2", PRETRAIN)
    log = (wd / "results/logs/pretrain_supernet/micro.log").read_text()
    assert int(log.split("resuming from ")[1].split("at step ")[1].split()[0]) >= saved > 0
    client, runs = _pretrain_runs(wd)
    (run,) = runs  # one run for the job across both attempts
    assert run.info.status == "FINISHED"
    steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, "loss"))
    assert steps == list(range(5, 61, 5))  # whole, no gap, no step twice
    # a changed setting does not resume a checkpoint: test_pretrain_stage (the stage itself)

