"""The ``plan`` stage: what the full run of an experiment will cost, from its rehearsal.

Inputs: the comparison's jobs (the ledger's job list, ``detnas.stages.ledger``, each with its size
at the real settings: ``steps`` for a training stage, already multiplied by any schedule factor;
``candidates`` for a search; ``images`` for an evaluation, None for the rehearsal's), one
rehearsal per stage (``detnas rehearse``'s JSON, ``detnas.stages.rehearse``) and what the profile
allows (``parallel_jobs``: jobs at once; ``runtime_min``: the per-job time limit; ``cpus_per_gpu``).

A job's predicted wall-clock (s) is its size times its stage's rehearsed time per unit plus the
rehearsal's overhead (start-up, final evaluation, plots): ``steps * sec_per_step + overhead_s``,
``candidates * sec_per_candidate + overhead_s``, ``images * sec_per_image + overhead_s``. A search
job that scores no candidates (a hand-crafted or random architecture's file) is predicted 0 s. The
data jobs ran for real: their benchmark file's ``s``, 0 where it does not exist yet. GPU-hours are
a job's predicted hours times its GPUs. Jobs of a stage whose rehearsal failed or is missing have
no prediction: they are left out of the totals, and a flag says so.

The wall-clock of the whole target is a list schedule (``schedule``): the jobs in stage order, each
starting on the first free one of ``parallel_jobs`` slots, but not before every job of an earlier
stage that serves one of its methods has ended. With one slot it is the sum of the jobs' times; with
as many slots as jobs it is the longest chain of dependent jobs.
"""

from __future__ import annotations

import heapq
import math
import textwrap
from pathlib import Path
from typing import Any

from ..formatting import fmt_duration, fmt_number
from ..io import read_json, write_json_atomic, write_text_atomic
from .ledger import STAGES, read_benchmark
from .rehearse import TRAINING_STAGES

__all__ = ["format_plan", "make_plan", "plan_markdown", "predict_job", "run_plan", "schedule", "show_plan"]

LARGE_STEPS = 10000  # a training job this long on CPU (0 GPUs) is flagged
MEMORY_MARGIN = 0.10  # peak memory within this fraction of the device's is flagged
WIDTH = 100  # the printed plan fits a terminal this wide
_ORDER = {s: i for i, s in enumerate(STAGES)}


def _jobs(n: int) -> str:
    return f"{n} job" if n == 1 else f"{n} jobs"


def _rule(job: dict[str, Any]) -> str:
    """The Snakemake rule of a job: its "rule", else its benchmark file's folder (benchmarks/<rule>/...)."""
    return str(job.get("rule") or Path(str(job.get("benchmark", "?/?"))).parent.name)


def predict_job(job: dict[str, Any], rehearsal: dict[str, Any] | None) -> float | None:
    """A job's predicted wall-clock (s), or None when its stage's rehearsal failed or is missing (or
    the job has no size)."""
    if job["stage"] == "data":
        path = Path(job["benchmark"])
        return read_benchmark(path)["s"] if path.exists() else 0.0
    if rehearsal is None or not rehearsal.get("ok"):
        return None
    t = rehearsal["timing"]
    if job["stage"] in TRAINING_STAGES:
        return None if job.get("steps") is None else job["steps"] * t["sec_per_step"] + t["overhead_s"]
    if job["stage"] == "search":
        candidates = job.get("candidates")
        if candidates is None:
            return None
        return 0.0 if candidates == 0 else candidates * t["sec_per_candidate"] + t["overhead_s"]
    images = job.get("images") if job.get("images") is not None else t["images"]
    return images * t["sec_per_image"] + t["overhead_s"]


def schedule(jobs: list[dict[str, Any]], parallel_jobs: int) -> float:
    """The wall-clock (s) of running ``jobs`` (each with ``stage``, ``methods`` and ``pred_s``, None
    counted as 0) with at most ``parallel_jobs`` at once: a list schedule in stage order (jobs of a
    stage in their given order), each job on the slot that frees first, not before every job of an
    earlier stage that serves one of its methods has ended. Sets each job's ``start_s``/``end_s``."""
    order = sorted(range(len(jobs)), key=lambda i: _ORDER.get(jobs[i]["stage"], len(_ORDER)))
    slots = [0.0] * max(1, int(parallel_jobs))
    heapq.heapify(slots)
    done: list[int] = []
    end = 0.0
    for i in order:
        job = jobs[i]
        methods = set(job["methods"])
        ready = max((jobs[j]["end_s"] for j in done
                     if _ORDER[jobs[j]["stage"]] < _ORDER[job["stage"]] and methods & set(jobs[j]["methods"])),
                    default=0.0)
        start = max(heapq.heappop(slots), ready)
        job["start_s"], job["end_s"] = start, start + (job["pred_s"] or 0.0)
        heapq.heappush(slots, job["end_s"])
        done.append(i)
        end = max(end, job["end_s"])
    return end


def _memory(rehearsal: dict[str, Any]) -> tuple[float | None, float | None]:
    """(peak resident memory, the memory it is held against), MB: the host's memory where the
    rehearsal recorded it (the peak is the processes' RSS, host memory also on a GPU), else the
    device's."""
    limit = rehearsal.get("host_memory_mb") or rehearsal.get("device_memory_mb")
    return rehearsal.get("peak_rss_mb"), limit


def make_plan(*, jobs: list[dict[str, Any]], rehearsals: dict[str, dict[str, Any]], profile: dict[str, Any],
              experiment: str) -> dict[str, Any]:
    """The plan (see the module's docstring): ``{"experiment", "device", "profile", "stages": [...],
    "total": {...}, "flags": [...], "jobs": [...]}``; times in seconds, GPU-hours and job-hours in
    hours, memory in MB."""
    unknown = sorted({j["stage"] for j in jobs} - set(STAGES))
    if unknown:
        raise ValueError(f"unknown stages {unknown}; known: {list(STAGES)}")
    runtime_s = profile.get("runtime_min") * 60 if profile.get("runtime_min") else None
    rows = []
    for job in jobs:
        pred = predict_job(job, rehearsals.get(job["stage"]))
        gpus = int(job.get("gpus") or 0)
        resub = math.ceil(pred / runtime_s) - 1 if pred is not None and runtime_s and pred > runtime_s else 0
        rows.append({**job, "methods": list(job["methods"]), "gpus": gpus, "rule": _rule(job), "pred_s": pred,
                     "gpu_h": None if pred is None else pred * gpus / 3600, "resubmissions": resub})
    parallel = max(1, int(profile.get("parallel_jobs") or 1))
    wall_s = schedule(rows, parallel)

    flags: list[str] = []
    stages = []
    for stage, what in STAGES.items():
        mine = [r for r in rows if r["stage"] == stage]
        if not mine:
            continue
        rehearsal = rehearsals.get(stage)
        preds = [r["pred_s"] for r in mine if r["pred_s"] is not None]
        entry: dict[str, Any] = {
            "stage": stage, "what": what, "jobs": len(mine), "predicted": len(preds),
            "pred_s_mean": sum(preds) / len(preds) if preds else None, "pred_s_max": max(preds) if preds else None,
            "gpu_h": sum(r["gpu_h"] for r in mine if r["gpu_h"] is not None) if preds else None,
            "job_h": sum(preds) / 3600, "status": "ok", "error": None, "device": None, "peak_rss_mb": None,
            "memory_limit_mb": None, "memory_flag": False, "images_per_s": None}
        if stage == "data":
            entry["status"] = "measured" if all(Path(r["benchmark"]).exists() for r in mine) else "not run"
        elif rehearsal is None:
            entry["status"] = "missing"
            flags.append(f"{stage}: no rehearsal; left out of the totals: {_jobs(len(mine))}")
        else:
            peak, limit = _memory(rehearsal)
            entry |= {"device": rehearsal.get("device"), "peak_rss_mb": peak, "memory_limit_mb": limit,
                      "images_per_s": (rehearsal.get("timing") or {}).get("images_per_s")}
            if not rehearsal.get("ok"):
                entry |= {"status": "failed", "error": rehearsal.get("error")}
                flags.append(f"{stage}: rehearsal FAILED: {rehearsal.get('error')}; left out of the totals: "
                             f"{_jobs(len(mine))}")
            if peak is not None and limit and peak >= (1 - MEMORY_MARGIN) * limit:
                entry["memory_flag"] = True
                flags.append(f"{stage}: peak memory {peak:.0f} MB is within {MEMORY_MARGIN:.0%} of the "
                             f"{limit:.0f} MB it has (or above)")
        if len(preds) < len(mine) and entry["status"] == "ok":
            flags.append(f"{stage}: no size given; left out of the totals: {_jobs(len(mine) - len(preds))}")
        late = [r for r in mine if r["resubmissions"]]
        if late:
            worst = max(late, key=lambda r: r["pred_s"])
            flags.append(f"{stage}: {_jobs(len(late))} longer than the profile's runtime limit "
                         f"({fmt_duration(runtime_s)}), up to {fmt_duration(worst['pred_s'])}: "
                         f"{worst['resubmissions']} resubmissions (the stage checkpoints and resumes: a cost, "
                         f"not a failure)")
        cpu = [r for r in mine if stage in TRAINING_STAGES and r["gpus"] == 0 and (r.get("steps") or 0) > LARGE_STEPS]
        for rule in sorted({r["rule"] for r in cpu}):
            steps = max(r["steps"] for r in cpu if r["rule"] == rule)
            flags.append(f"{rule}: trains {steps} steps on CPU (0 GPUs); set `set-resources: {rule}: gpu: N` "
                         f"in the profile")
        stages.append(entry)

    predicted = [r for r in rows if r["pred_s"] is not None]
    devices = sorted({r["device"] for r in rehearsals.values() if r.get("device")})
    total = {"jobs": len(rows), "predicted": len(predicted), "gpu_h": sum(r["gpu_h"] for r in predicted),
             "job_h": sum(r["pred_s"] for r in predicted) / 3600, "wall_s": wall_s, "parallel_jobs": parallel,
             "resubmissions": sum(r["resubmissions"] for r in rows)}
    return {"experiment": experiment, "device": ", ".join(devices) or None, "profile": dict(profile),
            "stages": stages, "total": total, "flags": flags, "jobs": rows}


_COLUMNS = [("stage", 17), ("jobs", 4), ("per job", 10), ("max", 10), ("GPU-h", 9), ("rehearsal", 9),
            ("peak/of MB", 15), ("img/s", 8)]


def _cells(s: dict[str, Any]) -> list[str]:
    """One stage's cells of the table."""
    status = {"ok": "ok", "failed": "FAILED", "missing": "missing", "measured": "ran", "not run": "not run"}[s["status"]]
    memory = "-" if s["peak_rss_mb"] is None else (
        f"{s['peak_rss_mb']:.0f}/{s['memory_limit_mb']:.0f}" if s["memory_limit_mb"] else f"{s['peak_rss_mb']:.0f}")
    if s["memory_flag"]:
        memory += "!"
    return [s["stage"], str(s["jobs"]), fmt_duration(s["pred_s_mean"]), fmt_duration(s["pred_s_max"]),
            fmt_number(s["gpu_h"], 1), status, memory, "-" if s["images_per_s"] is None else f"{s['images_per_s']:.1f}"]


def _total_line(plan: dict[str, Any]) -> str:
    t = plan["total"]
    left_out = f" ({t['jobs'] - t['predicted']} jobs without a prediction left out)" if t["predicted"] < t["jobs"] else ""
    return (f"total: {t['jobs']} jobs, {fmt_number(t['gpu_h'], 1)} GPU-hours, {fmt_number(t['job_h'], 1)} job-hours; "
            f"wall-clock {fmt_duration(t['wall_s'])} with {t['parallel_jobs']} jobs at once{left_out}")


def format_plan(plan: dict[str, Any]) -> str:
    """The plan as text for a terminal ``WIDTH`` columns wide: one row per stage, the total, flags."""
    line = "  ".join(f"{{:<{w}}}" if i == 0 else f"{{:>{w}}}" for i, (_, w) in enumerate(_COLUMNS))

    def row(cells: list[str]) -> str:
        return line.format(*(c[:w] for c, (_, w) in zip(cells, _COLUMNS))).rstrip()

    out = textwrap.wrap(f"{plan['experiment']}: predicted cost of the full run on {plan['device'] or '?'} "
                        f"(from its rehearsal; times per job)", WIDTH)
    out += [row([c for c, _ in _COLUMNS])] + [row(_cells(s)) for s in plan["stages"]]
    out += textwrap.wrap(_total_line(plan), WIDTH)
    if plan["flags"]:
        out.append("flags:")
        for flag in plan["flags"]:
            out += textwrap.wrap(flag, WIDTH, initial_indent="- ", subsequent_indent="  ")
    return "\n".join(out)


def plan_markdown(plan: dict[str, Any]) -> str:
    """The plan as Markdown (for the report and the README): the table, the total, the flags."""
    head = ["stage", "jobs", "per job (mean)", "per job (max)", "GPU-hours", "rehearsal", "peak/of memory (MB)",
            "images/s"]
    lines = [f"# {plan['experiment']}: predicted cost of the full run", "",
             f"On {plan['device'] or '?'}, from the rehearsal of every stage.", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for s in plan["stages"]:
        cells = _cells(s)
        if s["status"] == "failed":
            cells[5] = f"FAILED: {s['error']}"
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    lines += ["", _total_line(plan) + ".", ""]
    if plan["flags"]:
        lines += ["Flags:", ""] + [f"- {f}" for f in plan["flags"]] + [""]
    return "\n".join(lines)


def run_plan(*, jobs: list[dict[str, Any]], rehearsals: dict[str, Path], profile: dict[str, Any], json_out: Path,
             md_out: Path, experiment: str) -> dict[str, Any]:
    """Read the rehearsals, write ``json_out`` (``make_plan``) and ``md_out`` (``plan_markdown``) and
    print the plan."""
    plan = make_plan(jobs=jobs, rehearsals={s: read_json(p) for s, p in rehearsals.items()}, profile=profile,
                     experiment=experiment)
    write_json_atomic(plan, json_out)
    write_text_atomic(plan_markdown(plan), md_out)
    print(format_plan(plan))
    return plan


def show_plan(path: Path) -> dict[str, Any]:
    """Print a plan.json that ``run_plan`` wrote."""
    plan = read_json(path)
    if not isinstance(plan, dict) or "stages" not in plan or "total" not in plan:
        raise ValueError(f"{path}: not a plan (no stages or total)")
    print(format_plan(plan))
    return plan
