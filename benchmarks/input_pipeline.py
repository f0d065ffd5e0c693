"""Images per second per core of the classification input pipeline, old and new, and the padding
that aspect-ratio grouping saves in detection batches.

Writes ``--images`` 500x375 JPEGs (smooth colour blobs over a gradient plus grain, quality 90: an
ImageNet-sized photo) into a temporary directory, then times on ONE thread (torch and PIL):

* train, old: PIL decode, torchvision v2 on the PIL image (random-resized crop, flip, colour jitter,
  to float, normalize), float32 per image, stacked into batches (``pil_classification_transforms``);
* train, new: torchvision decode to uint8, crop then resize the crop, flip, draw the jitter, stack
  uint8 (what a loader worker does); then "+ finish" adds the colour jitter and normalization of
  each batch on this same CPU core (in training they run on the device);
* eval, old / new: resize the short side to 256, centre crop 224; old on PIL to float per image,
  new on uint8 tensors, normalized per batch.

Every run seeds torch's generator the same way, and old and new draw the same random numbers, so
they crop the same windows. The fidelity lines compare their outputs, in uint8 levels.

The second table: on a COCO-like mix of image sizes (60 % landscape 640x480/640x427, 30 % portrait,
10 % square), resized as torchvision's detection transform does (short side 800, long side at most
1333) and padded to the batch's largest height and width rounded up to 32, the share of each batch
tensor that is padding, with batches drawn at random and with aspect-ratio grouping.

    python benchmarks/input_pipeline.py [--images 200] [--repeats 3] [--batch 64]
"""

from __future__ import annotations

import argparse
import itertools
import math
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image
from torchvision.datasets.folder import default_loader

from detnas.data.classification import (
    IMAGENET_STD,
    classification_transforms,
    normalize_images,
    pil_classification_transforms,
    read_rgb,
    train_augmentation,
)
from detnas.data.grouping import GroupedBatchSampler, aspect_ratio_groups
from detnas.engine import InfiniteSampler

WIDTH, HEIGHT = 500, 375
IMAGE_SIZE = 224


def _write_images(root: Path, n: int) -> list[Path]:
    rng = np.random.default_rng(0)
    gradient = np.linspace(0, 255, WIDTH, dtype=np.float32)[None, :, None]
    paths = []
    for i in range(n):
        coarse = Image.fromarray(rng.integers(0, 256, (HEIGHT // 16, WIDTH // 16, 3), dtype=np.uint8))
        smooth = np.asarray(coarse.resize((WIDTH, HEIGHT), Image.BICUBIC), dtype=np.float32)
        pixels = 0.5 * smooth + 0.3 * gradient + rng.normal(0, 12, (HEIGHT, WIDTH, 3))
        path = root / f"{i:06d}.jpg"
        Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(path, quality=90)
        paths.append(path)
    return paths


def _batches(paths: list[Path], size: int) -> list[list[Path]]:
    return [paths[i:i + size] for i in range(0, len(paths), size)]


def _pipelines(paths: list[Path], batch: int) -> dict[str, Callable[[], list[torch.Tensor]]]:
    """Each run: every image once, in batches (a DataLoader's collate included); returns the batches."""
    old_train = pil_classification_transforms(train=True, image_size=IMAGE_SIZE)
    old_eval = pil_classification_transforms(train=False, image_size=IMAGE_SIZE)
    aug = train_augmentation(IMAGE_SIZE)
    new_eval = classification_transforms(train=False, image_size=IMAGE_SIZE, normalize=False)

    def train_old() -> list[torch.Tensor]:
        torch.manual_seed(0)
        return [torch.stack([old_train(default_loader(str(p))) for p in b]) for b in _batches(paths, batch)]

    def train_new(finish: bool) -> list[torch.Tensor]:
        torch.manual_seed(0)
        out = []
        for b in _batches(paths, batch):
            crops, params = zip(*(aug.sample(read_rgb(p)) for p in b))
            crops, params = torch.stack(crops), torch.stack(params)
            out.append(aug.finish(crops, params) if finish else crops)
        return out

    def eval_old() -> list[torch.Tensor]:
        return [torch.stack([old_eval(default_loader(str(p))) for p in b]) for b in _batches(paths, batch)]

    def eval_new() -> list[torch.Tensor]:
        return [normalize_images(torch.stack([new_eval(read_rgb(p)) for p in b])) for b in _batches(paths, batch)]

    return {
        "train, old (PIL, float per image)": train_old,
        "train, new: workers' share (uint8)": lambda: train_new(False),
        "train, new: + finish on this core": lambda: train_new(True),
        "eval, old (PIL, float per image)": eval_old,
        "eval, new (uint8, normalized per batch)": eval_new,
    }


def _rates(runs: dict[str, Callable[[], object]], n: int, repeats: int) -> dict[str, float]:
    """Images per second of each run, median over ``repeats`` rounds; rounds interleave the runs so
    load from other jobs on a shared machine hits them alike."""
    walls: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            t = time.perf_counter()
            run()
            walls[name].append(time.perf_counter() - t)
    return {name: n / statistics.median(w) for name, w in walls.items()}


def _levels(a: list[torch.Tensor], b: list[torch.Tensor]) -> torch.Tensor:
    """Differences of normalized outputs in uint8 levels (1 / (255 * std) per channel)."""
    level = torch.tensor([1 / (255 * s) for s in IMAGENET_STD]).view(1, 3, 1, 1)
    return torch.cat([((y - x) / level).round() for x, y in zip(a, b)])


def _coco_like_sizes(n: int, seed: int) -> list[tuple[int, int]]:
    """(width, height) of ``n`` images after the detection resize (short side 800, long <= 1333)."""
    rng = np.random.default_rng(seed)
    kinds = rng.choice(3, size=n, p=[0.6, 0.3, 0.1])
    sizes = []
    for kind, tall in zip(kinds, rng.integers(0, 2, size=n)):
        w, h = ((640, 480), (640, 427))[tall] if kind == 0 else ((480, 640), (427, 640))[tall] if kind == 1 else (640, 640)
        scale = min(800 / min(w, h), 1333 / max(w, h))
        sizes.append((math.floor(w * scale), math.floor(h * scale)))  # torchvision: interpolate, floor
    return sizes


def _padding(sizes: list[tuple[int, int]], batches: list[list[int]], divisible: int = 32) -> float:
    """Share of the batch tensors that is padding: each batch padded to its largest H and W, rounded
    up to ``divisible`` (torchvision's GeneralizedRCNNTransform.batch_images)."""
    canvas = image = 0
    for b in batches:
        width = math.ceil(max(sizes[i][0] for i in b) / divisible) * divisible
        height = math.ceil(max(sizes[i][1] for i in b) / divisible) * divisible
        canvas += len(b) * width * height
        image += sum(sizes[i][0] * sizes[i][1] for i in b)
    return 1 - image / canvas


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=200)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--batch", type=int, default=64, help="classification batch (the per-batch half's unit)")
    p.add_argument("--detection-images", type=int, default=20_000)
    args = p.parse_args()
    torch.set_num_threads(1)

    with tempfile.TemporaryDirectory() as tmp:
        paths = _write_images(Path(tmp), args.images)
        kb = statistics.mean(path.stat().st_size for path in paths) / 1024
        print(f"{args.images} JPEGs {WIDTH}x{HEIGHT}, quality 90, mean {kb:.0f} KB -> {IMAGE_SIZE}x{IMAGE_SIZE}; "
              f"1 thread, batches of {args.batch}, median of {args.repeats} runs")
        runs = _pipelines(paths, args.batch)
        outputs = {name: run() for name, run in runs.items()}  # warm-up, and the outputs to compare
        rates = _rates(runs, args.images, args.repeats)
    base = {"train": rates["train, old (PIL, float per image)"], "eval": rates["eval, old (PIL, float per image)"]}
    print(f"  {'pipeline':<42} {'images/s':>9} {'ms/image':>9} {'speedup':>8}")
    for name, rate in rates.items():
        print(f"  {name:<42} {rate:9.1f} {1000 / rate:9.2f} {rate / base[name.split(',')[0]]:7.2f}x")
    for what, old, new in (("train (same seed)", "train, old (PIL, float per image)", "train, new: + finish on this core"),
                           ("eval", "eval, old (PIL, float per image)", "eval, new (uint8, normalized per batch)")):
        d = _levels(outputs[old], outputs[new])
        print(f"  fidelity, {what}: {100 * (d == 0).float().mean():.2f} % of values identical, mean |diff| "
              f"{d.abs().mean():.4f} levels, mean diff {d.mean():+.4f}, max {d.abs().max():.0f}")

    sizes = _coco_like_sizes(args.detection_images, seed=0)
    groups = aspect_ratio_groups(sizes)
    portrait = sum(groups) / len(groups)
    print(f"\ndetection batches: {len(sizes)} COCO-like sizes ({100 * portrait:.0f} % portrait), short side 800 "
          f"(long <= 1333), padded to a multiple of 32")
    print(f"  {'batch':>5} {'padding, random':>16} {'padding, grouped':>17} {'batch pixels, grouped/random':>29}")
    for batch in (2, 16):
        n_batches = len(sizes) // batch
        stream = iter(InfiniteSampler(len(sizes), seed=0))
        plain = [list(itertools.islice(stream, batch)) for _ in range(n_batches)]
        grouped = list(itertools.islice(GroupedBatchSampler(InfiniteSampler(len(sizes), seed=0), groups, batch),
                                        n_batches))
        a, b = _padding(sizes, plain), _padding(sizes, grouped)
        print(f"  {batch:>5} {100 * a:15.1f}% {100 * b:16.1f}% {(1 - a) / (1 - b):28.2f}x")


if __name__ == "__main__":
    main()
