"""The Snakemake DAG itself: planning every experiment, running stages, rerunning only what changed."""

import contextlib
import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Iterator

import pandas as pd
import pytest
import yaml

from report_checks import assert_report
from workflow import ROOT, clone_workdir, edit_config, make_workdir, planned, snakemake


def test_dry_run_plans_every_experiment(tmp_path):
    """Every experiment of config/config.yaml plans its whole DAG without its data being there."""
    wd = make_workdir(tmp_path, ROOT / "config" / "config.yaml")
    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    experiments = config["experiments"]
    jobs = planned(wd, *[f"results/{name}/comparison.csv" for name in experiments])
    n = len(experiments)
    randoms = sum(e.get("random_archs", {}).get("count", 20) for e in experiments.values())  # the paper's 20 by default
    # each retrained and evaluated, the unscaled ShuffleNetV2 too; DetNAS's evaluation is evaluate_detnas
    methods = len(METHODS) + 1
    # and the training-free baselines (all six by default) and published architectures each experiment lists
    extra = sum(len((e.get("training_free") or {}).get("methods", TRAINING_FREE)) + len(e.get("published", []))
                + len(e.get("references", [])) for e in experiments.values())
    assert jobs["compare"] == n and jobs["evaluate_detnas"] == n
    assert jobs["evaluate"] == (methods - 1) * n + randoms + extra
    assert jobs["search"] == 4 * n and jobs["finetune_supernet"] == 2 * n
    assert jobs["handcrafted_arch"] == jobs["handcrafted_arch_unscaled"] == n
    assert jobs["random_arch"] == randoms and jobs["random_archs_summary"] == n
    assert jobs["retrain_pretrain"] == jobs["retrain_finetune"] == methods * n + randoms + extra
    # shared stages once: one pre-training per pretrain entry, one split per dataset
    assert jobs["pretrain_supernet"] == len({e["pretrain"] for e in experiments.values()})
    assert jobs["split_detection"] == len({e["data"] for e in experiments.values()})


def test_missing_real_data_names_the_path(tmp_path):
    """A run stops while the DAG is built, before any job, with the key and the path of each missing one."""
    wd = make_workdir(tmp_path, ROOT / "config" / "config.yaml")
    proc = snakemake(wd, "--cores", "1", "results/data/detection/coco/search_val.json", check=False)
    assert proc.returncode != 0
    lines = (proc.stderr + proc.stdout).splitlines()
    assert ("detection_data.coco.train.annotations: /path/to/coco/annotations/instances_train2017.json"
            " does not exist") in lines
    assert "Traceback" not in proc.stderr + proc.stdout and not (wd / "results").exists()


def test_bad_config_names_the_key(tmp_path):
    wd = make_workdir(tmp_path)
    edit_config(wd, "pretrain: micro\n", "pretrain: nonexistent\n")
    proc = snakemake(wd, "-n", check=False)
    assert proc.returncode != 0
    assert "experiments.shapes_fpn.pretrain = 'nonexistent' is not a pretrain entry" in proc.stdout + proc.stderr


def test_schema_rejects_unknown_keys(tmp_path):
    wd = make_workdir(tmp_path)
    edit_config(wd, "    log_every: 5\n", "    log_every: 5\n    log_evry: 5\n")
    proc = snakemake(wd, "-n", check=False)
    assert proc.returncode != 0 and "log_evry" in proc.stdout + proc.stderr


@pytest.mark.slow
def test_pretrain_target_runs_and_reruns_only_what_changed(micro_run, tmp_path):
    wd = clone_workdir(micro_run, tmp_path / "wd")
    target = "results/pretrain/micro/supernet.pt"
    metrics = json.loads((wd / "results/pretrain/micro/metrics.json").read_text())
    assert metrics["history"][-1]["step"] == 10
    split = json.loads((wd / "results/data/detection/shapes/split_metrics.json").read_text())
    assert split["search_val"]["images"] == 4 and split["supernet_train"]["images"] == 12
    assert (wd / "results/mlflow.db").exists()
    assert planned(wd, target) == {}  # nothing to do

    edit_config(wd, "lr: 0.05", "lr: 0.04")  # a pre-training setting
    assert planned(wd, target) == {"pretrain_supernet": 1}

    edit_config(wd, "holdout: {size: 0.25, seed: 0}", "holdout: {size: 0.25, seed: 1}")  # the split seed
    assert planned(wd, target) == {"split_classification": 1, "pretrain_supernet": 1}


FINAL_FIELDS = {"experiment", "method", "dataset", "detector", "arch", "space", "mflops", "backbone_params_m",
                "AP", "AP50", "AP75", "APs", "APm", "APl", "top1", "mlflow_run_id", "primary_metric", "classifier_params_m"}
METHODS = ["detnas", "random", "clsnas", "scratch", "shufflenetv2"]
RANDOM_ARCHS = ["random_arch_1", "random_arch_2", "random_arch_3"]  # the micro config's random_archs: {count: 3}
TRAINING_FREE = ["flops_max", "params_max", "synflow", "naswot", "zico", "mae_entropy"]  # the micro config's: all


def _finals(wd: Path) -> dict[str, dict]:
    return {m: json.loads((wd / "results/shapes_fpn" / ("final.json" if m == "detnas" else f"{m}/final.json")).read_text())
            for m in METHODS + RANDOM_ARCHS + ["shufflenetv2_unscaled"] + TRAINING_FREE}


@pytest.mark.slow
def test_end_to_end_dag_all_methods(micro_run):
    """The real DAG on the micro configuration (the shared run: the default target and the unscaled
    ShuffleNetV2): every method and the random architectures, final.json, the comparison."""
    wd = micro_run
    finals = _finals(wd)
    for method, final in finals.items():
        assert FINAL_FIELDS <= set(final), method
        assert final["method"] == method and final["experiment"] == "shapes_fpn" and len(final["arch"]) == 8
        assert 0.0 <= final["AP"] <= 1.0 and 0.0 <= final["top1"] <= 1.0
        assert final["mflops"] <= 40  # the FLOPs limit: searched, random and the scaled hand-crafted network
        # every retrained network's health is checked: both trainings' loss trends and the test AP50 against chance
        assert set(final["health"]["losses"]) == {"classifier", "detector"} and final["health"]["chance"]["checked"]
        picture = wd / "results/shapes_fpn" / method / "retrain/detections.png"
        assert picture.stat().st_size > 10_000, method
    assert finals["shufflenetv2"]["arch"] == finals["shufflenetv2_unscaled"]["arch"] == "00000000"
    assert finals["shufflenetv2"]["width_factor"] > 1 == finals["shufflenetv2_unscaled"]["width_factor"]
    assert finals["shufflenetv2"]["mflops"] >= 0.98 * 40 > finals["shufflenetv2_unscaled"]["mflops"]
    assert len({finals[m]["arch"] for m in RANDOM_ARCHS}) == 3
    summary = json.loads((wd / "results/shapes_fpn/random_archs/summary.json").read_text())
    assert summary["n"] == 3 and summary["metrics"]["AP"]["mean"] == pytest.approx(
        sum(finals[m]["AP"] for m in RANDOM_ARCHS) / 3)
    table = (wd / "results/shapes_fpn/comparison.csv").read_text().splitlines()
    assert table[0].startswith("method,network,arch,mflops") and table[0].endswith(",health,vs_random_archs,cost_gpu_h,cost_wall_h")
    assert "voc" not in table[0]  # a COCO-type experiment
    # every retrained network, each saying what it is
    assert [r.split(",")[0] for r in table[1:]] == METHODS + ["shufflenetv2_unscaled"] + TRAINING_FREE + ["random archs (n=3)"]
    assert table[5].split(",")[1].startswith("ShuffleNetV2 scaled to the FLOPs limit (width x1.")
    assert (wd / "results/shapes_fpn/comparison.png").stat().st_size > 5000
    # the ranking quality over every retrained path of the supernet, the search curves over 2 repeats
    ranking = json.loads((wd / "results/shapes_fpn/ranking.json").read_text())
    in_space = sorted(m for m in finals if m != "shufflenetv2")
    assert sorted(m for p in ranking["points"] for m in p["methods"]) == in_space
    assert [e["method"] for e in ranking["excluded"]] == ["shufflenetv2"]
    assert ranking["sides"]["detection"]["n"] == len({finals[m]["arch"] for m in in_space})
    curves = json.loads((wd / "results/shapes_fpn/search_curves.json").read_text())["methods"]
    assert curves["detnas"]["repeats"] == curves["random"]["repeats"] == 2
    assert (wd / "results/shapes_fpn/architectures.png").stat().st_size > 5000


@pytest.mark.slow
def test_end_to_end_latency_table_and_each_networks_latency(micro_run, tmp_path):
    """An experiment's latency section (added to a copy of the micro run): the latency table measured
    and validated, and a network's predicted and measured latency in its final.json (a width-scaled
    ShuffleNetV2: measured only); only the latency jobs and those evaluations run."""
    wd = clone_workdir(micro_run, tmp_path / "wd")
    edit_config(wd, "    training_free: {batch_size: 4}",
                "    latency: {repeats: 3, warmup: 1, block_seconds: 0.002, calibration_archs: 3, validate: 3}\n"
                "    training_free: {batch_size: 4}")
    targets = ["results/shapes_fpn/synflow/final.json", "results/shapes_fpn/shufflenetv2/final.json"]
    assert planned(wd, *targets) == {"latency_table": 1, "arch_latency": 2, "evaluate": 2}
    snakemake(wd, "--cores", "2", *targets)
    d = wd / "results/shapes_fpn"
    table = json.loads((d / "latency/table.json").read_text())
    assert table["space"] == "tiny" and table["input_size"] == 64 and table["threads"] == 1
    assert len(table["ms"]) == 8 and all(len(row) == 4 for row in table["ms"])
    validation = json.loads((d / "latency/validation.json").read_text())
    assert validation["n"] == 3 == len(validation["entries"]) and validation["mean_abs_error_pct"] >= 0
    assert (d / "latency/validation.png").stat().st_size > 5000
    synflow = json.loads((d / "synflow/final.json").read_text())
    assert synflow["latency_ms"] > 0 and synflow["predicted_latency_ms"] > 0
    assert synflow["latency"]["arch"] == synflow["arch"] and synflow["latency"]["device"] == table["device"]
    scaled = json.loads((d / "shufflenetv2/final.json").read_text())  # another space than the table's
    assert scaled["predicted_latency_ms"] is None and scaled["latency_ms"] > 0
    assert "not the table's" in scaled["latency"]["note"]


@pytest.mark.slow
def test_end_to_end_export_target_writes_onnx_checked_against_pytorch(micro_run, tmp_path):
    """results/{experiment}/{method}/export/: the retrained detector and its backbone as ONNX, the
    ONNX Runtime outputs on the experiment's test images within tolerance of PyTorch's."""
    wd = clone_workdir(micro_run, tmp_path / "wd")
    assert planned(wd, "results/shapes_fpn/synflow/export/detector.onnx") == {"export": 1}
    snakemake(wd, "--cores", "2", "results/shapes_fpn/synflow/export/detector.onnx")
    out = wd / "results/shapes_fpn/synflow/export"
    record = json.loads((out / "export.json").read_text())
    assert (out / "detector.onnx").stat().st_size > 10_000 and (out / "backbone.onnx").stat().st_size > 10_000
    assert record["input_size"] == [64, 64] and record["exporter"] == "torchscript"
    parity = record["parity"]
    assert parity["passed"] and parity["images"] >= 1 and parity["detections_compared"] > 0
    assert parity["max_box_abs_diff"] <= parity["box_tolerance_px"] and parity["max_score_diff"] <= 1e-4
    assert parity["feature_max_diff"] <= 1e-4 and parity["label_agreement"] >= 0.9


@pytest.mark.slow
def test_end_to_end_detect_on_the_test_images_evaluates_to_the_evaluate_stages_ap(micro_run, tmp_path):
    """`python -m detnas detect` on the micro experiment's test images: its detections.json, loaded
    by pycocotools against the test split, gives the AP the evaluate stage wrote."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    wd = micro_run
    test = wd / "results/data/detection/shapes/test.json"
    images = wd / "results/data/detection/shapes/source/images/test"
    out = tmp_path / "detect"
    proc = subprocess.run([sys.executable, "-m", "detnas", "detect", "--checkpoint",
                           str(wd / "results/shapes_fpn/synflow/retrain/detector.pt"), str(images),
                           "--classes-from", str(test), "--out", str(out), "--threads", "1"],
                          capture_output=True, text=True, cwd=wd)
    assert proc.returncode == 0, proc.stderr
    gt = COCO(str(test))
    detections = json.loads((out / "detections.json").read_text())
    assert {d["image_id"] for d in detections} <= set(gt.getImgIds())
    ap = 0.0  # pycocotools cannot load an empty result list: no detection scores 0
    if detections:
        evaluation = COCOeval(gt, gt.loadRes(str(out / "detections.json")), "bbox")
        evaluation.evaluate(), evaluation.accumulate(), evaluation.summarize()
        ap = max(float(evaluation.stats[0]), 0.0)
    final = json.loads((wd / "results/shapes_fpn/synflow/final.json").read_text())
    assert ap == pytest.approx(final["AP"], abs=1e-12)
    assert len(list(out.glob("*.jpg"))) == len(gt.getImgIds())


@pytest.mark.slow
def test_end_to_end_mlflow_runs_and_report_command(micro_run):
    """One FINISHED evaluate run per method, found by MLflow's client and by the UI's own search;
    `python -m detnas report` prints the table and the command that opens the UI."""
    from mlflow.tracking import MlflowClient

    wd = micro_run
    finals = _finals(wd)
    client = MlflowClient(f"sqlite:///{wd}/results/mlflow.db")
    exp = client.get_experiment_by_name("shapes_fpn")
    runs = client.search_runs([exp.experiment_id], "tags.stage = 'evaluate'")
    assert sorted(r.data.tags["method"] for r in runs) == sorted(METHODS + RANDOM_ARCHS + ["shufflenetv2_unscaled"] + TRAINING_FREE)
    for r in runs:
        assert r.info.status == "FINISHED"
        assert {"experiment", "detector", "dataset", "space", "arch", "git_commit", "wildcards"} <= set(r.data.tags)
        assert r.info.run_id == finals[r.data.tags["method"]]["mlflow_run_id"]
        assert r.data.metrics["AP"] == pytest.approx(finals[r.data.tags["method"]]["AP"])
    searches = client.search_runs([exp.experiment_id], "tags.stage = 'search'")
    # the proxies' searches too (the EA with the proxy as fitness); the two controls enumerate, no search run
    assert sorted(r.data.tags["method"] for r in searches) == ["clsnas", "detnas", "mae_entropy", "naswot", "random",
                                                               "scratch", "synflow", "zico"]
    assert {r.data.tags["method"]: r.data.tags["search_algorithm"] for r in searches}["scratch"] == "detnas"
    stages = {r.data.tags["stage"] for r in client.search_runs([exp.experiment_id])}
    assert {"finetune_supernet", "search", "retrain_pretrain", "retrain_finetune", "evaluate", "compare"} <= stages

    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}  # the embedded default store
    report = subprocess.run([sys.executable, "-m", "detnas", "report"], cwd=wd, capture_output=True, text=True, env=env)
    assert report.returncode == 0 and "shufflenetv2" in report.stdout and "random archs (n=3)" in report.stdout
    assert f"mlflow ui --backend-store-uri sqlite:///{wd.resolve()}/results/mlflow.db" in report.stdout

    # the MLflow UI's own search (what its run comparison shows) finds the final runs
    ui_uri = report.stdout.split("mlflow ui --backend-store-uri ")[1].split()[0]
    runs = _ui_search(ui_uri, exp.experiment_id, "tags.stage = 'evaluate' and tags.experiment = 'shapes_fpn'")
    assert sorted({t["key"]: t["value"] for t in r["data"]["tags"]}["method"] for r in runs) == sorted(METHODS + RANDOM_ARCHS + ["shufflenetv2_unscaled"] + TRAINING_FREE)


@pytest.mark.slow
def test_end_to_end_rerun_does_nothing_and_a_search_setting_reruns_what_follows(micro_run, tmp_path):
    wd = clone_workdir(micro_run, tmp_path / "wd")
    assert planned(wd) == {}
    edit_config(wd, "      population: 4\n", "      population: 3\n")
    # the proxies' searches share the EA's settings (the controls enumerate: unchanged)
    assert planned(wd) == {"search": 4, "proxy_search": 4, "retrain_pretrain": 8, "retrain_finetune": 8, "evaluate": 7,
                           "evaluate_detnas": 1, "ledger": 1, "compare": 1, "search_curves": 1, "ranking": 1,
                           "architectures": 1, "all": 1}


@pytest.mark.slow
def test_end_to_end_report(micro_run, tmp_path):
    """The report: every figure kind of the experiment, each with its caption."""
    assert_report(clone_workdir(micro_run, tmp_path / "wd"))


@contextlib.contextmanager
def _mlflow_ui(command: str) -> Iterator[str]:
    """`mlflow ui` as ``command`` (what `python -m detnas report` prints) on a free local port; yields
    its address once it answers."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    argv = shlex.split(command)
    argv[0] = str(Path(sys.executable).parent / "mlflow")
    argv[argv.index("--port") + 1] = str(port)
    server = subprocess.Popen([*argv, "--host", "127.0.0.1"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 90
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=5):
                    break
            except OSError:
                if time.time() > deadline or server.poll() is not None:
                    raise
                time.sleep(0.5)
        yield url
    finally:
        server.terminate()
        server.wait(30)


def _get(url: str, path: str, body: dict | None = None) -> bytes:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url + path, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return resp.read()


def _ui_search(backend_uri: str, experiment_id: str, filter_string: str) -> list[dict]:
    """Start `mlflow ui` on the store and ask its REST API what the UI lists for a filter."""
    with _mlflow_ui(f"mlflow ui --backend-store-uri {backend_uri} --port 0") as url:
        body = {"experiment_ids": [experiment_id], "filter": filter_string, "max_results": 50}
        return json.loads(_get(url, "/ajax-api/2.0/mlflow/runs/search", body))["runs"]


def _artifact_files(url: str, run_id: str, path: str = "") -> list[str]:
    query = urllib.parse.urlencode({"run_id": run_id, **({"path": path} if path else {})})
    listed = json.loads(_get(url, f"/ajax-api/2.0/mlflow/artifacts/list?{query}")).get("files", [])
    return [f for e in listed for f in (_artifact_files(url, run_id, e["path"]) if e["is_dir"] else [e["path"]])]


@pytest.mark.slow
def test_end_to_end_mlflow_view_and_moved_results(micro_run, tmp_path):
    """The view `python -m detnas report` prints lists, through MLflow's own search with its filter
    and order (the client's and the UI server's), exactly one evaluate run per compared method with
    the view's metric columns, best first. A copy of results/ in another folder serves every artifact
    of every run from the copy: the store holds no path of the original."""
    from mlflow.tracking import MlflowClient

    from detnas.tracking import read_view

    moved = tmp_path / "elsewhere" / "results"
    shutil.copytree(micro_run / "results", moved, symlinks=True)
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    report = subprocess.run([sys.executable, "-m", "detnas", "report", "--results", str(moved),
                             "--config", str(micro_run / "config" / "config.yaml")],
                            cwd=tmp_path, capture_output=True, text=True, env=env)
    assert report.returncode == 0, report.stderr
    lines = {line.split(":", 1)[0].strip(): line.split(":", 1)[1].strip() for line in report.stdout.splitlines()
             if line.startswith(("MLflow UI:", "comparison:"))}
    uri = f"sqlite:///{moved}/mlflow.db"
    assert lines["MLflow UI"] == f"mlflow ui --backend-store-uri {uri} --artifacts-destination {moved}/mlflow-artifacts --port 5000"
    exp_id, view = read_view(uri, "shapes_fpn")
    assert lines["comparison"] == (f"http://127.0.0.1:5000/#/experiments/{exp_id}/runs"
                                   "?workflowType=machine_learning&viewStateShareKey=detnas-comparison")

    table = pd.read_csv(moved / "shapes_fpn" / "comparison.csv")
    compared = sorted(table.loc[table["mlflow_run_id"].notna(), "method"])
    assert set(METHODS) <= set(compared)
    metrics = [c.removeprefix("metrics.`").removesuffix("`") for c in view["selectedColumns"] if c.startswith("metrics.")]
    assert metrics[:4] == ["AP", "AP50", "mflops", "backbone_params_m"] and "tags.`method`" in view["selectedColumns"]
    order = f"{view['orderByKey']} {'ASC' if view['orderByAsc'] else 'DESC'}"
    runs = MlflowClient(uri).search_runs([exp_id], view["searchFilter"], order_by=[order])
    assert sorted(r.data.tags["method"] for r in runs) == compared  # one row per method
    for r in runs:
        assert r.data.tags["stage"] == "evaluate" and set(metrics) <= set(r.data.metrics), r.data.tags["method"]
    values = [r.data.metrics["AP"] for r in runs]
    assert values == sorted(values, reverse=True)

    # the copy alone: no artifact address names the original folder
    client = MlflowClient(uri)
    every = client.search_runs([e.experiment_id for e in client.search_experiments()], max_results=1000)
    assert every and all(r.info.artifact_uri.startswith("mlflow-artifacts:/") for r in every)
    used = {r.info.experiment_id for r in every}  # (MLflow's own empty "Default" experiment aside)
    assert all(e.artifact_location.startswith("mlflow-artifacts:/") for e in client.search_experiments()
               if e.experiment_id in used)
    first = runs[0]
    stored = moved / "mlflow-artifacts" / first.info.artifact_uri.removeprefix("mlflow-artifacts:/") / "final.json"
    stored.write_text(stored.read_text() + "\n")  # the server must read the copy's file, not the original's
    with _mlflow_ui(lines["MLflow UI"]) as url:
        body = {"experiment_ids": [exp_id], "filter": view["searchFilter"], "order_by": [order], "max_results": 50}
        listed = json.loads(_get(url, "/ajax-api/2.0/mlflow/runs/search", body))["runs"]
        assert [r["info"]["run_id"] for r in listed] == [r.info.run_id for r in runs]  # what the page lists
        served = 0
        for r in every:
            base = moved / "mlflow-artifacts" / r.info.artifact_uri.removeprefix("mlflow-artifacts:/")
            for path in _artifact_files(url, r.info.run_id):
                query = urllib.parse.urlencode({"path": path, "run_uuid": r.info.run_id})
                assert _get(url, f"/get-artifact?{query}") == (base / path).read_bytes(), path
                served += 1
        assert served >= 2 * len(compared)  # each evaluate run's final.json and detections.png, and more


@pytest.mark.slow
def test_end_to_end_ledger_counts_every_job_the_comparison_ran(micro_run):
    """The ledger lists exactly the jobs that made the comparison (every benchmark file but those of
    the summaries and figures), and each comparison row carries its cost."""
    ledger = json.loads((micro_run / "results/shapes_fpn/ledger.json").read_text())
    listed = {j["benchmark"] for j in ledger["jobs"]}
    bookkeeping = {"compare", "ledger", "ranking", "search_curves", "architectures", "random_archs_summary"}
    ran = {p.relative_to(micro_run).as_posix() for p in (micro_run / "results/benchmarks").rglob("*.tsv")
           if p.parent.name not in bookkeeping}
    assert listed == ran
    table = pd.read_csv(micro_run / "results/shapes_fpn/comparison.csv")
    assert (table["cost_wall_h"] > 0).all() and (table["cost_gpu_h"] == 0).all()  # CPU jobs: no GPU-hours
    detnas = table.set_index("method").loc["detnas"]
    assert detnas["cost_wall_h"] == pytest.approx(ledger["methods"]["detnas"]["wall_h"], rel=1e-3)
