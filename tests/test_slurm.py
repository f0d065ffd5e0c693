"""The workflow on a real SLURM cluster through `--profile profiles/slurm` (snakemake-executor-plugin-slurm).

Needs a running cluster: CI starts a one-node one with `.ci/slurm-up.sh` (and stops it with
`.ci/slurm-down.sh`). Without `sbatch` on PATH or an answering `sinfo` the tests are skipped, unless
DETNAS_REQUIRE_SLURM=1 (CI), where they fail instead.

Flags added to the user's command `snakemake --profile profiles/slurm <target>`, for this test cluster
only (TEST_FLAGS):
  --max-threads 1                             the CI node has 2 CPUs; the profile asks 4-16 threads
                                              (= --cpus-per-task) per job, which it could never run
  --slurm-init-seconds-before-status-checks 2 the plugin's first status check comes 40 s after a
  --seconds-between-status-checks 2           submission, then every 10 s more; the micro jobs take
                                              seconds, so the defaults would mostly measure waiting
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from workflow import edit_config, make_workdir, snakemake

TEST_FLAGS = ("--max-threads", "1", "--slurm-init-seconds-before-status-checks", "2",
              "--seconds-between-status-checks", "2")
SUBMITTED = re.compile(r"Job (\d+) has been submitted with SLURM jobid (\d+) \(log: (\S+)\)")


def _cluster_problem() -> str | None:
    if shutil.which("sbatch") is None:
        return "sbatch is not on PATH (no SLURM here; CI starts one with .ci/slurm-up.sh)"
    try:
        proc = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"sinfo failed: {e}"
    if proc.returncode != 0:
        return f"sinfo failed: {(proc.stderr or proc.stdout).strip()}"
    states = proc.stdout.split()
    if not any(s.rstrip("*~#$@^-+") in ("idle", "mixed", "allocated", "completing") for s in states):
        return f"no SLURM node is up (sinfo: {' '.join(states) or 'no nodes'})"
    try:
        import snakemake_executor_plugin_slurm  # noqa: F401
    except ImportError:
        return "snakemake-executor-plugin-slurm is not installed (pip install -e '.[slurm]')"
    return None


_PROBLEM = _cluster_problem()
if _PROBLEM and os.environ.get("DETNAS_REQUIRE_SLURM") == "1":
    raise RuntimeError(f"DETNAS_REQUIRE_SLURM=1 but {_PROBLEM}")
pytestmark = [pytest.mark.slow, pytest.mark.skipif(_PROBLEM is not None, reason=_PROBLEM or "")]


def _squeue(*args: str) -> list[list[str]]:
    """squeue rows (all states SLURM still knows) as [jobid, state, comment, workdir]."""
    proc = subprocess.run(["squeue", "-h", "--states=all", "-o", "%i|%T|%k|%Z", *args],
                          capture_output=True, text=True, timeout=30)
    return [line.split("|") for line in proc.stdout.splitlines() if line.count("|") == 3]


def _same_dir(a: str | Path, b: str | Path) -> bool:
    return os.path.realpath(a) == os.path.realpath(b)


def _cancel_jobs_of(workdir: Path) -> None:
    """Leave no job of a failed test behind on the cluster."""
    ids = [row[0] for row in _squeue() if _same_dir(row[3], workdir) and row[1] in ("PENDING", "RUNNING", "CONFIGURING")]
    if ids:
        subprocess.run(["scancel", *ids], capture_output=True, timeout=30)


def _report(capsys, title: str, lines: list[str]) -> None:
    """Show the SLURM job ids in the test run's output (also under plain `pytest -q`)."""
    with capsys.disabled():
        print(f"\n[{title}]", *lines, sep="\n    ", flush=True)


def test_micro_target_runs_on_slurm(tmp_path, capsys):
    wd = make_workdir(tmp_path / "wd")
    target = "results/shapes_fpn/final.json"
    try:
        proc = snakemake(wd, "--profile", "profiles/slurm", *TEST_FLAGS, target, timeout=1500)
    finally:
        _cancel_jobs_of(wd)
    text = proc.stdout + proc.stderr
    submitted = SUBMITTED.findall(text)
    _report(capsys, "SLURM jobs of the micro DetNAS target",
            [m.group(0) for m in SUBMITTED.finditer(text)] + [f"({line.strip()})" for line in text.splitlines()
                                                            if "steps (100%) done" in line])

    rules = {re.search(r"/rule_(\w+)/", log).group(1) for _, _, log in submitted}
    assert {"synthesize_detection", "split_detection", "pretrain_supernet", "finetune_supernet", "search",
            "retrain_pretrain", "retrain_finetune", "evaluate_detnas"} <= rules, rules
    slurm_ids = [int(s) for _, s, _ in submitted]
    assert len(set(slurm_ids)) == len(slurm_ids), submitted  # one SLURM job per Snakemake job
    assert f"{len(submitted)} of {len(submitted)} steps (100%) done" in text  # every job ran on SLURM
    # the jobs SLURM still lists (it forgets them MinJobAge after the end) all completed
    known = {row[0]: row[1] for row in _squeue("-j", ",".join(map(str, slurm_ids)))}
    assert known and set(known.values()) == {"COMPLETED"}, known

    final = json.loads((wd / target).read_text())
    assert final["method"] == "detnas" and final["experiment"] == "shapes_fpn" and len(final["arch"]) == 8
    assert 0.0 <= final["AP"] <= 1.0 and final["mlflow_run_id"]


def test_cancelled_training_job_is_resubmitted_and_resumes(tmp_path, capsys):
    """scancel of a running pre-training job with a loader worker: SLURM sends SIGTERM to every process
    of the job, the job checkpoints at the step it reached (no periodic checkpoint exists) and
    exits; the profile's `retries` resubmit it, and it resumes from that step."""
    wd = make_workdir(tmp_path / "wd")
    iterations = 400  # ~12 s of pre-training on this machine: time to cancel it mid-run (after step 100)
    edit_config(wd, "schedule: {iterations: 10, lr: 0.05", f"schedule: {{iterations: {iterations}, lr: 0.05")
    edit_config(wd, "checkpoint_every: 5", "checkpoint_every: 100000")  # only the SIGTERM's checkpoint
    target = "results/pretrain/micro/supernet.pt"
    log_file = wd / "results/logs/pretrain_supernet/micro.log"
    out_path = tmp_path / "snakemake.out"
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{wd}/results/mlflow.db"}
    # 2 CPUs for the job (--cpus-per-task=2): the training process and one loader worker
    flags = ("--max-threads", "2", *TEST_FLAGS[2:])
    cmd = [sys.executable, "-m", "snakemake", "--profile", "profiles/slurm", *flags, target]
    with open(out_path, "w") as out:
        sm = subprocess.Popen(cmd, cwd=wd, stdout=out, stderr=subprocess.STDOUT, text=True, env=env)
    cancelled = None
    try:
        deadline = time.monotonic() + 900
        while cancelled is None and sm.poll() is None and time.monotonic() < deadline:
            for jobid, state, comment, workdir in _squeue():
                if (_same_dir(workdir, wd) and comment == "rule_pretrain_supernet_wildcards_micro"
                        and state == "RUNNING" and log_file.exists() and f"step 100/{iterations}" in log_file.read_text()):
                    subprocess.run(["scancel", jobid], check=True, timeout=30)
                    cancelled = jobid
                    break
            time.sleep(0.5)
        assert cancelled, f"never saw pretrain_supernet running past step 100:\n{out_path.read_text()[-3000:]}"
        rc = sm.wait(timeout=max(60, deadline + 300 - time.monotonic()))
    finally:
        if sm.poll() is None:
            sm.terminate()  # snakemake cancels its SLURM jobs on SIGTERM
            try:
                sm.wait(timeout=60)
            except subprocess.TimeoutExpired:
                sm.kill()
        _cancel_jobs_of(wd)
    text = out_path.read_text()
    logs = "\n".join(f"== {p}\n{p.read_text()[-1500:]}" for p in (wd / "results/logs").rglob("*.log"))
    assert rc == 0, f"snakemake failed ({rc}):\n{text[-5000:]}\n{logs}"

    pretrain_jobs = [m for m in SUBMITTED.finditer(text) if "/rule_pretrain_supernet/" in m.group(3)]
    _report(capsys, f"SLURM job {cancelled} (pretrain_supernet) cancelled, then resubmitted",
            [m.group(0) for m in pretrain_jobs]
            + [line.strip() for line in text.splitlines() if f"'{cancelled}'" in line and "CANCELLED" in line])
    assert cancelled in [m.group(2) for m in pretrain_jobs]
    assert len(pretrain_jobs) == 2, [m.group(0) for m in pretrain_jobs]  # the cancelled one and its retry
    assert re.search(rf"SLURM-job '{cancelled}' failed, SLURM status is: 'CANCELLED'", text), text[-4000:]

    log = log_file.read_text()
    resumed = re.search(r"resuming from \S+ at step (\d+)", log)
    assert resumed and int(resumed.group(1)) >= 100, log[-3000:]  # the SIGTERM's checkpoint
    assert "1 loader worker" in log, log[:2000]
    _report(capsys, "pretrain_supernet log of the retry", [line for line in log.splitlines() if "resuming from" in line])
    metrics = json.loads((wd / "results/pretrain/micro/metrics.json").read_text())
    assert metrics["history"][-1]["step"] == iterations
    assert (wd / target).stat().st_size > 0

    # both SLURM jobs logged to one MLflow run, which ends FINISHED with its whole loss curve
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{wd}/results/mlflow.db")
    (run,) = client.search_runs([client.get_experiment_by_name("pretrain-micro").experiment_id])
    assert run.info.status == "FINISHED" and "error" not in run.data.tags
    steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, "loss"))
    assert steps == [r["step"] for r in metrics["history"]]
