"""The ``ranking`` stage: does the supernet rank architectures as standalone retraining does?
-> ranking.json and ranking.png.

Every retrained architecture of an experiment that is a path of the supernet (its final.json's space
is the supernet's) is one point: its supernet fitness against its test metric after retraining. Two
supernets give a fitness, each with the search's own scorer and settings:

- detection: mmAP on the search split of the detection supernet fine-tuned from the pre-trained
  supernet, after BN recalibration (the fitness of DetNAS and random search);
- classification: top-1 on held-out training images of the pre-trained classification supernet,
  after BN recalibration (the fitness of ClsNAS).

A scorer gives an architecture the same fitness every time (its recalibration is seeded by the
architecture), so a fitness the search already computed is read from its history.csv and only the
architectures the search never met are scored.

Beside the supernets, the training-free scores of the same architectures (``training_free``): the
controls' counts (backbone MFLOPs and parameters) and each proxy of ``detnas.proxies`` the
experiment runs, computed on each architecture's own randomly initialized network. Every score, the
supernets' too, is also correlated over Table 5's random architectures alone (``random_archs``): the
unbiased sample, since the searched winners are the selected maxima of one score.
"""

from __future__ import annotations

import csv
import math
import time
from pathlib import Path
from typing import Any, Callable

from ..distributed import init_distributed, set_threads
from ..formatting import fmt_number
from ..io import load_checkpoint, read_json, write_json_atomic
from ..plots import plot_ranking
from ..ranking import correlate
from ..precision import Precision
from ..scoring import build_scorer
from ..tracking import StageRun
from .search import StageSearchSettings

__all__ = ["CONTROL_SCORES", "FITNESS", "history_fitness", "random_arch_points", "ranking_points", "run_ranking_stage"]

FITNESS = {  # side -> (the fitness's metric, what it is)
    "detection": ("mmAP", "mmAP on the search split of the detection supernet fine-tuned from the pre-trained "
                          "supernet, after BN recalibration (DetNAS's fitness)"),
    "classification": ("top-1", "top-1 on held-out training images of the pre-trained classification supernet, "
                                "after BN recalibration (ClsNAS's fitness)"),
}
CONTROL_SCORES = {  # the controls' scores: what flops_max and params_max maximize
    "flops": ("MFLOPs", "backbone MFLOPs (MACs / 1e6 at 224 px; the score flops_max maximizes)"),
    "params": ("M params", "backbone parameters in millions (the score params_max maximizes)"),
}
FROM_HISTORY, COMPUTED, TRAINING_FREE = "search history", "computed", "training-free"
RANDOM_SAMPLE = ("Table 5's random architectures alone (random_arch_<i>): drawn uniformly under the FLOPs bounds, the "
                 "sample no score selected")
DUPLICATES = ("one point per distinct architecture: methods that chose the same one share a point (label and "
              "methods name them all; test value and top1 are their mean), so a repeated pair cannot pose as a tie")


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _mean(values: list[Any]) -> float | None:
    kept = [float(v) for v in values if _finite(v)]
    return math.fsum(kept) / len(kept) if kept else None


def ranking_points(finals: list[dict[str, Any]], space: str,
                   metric: str = "AP") -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The points of ``finals`` (final.json dicts) that are paths of ``space``, one per distinct
    architecture in order of first appearance, and the finals left out with the reason. A point's
    test value is the finals' ``primary_value`` (named ``metric``)."""
    points: dict[str, dict[str, Any]] = {}
    excluded = []
    for f in finals:
        if f.get("space") != space:
            excluded.append({"method": f.get("method"), "arch": f.get("arch"), "space": f.get("space"),
                             "reason": f"space {f.get('space')!r} is not the supernet's ({space!r}): not a path of it"})
            continue
        p = points.setdefault(str(f["arch"]), {"arch": str(f["arch"]), "methods": [], "test_values": [], "top1s": []})
        p["methods"].append(f.get("method"))
        p["test_values"].append(f.get("primary_value", f.get(f.get("primary_metric") or "AP")))
        p["top1s"].append(f.get("top1"))
    out = []
    for p in points.values():
        out.append({"label": "+".join(str(m) for m in p["methods"]), "methods": p["methods"], "arch": p["arch"],
                    "test_metric": metric, "test_value": _mean(p["test_values"]), "test_values": p["test_values"],
                    "top1": _mean(p["top1s"]), "fitness": {}})
    return out, excluded


def history_fitness(paths: list[Path]) -> dict[str, float]:
    """Architecture -> fitness in the search histories (CSV with ``arch`` and ``fitness`` columns).

    An architecture met in several rows (generations, repeats, searches on the same supernet) was
    scored once and has one fitness; should the rows disagree, their mean.
    """
    seen: dict[str, list[float]] = {}
    for path in paths:
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            if not {"arch", "fitness"} <= set(reader.fieldnames or []):
                raise ValueError(f"{path}: a search history needs the columns arch and fitness, "
                                 f"has {reader.fieldnames}")
            for row in reader:
                if row["fitness"] not in ("", None):
                    seen.setdefault(row["arch"], []).append(float(row["fitness"]))  # arch kept a string: "03232232"
    return {a: math.fsum(v) / len(v) for a, v in seen.items()}


def _supernet_space(path: Path) -> str:
    ckpt = load_checkpoint(path)
    if "space" not in ckpt:
        raise ValueError(f"{path}: a supernet checkpoint names its space, this one does not")
    return str(ckpt["space"])


def _side_fitness(side: str, points: list[dict[str, Any]], known: dict[str, float],
                  make_scorer: Callable[[], tuple[Callable[[Any], float], Any]]) -> None:
    """Set ``point["fitness"][side]`` of every point: from ``known`` (the search histories), else
    scored; the scorer is built only when some architecture is missing."""
    todo = [p for p in points if p["arch"] not in known]
    print(f"ranking ({side}): {len(points) - len(todo)} of {len(points)} fitness values from the search history, "
          f"{len(todo)} to compute", flush=True)
    for p in points:
        if p["arch"] in known:
            p["fitness"][side] = {"value": known[p["arch"]], "source": FROM_HISTORY}
    if not todo:
        return
    t = time.perf_counter()
    scorer, space = make_scorer()
    print(f"ranking ({side}): scorer ready in {time.perf_counter() - t:.1f} s", flush=True)
    for i, p in enumerate(todo, start=1):
        t = time.perf_counter()
        value = float(scorer(space.parse(p["arch"])))
        p["fitness"][side] = {"value": value, "source": COMPUTED}
        print(f"[ranking {side}] {i}/{len(todo)} {p['arch']} ({p['label']}): fitness {fmt_number(value)} "
              f"({time.perf_counter() - t:.1f} s)", flush=True)


def _correlation(points: list[dict[str, Any]], side: str, metric_key: str, metric: str,
                 samples: int, seed: int) -> dict[str, Any]:
    pairs = [(p["fitness"][side]["value"], p[metric_key]) for p in points
             if _finite(p["fitness"].get(side, {}).get("value")) and _finite(p[metric_key])]
    c = correlate([x for x, _ in pairs], [y for _, y in pairs], samples=samples, seed=seed)
    return {"metric": metric, **c.as_dict()}


def random_arch_points(points: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The points of Table 5's random architectures (a method ``random_arch_<i>`` chose them; a search that
    chose the same architecture shares the point, which stays a uniform draw)."""
    return [p for p in points if any(str(m).startswith("random_arch_") for m in p["methods"])]


def _training_free_scores(points: list[dict[str, Any]], space_name: str, tf: dict[str, Any], device: Any) -> dict[str, Any]:
    """Set every point's control counts and proxy scores (``fitness[<score>]``); returns score ->
    (short metric, description) for the scores set."""
    from ..flops import cost_table
    from ..proxies import PROXIES
    from ..scoring import proxy_scorer
    from ..space import get_space

    space = get_space(space_name)
    table = cost_table(space)
    for p in points:
        arch = space.parse(p["arch"])
        p["fitness"]["flops"] = {"value": table.backbone_macs(arch) / 1e6, "source": TRAINING_FREE}
        p["fitness"]["params"] = {"value": table.backbone_params(arch) / 1e6, "source": TRAINING_FREE}
    scores = dict(CONTROL_SCORES)
    for name in tf.get("proxies") or []:
        t = time.perf_counter()
        scorer = proxy_scorer(name, space, Path(tf["data"]) if tf.get("data") else None, input_size=int(tf["input_size"]),
                              batches=int(tf.get("batches", 2)), batch_size=int(tf.get("batch_size", 8)),
                              seed=int(tf.get("seed", 0)), device=device)
        for p in points:
            p["fitness"][name] = {"value": float(scorer(space.parse(p["arch"]))), "source": TRAINING_FREE}
        print(f"ranking ({name}): {len(points)} architectures scored in {time.perf_counter() - t:.1f} s", flush=True)
        scores[name] = (name, PROXIES[name].description)
    return scores


def summary_lines(ranking: dict[str, Any]) -> list[str]:
    """The headline figures of a ranking.json, one line per side (what ``detnas report`` prints)."""
    lines = [_summary(side, c) for side, c in ranking["sides"].items()]
    lines += [_summary(name, c) for name, c in (ranking.get("training_free") or {}).items()]
    random_only = (ranking.get("random_archs") or {}).get("scores") or {}
    return lines + [_summary(f"{name}, random architectures alone", c) for name, c in random_only.items()]


def _summary(side: str, c: dict[str, Any]) -> str:
    """One line: ``ranking (detection): kendall tau 0.43 [0.10, 0.71], spearman rho 0.55 [...], n 7``."""
    if c["kendall_tau"] is None:
        return f"ranking ({side}): n {c['n']}, no rank correlation: {c['reason']}"

    def ci(v: list[float] | None) -> str:
        return "" if v is None else f" [{v[0]:.2f}, {v[1]:.2f}]"

    return (f"ranking ({side}): kendall tau {c['kendall_tau']:.2f}{ci(c['kendall_tau_ci90'])}, "
            f"spearman rho {c['spearman_rho']:.2f}{ci(c['spearman_rho_ci90'])}, n {c['n']}")


def run_ranking_stage(
    settings: dict[str, Any],
    *,
    finals: list[Path],
    detection_supernet: Path,
    detection_val: Path,
    detection_recal: Path,
    detection_histories: list[Path],
    classification_supernet: Path,
    classification_split: Path,
    classification_histories: list[Path],
    json_out: Path,
    png_out: Path,
    experiment: str,
    mlflow: dict[str, Any],
    threads: int = 0,
    device: str = "auto",
    bootstrap_samples: int = 2000,
    bootstrap_seed: int = 0,
    build: Callable[..., tuple[Callable[[Any], float], Any]] = build_scorer,
    training_free: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Pair each retrained architecture's supernet fitness with its test metric; write ranking.json
    (points, Kendall tau-b and Spearman rho per supernet with 90% bootstrap intervals) and ranking.png.

    ``settings``: the experiment's ``search`` settings (the scorers' images, batch size and seed);
    ``detection_histories`` / ``classification_histories``: history.csv of the searches that scored
    paths of that very supernet (detnas and random / clsnas); ``build``: how a scorer is built
    (``detnas.scoring.build_scorer``'s signature). ``training_free``: {"proxies": [...], "input_size",
    "batches", "batch_size", "seed", "data": detection training annotations}: the training-free scores
    beside the supernets' (the controls' counts always).
    """
    s = StageSearchSettings.from_dict({**settings, "method": "detnas"})
    space = _supernet_space(detection_supernet)
    cls_space = _supernet_space(classification_supernet)
    if cls_space != space:
        raise ValueError(f"the detection supernet {detection_supernet} is of space {space!r}, the classification "
                         f"supernet {classification_supernet} of {cls_space!r}: they must be the same supernet")
    rows = [read_json(p) for p in finals]
    metrics = sorted({str(r.get("primary_metric") or "AP") for r in rows})
    if len(metrics) > 1:
        raise ValueError(f"the final.json files have different primary metrics {metrics}; evaluate them again")
    metric = metrics[0] if metrics else "AP"
    points, excluded = ranking_points(rows, space, metric)
    for e in excluded:
        print(f"ranking: {e['method']} ({e['arch']}) left out: {e['reason']}", flush=True)
    set_threads(threads)
    dev = init_distributed(device).device  # one process: only the device choice
    # the search's precision: a fitness computed here is the number the search would have computed
    common = dict(eval_images=s.eval_images, recalibration_images=s.recalibration_images, batch_size=s.batch_size,
                  seed=s.seed, device=dev, precision=Precision.resolve(s.amp, s.channels_last, dev))
    sides = {
        "detection": (detection_histories,
                      lambda: build("detection", detection_supernet, detection_val, detection_recal, **common)),
        "classification": (classification_histories,
                           lambda: build("classification", classification_supernet, classification_split, None,
                                         **common)),
    }
    with StageRun(**mlflow, params={**settings, "space": space, "points": [p["label"] for p in points],
                                    "bootstrap_samples": bootstrap_samples, "bootstrap_seed": bootstrap_seed}) as run:
        correlations: dict[str, Any] = {}
        for side, (histories, make_scorer) in sides.items():
            _side_fitness(side, points, history_fitness(histories), make_scorer)
            short, description = FITNESS[side]
            c = _correlation(points, side, "test_value", metric, bootstrap_samples, bootstrap_seed)
            correlations[side] = {"fitness": description, "fitness_metric": short, **c}
        # ClsNAS's fitness is a classification score: also against the retrained classifier's top-1
        correlations["classification"]["secondary"] = {
            "fitness_metric": FITNESS["classification"][0],
            **_correlation(points, "classification", "top1", "top1", bootstrap_samples, bootstrap_seed)}
        scores = _training_free_scores(points, space, training_free or {}, dev)
        free = {name: {"fitness": description, "fitness_metric": short,
                       **_correlation(points, name, "test_value", metric, bootstrap_samples, bootstrap_seed)}
                for name, (short, description) in scores.items()}
        randoms = random_arch_points(points)
        random_only = {name: _correlation(randoms, name, "test_value", metric, bootstrap_samples, bootstrap_seed)
                       for name in [*correlations, *free]}
        result = {
            "experiment": experiment,
            "supernet": "pretrained",
            "supernets": {"detection": str(detection_supernet), "classification": str(classification_supernet)},
            "space": space,
            "metric": metric,
            "duplicates": DUPLICATES,
            "points": points,
            "excluded": excluded,
            "sides": correlations,
            "training_free": free,
            "random_archs": {"sample": RANDOM_SAMPLE, "labels": [p["label"] for p in randoms], "scores": random_only},
        }
        write_json_atomic(result, json_out)
        plot_ranking(result, png_out, title=f"{experiment}: supernet fitness vs retrained test {metric} "
                     f"(space {space}); detection supernet fine-tuned from the pre-trained supernet")
        named = {**correlations, "classification_top1": correlations["classification"]["secondary"], **free,
                 **{f"{k}_random_archs": v for k, v in random_only.items()}}
        for side, c in named.items():
            values = {f"kendall_tau_{side}": c["kendall_tau"], f"spearman_rho_{side}": c["spearman_rho"],
                      f"n_{side}": c["n"]}
            run.log_metrics({k: float(v) for k, v in values.items() if v is not None}, 0)
        run.log_artifacts(json_out, png_out)
    for side, c in correlations.items():
        print(_summary(side, c), flush=True)
    print(_summary("classification vs retrained top1", correlations["classification"]["secondary"]), flush=True)
    for name, c in free.items():
        print(_summary(name, c), flush=True)
    for name, c in random_only.items():
        print(_summary(f"{name}, random architectures alone", c), flush=True)
    return result
