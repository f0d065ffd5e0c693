"""The ``report`` command: an experiment's comparison as text, its ranking quality, and where its
results, logs and MLflow store are. ``make report`` (and so ``make demo``) ends with it."""

from __future__ import annotations

import json
import re
from html import escape as html_escape
from html import unescape as html_unescape
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from ..formatting import fmt_number
from ..io import read_json, write_text_atomic
from ..tracking import default_tracking_uri, ui_command, view_url
from .compare import fmt_cell, health_marker, health_warnings
from .ranking import summary_lines

__all__ = ["comparison_text", "primary_metric", "retitle_report", "run_report"]


def primary_metric(df: pd.DataFrame, root: Path, table: Path) -> str:
    """The experiment's primary metric: comparison.csv's ``primary_metric`` column, else the DetNAS
    final.json's field (tables written before the column existed), else COCO's AP."""
    if "primary_metric" in df:
        names = sorted(set(df["primary_metric"].dropna()))
        if len(names) > 1:
            raise ValueError(f"{table}: the methods have different primary metrics {names}; evaluate them again")
        if names:
            return str(names[0])
    final = root / "final.json"
    if final.is_file():
        return str(read_json(final).get("primary_metric") or "AP")
    return "AP"


def comparison_text(df: pd.DataFrame, primary: str) -> str:
    """comparison.csv as a text table: the primary metric first, by its name, then the COCOeval
    figures (and the other VOC one) it is not; the random architectures' row as mean +- std."""
    values = df[primary] if primary in df else pd.Series(float("nan"), index=df.index)
    if "primary_value" in df:  # a row without it (e.g. a summary row) falls back to the named column
        values = df["primary_value"].fillna(values)
    extra = [c for c in ("mAP50_voc07", "mAP50_voc12", "AP", "AP50", "APs", "APm", "APl") if c in df and c != primary]
    # an experiment with a latency table: the backbone's latency (ms) predicted by it and measured
    latency = [c for c in ("predicted_latency_ms", "latency_ms") if c in df]
    shown = pd.concat([df[["method", "arch", "mflops", *latency]], pd.DataFrame({primary: values}, index=df.index),
                       df[[*extra, "top1"]]], axis=1).astype(object)
    shown = shown.rename(columns={"predicted_latency_ms": "pred ms", "latency_ms": "ms"})
    for col in shown.columns[2:]:
        std = df.get("primary_value_std" if col == primary else f"{col}_std")
        for i in [] if std is None else df.index[std.notna()]:
            shown.loc[i, col] = f"{fmt_number(shown.loc[i, col])} +- {fmt_number(std[i])}"
    if "vs_random_archs" in df:  # the noise yardstick, and whether every training of the row learned
        shown["vs random archs"] = df["vs_random_archs"].fillna("-")
    if "health" in df:
        shown["health"] = [health_marker(h) for h in df["health"]]
    return shown.map(fmt_cell).to_string(index=False)


def retitle_report(html: Path) -> str | None:
    """Give the Snakemake report ``html`` its front page's title (the project and the experiments,
    from workflow/report/workflow.rst) as the page title, in place of Snakemake's fixed "Snakemake
    Report"; returns it (None, and the file untouched, where either is missing)."""
    text = html.read_text(encoding="utf-8")
    desc = re.search(r'<script id="workflow-desc">\s*var workflow_desc = (.*?);\s*</script>', text, flags=re.S)
    heading = re.search(r'<h1 class="title">(.*?)</h1>', json.loads(desc.group(1))) if desc else None
    if heading is None or "<title>Snakemake Report</title>" not in text:
        return None
    title = html_unescape(re.sub(r"<[^>]+>", "", heading.group(1)))
    write_text_atomic(text.replace("<title>Snakemake Report</title>", f"<title>{html_escape(title)}</title>", 1), html)
    return title


def run_report(*, experiment: str | None, config: Path, results: Path) -> None:
    """Print ``experiment``'s comparison (default: the config's ``demo_experiment``) from ``results``."""
    if experiment is None:
        with open(config) as f:
            experiment = (yaml.safe_load(f) or {}).get("demo_experiment", "shapes_fpn")
    root = results / experiment
    table = root / "comparison.csv"
    if not table.is_file():
        raise ValueError(f"{table}: not found; run the workflow first (make demo, or snakemake {table})")
    df = pd.read_csv(table, dtype={"arch": str})
    primary = primary_metric(df, root, table)
    print(f"\n{experiment}: test-split metrics of the retrained architectures (primary: {primary}), backbone MFLOPs "
          f"at 224x224, classification top-1\n")
    print(comparison_text(df, primary))
    print("metrics are fractions in [0, 1] (COCOeval's unit; 0.402 is the paper's 40.2)")
    if "network" in df:  # what each row is
        for method, network in zip(df["method"], df["network"]):
            print(f"  {method}: {network}")
    for line in health_warnings(df["method"], df["health"] if "health" in df else []):
        print(line)  # a network that did not learn: say so
    ranking = root / "ranking.json"
    if ranking.is_file():  # does the supernet rank architectures as standalone training does?
        r: dict[str, Any] = read_json(ranking)
        print(f"\nsupernet fitness vs test {r['metric']} of the retrained architectures (90% bootstrap intervals):")
        for line in summary_lines(r):
            print(f"  {line}")
    report = results / "report.html"
    print(f"\nresults:     {root.resolve()}/ (final.json per method, comparison.csv, comparison.png, "
          f"search_curves.png, ranking.json/.png, architectures.png)")
    if report.is_file():
        print(f"report:      {report.resolve()}")
    print(f"search:      {root.resolve()}/<method>/search/ (arch.json, history.csv, curve.png)")
    print(f"logs:        {results.resolve()}/logs/")
    uri = default_tracking_uri(results)
    print(f"MLflow UI:   {ui_command(uri)}")
    url = view_url(uri, experiment)
    if url is not None:  # the evaluate run of each compared method, best first
        print(f"comparison:  {url}")
