"""Training throughput at the paper's sizes on whatever device this machine has: supernet
pre-training (small space, 224 px, 1000 classes) and detection fine-tuning of the supernet (Faster
R-CNN + FPN, 800 px short side), each in fp32 and bf16 autocast, contiguous and channels_last; then
the classification data loader alone (JPEG decode + augmentation of generated 500x375 JPEGs on the
loader workers), to say whether it can feed the model.

Images/s are per device (one process), with the device synchronised before the clock stops; every
timed step samples a new random path, as training does. Before the clock starts, every block choice
has run (one path of each choice everywhere, then two random paths), so no timed step pays for
the first use of a kernel or, where the stage enables it, cuDNN's autotuning of a new shape: as the
stages do, pre-training rows run with ``cudnn.benchmark`` (its batches have one shape) and fine-tuning
rows without (each batch's image size differs). The loader row is the stages' own loader
(``engine.training_batches``: per-visit seeded augmentation, workers that ignore SIGTERM) and says
how many images/s one worker delivers, which is how the SLURM profile's CPUs per GPU were chosen.

    python benchmarks/gpu_throughput.py [--steps 20] [--cls-batch 128] [--det-batch 4] [--workers 8]

On a CPU the defaults shrink (batches 16 and 1, 3 steps) so the run takes a few minutes.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from detnas.blocks import CHOICES
from detnas.data.classification import ClassificationDataset, train_augmentation
from detnas.detectors import DetectorSettings, build_detector
from detnas.distributed import Dist
from detnas.engine import training_batches, uniform_path
from detnas.precision import Precision
from detnas.space import get_space
from detnas.supernet import Supernet, set_path

MEMORY_FORMATS = ("contiguous", "channels_last")


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        return f"{p.name} ({p.total_memory / 2**30:.0f} GiB), torch {torch.__version__}, CUDA {torch.version.cuda}"
    return f"CPU ({os.cpu_count()} cores, {torch.get_num_threads()} torch threads), torch {torch.__version__}"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _precision(device: torch.device, precision: str, memory_format: str) -> Precision:
    """A row's ``Precision``, as a stage with ``amp: off|bf16`` and ``channels_last`` runs it."""
    return Precision.resolve({"fp32": "off", "bf16": "bf16"}[precision], memory_format == "channels_last", device)


def _path(space, i: int):
    """Step ``i``'s path: first one path of each choice in every block (warm-up), then random ones."""
    if i < len(CHOICES):
        return space.parse(str(i) * space.num_blocks)
    return uniform_path(space, 0, i)


WARMUP = len(CHOICES) + 2


def _timed(step: Callable[[int], None], *, warmup: int, steps: int, device: torch.device) -> float:
    """Seconds per step over ``steps`` steps after ``warmup`` untimed ones."""
    for i in range(warmup):
        step(i)
    _sync(device)
    t = time.perf_counter()
    for i in range(warmup, warmup + steps):
        step(i)
    _sync(device)
    return (time.perf_counter() - t) / steps


def pretrain_rate(device: torch.device, precision: str, memory_format: str, *, batch: int, steps: int,
                  warmup: int = WARMUP) -> float:
    """Images/s of supernet pre-training steps (forward, backward, SGD) on random 224 px batches."""
    space = get_space("small")
    p = _precision(device, precision, memory_format)
    torch.backends.cudnn.benchmark = device.type == "cuda"  # as the pretrain stage: one batch shape
    model = p.prepare(Supernet(space, num_classes=1000).to(device))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=4e-5)
    x = p.images(torch.randn(batch, 3, 224, 224, device=device))
    y = torch.randint(0, 1000, (batch,), device=device)
    loss_fn = nn.CrossEntropyLoss()

    def step(i: int) -> None:
        set_path(model, _path(space, i))
        with p.autocast():
            loss = loss_fn(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return batch / _timed(step, warmup=warmup, steps=steps, device=device)


def finetune_rate(device: torch.device, precision: str, memory_format: str, *, batch: int, steps: int,
                  warmup: int = WARMUP) -> float:
    """Images/s of detection fine-tuning steps of the supernet (Faster R-CNN + FPN, the paper's
    detector sizes) on random 800x1067 images with 5 boxes each."""
    space = get_space("small")
    p = _precision(device, precision, memory_format)
    torch.backends.cudnn.benchmark = False  # as the finetune stage: image sizes vary from batch to batch
    model = build_detector(Supernet(space), num_classes=80, settings=DetectorSettings())
    model = p.prepare(model.to(device)).train()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.02, momentum=0.9)
    g = torch.Generator().manual_seed(0)
    images = [torch.rand(3, 800, 1067, generator=g).to(device) for _ in range(batch)]
    xy = torch.rand(batch, 5, 2, generator=g) * torch.tensor([800.0, 600.0])
    boxes = torch.cat([xy, xy + 40 + torch.rand(batch, 5, 2, generator=g) * 200], -1)
    targets = [{"boxes": b.to(device), "labels": torch.randint(1, 81, (5,), generator=g).to(device)} for b in boxes]

    def step(i: int) -> None:
        set_path(model, _path(space, i))
        with p.autocast():
            loss = sum(model(images, targets).values())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return batch / _timed(step, warmup=warmup, steps=steps, device=device)


def loader_rate(root: Path, *, workers: int, batch: int, batches: int, device: torch.device) -> float:
    """Images/s the classification training loader delivers (decode, crop, flip, jitter draws in
    ``workers`` processes; jitter and normalization of each batch on ``device``): the pretrain
    stage's own ``training_batches``, as one process of a job with ``workers + 1`` CPUs runs it."""
    augment = train_augmentation(224)
    data = ClassificationDataset(root, transform=augment.sample, decode="tensor")
    it = training_batches(data, batch_size=batch, seed=0, start_step=0, dist=Dist(0, 1, 0, device),
                          threads=workers + 1)
    for _ in range(2):  # workers started, first batches in flight
        next(it)
    t = time.perf_counter()
    for _ in range(batches):
        (crops, params), _ = next(it)
        augment.finish(crops.to(device, non_blocking=True), params.to(device, non_blocking=True))
    _sync(device)
    return batch * batches / (time.perf_counter() - t)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto", help="cuda, cpu or auto (cuda when there is one)")
    p.add_argument("--steps", type=int, help="timed steps per row (default 20 on CUDA, 3 on CPU)")
    p.add_argument("--cls-batch", type=int, help="pre-training batch per device (default 128 on CUDA, 16 on CPU)")
    p.add_argument("--det-batch", type=int, help="fine-tuning images per device (default 4 on CUDA, 1 on CPU)")
    p.add_argument("--workers", type=int, default=min(8, max(1, (os.cpu_count() or 2) - 1)),
                   help="data-loader workers for the loader row (the profile's 8 CPUs per GPU leave 7)")
    p.add_argument("--images", type=int, default=256, help="generated JPEGs the loader reads")
    args = p.parse_args()
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    cuda = device.type == "cuda"
    steps = args.steps or (20 if cuda else 3)
    cls_batch = args.cls_batch or (128 if cuda else 16)
    det_batch = args.det_batch or (4 if cuda else 1)
    print(f"device: {_device_name(device)}")
    print(f"{steps} timed steps per row; pre-training batch {cls_batch} at 224 px; fine-tuning {det_batch} "
          f"image(s) of 800x1067 per step\n")
    print(f"{'stage':<34} {'precision':<9} {'memory format':<14} {'images/s':>9} {'vs fp32':>8}")
    rates: dict[str, float] = {}
    for stage, fn, batch in (("supernet pre-training (224 px)", pretrain_rate, cls_batch),
                             ("detection fine-tuning (800 px)", finetune_rate, det_batch)):
        base = None
        for precision in ("fp32", "bf16"):
            for fmt in MEMORY_FORMATS:
                if precision == "bf16" and cuda and not torch.cuda.is_bf16_supported():
                    print(f"{stage:<34} {precision:<9} {fmt:<14} {'n/a':>9}")
                    continue
                rate = fn(device, precision, fmt, batch=batch, steps=steps)
                base = base or rate
                rates[f"{stage}/{precision}/{fmt}"] = rate
                print(f"{stage:<34} {precision:<9} {fmt:<14} {rate:9.1f} {rate / base:7.2f}x", flush=True)
                if cuda:
                    torch.cuda.empty_cache()
    sys.path.insert(0, str(Path(__file__).parent))
    from input_pipeline import _write_images  # the same ImageNet-sized JPEGs as the input benchmark

    with tempfile.TemporaryDirectory() as tmp:
        for c in range(4):
            (Path(tmp) / f"class{c}").mkdir()
        for i, path in enumerate(_write_images(Path(tmp), args.images)):
            path.rename(Path(tmp) / f"class{i % 4}" / path.name)
        rate = loader_rate(Path(tmp), workers=args.workers, batch=cls_batch, batches=max(8, steps), device=device)
    best = max(v for k, v in rates.items() if k.startswith("supernet"))
    per_worker = rate / max(1, args.workers)
    verdict = "feeds it" if rate >= best else f"too slow: ~{best / per_worker:.0f} workers needed"
    print(f"\ndata loader alone ({args.workers} workers, decode + augmentation of 500x375 JPEGs): {rate:.1f} images/s "
          f"({per_worker:.1f} per worker); fastest pre-training row {best:.1f} images/s: {verdict}")


if __name__ == "__main__":
    main()
