"""The comparison as a reader first sees it: the report's front page table (comparison_summary.csv).

One row per retrained network of comparison.csv, saying what it is, with the experiment's test metric
first and the few figures that answer "does the search pay?" (AP50, cost, top-1, distance from the
random architectures, health), best first. The full table, every COCOeval figure and the search's
fitness, stays in comparison.csv.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from ..formatting import fmt_number

__all__ = ["summary_table"]


def _primary(table: pd.DataFrame) -> str:
    names = table["primary_metric"].dropna() if "primary_metric" in table else pd.Series(dtype=object)
    return str(names.iloc[0]) if len(names) else "AP"


def _cell(table: pd.DataFrame, i: Any, column: str, std: str | None = None, decimals: int = 4) -> str:
    """A number as printed; a row with a spread (the random architectures') as "mean +- std"."""
    value = table.at[i, column] if column in table else None
    if value is None or value != value:
        return "-"
    spread = table.at[i, std] if std is not None and std in table else None
    if spread is not None and spread == spread:
        return f"{fmt_number(float(value), decimals)} +- {fmt_number(float(spread), decimals)}"
    return fmt_number(float(value), decimals)


def summary_table(table: pd.DataFrame) -> pd.DataFrame:
    """comparison.csv's rows (a DataFrame as ``run_compare`` builds or reads it) as the front page
    shows them: ``network`` (what the row is; the method where the table has no such column),
    ``method``, the primary metric under its name (e.g. ``AP`` or ``mAP50_voc07``), ``AP50`` and, on
    VOC, COCO's ``AP``, ``MFLOPs``, ``params (M)``, ``top-1``, ``vs random archs``, the cost (``GPU-hours``,
    ``wall-clock (h)``: the ledger's, where the table has it), ``health``; sorted
    by the primary metric, highest first (a row without it last)."""
    primary = _primary(table)
    value = table["primary_value"] if "primary_value" in table else table.get(primary)
    if value is None:
        value = pd.Series(float("nan"), index=table.index)
    if primary in table:
        value = value.fillna(table[primary])
    table = table.assign(_value=pd.to_numeric(value, errors="coerce"))
    extra = [c for c in ("AP50", "AP") if c != primary]
    rows = []
    for i in table.sort_values("_value", ascending=False, na_position="last", kind="stable").index:
        method = table.at[i, "method"]
        network = table.at[i, "network"] if "network" in table and isinstance(table.at[i, "network"], str) else method
        health = table.at[i, "health"] if "health" in table else "-"
        row = {"network": network, "method": method,
               primary: _cell(table, i, "_value", "primary_value_std"),
               **{c: _cell(table, i, c, f"{c}_std") for c in extra if c in table},
               "MFLOPs": _cell(table, i, "mflops", "mflops_std", decimals=1),
               "params (M)": _cell(table, i, "backbone_params_m", decimals=3),
               **({"latency predicted (ms)": _cell(table, i, "predicted_latency_ms", decimals=2),
                   "latency measured (ms)": _cell(table, i, "latency_ms", decimals=2)}
                  if "latency_ms" in table else {}),
               "top-1": _cell(table, i, "top1", "top1_std"),
               "vs random archs": table.at[i, "vs_random_archs"] if "vs_random_archs" in table else "-",
               **({"GPU-hours": _cell(table, i, "cost_gpu_h", decimals=2),
                   "wall-clock (h)": _cell(table, i, "cost_wall_h", decimals=2)} if "cost_gpu_h" in table else {}),
               "health": "FLAGGED" if isinstance(health, str) and health not in ("ok", "-") else "ok"}
        rows.append(row)
    out = pd.DataFrame(rows)
    return out.fillna("-")
