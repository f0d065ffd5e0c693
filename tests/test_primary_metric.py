"""The primary metric by its name: the evaluate stage's final.json and MLflow metrics (VOC figures and
per-class APs), and the report's first metric column."""

import json

import pandas as pd
import pytest
from conftest import evaluate_found_boxes

import detnas.stages.evaluate as evaluate_stage
from detnas.cli import main
from detnas.data.coco import prepare_detection
from detnas.io import write_json_atomic


@pytest.fixture
def voc_like_test(det_source, tmp_path):
    """The synthetic test split with its first box marked difficult (``iscrowd: 1``, as voc.py does)."""
    data = prepare_detection(det_source / "instances_test.json", [det_source / "images"])
    data["annotations"][0]["iscrowd"] = 1
    write_json_atomic(data, tmp_path / "test.json")
    return tmp_path / "test.json"


def _run(tmp_path, test_file, primary, monkeypatch, *, track=True):
    """run_evaluate on a stand-in detector whose detections are the test split's (non-difficult) boxes."""
    return evaluate_found_boxes(tmp_path, test_file, monkeypatch, primary=primary, classifier={"num_classes": 8, "top1": 0.25},
                                mlflow={"experiment": "voc_x", "run_name": "evaluate", "enabled": track},
                                experiment="voc_x", batch_size=2)


def test_voc_primary_writes_voc_figures_and_per_class_aps(tmp_path, voc_like_test, monkeypatch):
    from mlflow.tracking import MlflowClient

    final, data = _run(tmp_path, voc_like_test, "mAP50_voc07", monkeypatch)
    assert final["primary_metric"] == "mAP50_voc07" and final["primary_value"] == 1.0
    assert final["mAP50_voc07"] == 1.0 and final["mAP50_voc12"] == 1.0  # the difficult box is not missed
    assert final["AP"] == pytest.approx(1.0) and final["APl"] is None  # COCOeval figures stay; no large box
    assert list(final["voc_per_class"]) == final["classes"]
    for row in final["voc_per_class"].values():
        assert row["ap_voc07"] in (1.0, None) and row["ap_voc07"] == row["ap_voc12"]
    run = MlflowClient().get_run(final["mlflow_run_id"])
    name = next(n for n, r in final["voc_per_class"].items() if r["ap_voc07"] is not None)
    assert run.data.metrics["mAP50_voc07"] == 1.0 and run.data.metrics[f"AP50_voc07/{name}"] == 1.0
    assert "APl" not in run.data.metrics  # undefined: not logged as a number


def test_coco_primary_has_no_voc_fields(tmp_path, voc_like_test, monkeypatch):
    final, _ = _run(tmp_path, voc_like_test, "AP", monkeypatch, track=False)  # no MLflow store: seconds
    assert final["primary_metric"] == "AP" and final["primary_value"] == final["AP"] == pytest.approx(1.0)
    assert "mAP50_voc07" not in final and "voc_per_class" not in final


def test_unknown_primary_metric_names_the_choices(tmp_path, voc_like_test, monkeypatch):
    with pytest.raises(ValueError, match="mAP50_voc07.*got 'AP50_voc'"):
        _run(tmp_path, voc_like_test, "AP50_voc", monkeypatch, track=False)


def test_metric_keys_are_valid_mlflow_names():
    assert evaluate_stage._metric_key("AP50_voc07", "potted plant") == "AP50_voc07/potted plant"
    assert evaluate_stage._metric_key("AP50_voc07", "a/b (c)") == "AP50_voc07/a_b _c_"
    assert evaluate_stage._metric_key("AP50_voc07", "..") == "AP50_voc07/_"


def _table(tmp_path, text):
    root = tmp_path / "results" / "exp"
    root.mkdir(parents=True)
    (root / "comparison.csv").write_text(text)
    return root


def _report(tmp_path, capsys):
    assert main(["report", "--experiment", "exp", "--results", str(tmp_path / "results")]) == 0
    lines = capsys.readouterr().out.splitlines()
    return next(line.split() for line in lines if line.strip().startswith("method"))


def test_report_shows_the_primary_metric_first_by_its_name(tmp_path, capsys):
    _table(tmp_path, "method,arch,mflops,backbone_params_m,AP,AP50,AP75,APs,APm,APl,top1,primary_metric,"
                     "primary_value,mAP50_voc07,mAP50_voc12\n"
                     "detnas,0123,30.1,1.2,0.41,0.8,0.4,,0.3,0.5,0.7,mAP50_voc07,0.815,0.815,0.83\n")
    header = _report(tmp_path, capsys)
    assert header[:5] == ["method", "arch", "mflops", "mAP50_voc07", "mAP50_voc12"]
    assert header[5:] == ["AP", "AP50", "APs", "APm", "APl", "top1"]


def test_report_falls_back_to_final_json_then_ap(tmp_path, capsys):
    root = _table(tmp_path, "method,arch,mflops,AP,AP50,AP75,APs,APm,APl,top1\ndetnas,0123,30.1,0.41,0.8,0.4,0.2,0.3,0.5,0.7\n")
    assert _report(tmp_path, capsys)[3:] == ["AP", "AP50", "APs", "APm", "APl", "top1"]
    write_json_atomic({"primary_metric": "AP50"}, root / "final.json")  # written before primary_value existed
    assert _report(tmp_path, capsys)[3:] == ["AP50", "AP", "APs", "APm", "APl", "top1"]


def test_the_front_page_table_says_what_each_row_is_best_first(tmp_path):
    from detnas.stages.summary import summary_table

    table = pd.DataFrame({
        "method": ["detnas", "random", "random archs (n=3)", "shufflenetv2_unscaled"],
        "network": ["DetNAS: EA on the detection supernet", "random search", None, "ShuffleNetV2 at the space's own widths"],
        "primary_metric": ["mAP50_voc07"] * 4, "primary_value": [0.61, 0.64, 0.6, None],
        "mAP50_voc07": [0.61, 0.64, 0.6, 0.55], "AP": [0.3, 0.31, 0.29, 0.28], "AP50": [0.6, 0.62, 0.59, 0.5],
        "mflops": [30.04, 29.96, 30.0, 41.2], "mflops_std": [None, None, 0.5, None],
        "primary_value_std": [None, None, 0.02, None], "backbone_params_m": [1.2, 1.1, 1.15, 1.4],
        "top1": [0.7, 0.72, 0.71, 0.69], "health": ["ok", "HEALTH: detector loss rose", "ok", "-"],
        "vs_random_archs": ["+0.5 std (within noise)", "+2.0 std", "-", "-2.5 std"]})
    out = summary_table(table)
    assert list(out.columns) == ["network", "method", "mAP50_voc07", "AP50", "AP", "MFLOPs", "params (M)", "top-1",
                                 "vs random archs", "health"]
    assert list(out["method"]) == ["random", "detnas", "random archs (n=3)", "shufflenetv2_unscaled"]  # by the metric
    assert out["network"][2] == "random archs (n=3)"  # no description: the method's name
    assert out["mAP50_voc07"][2] == "0.6000 +- 0.0200" and out["MFLOPs"][2] == "30.0 +- 0.5"
    assert out["mAP50_voc07"][3] == "0.5500"  # the named column where primary_value is missing
    assert list(out["health"]) == ["FLAGGED", "ok", "ok", "ok"]


def test_the_report_page_takes_its_front_page_title(tmp_path):
    from detnas.stages.report import retitle_report

    desc = json.dumps('<div class="document"><h1 class="title">detnas: DetNAS &amp; co, experiment a_b</h1></div>')
    page = tmp_path / "report.html"
    page.write_text(f"<head><title>Snakemake Report</title></head>\n<script id=\"workflow-desc\">\nvar workflow_desc = {desc};\n</script>")
    assert retitle_report(page) == "detnas: DetNAS & co, experiment a_b"
    assert "<title>detnas: DetNAS &amp; co, experiment a_b</title>" in page.read_text()
    assert retitle_report(page) is None  # titled already: left alone
