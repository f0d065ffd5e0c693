"""Process groups under torchrun: gloo on CPU, NCCL on CUDA; a no-op for a single process."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

__all__ = ["Dist", "init_distributed", "set_threads"]


@dataclass(frozen=True)
class Dist:
    """Where this process sits: rank, world size, and the device it computes on."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def broadcast_object(self, obj: Any, src: int = 0) -> Any:
        if not self.enabled:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=src)
        return box[0]

    def all_gather_object(self, obj: Any) -> list[Any]:
        if not self.enabled:
            return [obj]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def agree(self, token: int, stop: bool) -> bool:
        """One collective: check every rank holds the same ``token`` (the step's path) and return
        whether any rank was asked to stop (SIGTERM)."""
        if not self.enabled:
            return stop
        dev = self.device if self.device.type == "cuda" else torch.device("cpu")
        t = torch.tensor([token, -token, int(stop)], dtype=torch.int64, device=dev)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
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

        ``find_unused_parameters`` is needed for the supernet: choices off the path take no part in
        the step (every rank runs the same path, so they are unused on all ranks and keep
        ``grad is None``). ``sync_batchnorm``: BN statistics over the whole batch of all ranks
        (SyncBatchNorm), as the paper's detection fine-tuning has it; without it each rank normalizes
        with its own share of the batch, as in ImageNet pre-training. CUDA only: SyncBatchNorm has no
        CPU implementation, so CPU processes always keep per-process BN.
        """
        if not self.enabled:
            return model
        if self.device.type == "cuda":
            if sync_batchnorm:
                model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
            return nn.parallel.DistributedDataParallel(
                model, device_ids=[self.device.index], find_unused_parameters=find_unused_parameters
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
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return Dist(rank, world_size, local_rank, dev)


def set_threads(threads: int | None, world_size: int = 1) -> None:
    """Share ``threads`` CPU threads (the job's allocation) among the processes of this node."""
    local = int(os.environ.get("LOCAL_WORLD_SIZE", str(world_size)))
    if threads:
        torch.set_num_threads(max(1, threads // max(1, local)))
