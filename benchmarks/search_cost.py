"""Cost of scoring search candidates on the shapes experiment's fine-tuned supernet.

Prints candidates scored per minute, and the time of scoring a candidate divided by the pure model
compute it needs: the recalibration forwards plus the evaluation forwards, on tensors that are
already prepared (target <= 1.3). Needs the fine-tuned supernet (make demo, or
snakemake results/shapes_fpn/supernet_pretrained/supernet.pt).

    python benchmarks/search_cost.py [--experiment shapes_fpn] [--candidates 8]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from detnas.evaluate import DetectionImages
from detnas.stages.finetune import detector_from_checkpoint
from detnas.space import get_space
from detnas.scoring import DetectionScorer
from detnas.supernet import set_path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--experiment", default="shapes_fpn")
    p.add_argument("--candidates", type=int, default=8)
    p.add_argument("--threads", type=int, default=1, help="a search job's threads in the demo")
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    config = yaml.safe_load(Path("config/config.yaml").read_text())
    exp = config["experiments"][args.experiment]
    search = {"recalibration_images": 500, "eval_images": None, "batch_size": 8, "seed": 0, **exp.get("search", {})}
    data = f"results/data/detection/{exp['data']}"
    supernet = Path(f"results/{args.experiment}/supernet_pretrained/supernet.pt")
    if not supernet.is_file():
        raise SystemExit(f"{supernet} not found: run `make demo` (or snakemake {supernet}) first")
    device = torch.device("cpu")
    t = time.perf_counter()
    model, meta = detector_from_checkpoint(supernet, device)
    val = DetectionImages.load(f"{data}/search_val.json", limit=search["eval_images"], seed=search["seed"])
    recal = DetectionImages.load(f"{data}/supernet_train.json", limit=search["recalibration_images"],
                                 seed=search["seed"], with_objects=True)
    prep = time.perf_counter() - t
    scorer = DetectionScorer(model, val, recal, batch_size=search["batch_size"], device=device, seed=search["seed"])
    space = get_space(meta["space"])
    rng = np.random.default_rng(0)
    archs = [space.sample(rng) for _ in range(args.candidates)]
    print(f"{args.experiment}: {len(val)} search-validation images, {len(recal)} recalibration images "
          f"(prepared once in {prep:.1f} s), batch {search['batch_size']}, {args.threads} thread(s)")
    full, pure = [], []
    for arch in archs:
        t = time.perf_counter()
        fitness = scorer(arch)
        full.append(time.perf_counter() - t)
        # the same model compute alone: recalibration forwards (train mode, no grad), eval forwards
        set_path(model, arch)
        t = time.perf_counter()
        with torch.no_grad():
            model.train()
            for batch in recal.batches(search["batch_size"], device):
                model(*batch)
            model.eval()
            for ims, _ in val.batches(search["batch_size"], device):
                model(ims)
        pure.append(time.perf_counter() - t)
        print(f"  {arch}: mmAP {fitness:.4f}, scored in {full[-1]:.2f} s, model compute {pure[-1]:.2f} s")
    ratio = statistics.median(f / p for f, p in zip(full, pure))
    print(f"candidates scored per minute: {60 / statistics.mean(full):.1f}")
    print(f"scoring time / pure model compute: {ratio:.3f} (median over {len(archs)} candidates; target <= 1.3)")


if __name__ == "__main__":
    main()
