"""The ``selfcheck`` stage: what a job sees (processes, ranks, devices, its SLURM allocation), so a
misconfigured allocation is visible before hours of training (e.g. a job run N times instead of
once with N GPUs)."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

import torch

from ..distributed import init_distributed, timeout_minutes
from ..io import write_json_atomic
from ..precision import Precision

__all__ = ["run_selfcheck"]

_SLURM_VARS = ("SLURM_JOB_ID", "SLURM_NTASKS", "SLURM_PROCID", "SLURM_CPUS_PER_TASK", "SLURM_GPUS_ON_NODE",
               "SLURM_JOB_NODELIST", "CUDA_VISIBLE_DEVICES")


def run_selfcheck(*, out: Path | None, expect_processes: int | None, device: str = "auto",
                  amp: str | bool = "auto", channels_last: bool | str = "auto") -> int:
    """Gather every rank's view on rank 0, print it, write it as JSON; 1 if it is not as expected.

    Each rank also reports what the ``amp`` and ``channels_last`` settings resolve to on its device
    (``amp``: bf16, fp16 or off; ``memory_format``: channels_last or contiguous), the timeout of its
    collectives and, on CUDA, the GPU's name and whether it computes bf16 natively."""
    dist = init_distributed(device)
    precision = Precision.resolve(amp, channels_last, dist.device)
    cuda = dist.device.type == "cuda"
    mine: dict[str, Any] = {
        "rank": dist.rank, "local_rank": dist.local_rank, "world_size": dist.world_size,
        "host": socket.gethostname(), "pid": os.getpid(), "device": str(dist.device),
        "gpu": torch.cuda.get_device_name(dist.device) if cuda else None,
        "native_bf16": torch.cuda.is_bf16_supported(including_emulation=False) if cuda else None,
        **precision.describe(),
        "cuda_devices": torch.cuda.device_count(), "threads": torch.get_num_threads(),
        "timeout_minutes": timeout_minutes(),  # of the process group's collectives
        **{k: os.environ.get(k) for k in _SLURM_VARS},
    }
    ranks = dist.all_gather_object(mine)
    dist.close()
    if not dist.is_main:
        return 0
    problems = []
    if expect_processes is not None and max(1, expect_processes) != dist.world_size:
        problems.append(f"expected {max(1, expect_processes)} processes, the job runs {dist.world_size}")
    tasks = int(mine["SLURM_NTASKS"] or 1)
    if tasks > 1:
        problems.append(f"SLURM started {tasks} tasks: every task runs the whole job (set tasks=1; "
                        f"GPUs are used by one torchrun per job)")
    if dist.device.type == "cuda" and mine["cuda_devices"] < dist.world_size:
        problems.append(f"{dist.world_size} processes share {mine['cuda_devices']} visible GPU(s)")
    print(f"selfcheck: {dist.world_size} process(es), {mine['cuda_devices']} CUDA device(s) visible, "
          f"SLURM job {mine['SLURM_JOB_ID'] or '-'} with {tasks} task(s)")
    for r in ranks:
        gpu = f" ({r['gpu']})" if r["gpu"] else ""
        print(f"  rank {r['rank']} (local {r['local_rank']}) on {r['host']} pid {r['pid']}: {r['device']}{gpu}, "
              f"amp {r['amp']}, {r['memory_format']}, {r['threads']} threads, collectives time out after "
              f"{r['timeout_minutes']:g} min, "
              f"CUDA_VISIBLE_DEVICES={r['CUDA_VISIBLE_DEVICES']}")
    for p in problems:
        print(f"PROBLEM: {p}")
    if out is not None:
        write_json_atomic({"world_size": dist.world_size, "ranks": ranks, "problems": problems}, out)
    return 1 if problems else 0
