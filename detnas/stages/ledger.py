"""The ``ledger`` stage: what an experiment's run spent, stage by stage and method by method.

The figures come from Snakemake's benchmark file of every job the comparison needed (wall-clock
seconds ``s``, CPU seconds ``cpu_time``, peak resident memory ``max_rss`` in MB) and the GPUs each
job held (its ``gpu`` resource: the ranks ``detnas.launch`` starts). A job's GPU-hours are its
wall-clock hours times its GPUs. The paper's Table 4 gives the same per step for DetNAS on COCO
(pre-training 1.5 days on 8 GPUs, fine-tuning 1.5 days on 8 GPUs, search 1 day on 20 GPUs).

A method's cost is every job its row needed, the shared ones in full (the supernet pre-training
counts for DetNAS, random search and ClsNAS alike): what it would cost to run that method alone.
The random architectures' row is all of them together.

Beside the plan: when the experiment was rehearsed (``plan.json``, ``detnas.stages.plan``), each
stage and the total carry the plan's prediction (``predicted_wall_h``: the predicted job-hours,
``predicted_gpu_h``) and ``spent_vs_predicted`` (spent wall-clock over predicted), so the table shows
how far the plan was off.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from ..formatting import fmt_duration, fmt_number
from ..io import read_json, write_json_atomic, write_text_atomic
from ..tracking import StageRun

__all__ = ["STAGES", "beside_plan", "read_benchmark", "run_ledger", "summarize_jobs"]

# the steps of the paper's Table 4, in order, and the rules that make them
STAGES = {
    "data": "dataset split (and the demo's synthetic data)",
    "pretrain_supernet": "supernet pre-training (classification)",
    "finetune_supernet": "supernet fine-tuning (detection)",
    "search": "search (scoring supernet paths)",
    "retrain_pretrain": "retraining: the backbone as a classifier",
    "retrain_finetune": "retraining: the detector",
    # each network's backbone timed on the deployment device (an experiment with a latency table; the
    # table itself is measured for real by the rehearsal, as the split, and counted under data)
    "latency": "measured latency of each network",
    "evaluate": "evaluation on the test split",
}


def read_benchmark(path: Path) -> dict[str, float]:
    """A Snakemake benchmark file (one row per repeat; the mean): wall-clock ``s``, ``cpu_time``
    (seconds) and ``max_rss`` (MB; 0 or missing where the platform gives none)."""
    try:
        frame = pd.read_csv(path, sep="\t")
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as e:
        raise ValueError(f"{path}: not a Snakemake benchmark file ({e})") from e
    missing = [c for c in ("s", "cpu_time") if c not in frame]
    if missing or frame.empty:
        raise ValueError(f"{path}: not a Snakemake benchmark file (no rows, or no column {missing})")

    def mean(column: str) -> float:
        values = pd.to_numeric(frame[column], errors="coerce") if column in frame else pd.Series(dtype=float)
        return float(values.mean()) if values.notna().any() else float("nan")

    return {"s": mean("s"), "cpu_time": mean("cpu_time"), "max_rss": mean("max_rss")}


def summarize_jobs(jobs: list[dict[str, Any]]) -> dict[str, Any]:
    """``jobs``: one dict per job, ``stage`` (a key of STAGES), ``name`` (the job, e.g. "search
    detnas"), ``methods`` (the comparison rows it served), ``gpus`` and ``benchmark`` (the file).
    Returns ``{"jobs": [...], "stages": [...], "methods": {...}}``: per job its wall-clock, CPU and
    GPU hours and peak memory; per stage the jobs' count and sums (wall-clock as if run one after
    another); per method the sums over the jobs it needed."""
    rows = []
    for job in jobs:
        b = read_benchmark(Path(job["benchmark"]))
        gpus = int(job.get("gpus") or 0)
        rows.append({"stage": job["stage"], "name": job["name"], "methods": list(job["methods"]), "gpus": gpus,
                     "wall_h": b["s"] / 3600, "cpu_h": b["cpu_time"] / 3600, "gpu_h": b["s"] * gpus / 3600,
                     "max_rss_gb": b["max_rss"] / 1024 if b["max_rss"] == b["max_rss"] else None,
                     "benchmark": str(job["benchmark"])})
    unknown = sorted({r["stage"] for r in rows} - set(STAGES))
    if unknown:
        raise ValueError(f"unknown stages {unknown}; known: {list(STAGES)}")

    def total(selected: list[dict[str, Any]]) -> dict[str, Any]:
        rss = [r["max_rss_gb"] for r in selected if r["max_rss_gb"] is not None and r["max_rss_gb"] > 0]
        return {"jobs": len(selected), "wall_h": sum(r["wall_h"] for r in selected),
                "cpu_h": sum(r["cpu_h"] for r in selected), "gpu_h": sum(r["gpu_h"] for r in selected),
                "max_rss_gb": max(rss) if rss else None}

    stages = [{"stage": s, "what": what, **total([r for r in rows if r["stage"] == s])}
              for s, what in STAGES.items() if any(r["stage"] == s for r in rows)]
    methods = sorted({m for r in rows for m in r["methods"]})
    per_method = {m: {**total([r for r in rows if m in r["methods"]]),
                      "by_stage": {s["stage"]: total([r for r in rows if m in r["methods"] and r["stage"] == s["stage"]])["wall_h"]
                                   for s in stages}}
                  for m in methods}
    return {"jobs": rows, "stages": stages, "methods": per_method, "total": total(rows)}


def beside_plan(ledger: dict[str, Any], plan: dict[str, Any]) -> dict[str, Any]:
    """``ledger`` with the plan's prediction beside each stage and the total (see the module's
    docstring); a stage the plan did not predict gets None."""
    predicted = {s["stage"]: s for s in plan.get("stages", [])}

    def add(entry: dict[str, Any], p: dict[str, Any] | None) -> dict[str, Any]:
        wall = None if p is None or not p.get("predicted") else p.get("job_h")
        gpu = None if p is None or not p.get("predicted") else p.get("gpu_h")
        ratio = entry["wall_h"] / wall if wall else None
        return {**entry, "predicted_wall_h": wall, "predicted_gpu_h": gpu, "spent_vs_predicted": ratio}

    t = plan.get("total") or {}
    total_p = {"predicted": t.get("predicted"), "job_h": t.get("job_h"), "gpu_h": t.get("gpu_h")} if t else None
    return {**ledger, "stages": [add(s, predicted.get(s["stage"])) for s in ledger["stages"]],
            "total": add(ledger["total"], total_p), "plan_device": plan.get("device")}


def _hours(h: float | None) -> str:
    """Hours as a person reads them: seconds, minutes, hours or days (``fmt_duration``)."""
    return fmt_duration(None if h is None else h * 3600)


def ledger_table(ledger: dict[str, Any]) -> pd.DataFrame:
    """The paper's Table 4 for this run: one row per stage, then the total; with the plan's
    prediction beside it (``beside_plan``) where the experiment was rehearsed."""
    planned = "predicted_wall_h" in ledger["total"]

    def row(name: str, s: dict[str, Any]) -> dict[str, Any]:
        out = {"stage": name, "jobs": s["jobs"], "wall-clock (sum)": _hours(s["wall_h"]),
               "GPU-hours": fmt_number(s["gpu_h"], 2), "CPU-hours": fmt_number(s["cpu_h"], 2),
               "peak memory (GB)": "-" if s["max_rss_gb"] is None else fmt_number(s["max_rss_gb"], 2)}
        if planned:
            ratio = s["spent_vs_predicted"]
            out |= {"planned wall-clock": "-" if s["predicted_wall_h"] is None else _hours(s["predicted_wall_h"]),
                    "planned GPU-hours": "-" if s["predicted_gpu_h"] is None else fmt_number(s["predicted_gpu_h"], 2),
                    "spent/planned": "-" if ratio is None else f"{ratio:.2f}x"}
        return out

    return pd.DataFrame([row(s["what"], s) for s in ledger["stages"]] + [row("total", ledger["total"])])


def run_ledger(*, jobs: list[dict[str, Any]], json_out: Path, csv_out: Path, experiment: str,
               mlflow: dict[str, Any], plan: Path | None = None) -> dict[str, Any]:
    """Write ``json_out`` (``summarize_jobs``, beside ``plan``'s prediction when given) and ``csv_out``
    (``ledger_table``), print the table, and log each stage's and method's GPU-hours and wall-clock
    hours to MLflow."""
    ledger = {"experiment": experiment, **summarize_jobs(jobs)}
    if plan is not None:
        ledger = beside_plan(ledger, read_json(plan))
    table = ledger_table(ledger)
    write_json_atomic(ledger, json_out)
    write_text_atomic(table.to_csv(index=False), csv_out)
    print(f"{experiment}: what the run spent (Snakemake's benchmark files; GPU-hours = wall-clock x the job's GPUs)")
    print(table.to_string(index=False))
    with StageRun(**mlflow, params={"jobs": len(jobs)}) as run:
        metrics = {f"{s['stage']}_gpu_h": s["gpu_h"] for s in ledger["stages"]}
        metrics |= {f"{s['stage']}_wall_h": s["wall_h"] for s in ledger["stages"]}
        metrics |= {f"{m}_gpu_h": v["gpu_h"] for m, v in ledger["methods"].items()}
        metrics |= {f"{m}_wall_h": v["wall_h"] for m, v in ledger["methods"].items()}
        run.log_metrics({k.replace(" ", "_"): v for k, v in metrics.items() if v == v}, 0)
        run.log_artifacts(json_out, csv_out)
    return ledger
