"""The rehearsal and plan targets in the DAG, and the warning a paper-scale run on CPU gets at DAG build."""

import json
import subprocess
import sys
from collections import Counter

import pytest

from workflow import edit_config, make_workdir, planned, snakemake

PAPER_SCALE = "    schedule: {iterations: 20000, lr: 0.05, policy: linear, weight_decay: 4.0e-5}\n"


def test_paper_scale_training_on_cpu_warns_at_dag_build_until_rehearsed(tmp_path):
    wd = make_workdir(tmp_path / "wd")
    edit_config(wd, "    schedule: {iterations: 10, lr: 0.05, policy: linear, weight_decay: 4.0e-5}\n", PAPER_SCALE)
    out = snakemake(wd, "-n", "results/shapes_fpn/comparison.csv")
    warnings = [line for line in (out.stdout + out.stderr).splitlines() if line.startswith("WARNING: ")]
    assert len(warnings) == 1 and warnings[0].startswith("WARNING: pretrain_supernet (micro,"), warnings
    assert "20000 training steps each on CPU" in warnings[0] and "gpu: &gpus N" in warnings[0]
    assert "results/shapes_fpn/plan.json" in warnings[0]
    with_gpu = snakemake(wd, "-n", "results/shapes_fpn/comparison.csv", "--set-resources", "pretrain_supernet:gpu=1")
    assert "WARNING: pretrain_supernet" not in with_gpu.stdout + with_gpu.stderr
    (wd / "results" / "shapes_fpn").mkdir(parents=True)
    (wd / "results" / "shapes_fpn" / "plan.json").write_text("{}")  # rehearsed: the plan said what it costs
    rehearsed = snakemake(wd, "-n", "results/shapes_fpn/comparison.csv")
    assert "WARNING: pretrain_supernet" not in rehearsed.stdout + rehearsed.stderr


def test_the_plan_target_rehearses_every_stage_once(tmp_path):
    wd = make_workdir(tmp_path / "wd")
    jobs = planned(wd, "results/shapes_fpn/plan.json")
    assert {k: v for k, v in jobs.items() if k.startswith("rehearse_")} == {
        **{f"rehearse_{s}": 1 for s in ("pretrain_supernet", "finetune_supernet", "search", "search_clsnas",
                                        "retrain_pretrain", "retrain_finetune", "evaluate")},
        "rehearse_search_proxy": 4}  # each proxy search of the experiment's training-free methods
    assert jobs["plan"] == 1 and not {"pretrain_supernet", "finetune_supernet", "search", "evaluate"} & set(jobs)


STAGE_OF_RULE = {"synthesize_detection": "data", "synthesize_classification": "data", "split_detection": "data",
                 "split_classification": "data", "pretrain_supernet": "pretrain_supernet",
                 "finetune_supernet": "finetune_supernet", "search": "search", "handcrafted_arch": "search",
                 "handcrafted_arch_unscaled": "search", "random_arch": "search", "proxy_search": "search",
                 "control_arch": "search", "published_arch": "search", "retrain_pretrain": "retrain_pretrain",
                 "retrain_finetune": "retrain_finetune", "evaluate": "evaluate", "evaluate_detnas": "evaluate",
                 # the latency table is measured for real, as the split; each network's latency is its own stage
                 "latency_table": "data", "arch_latency": "latency"}


@pytest.mark.slow
def test_the_plan_rehearses_every_stage_counts_the_dag_and_leaves_the_real_run_alone(tmp_path):
    wd = make_workdir(tmp_path / "wd")
    target = "results/shapes_fpn/comparison.csv"
    snakemake(wd, "--cores", "2", "results/shapes_fpn/plan.json")
    plan = json.loads((wd / "results/shapes_fpn/plan.json").read_text())
    assert all(s["status"] in ("ok", "measured") for s in plan["stages"]), plan["stages"]

    # the plan's jobs per stage are the comparison's DAG
    dag = Counter()
    for rule, n in planned(wd, "--forceall", target).items():
        if rule in STAGE_OF_RULE:
            dag[STAGE_OF_RULE[rule]] += n
    assert {s["stage"]: s["jobs"] for s in plan["stages"]} == dict(dag)
    printed = subprocess.run([sys.executable, "-m", "detnas", "plan", str(wd / "results/shapes_fpn/plan.json")],
                             capture_output=True, text=True, check=True).stdout
    assert "pretrain_supernet" in printed and max(len(line) for line in printed.splitlines()) <= 100

    # nothing of the rehearsal counts as a result: every training job is still to run, from step 0
    todo = planned(wd, target)
    assert todo["pretrain_supernet"] == 1 and todo["finetune_supernet"] == 2 and todo["retrain_pretrain"] == dag["retrain_pretrain"]
    snakemake(wd, "--cores", "2", "results/pretrain/micro/supernet.pt")
    metrics = json.loads((wd / "results/pretrain/micro/metrics.json").read_text())
    assert metrics["iterations"] == 10 and metrics["history"][0]["step"] <= 10
    assert "resum" not in (wd / "results/logs/pretrain_supernet/micro.log").read_text().lower()

    # a stage that fails in rehearsal is in the plan as failed, with its error; the plan completes
    (wd / "results/shapes_fpn/rehearsal/retrain_finetune/detector.pt").unlink()
    snakemake(wd, "--cores", "2", "results/shapes_fpn/plan.json", "-R", "rehearse_evaluate")
    plan = json.loads((wd / "results/shapes_fpn/plan.json").read_text())
    evaluate = {s["stage"]: s for s in plan["stages"]}["evaluate"]
    assert evaluate["status"] == "failed" and "detector.pt" in evaluate["error"], evaluate
    assert any("evaluate" in f and "detector.pt" in f for f in plan["flags"]), plan["flags"]
