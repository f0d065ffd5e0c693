"""Training: schedules, SGD without decay on BN/bias, an infinite resumable sampler, progress, and
the one training loop every stage uses (classification and detection, supernet and standalone).
Checkpoints and their resume keys live in ``checkpoint.py``."""

from __future__ import annotations

import signal
import time
import zlib
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterable, Iterator, NamedTuple, Sequence

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Sampler

from .checkpoint import Checkpointer
from .data.grouping import GroupedBatchSampler
from .distributed import Dist, loader_workers, peak_gpu_memory_mb
from .formatting import fmt_number
from .precision import Precision
from .settings import known_keys
from .space import Arch, SearchSpace
from .supernet import inactive_modules, set_path

__all__ = [
    "TIMING_KEYS",
    "Draw",
    "InfiniteSampler",
    "SeededDraws",
    "Preempted",
    "Progress",
    "Schedule",
    "make_sgd",
    "path_batchnorms",
    "recalibrate_bn",
    "train",
    "training_batches",
    "uniform_path",
    "unwrap",
]

# The keys of a Progress row that measure time rather than the model (they differ between two runs
# that train the same weights).
TIMING_KEYS = ("images_per_s", "data_s")


@dataclass(frozen=True)
class Schedule:
    """An iteration-based SGD schedule.

    ``policy`` "linear": lr decays linearly from ``lr`` to 0 (supernet ImageNet pre-training);
    "step": lr is multiplied by ``gamma`` at each milestone (detection, the "1x" schedule).
    A linear warm-up from ``lr * warmup_factor`` over ``warmup_iterations`` applies to both.
    """

    iterations: int
    lr: float
    policy: str = "linear"
    milestones: tuple[int, ...] = ()
    gamma: float = 0.1
    warmup_iterations: int = 0
    warmup_factor: float = 0.001
    momentum: float = 0.9
    weight_decay: float = 4e-5

    def __post_init__(self) -> None:
        if self.iterations < 1:
            raise ValueError(f"schedule iterations must be >= 1, got {self.iterations}")
        if self.lr <= 0:
            raise ValueError(f"schedule lr must be > 0, got {self.lr}")
        if self.policy not in ("linear", "step"):
            raise ValueError(f"schedule policy must be 'linear' or 'step', got {self.policy!r}")
        if list(self.milestones) != sorted(self.milestones):
            raise ValueError(f"schedule milestones must be increasing, got {list(self.milestones)}")
        object.__setattr__(self, "milestones", tuple(int(m) for m in self.milestones))

    def lr_at(self, step: int) -> float:
        """Learning rate of (0-based) iteration ``step``."""
        if self.policy == "linear":
            lr = self.lr * max(0.0, 1.0 - step / self.iterations)
        else:
            lr = self.lr * self.gamma ** sum(step >= m for m in self.milestones)
        if step < self.warmup_iterations:
            alpha = step / self.warmup_iterations
            lr *= self.warmup_factor * (1 - alpha) + alpha
        return lr

    def scaled(self, factor: float) -> "Schedule":
        """The same schedule stretched ``factor`` times (DetNAS-scratch trains 2x as long)."""
        return replace(
            self,
            iterations=round(self.iterations * factor),
            milestones=tuple(round(m * factor) for m in self.milestones),
        )

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Schedule":
        d = known_keys(cls, d, "schedule")
        if "milestones" in d:
            d["milestones"] = tuple(d["milestones"])
        return cls(**d)


def make_sgd(model: nn.Module, schedule: Schedule) -> torch.optim.SGD:
    """SGD with momentum; weight decay on conv/linear weights only, not on BN parameters or biases."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim > 1 else no_decay).append(p)
    return torch.optim.SGD(
        [
            {"params": decay, "weight_decay": schedule.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=schedule.lr_at(0),
        momentum=schedule.momentum,
    )


class InfiniteSampler(Sampler[int]):
    """An endless stream of dataset indices, reshuffled every epoch with ``(seed, epoch)``.

    Rank ``r`` of ``w`` takes positions r, r + w, r + 2w, ... of the global stream, so ranks see
    disjoint samples. ``start`` skips that many of this rank's samples: a resumed run continues the
    stream where the checkpoint left it.
    """

    def __init__(self, size: int, *, seed: int, rank: int = 0, world_size: int = 1, start: int = 0,
                 shuffle: bool = True) -> None:
        if size < 1:
            raise ValueError(f"cannot sample from an empty dataset (size {size})")
        self.size, self.seed, self.rank, self.world_size = size, seed, rank, world_size
        self.start, self.shuffle = start, shuffle

    def _order(self, epoch: int) -> np.ndarray:
        if not self.shuffle:
            return np.arange(self.size)
        return np.random.default_rng([self.seed, epoch]).permutation(self.size)

    def draws(self) -> Iterator["Draw"]:
        """The same stream as ``Draw(index, epoch)`` pairs: which visit of an image each one is."""
        pos = self.start * self.world_size + self.rank
        epoch, order = -1, np.empty(0, dtype=np.int64)
        while True:
            e, offset = divmod(pos, self.size)
            if e != epoch:
                epoch, order = e, self._order(e)
            yield Draw(int(order[offset]), e)
            pos += self.world_size

    def __iter__(self) -> Iterator[int]:
        return (d.index for d in self.draws())


class Draw(NamedTuple):
    """One visit of dataset image ``index``, in epoch ``epoch`` of the global sample stream."""

    index: int
    epoch: int


class SeededDraws(Dataset):
    """``dataset`` indexed by ``Draw``: each visit of an image draws its random augmentation (crop,
    flip, colour jitter factors) from torch's generator seeded by (seed, epoch, index) alone, then
    the generator of the process is put back as it was.

    Every visit of the global stream belongs to exactly one rank, so the ranks of a multi-GPU run
    augment differently; and a visit's draws depend neither on the rank, the number of ranks or of
    loader workers, nor on what the process drew before, so a resumed run draws, image by image,
    what an uninterrupted one would have.
    """

    def __init__(self, dataset: Dataset, seed: int) -> None:
        self.dataset, self.seed = dataset, seed

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, draw: Draw) -> Any:
        index, epoch = draw
        with torch.random.fork_rng(devices=()):
            torch.manual_seed(int(np.random.SeedSequence([self.seed, epoch, index]).generate_state(1, np.uint64)[0]))
            return self.dataset[index]


def _loader_worker_init(worker_id: int) -> None:
    """Loader workers ignore SIGTERM: SLURM (and torchrun) signal every process of a job, and a worker
    that died of it would crash the training process before it checkpoints. The training process
    decides when to stop; the workers end with it."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def training_batches(
    dataset: Dataset,
    *,
    batch_size: int,
    seed: int,
    start_step: int,
    dist: Dist,
    threads: int,
    collate_fn: Callable[[list[Any]], Any] | None = None,
    group_ids: Sequence[int] | None = None,
) -> Iterator[Any]:
    """This rank's endless stream of training batches: ``batch_size`` (global) split over the
    ranks, continuing after ``start_step`` steps; ``threads / processes - 1`` loader workers per
    process (which ignore SIGTERM). ``group_ids`` (one per dataset index, e.g.
    ``aspect_ratio_groups``): every batch of one group. Each image visit's augmentation is seeded by
    the visit (``SeededDraws``)."""
    if batch_size % dist.world_size:
        raise ValueError(f"batch_size {batch_size} is not divisible by {dist.world_size} processes")
    per_rank = batch_size // dist.world_size
    workers = loader_workers(threads, dist.world_size)
    common = dict(num_workers=workers, collate_fn=collate_fn, persistent_workers=workers > 0,
                  pin_memory=dist.device.type == "cuda", worker_init_fn=_loader_worker_init if workers else None)
    seeded = SeededDraws(dataset, seed)
    if group_ids is not None:
        if len(group_ids) != len(dataset):
            raise ValueError(f"{len(group_ids)} group ids for a dataset of {len(dataset)} images")
        # the grouped batches depend on the whole stream before them: replayed from its start
        stream = InfiniteSampler(len(dataset), seed=seed, rank=dist.rank, world_size=dist.world_size).draws()
        batches = GroupedBatchSampler(stream, group_ids, per_rank, start=start_step)
        return iter(DataLoader(seeded, batch_sampler=batches, **common))
    sampler = InfiniteSampler(len(dataset), seed=seed, rank=dist.rank, world_size=dist.world_size,
                              start=start_step * per_rank)
    return iter(DataLoader(seeded, batch_size=per_rank, sampler=sampler.draws(), drop_last=True, **common))


def loader_rate(batches: Iterator[Any], *, batches_n: int, images_per_batch: int, drain: int) -> float:
    """The loader alone: images per second this process's ``batches`` deliver with no model in
    between, over ``batches_n`` batches after ``drain`` untimed ones (the batches its workers had
    ready: at the end of a training run the prefetch queue is full). A rehearsal's answer to "can
    the loader feed the model?"."""
    for _ in range(drain):
        next(batches)
    t = time.perf_counter()
    for _ in range(batches_n):
        next(batches)
    return batches_n * images_per_batch / max(time.perf_counter() - t, 1e-9)


def training_telemetry(batches: Iterator[Any], *, loader_probe: int, batch_size: int, threads: int | None,
                       dist: Dist) -> dict[str, Any]:
    """What a training run measured about its job besides the model, for its metrics.json:
    ``loader_workers`` (per process), ``peak_gpu_memory_mb`` (this process's most allocated CUDA
    memory, None off CUDA) and, when ``loader_probe`` > 0 (a rehearsal), ``loader_images_per_s``:
    the loaders of all ranks alone (``loader_rate`` of this rank's ``batches`` over ``loader_probe``
    batches, times the ranks), to hold against the model's images/s."""
    workers = loader_workers(threads, dist.world_size)
    out: dict[str, Any] = {"loader_workers": workers, "peak_gpu_memory_mb": peak_gpu_memory_mb(dist.device)}
    if loader_probe > 0:
        per_rank = batch_size // dist.world_size
        rate = loader_rate(batches, batches_n=loader_probe, images_per_batch=per_rank, drain=2 * max(workers, 1))
        out["loader_images_per_s"] = rate * dist.world_size
    return out


def uniform_path(space: SearchSpace, seed: int, step: int) -> Arch:
    """The path of iteration ``step``: uniform over the space, and a function of (seed, step) only,
    so every rank draws the same path without communicating and a resumed run replays the same
    paths."""
    return space.sample(np.random.default_rng([seed, step]))


@dataclass
class Progress:
    """Prints step, loss, lr, images/s and ETA every ``every`` steps; keeps the curve.

    ``history`` rows: {"step", "loss", "lr", "images_per_s", "data_s", <named losses>...}, averaged
    over the interval (``data_s``: seconds per step spent waiting for the batch, where
    ``add_data_wait`` counted them; ``TIMING_KEYS`` are the keys that measure time, not the model); ``sink`` receives each row (e.g. MLflow metrics).
    """

    total: int
    every: int = 10
    images_per_step: int = 1
    name: str = "train"
    history: list[dict[str, float]] = field(default_factory=list)
    sink: Callable[[dict[str, float]], None] | None = None
    _sums: dict[str, float] = field(default_factory=dict)
    _count: int = 0
    _t0: float = field(default_factory=time.perf_counter)
    _t_start: float = field(default_factory=time.perf_counter)
    _steps_timed: int = 0
    _data_sum: float = 0.0
    _data_n: int = 0

    def partial(self) -> dict[str, Any]:
        """The steps since the last row: what a checkpoint taken between two rows keeps, so that the
        resumed run's next row averages the same steps as an uninterrupted run's."""
        return {"sums": dict(self._sums), "count": self._count}

    def restore_partial(self, partial: dict[str, Any] | None) -> None:
        if partial:
            self._sums, self._count = dict(partial["sums"]), int(partial["count"])

    def add_data_wait(self, seconds: float) -> None:
        """Count a step's wait for its batch (the loader's share of the step): the next row's
        ``data_s`` is the mean over the steps since the last row."""
        self._data_sum += seconds
        self._data_n += 1

    def logs_at(self, step: int) -> bool:
        """Whether ``update`` of completed step ``step`` (1-based) prints and records a row."""
        return step % self.every == 0 or step == self.total

    def update(self, step: int, losses: dict[str, float], lr: float, *, extra: dict[str, float] | None = None) -> None:
        """Record completed step ``step`` (1-based)."""
        for k, v in losses.items():
            self._sums[k] = self._sums.get(k, 0.0) + v
        self._count += 1
        if not self.logs_at(step):
            return
        now = time.perf_counter()
        dt = now - self._t0
        rate = self._count * self.images_per_step / dt if dt > 0 else float("nan")
        row = {"step": step, "lr": lr, "images_per_s": rate}
        if self._data_n:
            row["data_s"] = self._data_sum / self._data_n
        row.update({k: v / self._count for k, v in self._sums.items()})
        row.update(extra or {})
        self.history.append(row)
        self._steps_timed += self._count
        spent = now - self._t_start
        eta = spent / self._steps_timed * (self.total - step) if self._steps_timed else 0.0
        named = " ".join(f"{k} {fmt_number(v / self._count)}" for k, v in self._sums.items() if k != "loss")
        print(
            f"[{self.name}] step {step}/{self.total} loss {fmt_number(row['loss'])} {named} lr {fmt_number(lr, 5)} "
            f"{rate:.1f} img/s eta {_fmt_seconds(eta)}",
            flush=True,
        )
        if self.sink is not None:
            self.sink(row)
        self._sums, self._count, self._t0 = {}, 0, now
        self._data_sum, self._data_n = 0.0, 0


def _fmt_seconds(s: float) -> str:
    s = int(s)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


class _StopRequest:
    """Remembers a SIGTERM (cluster preemption, ``scancel``) so the loop can checkpoint and exit."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: Any = None

    def __enter__(self) -> "_StopRequest":
        try:
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        except ValueError:  # not the main thread: no handler, rely on periodic checkpoints
            self._previous = None
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.requested = True

    def __exit__(self, *exc: Any) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


class Preempted(SystemExit):
    """Raised after a SIGTERM once the state is checkpointed; exit status 143 as for SIGTERM."""

    def __init__(self, step: int) -> None:
        super().__init__(143)
        self.step = step


def train(
    *,
    model: nn.Module,
    step_losses: Callable[[Any], dict[str, Tensor]],
    batches: Iterator[Any],
    optimizer: torch.optim.Optimizer,
    schedule: Schedule,
    start_step: int,
    progress: Progress,
    checkpointer: Checkpointer,
    path_for_step: Callable[[int], Arch] | None = None,
    dist: Dist,
    precision: Precision = Precision(),
    scaler: torch.amp.GradScaler | None = None,
) -> None:
    """Run iterations ``start_step .. schedule.iterations - 1``.

    Each iteration: set this step's path (``path_for_step``, supernets only; a function of the step,
    so every rank holds the same path, which is checked), set the lr, losses =
    ``step_losses(batch)`` under ``precision.autocast()``, backward their sum, SGD step (through
    ``scaler``, fp16's gradient scaler, when there is one). Gradients are set to None (not zero)
    before each step, so parameters off the path are skipped by SGD: no momentum, no weight decay.

    The host waits for the device only at *sync steps*: steps where ``progress`` logs and steps
    where ``checkpointer`` saves. The losses of the steps in between stay on the device; at a sync
    step they are read in one transfer (per step: the loss as a mean over the ranks and the named
    terms of this rank, in float64, for ``progress``) and checked: a non-finite loss raises
    ``FloatingPointError`` naming its step, the steps read with it and its lr. Before every step one
    collective on the control group (host memory, so the host does not wait for the device) checks
    the ranks hold the same path and asks whether any rank got a SIGTERM: a SIGTERM stops the run at
    the next step, whose state is saved, and ``Preempted`` is raised; a rerun resumes with the same
    history an uninterrupted run has. fp16's ``scaler`` still waits once per step
    (``GradScaler.step`` reads whether the gradients overflowed); bf16 and float32 do not.

    A checkpoint holds the model (unwrapped), the optimizer, the scaler, ``progress.history`` and the
    random number generators; it is what ``Checkpointer.resume`` loads, and the generators are put
    back here, after the data loader made its workers' seed.
    """

    def state_fn() -> dict[str, Any]:
        state = {"model": unwrap(model).state_dict(), "optimizer": optimizer.state_dict(), "history": progress.history,
                 "progress": progress.partial()}
        if scaler is not None:
            state["scaler"] = scaler.state_dict()
        return state

    pending: list[tuple[int, float, Tensor]] = []  # (step, lr, losses on the device) since the last sync step
    names: list[str] = []
    checkpointer.restore_rng()
    progress.restore_partial(checkpointer.resumed_progress)
    model.train()
    with _StopRequest() as stop:
        for step in range(start_step, schedule.iterations):
            token = 0
            if path_for_step is not None:
                arch = path_for_step(step)
                set_path(model, arch)
                token = zlib.crc32(str(arch).encode())
            if dist.agree(token, stop.requested):
                for done, lr_done, values in _read_losses(pending, names, dist) if pending else []:
                    progress.update(done + 1, values, lr_done)  # between two rows: kept in the checkpoint
                checkpointer.save(step, state_fn)
                print(f"stop requested (SIGTERM): checkpointed at step {step}; a rerun resumes from here", flush=True)
                raise Preempted(step)
            lr = schedule.lr_at(step)
            for group in optimizer.param_groups:
                group["lr"] = lr
            waited = time.perf_counter()
            batch = next(batches)
            data_s = time.perf_counter() - waited
            with precision.autocast():
                losses = step_losses(batch)
            loss = sum(losses.values())
            optimizer.zero_grad(set_to_none=True)
            if scaler is None:
                loss.backward()
                optimizer.step()
            else:
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
            names = list(losses) if len(losses) > 1 else []
            # (1 + named terms,) float64, on the device: read to the host at the next sync step
            pending.append((step, lr, torch.stack([loss.detach().double(), *(losses[k].detach().double() for k in names)])))
            progress.add_data_wait(data_s)
            if progress.logs_at(step + 1) or checkpointer.due(step + 1, schedule.iterations):
                for done, lr_done, values in _read_losses(pending, names, dist):
                    progress.update(done + 1, values, lr_done)
                pending.clear()
                checkpointer.maybe_save(step + 1, schedule.iterations, state_fn)


def _read_losses(pending: list[tuple[int, float, Tensor]], names: list[str],
                 dist: Dist) -> list[tuple[int, float, dict[str, float]]]:
    """The losses of the ``pending`` steps on the host, in one transfer: per step, {"loss": mean over
    the ranks, <name>: this rank's term, ...}. FloatingPointError at a non-finite loss."""
    rows = torch.stack([t for _, _, t in pending])  # (steps, 1 + terms), float64
    rows[:, 0] = dist.sum_over_ranks(rows[:, 0].contiguous())
    out = []
    for (step, lr, _), (total, *named) in zip(pending, rows.tolist()):  # the transfer: the host waits here
        loss = total / dist.world_size  # 1 when single-process
        if not np.isfinite(loss):
            terms = f" ({dict(zip(names, named))})" if names else ""
            raise FloatingPointError(
                f"loss is {loss} at step {step}{terms}, of steps {pending[0][0]}-{pending[-1][0]} read together; "
                f"lower the learning rate ({lr}) or check the data"
            )
        out.append((step, lr, {"loss": loss, **dict(zip(names, named))}))
    return out


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DDP wrapper."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def path_batchnorms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """The BN layers a forward pass of ``model`` uses: all of them, except inside supernet choices
    off the current path (backbone, FPN and head BN layers included)."""
    off = inactive_modules(model)
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m not in off]


@torch.no_grad()
def recalibrate_bn(model: nn.Module, batches: Iterable[Any], forward: Callable[[Any], Any]) -> int:
    """Re-estimate the running statistics of the path's BN layers on ``batches``.

    The statistics are reset and momentum set to None, so each BN layer ends with the plain average
    of its per-batch mean and variance over all batches (PyTorch's cumulative average; detectron2's
    PreciseBN does the same), not an exponential moving average dominated by the last batches. The
    forward passes run in training mode (batch statistics; a detector samples proposals as in
    training) without gradients. Returns the number of batches; the model is left in eval mode.
    """
    bns = path_batchnorms(model)
    momenta = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    n = 0
    try:
        for batch in batches:
            forward(batch)
            n += 1
    finally:
        for m, momentum in zip(bns, momenta):
            m.momentum = momentum
        model.eval()
    if n == 0:
        raise ValueError("BN recalibration needs at least one batch of training images")
    return n
