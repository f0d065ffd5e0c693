"""The ``compare`` stage: every method of an experiment side by side -> comparison.csv and .png."""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from ..formatting import fmt_number, fmt_significant
from ..methods import network_description, random_archs_description
from ..io import read_json, write_json_atomic, write_text_atomic
from ..plots import plot_comparison
from ..tracking import StageRun, comparison_view
from .summary import summary_table

__all__ = ["COLUMNS", "VIEW_METRICS", "method_view", "fmt_cell", "health_cell", "health_marker", "health_warnings", "noise_yardstick", "run_compare", "run_random_archs_summary",
           "summarize_finals"]

COLUMNS = ["method", "arch", "mflops", "backbone_params_m", "primary_metric", "primary_value", "AP", "AP50", "AP75",
           "APs", "APm", "APl", "top1", "search_fitness", "search_evaluations", "mlflow_run_id"]
VOC_COLUMNS = ["mAP50_voc07", "mAP50_voc12"]  # VOC experiments only
# an experiment with a latency table (its latency section): each backbone's latency on the deployment
# device, the table's sum (predicted, what search.max_latency_ms bounds) and timed end to end (measured)
LATENCY_COLUMNS = ["predicted_latency_ms", "latency_ms"]
# the spread of the random architectures' row (empty for a single network)
STD_COLUMNS = [f"{c}_std" for c in ("mflops", "primary_value", "AP", "AP50", "AP75", "APs", "APm", "APl", "top1",
                                    *VOC_COLUMNS)]
# the MLflow comparison view's metric columns after the primary metric, where the runs log them
# (the evaluate runs' metrics: detnas/stages/evaluate.py's _tracked)
VIEW_METRICS = ["AP50", "mflops", "backbone_params_m", "top1", "latency_ms", "cost_gpu_h", "cost_wall_h"]


def method_view(finals: list[dict[str, Any]]) -> dict[str, Any]:
    """The experiment's MLflow view (``detnas.tracking.comparison_view``): the evaluate run of each
    compared method (its final.json's ``mlflow_run_id``), the primary metric first."""
    primary = next((str(f["primary_metric"]) for f in finals if f.get("primary_metric")), "AP")
    shown = [m for m in VIEW_METRICS if m != primary and any(f.get(m) is not None for f in finals)]
    return comparison_view([str(f["mlflow_run_id"]) for f in finals if f.get("mlflow_run_id")], [primary, *shown])


def random_archs_row(summary: dict[str, Any]) -> dict[str, Any]:
    """The comparison row of the random architectures: "random archs (n=N)", each column's mean and
    its std in ``<column>_std``."""
    m = summary["metrics"]
    row: dict[str, Any] = {c: m[c]["mean"] if c in m else None for c in COLUMNS}
    row.update({c: m[c]["mean"] for c in VOC_COLUMNS + LATENCY_COLUMNS if c in m})  # where measured
    row.update({f"{c}_std": m[c]["std"] if c in m else None for c in (s.removesuffix("_std") for s in STD_COLUMNS)})
    flagged = summary.get("flagged") or {}
    row.update(method=f"random archs (n={summary['n']})", arch=None, mlflow_run_id=None,
               primary_metric=summary.get("primary_metric"),
               health="ok" if not flagged else "; ".join(f"{m}: {', '.join(f)}" for m, f in flagged.items()))
    return row


def health_cell(final: dict[str, Any]) -> str:
    """"ok", the flags of final.json's ``health`` ("HEALTH: ..."), or "-" where it was not checked."""
    health = final.get("health")
    if not health:
        return "-"
    return "ok" if health.get("ok") else "HEALTH: " + "; ".join(health.get("flags", []))


def health_marker(cell: Any) -> str:
    """A comparison.csv ``health`` cell as the printed tables show it: "ok" (also for "-", not
    checked, and a missing cell) or "FLAGGED"."""
    return "FLAGGED" if isinstance(cell, str) and cell not in ("ok", "-") else "ok"


def health_warnings(methods: Sequence[str], cells: Sequence[Any]) -> list[str]:
    """One "HEALTH WARNING: <method>: <flags>" line per flagged row of comparison.csv."""
    return [f"HEALTH WARNING: {m}: {c.removeprefix('HEALTH: ')}" for m, c in zip(methods, cells)
            if health_marker(c) == "FLAGGED"]


def noise_yardstick(table: pd.DataFrame) -> pd.Series:
    """Each row's primary value minus the random architectures' mean, in units of their std
    ("+1.8 std"); "within noise" when the difference is at most one std; "-" without that row."""
    spread = table[table["primary_value_std"].notna()]
    if spread.empty or not (spread["primary_value_std"].iloc[0] > 0):
        return pd.Series("-", index=table.index)
    mean, std = float(spread["primary_value"].iloc[0]), float(spread["primary_value_std"].iloc[0])

    def cell(i: int, value: Any) -> str:
        if i in spread.index or value is None or value != value:
            return "-"
        z = (float(value) - mean) / std
        return f"{z:+.1f} std" + (" (within noise)" if abs(z) <= 1 else "")

    return pd.Series([cell(i, v) for i, v in zip(table.index, table["primary_value"])], index=table.index)


def _shown(table: pd.DataFrame) -> pd.DataFrame:
    """The table as printed: a row with a spread shows "mean +- std"; the rows' ``network`` is
    printed as a key below it (see ``run_compare``), too long for a column."""
    out = table.drop(columns=["mlflow_run_id", "network", *STD_COLUMNS], errors="ignore").astype(object)
    if "health" in out:  # the flags themselves are printed as warnings: the table marks the row
        out["health"] = [health_marker(h) for h in out["health"]]
    for std in [c for c in STD_COLUMNS if c in table]:
        col = std.removesuffix("_std")
        for i in table.index[table[std].notna()]:
            out.loc[i, col] = f"{fmt_number(table.loc[i, col])} +- {fmt_number(table.loc[i, std])}"
    return out.map(fmt_cell)


def csv_cells(table: pd.DataFrame) -> pd.DataFrame:
    """The table as comparison.csv writes it: every float with ``fmt_significant``'s 4 significant
    digits, whatever its column's dtype (pandas' ``float_format`` skips the floats of an object
    column, which a row of None makes), a missing value empty."""
    def cell(value: Any) -> Any:
        if isinstance(value, float):  # numpy's float64 too
            return "" if value != value else fmt_significant(value)
        return "" if value is None else value

    return table.astype(object).map(cell)


def fmt_cell(value: Any) -> Any:
    """A table cell as printed: numbers by ``fmt_number``, a missing value as "-"."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return "-" if value != value else fmt_number(value)
    return value


def run_compare(*, finals: list[Path], histories: dict[str, Path], csv_out: Path, png_out: Path,
                experiment: str, mlflow: dict[str, Any], random_archs: Path | None = None,
                max_mflops: float | None = None, summary_out: Path | None = None,
                ledger: Path | None = None) -> pd.DataFrame:
    """One row per retrained network (from its final.json), plus the random architectures' row (mean
    +- std, from their summary.json) when given; the plot adds the search curves of ``histories``.

    Each row's ``network`` says what it is (``detnas.methods``; ``max_mflops``, the experiment's
    FLOPs limit, None for none, decides the ShuffleNetV2 rows' and the random architectures' words).
    The VOC columns are there only when the final.json files have them (a VOC experiment). Every
    metric is a fraction in [0, 1], COCOeval's unit: the paper's 40.2 mmAP is 0.402 here.

    ``ledger`` (ledger.json of the same run, ``detnas.stages.ledger``) adds what each row cost:
    ``cost_gpu_h`` and ``cost_wall_h``, the GPU-hours and wall-clock hours of every job it needed.

    The MLflow run gets the rows of comparison.csv as the table ``comparison.json`` (shown as a table
    in the UI), comparison.csv and comparison.png as artifacts, and each method's AP, top-1 and
    primary metric as ``<method>_<metric>``; each method's evaluate run gets its cost as metrics,
    and the experiment its comparison view (``method_view``)."""
    rows = [read_json(p) for p in finals]
    for r in rows:  # final.json files written before primary_value existed
        r.setdefault("primary_value", r.get(r.get("primary_metric", "AP")))
    table = pd.DataFrame(rows)
    missing = [c for c in COLUMNS if c not in table]
    if missing:
        raise ValueError(f"final.json files lack {missing}: {[str(p) for p in finals]}")
    voc = [c for c in VOC_COLUMNS if c in table]
    # a COCO experiment's table has no VOC columns, not even their empty spreads
    stds = [c for c in STD_COLUMNS if c.removesuffix("_std") not in VOC_COLUMNS or c.removesuffix("_std") in voc]
    table["health"] = [health_cell(r) for r in rows]
    # after the backbone's cost, where any network has them (a scaled ShuffleNetV2 has no prediction: empty)
    latency = [c for c in LATENCY_COLUMNS if c in table]
    at = COLUMNS.index("backbone_params_m") + 1
    columns = COLUMNS[:at] + latency + COLUMNS[at:] + voc
    table = table[columns + ["health"]].reindex(columns=columns + stds + ["health"])
    networks = [network_description(r, max_mflops=max_mflops) for r in rows]
    if random_archs is not None:
        summary = read_json(random_archs)
        table = pd.concat([table, pd.DataFrame([random_archs_row(summary)]).reindex(columns=table.columns)], ignore_index=True)
        networks.append(random_archs_description(summary["n"], max_mflops=max_mflops))
    table.insert(1, "network", networks)
    table["vs_random_archs"] = noise_yardstick(table)
    # a published architecture retrained as a reference outside the experiment's budget (reference_<name>)
    table.insert(table.columns.get_loc("health"), "outside_budget",
                 ["yes" if r.get("reference") else None for r in rows] + [None] * (len(table) - len(rows)))
    costs = read_json(ledger)["methods"] if ledger is not None else {}
    row_names = ["random archs" if str(m).startswith("random archs") else m for m in table["method"]]
    for column, key in (("cost_gpu_h", "gpu_h"), ("cost_wall_h", "wall_h")):
        table[column] = [costs.get(m, {}).get(key) for m in row_names]
    for line in health_warnings(table["method"], table["health"]):
        print(line, flush=True)
    buf = io.StringIO()
    csv_cells(table).to_csv(buf, index=False)
    write_text_atomic(buf.getvalue(), csv_out)
    if summary_out is not None:  # the report's front page (detnas.stages.summary)
        write_text_atomic(summary_table(table).to_csv(index=False), summary_out)
    curves = {m: pd.read_csv(p) for m, p in histories.items()}
    plot_comparison(table, curves, png_out, title=(f"{experiment}: every retrained network on the test split "
                                                   f"(metrics as fractions in [0, 1]: 0.402 is the paper's 40.2)"))
    with StageRun(**mlflow, params={"methods": list(table["method"])}) as run:
        for _, r in table.iterrows():
            name = "random_archs" if pd.notna(r["AP_std"]) else r["method"]  # MLflow names allow no "(n=N)"
            values = {"AP": r["AP"], "top1": r["top1"], str(r["primary_metric"] or "primary"): r["primary_value"]}
            run.log_metrics({f"{name}_{k}": v for k, v in values.items() if pd.notna(v)}, 0)
        run.log_table(table, "comparison.json")
        run.log_artifacts(csv_out, png_out)
        for r in rows:  # the view's cost columns: on each method's own evaluate run
            cost = costs.get(r.get("method"), {})
            if r.get("mlflow_run_id") and cost:
                run.log_to_run(str(r["mlflow_run_id"]), {"cost_gpu_h": cost["gpu_h"], "cost_wall_h": cost["wall_h"]})
                r.update(cost_gpu_h=cost["gpu_h"], cost_wall_h=cost["wall_h"])
        run.set_view(method_view(rows))
    with pd.option_context("display.width", 250, "display.max_columns", 30):
        print(_shown(table).to_string(index=False))
    print("metrics are fractions in [0, 1] (COCOeval's unit; 0.402 is the paper's 40.2)")
    for method, network in zip(table["method"], table["network"]):
        print(f"  {method}: {network}")
    return table


def summarize_finals(finals: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean, std (sample, n - 1; 0 for one network), min and max of every numeric field the final.json
    files share (metrics, MFLOPs, params; a field that is null in some is summarized over the rest),
    plus n and the architectures: the paper's "Random (20 nets)" row, e.g. 35.6 +- 0.6 mmAP."""
    if not finals:
        raise ValueError("no final.json to summarize")
    keys = [k for k, v in finals[0].items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
    stats: dict[str, Any] = {}
    for k in keys:
        values = [float(f[k]) for f in finals if isinstance(f.get(k), (int, float)) and f.get(k) == f.get(k)]
        if not values:
            continue
        mean = math.fsum(values) / len(values)
        var = math.fsum((v - mean) ** 2 for v in values) / (len(values) - 1) if len(values) > 1 else 0.0
        stats[k] = {"mean": mean, "std": math.sqrt(var), "min": min(values), "max": max(values), "n": len(values)}
    flagged = {f.get("method"): f["health"]["flags"] for f in finals if f.get("health") and not f["health"].get("ok")}
    return {"n": len(finals), "archs": [f.get("arch") for f in finals], "methods": [f.get("method") for f in finals],
            "metrics": stats, "flagged": flagged}


def run_random_archs_summary(*, finals: list[Path], out: Path, experiment: str, mlflow: dict[str, Any]) -> dict[str, Any]:
    """``summary.json`` of the retrained random architectures; MLflow gets each metric's mean and std."""
    rows = [read_json(p) for p in finals]
    summary = {"experiment": experiment, "primary_metric": rows[0].get("primary_metric"), **summarize_finals(rows)}
    with StageRun(**mlflow, params={"n": summary["n"], "archs": summary["archs"]}) as run:
        write_json_atomic(summary, out)
        run.log_metrics({f"{k}_{s}": v[s] for k, v in summary["metrics"].items() for s in ("mean", "std")}, 0)
        run.log_artifacts(out)
    for k in ("AP", "AP50", "top1", "mflops"):
        if k in summary["metrics"]:
            m = summary["metrics"][k]
            print(f"random archs (n={summary['n']}): {k} {fmt_number(m['mean'])} +- {fmt_number(m['std'])} "
                  f"(min {fmt_number(m['min'])}, max {fmt_number(m['max'])})", flush=True)
    return summary
