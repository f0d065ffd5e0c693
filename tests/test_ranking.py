"""Ranking quality: tau-b and rho as scipy computes them (ties included), the bootstrap interval, and
the stage: a fitness in a search history is reused as it is, only the others are scored."""

import csv
import json

import numpy as np
import pytest
import scipy.stats
import torch
from conftest import save_search_inputs

from detnas.ranking import average_ranks, bootstrap_ci, correlate, kendall_tau_b, spearman_rho
from detnas.space import get_space
from detnas.stages.ranking import history_fitness, ranking_points, run_ranking_stage

SETTINGS = {"population": 4, "parents": 2, "generations": 2, "max_mflops": 40, "recalibration_images": 4,
            "eval_images": 6, "batch_size": 4, "seed": 0}


# -- statistics -------------------------------------------------------------------------------------

def test_tau_b_and_rho_equal_scipy_with_and_without_ties():
    rng = np.random.default_rng(0)
    for _ in range(100):
        n = int(rng.integers(3, 16))
        x = rng.integers(0, 4, n).astype(float)  # few values: many ties
        y = rng.integers(0, 5, n) + 0.5 * x
        if np.ptp(x) == 0 or np.ptp(y) == 0:
            continue
        assert kendall_tau_b(x, y) == pytest.approx(scipy.stats.kendalltau(x, y).statistic, abs=1e-12)
        assert spearman_rho(x, y) == pytest.approx(scipy.stats.spearmanr(x, y).statistic, abs=1e-12)
        z = rng.random(n)  # continuous: no ties
        assert kendall_tau_b(z, y) == pytest.approx(scipy.stats.kendalltau(z, y).statistic, abs=1e-12)
        assert spearman_rho(z, y) == pytest.approx(scipy.stats.spearmanr(z, y).statistic, abs=1e-12)


def test_by_hand_with_ties():
    x, y = [1, 2, 2, 3], [1, 3, 2, 3]
    # pairs: (0,1) (0,2) (0,3) (2,3) concordant; (1,2) tied in x; (1,3) tied in y; none discordant
    # tau-b = (4 - 0) / sqrt((6 - 1) * (6 - 1))
    assert kendall_tau_b(x, y) == pytest.approx(0.8)
    # average ranks x: 1, 2.5, 2.5, 4; y: 1, 3.5, 2, 3.5; centred products 3.75 over sqrt(4.5 * 4.5)
    assert list(average_ranks(x)) == [1, 2.5, 2.5, 4] and list(average_ranks(y)) == [1, 3.5, 2, 3.5]
    assert spearman_rho(x, y) == pytest.approx(5 / 6)
    assert kendall_tau_b([1, 2, 3], [30, 20, 10]) == spearman_rho([1, 2, 3], [30, 20, 10]) == -1
    assert list(average_ranks([5, 1, 5])) == [2.5, 1, 2.5]


def test_bootstrap_interval_holds_the_estimate_and_is_seeded():
    rng = np.random.default_rng(1)
    x = np.arange(15, dtype=float)
    y = x + rng.normal(0, 4, 15)
    c = correlate(x, y, samples=1000, seed=3)
    assert c.n == 15 and c.reason is None and c.bootstrap["used"] == 1000
    assert c.kendall_tau_ci90[0] <= c.kendall_tau <= c.kendall_tau_ci90[1]
    assert c.spearman_rho_ci90[0] <= c.spearman_rho <= c.spearman_rho_ci90[1]
    assert c.kendall_tau_ci90[0] < c.kendall_tau_ci90[1] and 0 < c.kendall_tau < 1
    assert correlate(x, y, samples=1000, seed=3) == c
    assert bootstrap_ci(x, y, samples=1000, seed=4)["kendall_tau"] != c.kendall_tau_ci90


def test_bootstrap_skips_resamples_with_a_constant_side():
    ci = bootstrap_ci([1.0, 2.0, 3.0], [1.0, 3.0, 2.0], samples=500, seed=0)
    # a resample of 3 pairs repeats one point with probability 1 - 6/27 - 3/27: some are all one value
    assert 0 < ci["used"] < 500
    assert -1 <= ci["kendall_tau"][0] <= ci["kendall_tau"][1] <= 1


def test_too_few_or_constant_gives_null_with_a_reason():
    for x, y, word in (([0.1, 0.2], [1.0, 2.0], "at least 3"), ([], [], "at least 3"),
                       ([0.3, 0.3, 0.3], [1.0, 2.0, 3.0], "same value")):
        c = correlate(x, y)
        assert c.kendall_tau is c.spearman_rho is c.kendall_tau_ci90 is c.spearman_rho_ci90 is None
        assert word in c.reason and c.n == len(x)
    with pytest.raises(ValueError, match="same length"):
        correlate([1, 2, 3], [1, 2])


# -- points and histories ---------------------------------------------------------------------------

def _final(method, arch, ap, top1, space="tiny"):
    return {"method": method, "arch": arch, "space": space, "primary_metric": "AP", "primary_value": ap, "AP": ap,
            "top1": top1}


def test_points_one_per_architecture_of_the_space():
    finals = [_final("detnas", "13203230", 0.3, 0.8), _final("scratch", "13203230", 0.2, 0.6),
              _final("shufflenetv2", "00000000", 0.4, 0.9, space="tiny@w1.0937"),
              _final("shufflenetv2_unscaled", "00000000", 0.1, 0.5)]
    points, excluded = ranking_points(finals, "tiny")
    assert [p["label"] for p in points] == ["detnas+scratch", "shufflenetv2_unscaled"]
    assert points[0]["methods"] == ["detnas", "scratch"] and points[0]["test_value"] == pytest.approx(0.25)
    assert points[0]["top1"] == pytest.approx(0.7) and points[0]["test_values"] == [0.3, 0.2]
    assert [e["method"] for e in excluded] == ["shufflenetv2"] and "tiny@w1.0937" in excluded[0]["reason"]


def _history(path, rows, repeat=False):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["repeat", "generation", "arch", "fitness"] if repeat else ["generation", "arch", "fitness"])
        for i, (arch, fitness) in enumerate(rows):
            w.writerow([i % 2, 0, arch, fitness] if repeat else [0, arch, fitness])
    return path


def test_history_keeps_leading_zeros_and_repeated_rows(tmp_path):
    h = _history(tmp_path / "h.csv", [("03232232", 0.25), ("11110000", 0.5), ("03232232", 0.25)], repeat=True)
    assert history_fitness([h]) == {"03232232": 0.25, "11110000": 0.5}
    bad = tmp_path / "bad.csv"
    bad.write_text("arch,score\n00000000,1\n")
    with pytest.raises(ValueError, match="arch and fitness"):
        history_fitness([bad])


# -- the stage with a counting scorer ---------------------------------------------------------------

class CountingBuild:
    """``build_scorer``'s stand-in: a fitness from the architecture's digits, every call recorded."""

    def __init__(self):
        self.built, self.scored = [], []

    def __call__(self, kind, supernet, val, recal, **common):
        self.built.append((kind, common["seed"], common["eval_images"]))

        def score(arch):
            self.scored.append((kind, str(arch)))
            return sum(arch.genes) / 100 + (0.5 if kind == "classification" else 0.0)

        return score, get_space("tiny")


def _write(path, obj):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))
    return path


@pytest.fixture(scope="module")
def mlflow_store(tmp_path_factory):
    """One MLflow store for the stage tests of this file: creating its tables takes seconds."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow')}/mlflow.db"


@pytest.fixture
def experiment_dir(tmp_path, monkeypatch, mlflow_store):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_store)
    r = tmp_path / "x"
    finals = [_write(r / f"{m}.json", _final(m, a, ap, t)) for m, a, ap, t in (
        ("detnas", "13203230", 0.30, 0.80), ("random", "01122233", 0.26, 0.84), ("clsnas", "12311333", 0.22, 0.90),
        ("scratch", "13203230", 0.20, 0.82), ("shufflenetv2_unscaled", "00000000", 0.10, 0.70),
        ("random_arch_1", "03232232", 0.28, 0.85), ("random_arch_2", "32211000", 0.21, 0.79))]
    finals.append(_write(r / "shufflenetv2.json", _final("shufflenetv2", "00000000", 0.4, 0.9, space="tiny@w1.0937")))
    for name in ("det.pt", "cls.pt"):
        torch.save({"space": "tiny"}, r / name)
    histories = {
        "detnas": _history(r / "detnas.csv", [("13203230", 0.031), ("03232232", 0.029), ("03232232", 0.029)],
                           repeat=True),
        "random": _history(r / "random.csv", [("01122233", 0.037), ("32211000", 0.026)]),
        # the scratch search scored another supernet: never read
        "scratch": _history(r / "scratch.csv", [("00000000", 0.9), ("12311333", 0.9)]),
        "clsnas": _history(r / "clsnas.csv", [("12311333", 0.52), ("13203230", 0.37), ("32211000", 0.45)]),
    }
    return r, finals, histories


def _stage(r, finals, histories, build, **more):
    return run_ranking_stage(
        SETTINGS, finals=finals, detection_supernet=r / "det.pt", detection_val=r / "val.json",
        detection_recal=r / "recal.json", detection_histories=[histories["detnas"], histories["random"]],
        classification_supernet=r / "cls.pt", classification_split=r / "split.json",
        classification_histories=[histories["clsnas"]], json_out=r / "ranking.json", png_out=r / "ranking.png",
        experiment="x", mlflow={"experiment": "x", "run_name": f"ranking {r.parent.name}"}, build=build, **more)


def test_stage_reuses_the_history_and_scores_only_the_rest(experiment_dir, mlflow_store, capsys):
    r, finals, histories = experiment_dir
    build = CountingBuild()
    result = _stage(r, finals, histories, build, bootstrap_samples=300)
    assert result == json.loads((r / "ranking.json").read_text())
    points = {p["label"]: p for p in result["points"]}
    assert list(points) == ["detnas+scratch", "random", "clsnas", "shufflenetv2_unscaled", "random_arch_1",
                            "random_arch_2"]
    assert [e["method"] for e in result["excluded"]] == ["shufflenetv2"]
    # every fitness in a history is the history's; only the archs no search met were scored, once each
    det = {label: p["fitness"]["detection"] for label, p in points.items()}
    assert det["detnas+scratch"] == {"value": 0.031, "source": "search history"}
    assert det["random_arch_1"] == {"value": 0.029, "source": "search history"}
    assert det["random"] == {"value": 0.037, "source": "search history"}
    assert det["random_arch_2"] == {"value": 0.026, "source": "search history"}
    assert det["clsnas"] == {"value": pytest.approx(0.17), "source": "computed"}
    assert det["shufflenetv2_unscaled"] == {"value": 0.0, "source": "computed"}  # not the scratch history's 0.9
    cls = {label: p["fitness"]["classification"] for label, p in points.items()}
    assert cls["clsnas"] == {"value": 0.52, "source": "search history"}
    assert cls["detnas+scratch"] == {"value": 0.37, "source": "search history"}
    assert sorted(build.scored) == sorted([("detection", "12311333"), ("detection", "00000000"),
                                           ("classification", "01122233"), ("classification", "00000000"),
                                           ("classification", "03232232")])
    assert build.built == [("detection", 0, 6), ("classification", 0, 6)]  # the search settings' seed and images
    # the duplicate is one point with the mean test value, not two tied ones
    assert points["detnas+scratch"]["test_value"] == pytest.approx(0.25)
    d = result["sides"]["detection"]
    assert d["n"] == 6 and d["metric"] == "AP" and d["bootstrap"]["samples"] == 300
    x = [det[k]["value"] for k in points]
    y = [points[k]["test_value"] for k in points]
    assert d["kendall_tau"] == pytest.approx(scipy.stats.kendalltau(x, y).statistic)
    assert d["spearman_rho"] == pytest.approx(scipy.stats.spearmanr(x, y).statistic)
    secondary = result["sides"]["classification"]["secondary"]
    assert secondary["metric"] == "top1" and secondary["n"] == 6
    assert (r / "ranking.png").stat().st_size > 10_000
    from mlflow.tracking import MlflowClient

    client = MlflowClient(mlflow_store)
    (run,) = client.search_runs([client.get_experiment_by_name("x").experiment_id],
                                filter_string=f"tags.mlflow.runName = 'ranking {r.parent.name}'")
    assert run.data.metrics["kendall_tau_detection"] == pytest.approx(d["kendall_tau"])
    assert run.data.metrics["n_classification"] == 6 and "spearman_rho_classification_top1" in run.data.metrics
    assert {a.path for a in client.list_artifacts(run.info.run_id)} == {"ranking.json", "ranking.png"}
    out = capsys.readouterr().out
    assert "[ranking detection] 1/2 12311333 (clsnas)" in out
    assert f"ranking (detection): kendall tau {d['kendall_tau']:.2f} [" in out and ", n 6" in out


def test_stage_with_everything_in_the_histories_builds_no_scorer(experiment_dir):
    r, finals, histories = experiment_dir
    build = CountingBuild()
    _history(histories["random"], [("01122233", 0.037), ("32211000", 0.026), ("12311333", 0.01), ("00000000", 0.02)])
    _history(histories["clsnas"], [(a, 0.1 * i) for i, a in enumerate(
        ["12311333", "13203230", "32211000", "01122233", "00000000", "03232232"])])
    result = _stage(r, finals, histories, build, bootstrap_samples=100)
    assert build.built == [] and build.scored == []
    assert {p["fitness"][s]["source"] for p in result["points"] for s in ("detection", "classification")} == {
        "search history"}


def test_stage_with_two_points_reports_null_statistics(experiment_dir, capsys):
    r, finals, histories = experiment_dir
    result = _stage(r, finals[:2], histories, CountingBuild(), bootstrap_samples=100)
    d = result["sides"]["detection"]
    assert d["n"] == 2 and d["kendall_tau"] is None and "at least 3" in d["reason"]
    assert "ranking (detection): n 2, no rank correlation" in capsys.readouterr().out
    assert (r / "ranking.png").is_file()


# -- the stage with the real scorers on tiny supernets ----------------------------------------------

@pytest.fixture(scope="module")
def supernets(det_source, cls_split, tmp_path_factory):
    """An untrained tiny detection supernet (saved as a fine-tuned one) and classification supernet,
    with the search split, the recalibration annotations and the classification split."""
    from detnas.io import read_json, save_checkpoint
    from detnas.supernet import Supernet

    root = save_search_inputs(det_source, tmp_path_factory.mktemp("ranking"), supernet_name="det.pt")
    classes = read_json(cls_split)["classes"]
    cls = Supernet(get_space("tiny"), num_classes=len(classes))
    save_checkpoint({"kind": "supernet", "space": "tiny", "arch": None, "classes": classes, "dropout": 0.1,
                     "image_size": 32, "state_dict": cls.state_dict()}, root / "cls.pt")
    return root


def test_stage_fitness_is_the_search_scorers(supernets, cls_split, tmp_path, monkeypatch, mlflow_store):
    from detnas.scoring import build_scorer

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_store)
    archs = ["00000000", "12301230", "33221100"]
    finals = [_write(tmp_path / f"{i}.json", _final(f"random_arch_{i}", a, 0.1 * i, 0.5 + 0.1 * i))
              for i, a in enumerate(archs, start=1)]
    det_history = _history(tmp_path / "detnas.csv", [(archs[0], 0.123), (archs[1], 0.456)])
    cls_history = _history(tmp_path / "clsnas.csv", [(archs[2], 0.789)])
    result = run_ranking_stage(
        SETTINGS, finals=finals, detection_supernet=supernets / "det.pt", detection_val=supernets / "search_val.json",
        detection_recal=supernets / "supernet_train.json", detection_histories=[det_history],
        classification_supernet=supernets / "cls.pt", classification_split=cls_split,
        classification_histories=[cls_history], json_out=tmp_path / "ranking.json", png_out=tmp_path / "ranking.png",
        experiment="x", mlflow={"experiment": "x", "run_name": "ranking"}, threads=1, device="cpu",
        bootstrap_samples=100)
    det = [p["fitness"]["detection"] for p in result["points"]]
    cls = [p["fitness"]["classification"] for p in result["points"]]
    assert [d["value"] for d in det[:2]] == [0.123, 0.456] and det[2]["source"] == "computed"
    assert cls[2] == {"value": 0.789, "source": "search history"}
    assert [c["source"] for c in cls[:2]] == ["computed", "computed"]
    # a computed fitness is what the search's scorer gives that architecture
    common = dict(eval_images=SETTINGS["eval_images"], recalibration_images=SETTINGS["recalibration_images"],
                  batch_size=SETTINGS["batch_size"], seed=SETTINGS["seed"], device=torch.device("cpu"))
    scorer, space = build_scorer("detection", supernets / "det.pt", supernets / "search_val.json",
                                 supernets / "supernet_train.json", **common)
    assert det[2]["value"] == pytest.approx(scorer(space.parse(archs[2])), abs=1e-9)
    scorer, space = build_scorer("classification", supernets / "cls.pt", cls_split, None, **common)
    assert [c["value"] for c in cls[:2]] == pytest.approx([scorer(space.parse(a)) for a in archs[:2]], abs=1e-9)
    assert result["sides"]["detection"]["n"] == result["sides"]["classification"]["n"] == 3


def test_stage_training_free_scores_equal_scipy_over_every_point_and_the_random_archs(experiment_dir):
    r, finals, histories = experiment_dir
    # a third random architecture, and one a search also chose (it stays in the random sample)
    finals.append(_write(r / "random_arch_3.json", _final("random_arch_3", "12311333", 0.24, 0.88)))
    result = _stage(r, finals, histories, CountingBuild(), bootstrap_samples=200,
                    training_free={"proxies": ["synflow"], "input_size": 32, "seed": 0})
    points = result["points"]
    assert set(result["training_free"]) == {"flops", "params", "synflow"}
    randoms = [p for p in points if any(m.startswith("random_arch_") for m in p["methods"])]
    assert result["random_archs"]["labels"] == [p["label"] for p in randoms] == [
        "clsnas+random_arch_3", "random_arch_1", "random_arch_2"]
    for score in ("flops", "params", "synflow"):
        for sample, c in ((points, result["training_free"][score]), (randoms, result["random_archs"]["scores"][score])):
            x = [p["fitness"][score]["value"] for p in sample]
            y = [p["test_value"] for p in sample]
            assert c["n"] == len(sample) and c["kendall_tau"] is not None, score
            assert c["kendall_tau"] == pytest.approx(scipy.stats.kendalltau(x, y).statistic, abs=1e-12), score
            assert c["spearman_rho"] == pytest.approx(scipy.stats.spearmanr(x, y).statistic, abs=1e-12), score
            lo, hi = c["kendall_tau_ci90"]
            assert -1 <= lo <= hi <= 1
    # the controls' scores are the space's counts
    from detnas.flops import cost_table
    from detnas.space import get_space

    space = get_space("tiny")
    table = cost_table(space)
    for p in points:
        assert p["fitness"]["flops"]["value"] == pytest.approx(table.backbone_macs(space.parse(p["arch"])) / 1e6)
    assert set(result["random_archs"]["scores"]) == {"detection", "classification", "flops", "params", "synflow"}
