"""The Snakemake DAG itself: planning every experiment, running stages, rerunning only what changed."""

import json

import pytest
import yaml

from workflow import ROOT, edit_config, make_workdir, planned, snakemake


def test_dry_run_plans_every_experiment(tmp_path):
    wd = make_workdir(tmp_path, ROOT / "config" / "config.yaml")
    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    targets = [f"results/pretrain/{e['pretrain']}/supernet.pt" for e in config["experiments"].values()]
    targets += [f"results/data/detection/{e['data']}/search_val.json" for e in config["experiments"].values()]
    jobs = planned(wd, *targets)
    assert jobs["pretrain_supernet"] == len({e["pretrain"] for e in config["experiments"].values()})
    assert jobs["split_detection"] == len({e["data"] for e in config["experiments"].values()})


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
def test_pretrain_target_runs_and_reruns_only_what_changed(tmp_path):
    wd = make_workdir(tmp_path)
    target = "results/pretrain/micro/supernet.pt"
    snakemake(wd, "--cores", "2", target, "results/data/detection/shapes/search_val.json")
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
