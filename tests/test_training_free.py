"""The training-free baselines and the published architectures in the workflow: every method reaches
final.json and the comparison, the ranking scores each, a published architecture retrains through
the same rules, and one outside the experiment's space or budget is refused at DAG build."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import scipy.stats
import yaml

from workflow import ROOT, edit_config, make_workdir, planned, snakemake

TRAINING_FREE = ["flops_max", "params_max", "synflow", "naswot", "zico", "mae_entropy"]
SCORES = ["flops", "params", "synflow", "naswot", "zico", "mae_entropy"]


@pytest.mark.slow
def test_every_training_free_method_reaches_final_json_the_comparison_and_the_ranking(micro_run):
    exp = micro_run / "results/shapes_fpn"
    finals = {m: json.loads((exp / m / "final.json").read_text()) for m in TRAINING_FREE}
    for m, f in finals.items():
        assert f["method"] == m and f["mflops"] <= 40 and 0.0 <= f["AP"] <= 1.0, m
    for proxy in TRAINING_FREE[2:]:
        arch = json.loads((exp / proxy / "search/arch.json").read_text())
        assert arch["fitness_metric"] == proxy and arch["evaluations"] == 4 * 2 * 2  # the search's budget
        assert arch["seconds_per_candidate"] > 0
        history = pd.read_csv(exp / proxy / "search/history.csv", dtype={"arch": str})
        assert (history["mflops"] <= 40).all() and history["fitness"].max() == pytest.approx(arch["fitness"])
    table = pd.read_csv(exp / "comparison.csv", dtype={"arch": str}).set_index("method")
    assert set(TRAINING_FREE) <= set(table.index)
    assert table.loc["flops_max", "network"].startswith("control: the feasible architecture with the most backbone FLOPs")
    assert table.loc["synflow", "network"].startswith("training-free: EA with SynFlow")
    assert table["outside_budget"].isna().all()  # no reference outside the budget in the micro config

    # ranking.json: tau and rho of every score over every point and over the random architectures alone,
    # each equal to scipy's on the score's own pairs
    ranking = json.loads((exp / "ranking.json").read_text())
    assert set(ranking["training_free"]) == set(SCORES)
    randoms = [p for p in ranking["points"] if any(m.startswith("random_arch_") for m in p["methods"])]
    assert len(randoms) == 3 and ranking["random_archs"]["labels"] == [p["label"] for p in randoms]
    for score in SCORES:
        for points, c in ((ranking["points"], ranking["training_free"][score]),
                          (randoms, ranking["random_archs"]["scores"][score])):
            x = [p["fitness"][score]["value"] for p in points]
            y = [p["test_value"] for p in points]
            assert c["n"] == len(points) >= 3, score
            if c["kendall_tau"] is None:  # a side constant over the points: the reason says so
                assert "same value" in c["reason"], (score, c)
                continue
            assert c["kendall_tau"] == pytest.approx(scipy.stats.kendalltau(x, y).statistic, abs=1e-12), score
            assert c["spearman_rho"] == pytest.approx(scipy.stats.spearmanr(x, y).statistic, abs=1e-12), score
    # the controls' scores are the counts of the architectures' final.json
    by_arch = {p["arch"]: p for p in ranking["points"]}
    f = finals["params_max"]
    assert by_arch[f["arch"]]["fitness"]["params"]["value"] == pytest.approx(f["backbone_params_m"])
    assert by_arch[f["arch"]]["fitness"]["flops"]["value"] == pytest.approx(f["mflops"])
    assert set(ranking["random_archs"]["scores"]) == {"detection", "classification", *SCORES}


def _small_experiment(wd, published=(), references=()):
    """The micro config plus `small_fpn`: the micro experiment on the paper's 300M space (32 px)."""
    path = wd / "config" / "config.yaml"
    config = yaml.safe_load(path.read_text())
    config["pretrain"]["micro_small"] = {**config["pretrain"]["micro"], "space": "small"}
    e = json.loads(json.dumps(config["experiments"]["shapes_fpn"]))
    e["pretrain"] = "micro_small"
    e["search"]["max_mflops"] = 340
    e["training_free"] = {"methods": []}
    e["published"], e["references"] = list(published), list(references)
    config["experiments"]["small_fpn"] = e
    path.write_text(yaml.safe_dump(config, sort_keys=False))


def test_a_published_architecture_outside_the_space_or_budget_is_refused_at_dag_build(tmp_path):
    wd = make_workdir(tmp_path / "wd")
    # a target of another space: refused with its space, the experiment's, and the key that would allow it
    out = snakemake(wd, "-n", "results/shapes_fpn/published_coco_fpn_300m/final.json", check=False)
    assert out.returncode != 0
    assert ("coco_fpn_300m is an architecture of space 'small', the experiment searches space 'tiny'" in out.stderr
            and "experiments.shapes_fpn.references" in out.stderr), out.stderr[-2000:]
    # listed in the config: the key path names the entry, before any job
    edit_config(wd, "    random_archs: {count: 3", "    published: [coco_fpn_300m]\n    random_archs: {count: 3")
    out = snakemake(wd, "-n", check=False)
    assert out.returncode != 0 and "experiments.shapes_fpn.published[0]: coco_fpn_300m" in out.stderr, out.stderr[-2000:]
    # over the FLOPs bounds in its own space: refused with its MFLOPs and the bounds
    wd2 = make_workdir(tmp_path / "wd2")
    _small_experiment(wd2)
    edit_config(wd2, "max_mflops: 340", "max_mflops: 250")
    out = snakemake(wd2, "-n", "results/small_fpn/published_coco_fpn_300m/final.json", check=False)
    assert out.returncode != 0 and "backbone MFLOPs, outside the search's bounds [0, 250" in out.stderr, out.stderr[-2000:]
    # as a reference it is planned: architecture, retraining, evaluation
    jobs = planned(wd2, "results/small_fpn/reference_coco_fpn_300m/final.json")
    assert jobs["published_arch"] == 1 and jobs["retrain_pretrain"] == 1 and jobs["evaluate"] == 1
    # an unknown name is named with the known ones
    out = snakemake(wd2, "-n", "results/small_fpn/published_nonesuch/final.json", check=False)
    assert out.returncode != 0 and "unknown published architecture 'nonesuch'" in out.stderr, out.stderr[-2000:]


@pytest.mark.slow
def test_a_published_architecture_of_the_space_retrains_through_the_same_rules(tmp_path):
    wd = make_workdir(tmp_path / "wd")
    _small_experiment(wd, published=["coco_fpn_300m"], references=["detnasnet"])
    jobs = planned(wd, "results/small_fpn/published_coco_fpn_300m/final.json")
    assert {k: jobs[k] for k in ("published_arch", "retrain_pretrain", "retrain_finetune", "evaluate")} == \
        {"published_arch": 1, "retrain_pretrain": 1, "retrain_finetune": 1, "evaluate": 1}
    snakemake(wd, "--cores", "2", "results/small_fpn/published_coco_fpn_300m/final.json")
    final = json.loads((wd / "results/small_fpn/published_coco_fpn_300m/final.json").read_text())
    assert final["arch"] == "21202112331300313132" and final["space"] == "small" and final["published"] == "coco_fpn_300m"
    assert final["method"] == "published_coco_fpn_300m" and not final["reference"]
    # in the comparison: the published one named as such, the reference of the 1.3G space marked outside the budget
    comparison = planned(wd, "results/small_fpn/comparison.csv")
    assert comparison["published_arch"] == 1  # the reference's architecture (the published one is made)
    from detnas.methods import network_description

    assert network_description(final, max_mflops=340).startswith("published: DetNAS, COCO, Faster R-CNN + FPN")
    reference = {"method": "reference_detnasnet", "description": "DetNASNet (1.3G), COCO FPN", "reference": True}
    assert network_description(reference, max_mflops=340).endswith("(outside the budget)")


def test_the_schemas_published_names_are_the_packages():
    from detnas.archs import PUBLISHED

    schema = yaml.safe_load((ROOT / "workflow/schemas/config.schema.yaml").read_text())
    experiment = schema["properties"]["experiments"]["additionalProperties"]["properties"]
    for key in ("published", "references"):
        assert experiment[key]["items"]["enum"] == list(PUBLISHED), key
