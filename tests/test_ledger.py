"""The ledger: what a run spent per stage and per method, from Snakemake's benchmark files."""

import json

import pytest

from detnas.stages.ledger import ledger_table, read_benchmark, run_ledger, summarize_jobs

HEADER = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"


def _bench(path, seconds, cpu, rss=500.0):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(HEADER + f"{seconds}\t0:00:00\t{rss}\t0\t0\t0\t0\t0\t0\t{cpu}\n")
    return path


def test_costs_add_up_per_stage_and_per_method_shared_jobs_in_full(tmp_path):
    b = tmp_path / "benchmarks"
    jobs = [
        {"stage": "data", "name": "split", "methods": ["detnas", "random", "shufflenetv2"], "gpus": 0,
         "benchmark": _bench(b / "split.tsv", 36, 30)},
        {"stage": "pretrain_supernet", "name": "pretrain", "methods": ["detnas", "random"], "gpus": 8,
         "benchmark": _bench(b / "pretrain.tsv", 3600, 100, rss=2048)},
        {"stage": "search", "name": "search detnas", "methods": ["detnas"], "gpus": 2,
         "benchmark": _bench(b / "search_detnas.tsv", 1800, 50)},
        {"stage": "search", "name": "search random", "methods": ["random"], "gpus": 2,
         "benchmark": _bench(b / "search_random.tsv", 900, 50)},
    ]
    ledger = summarize_jobs(jobs)
    stages = {s["stage"]: s for s in ledger["stages"]}
    assert list(stages) == ["data", "pretrain_supernet", "search"]  # the paper's order
    assert stages["pretrain_supernet"]["gpu_h"] == pytest.approx(8.0)  # 1 h on 8 GPUs
    assert stages["search"]["jobs"] == 2 and stages["search"]["gpu_h"] == pytest.approx(1.0 + 0.5)
    assert stages["search"]["wall_h"] == pytest.approx(0.75) and stages["data"]["gpu_h"] == 0
    assert stages["pretrain_supernet"]["max_rss_gb"] == pytest.approx(2.0)
    m = ledger["methods"]
    assert m["detnas"]["gpu_h"] == pytest.approx(8.0 + 1.0)  # the shared pre-training in full
    assert m["random"]["gpu_h"] == pytest.approx(8.0 + 0.5)
    assert m["shufflenetv2"]["gpu_h"] == 0 and m["shufflenetv2"]["wall_h"] == pytest.approx(0.01)
    assert ledger["total"]["gpu_h"] == pytest.approx(9.5) and ledger["total"]["jobs"] == 4
    table = ledger_table(ledger)
    assert list(table["stage"])[-1] == "total" and list(table["wall-clock (sum)"]) == ["36 s", "60.0 min", "45.0 min", "1.8 h"]


def test_a_benchmark_file_that_is_not_one_is_named(tmp_path):
    bad = tmp_path / "x.tsv"
    bad.write_text("not\ta benchmark\n")
    with pytest.raises(ValueError, match=r"x.tsv: not a Snakemake benchmark file"):
        read_benchmark(bad)
    with pytest.raises(ValueError, match=r"unknown stages \['training'\]"):
        summarize_jobs([{"stage": "training", "name": "t", "methods": [], "gpus": 0,
                         "benchmark": _bench(tmp_path / "t.tsv", 1, 1)}])


def test_run_ledger_writes_both_files(tmp_path):
    job = {"stage": "evaluate", "name": "evaluate detnas", "methods": ["detnas"], "gpus": 1,
           "benchmark": str(_bench(tmp_path / "e.tsv", 7200, 7000))}
    run_ledger(jobs=[job], json_out=tmp_path / "ledger.json", csv_out=tmp_path / "ledger.csv", experiment="x",
               mlflow={"experiment": "x", "run_name": "ledger"})
    written = json.loads((tmp_path / "ledger.json").read_text())
    assert written["methods"]["detnas"]["gpu_h"] == pytest.approx(2.0)
    assert (tmp_path / "ledger.csv").read_text().splitlines()[0] == "stage,jobs,wall-clock (sum),GPU-hours,CPU-hours,peak memory (GB)"


def test_the_ledger_stands_beside_the_plans_prediction(tmp_path):
    b = tmp_path / "benchmarks"
    jobs = [{"stage": "pretrain_supernet", "name": "pretrain", "methods": ["detnas"], "gpus": 8,
             "benchmark": _bench(b / "pretrain.tsv", 3600, 100)},
            {"stage": "search", "name": "search detnas", "methods": ["detnas"], "gpus": 2,
             "benchmark": _bench(b / "search.tsv", 1800, 50)}]
    plan = {"device": "cuda (test card)",
            "stages": [{"stage": "pretrain_supernet", "jobs": 1, "predicted": 1, "job_h": 0.5, "gpu_h": 4.0},
                       {"stage": "search", "jobs": 1, "predicted": 0, "job_h": 0.0, "gpu_h": None}],
            "total": {"jobs": 2, "predicted": 1, "job_h": 0.5, "gpu_h": 4.0}}
    (tmp_path / "plan.json").write_text(json.dumps(plan))
    ledger = run_ledger(jobs=jobs, json_out=tmp_path / "ledger.json", csv_out=tmp_path / "ledger.csv",
                        experiment="x", mlflow={"experiment": "x", "run_name": "ledger"}, plan=tmp_path / "plan.json")
    stages = {s["stage"]: s for s in ledger["stages"]}
    assert stages["pretrain_supernet"]["predicted_gpu_h"] == 4.0 and stages["pretrain_supernet"]["spent_vs_predicted"] == 2.0
    assert stages["search"]["predicted_wall_h"] is None and stages["search"]["spent_vs_predicted"] is None  # not predicted
    assert ledger["total"]["spent_vs_predicted"] == pytest.approx(1.5 / 0.5) and ledger["plan_device"] == "cuda (test card)"
    table = (tmp_path / "ledger.csv").read_text().splitlines()
    assert table[0].endswith("planned wall-clock,planned GPU-hours,spent/planned")
    assert table[1].endswith(",30.0 min,4.00,2.00x") and table[2].endswith(",-,-,-")
    # a plan file that is not one (e.g. an empty object) leaves every prediction empty, not an error
    (tmp_path / "plan.json").write_text("{}")
    empty = run_ledger(jobs=jobs, json_out=tmp_path / "ledger.json", csv_out=tmp_path / "ledger.csv",
                       experiment="x", mlflow={"experiment": "x", "run_name": "ledger"}, plan=tmp_path / "plan.json")
    assert empty["total"]["predicted_wall_h"] is None
