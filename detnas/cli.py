"""``python -m detnas <command>``: argument parsing only; each command calls one package function."""

from __future__ import annotations

import argparse
import sys
from typing import Callable, Sequence

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


_COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [_add_flops]


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
