"""How well the plan predicted the demo: per stage, the plan's predicted seconds against the seconds
the real jobs took (their Snakemake benchmark files), for jobs that took over 30 s, and the error in %.

Run after `make demo`. Reads results/<demo experiment>/plan.json, making it first if it is missing
(`snakemake --cores 2 results/<exp>/plan.json`: the rehearsal of every stage). Always exits 0: it
reports, it does not judge.

    python benchmarks/plan_accuracy.py [--experiment shapes_fpn] [--results results] [--min-seconds 30]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from detnas.io import read_json
from detnas.stages.ledger import read_benchmark


def accuracy(plan: dict[str, Any], min_seconds: float = 30.0) -> list[dict[str, Any]]:
    """Per stage (and a last "total" row): jobs compared, predicted and measured seconds (summed over
    the stage's jobs with a prediction that took over ``min_seconds``), error in % of measured."""
    rows: dict[str, dict[str, Any]] = {}
    for job in plan["jobs"]:
        path = Path(job["benchmark"])
        if job["stage"] == "data" or job["pred_s"] is None or not path.exists():
            continue
        measured = read_benchmark(path)["s"]
        if not measured > min_seconds:
            continue
        for key in (job["stage"], "total"):
            r = rows.setdefault(key, {"stage": key, "jobs": 0, "predicted_s": 0.0, "measured_s": 0.0})
            r["jobs"] += 1
            r["predicted_s"] += job["pred_s"]
            r["measured_s"] += measured
    order = [s["stage"] for s in plan["stages"]]
    out = sorted((r for k, r in rows.items() if k != "total"), key=lambda r: order.index(r["stage"]))
    out += [rows["total"]] if "total" in rows else []
    for r in out:
        r["error_pct"] = 100 * (r["predicted_s"] - r["measured_s"]) / r["measured_s"]
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--experiment", help="default: the config's demo_experiment")
    p.add_argument("--results", type=Path, default=Path("results"))
    p.add_argument("--min-seconds", type=float, default=30.0, help="compare jobs that took longer than this")
    args = p.parse_args()
    experiment = args.experiment or (yaml.safe_load(Path("config/config.yaml").read_text()) or {}).get(
        "demo_experiment", "shapes_fpn")
    path = args.results / experiment / "plan.json"
    if not path.exists():
        # the demo's conditions: two one-thread jobs side by side (make demo)
        print(f"{path} missing: rehearsing (snakemake --cores 2 --max-threads 1 {path})", flush=True)
        subprocess.run([sys.executable, "-m", "snakemake", "--cores", "2", "--max-threads", "1", str(path),
                        "--quiet", "rules"], check=False)
    try:
        plan = read_json(path)
        rows = accuracy(plan, args.min_seconds)
    except (ValueError, KeyError) as exc:
        print(f"no plan to check: {exc}")
        return 0
    if not rows:
        print(f"{experiment}: no job with a prediction took over {args.min_seconds:.0f} s (run make demo first)")
        return 0
    print(f"{experiment}: the plan's prediction against the real jobs (jobs over {args.min_seconds:.0f} s)")
    print(f"{'stage':<18} {'jobs':>4} {'predicted s':>12} {'measured s':>12} {'error':>8}")
    for r in rows:
        print(f"{r['stage']:<18} {r['jobs']:>4} {r['predicted_s']:>12.0f} {r['measured_s']:>12.0f} {r['error_pct']:>+7.0f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
