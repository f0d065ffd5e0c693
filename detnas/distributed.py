"""Process groups under torchrun: gloo on CPU, NCCL on CUDA; a no-op for a single process.

Two groups: the *compute* group (NCCL on CUDA) carries DDP's gradients and the loss sums; a gloo
*control* group on the CPU carries everything else (the per-step stop and path check, Python-object
broadcasts and gathers of the search, barriers), so control traffic never waits for the device and
is never queued behind NCCL kernels. On CPU both are the one gloo group.

Both have the same timeout, ``DETNAS_DIST_TIMEOUT_MINUTES`` (default 60): how long a rank waits in a
collective for the others before the job fails. The slowest wait is a search generation's, where a
rank may wait for another's whole candidate (recalibration and evaluation of a path, several minutes
at the paper's sizes on a slow card) plus rank 0's bookkeeping; NCCL's own default of 10 minutes can
kill such a job while it is working.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn

__all__ = ["DEFAULT_TIMEOUT_MINUTES", "Dist", "init_distributed", "loader_workers", "peak_gpu_memory_mb", "process_seed", "set_threads", "timeout_minutes",
           "workers_line"]

DEFAULT_TIMEOUT_MINUTES = 60.0
_TIMEOUT_VAR = "DETNAS_DIST_TIMEOUT_MINUTES"


def timeout_minutes() -> float:
    """The collectives' timeout in minutes: ``DETNAS_DIST_TIMEOUT_MINUTES``, else 60. ValueError for a
    value that is not a positive number."""
    text = os.environ.get(_TIMEOUT_VAR, "").strip()
    if not text:
        return DEFAULT_TIMEOUT_MINUTES
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0:
        raise ValueError(f"{_TIMEOUT_VAR}={text!r}: must be a positive number of minutes")
    return value


def process_seed(seed: int, rank: int) -> int:
    """The seed of rank ``rank``'s own generator (dropout, a detector's proposal sampling): a function
    of the run's seed and the rank, different for every rank."""
    return int(np.random.SeedSequence([seed, rank]).generate_state(1, np.uint64)[0])


@dataclass(frozen=True)
class Dist:
    """Where this process sits: rank, world size, and the device it computes on."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    control: Any = field(default=None, compare=False)  # the gloo group of the control traffic (None: the default group)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier(group=self.control)

    def broadcast_object(self, obj: Any, src: int = 0) -> Any:
        """``obj`` of rank ``src`` on every rank (pickled, over the control group)."""
        if not self.enabled:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=src, group=self.control)
        return box[0]

    def all_gather_object(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order (pickled, over the control group)."""
        if not self.enabled:
            return [obj]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj, group=self.control)
        return out

    def agree(self, token: int, stop: bool) -> bool:
        """One collective on the control group (host memory: the host does not wait for the device):
        check every rank holds the same ``token`` (the step's path) and return whether any rank was
        asked to stop (SIGTERM)."""
        if not self.enabled:
            return stop
        t = torch.tensor([token, -token, int(stop)], dtype=torch.int64)
        dist.all_reduce(t, op=dist.ReduceOp.MAX, group=self.control)
        if int(t[0]) != -int(t[1]):
            raise RuntimeError(f"rank {self.rank}: ranks disagree on this step's path (token {token}); "
                               "every rank must train the same path")
        return bool(t[2])

    def sum_over_ranks(self, t: Tensor) -> Tensor:
        """``t`` (on this process's device) summed element-wise over the ranks; ``t`` itself when
        single-process."""
        if self.enabled:
            dist.all_reduce(t)
        return t

    def wrap(self, model: nn.Module, *, find_unused_parameters: bool, sync_batchnorm: bool = False) -> nn.Module:
        """DDP around ``model``; the model itself when single-process.

        ``find_unused_parameters`` is needed for the supernet only: choices off the path take no part
        in the step (every rank runs the same path, so they are unused on all ranks and keep
        ``grad is None``); for a network of one architecture every parameter is used, and the search
        for unused ones (a graph traversal per step) is skipped. ``sync_batchnorm``: BN statistics
        over the whole batch of all ranks (SyncBatchNorm), as the paper's detection fine-tuning has
        it; then the BN buffers are the same on every rank and DDP does not broadcast them before
        each forward. Without it each rank normalizes with its own share of the batch, as in ImageNet
        pre-training, and rank 0's running statistics are broadcast (what its checkpoint holds).
        CUDA only: SyncBatchNorm has no CPU implementation, so CPU processes keep per-process BN.
        """
        if not self.enabled:
            return model
        if self.device.type == "cuda":
            if sync_batchnorm:
                model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
            return nn.parallel.DistributedDataParallel(
                model, device_ids=[self.device.index], find_unused_parameters=find_unused_parameters,
                broadcast_buffers=not sync_batchnorm,
            )
        return nn.parallel.DistributedDataParallel(model, find_unused_parameters=find_unused_parameters)

    def close(self) -> None:
        if self.enabled and dist.is_initialized():
            dist.destroy_process_group()


def init_distributed(device: str = "auto") -> Dist:
    """Join the process group torchrun describes in the environment (RANK, WORLD_SIZE, ...).

    ``device``: "auto" (CUDA when available), "cpu" or "cuda".
    """
    if device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device must be auto, cpu or cuda, got {device!r}")
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but torch sees no CUDA device")
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if use_cuda:
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
    else:
        dev = torch.device("cpu")
    control = None
    if world_size > 1:
        timeout = datetime.timedelta(minutes=timeout_minutes())
        if not dist.is_initialized():
            dist.init_process_group("nccl" if use_cuda else "gloo", timeout=timeout)
        if dist.get_backend() != "gloo":
            control = dist.new_group(backend="gloo", timeout=timeout)
    return Dist(rank, world_size, local_rank, dev, control)


def _local_processes(world_size: int) -> int:
    return max(1, int(os.environ.get("LOCAL_WORLD_SIZE", str(world_size))))


def loader_workers(threads: int | None, world_size: int = 1) -> int:
    """Data-loader worker processes per training process: its share of the job's ``threads`` CPUs
    (shared among the processes of this node) less one, its own."""
    return max(0, threads // _local_processes(world_size) - 1) if threads else 0


def peak_gpu_memory_mb(device: torch.device) -> float | None:
    """The most CUDA memory this process allocated on ``device`` so far (MB); None off CUDA."""
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None


def workers_line(threads: int | None, world_size: int = 1) -> str:
    """E.g. "3 loader workers per process": what a training log says it feeds each process with."""
    n = loader_workers(threads, world_size)
    return f"{n} loader worker{'' if n == 1 else 's'} per process"


def set_threads(threads: int | None, world_size: int = 1, *, workers: int = 0) -> None:
    """Share ``threads`` CPU threads (the job's allocation) among the processes of this node; a
    process with ``workers`` loader workers leaves their CPUs to them (one compute thread then: more
    would oversubscribe the CPUs, and spinning threads slow every process down)."""
    if threads:
        torch.set_num_threads(max(1, threads // _local_processes(world_size) - workers))
