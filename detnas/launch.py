"""``python -m detnas.launch --nproc N <command> [args]``: how the workflow starts a stage.

N <= 1: the command runs in this process. N > 1: ONE ``torchrun --standalone --nproc_per_node=N``
runs N processes of it on this node (one per GPU), which join one process group. A job allocated
N GPUs is therefore one launch line, never N copies of the job.

Stopping (SLURM's time limit, ``scancel``, preemption: SIGTERM to every process of the job): each
training process saves a checkpoint at its next step and exits with 143. torchrun, which also gets
the signal, waits ``SHUTDOWN_SECONDS`` for its processes before it kills them (its own default, 30 s,
can be shorter than a checkpoint of a large supernet takes). This launcher, torchrun's parent, waits
for torchrun and exits with 143 after a SIGTERM (130 after a SIGINT), as a single-process stage does,
so a retry sees the same status either way. A process that fails ends the others (torchrun sends
them SIGTERM as soon as it sees the failure), and its error, with its rank, is in the log.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any, Sequence

__all__ = ["SHUTDOWN_SECONDS", "launch_argv", "main"]

SHUTDOWN_SECONDS = 120


def _torchrun() -> list[str]:
    # the torchrun of this interpreter's environment, so the workers import the same packages
    exe = Path(sys.executable).parent / "torchrun"
    if exe.is_file():
        return [str(exe)]
    found = shutil.which("torchrun")
    return [found] if found else [sys.executable, "-m", "torch.distributed.run"]


def launch_argv(nproc: int, command: Sequence[str]) -> list[str]:
    """The command line that runs ``python -m detnas <command>`` with ``nproc`` processes."""
    if nproc < 0:
        raise ValueError(f"--nproc must be >= 0, got {nproc}")
    if nproc <= 1:
        return [sys.executable, "-m", "detnas", *command]
    return [*_torchrun(), "--standalone", f"--nproc_per_node={nproc}", f"--shutdown-timeout={SHUTDOWN_SECONDS}",
            "-m", "detnas", *command]


def _run_torchrun(argv: list[str]) -> int:
    """Run torchrun as a child; its status, or 128 + the signal if this job was asked to stop (the
    signal reaches torchrun and its processes directly: SLURM and a terminal signal the whole job)."""
    received: list[int] = []

    def note(signum: int, frame: Any) -> None:
        received.append(signum)

    previous = {sig: signal.signal(sig, note) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        rc = subprocess.Popen(argv).wait()  # a signal's handler runs, then the wait goes on (PEP 475)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if received and rc != 0:
        return 128 + received[0]
    return rc


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m detnas.launch", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nproc", type=int, default=0, help="processes on this node (the job's GPUs); <= 1: in-process")
    p.add_argument("--timeout-minutes", type=float, default=None,
                   help="how long a process waits in a collective for the others before the job fails "
                        "(sets DETNAS_DIST_TIMEOUT_MINUTES; default: that variable, else 60)")
    p.add_argument("command", nargs=argparse.REMAINDER, help="a detnas command and its arguments")
    args = p.parse_args(argv)
    if not args.command:
        p.error("a detnas command is required")
    if args.timeout_minutes is not None:
        if not args.timeout_minutes > 0:
            p.error(f"--timeout-minutes must be > 0, got {args.timeout_minutes}")
        os.environ["DETNAS_DIST_TIMEOUT_MINUTES"] = str(args.timeout_minutes)
    argv_out = launch_argv(args.nproc, args.command)
    print("launch:", shlex.join(argv_out[:7] + (["..."] if len(argv_out) > 7 else [])), flush=True)
    if args.nproc <= 1:
        from .cli import main as cli_main

        return cli_main(args.command)
    sys.stdout.flush()
    return _run_torchrun(argv_out)


if __name__ == "__main__":
    raise SystemExit(main())
