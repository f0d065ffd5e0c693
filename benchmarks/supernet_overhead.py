"""Supernet overhead against the extracted standalone network, and FLOPs-table speed.

(a) time of a training step (forward + backward + SGD step) of the supernet on a sampled path,
    divided by the same step on ``supernet.extract(path)``; same input, same threads.
(b) architectures per second the FLOPs table evaluates.

    python benchmarks/supernet_overhead.py [--space small] [--size 128] [--batch 16]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from detnas.flops import cost_table
from detnas.space import get_space
from detnas.supernet import Supernet


def step_time(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, repeats: int) -> float:
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=4e-5)
    loss_fn = torch.nn.CrossEntropyLoss()
    times = []
    for i in range(repeats + 2):
        t = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()
        opt.step()
        if i >= 2:  # warm-up
            times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--space", default="small")
    p.add_argument("--size", type=int, default=128, help="input resolution")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--repeats", type=int, default=8)
    p.add_argument("--paths", type=int, default=3, help="sampled paths to measure")
    args = p.parse_args()

    torch.manual_seed(0)
    space = get_space(args.space)
    rng = np.random.default_rng(0)
    supernet = Supernet(space, num_classes=1000).train()
    x = torch.randn(args.batch, 3, args.size, args.size)
    y = torch.randint(0, 1000, (args.batch,))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, space {space.name}, "
          f"input {args.batch}x3x{args.size}x{args.size}")
    ratios = []
    for _ in range(args.paths):
        arch = space.sample(rng)
        supernet.set_arch(arch)
        child = supernet.extract(arch).train()
        # interleave to share any drift in machine speed
        t_child1 = step_time(child, x, y, args.repeats)
        t_super = step_time(supernet, x, y, args.repeats)
        t_child2 = step_time(child, x, y, args.repeats)
        t_child = (t_child1 + t_child2) / 2
        ratios.append(t_super / t_child)
        print(f"  path {arch}: supernet step {t_super * 1e3:7.1f} ms, standalone {t_child * 1e3:7.1f} ms, "
              f"ratio {t_super / t_child:.3f}")
    print(f"(a) supernet / standalone training-step time: {statistics.median(ratios):.3f} "
          f"(median over {len(ratios)} paths; target <= 1.10)")

    table = cost_table(space)
    archs = [space.sample(rng) for _ in range(20_000)]
    t = time.perf_counter()
    for arch in archs:
        table.backbone_macs(arch)
    rate = len(archs) / (time.perf_counter() - t)
    print(f"(b) FLOPs table: {rate:,.0f} architectures/s (target >= 10,000/s)")


if __name__ == "__main__":
    main()
