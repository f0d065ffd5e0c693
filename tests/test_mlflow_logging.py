"""What the MLflow view shows of the results: the compare run's table and plots, and each evaluate
run's metrics (the runs table's columns), read back from a SQLite store."""

import json
import math
from pathlib import Path

import pandas as pd
import pytest
from conftest import evaluate_found_boxes

import detnas.stages.evaluate as evaluate_stage
from detnas.evaluate import COCO_METRICS
from detnas.io import write_json_atomic
from detnas.stages.compare import method_view, run_compare, summarize_finals
from detnas.tracking import read_view, view_url


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One SQLite store for this module's runs (creating one takes seconds); each test has its own
    MLflow experiment in it."""
    root = tmp_path_factory.mktemp("store")
    return {"tracking_uri": f"sqlite:///{root}/mlflow.db", "results_dir": root}


def _client(store):
    from mlflow.tracking import MlflowClient

    return MlflowClient(store["tracking_uri"])


def _only_run(client, experiment):
    (run,) = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    return run


def _final(path, method, arch, ap, **more):
    final = {"experiment": "x", "method": method, "arch": arch, "mflops": 35.0 + ap, "backbone_params_m": 0.2,
             "AP": ap, "AP50": 2 * ap, "AP75": ap / 2, "APs": None, "APm": ap, "APl": ap, "top1": 0.5 + ap,
             "search_fitness": 0.1, "search_evaluations": 24, "mlflow_run_id": f"run-{method}",
             "primary_metric": "AP", "primary_value": ap, **more}
    write_json_atomic(final, path)
    return path


def test_compare_logs_the_table_the_csv_and_the_plot(tmp_path, store):
    finals = [_final(tmp_path / f"{m}.json", m, arch, ap)
              for m, arch, ap in (("detnas", "00120312", 0.3), ("random", "31110002", 0.28))]
    finals.append(_final(tmp_path / "scratch.json", "scratch", "22220000", 0.25, top1=None))
    archs = [json.loads(_final(tmp_path / f"ra{i}.json", f"random_arch_{i}", "1111", ap).read_text())
             for i, ap in enumerate((0.2, 0.22))]
    write_json_atomic({"experiment": "x", "primary_metric": "AP", **summarize_finals(archs)}, tmp_path / "summary.json")
    csv, png = tmp_path / "comparison.csv", tmp_path / "comparison.png"
    run_compare(finals=finals, histories={}, csv_out=csv, png_out=png, experiment="x",
                mlflow={"experiment": "compare", "run_name": "compare", **store},
                random_archs=tmp_path / "summary.json")

    client = _client(store)
    run = _only_run(client, "compare")
    assert {a.path for a in client.list_artifacts(run.info.run_id)} == {"comparison.json", "comparison.csv",
                                                                        "comparison.png"}
    assert {"path": "comparison.json", "type": "table"} in json.loads(run.data.tags["mlflow.loggedArtifacts"])
    logged = json.loads(Path(client.download_artifacts(run.info.run_id, "comparison.json", str(tmp_path))).read_text())
    rows = pd.read_csv(csv, dtype={"arch": str})
    assert logged["columns"] == list(rows.columns)
    assert len(logged["data"]) == len(rows) == 4
    for got, want in zip(logged["data"], rows.itertuples(index=False)):
        for column, a, b in zip(rows.columns, got, want):
            if isinstance(b, float):  # the CSV rounds to 4 decimals; a missing value is null, not 0
                assert (a is None) == math.isnan(b), column
                assert a is None or a == pytest.approx(b, rel=5e-3, abs=5e-5), column
            else:
                assert a == b, column
    column = list(rows.columns).index
    assert logged["data"][0][column("arch")] == "00120312"  # an encoding stays a string, leading zeros and all
    assert logged["data"][2][column("top1")] is None
    assert run.data.metrics["detnas_AP"] == pytest.approx(0.3) and "scratch_top1" not in run.data.metrics

    # the experiment's comparison view: the evaluate run of each compared method, AP first, best first
    exp_id, view = read_view(store["tracking_uri"], "compare")
    assert exp_id == run.info.experiment_id
    assert view["searchFilter"] == "attributes.run_id IN ('run-detnas', 'run-random', 'run-scratch')"
    assert (view["orderByKey"], view["orderByAsc"]) == ("metrics.`AP`", False)
    assert view["selectedColumns"] == ["tags.`method`", "metrics.`AP`", "metrics.`AP50`", "metrics.`mflops`",
                                       "metrics.`backbone_params_m`", "metrics.`top1`"]
    assert view_url(store["tracking_uri"], "compare", port=5001) == (
        f"http://127.0.0.1:5001/#/experiments/{exp_id}/runs?workflowType=machine_learning&viewStateShareKey=detnas-comparison")
    assert view_url(store["tracking_uri"], "no such experiment") is None


def test_the_view_of_a_voc_experiment_sorts_by_its_primary_metric():
    finals = [{"method": m, "mlflow_run_id": f"id-{m}", "primary_metric": "mAP50_voc07", "AP50": 0.5, "mflops": 30.0}
              for m in ("detnas", "random")] + [{"method": "clsnas", "mlflow_run_id": None}]
    view = method_view(finals)
    assert view["searchFilter"] == "attributes.run_id IN ('id-detnas', 'id-random')"  # a run tracking missed: left out
    assert view["orderByKey"] == "metrics.`mAP50_voc07`"
    assert view["selectedColumns"] == ["tags.`method`", "metrics.`mAP50_voc07`", "metrics.`AP50`", "metrics.`mflops`"]


def _evaluate(tmp_path, store, test_file, monkeypatch, *, primary, classifier):
    """run_evaluate on a stand-in detector that finds the test split's boxes; returns final.json and the
    metrics of its MLflow run."""
    final, _ = evaluate_found_boxes(tmp_path, test_file, monkeypatch, primary=primary, classifier=classifier,
                                    mlflow={"experiment": "evaluate", "run_name": "evaluate", **store})
    return final, _client(store).get_run(final["mlflow_run_id"]).data.metrics


def test_evaluate_logs_the_figures_of_final_json(tmp_path, store, test_file, monkeypatch):
    final, metrics = _evaluate(tmp_path, store, test_file, monkeypatch, primary="AP50",
                               classifier={"num_classes": 8, "top1": 0.25})
    defined = [k for k in COCO_METRICS if final[k] is not None]
    assert final["APl"] is None and "APl" not in metrics  # undefined: absent, never 0
    for key in (*defined, "top1", "mflops", "backbone_params_m", "classifier_params_m"):
        assert metrics[key] == pytest.approx(final[key]), key
    assert metrics["primary"] == metrics["AP50"] == pytest.approx(final["primary_value"])
    assert metrics["top1"] == 0.25


def test_evaluate_leaves_an_undefined_top1_out_and_logs_the_voc_primary(tmp_path, store, test_file, monkeypatch):
    final, metrics = _evaluate(tmp_path, store, test_file, monkeypatch, primary="mAP50_voc07",
                               classifier={"num_classes": 8})  # a classifier without a top-1
    assert final["top1"] is None and "top1" not in metrics
    assert metrics["primary"] == metrics["mAP50_voc07"] == pytest.approx(final["mAP50_voc07"])
    assert metrics["mAP50_voc12"] == pytest.approx(final["mAP50_voc12"])


def test_tracked_metrics_skip_only_what_is_undefined():
    final = {"AP": 0.3, "AP50": 0.0, "APs": None, "APm": float("nan"), "top1": None, "mflops": 36.6,
             "backbone_params_m": 0.15, "primary_metric": "AP50", "primary_value": 0.0,
             "voc_per_class": {"a/b": {"ap_voc07": 0.5, "ap_voc12": None}}}
    assert evaluate_stage._tracked(final) == {"AP": 0.3, "AP50": 0.0, "primary": 0.0, "mflops": 36.6,
                                              "backbone_params_m": 0.15, "AP50_voc07/a_b": 0.5}
