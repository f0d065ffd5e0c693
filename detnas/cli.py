"""``python -m detnas <command>``: argument parsing only; each command calls one package function."""

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


def _stage_args(p: argparse.ArgumentParser, *, mlflow: bool = True, compute: bool = False) -> None:
    p.add_argument("--settings", type=_json_arg, required=True, help="the stage's settings as JSON (or @file)")
    if mlflow:
        p.add_argument("--mlflow", type=_json_arg, default={"experiment": "detnas", "run_name": p.prog.split()[-1]},
                       help='MLflow run as JSON: {"experiment", "run_name", "tags"}')
    if compute:
        p.add_argument("--threads", type=int, default=0, help="CPU threads of the job (0: torch's default)")
        p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")


def _synthesize(args: argparse.Namespace) -> int:
    from .data import synthetic

    s = args.settings
    if args.kind == "detection":
        synthetic.synthesize_detection(args.out, **s)
    else:
        synthetic.synthesize_classification(args.out, **s)
    return 0


def _add_synthesize(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("synthesize", help="draw the embedded synthetic shapes datasets")
    p.add_argument("--kind", choices=["detection", "classification"], required=True)
    p.add_argument("--out", type=Path, required=True, help="output folder (replaced atomically)")
    _stage_args(p, mlflow=False)
    p.set_defaults(func=_synthesize)


def _split_detection(args: argparse.Namespace) -> int:
    from .stages.split import run_split_detection

    run_split_detection(args.settings, out_dir=args.out_dir, mlflow=args.mlflow)
    return 0


def _split_classification(args: argparse.Namespace) -> int:
    from .stages.split import run_split_classification

    run_split_classification(args.settings, out=args.out, mlflow=args.mlflow)
    return 0


def _add_split(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("split-detection", help="validate a detection dataset; cut the search-validation split")
    p.add_argument("--out-dir", type=Path, required=True)
    _stage_args(p)
    p.set_defaults(func=_split_detection)
    p = sub.add_parser("split-classification", help="validate a classification dataset; hold out ClsNAS's images")
    p.add_argument("--out", type=Path, required=True)
    _stage_args(p)
    p.set_defaults(func=_split_classification)


def _pretrain(args: argparse.Namespace) -> int:
    from .stages.pretrain import run_pretrain

    run_pretrain(
        args.settings, split_file=args.split, weights_out=args.weights, metrics_out=args.metrics,
        curves_out=args.curves, checkpoint_dir=args.checkpoint_dir, arch=args.arch, val_root=args.val,
        mlflow=args.mlflow, threads=args.threads, device=args.device,
    )
    return 0


def _add_pretrain(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("pretrain", help="classification training: the supernet, or one architecture (--arch)")
    p.add_argument("--split", type=Path, required=True, help="split.json of the classification data")
    p.add_argument("--arch", help="train this architecture as a standalone network instead of the supernet")
    p.add_argument("--val", type=Path, help="ImageFolder root for the final top-1 (with --arch)")
    p.add_argument("--weights", type=Path, required=True)
    p.add_argument("--metrics", type=Path, required=True)
    p.add_argument("--curves", type=Path, required=True)
    p.add_argument("--checkpoint-dir", type=Path, required=True)
    _stage_args(p, compute=True)
    p.set_defaults(func=_pretrain)


_COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [
    _add_flops,
    _add_synthesize,
    _add_split,
    _add_pretrain,
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
