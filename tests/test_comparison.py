"""comparison.csv and comparison.png: every retrained network is a row that says what it is, every
float is written one way, a COCO table has no VOC columns, and the panels do not magnify noise."""

from __future__ import annotations

import json
import re

import pandas as pd
import pytest

import detnas.plots.comparison as comparison_plot
from detnas.formatting import fmt_significant
from detnas.methods import network_description
from detnas.stages.compare import run_compare, run_random_archs_summary
from workflow import make_workdir, planned, snakemake

MLFLOW = {"experiment": "x", "run_name": "compare"}
METHODS = ["detnas", "random", "clsnas", "scratch", "shufflenetv2", "shufflenetv2_unscaled"]
# what a float of comparison.csv may look like: positional, no exponent, no trailing zeros
NUMBER = re.compile(r"-?(0|[1-9][0-9]*)(\.[0-9]*[1-9])?")


def _final(tmp_path, method, ap, **more):
    final = {"experiment": "x", "method": method, "arch": "00000000" if "shufflenet" in method else "13203230",
             "space": "tiny", "mflops": 36.597123456, "backbone_params_m": 0.150912345, "AP": ap,
             "AP50": 0.91345678, "AP75": 1e-05, "APs": None, "APm": ap, "APl": ap, "top1": 0.125,
             "search_fitness": 0.00841612345, "search_evaluations": 16, "mlflow_run_id": f"run-{method}",
             "primary_metric": "AP", "primary_value": ap, **more}
    if method == "shufflenetv2":
        final.update(space="tiny@w1.0703", width_factor=1.0703, search_fitness=None, search_evaluations=0)
    if method == "shufflenetv2_unscaled":
        final.update(width_factor=1.0, search_fitness=None, search_evaluations=0)
    path = tmp_path / method / "final.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(final))
    return path


def _random_archs(tmp_path, voc=False):
    more = {"mAP50_voc07": 0.3, "mAP50_voc12": 0.31, "primary_metric": "mAP50_voc07"} if voc else {}
    finals = [_final(tmp_path / f"ra{i}", f"random_arch_{i}", ap, search_fitness=None, **more)
              for i, ap in enumerate((0.2, 0.2003), start=1)]
    out = tmp_path / "summary.json"
    run_random_archs_summary(finals=finals, out=out, experiment="x", mlflow=MLFLOW)
    return out


def _compare(tmp_path, *, max_mflops=40.0, voc=False):
    more = {"mAP50_voc07": 0.3, "mAP50_voc12": 0.31, "primary_metric": "mAP50_voc07"} if voc else {}
    finals = [_final(tmp_path, m, 0.3 + i * 1e-4, **more) for i, m in enumerate(METHODS)]
    csv = tmp_path / "comparison.csv"
    table = run_compare(finals=finals, histories={}, csv_out=csv, png_out=tmp_path / "comparison.png", experiment="x",
                        mlflow=MLFLOW, random_archs=_random_archs(tmp_path, voc=voc), max_mflops=max_mflops)
    return table, csv


def test_every_retrained_network_is_a_row_that_says_what_it_is(tmp_path, capsys):
    table, csv = _compare(tmp_path)
    rows = pd.read_csv(csv)
    assert list(rows.columns[:3]) == ["method", "network", "arch"]
    assert list(rows["method"]) == METHODS + ["random archs (n=2)"]
    assert list(rows["network"]) == [
        "DetNAS: EA on the detection supernet fine-tuned from the pre-trained supernet",
        "random search on the same supernet",
        "ClsNAS: EA for classification top-1 on the pre-trained supernet",
        "DetNAS-scratch: EA on a detection supernet trained from scratch",
        "ShuffleNetV2 scaled to the FLOPs limit (width x1.07)",
        "ShuffleNetV2 at the space's own widths",
        "mean of 2 random architectures under the FLOPs limit",
    ]
    printed = capsys.readouterr().out  # the log: the table, then what each row is, and the unit
    assert "  shufflenetv2_unscaled: ShuffleNetV2 at the space's own widths" in printed
    assert "fractions in [0, 1]" in printed


def test_without_a_flops_limit_both_shufflenets_say_they_are_one_network(tmp_path):
    _, csv = _compare(tmp_path, max_mflops=None)
    network = dict(zip(*(pd.read_csv(csv)[c] for c in ("method", "network"))))
    assert network["shufflenetv2"] == ("ShuffleNetV2 at the space's own widths (no FLOPs limit to scale to: "
                                       "the same network as shufflenetv2_unscaled)")
    assert network["shufflenetv2_unscaled"].endswith("(no FLOPs limit: the same network as shufflenetv2)")
    assert network["random archs (n=2)"] == "mean of 2 random architectures drawn from the whole space (no FLOPs limit)"
    assert network_description({"method": "random_arch_3"}, max_mflops=300) == "random architecture 3 under the FLOPs limit"


def test_compare_rule_takes_every_retrained_network_and_the_flops_limit(tmp_path):
    wd = make_workdir(tmp_path)
    jobs = planned(wd, "results/shapes_fpn/comparison.csv")
    assert jobs["handcrafted_arch"] == jobs["handcrafted_arch_unscaled"] == 1
    # random, clsnas, scratch and both ShuffleNetV2 (DetNAS: evaluate_detnas), 3 random architectures,
    # the 6 training-free methods
    assert jobs["evaluate"] == 5 + 3 + 6
    shell = snakemake(wd, "-n", "-p", "results/shapes_fpn/comparison.csv").stdout
    command = next(line for line in shell.splitlines() if "detnas compare" in line)
    assert "results/shapes_fpn/shufflenetv2_unscaled/final.json" in command and "--max-mflops 40" in command


def test_every_float_is_written_one_way_and_a_coco_table_has_no_voc_columns(tmp_path):
    _, csv = _compare(tmp_path)
    lines = csv.read_text().splitlines()
    header = lines[0].split(",")
    assert not [c for c in header if "voc" in c]  # neither the metrics nor their spreads
    rows = pd.read_csv(csv, dtype=str, keep_default_na=False)
    numeric = [c for c in header if c not in ("method", "network", "arch", "primary_metric", "mlflow_run_id",
                                              "health", "vs_random_archs", "outside_budget")]
    cells = [v for c in numeric for v in rows[c] if v]
    assert cells and all(NUMBER.fullmatch(v) for v in cells), [v for v in cells if not NUMBER.fullmatch(v)]
    detnas = rows.iloc[0]
    assert (detnas["AP50"], detnas["AP75"], detnas["mflops"], detnas["search_fitness"]) == ("0.9135", "0.00001", "36.6",
                                                                                          "0.008416")
    assert rows.iloc[-1]["search_fitness"] == ""  # null in every random architecture: empty, not "nan"


def test_a_voc_table_keeps_its_voc_columns(tmp_path):
    table, csv = _compare(tmp_path, voc=True)
    header = csv.read_text().splitlines()[0].split(",")
    assert {"mAP50_voc07", "mAP50_voc12", "mAP50_voc07_std", "mAP50_voc12_std"} <= set(header)
    assert pd.read_csv(csv)["mAP50_voc07"].iloc[-1] == pytest.approx(0.3)


def test_significant_digits():
    assert [fmt_significant(v) for v in (0.91345678, 1e-05, 1.3e-06, 299.87, 12.0, 12345.6, 0.0)] == [
        "0.9135", "0.00001", "0.0000013", "299.9", "12", "12346", "0"]


def _drawn(monkeypatch):
    """plot_comparison's figure, kept open instead of saved."""
    figures = []
    monkeypatch.setattr(comparison_plot, "save", lambda fig, path: figures.append(fig))
    return figures


def test_panels_do_not_magnify_a_difference_in_the_fourth_decimal(monkeypatch):
    figures = _drawn(monkeypatch)
    table = pd.DataFrame({"method": ["detnas", "random"], "network": ["a", "b"], "AP": [0.0012, 0.0015],
                          "primary_value": [0.0012, 0.0015], "primary_metric": ["AP", "AP"], "mflops": [36.6, 36.2],
                          "top1": [0.125, 0.1252]})
    curves = {m: pd.DataFrame({"generation": [0, 1, 2], "fitness": [0.3001 + d, 0.3002 + d, 0.3004 + d]})
              for m, d in (("detnas", 0.0003), ("random", 0.0))}
    comparison_plot.plot_comparison(table, curves, "unused.png", title="t")
    ap, mflops, top1, search = figures[0].axes[:4]
    for ax in (ap, top1):
        lo, hi = ax.get_ylim()
        assert lo == 0 and hi >= 0.05, ax.get_title()
    lo, hi = search.get_ylim()
    assert hi - lo >= 0.05 and lo >= 0
    assert mflops.get_ylim()[0] == 0
    # the unit on the metric panels, the rows' descriptions in the key below
    assert ap.get_title() == "test AP (0-1)" and "0-1" in top1.get_title() and "0-1" in search.get_title()
    assert [t.get_text() for t in figures[0].legends[0].get_texts()] == ["detnas: a", "random: b"]


def test_latency_columns_follow_the_backbone_cost_where_measured(tmp_path):
    """An experiment with a latency table: each row's predicted and measured backbone latency after
    its parameters (a width-scaled ShuffleNetV2 has no prediction: empty), the random architectures'
    row their mean; an experiment without one has neither column."""
    latency = {m: {"predicted_latency_ms": None if m == "shufflenetv2" else 2.0 + i / 10, "latency_ms": 2.1 + i / 10}
               for i, m in enumerate(METHODS)}
    finals = [_final(tmp_path, m, 0.3, **latency[m]) for m in METHODS]
    archs = [_final(tmp_path / f"ra{i}", f"random_arch_{i}", 0.2, predicted_latency_ms=1.0 + i, latency_ms=1.5 + i)
             for i in (1, 2)]
    summary = tmp_path / "summary.json"
    run_random_archs_summary(finals=archs, out=summary, experiment="x", mlflow=MLFLOW)
    csv = tmp_path / "comparison.csv"
    run_compare(finals=finals, histories={}, csv_out=csv, png_out=tmp_path / "comparison.png", experiment="x",
                mlflow=MLFLOW, random_archs=summary, max_mflops=40.0)
    rows = pd.read_csv(csv).set_index("method")
    assert list(rows.columns[3:6]) == ["backbone_params_m", "predicted_latency_ms", "latency_ms"]
    assert pd.isna(rows.loc["shufflenetv2", "predicted_latency_ms"]) and rows.loc["shufflenetv2", "latency_ms"] == 2.5
    assert rows.loc["detnas", "predicted_latency_ms"] == 2.0 and rows.loc["detnas", "latency_ms"] == 2.1
    assert rows.loc["random archs (n=2)", "predicted_latency_ms"] == 2.5 and rows.loc["random archs (n=2)", "latency_ms"] == 3.0
    _, plain = _compare(tmp_path / "plain")
    assert "latency_ms" not in pd.read_csv(plain).columns
