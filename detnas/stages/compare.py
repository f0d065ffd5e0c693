"""The ``compare`` stage: every method of an experiment side by side -> comparison.csv and .png."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pandas as pd

from ..formatting import fmt_number
from ..io import read_json, write_text_atomic
from ..plots import plot_comparison
from ..tracking import StageRun

__all__ = ["COLUMNS", "run_compare"]

COLUMNS = ["method", "arch", "mflops", "backbone_params_m", "AP", "AP50", "AP75", "APs", "APm", "APl", "top1",
           "search_fitness", "search_evaluations", "mlflow_run_id"]


def run_compare(*, finals: list[Path], histories: dict[str, Path], csv_out: Path, png_out: Path,
                experiment: str, mlflow: dict[str, Any]) -> pd.DataFrame:
    """One row per method (from its final.json); the plot adds the search curves of ``histories``."""
    rows = [read_json(p) for p in finals]
    table = pd.DataFrame(rows)
    missing = [c for c in COLUMNS if c not in table]
    if missing:
        raise ValueError(f"final.json files lack {missing}: {[str(p) for p in finals]}")
    table = table[COLUMNS]
    buf = io.StringIO()
    table.to_csv(buf, index=False, float_format=fmt_number)
    write_text_atomic(buf.getvalue(), csv_out)
    curves = {m: pd.read_csv(p) for m, p in histories.items()}
    plot_comparison(table, curves, png_out, title=f"{experiment}: methods side by side")
    with StageRun(**mlflow, params={"methods": list(table["method"])}) as run:
        for _, r in table.iterrows():
            run.log_metrics({f"{r['method']}_AP": r["AP"], f"{r['method']}_top1": r["top1"] or 0.0}, 0)
        run.log_artifacts(csv_out, png_out)
    with pd.option_context("display.width", 160, "display.max_columns", 20):
        print(table.drop(columns=["mlflow_run_id"]).to_string(index=False, float_format=fmt_number))
    return table
