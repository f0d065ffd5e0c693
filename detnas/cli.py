"""Every stage of the DetNAS workflow as a command. Snakemake runs them for you (see the README);
run one by hand to debug a stage or to use it outside the workflow. Each stage's --settings is a
JSON object whose keys are those of its section in config/config.yaml, documented with their
defaults in workflow/schemas/config.schema.yaml."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

__all__ = ["main"]


def _flops(args: argparse.Namespace) -> int:
    from .stages.arch_files import flops_table

    print("\n".join(flops_table(space=args.space, arch=args.arch, scale_to=args.scale_to, names=args.name,
                                input_size=args.input_size)))
    return 0


def _add_flops(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "flops",
        help="backbone MACs (224x224, stem + searchable blocks) and params of architectures",
        description="Backbone MACs at 224x224 (conv/linear multiply-accumulates of the stem and the "
        "searchable blocks, the paper's FLOPs convention) and parameter counts. Without --arch or --scale-to, "
        "prints the published architectures and the hand-crafted ShuffleNetV2-20/-40 scaled to 300M/1300M; "
        "`width` is the factor on every channel count of the preset space (a space 'small@w1.0703').",
    )
    p.add_argument("--space", default="small",
                   help="search space: a preset (tiny, small, large, large_x1.8) or a width-scaled one, e.g. small@w1.0703")
    p.add_argument("--arch", help="architecture encoding, one digit 0-3 per block")
    p.add_argument("--scale-to", type=float, metavar="MFLOPS",
                   help="also widen --arch (default: the all-3x3 ShuffleNetV2 path) of the preset --space to "
                   "this many backbone MFLOPs (within 2%%)")
    p.add_argument("--name", action="append",
                   help="a published architecture or scaled baseline by name (repeatable)")
    p.add_argument("--input-size", type=int, default=224)
    p.set_defaults(func=_flops)


def _json_arg(text: str) -> Any:
    """A JSON value given inline, or ``@path`` to a JSON file."""
    try:
        if text.startswith("@"):
            with open(text[1:]) as f:
                return json.load(f)
        return json.loads(text)
    except (OSError, json.JSONDecodeError) as exc:
        raise argparse.ArgumentTypeError(f"not valid JSON ({exc}): {text[:200]!r}") from None


# The --settings keys of each stage (tests/test_cli.py checks them against the stages' settings classes)
SETTINGS_KEYS = {
    "pretrain": ["space", "image_size", "batch_size", "schedule", "label_smoothing", "dropout", "seed",
                 "checkpoint_every", "log_every", "eval_batch_size", "amp", "channels_last", "loader_probe"],
    "finetune": ["space", "detector", "batch_size", "schedule", "seed", "checkpoint_every", "log_every",
                 "eval_batch_size", "schedule_factor", "amp", "channels_last", "loader_probe"],
    "search": ["method", "population", "parents", "generations", "mutation_prob", "mutations", "crossovers",
               "max_mflops", "min_mflops", "max_latency_ms",
               "recalibration_images", "eval_images", "batch_size", "seed", "repeats", "amp", "channels_last",
               "overlap_evaluation", "space", "proxy_input_size", "proxy_batches", "proxy_batch_size", "proxy_seed"],
    "split-detection": ["sources", "split", "check_images"],
    "split-classification": ["train", "val", "holdout"],
    "synthesize": ["num_train", "num_test", "image_size", "max_objects", "seed", "difficulty (detection)",
                   "train_per_class", "val_per_class", "image_size", "seed (classification)"],
}


def _stage_args(p: argparse.ArgumentParser, *, settings: bool = True, mlflow: bool = True, compute: bool = False) -> None:
    if settings:
        command = p.prog.split()[-1]
        p.add_argument("--settings", type=_json_arg, required=True,
                       help=f"the stage's settings as JSON, or @file; keys: {', '.join(SETTINGS_KEYS[command])} "
                            f"(meanings and defaults: workflow/schemas/config.schema.yaml)")
    if mlflow:
        p.add_argument("--mlflow", type=_json_arg, default={"experiment": "detnas", "run_name": p.prog.split()[-1]},
                       help='the MLflow run to log to, as JSON: {"experiment", "run_name", "tags"}; a resumed job '
                            "continues the run its checkpoint names")
    if compute:
        p.add_argument("--threads", type=int, default=0, help="CPU threads of the job (0: torch's default)")
        p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")


def _channels_last(text: str) -> bool | str:
    if text not in ("auto", "true", "false"):
        raise argparse.ArgumentTypeError(f"expected auto, true or false, got {text!r}")
    return "auto" if text == "auto" else text == "true"


def _precision_args(p: argparse.ArgumentParser, *, default: str | None, default_help: str) -> None:
    """--amp and --channels-last, the stages' ``amp`` and ``channels_last`` settings (detnas.precision)."""
    p.add_argument("--amp", choices=["auto", "bf16", "fp16", "off"], default=default,
                   help="mixed precision of the forward passes: bf16, fp16, off (float32), or auto (bf16 on a GPU "
                        f"with native bf16, else off); default: {default_help}")
    p.add_argument("--channels-last", type=_channels_last, default=default, metavar="{auto,true,false}",
                   help=f"NHWC convolutions: true, false, or auto (true on CUDA); default: {default_help}")


def _training_outputs(p: argparse.ArgumentParser) -> None:
    """What a training stage (pretrain, finetune) writes: weights, metrics.json, curves, checkpoints."""
    p.add_argument("--weights", type=Path, required=True)
    p.add_argument("--metrics", type=Path, required=True)
    p.add_argument("--curves", type=Path, required=True)
    p.add_argument("--checkpoint-dir", type=Path, required=True)


def _arch_arg(p: argparse.ArgumentParser, what: str) -> None:
    group = p.add_mutually_exclusive_group()
    group.add_argument("--arch", help=f"{what} this architecture as a standalone network instead of the supernet")
    group.add_argument("--arch-file", type=Path, help="the same, read from a chosen-architecture JSON (key 'arch')")


def _arch(args: argparse.Namespace) -> tuple[str | None, dict[str, Any]]:
    from .stages.arch_files import arch_and_settings

    return arch_and_settings(args.arch, getattr(args, "arch_file", None), args.settings)


def _synthesize(args: argparse.Namespace) -> int:
    from .data import synthetic

    s = args.settings
    if args.kind == "detection":
        synthetic.synthesize_detection(args.out, **s)
    else:
        synthetic.synthesize_classification(args.out, **s)
    return 0


def _add_synthesize(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("synthesize", help="draw the embedded synthetic shapes datasets",
                       description="Draw the demo's synthetic data: a COCO-style detection dataset of coloured shapes, "
                       "or an ImageFolder classification dataset standing in for ImageNet. Nothing is downloaded.")
    p.add_argument("--kind", choices=["detection", "classification"], required=True)
    p.add_argument("--out", type=Path, required=True, help="output folder (replaced atomically)")
    _stage_args(p, mlflow=False)
    p.set_defaults(func=_synthesize)


def _split_detection(args: argparse.Namespace) -> int:
    from .stages.split import run_split_detection

    run_split_detection(args.settings, out_dir=args.out_dir, mlflow=args.mlflow, threads=args.threads)
    return 0


def _split_classification(args: argparse.Namespace) -> int:
    from .stages.split import run_split_classification

    run_split_classification(args.settings, out=args.out, mlflow=args.mlflow)
    return 0


def _add_split(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("split-detection", help="validate a detection dataset; cut the search-validation split",
                       description="Check a COCO or VOC detection dataset once (annotations, boxes, every image decoded) "
                       "and cut the seeded search-validation split out of its training part. Writes train.json, "
                       "supernet_train.json, search_val.json, test.json and split_metrics.json to --out-dir; nothing "
                       "when the data has a problem (every bad file is named).")
    p.add_argument("--out-dir", type=Path, required=True)
    p.add_argument("--threads", type=int, default=1, help="threads decoding the images (the job's threads)")
    _stage_args(p)
    p.set_defaults(func=_split_detection)
    p = sub.add_parser("split-classification", help="validate a classification dataset; hold out ClsNAS's images",
                       description="Scan an ImageFolder classification dataset and hold out a seeded set of training "
                       "images for ClsNAS's fitness; writes split.json.")
    p.add_argument("--out", type=Path, required=True)
    _stage_args(p)
    p.set_defaults(func=_split_classification)


def _pretrain(args: argparse.Namespace) -> int:
    from .stages.pretrain import run_pretrain

    arch, settings = _arch(args)
    run_pretrain(
        settings, split_file=args.split, weights_out=args.weights, metrics_out=args.metrics,
        curves_out=args.curves, checkpoint_dir=args.checkpoint_dir, arch=arch, val_root=args.val,
        mlflow=args.mlflow, threads=args.threads, device=args.device,
    )
    return 0


def _add_pretrain(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("pretrain", help="classification training: the supernet, or one architecture (--arch)",
                       description="Train on the classification split (ImageNet): the supernet with one uniformly "
                       "sampled path per iteration, or, with --arch/--arch-file, that architecture as a standalone "
                       "network (then evaluated for top-1). Checkpoints every checkpoint_every iterations and on "
                       "SIGTERM; a rerun with the same settings and inputs resumes.")
    p.add_argument("--split", type=Path, required=True, help="split.json of the classification data")
    _arch_arg(p, "train")
    p.add_argument("--val", type=Path, help="ImageFolder root for the final top-1 (default: the split's val root)")
    _training_outputs(p)
    _stage_args(p, compute=True)
    p.set_defaults(func=_pretrain)


def _finetune(args: argparse.Namespace) -> int:
    from .stages.finetune import run_finetune

    arch, settings = _arch(args)
    run_finetune(
        settings, train_file=args.train, init=args.init, arch=arch, weights_out=args.weights,
        metrics_out=args.metrics, curves_out=args.curves, checkpoint_dir=args.checkpoint_dir,
        mlflow=args.mlflow, threads=args.threads, device=args.device,
    )
    return 0


def _add_finetune(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("finetune", help="detection fine-tuning: the supernet path-wise, or one architecture (--arch)",
                       description="Fine-tune a Faster R-CNN + FPN or RetinaNet detector on the training annotations: "
                       "the supernet one path per iteration, or one architecture (--arch/--arch-file), from "
                       "classification weights (--init) or from scratch. Checkpoints and resumes like pretrain.")
    p.add_argument("--train", type=Path, required=True, help="training annotations (internal COCO-style JSON)")
    p.add_argument("--init", type=Path, help="classification checkpoint to start from (default: from scratch)")
    _arch_arg(p, "fine-tune")
    _training_outputs(p)
    _stage_args(p, compute=True)
    p.set_defaults(func=_finetune)


def _search(args: argparse.Namespace) -> int:
    from .stages.search import run_search_stage

    run_search_stage(
        args.settings, supernet=args.supernet, val_file=args.val, recal_file=args.recal, arch_out=args.arch_out,
        history_out=args.history, curve_out=args.curve, checkpoint_dir=args.checkpoint_dir, mlflow=args.mlflow,
        threads=args.threads, device=args.device, latency_table=args.latency_table,
    )
    return 0


def _add_search(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("search", help="evolutionary (DetNAS, ClsNAS) or random search under a FLOPs constraint",
                       description="Search the supernet for the best architecture under the backbone FLOPs bounds: "
                       "method detnas (EA, fitness mmAP after BN recalibration), random (same budget), clsnas (EA, "
                       "top-1 of the classification supernet), or a training-free proxy of each candidate's own "
                       "randomly initialized network (synflow, naswot, zico, mae_entropy; no supernet). Writes the chosen architecture, every scored "
                       "candidate and the search curve; a killed search resumes without re-scoring.")
    p.add_argument("--supernet", type=Path,
                   help="fine-tuned detection supernet (detnas, random) or pre-trained classification supernet (clsnas); "
                        "none for a proxy search (synflow, naswot, zico, mae_entropy: settings space and proxy_input_size)")
    p.add_argument("--val", type=Path, required=True,
                   help="search-validation annotations (detnas, random), the classification split.json (clsnas), or "
                        "the detection training annotations whose images feed a data-dependent proxy")
    p.add_argument("--recal", type=Path, help="training annotations for BN recalibration (detnas, random)")
    p.add_argument("--arch-out", type=Path, required=True, help="the chosen architecture (JSON)")
    p.add_argument("--history", type=Path, required=True, help="every scored candidate (CSV)")
    p.add_argument("--curve", type=Path, required=True, help="best-so-far and top-k mean per generation (PNG)")
    p.add_argument("--checkpoint-dir", type=Path, required=True)
    p.add_argument("--latency-table", type=Path,
                   help="the experiment's latency table (python -m detnas latency-table): with settings "
                        "max_latency_ms, a candidate's backbone must also be within that many ms by the table")
    _stage_args(p, compute=True)
    p.set_defaults(func=_search)


def _fixed_arch(args: argparse.Namespace) -> int:
    from .stages.arch_files import run_control_arch, run_fixed_arch, run_published_arch

    if args.published is not None:
        run_published_arch(name=args.published, method=args.method, reference=args.reference, out=args.out)
        return 0
    if args.space is None:
        raise ValueError("fixed-arch: give --space (or --published NAME)")
    if args.control is not None:
        run_control_arch(space=args.space, control=args.control, min_mflops=args.min_mflops, max_mflops=args.max_mflops,
                         out=args.out, latency_table=args.latency_table, max_latency_ms=args.max_latency_ms,
                         search=args.search_settings)
        return 0
    if args.arch is None and args.uniform is None:
        raise ValueError("fixed-arch: give --arch, --uniform, --control or --published")
    run_fixed_arch(space=args.space, arch=args.arch, uniform=args.uniform, scale_to=args.scale_to,
                   method=args.method, out=args.out)
    return 0


def _add_fixed_arch(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("fixed-arch", help="write a chosen-architecture file without searching (hand-crafted baselines)",
                       description="Write an arch.json as a search would, for an architecture you choose (e.g. the "
                       "hand-crafted ShuffleNetV2: every block choice 0), so it can be retrained and evaluated. With "
                       "--scale-to, every channel count is multiplied by the one factor that brings the backbone to "
                       "that budget (within 2%, at or under it where the rounding allows); the file's space is then the "
                       "width-scaled one (e.g. small@w1.0703) and the retraining stages build that.")
    p.add_argument("--space")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--arch", help="architecture encoding")
    group.add_argument("--uniform", type=int, choices=range(4), help="every block this choice (0: ShuffleNetV2)")
    group.add_argument("--control", choices=("flops_max", "params_max"),
                       help="the training-free control: the architecture with the most backbone MACs / parameters "
                            "within --min-mflops and --max-mflops")
    group.add_argument("--published", metavar="NAME", help="an architecture the DetNAS authors published (its own space)")
    p.add_argument("--reference", action="store_true", help="--published: retrained as a reference outside the budget")
    p.add_argument("--min-mflops", type=float)
    p.add_argument("--max-mflops", type=float)
    p.add_argument("--scale-to", type=float, metavar="MFLOPS",
                   help="widen the network to this many backbone MFLOPs (224x224, stem + blocks); default: unscaled")
    p.add_argument("--method", required=True, help="name of the baseline, e.g. shufflenetv2")
    _latency_args(p)
    p.add_argument("--search-settings", type=_json_arg,
                   help="--control with --max-latency-ms: the search settings (JSON) whose EA finds the control")
    p.add_argument("--out", type=Path, required=True)
    p.set_defaults(func=_fixed_arch)


def _latency_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--latency-table", type=Path, help="the experiment's latency table (python -m detnas latency-table)")
    p.add_argument("--max-latency-ms", type=float,
                   help="upper bound on the backbone's latency by that table, in ms (search.max_latency_ms)")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return value


def _evaluate(args: argparse.Namespace) -> int:
    from .stages.evaluate import run_evaluate

    run_evaluate(
        detector=args.detector, test_file=args.test, arch_file=args.arch_file,
        classifier_metrics=args.classifier_metrics, out=args.out, info=args.info, primary_metric=args.primary,
        batch_size=args.batch_size, mlflow=args.mlflow, threads=args.threads, device=args.device,
        amp=args.amp, channels_last=args.channels_last, detector_metrics=args.detector_metrics,
        pictures=args.pictures, max_images=args.max_images, latency=args.latency,
    )
    return 0


def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="COCO (and VOC) metrics of a retrained detector on the test split -> final.json",
                       description="Score a retrained detector on the test split with COCOeval (and, for a VOC primary "
                       "metric, the PASCAL VOC AP per class) and write final.json: the architecture, its MFLOPs and "
                       "params, AP..APl (null where no box of that size exists), the primary metric's name and value, "
                       "and the top-1 of its classifier.")
    p.add_argument("--detector", type=Path, required=True)
    p.add_argument("--test", type=Path, required=True, help="test annotations (internal COCO-style JSON)")
    p.add_argument("--arch-file", type=Path, required=True, help="the chosen architecture (search output)")
    p.add_argument("--classifier-metrics", type=Path, required=True, help="metrics.json of the retrained classifier")
    p.add_argument("--detector-metrics", type=Path,
                   help="metrics.json of the detector's fine-tuning: its loss trend goes into final.json's health")
    p.add_argument("--pictures", type=Path, help="also draw a few test images with ground truth and detections (PNG)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--info", type=_json_arg, default={}, help="experiment, method, dataset, detector (JSON)")
    p.add_argument("--primary", default="AP",
                   help="the headline metric: AP (COCO mmAP) or mAP50_voc07 (VOC: the VOC 2007 11-point AP at IoU 0.5, "
                   "difficult objects ignored; also computes mAP50_voc12, the area variant, and the per-class APs); "
                   "any of AP, AP50, AP75, APs, APm, APl, mAP50_voc07, mAP50_voc12")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-images", type=_positive_int, metavar="N",
                   help="evaluate N test images drawn with seed 0, not all (a rehearsal's timing; final.json says so in "
                   "test_images against test_images_total)")
    p.add_argument("--latency", type=Path, help="the network's latency.json (python -m detnas latency): its predicted "
                   "and measured backbone latency go into final.json")
    _precision_args(p, default=None, default_help="the detector's own fine-tuning setting, saved in its checkpoint")
    _stage_args(p, settings=False, compute=True)
    p.set_defaults(func=_evaluate)


def _latency_table(args: argparse.Namespace) -> int:
    from .stages.latency import run_latency_table

    s = args.settings
    num_classes = args.num_classes
    if args.classes_from is not None:
        from .io import read_json

        categories = read_json(args.classes_from).get("categories")
        if not categories:
            raise ValueError(f"{args.classes_from}: no categories (not a detection annotation file)")
        num_classes = len(categories)
    run_latency_table(space=args.space, settings={**s, **({"threads": args.threads} if args.threads else {})},
                      detector=args.detector, num_classes=num_classes, out=args.out, validation_out=args.validation,
                      plot_out=args.png)
    return 0


def _add_latency_table(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("latency-table", help="time every block choice of a space on this device -> latency table",
                       description="Time every (block position, choice) of the space at the detection input size on "
                       "this machine's device (torch.utils.benchmark, warmed up, median of repeats; CUDA-synchronised "
                       "on a GPU), and the stem; calibrate the sum on seeded random whole backbones; validate it "
                       "against others (mean and worst error in %%) and plot predicted against measured. The table "
                       "records the device, threads, input and batch size and the library versions, and is refused "
                       "where any of them differ.")
    p.add_argument("--space", required=True)
    p.add_argument("--settings", type=_json_arg, required=True,
                   help="JSON: input_size, batch_size (1), device (cpu|cuda), threads (1), repeats (15), warmup (5), "
                        "block_seconds (0.01), calibration_archs (10), validate (10), seed (0); the experiment's "
                        "latency section (workflow/schemas/config.schema.yaml)")
    p.add_argument("--detector", type=_json_arg,
                   help="JSON: the detector's settings; its fixed parts (FPN, head, post-processing) are timed too")
    p.add_argument("--num-classes", type=int, help="with --detector: the dataset's classes")
    p.add_argument("--classes-from", type=Path, help="with --detector: an annotation file whose categories are the classes")
    p.add_argument("--out", type=Path, required=True, help="the table (JSON)")
    p.add_argument("--validation", type=Path, required=True, help="the validation (JSON)")
    p.add_argument("--png", type=Path, required=True, help="predicted against measured (PNG)")
    p.add_argument("--threads", type=int, default=0, help="override the settings' threads (0: theirs)")
    p.set_defaults(func=_latency_table)


def _latency(args: argparse.Namespace) -> int:
    from .stages.latency import run_arch_latency

    run_arch_latency(arch_file=args.arch_file, table_file=args.table, out=args.out)
    return 0


def _add_latency(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("latency", help="a network's predicted and measured backbone latency -> latency.json",
                       description="Predict the backbone latency of an arch.json from the latency table (the sum a "
                       "latency bound reads) and time the backbone end to end on this machine with the table's "
                       "settings. The table must be this device's: one from another device, thread count or torch "
                       "version is refused.")
    p.add_argument("--arch-file", type=Path, required=True)
    p.add_argument("--table", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.set_defaults(func=_latency)


def _detect(args: argparse.Namespace) -> int:
    from .stages.detect import run_detect

    run_detect(checkpoint=args.checkpoint, images=args.images, out=args.out, score_threshold=args.score_threshold,
               classes_from=args.classes_from, batch_size=args.batch_size, device=args.device, threads=args.threads,
               amp=args.amp, channels_last=args.channels_last)
    return 0


def _add_detect(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("detect", help="run a retrained detector on your own images -> detections.json, annotated jpgs",
                       description="Run a retrained detector (the evaluate stage's inference: same batching, precision "
                       "and COCO conversion) on image files and folders (jpg, jpeg, png, bmp; a folder's files sorted "
                       "by name). Writes to --out: detections.json (every detection, COCO results format), images.json "
                       "(image id, file name, width and height of each image) and <stem>.jpg, each image with the "
                       "detections above --score-threshold drawn with their class names. With --classes-from, images "
                       "of that annotation file keep their ids there, so detections.json evaluates against it as is.")
    p.add_argument("--checkpoint", type=Path, required=True, help="the detector (retrain_finetune's detector.pt)")
    p.add_argument("images", type=Path, nargs="+", help="image files and folders of images")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--score-threshold", type=float, default=0.3,
                   help="draw detections scoring at least this (detections.json holds all of them); default 0.3")
    p.add_argument("--classes-from", type=Path, metavar="ANN_JSON",
                   help="a COCO annotation file of the detector's classes: class names from it, image ids of its images")
    p.add_argument("--batch-size", type=_positive_int, default=8)
    _precision_args(p, default=None, default_help="the detector's own fine-tuning setting, saved in its checkpoint")
    _stage_args(p, settings=False, mlflow=False, compute=True)
    p.set_defaults(func=_detect)


def _input_size(text: str) -> tuple[int, int]:
    """``S`` (square), ``HxW`` or ``H,W``."""
    parts = text.lower().replace(",", "x").split("x")
    try:
        values = [int(v) for v in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected S, HxW or H,W in pixels, got {text!r}") from None
    if len(values) == 1:
        values *= 2
    if len(values) != 2 or min(values) < 32:
        raise argparse.ArgumentTypeError(f"expected S, HxW or H,W, each at least 32 px, got {text!r}")
    return values[0], values[1]


def _export(args: argparse.Namespace) -> int:
    from .stages.export import run_export

    run_export(checkpoint=args.checkpoint, out=args.out, input_size=args.input_size, images=args.images or (),
               test_file=args.test, max_images=args.max_images, opset=args.opset, exporter=args.exporter,
               threads=args.threads)
    return 0


def _add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="a retrained detector as ONNX at a fixed input size, checked against PyTorch",
                       description="Export a retrained detector to ONNX at one input size (1, 3, H, W): detector.onnx "
                       "(the whole detector on a letterboxed RGB image in [0, 1], outputs boxes, scores, labels) and "
                       "backbone.onnx (the backbone's feature maps), and export.json (input, outputs, opset, exporter, "
                       "versions, parity). ONNX Runtime and PyTorch are compared on real images first; nothing is "
                       "written when they differ beyond the tolerances.")
    p.add_argument("--checkpoint", type=Path, required=True, help="the detector (retrain_finetune's detector.pt)")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--input-size", type=_input_size, metavar="HxW",
                   help="the fixed input: S, HxW or H,W (default: the detector's min_size x max_size)")
    p.add_argument("--images", type=Path, nargs="+", help="image files and folders for the parity check")
    p.add_argument("--test", type=Path, metavar="ANN_JSON",
                   help="or an annotation file (e.g. the test split) whose images the parity check runs on")
    p.add_argument("--max-images", type=_positive_int, default=8, help="images the parity check runs on (default 8)")
    p.add_argument("--opset", type=_positive_int, default=17)
    p.add_argument("--exporter", choices=["torchscript", "dynamo"], default="torchscript",
                   help="torch.onnx.export's TorchScript-based exporter (dynamo=False, the default: torch.export "
                   "cannot trace torchvision's NMS) or the torch.export-based one (needs onnxscript)")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's and ONNX Runtime's default)")
    p.set_defaults(func=_export)


def _compare(args: argparse.Namespace) -> int:
    from .stages.compare import run_compare

    histories = dict(h.split("=", 1) for h in args.history)
    run_compare(finals=args.final, histories={k: Path(v) for k, v in histories.items()}, csv_out=args.csv,
                png_out=args.png, experiment=args.experiment, mlflow=args.mlflow, random_archs=args.random_archs,
                max_mflops=args.max_mflops, summary_out=args.summary, ledger=args.ledger)
    return 0


def _add_compare(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("compare", help="methods of an experiment side by side -> comparison.csv and .png",
                       description="Put the final.json of every method of an experiment in one table and one plot, "
                       "with the EA-vs-random search curves.")
    p.add_argument("--experiment", required=True)
    p.add_argument("--final", type=Path, nargs="+", required=True, help="final.json of each method")
    p.add_argument("--history", nargs="*", default=[], help="METHOD=history.csv of searches to plot")
    p.add_argument("--random-archs", type=Path, help="summary.json of the random architectures: one row, mean +- std")
    p.add_argument("--max-mflops", type=float, help="the experiment's FLOPs limit (search.max_mflops), which the "
                   "rows' descriptions name; default: none")
    p.add_argument("--csv", type=Path, required=True)
    p.add_argument("--summary", type=Path, help="also the report's front page table: every network, best first")
    p.add_argument("--ledger", type=Path, help="ledger.json of the run: each row's cost (GPU-hours, wall-clock hours)")
    p.add_argument("--png", type=Path, required=True)
    _stage_args(p, settings=False)
    p.set_defaults(func=_compare)


def _ranking(args: argparse.Namespace) -> int:
    from .stages.ranking import run_ranking_stage

    run_ranking_stage(
        args.settings, finals=args.final, detection_supernet=args.detection_supernet,
        detection_val=args.detection_val, detection_recal=args.detection_recal,
        detection_histories=args.detection_history, classification_supernet=args.classification_supernet,
        classification_split=args.classification_split, classification_histories=args.classification_history,
        json_out=args.json, png_out=args.png, experiment=args.experiment, mlflow=args.mlflow,
        threads=args.threads, device=args.device, bootstrap_samples=args.bootstrap_samples,
        training_free=args.training_free,
    )
    return 0


def _add_ranking(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("ranking", help="does the supernet rank architectures as retraining does? -> ranking.json, .png",
                       description="Pair the supernet fitness of every retrained architecture that is a path of the "
                       "supernet with its test metric, for the detection supernet (mmAP on the search split, DetNAS's "
                       "fitness) and the pre-trained classification supernet (top-1, ClsNAS's fitness); report Kendall "
                       "tau-b and Spearman rho with 90% bootstrap intervals and plot them. A fitness found in a search "
                       "history is reused; the others are scored with the search's scorer and settings.")
    p.add_argument("--experiment", required=True)
    p.add_argument("--settings", type=_json_arg, required=True,
                   help=f"the experiment's search settings as JSON, or @file; keys: {', '.join(SETTINGS_KEYS['search'])} "
                        "(method is not needed; meanings and defaults: workflow/schemas/config.schema.yaml)")
    p.add_argument("--final", type=Path, nargs="+", required=True,
                   help="final.json of each retrained architecture; those of another space are left out")
    p.add_argument("--detection-supernet", type=Path, required=True,
                   help="the detection supernet fine-tuned from the pre-trained supernet")
    p.add_argument("--detection-val", type=Path, required=True, help="search-validation annotations")
    p.add_argument("--detection-recal", type=Path, required=True, help="the supernet's training annotations")
    p.add_argument("--detection-history", type=Path, nargs="*", default=[],
                   help="history.csv of searches on that supernet (detnas, random): fitness reused")
    p.add_argument("--classification-supernet", type=Path, required=True, help="the pre-trained classification supernet")
    p.add_argument("--classification-split", type=Path, required=True, help="its split.json")
    p.add_argument("--classification-history", type=Path, nargs="*", default=[],
                   help="history.csv of searches on that supernet (clsnas): fitness reused")
    p.add_argument("--bootstrap-samples", type=int, default=2000)
    p.add_argument("--training-free", type=_json_arg,
                   help='JSON: the training-free scores beside the supernets\' {"proxies": [...], "input_size", '
                        '"batches", "batch_size", "seed", "data": detection training annotations} (the controls\' '
                        'counts, backbone MFLOPs and parameters, always)')
    p.add_argument("--json", type=Path, required=True)
    p.add_argument("--png", type=Path, required=True)
    _stage_args(p, settings=False, compute=True)
    p.set_defaults(func=_ranking)


def _search_curves(args: argparse.Namespace) -> int:
    from .stages.search_curves import run_search_curves

    histories = {}
    for item in args.history:
        method, sep, path = item.partition("=")
        if not sep:
            raise ValueError(f"--history {item!r}: expected METHOD=history.csv")
        histories[method] = Path(path)
    run_search_curves(histories, population=args.population, png_out=args.png, json_out=args.json,
                      title=args.title, ylabel=args.ylabel)
    return 0


def _add_search_curves(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("search-curves", help="searches side by side against the generation (Fig. 2), over repeats",
                       description="Draw the best and the top-k mean fitness per generation of each search, as the "
                       "mean over its repeats with a min-max band, and write the curves' data as JSON.")
    p.add_argument("--history", nargs="+", required=True, help="METHOD=history.csv of each search")
    p.add_argument("--population", type=int, required=True, help="k of the top-k mean (the search's population)")
    p.add_argument("--title", default="", help="the figure's title (name the experiment and the supernet)")
    p.add_argument("--ylabel", default="mmAP (search split, 0-1)", help="what the fitness is")
    p.add_argument("--png", type=Path, required=True)
    p.add_argument("--json", type=Path, required=True)
    p.set_defaults(func=_search_curves)


def _random_arch(args: argparse.Namespace) -> int:
    from .stages.arch_files import run_random_arch

    run_random_arch(space=args.space, index=args.index, count=args.count, seed=args.seed,
                    min_mflops=args.min_mflops, max_mflops=args.max_mflops, out=args.out,
                    latency_table=args.latency_table, max_latency_ms=args.max_latency_ms)
    return 0


def _add_random_arch(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("random-arch", help="the i-th of N random architectures under the FLOPs bounds (Table 5's baseline)",
                       description="Draw N distinct architectures uniformly from the space under the FLOPs bounds "
                       "(seeded: the same seed gives the same N) and write the --index-th as an arch.json, to be "
                       "retrained and evaluated like a searched one.")
    p.add_argument("--space", required=True)
    p.add_argument("--index", type=int, required=True, help="which one, 1..count")
    p.add_argument("--count", type=int, required=True, help="how many are drawn (the paper: 20)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-mflops", type=float, help="upper bound on backbone MACs at 224x224, in millions")
    p.add_argument("--min-mflops", type=float, help="lower bound")
    _latency_args(p)
    p.add_argument("--out", type=Path, required=True)
    p.set_defaults(func=_random_arch)


def _random_archs_summary(args: argparse.Namespace) -> int:
    from .stages.compare import run_random_archs_summary

    run_random_archs_summary(finals=args.final, out=args.out, experiment=args.experiment, mlflow=args.mlflow)
    return 0


def _add_random_archs_summary(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("random-archs-summary", help="mean, std, min, max of the random architectures' final.json",
                       description="Summarize the retrained random architectures of an experiment (the paper's "
                       "'Random (20 nets)': mean +- std of every metric) into summary.json.")
    p.add_argument("--experiment", required=True)
    p.add_argument("--final", type=Path, nargs="+", required=True, help="final.json of each random architecture")
    p.add_argument("--out", type=Path, required=True)
    _stage_args(p, settings=False)
    p.set_defaults(func=_random_archs_summary)


def _plot_archs(args: argparse.Namespace) -> int:
    from .stages.architectures import run_plot_archs

    run_plot_archs(args.item, out=args.out, title=args.title, labels=args.label or [], published=args.published)
    return 0


def _add_plot_archs(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("plot-archs", help="draw architectures as rows of blocks coloured by choice (Fig. 4)",
                       description="Draw backbones block by block, coloured by choice (ShuffleNetV2 3x3, 5x5, 7x7, "
                       "Xception), stages apart, each row labelled with its backbone MACs at 224x224: the paper's "
                       "Fig. 4. An item is a published name (see `flops`), SPACE:ENCODING (e.g. "
                       "small:21202112331300313132) or an arch.json written by a search; --published adds every "
                       "published architecture, to set yours beside the paper's.")
    p.add_argument("item", nargs="*", help="published name, SPACE:ENCODING or arch.json file, drawn top to bottom")
    p.add_argument("--label", action="append",
                   help="row label of the next item, in order (repeatable; default: the name, the arch.json's "
                   "method folder, or SPACE:ENCODING)")
    p.add_argument("--published", action="store_true", help="also draw every published architecture, after the items")
    p.add_argument("--title", default="Backbone architectures", help="the figure's title")
    p.add_argument("--out", type=Path, required=True, help="the figure (PNG, or PDF/SVG by the suffix)")
    p.set_defaults(func=_plot_archs)


def _ledger(args: argparse.Namespace) -> int:
    from .stages.ledger import run_ledger

    run_ledger(jobs=args.jobs, json_out=args.json, csv_out=args.csv, experiment=args.experiment, mlflow=args.mlflow,
               plan=args.plan)
    return 0


def _add_ledger(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("ledger", help="what a run spent, per stage and per method -> ledger.json and .csv",
                       description="Add up the wall-clock, CPU and GPU hours and peak memory of an experiment's jobs "
                       "from their Snakemake benchmark files: the paper's Table 4 for this run.")
    p.add_argument("--experiment", required=True)
    p.add_argument("--jobs", type=_json_arg, required=True,
                   help='JSON list: {"stage", "name", "methods": [...], "gpus", "benchmark": file} per job')
    p.add_argument("--json", type=Path, required=True)
    p.add_argument("--csv", type=Path, required=True)
    p.add_argument("--plan", type=Path, help="the experiment's plan.json: its prediction beside what was spent")
    _stage_args(p, settings=False)
    p.set_defaults(func=_ledger)


def _json_or_file(text: str) -> Any:
    """A JSON value given inline, ``@path`` to a JSON file, or the path of an existing JSON file."""
    if not text.startswith("@") and not text.lstrip().startswith(("{", "[")) and os.path.isfile(text):
        text = "@" + text
    return _json_arg(text)


def _stage_file(text: str) -> tuple[str, Path]:
    """``STAGE=FILE``."""
    stage, sep, path = text.partition("=")
    if not sep or not stage or not path:
        raise argparse.ArgumentTypeError(f"expected STAGE=FILE, got {text!r}")
    return stage, Path(path)


def _rehearse(args: argparse.Namespace) -> int:
    from .stages.rehearse import run_rehearse

    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    run_rehearse(stage=args.stage, command=command, out=args.out, log=args.log, metrics=args.metrics,
                 batch_size=args.batch_size, warmup_steps=args.warmup_steps, arch_file=args.arch_file, final=args.final)
    return 0


def _add_rehearse(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("rehearse", help="run a stage's command for a few steps and time it -> rehearsal JSON",
                       description="Run a stage's real command (after --) at rehearsal length, its output to --log, "
                       "and write what it measured (time per step, candidate or image; peak memory; the device) "
                       "to --out. Exits 0 also when the command fails: the failure is in --out, for the plan.")
    p.add_argument("--stage", required=True, help="pretrain_supernet, finetune_supernet, search, retrain_pretrain, "
                   "retrain_finetune or evaluate")
    p.add_argument("--out", type=Path, required=True, help="the rehearsal's JSON")
    p.add_argument("--log", type=Path, required=True, help="the command's stdout and stderr")
    p.add_argument("--metrics", type=Path, help="training stages: the metrics.json the command writes")
    p.add_argument("--batch-size", type=int, help="training stages: images per step (the stage's batch_size)")
    p.add_argument("--warmup-steps", type=int, default=0, help="training stages: steps not timed (default 0)")
    p.add_argument("--arch-file", type=Path, help="search: the arch.json the command writes")
    p.add_argument("--final", type=Path, help="evaluate: the final.json the command writes")
    p.add_argument("command", nargs=argparse.REMAINDER, help="-- then the stage's command")
    p.set_defaults(func=_rehearse)


def _plan(args: argparse.Namespace) -> int:
    from .stages.plan import run_plan, show_plan

    making = [a for a in ("jobs", "rehearsal", "profile", "json", "md") if getattr(args, a) is not None]
    if args.plan is not None:
        if making:
            raise ValueError(f"give either a plan.json to print or --jobs etc. to make one, not both "
                             f"(got {', '.join('--' + a for a in making)})")
        show_plan(args.plan)
        return 0
    missing = [f"--{a}" for a in ("jobs", "rehearsal", "profile", "json", "md") if a not in making]
    if missing:
        raise ValueError(f"to make a plan give {', '.join(missing)} (or a plan.json to print)")
    rehearsals = dict(args.rehearsal)
    if len(rehearsals) < len(args.rehearsal):
        raise ValueError("--rehearsal: one file per stage")
    run_plan(jobs=args.jobs, rehearsals=rehearsals, profile=args.profile, json_out=args.json, md_out=args.md,
             experiment=args.experiment or args.json.absolute().parent.name)
    return 0


def _add_plan(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("plan", help="predict a full run's cost from its rehearsal -> plan.json and .md; or print one",
                       description="With --jobs, --rehearsal, --profile, --json and --md: predict each job's "
                       "wall-clock and GPU-hours from the rehearsals, per stage and in total, with the wall-clock "
                       "of the whole target at the profile's jobs at once, and flag what needs a look. With a "
                       "plan.json: print it.")
    p.add_argument("plan", nargs="?", type=Path, help="a plan.json to print")
    p.add_argument("--experiment", help="default: the folder of --json")
    p.add_argument("--jobs", type=_json_or_file,
                   help='JSON list (inline, @file or a file): the ledger\'s jobs {"stage", "name", "methods", "gpus", '
                        '"benchmark"} with "steps", "candidates" or "images"')
    p.add_argument("--rehearsal", type=_stage_file, nargs="+", metavar="STAGE=FILE",
                   help="detnas rehearse's JSON of each stage")
    p.add_argument("--profile", type=_json_or_file,
                   help='JSON (inline, @file or a file): {"parallel_jobs", "runtime_min", "cpus_per_gpu"}')
    p.add_argument("--json", type=Path, help="the plan.json to write")
    p.add_argument("--md", type=Path, help="the plan as Markdown")
    p.set_defaults(func=_plan)


def _report(args: argparse.Namespace) -> int:
    from .stages.report import retitle_report, run_report

    if args.html is not None:
        retitle_report(args.html)
    run_report(experiment=args.experiment, config=args.config, results=args.results)
    return 0


def _add_report(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="print an experiment's comparison table and where its results are",
                       description="Print an experiment's comparison table, where its results and logs are, and the "
                       "command that opens the MLflow UI on them.")
    p.add_argument("--experiment", help="default: demo_experiment of the config")
    p.add_argument("--config", type=Path, default=Path("config/config.yaml"))
    p.add_argument("--results", type=Path, default=Path("results"))
    p.add_argument("--html", type=Path, help="a Snakemake report of these results (make report's results/report.html): "
                   "give its page the front page's title, naming the project and the experiments")
    p.set_defaults(func=_report)


def _selfcheck(args: argparse.Namespace) -> int:
    from .stages.selfcheck import run_selfcheck

    return run_selfcheck(out=args.out, expect_processes=args.expect_processes, device=args.device, amp=args.amp,
                         channels_last=args.channels_last)


def _add_selfcheck(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("selfcheck", help="print the processes, ranks and devices a job sees (allocation check)",
                       description="Report the processes, ranks and GPUs a (SLURM) job sees, to check an allocation "
                       "before spending hours on it.")
    p.add_argument("--out", type=Path, help="also write the report as JSON")
    p.add_argument("--expect-processes", type=int, help="fail unless the job runs this many processes (0 or 1: one)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    _precision_args(p, default="auto", default_help="auto")
    p.set_defaults(func=_selfcheck)


_COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [
    _add_flops,
    _add_synthesize,
    _add_split,
    _add_pretrain,
    _add_finetune,
    _add_search,
    _add_fixed_arch,
    _add_evaluate,
    _add_detect,
    _add_export,
    _add_latency_table,
    _add_latency,
    _add_random_arch,
    _add_random_archs_summary,
    _add_compare,
    _add_ledger,
    _add_rehearse,
    _add_plan,
    _add_ranking,
    _add_search_curves,
    _add_plot_archs,
    _add_report,
    _add_selfcheck,
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m detnas", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, metavar="<command>")
    for add in _COMMANDS:
        add(sub)
    return parser


def _disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` is ``io.DiskFullError`` (without importing detnas.io, hence torch, for commands
    that never write through it)."""
    io = sys.modules.get(f"{__package__}.io")
    return io is not None and isinstance(exc, io.DiskFullError)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command. Bad input (ValueError) and a full disk (``io.DiskFullError``) end with one
    line on stderr, no traceback (exit status 2 and 1)."""
    args = build_parser().parse_args(argv)
    # under torchrun: the log lines of rank 0 only (the others would repeat them); errors name their rank
    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    where = f"rank {rank}/{world}: " if world > 1 else ""
    if rank > 0:
        sys.stdout = open(os.devnull, "w")
    try:
        return args.func(args)
    except ValueError as exc:  # bad input: one clear line, no traceback
        print(f"{where}error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:
        if _disk_full(exc):  # no space left: the file, the bytes it needs and the space free, one line
            print(f"{where}error: {exc}", file=sys.stderr)
            return 1
        if where:
            print(f"{where}{type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        raise
