"""Run the real Snakemake workflow in a scratch copy of the project (helpers for the tests)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def make_workdir(dest: Path, config: Path | str = ROOT / "tests" / "data" / "micro_config.yaml") -> Path:
    """A copy of the workflow (Snakefile, workflow/, profiles/, config/examples/) with ``config`` as
    its config."""
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copy(ROOT / "Snakefile", dest / "Snakefile")
    for d in ("workflow", "profiles"):
        shutil.copytree(ROOT / d, dest / d, dirs_exist_ok=True)
    (dest / "config").mkdir(exist_ok=True)
    shutil.copy(config, dest / "config" / "config.yaml")
    shutil.copytree(ROOT / "config" / "examples", dest / "config" / "examples", dirs_exist_ok=True)
    return dest


def snakemake(workdir: Path, *args: str, check: bool = True, timeout: float = 1200) -> subprocess.CompletedProcess:
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{workdir}/results/mlflow.db"}
    if "--cores" in args and "--max-threads" not in args:  # one-thread jobs side by side, as `make demo`
        args = (*args, "--max-threads", "1")
    proc = subprocess.run([sys.executable, "-m", "snakemake", *args], cwd=workdir, capture_output=True,
                          text=True, timeout=timeout, env=env)
    if check and proc.returncode != 0:
        logs = "\n".join(f"== {p}\n{p.read_text()[-2500:]}" for p in (workdir / "results" / "logs").rglob("*.log"))
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}\n{logs}")
    return proc


def planned(workdir: Path, *targets: str) -> Counter:
    """Jobs a dry run plans, by rule (empty when there is nothing to do)."""
    out = snakemake(workdir, "-n", *targets)
    text = out.stdout + out.stderr
    jobs: Counter = Counter()
    if "Job stats:" not in text:
        return jobs
    table = text.split("Job stats:")[1].split("\n\n")[0]
    for line in table.splitlines():
        m = re.match(r"^(\w+)\s+(\d+)$", line.strip())
        if m and m.group(1) != "total":
            jobs[m.group(1)] = int(m.group(2))
    return jobs


def edit_config(workdir: Path, old: str, new: str) -> None:
    path = workdir / "config" / "config.yaml"
    text = path.read_text()
    assert old in text, f"{old!r} not in the config"
    path.write_text(text.replace(old, new, 1))


def clone_workdir(src: Path, dest: Path) -> Path:
    """A copy of a workdir that has run: config, results and Snakemake's metadata (``.snakemake/``),
    file times kept, so Snakemake plans there exactly what it would plan in ``src``. Its split files
    still name ``src``'s image folders, which the copy reads."""
    shutil.copytree(src, dest, symlinks=True, ignore=shutil.ignore_patterns("report.html"))
    return dest


# What the shared micro run makes: the default target (the demo experiment's comparison, curves,
# ranking, architectures) and the unscaled ShuffleNetV2, a target of its own.
MICRO_TARGETS = ("all", "results/shapes_fpn/shufflenetv2_unscaled/final.json")


def run_micro(dest: Path) -> Path:
    """The micro configuration's whole DAG, run once in ``dest`` (see conftest's ``micro_run``)."""
    wd = make_workdir(dest)
    proc = snakemake(wd, "--cores", "2", *MICRO_TARGETS)
    assert "Finished" in proc.stdout + proc.stderr
    return wd
