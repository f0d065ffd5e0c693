"""Every stage of the DetNAS workflow as a command. Snakemake runs them for you (see the README);
run one by hand to debug a stage or to use it outside the workflow. Each stage's --settings is a
JSON object whose keys are those of its section in config/config.yaml, documented with their
defaults in workflow/schemas/config.schema.yaml."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

__all__ = ["main"]


def _flops(args: argparse.Namespace) -> int:
    from .archs import PUBLISHED, get_published
    from .flops import cost_table
    from .space import get_space

    rows = []
    if args.arch is not None:
        space = get_space(args.space)
        rows.append(("(given)", space, space.parse(args.arch)))
    else:
        names = args.name or list(PUBLISHED)
        for name in names:
            space, arch = get_published(name)
            rows.append((name, space, arch))
    print(f"{'name':<22} {'space':<11} {'architecture':<41} {'MACs (M)':>9} {'backbone params (M)':>20} {'cls params (M)':>15}")
    for name, space, arch in rows:
        table = cost_table(space, args.input_size)
        print(
            f"{name:<22} {space.name:<11} {str(arch):<41} {table.backbone_macs(arch) / 1e6:9.1f} "
            f"{table.backbone_params(arch) / 1e6:20.2f} {table.classifier_params(arch) / 1e6:15.2f}"
        )
    if args.arch is None and not args.name:
        import numpy as np

        rng = np.random.default_rng(0)
        for space_name in ("small", "large", "large_x1.8"):
            space = get_space(space_name)
            table = cost_table(space, args.input_size)
            lo, hi = table.bounds()
            macs = [table.backbone_macs(space.sample(rng)) / 1e6 for _ in range(10_000)]
            p1, p99 = np.percentile(macs, [1, 99])
            print(
                f"space {space_name}: extremes {lo / 1e6:.1f}-{hi / 1e6:.1f} M MACs; "
                f"98% of uniformly sampled architectures in {p1:.1f}-{p99:.1f} M"
            )
    return 0


def _add_flops(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "flops",
        help="backbone MACs (224x224, stem + searchable blocks) and params of architectures",
        description="Backbone MACs at 224x224 (conv/linear multiply-accumulates of the stem and the "
        "searchable blocks, the paper's FLOPs convention) and parameter counts. Without --arch, "
        "prints the published architectures.",
    )
    p.add_argument("--space", default="small", help="search space preset (tiny, small, large, large_x1.8)")
    p.add_argument("--arch", help="architecture encoding, one digit 0-3 per block")
    p.add_argument("--name", action="append", help="a published architecture by name (repeatable)")
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
                 "checkpoint_every", "log_every", "eval_batch_size"],
    "finetune": ["space", "detector", "batch_size", "schedule", "seed", "checkpoint_every", "log_every",
                 "eval_batch_size", "schedule_factor"],
    "search": ["method", "population", "parents", "generations", "mutation_prob", "mutations", "crossovers",
               "max_mflops", "min_mflops",
               "recalibration_images", "eval_images", "batch_size", "seed"],
    "split-detection": ["sources", "split", "check_images"],
    "split-classification": ["train", "val", "holdout"],
    "synthesize": ["num_train", "num_test", "image_size", "max_objects", "seed (detection)",
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


def _arch(args: argparse.Namespace) -> str | None:
    if getattr(args, "arch_file", None) is not None:
        from .io import read_json

        data = read_json(args.arch_file)
        if "arch" not in data:
            raise ValueError(f"{args.arch_file}: no 'arch' key")
        return str(data["arch"])
    return args.arch


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

    run_pretrain(
        args.settings, split_file=args.split, weights_out=args.weights, metrics_out=args.metrics,
        curves_out=args.curves, checkpoint_dir=args.checkpoint_dir, arch=_arch(args), val_root=args.val,
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

    run_finetune(
        args.settings, train_file=args.train, init=args.init, arch=_arch(args), weights_out=args.weights,
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
        threads=args.threads, device=args.device,
    )
    return 0


def _add_search(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("search", help="evolutionary (DetNAS, ClsNAS) or random search under a FLOPs constraint",
                       description="Search the supernet for the best architecture under the backbone FLOPs bounds: "
                       "method detnas (EA, fitness mmAP after BN recalibration), random (same budget), clsnas (EA, "
                       "top-1 of the classification supernet). Writes the chosen architecture, every scored "
                       "candidate and the search curve; a killed search resumes without re-scoring.")
    p.add_argument("--supernet", type=Path, required=True,
                   help="fine-tuned detection supernet (detnas, random) or pre-trained classification supernet (clsnas)")
    p.add_argument("--val", type=Path, required=True,
                   help="search-validation annotations (detnas, random) or the classification split.json (clsnas)")
    p.add_argument("--recal", type=Path, help="training annotations for BN recalibration (detnas, random)")
    p.add_argument("--arch-out", type=Path, required=True, help="the chosen architecture (JSON)")
    p.add_argument("--history", type=Path, required=True, help="every scored candidate (CSV)")
    p.add_argument("--curve", type=Path, required=True, help="best-so-far and top-k mean per generation (PNG)")
    p.add_argument("--checkpoint-dir", type=Path, required=True)
    _stage_args(p, compute=True)
    p.set_defaults(func=_search)


def _fixed_arch(args: argparse.Namespace) -> int:
    from .flops import cost_table
    from .io import write_json_atomic
    from .space import get_space

    space = get_space(args.space)
    arch = space.uniform(args.uniform) if args.arch is None else space.parse(args.arch)
    table = cost_table(space)
    result = {"method": args.method, "arch": str(arch), "space": space.name, "fitness": None,
              "mflops": table.backbone_macs(arch) / 1e6, "backbone_params_m": table.backbone_params(arch) / 1e6,
              "evaluations": 0}
    write_json_atomic(result, args.out)
    print(f"{args.method}: {arch} ({result['mflops']:.1f} MFLOPs), no search")
    return 0


def _add_fixed_arch(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("fixed-arch", help="write a chosen-architecture file without searching (hand-crafted baselines)",
                       description="Write an arch.json as a search would, for an architecture you choose (e.g. the "
                       "hand-crafted ShuffleNetV2: every block choice 0), so it can be retrained and evaluated.")
    p.add_argument("--space", required=True)
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("--arch", help="architecture encoding")
    group.add_argument("--uniform", type=int, choices=range(4), help="every block this choice (0: ShuffleNetV2)")
    p.add_argument("--method", required=True, help="name of the baseline, e.g. shufflenetv2")
    p.add_argument("--out", type=Path, required=True)
    p.set_defaults(func=_fixed_arch)


def _evaluate(args: argparse.Namespace) -> int:
    from .stages.evaluate import run_evaluate

    run_evaluate(
        detector=args.detector, test_file=args.test, arch_file=args.arch_file,
        classifier_metrics=args.classifier_metrics, out=args.out, info=args.info, primary_metric=args.primary,
        batch_size=args.batch_size, mlflow=args.mlflow, threads=args.threads, device=args.device,
    )
    return 0


def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="COCO metrics of a retrained detector on the test split -> final.json",
                       description="Score a retrained detector on the test split with COCOeval and write final.json: "
                       "the architecture, its MFLOPs and params, AP..APl, the primary metric and the top-1 of its "
                       "classifier.")
    p.add_argument("--detector", type=Path, required=True)
    p.add_argument("--test", type=Path, required=True, help="test annotations (internal COCO-style JSON)")
    p.add_argument("--arch-file", type=Path, required=True, help="the chosen architecture (search output)")
    p.add_argument("--classifier-metrics", type=Path, required=True, help="metrics.json of the retrained classifier")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--info", type=_json_arg, default={}, help="experiment, method, dataset, detector (JSON)")
    p.add_argument("--primary", default="AP", help="the headline metric: AP (COCO) or AP50 (VOC)")
    p.add_argument("--batch-size", type=int, default=8)
    _stage_args(p, settings=False, compute=True)
    p.set_defaults(func=_evaluate)


def _compare(args: argparse.Namespace) -> int:
    from .stages.compare import run_compare

    histories = dict(h.split("=", 1) for h in args.history)
    run_compare(finals=args.final, histories={k: Path(v) for k, v in histories.items()}, csv_out=args.csv,
                png_out=args.png, experiment=args.experiment, mlflow=args.mlflow)
    return 0


def _add_compare(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("compare", help="methods of an experiment side by side -> comparison.csv and .png",
                       description="Put the final.json of every method of an experiment in one table and one plot, "
                       "with the EA-vs-random search curves.")
    p.add_argument("--experiment", required=True)
    p.add_argument("--final", type=Path, nargs="+", required=True, help="final.json of each method")
    p.add_argument("--history", nargs="*", default=[], help="METHOD=history.csv of searches to plot")
    p.add_argument("--csv", type=Path, required=True)
    p.add_argument("--png", type=Path, required=True)
    _stage_args(p, settings=False)
    p.set_defaults(func=_compare)


def _report(args: argparse.Namespace) -> int:
    import yaml

    from .tracking import default_tracking_uri

    experiment = args.experiment
    if experiment is None:
        with open(args.config) as f:
            experiment = yaml.safe_load(f).get("demo_experiment", "shapes_fpn")
    root = args.results / experiment
    table = root / "comparison.csv"
    if not table.is_file():
        raise ValueError(f"{table}: not found; run the workflow first (make demo, or snakemake {table})")
    import pandas as pd

    from .formatting import fmt_number

    df = pd.read_csv(table, dtype={"arch": str})
    shown = df[["method", "arch", "mflops", "AP", "AP50", "APs", "APm", "APl", "top1"]]
    print(f"\n{experiment}: test-split COCO metrics of the retrained architectures, backbone MFLOPs at 224x224, "
          f"classification top-1\n")
    print(shown.to_string(index=False, float_format=fmt_number))
    print(f"\nresults:     {root.resolve()}/ (final.json per method, comparison.csv, comparison.png)")
    print(f"search:      {root.resolve()}/<method>/search/ (arch.json, history.csv, curve.png)")
    print(f"logs:        {args.results.resolve()}/logs/")
    print(f"MLflow UI:   mlflow ui --backend-store-uri {default_tracking_uri(args.results)}")
    return 0


def _add_report(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="print an experiment's comparison table and where its results are",
                       description="Print an experiment's comparison table, where its results and logs are, and the "
                       "command that opens the MLflow UI on them.")
    p.add_argument("--experiment", help="default: demo_experiment of the config")
    p.add_argument("--config", type=Path, default=Path("config/config.yaml"))
    p.add_argument("--results", type=Path, default=Path("results"))
    p.set_defaults(func=_report)


def _selfcheck(args: argparse.Namespace) -> int:
    from .stages.selfcheck import run_selfcheck

    return run_selfcheck(out=args.out, expect_processes=args.expect_processes, device=args.device)


def _add_selfcheck(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("selfcheck", help="print the processes, ranks and devices a job sees (allocation check)",
                       description="Report the processes, ranks and GPUs a (SLURM) job sees, to check an allocation "
                       "before spending hours on it.")
    p.add_argument("--out", type=Path, help="also write the report as JSON")
    p.add_argument("--expect-processes", type=int, help="fail unless the job runs this many processes (0 or 1: one)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
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
    _add_compare,
    _add_report,
    _add_selfcheck,
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m detnas", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, metavar="<command>")
    for add in _COMMANDS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ValueError as exc:  # bad input: one clear line, no traceback
        print(f"error: {exc}", file=sys.stderr)
        return 2
