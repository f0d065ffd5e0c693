"""Fine-tuning throughput of the supernet detector against the same detector on the extracted
standalone backbone, measured in one run (same images, same path, same threads).

    python benchmarks/detector_overhead.py [--detector faster_rcnn_fpn] [--size 128] [--batch 4]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from detnas.detectors import DetectorSettings, build_detector
from detnas.engine import Schedule, make_sgd
from detnas.space import get_space
from detnas.supernet import Supernet

DEMO = dict(fpn_channels=32, head_conv_channels=32, head_fc_channels=128, anchor_sizes=[12, 24, 48, 96, 160],
            rpn_batch_size_per_image=64, rpn_pre_nms_top_n_train=300, rpn_post_nms_top_n_train=200,
            box_batch_size_per_image=64)


def images_per_second(model: torch.nn.Module, batch: tuple[list, list], steps: int) -> float:
    opt = make_sgd(model, Schedule(iterations=1, lr=0.001, policy="step", weight_decay=1e-4))
    model.train()
    times = []
    for i in range(steps + 2):
        t = time.perf_counter()
        losses = model(*batch)
        opt.zero_grad(set_to_none=True)
        sum(losses.values()).backward()
        opt.step()
        if i >= 2:
            times.append(time.perf_counter() - t)
    return len(batch[0]) / statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--detector", default="faster_rcnn_fpn", choices=["faster_rcnn_fpn", "retinanet"])
    p.add_argument("--space", default="tiny")
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--paths", type=int, default=3)
    args = p.parse_args()

    torch.manual_seed(0)
    space = get_space(args.space)
    settings = DetectorSettings.from_dict({"name": args.detector, "min_size": args.size, "max_size": args.size,
                                           **{k: v for k, v in DEMO.items() if args.detector == "faster_rcnn_fpn" or k in ("fpn_channels", "anchor_sizes")}})
    g = torch.Generator().manual_seed(0)
    images = [torch.rand(3, args.size, args.size, generator=g) for _ in range(args.batch)]
    targets = [{"boxes": torch.tensor([[10.0, 12.0, 50.0, 60.0], [40.0, 30.0, 120.0, 100.0]]), "labels": torch.tensor([1, 2])}
               for _ in range(args.batch)]
    rng = np.random.default_rng(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.detector}, space {space.name}, "
          f"{args.batch} images of {args.size}px per step")
    ratios = []
    for _ in range(args.paths):
        arch = space.sample(rng)
        supernet = Supernet(space)
        supernet.set_arch(arch)
        child = supernet.extract(arch)
        super_det = build_detector(supernet, num_classes=5, settings=settings)
        child_det = build_detector(child, num_classes=5, settings=settings)
        child_det.load_state_dict({k: v for k, v in super_det.state_dict().items() if ".choices." not in k}, strict=False)
        c1 = images_per_second(child_det, (images, targets), args.steps)
        s = images_per_second(super_det, (images, targets), args.steps)
        c2 = images_per_second(child_det, (images, targets), args.steps)
        c = (c1 + c2) / 2
        ratios.append(s / c)
        print(f"  path {arch}: supernet detector {s:6.1f} img/s, standalone {c:6.1f} img/s, ratio {s / c:.3f}")
    print(f"supernet / standalone fine-tuning throughput: {statistics.median(ratios):.3f} "
          f"(median over {len(ratios)} paths; target >= 0.9)")


if __name__ == "__main__":
    main()
