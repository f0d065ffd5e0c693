"""How well the per-block latency table (detnas.latency) predicts whole backbones on this machine.

Measures the table of a space at a square input (every block position x choice, the stem, the
calibration on random backbones), then times ``--n`` other seeded random backbones end to end and
prints, per architecture, the predicted (calibrated) and measured milliseconds and the error; then
the mean and worst absolute error, the same for the plain uncalibrated sum, the calibration scale
and the seconds the table took. Target: mean error within 10%. About 15 s for the tiny space at
96 px and 1 min for the small space at 320 px on one thread. On a machine shared with other jobs
(load average above the CPU count) the timings, and so the errors, follow the other jobs' load;
``--statistic min --block-seconds 0.002`` helps there while a whole backbone takes a few ms (tiny),
not for longer ones (see detnas.latency.STATISTICS).

    python benchmarks/latency_table.py [--space tiny] [--input-size 96] [--batch-size 1] [--threads 1] [--n 10]
        [--repeats 15] [--block-seconds 0.01] [--statistic median] [--calibration-archs 10] [--save table.json]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from detnas.latency import STATISTICS, measure_latency_table, validate_table
from detnas.space import get_space


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--space", default="tiny", help="search space (tiny: the demo's, see config/config.yaml)")
    p.add_argument("--input-size", type=int, default=96, help="square detection input, pixels (the demo's: 96)")
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--n", type=int, default=10, help="random backbones to validate the table on")
    p.add_argument("--repeats", type=int, default=15, help="timed blocks per entry")
    p.add_argument("--block-seconds", type=float, default=0.01, help="length of one timed block")
    p.add_argument("--statistic", default="median", choices=STATISTICS,
                   help="over an entry's blocks; min (with --block-seconds 0.002) on a machine shared with other jobs")
    p.add_argument("--calibration-archs", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--save", type=Path, help="write the table here (JSON)")
    args = p.parse_args(argv)

    space = get_space(args.space)
    t = time.perf_counter()
    table = measure_latency_table(space, input_size=args.input_size, batch_size=args.batch_size, device=args.device,
                                  threads=args.threads, repeats=args.repeats, seed=args.seed,
                                  block_seconds=args.block_seconds, statistic=args.statistic,
                                  calibration_archs=args.calibration_archs)
    table_s = time.perf_counter() - t
    if args.save:
        table.save(args.save)
    t = time.perf_counter()
    validation = validate_table(table, space, n=args.n, seed=args.seed)
    validation_s = time.perf_counter() - t

    lo, hi = table.bounds()
    print(f"\n{space.name} space at {args.input_size} px, batch {args.batch_size}, {table.threads} thread(s), "
          f"{table.device}, torch {table.torch}; {args.statistic} of {args.repeats} blocks of "
          f"{args.block_seconds * 1e3:g} ms per entry")
    # other jobs on the machine preempt the timed blocks: say how loaded it was
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    width = max(len("arch"), space.num_blocks)
    print(f"{'arch':<{width}} {'predicted ms':>12} {'measured ms':>12} {'error %':>8} {'sum ms':>8} {'sum err %':>9}")
    for e in validation.entries:
        print(f"{e.arch:<{width}} {e.predicted_ms:12.3f} {e.measured_ms:12.3f} {e.error_pct:8.1f} "
              f"{e.uncalibrated_ms:8.3f} {e.uncalibrated_error_pct:9.1f}")
    print(f"mean |error| {validation.mean_abs_error_pct:.1f}%, worst {validation.worst_abs_error_pct:.1f}% "
          f"over {len(validation.entries)} backbones (target: mean within 10%)")
    print(f"uncalibrated sum: mean |error| {validation.uncalibrated_mean_abs_error_pct:.1f}%; "
          f"calibration scale {table.scale:.4f} (median measured/sum over {args.calibration_archs} other backbones)")
    print(f"predicted backbone latency over the space: {lo:.3f} .. {hi:.3f} ms")
    print(f"table measured in {table_s:.1f} s ({space.num_blocks} positions x 4 choices, stem, calibration); "
          f"validation {validation_s:.1f} s")


if __name__ == "__main__":
    main()
