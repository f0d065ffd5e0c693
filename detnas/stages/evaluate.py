"""The ``evaluate`` stage: COCO metrics (and, for VOC, the VOC APs) of a retrained detector on the test
split -> ``final.json``."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

from ..detectors import detector_from_checkpoint
from ..distributed import init_distributed, peak_gpu_memory_mb, set_threads
from ..coco_eval import COCO_METRICS, Evaluator, results_dicts
from ..evaluate import DetectionImages, detect_array, inference_precision
from ..flops import cost_table
from ..formatting import fmt_number
from ..health import chance_health, health_summary, shifted_detections, training_health
from ..io import read_json, write_json_atomic
from ..plots import plot_detections
from ..space import get_space, split_space_name
from ..tracking import StageRun
from ..voc_eval import VOC_METRICS, voc_ap

__all__ = ["PRIMARY_METRICS", "run_evaluate"]

# what --primary may name: a COCOeval figure (COCO datasets: AP) or a VOC one (VOC: mAP50_voc07)
PRIMARY_METRICS = COCO_METRICS + VOC_METRICS


def _metric_key(prefix: str, name: str) -> str:
    """``prefix/name`` as an MLflow metric key. MLflow rejects (and so drops the whole batch of) a key
    with characters other than letters, digits, ``_ - . /`` and space, or one that a path
    normalization would change; a class name of one's own data may hold any of them."""
    clean = re.sub(r"[^\w.\- ]", "_", name)
    return f"{prefix}/{'_' if clean in ('', '.', '..') else clean}"


# the network's figures in final.json that MLflow gets next to the detection metrics
_COST_AND_CLASSIFIER = ("mflops", "backbone_params_m", "classifier_params_m", "top1", "predicted_latency_ms",
                        "latency_ms")


PICTURES = 4  # test images drawn with their detections


def _draw(data: DetectionImages, results: list[dict[str, Any]], classes: dict[int, str], path: Path, *,
          title: str) -> None:
    """The first ``PICTURES`` test images (by id), ground truth above, detections below."""
    ids = data.image_ids[:PICTURES]
    images = [im.permute(1, 2, 0).numpy() for im in data.decoded(0, len(ids))]  # (H, W, 3) uint8
    truth = [[a for a in data.coco.imgToAnns[i] if not a.get("iscrowd")] for i in ids]
    found: dict[int, list[dict[str, Any]]] = {i: [] for i in ids}
    for r in results:
        if r["image_id"] in found:
            found[r["image_id"]].append(r)
    plot_detections(images, truth, [found[i] for i in ids], classes, path, title=title)


def _latency_fields(path: Path | None) -> dict[str, Any]:
    if path is None:
        return {}
    measured = read_json(path)
    return {"predicted_latency_ms": measured.get("predicted_ms"), "latency_ms": measured.get("measured_ms"),
            "latency": measured}


def _tracked(final: dict[str, Any]) -> dict[str, float]:
    """The run's MLflow metrics, from its final.json: AP..APl (and, for VOC, mAP50_voc07/12), the
    primary metric under its name and again as ``primary``, each class's VOC APs as
    ``AP50_voc07/<class>``, ``mflops``, ``backbone_params_m``, ``classifier_params_m`` and the
    classifier's ``top1``. A figure that is undefined (null, or absent) is left out: MLflow has no
    "undefined", and a 0 would read as a result."""
    figures = {k: final.get(k) for k in (*PRIMARY_METRICS, *_COST_AND_CLASSIFIER)}
    figures["primary"] = final.get("primary_value")
    for name, row in (final.get("voc_per_class") or {}).items():
        for key, prefix in (("ap_voc07", "AP50_voc07"), ("ap_voc12", "AP50_voc12")):
            figures[_metric_key(prefix, name)] = row[key]
    return {k: float(v) for k, v in figures.items() if v is not None and v == v}  # v != v: NaN


def run_evaluate(
    *,
    detector: Path,
    test_file: Path,
    arch_file: Path,
    classifier_metrics: Path,
    out: Path,
    info: dict[str, Any],
    primary_metric: str,
    batch_size: int,
    mlflow: dict[str, Any],
    threads: int,
    device: str = "auto",
    amp: str | bool | None = None,
    channels_last: bool | str | None = None,
    detector_metrics: Path | None = None,
    pictures: Path | None = None,
    max_images: int | None = None,
    latency: Path | None = None,
) -> None:
    """Evaluate on every test image (``max_images``: that many of them, drawn with seed 0: a
    rehearsal's); ``final.json`` gets the fields of PIPELINE.md, with ``test_images`` the images
    evaluated and ``test_images_total`` the test split's.

    ``info``: experiment, method, dataset, detector (names, copied into final.json).
    ``primary_metric``: the headline figure, one of ``PRIMARY_METRICS``; final.json names it in
    ``primary_metric`` and holds its value in ``primary_value``. A VOC name (``mAP50_voc07``, the
    paper's VOC metric) also computes both VOC figures and the per-class APs (``voc_per_class``),
    with difficult objects (``iscrowd: 1`` in the internal format) ignored; the COCOeval figures are
    always there. A figure that is undefined (no ground truth of that kind) is null.

    ``latency``: the network's latency.json (``detnas.stages.latency.run_arch_latency``): final.json
    carries its backbone's predicted (``predicted_latency_ms``, the table's sum) and measured
    (``latency_ms``) latency on the deployment device, and the whole record as ``latency``.

    ``amp``, ``channels_last`` (``detnas.precision``): None takes the setting the detector was
    fine-tuned with (saved in its checkpoint; "auto" for a checkpoint without it), resolved for this
    device.

    ``health`` (``detnas.health``): the classifier's and (with ``detector_metrics``, the detector's
    fine-tuning metrics.json) the detector's loss trend, and the test AP50 against chance.
    ``pictures``: a PNG of the first ``PICTURES`` test images, ground truth and detections side by side.
    """
    if primary_metric not in PRIMARY_METRICS:
        raise ValueError(f"primary metric must be one of {', '.join(PRIMARY_METRICS)}, got {primary_metric!r}")
    dist = init_distributed(device)
    set_threads(threads, 1)
    model, meta = detector_from_checkpoint(detector, dist.device)
    precision = inference_precision(meta, dist.device, amp=amp, channels_last=channels_last)
    precision.prepare(model)
    chosen = read_json(arch_file)
    if meta["arch"] != chosen["arch"]:
        raise ValueError(f"{detector}: trained architecture {meta['arch']} is not the chosen {chosen['arch']} of {arch_file}")
    space = get_space(meta["space"])
    arch = space.parse(meta["arch"])
    table = cost_table(space)
    cls = read_json(classifier_metrics)
    with StageRun(**mlflow, params={"test_file": str(test_file), "primary_metric": primary_metric,
                                    "classes": meta.get("category_names"), "precision": precision.describe(),
                                    **info}) as run:
        t = time.perf_counter()
        data = DetectionImages.load(test_file, limit=max_images)
        if data.category_ids != meta["category_ids"]:
            raise ValueError(f"{test_file}: category ids {data.category_ids} differ from those {detector} was trained "
                             f"on ({meta['category_ids']}); evaluate on the test split of the same dataset")
        # the test figures and the chance check side by side in two processes (which index the
        # ground truth while the detector runs); the VOC APs meanwhile in this one
        with Evaluator({"test": data.coco.dataset}, in_flight=2, workers=2) as evaluator:
            # the forwards of `detect` too (detnas.evaluate.model_batches); boxes come out in float32
            found = detect_array(model, data, batch_size=batch_size, device=dist.device, precision=precision)
            full = evaluator.submit("test", found, data.image_ids)
            chance = evaluator.submit("test", shifted_detections(found, data.image_ids), data.image_ids, by_size=False)
            results = results_dicts(found)
            classes = {c: data.coco.cats[c]["name"] for c in data.category_ids}
            voc = per_class = None
            if primary_metric in VOC_METRICS:
                voc = voc_ap(results, data.coco.dataset["annotations"], classes, image_ids=data.image_ids)
                per_class = voc["per_class"]
            metrics: dict[str, float | None] = full.result()[0]
            shifted = chance.result()[0]["AP50"]
        if voc is not None:
            metrics.update({k: voc[k] for k in VOC_METRICS})
        if pictures is not None:
            _draw(data, results, classes, pictures, title=(
                f"{info.get('experiment')} {info.get('method')}: {arch} on the test split, AP50 "
                f"{fmt_number(metrics['AP50'])}, AP {fmt_number(metrics['AP'])}"))
        trained_losses = {"classifier": training_health(cls)}
        # what the networks were trained with (amp: auto is bf16 on a CUDA card with native bf16, a
        # departure from the paper's fp32: METHOD.md), next to what this evaluation ran in
        trained = {"classifier": cls.get("precision")}
        if detector_metrics is not None:
            det = read_json(detector_metrics)
            trained_losses["detector"] = training_health(det)
            trained["detector"] = det.get("precision")
        health = health_summary(losses=trained_losses, chance=chance_health(metrics["AP50"], shifted))
        seconds = time.perf_counter() - t
        final = {
            **info,
            "arch": str(arch),
            "space": space.name,
            "width_factor": split_space_name(space.name)[1],  # the scaled ShuffleNetV2's; 1 for a preset
            "mflops": table.backbone_macs(arch) / 1e6,
            "backbone_params_m": table.backbone_params(arch) / 1e6,
            "classifier_params_m": table.classifier_params(arch, cls["num_classes"]) / 1e6,
            "test_images": len(data),
            "test_images_total": len(data.coco.imgs),
            "seconds": seconds,
            "peak_gpu_memory_mb": peak_gpu_memory_mb(dist.device),  # the evaluation's own time (s), without start-up: the plan's seconds per image
            "precision": precision.describe(),
            "trained_precision": trained,
            **metrics,
            "primary_metric": primary_metric,
            "primary_value": metrics[primary_metric],
            "classes": list(classes.values()),
            **({} if per_class is None else {"voc_per_class": per_class}),
            "top1": cls.get("top1"),
            "search_fitness": chosen.get("fitness"),
            "search_evaluations": chosen.get("evaluations"),
            "search_fitness_metric": chosen.get("fitness_metric"),
            "search_seconds_per_candidate": chosen.get("seconds_per_candidate"),
            # a published architecture: its name and description, and whether it is a reference outside the budget
            **{k: chosen[k] for k in ("published", "description", "reference", "control") if k in chosen},
            **_latency_fields(latency),
            "health": health,
            "mlflow_run_id": run.run_id,
        }
        run.log_metrics(_tracked(final), 0)
        run.set_tags({"arch": str(arch), "health": "ok" if health["ok"] else "; ".join(health["flags"]),
                      "precision": _precision_tag(precision.describe(), trained)})
        write_json_atomic(final, out)
        run.log_artifacts(out, *([pictures] if pictures is not None else []))
    shown = [primary_metric, *(k for k in PRIMARY_METRICS if k in metrics and k != primary_metric)]
    summary = " ".join(f"{k} {fmt_number(metrics[k])}" for k in shown)
    print(f"{info.get('experiment')} {info.get('method')}: {arch} on {len(data)} test images: {summary} "
          f"(top-1 {final['top1']}) in {seconds:.1f} s (amp {precision.amp}, {precision.memory_format})", flush=True)
    for flag in health["flags"]:
        print(f"HEALTH WARNING: {info.get('method')}: {flag}", flush=True)
    if health["ok"]:
        print(f"health: ok (AP50 {fmt_number(metrics['AP50'])} against {fmt_number(shifted)} at chance; "
              f"no training loss rose at the end)", flush=True)


def _precision_tag(evaluated: dict[str, str], trained: dict[str, dict[str, str] | None]) -> str:
    """E.g. "evaluated bf16 channels_last; classifier trained bf16 channels_last, detector ..."."""
    def words(p: dict[str, str] | None) -> str:
        return "unknown" if not p else f"{p['amp']} {p['memory_format']}"

    return "; ".join([f"evaluated {words(evaluated)}", *(f"{k} trained {words(v)}" for k, v in trained.items())])
