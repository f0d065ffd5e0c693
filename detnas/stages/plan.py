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
    if job["stage"] == "latency":
        return _latency_job(job)
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
    images = job.get("images") if job.get("images") is not None else t.get("images_total", t["images"])
    return images * t["sec_per_image"] + t["overhead_s"]


def _latency_job(job: dict[str, Any]) -> float | None:
    """One network's latency job (detnas latency): the latency table job's start-up (its benchmark's
    wall-clock less the table's and the validation's own seconds) plus one validation backbone's time
    (the validation's seconds over its backbones); None before the table is measured."""
    validation, benchmark = Path(str(job.get("validation"))), Path(str(job.get("table_benchmark")))
    if not (validation.exists() and benchmark.exists()):
        return None
    v = read_json(validation)
    startup = max(0.0, read_benchmark(benchmark)["s"] - v["table_seconds"] - v["validation_seconds"])
    return startup + v["validation_seconds"] / max(1, int(v["n"]))


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


def _rehearsal_of(job: dict[str, Any]) -> str:
    """The rehearsal that times a job: its ``rehearsal`` (e.g. ClsNAS's search, "search_clsnas"),
    else its stage's."""
    return str(job.get("rehearsal") or job["stage"])


def _memory(rehearsal: dict[str, Any]) -> tuple[float | None, float | None, str]:
    """(peak memory, the memory it is held against, MB; which): on a GPU the peak CUDA memory the
    stage allocated against the card's, else the processes' peak resident set against the host's."""
    gpu = (rehearsal.get("timing") or {}).get("peak_gpu_memory_mb")
    if gpu is not None and rehearsal.get("device_memory_mb"):
        return float(gpu), float(rehearsal["device_memory_mb"]), "GPU"
    return rehearsal.get("peak_rss_mb"), rehearsal.get("host_memory_mb") or rehearsal.get("device_memory_mb"), "host"


def loader_check(timing: dict[str, Any], gpus: int) -> dict[str, Any] | None:
    """Whether a training stage's loader can feed its model: None where the rehearsal did not
    measure both; else ``{"bound", "model", "loader" (images/s), "workers" (per process),
    "cpus_per_gpu" (what it had: workers + 1), "cpus_per_gpu_needed"}``. The loader's rate is taken
    as proportional to its workers (the main process counts as one where there are none): the
    workers needed per process are ``ceil(workers * model / loader)``, plus the process's own CPU."""
    model, loader = timing.get("model_images_per_s"), timing.get("loader_images_per_s")
    if not model or not loader:
        return None
    workers = int(timing.get("loader_workers") or 0)
    needed = max(1, math.ceil(max(workers, 1) * model / loader))
    had = workers + 1
    return {"bound": loader < model, "model": model, "loader": loader, "workers": workers, "cpus_per_gpu": had,
            "cpus_per_gpu_needed": max(had, needed + 1) if loader < model else had, "gpus": gpus}


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
        pred = predict_job(job, rehearsals.get(_rehearsal_of(job)))
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
        names = sorted({_rehearsal_of(r) for r in mine}, key=lambda n: (n != stage, n))  # the stage's own first
        preds = [r["pred_s"] for r in mine if r["pred_s"] is not None]
        entry: dict[str, Any] = {
            "stage": stage, "what": what, "jobs": len(mine), "predicted": len(preds),
            "pred_s_mean": sum(preds) / len(preds) if preds else None, "pred_s_max": max(preds) if preds else None,
            "gpu_h": sum(r["gpu_h"] for r in mine if r["gpu_h"] is not None) if preds else None,
            "job_h": sum(preds) / 3600, "status": "ok", "error": None, "device": None, "peak_rss_mb": None,
            "peak_memory_mb": None, "memory_limit_mb": None, "memory_kind": None, "memory_flag": False,
            "images_per_s": None, "loader_images_per_s": None, "loader": None, "rehearsals": names}
        if stage == "data":
            entry["status"] = "measured" if all(Path(r["benchmark"]).exists() for r in mine) else "not run"
            entry["rehearsals"] = []
            stages.append(entry)
            continue
        if stage == "latency":  # predicted from the latency table's own job (run for real, as the split)
            entry["status"] = "ok" if len(preds) == len(mine) else "not run"
            entry["rehearsals"] = []
            if len(preds) < len(mine):
                flags.append(f"latency: the latency table is not measured yet; left out of the totals: "
                             f"{_jobs(len(mine) - len(preds))}")
            stages.append(entry)
            continue
        for name in names:
            rehearsal = rehearsals.get(name)
            count = sum(_rehearsal_of(r) == name for r in mine)
            if rehearsal is None:
                if entry["status"] == "ok":
                    entry["status"] = "missing"
                flags.append(f"{name}: no rehearsal; left out of the totals: {_jobs(count)}")
                continue
            if not rehearsal.get("ok"):
                entry |= {"status": "failed", "error": entry["error"] or rehearsal.get("error")}
                flags.append(f"{name}: rehearsal FAILED: {rehearsal.get('error')}; left out of the totals: "
                             f"{_jobs(count)}")
            peak, limit, kind = _memory(rehearsal)
            if peak is not None and (entry["peak_memory_mb"] is None or peak > entry["peak_memory_mb"]):
                entry |= {"peak_memory_mb": peak, "memory_limit_mb": limit, "memory_kind": kind}
            if peak is not None and limit and peak >= (1 - MEMORY_MARGIN) * limit:
                entry["memory_flag"] = True
                flags.append(f"{name}: peak {kind} memory {peak:.0f} MB is within {MEMORY_MARGIN:.0%} of the "
                             f"{limit:.0f} MB it has (or above)")
            if name != stage:
                continue
            t = rehearsal.get("timing") or {}
            entry |= {"device": rehearsal.get("device"), "peak_rss_mb": rehearsal.get("peak_rss_mb"),
                      "images_per_s": t.get("model_images_per_s") or t.get("images_per_s"),
                      "loader_images_per_s": t.get("loader_images_per_s")}
            check = loader_check(t, max((r["gpus"] for r in mine), default=0))
            entry["loader"] = check
            if check and check["bound"]:
                flags.append(f"{stage}: loader-bound: the loader alone gives {check['loader']:.1f} images/s, the model "
                             f"takes {check['model']:.1f}; with {check['workers']} loader workers per process "
                             f"({check['cpus_per_gpu']} CPUs per {'GPU' if check['gpus'] else 'process'}) it needs "
                             f"about {check['cpus_per_gpu_needed']} (the job's threads: CPUs per GPU x GPUs)")
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


_COLUMNS = [("stage", 17), ("jobs", 4), ("per job", 9), ("max", 9), ("GPU-h", 8), ("rehearsal", 9),
            ("peak/of MB", 15), ("img/s model/ldr", 15)]


def _cells(s: dict[str, Any]) -> list[str]:
    """One stage's cells of the table."""
    status = {"ok": "ok", "failed": "FAILED", "missing": "missing", "measured": "ran", "not run": "not run"}[s["status"]]
    peak = s.get("peak_memory_mb", s.get("peak_rss_mb"))
    memory = "-" if peak is None else (
        f"{peak:.0f}/{s['memory_limit_mb']:.0f}" if s["memory_limit_mb"] else f"{peak:.0f}")
    if s.get("memory_kind") == "GPU":
        memory = "G " + memory
    if s["memory_flag"]:
        memory += "!"
    rates = "-" if s["images_per_s"] is None else f"{s['images_per_s']:.1f}"
    if s.get("loader_images_per_s"):
        rates += f"/{s['loader_images_per_s']:.0f}" + ("!" if (s.get("loader") or {}).get("bound") else "")
    return [s["stage"], str(s["jobs"]), fmt_duration(s["pred_s_mean"]), fmt_duration(s["pred_s_max"]),
            fmt_number(s["gpu_h"], 1), status, memory, rates]


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
                        f"(from its rehearsal; times per job; memory: the host's, G: the GPU's; images/s: the "
                        f"model's / the loader's alone; !: a flag below)", WIDTH)
    out += [row([c for c, _ in _COLUMNS])] + [row(_cells(s)) for s in plan["stages"]]
    out += textwrap.wrap(_total_line(plan), WIDTH)
    if plan["flags"]:
        out.append("flags:")
        for flag in plan["flags"]:
            out += textwrap.wrap(flag, WIDTH, initial_indent="- ", subsequent_indent="  ")
    return "\n".join(out)


def plan_markdown(plan: dict[str, Any]) -> str:
    """The plan as Markdown (for the report and the README): the table, the total, the flags."""
    head = ["stage", "jobs", "per job (mean)", "per job (max)", "GPU-hours", "rehearsal", "peak/of memory (MB; G: GPU)",
            "images/s (model/loader)"]
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


def format_spent(plan: dict[str, Any], ledger: dict[str, Any]) -> str:
    """The plan beside what the real run spent (its ledger.json): per stage the planned and spent
    job-hours and GPU-hours and their ratio."""
    from .ledger import beside_plan

    both = beside_plan(ledger, plan)
    line = "{:<17}  {:>4}  {:>10}  {:>10}  {:>8}  {:>9}  {:>9}"
    out = [f"{plan['experiment']}: planned against spent (ledger.json; hours summed over the jobs)",
           line.format("stage", "jobs", "planned", "spent", "spent/pl", "GPU-h pl", "GPU-h sp")]

    def cells(name: str, s: dict[str, Any]) -> str:
        ratio = s["spent_vs_predicted"]
        return line.format(name[:17], s["jobs"], fmt_duration(None if s["predicted_wall_h"] is None else s["predicted_wall_h"] * 3600),
                           fmt_duration(s["wall_h"] * 3600), "-" if ratio is None else f"{ratio:.2f}x",
                           fmt_number(s["predicted_gpu_h"], 1), fmt_number(s["gpu_h"], 1)).rstrip()

    out += [cells(s["stage"], s) for s in both["stages"]] + [cells("total", both["total"])]
    return "\n".join(out)


def show_plan(path: Path) -> dict[str, Any]:
    """Print a plan.json that ``run_plan`` wrote; with the real run's ledger.json beside it, also
    what the run spent against the plan (``format_spent``)."""
    plan = read_json(path)
    if not isinstance(plan, dict) or "stages" not in plan or "total" not in plan:
        raise ValueError(f"{path}: not a plan (no stages or total)")
    print(format_plan(plan))
    ledger = Path(path).parent / "ledger.json"
    if ledger.exists():
        print()
        print(format_spent(plan, read_json(ledger)))
    return plan
