"""Classification pre-training: the supernet (one uniformly sampled path per iteration), or a
standalone network of one architecture (the final retraining's ImageNet stage)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Subset

from ..data.classification import (
    ClassificationDataset,
    classification_transforms,
    normalize_images,
    read_split,
    train_augmentation,
)
from ..distributed import Dist, init_distributed, loader_workers, process_seed, set_threads, workers_line
from ..checkpoint import Checkpointer
from ..engine import (
    Progress,
    Schedule,
    make_sgd,
    train,
    training_batches,
    training_telemetry,
    uniform_path,
)
from ..evaluate import top1_counts
from ..formatting import fmt_number
from ..health import loss_health, loss_health_line
from ..io import save_checkpoint, write_json_atomic
from ..plots import plot_training_curves
from ..precision import Precision
from ..settings import known_keys
from ..space import get_space
from ..supernet import SinglePathNet, Supernet
from ..tracking import StageRun

__all__ = ["ClassificationSettings", "run_pretrain"]


@dataclass(frozen=True)
class ClassificationSettings:
    """Settings of a classification training run (one ``pretrain`` entry of the config)."""

    space: str
    image_size: int
    batch_size: int  # global, over all ranks
    schedule: Schedule
    label_smoothing: float = 0.1
    dropout: float = 0.1
    seed: int = 0
    checkpoint_every: int = 1000
    log_every: int = 20
    eval_batch_size: int = 256
    amp: str | bool = "auto"  # auto, bf16, fp16, off (detnas.precision)
    channels_last: bool | str = "auto"
    loader_probe: int = 0  # a rehearsal: time this many batches of the loader alone after training

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ClassificationSettings":
        d = known_keys(cls, d, "pretrain")
        d["schedule"] = Schedule.from_dict(d["schedule"])
        return cls(**d)


def run_pretrain(
    settings: dict[str, Any],
    *,
    split_file: Path,
    weights_out: Path,
    metrics_out: Path,
    curves_out: Path,
    checkpoint_dir: Path,
    arch: str | None,
    val_root: Path | None,
    mlflow: dict[str, Any],
    threads: int,
    device: str = "auto",
) -> None:
    """Train on the classification split's training images.

    ``arch`` None: the supernet, one uniformly sampled path per iteration, without the split's
    ``holdout`` images (ClsNAS's fitness); else a ``SinglePathNet`` on every training image
    of that architecture, evaluated for top-1 on ``val_root`` (default: the split's validation
    folder) at the end.
    """
    cfg = ClassificationSettings.from_dict(settings)
    dist = init_distributed(device)
    precision = Precision.resolve(cfg.amp, cfg.channels_last, dist.device)
    set_threads(threads, dist.world_size, workers=loader_workers(threads, dist.world_size))
    space = get_space(cfg.space)
    split = read_split(split_file)
    classes = split["classes"]
    torch.manual_seed(cfg.seed)
    if arch is None:
        model: nn.Module = Supernet(space, num_classes=len(classes), dropout=cfg.dropout)
        fixed = None
    else:
        fixed = space.parse(arch)
        model = SinglePathNet(space, fixed, num_classes=len(classes), dropout=cfg.dropout)
    precision.prepare(model.to(dist.device))
    # the same initial weights on every rank (seed above); from here each rank draws its own numbers
    # (dropout), and each image visit its own augmentation (engine.SeededDraws)
    torch.manual_seed(process_seed(cfg.seed, dist.rank))
    if dist.device.type == "cuda":
        # every batch has the same shape: cuDNN's autotuning of a convolution pays from its second use
        # (a supernet meets each choice's few shapes within its first steps)
        torch.backends.cudnn.benchmark = True

    # the supernet leaves ClsNAS's held-out images alone (they score its paths); a final network
    # trains on the whole training set, as the paper's do. Workers decode, crop and flip uint8
    # images; the colour jitter and normalization run per batch on the device (augment.finish)
    augment = train_augmentation(cfg.image_size)
    dataset = ClassificationDataset(
        Path(split["root"]),
        transform=augment.sample,
        exclude=set(split["holdout"]) if fixed is None else None,
        decode="tensor",
    )
    optimizer = make_sgd(model, cfg.schedule)
    scaler = precision.grad_scaler()
    # the resolved precision in the key: "auto" on another device is another computation
    checkpointer = Checkpointer(
        checkpoint_dir, settings={**settings, "arch": arch, "world": dist.world_size, "precision": precision.describe()},
        inputs={"split": split_file}, every=cfg.checkpoint_every, dist=dist,
    )
    start, history = checkpointer.resume(model, optimizer, scaler)
    batches = training_batches(dataset, batch_size=cfg.batch_size, seed=cfg.seed, start_step=start, dist=dist,
                               threads=threads)
    # BN statistics per rank (per-GPU BN), as in the paper's ImageNet training; only detection syncs them
    wrapped = dist.wrap(model, find_unused_parameters=fixed is None, sync_batchnorm=False)
    criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)

    def step_losses(batch: tuple[tuple[torch.Tensor, torch.Tensor], torch.Tensor]) -> dict[str, torch.Tensor]:
        (crops, params), y = batch  # uint8 (B, 3, S, S), float32 (B, 7), int64 (B,)
        x = augment.finish(crops.to(dist.device, non_blocking=True), params.to(dist.device, non_blocking=True))
        return {"loss": criterion(wrapped(precision.images(x)), y.to(dist.device, non_blocking=True))}

    kind = "supernet" if fixed is None else f"network {fixed}"
    with StageRun(**mlflow, params={**settings, "arch": arch, "world_size": dist.world_size,
                                    "precision": precision.describe()},
                  enabled=dist.is_main, resume_run_id=checkpointer.mlflow_run_id) as run:
        checkpointer.mlflow_run_id = run.run_id
        for row in history:  # rows a killed attempt logged are skipped; the ones it had not sent are filled in
            run.log_progress(row)
        progress = Progress(
            total=cfg.schedule.iterations, every=cfg.log_every, images_per_step=cfg.batch_size,
            name=f"pretrain {kind}", history=history,
            sink=run.log_progress,
        )
        print(f"pretrain {kind}: {len(dataset)} images, {len(classes)} classes, {dist.world_size} process(es) "
              f"on {dist.device} (amp {precision.amp}, {precision.memory_format}), {cfg.schedule.iterations} "
              f"iterations of {cfg.batch_size} images, "
              f"{workers_line(threads, dist.world_size)}", flush=True)
        train(
            model=wrapped, step_losses=step_losses, batches=batches, optimizer=optimizer, schedule=cfg.schedule,
            start_step=start, progress=progress, checkpointer=checkpointer,
            path_for_step=(lambda step: uniform_path(space, cfg.seed, step)) if fixed is None else None,
            dist=dist, precision=precision, scaler=scaler,
        )
        metrics: dict[str, Any] = {
            "kind": "supernet" if fixed is None else "single_path",
            "arch": arch,
            "space": space.name,
            "iterations": cfg.schedule.iterations,
            "images": len(dataset),
            "num_classes": len(classes),
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
        val_root = val_root or (Path(split["val_root"]) if split.get("val_root") else None)
        if fixed is not None and val_root is not None:
            metrics["top1"] = _top1(model, val_root, cfg, precision, dist, threads)
            print(f"top-1 on {val_root}: {fmt_number(metrics['top1'])}", flush=True)
            run.log_metrics({"top1": metrics["top1"]}, cfg.schedule.iterations)
        if dist.is_main:
            save_checkpoint(
                {"kind": metrics["kind"], "space": space.name, "arch": arch, "classes": classes,
                 "dropout": cfg.dropout, "image_size": cfg.image_size, "state_dict": model.state_dict()},
                weights_out,
            )
            write_json_atomic(metrics, metrics_out)
            plot_training_curves(history, curves_out, title=f"{mlflow.get('experiment', '')}: classification pre-training of the {kind} (space {space.name})")
            run.log_artifacts(metrics_out, curves_out)
            run.set_tags({"final_loss": f"{metrics['final_loss']:.4f}"})
            checkpointer.remove()
    dist.barrier()
    dist.close()


def _top1(model: nn.Module, val_root: Path, cfg: ClassificationSettings, precision: Precision, dist: Dist,
          threads: int) -> float:
    """Top-1 of ``model`` on ``val_root``: each rank classifies its share of the images (every
    ``world_size``-th), with the job's loader workers; the counts are summed over the ranks."""
    # uint8 images from the loader, normalized batch by batch on the device
    val = ClassificationDataset(
        val_root, transform=classification_transforms(train=False, image_size=cfg.image_size, normalize=False),
        decode="tensor",
    )
    share = Subset(val, range(dist.rank, len(val), dist.world_size))
    loader = DataLoader(share, batch_size=cfg.eval_batch_size, num_workers=loader_workers(threads, dist.world_size),
                        pin_memory=dist.device.type == "cuda")
    batches = ((precision.images(normalize_images(x.to(dist.device, non_blocking=True))), y) for x, y in loader)
    with precision.autocast():
        correct, total = top1_counts(model, batches, dist.device)
    counts = dist.sum_over_ranks(torch.tensor([correct, total], dtype=torch.float64, device=dist.device))
    correct, total = (int(v) for v in counts.tolist())
    if total == 0:
        raise ValueError(f"top-1 accuracy of an empty set of images ({val_root})")
    return correct / total
