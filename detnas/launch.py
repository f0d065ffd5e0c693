"""``python -m detnas.launch --nproc N <command> [args]``: how the workflow starts a stage.

N <= 1: the command runs in this process. N > 1: ONE ``torchrun --standalone --nproc_per_node=N``
runs N processes of it on this node (one per GPU), which join one process group. A job allocated
N GPUs is therefore one launch line, never N copies of the job.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import sys
from pathlib import Path
from typing import Sequence

__all__ = ["launch_argv", "main"]


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
    return [*_torchrun(), "--standalone", f"--nproc_per_node={nproc}", "-m", "detnas", *command]


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m detnas.launch", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nproc", type=int, default=0, help="processes on this node (the job's GPUs); <= 1: in-process")
    p.add_argument("command", nargs=argparse.REMAINDER, help="a detnas command and its arguments")
    args = p.parse_args(argv)
    if not args.command:
        p.error("a detnas command is required")
    argv_out = launch_argv(args.nproc, args.command)
    print("launch:", shlex.join(argv_out[:6] + (["..."] if len(argv_out) > 6 else [])), flush=True)
    if args.nproc <= 1:
        from .cli import main as cli_main

        return cli_main(args.command)
    sys.stdout.flush()
    os.execv(argv_out[0], argv_out)  # replaces this process: the job's exit status is torchrun's


if __name__ == "__main__":
    raise SystemExit(main())
