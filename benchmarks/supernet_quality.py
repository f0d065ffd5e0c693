"""How good the fine-tuned detection supernet's paths are: mmAP on the search split of a few fixed
paths after BN recalibration, for the fine-tuned supernet and for the same detector without
detection fine-tuning (pre-trained backbone, untrained heads).

Needs results/{experiment}/supernet_pretrained/supernet.pt and the pre-trained supernet (make demo,
or snakemake --cores 2 results/{experiment}/supernet_pretrained/supernet.pt).

    python benchmarks/supernet_quality.py [--experiment shapes_fpn]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import yaml

from detnas.detectors import DetectorSettings, build_detector
from detnas.evaluate import DetectionImages
from detnas.detectors import detector_from_checkpoint
from detnas.stages.finetune import load_classification_weights
from detnas.scoring import DetectionScorer
from detnas.space import get_space
from detnas.supernet import Supernet

PATHS = ("00000000", "11111111", "22222222", "33333333", "01230123")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--experiment", default="shapes_fpn")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    config = yaml.safe_load(Path("config/config.yaml").read_text())
    exp = config["experiments"][args.experiment]
    search = {"recalibration_images": 500, "eval_images": None, "batch_size": 8, "seed": 0, **exp.get("search", {})}
    data = f"results/data/detection/{exp['data']}"
    device = torch.device("cpu")
    tuned, meta = detector_from_checkpoint(Path(f"results/{args.experiment}/supernet_pretrained/supernet.pt"), device)
    space = get_space(meta["space"])
    body = Supernet(space)
    load_classification_weights(body, Path(f"results/pretrain/{exp['pretrain']}/supernet.pt"))
    untuned = build_detector(body, num_classes=meta["num_classes"], settings=DetectorSettings.from_dict(meta["detector"]))
    val = DetectionImages.load(f"{data}/search_val.json", limit=search["eval_images"], seed=search["seed"])
    recal = DetectionImages.load(f"{data}/supernet_train.json", limit=search["recalibration_images"],
                                 seed=search["seed"], with_objects=True)
    print(f"{args.experiment}: mmAP (AP@[.5:.95]) on {len(val)} search-validation images, BN recalibrated on "
          f"{len(recal)} training images")
    print(f"{'path':<10} {'fine-tuned supernet':>20} {'without fine-tuning':>20}")
    scores = {}
    for name, model in (("tuned", tuned), ("untuned", untuned)):
        scorer = DetectionScorer(model, val, recal, batch_size=search["batch_size"], device=device, seed=0)
        scores[name] = [scorer(space.parse(a)) for a in PATHS]
    for i, a in enumerate(PATHS):
        print(f"{a:<10} {scores['tuned'][i]:20.4f} {scores['untuned'][i]:20.4f}")
    print(f"{'mean':<10} {sum(scores['tuned']) / len(PATHS):20.4f} {sum(scores['untuned']) / len(PATHS):20.4f}")


if __name__ == "__main__":
    main()
