"""The ``evaluate`` stage: COCO metrics of a retrained detector on the test split -> ``final.json``."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from ..distributed import init_distributed, set_threads
from ..evaluate import COCO_METRICS, DetectionImages, evaluate_detector
from ..flops import cost_table
from ..formatting import fmt_number
from ..io import read_json, write_json_atomic
from ..space import get_space
from ..tracking import StageRun
from .finetune import detector_from_checkpoint

__all__ = ["run_evaluate"]


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
) -> None:
    """Evaluate on every test image; ``final.json`` gets the fields of PIPELINE.md.

    ``info``: experiment, method, dataset, detector (names, copied into final.json).
    """
    if primary_metric not in COCO_METRICS:
        raise ValueError(f"primary metric must be one of {COCO_METRICS}, got {primary_metric!r}")
    dist = init_distributed(device)
    set_threads(threads, 1)
    model, meta = detector_from_checkpoint(detector, dist.device)
    chosen = read_json(arch_file)
    if meta["arch"] != chosen["arch"]:
        raise ValueError(f"{detector}: trained architecture {meta['arch']} is not the chosen {chosen['arch']} of {arch_file}")
    space = get_space(meta["space"])
    arch = space.parse(meta["arch"])
    table = cost_table(space)
    cls = read_json(classifier_metrics)
    with StageRun(**mlflow, params={"test_file": str(test_file), "primary_metric": primary_metric,
                                    "classes": meta.get("category_names"), **info}) as run:
        t = time.perf_counter()
        data = DetectionImages.load(test_file)
        if data.category_ids != meta["category_ids"]:
            raise ValueError(f"{test_file}: category ids {data.category_ids} differ from those {detector} was trained "
                             f"on ({meta['category_ids']}); evaluate on the test split of the same dataset")
        metrics = evaluate_detector(model, data, batch_size=batch_size, device=dist.device)
        seconds = time.perf_counter() - t
        final = {
            **info,
            "arch": str(arch),
            "space": space.name,
            "mflops": table.backbone_macs(arch) / 1e6,
            "backbone_params_m": table.backbone_params(arch) / 1e6,
            "classifier_params_m": table.classifier_params(arch, cls["num_classes"]) / 1e6,
            "test_images": len(data),
            **metrics,
            "primary_metric": primary_metric,
            "classes": [data.coco.cats[c]["name"] for c in data.category_ids],
            "top1": cls.get("top1"),
            "search_fitness": chosen.get("fitness"),
            "search_evaluations": chosen.get("evaluations"),
            "mlflow_run_id": run.run_id,
        }
        run.log_metrics({**metrics, "top1": final["top1"] or 0.0, "mflops": final["mflops"]}, 0)
        run.set_tags({"arch": str(arch)})
        write_json_atomic(final, out)
        run.log_artifacts(out)
    summary = " ".join(f"{k} {fmt_number(metrics[k])}" for k in COCO_METRICS)
    print(f"{info.get('experiment')} {info.get('method')}: {arch} on {len(data)} test images: {summary} "
          f"(top-1 {final['top1']}) in {seconds:.1f} s", flush=True)
