"""Multi-process launching: one torchrun per job with N processes, never N copies of the job."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from detnas.launch import SHUTDOWN_SECONDS, launch_argv
from workflow import make_workdir, snakemake


def test_launch_line_for_two_gpus_is_one_torchrun():
    argv = launch_argv(2, ["finetune", "--settings", "{}"])
    assert Path(argv[0]).name == "torchrun" or argv[1:3] == ["-m", "torch.distributed.run"]
    i = 1 if Path(argv[0]).name == "torchrun" else 3
    assert argv[i:i + 6] == ["--standalone", "--nproc_per_node=2", f"--shutdown-timeout={SHUTDOWN_SECONDS}",
                             "-m", "detnas", "finetune"]
    assert launch_argv(0, ["finetune"]) == [sys.executable, "-m", "detnas", "finetune"]
    assert launch_argv(1, ["finetune"]) == [sys.executable, "-m", "detnas", "finetune"]


def test_rule_with_gpu2_runs_one_launch_of_two_processes(tmp_path):
    wd = make_workdir(tmp_path)
    out = snakemake(wd, "results/shapes_fpn/supernet_pretrained/supernet.pt", "-n", "-p",
                    "--set-resources", "finetune_supernet:gpu=2")
    text = out.stdout + out.stderr
    commands = [line for line in text.splitlines() if "detnas" in line and " finetune " in line]
    assert len(commands) == 1, commands
    assert len(re.findall(r"python -m detnas\.launch --nproc 2 finetune ", commands[0])) == 1
    assert "torchrun" not in commands[0] and "srun" not in commands[0]


def test_selfcheck_reports_processes(tmp_path):
    out = tmp_path / "check.json"
    proc = subprocess.run(
        [sys.executable, "-m", "detnas.launch", "--nproc", "2", "selfcheck", "--expect-processes", "2", "--out", str(out)],
        capture_output=True, text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("launch: ") == 1 and "--nproc_per_node=2" in proc.stdout
    report = json.loads(out.read_text())
    assert report["world_size"] == 2 and report["problems"] == []
    assert sorted(r["rank"] for r in report["ranks"]) == [0, 1]
    assert len({r["pid"] for r in report["ranks"]}) == 2


def test_selfcheck_flags_a_wrong_process_count(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "detnas", "selfcheck", "--expect-processes", "2"],
                          capture_output=True, text=True, timeout=60, env={**os.environ, "SLURM_NTASKS": "2"})
    assert proc.returncode == 1
    assert "expected 2 processes, the job runs 1" in proc.stdout and "SLURM started 2 tasks" in proc.stdout
