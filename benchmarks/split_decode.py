"""Images per second of the split's image check on COCO-sized JPEGs.

Writes ``--images`` 640x480 JPEGs (smoothed noise over a gradient, quality 90: about the size of a
COCO image) and a COCO file over them into a temporary directory, then times the old header-only
check (PIL ``verify``) and the full decode the split now does (``prepare_detection``) on 1 and 2
threads. Prints images/s and the cores the process kept busy. Files are in the page cache, so
this is decode speed, not disk speed.

    python benchmarks/split_decode.py [--images 200] [--threads 1 2] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from detnas.data.coco import prepare_detection

WIDTH, HEIGHT = 640, 480


def _write_images(root: Path, n: int) -> tuple[Path, list[Path]]:
    """n JPEGs under ``root/images`` and a COCO file over them; (annotation file, image paths)."""
    rng = np.random.default_rng(0)
    (root / "images").mkdir()
    gradient = np.linspace(0, 255, WIDTH)[None, :, None]
    paths, images = [], []
    for i in range(n):
        # coarse noise upsampled (objects, shading) plus fine grain (texture): JPEG sizes like COCO's
        coarse = Image.fromarray(rng.integers(0, 256, (HEIGHT // 16, WIDTH // 16, 3), dtype=np.uint8))
        smooth = np.asarray(coarse.resize((WIDTH, HEIGHT), Image.BICUBIC), dtype=np.float32)
        pixels = 0.5 * smooth + 0.3 * gradient + rng.normal(0, 12, (HEIGHT, WIDTH, 3))
        path = root / "images" / f"{i:06d}.jpg"
        Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(path, quality=90)
        paths.append(path)
        images.append({"id": i, "file_name": path.name, "width": WIDTH, "height": HEIGHT})
    anns = [{"id": i, "image_id": i, "category_id": 1, "bbox": [10, 10, 100, 80], "area": 8000, "iscrowd": 0}
            for i in range(n)]
    ann_file = root / "instances.json"
    ann_file.write_text(json.dumps({"images": images, "annotations": anns, "categories": [{"id": 1, "name": "x"}]}))
    return ann_file, paths


def _header_only(paths: list[Path]) -> None:
    """The split's check before full decoding: size from the header, ``verify`` (JPEG: header only)."""
    for path in paths:
        with Image.open(path) as im:
            _ = im.size
            im.verify()


def _rates(runs: dict[str, Callable[[], object]], n: int, repeats: int) -> dict[str, tuple[float, float]]:
    """Per run: images per second and cores busy (CPU time / wall time), medians over ``repeats`` rounds.

    Rounds interleave the runs, so load from other jobs on a shared machine hits them alike; cores
    busy tells a thread count that did not scale from one that found no free core.
    """
    walls: dict[str, list[float]] = {name: [] for name in runs}
    cores: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            cpu, wall = time.process_time(), time.perf_counter()
            run()
            cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
            walls[name].append(wall)
            cores[name].append(cpu / wall)
    return {name: (n / statistics.median(walls[name]), statistics.median(cores[name])) for name in runs}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=200)
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        ann_file, paths = _write_images(Path(tmp), args.images)
        kb = statistics.mean(path.stat().st_size for path in paths) / 1024
        print(f"{args.images} JPEGs {WIDTH}x{HEIGHT}, quality 90, mean {kb:.0f} KB; median of {args.repeats} runs")
        runs: dict[str, Callable[[], object]] = {"header only (old check), 1 thread": lambda: _header_only(paths)}
        for threads in args.threads:
            runs[f"full decode (split), {threads} thread(s)"] = (
                lambda t=threads: prepare_detection(ann_file, [Path(tmp) / "images"], threads=t))
        for name, (rate, busy) in _rates(runs, args.images, args.repeats).items():
            print(f"  {name:<36} {rate:8.1f} images/s  ({busy:.2f} cores busy)")


if __name__ == "__main__":
    main()
