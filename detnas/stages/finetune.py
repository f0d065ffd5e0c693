"""Detection fine-tuning: the supernet path-wise (one uniformly sampled path per iteration, the same
on every rank), or a standalone network of one architecture (the final retraining's detection
stage). Starts from classification weights, or from scratch (DetNAS-scratch)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..data.coco import DetectionDataset, collate_detection
from ..data.grouping import aspect_ratio_groups
from ..detectors import DetectorSettings, backbone_body, build_detector
from ..distributed import init_distributed, loader_workers, process_seed, set_threads, workers_line
from ..checkpoint import Checkpointer
from ..engine import (
    Progress,
    Schedule,
    make_sgd,
    train,
    training_batches,
    training_telemetry,
    uniform_path,
    unwrap,
)
from ..health import loss_health, loss_health_line
from ..io import load_checkpoint, save_checkpoint, write_json_atomic
from ..plots import plot_training_curves
from ..precision import Precision
from ..settings import known_keys
from ..space import get_space
from ..supernet import _Skeleton
from ..tracking import StageRun

__all__ = ["DetectionSettings", "load_classification_weights", "run_finetune"]

_HEAD_PREFIXES = ("conv_last.", "classifier.")


@dataclass(frozen=True)
class DetectionSettings:
    """Settings of a detection fine-tuning run (an experiment's ``finetune`` + ``detector``)."""

    space: str
    detector: DetectorSettings
    batch_size: int
    schedule: Schedule
    seed: int = 0
    checkpoint_every: int = 5000
    log_every: int = 20
    eval_batch_size: int = 8
    schedule_factor: float = 1.0  # DetNAS-scratch: 2, twice the iterations (milestones scaled too)
    amp: str | bool = "auto"  # auto, bf16, fp16, off (detnas.precision)
    channels_last: bool | str = "auto"
    loader_probe: int = 0  # a rehearsal: time this many batches of the loader alone after training

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "DetectionSettings":
        d = {k: v for k, v in d.items() if k != "scratch_factor"}  # the workflow turns it into schedule_factor
        d = known_keys(cls, d, "finetune")
        d["schedule"] = Schedule.from_dict(d["schedule"])
        d["detector"] = DetectorSettings.from_dict(d["detector"])
        return cls(**d)


def load_classification_weights(body: _Skeleton, path: Path) -> dict[str, Any]:
    """Copy a classification checkpoint's backbone (stem + stages) into ``body``; the classifier head
    is left out. ValueError names the file when the checkpoint does not match the backbone."""
    ckpt = load_checkpoint(path)
    if ckpt.get("space", body.space.name) != body.space.name:
        # e.g. a classifier of "small" for the width-scaled "small@w1.0703" of an arch file: the
        # shapes differ, and load_state_dict would raise a RuntimeError listing every tensor
        raise ValueError(
            f"{path}: checkpoint of space {ckpt['space']!r} (arch {ckpt.get('arch')}), this backbone is of space "
            f"{body.space.name!r}"
        )
    state = {k: v for k, v in ckpt["state_dict"].items() if not k.startswith(_HEAD_PREFIXES)}
    missing, unexpected = body.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"{path}: checkpoint ({ckpt.get('kind')}, space {ckpt.get('space')}, arch {ckpt.get('arch')}) does not "
            f"match this backbone: missing {missing[:3]}, unexpected {unexpected[:3]}"
        )
    return ckpt


def run_finetune(
    settings: dict[str, Any],
    *,
    train_file: Path,
    init: Path | None,
    arch: str | None,
    weights_out: Path,
    metrics_out: Path,
    curves_out: Path,
    checkpoint_dir: Path,
    mlflow: dict[str, Any],
    threads: int,
    device: str = "auto",
) -> None:
    """Fine-tune a detector on ``train_file``; ``arch`` None trains the supernet path-wise."""
    cfg = DetectionSettings.from_dict(settings)
    schedule = cfg.schedule.scaled(cfg.schedule_factor) if cfg.schedule_factor != 1 else cfg.schedule
    dist = init_distributed(device)
    precision = Precision.resolve(cfg.amp, cfg.channels_last, dist.device)
    set_threads(threads, dist.world_size, workers=loader_workers(threads, dist.world_size))
    space = get_space(cfg.space)
    fixed = space.parse(arch) if arch else None
    torch.manual_seed(cfg.seed)

    dataset = DetectionDataset(train_file, train=True)
    body = backbone_body(space, fixed)
    if init is not None:
        load_classification_weights(body, init)
    model = build_detector(body, num_classes=dataset.num_classes, settings=cfg.detector).to(dist.device)
    precision.prepare(model)
    # the same initial weights on every rank (seed above); from here each rank draws its own numbers
    # (RPN and ROI sampling), and each image visit its own flip (engine.SeededDraws)
    torch.manual_seed(process_seed(cfg.seed, dist.rank))

    optimizer = make_sgd(model, schedule)
    scaler = precision.grad_scaler()
    # "batches" in the resume key: a checkpoint of the ungrouped sampler would resume another sequence;
    # the resolved precision: "auto" on another device is another computation
    checkpointer = Checkpointer(
        checkpoint_dir, settings={**settings, "arch": arch, "world": dist.world_size, "batches": "aspect_ratio_groups",
                                  "precision": precision.describe()},
        inputs={"train": train_file, "init": init}, every=cfg.checkpoint_every, dist=dist,
    )
    start, history = checkpointer.resume(model, optimizer, scaler)
    # landscape and portrait images in separate batches: far less padding (data/grouping.py)
    groups = aspect_ratio_groups((dataset.coco.imgs[i]["width"], dataset.coco.imgs[i]["height"])
                                 for i in dataset.image_ids)
    batches = training_batches(dataset, batch_size=cfg.batch_size, seed=cfg.seed, start_step=start, dist=dist,
                               threads=threads, collate_fn=collate_detection, group_ids=groups)
    # BN statistics over the whole batch of every GPU (SyncBatchNorm), as the paper fine-tunes detectors;
    # only the supernet leaves parameters unused (the choices off the step's path)
    wrapped = dist.wrap(model, find_unused_parameters=fixed is None, sync_batchnorm=True)

    def step_losses(batch: tuple[list[torch.Tensor], list[dict[str, Any]]]) -> dict[str, torch.Tensor]:
        images, targets = batch
        images = [im.to(dist.device, non_blocking=True) for im in images]
        # pinned by the loader on CUDA: no copy waits for the device
        targets = [{k: v.to(dist.device, non_blocking=True) if torch.is_tensor(v) else v for k, v in t.items()}
                   for t in targets]
        return wrapped(images, targets)

    kind = "supernet" if fixed is None else f"network {fixed}"
    init_name = "scratch" if init is None else str(init)
    with StageRun(**mlflow, params={**settings, "arch": arch, "init": init_name, "world_size": dist.world_size,
                                    "precision": precision.describe()},
                  enabled=dist.is_main, resume_run_id=checkpointer.mlflow_run_id) as run:
        checkpointer.mlflow_run_id = run.run_id
        for row in history:  # rows a killed attempt logged are skipped; the ones it had not sent are filled in
            run.log_progress(row)
        progress = Progress(
            total=schedule.iterations, every=cfg.log_every, images_per_step=cfg.batch_size,
            name=f"finetune {cfg.detector.name} {kind}", history=history,
            sink=run.log_progress,
        )
        print(f"finetune {cfg.detector.name} {kind} from {init_name}: {len(dataset)} images, "
              f"{dataset.num_classes} classes, {dist.world_size} process(es) on {dist.device} (amp {precision.amp}, "
              f"{precision.memory_format}), {schedule.iterations} iterations of {cfg.batch_size} images, "
              f"{workers_line(threads, dist.world_size)}", flush=True)
        train(
            model=wrapped, step_losses=step_losses, batches=batches, optimizer=optimizer, schedule=schedule,
            start_step=start, progress=progress, checkpointer=checkpointer,
            path_for_step=(lambda step: uniform_path(space, cfg.seed, step)) if fixed is None else None,
            dist=dist, precision=precision, scaler=scaler,
        )
        metrics = {
            "kind": "supernet" if fixed is None else "single_path",
            "detector": cfg.detector.name,
            "arch": arch,
            "space": space.name,
            "init": init_name,
            "iterations": schedule.iterations,
            "images": len(dataset),
            "world_size": dist.world_size,
            "precision": precision.describe(),
            "initial_loss": history[0]["loss"] if history else None,
            "final_loss": history[-1]["loss"] if history else None,
            "history": history,
            "health": loss_health(history),
            **training_telemetry(batches, loader_probe=cfg.loader_probe, batch_size=cfg.batch_size, threads=threads,
                                 dist=dist),
        }
        if dist.is_main:
            print(loss_health_line(metrics["health"]), flush=True)
            detector_settings = dict(settings["detector"])
            # the settings, not their resolution: `evaluate` resolves them for the device it runs on
            precision_settings = {"amp": cfg.amp, "channels_last": cfg.channels_last}
            save_checkpoint(
                {"kind": "detector", "space": space.name, "arch": arch, "detector": detector_settings,
                 "precision": precision_settings,
                 "num_classes": dataset.num_classes, "category_ids": dataset.category_ids,
                 "category_names": [dataset.coco.cats[c]["name"] for c in dataset.category_ids],
                 "state_dict": unwrap(wrapped).state_dict()},
                weights_out,
            )
            write_json_atomic(metrics, metrics_out)
            plot_training_curves(history, curves_out, title=(
                f"{mlflow.get('experiment', '')}: {cfg.detector.name} fine-tuning of the {kind}, "
                f"{'from scratch' if init is None else 'from the pre-trained ' + ('supernet' if fixed is None else 'network')}"))
            run.log_artifacts(metrics_out, curves_out)
            checkpointer.remove()
    dist.barrier()
    dist.close()
