"""Cost and seed stability of the zero-cost proxies (detnas.proxies) on one thread.

For the tiny space at 96 px and the small space at 800 px (the detection input's shorter side, as a
square), scores a few seeded random architectures with every proxy at two network seeds and prints
the seconds per architecture (median over the scores: building the network included) and Spearman's
rho between the two seeds' scores of the same architectures (1: the ranking does not depend on the
initialization). The data proxies (naswot, zico) read ``--batches`` batches of ``--images`` seeded
N(0, 1) "images" (timing and stability only; real images change neither the cost nor the code path).
About 2-3 minutes with the defaults.

    python benchmarks/proxies.py [--tiny-archs 12] [--small-archs 5] [--images 2] [--batches 2]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from detnas.proxies import PROXIES, score
from detnas.ranking import spearman_rho
from detnas.space import get_space

SEEDS = (0, 1)


def measure(space_name: str, size: int, archs: int, images: int, batches: int) -> None:
    space = get_space(space_name)
    gen = torch.Generator().manual_seed(0)
    data = [torch.randn(images, 3, size, size, generator=gen) for _ in range(batches)]
    rng = np.random.default_rng(0)
    candidates = [space.sample(rng) for _ in range(archs)]
    score("mae_entropy", space, candidates[0], input_size=size, seed=0)  # warm-up (allocator, kernels)
    print(f"\n{space_name} space at {size} px, {archs} random architectures, seeds {SEEDS}, "
          f"data proxies on {batches} batches of {images} images")
    print(f"{'proxy':<12} {'s/arch':>8} {'rho(seed 0, seed 1)':>20}")
    for name in PROXIES:
        seconds, values = [], {s: [] for s in SEEDS}
        for arch in candidates:
            for seed in SEEDS:
                t = time.perf_counter()
                values[seed].append(score(name, space, arch, input_size=size, seed=seed, batches=data))
                seconds.append(time.perf_counter() - t)
        rho = spearman_rho(values[SEEDS[0]], values[SEEDS[1]])
        print(f"{name:<12} {statistics.median(seconds):8.3f} {rho:20.3f}", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny-archs", type=int, default=12)
    p.add_argument("--small-archs", type=int, default=5)
    p.add_argument("--images", type=int, default=2, help="images per batch of the data proxies")
    p.add_argument("--batches", type=int, default=2, help="batches of the data proxies (zico needs 2)")
    args = p.parse_args()
    torch.set_num_threads(1)
    measure("tiny", 96, args.tiny_archs, args.images, args.batches)
    measure("small", 800, args.small_archs, args.images, args.batches)


if __name__ == "__main__":
    main()
