"""Measured latency of backbones: a per-(block, choice) table of milliseconds, like ``flops.CostTable``.

A latency constraint ("backbone under 12 ms on this CPU") needs the latency of thousands of
candidates; timing each one is out of the question. As for MACs, every (block position, choice) of a
space is timed once, standalone, at the feature-map size that position sees for a square detection
input of ``input_size`` pixels and ``batch_size`` images, and a path's latency is a sum along it.

What is timed:

- every searchable block, built standalone with ``blocks.make_block`` (the class ``SinglePathNet``
  uses, same channels and stride), seeded random weights, on a seeded N(0, 1) input
  (batch_size, in_channels, size, size);
- the stem (``SinglePathNet.stem``: 3x3 stride-2 conv, BN, ReLU) on the image batch;
- the tail: whatever the detection backbone runs after the last stage. ``SinglePathNet`` without
  classification head stops at stage 4 (the classifier's last 1x1 conv is not part of a detection
  backbone), so ``tail_ms`` is 0.0 for every space here; it is a field so that a backbone with a
  tail keeps the same formula;
- optionally the fixed detector parts (FPN, RPN / heads, RoI pooling, box head, post-processing and
  the detector's own input transform) as one figure, ``detector_ms``: a whole detector around a
  fixed architecture (the all-3x3 ShuffleNetV2 path) is timed on ``batch_size`` images of
  ``input_size`` pixels (the detector's resize set to that size), minus its backbone alone timed on
  the very tensor size the detector feeds it (the batch padded to a multiple of 32). The parts after
  the backbone do not depend on the searched blocks, up to the number of boxes the post-processing
  keeps (random weights: about constant).

Timing: ``torch.utils.benchmark.Timer`` on the module in eval mode under ``torch.inference_mode``,
fp32, contiguous memory, ``torch.set_num_threads(threads)`` while measuring (restored after). After
``warmup`` untimed calls (allocator, kernel selection), each of ``repeats`` blocks runs the module
``number`` times with ``number`` chosen so one block lasts about ``block_seconds`` (the block size
``blocked_autorange(min_run_time=block_seconds)`` aims at, without its per-call estimation); the entry
is the median over the blocks of the time per call, in milliseconds (``statistic="min"``: the fastest
block, for a machine shared with other jobs; see ``STATISTICS``). The blocks are timed in rounds,
one block of every module per round, so each entry's repeats are spread over the whole measurement
and a drift of the machine's load (other jobs on a shared node) hits every entry alike. On CUDA the
timer synchronises the device around each block.

Calibration. A sum of standalone block medians is biased for a whole network: at block boundaries
the caches, the allocator and the memory layout are not those of the standalone runs, and every
standalone call pays Python / dispatch overhead a network amortises differently (on one CPU thread
a whole backbone takes ~1.1-1.2x the sum of its blocks). So ``measure_latency_table`` also times
``calibration_archs`` seeded random whole backbones end to end, in the same rounds as the blocks
(their own seed stream, never the one ``validate_table`` draws from), and stores the median over
them of measured / summed as ``scale``. A prediction is

    backbone_ms(arch) = scale * (stem_ms + sum_k ms[k][arch[k]] + tail_ms)

one multiplicative correction for the whole space (the bias is roughly proportional: it grows with
the number of blocks and the data they move). ``sum_ms`` is the uncalibrated sum.

A table is only valid where it was measured: ``key`` holds the space, input size, batch size, device
(with the CPU model or GPU name), threads and the torch / torchvision versions, and
``load_latency_table`` refuses a table whose key differs from the running machine's
(``latency_key``), naming every field that differs.
"""

from __future__ import annotations

import dataclasses
import math
import platform
import statistics
import sys
import time
import timeit
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, NamedTuple, Sequence

import numpy as np
import torch
import torchvision
from torch import Tensor, nn
from torch.utils.benchmark import Timer

from .blocks import CHOICES, make_block
from .detectors import DetectorSettings, backbone_body, build_detector
from .flops import _out_size
from .io import read_json, write_json_atomic
from .space import Arch, SearchSpace, get_space

__all__ = [
    "STATISTICS",
    "LatencyTable",
    "Validation",
    "ValidationEntry",
    "device_name",
    "latency_key",
    "load_latency_table",
    "LatencyBound",
    "both",
    "latency_bound",
    "measure_backbone_ms",
    "measure_latency_table",
    "validate_table",
]

FORMAT = "detnas-latency-table"
VERSION = 1
# How an entry reduces its timed blocks. "median": the default. "min": for a shared, oversubscribed
# machine, where other jobs preempt some blocks: preemption only ever adds time, so the fastest block
# is the closest to the module's own cost, provided some blocks run within one scheduler time slice
# (a few ms): short blocks (block_seconds ~0.002) AND whole backbones of a few ms. A backbone longer
# than a slice is preempted in every block while its blocks are not, which biases the calibration
# (measured on 2 oversubscribed CPUs: tiny@96, 2.4 ms backbones: 2.5% mean error with "min" against
# 25% with "median"; small@320, 30 ms backbones: 42% with "min", 10% with "median").
STATISTICS = ("median", "min")
KEY_FIELDS = ("space", "input_size", "batch_size", "device", "threads", "torch", "torchvision")

# seed streams: calibration and validation never draw the same architectures for the same seed
_CALIBRATION_STREAM = 0xCA1
_VALIDATION_STREAM = 0x7A1


# --------------------------------------------------------------------------------------------------
# the running machine


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def device_name(device: str | torch.device) -> str:
    """The device as a table records it: ``"cpu (Intel(R) Xeon(R) ...)"``, ``"cuda:0 (NVIDIA H200)"``."""
    dev = torch.device(device)
    if dev.type == "cuda":
        index = dev.index if dev.index is not None else torch.cuda.current_device()
        return f"cuda:{index} ({torch.cuda.get_device_name(index)})"
    if dev.type == "cpu":
        return f"cpu ({_cpu_model()})"
    return str(dev)


def _torch_device(recorded: str) -> torch.device:
    """The torch device of a recorded device name (``"cuda:0 (NVIDIA H200)"`` -> cuda:0)."""
    return torch.device(recorded.split(" ", 1)[0])


def _threads(threads: int | None) -> int:
    if threads is None:
        return torch.get_num_threads()
    if not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads must be a positive integer or None, got {threads!r}")
    return threads


def _space(space: SearchSpace | str) -> SearchSpace:
    return get_space(space) if isinstance(space, str) else space


def latency_key(
    space: SearchSpace | str, input_size: int, batch_size: int, device: str | torch.device, threads: int | None
) -> dict[str, Any]:
    """The key a latency table measured on this machine with these settings would have
    (``threads`` None: the current ``torch.get_num_threads()``)."""
    return {
        "space": _space(space).name,
        "input_size": int(input_size),
        "batch_size": int(batch_size),
        "device": device_name(device),
        "threads": _threads(threads),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
    }


# --------------------------------------------------------------------------------------------------
# the table


@dataclass(frozen=True)
class LatencyTable:
    """Per-(block, choice) latency of a space at a square input, in milliseconds.

    ``ms[k][c]``: block position k (the order of ``space.blocks()``, i.e. of the genes) with choice c;
    ``stem_ms`` / ``tail_ms``: the parts outside the searched blocks; ``scale``: the calibration of
    the sum against whole backbones (see the module docstring); ``detector_ms``: the fixed detector
    parts (None when not measured), for the detector recorded in ``detector``.
    """

    space: str
    input_size: int
    batch_size: int
    device: str
    threads: int
    torch: str
    torchvision: str
    settings: dict[str, Any]  # repeats, warmup, block_seconds, seed, calibration_archs
    ms: tuple[tuple[float, ...], ...]
    stem_ms: float
    tail_ms: float
    scale: float
    detector_ms: float | None = None
    detector: dict[str, Any] | None = None  # the DetectorSettings (as a dict) and num_classes of detector_ms
    calibration: tuple[tuple[str, float, float], ...] = field(default=())  # (arch, summed ms, measured ms)

    def __post_init__(self) -> None:
        n = get_space(self.space).num_blocks
        if len(self.ms) != n or any(len(row) != len(CHOICES) for row in self.ms):
            raise ValueError(
                f"latency table of space {self.space!r} needs {n} positions x {len(CHOICES)} choices, "
                f"got {[len(row) for row in self.ms]}"
            )
        if not (math.isfinite(self.scale) and self.scale > 0):
            raise ValueError(f"latency table calibration scale must be positive and finite, got {self.scale!r}")

    # ---- predictions

    def _genes(self, arch: Arch | str) -> tuple[int, ...]:
        return get_space(self.space).parse(arch).genes

    def sum_ms(self, arch: Arch | str) -> float:
        """Uncalibrated: stem + the path's block entries + tail, in ms."""
        return self.stem_ms + sum(row[g] for row, g in zip(self.ms, self._genes(arch))) + self.tail_ms

    def backbone_ms(self, arch: Arch | str) -> float:
        """Predicted backbone latency of ``arch`` in ms: ``scale * (stem + sum of entries + tail)``."""
        return self.scale * self.sum_ms(arch)

    def detector_total_ms(self, arch: Arch | str) -> float:
        """Predicted whole-detector latency in ms: ``backbone_ms(arch) + detector_ms``."""
        if self.detector_ms is None:
            raise ValueError(
                f"latency table of space {self.space!r} has no detector_ms: measure it with detector=... "
                f"and num_classes=..."
            )
        return self.backbone_ms(arch) + self.detector_ms

    def bounds(self) -> tuple[float, float]:
        """The smallest and largest predicted backbone latency over the whole space, in ms (exact:
        the fastest / slowest choice at every position; the scale is positive)."""
        lo = self.stem_ms + sum(min(row) for row in self.ms) + self.tail_ms
        hi = self.stem_ms + sum(max(row) for row in self.ms) + self.tail_ms
        return self.scale * lo, self.scale * hi

    def within(self, arch: Arch | str, max_latency_ms: float, min_latency_ms: float | None = None) -> bool:
        """The latency constraint of a search: ``min_latency_ms <= backbone_ms(arch) <= max_latency_ms``."""
        ms = self.backbone_ms(arch)
        return (min_latency_ms is None or ms >= min_latency_ms) and ms <= max_latency_ms

    # ---- reuse and files

    @property
    def key(self) -> dict[str, Any]:
        """Everything that makes the table valid for reuse (compare with ``latency_key``)."""
        return {k: getattr(self, k) for k in KEY_FIELDS}

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (``from_json`` reads it back to an equal table)."""
        d = dataclasses.asdict(self)
        d["ms"] = [list(row) for row in self.ms]
        d["calibration"] = [list(c) for c in self.calibration]
        return {"format": FORMAT, "version": VERSION, **d}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "LatencyTable":
        """The table of a ``to_json`` dict; ValueError (KeyError / TypeError inside) when it is not one."""
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            what = d.get("format") if isinstance(d, dict) else type(d).__name__
            raise ValueError(f"not a {FORMAT} (format {what!r})")
        if d.get("version") != VERSION:
            raise ValueError(f"{FORMAT} version {d.get('version')!r}, this code reads version {VERSION}")
        names = {f.name for f in dataclasses.fields(cls)}
        body = {k: v for k, v in d.items() if k in names}
        body["ms"] = tuple(tuple(float(x) for x in row) for row in body["ms"])
        body["calibration"] = tuple((str(a), float(s), float(m)) for a, s, m in body.get("calibration", ()))
        return cls(**body)

    def save(self, path: str | Path) -> None:
        """Write the table as JSON, atomically."""
        write_json_atomic(self.to_json(), path)


def read_latency_table(path: str | Path) -> LatencyTable:
    """The table at ``path``, of whatever setup; ValueError naming the file when it is missing, not
    JSON or not a latency table (``load_latency_table`` also checks the setup)."""
    data = read_json(Path(path))  # ValueError naming the file: missing, not JSON
    try:
        return LatencyTable.from_json(data)
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{path}: not a valid latency table ({type(exc).__name__}: {exc})") from None


def load_latency_table(path: str | Path, expected: dict[str, Any]) -> LatencyTable:
    """The table at ``path`` if its key equals ``expected`` (``latency_key(...)`` of the running
    machine). ValueError names the file and every field that differs (a table of another device,
    input size, batch size, thread count, space or torch version is never reused), or says in one
    line that the file is missing or not a latency table."""
    return check_table_setup(read_latency_table(path), expected, path)


def check_table_setup(table: LatencyTable, expected: dict[str, Any], path: str | Path) -> LatencyTable:
    """``table`` (read from ``path``) if its key equals ``expected``; else ValueError naming the file
    and every field that differs."""
    key = table.key
    differ = [
        f"{k} {key.get(k, '(missing)')!r} (expected {expected.get(k, '(missing)')!r})"
        for k in sorted(set(key) | set(expected), key=lambda k: (k not in KEY_FIELDS, k))
        if key.get(k) != expected.get(k)
    ]
    if differ:
        raise ValueError(f"{path}: latency table measured for another setup: {'; '.join(differ)}; measure it again")
    return table


# --------------------------------------------------------------------------------------------------
# timing


@contextmanager
def _measuring(threads: int) -> Iterator[None]:
    """Inference mode with ``threads`` intra-op threads; the thread count is restored after."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.inference_mode():
            yield
    finally:
        torch.set_num_threads(before)


def _clock(device: torch.device) -> Callable[[], float]:
    if device.type != "cuda":
        return timeit.default_timer

    def synchronised() -> float:
        torch.cuda.synchronize(device)
        return timeit.default_timer()

    return synchronised


class _Call(NamedTuple):
    """One thing to time: ``fn(*args)``."""

    fn: Callable[..., Any]
    args: tuple[Any, ...]


@dataclass(frozen=True)
class _Timing:
    """How every entry is timed (the table's ``settings`` plus the device and threads)."""

    device: torch.device
    threads: int
    repeats: int
    warmup: int
    block_seconds: float
    statistic: str = "median"  # over the blocks of a call: "median" or "min" (see STATISTICS)

    def ms(self, calls: Sequence[_Call], progress: Callable[[int], None] | None = None) -> list[float]:
        """For each call, the ``statistic`` (median or min) over ``repeats`` blocks of the time of one
        call, in ms (run inside ``_measuring``).

        Each call is warmed up first (``warmup`` untimed calls, which also size its blocks); then the
        blocks are timed in rounds, one block of every call per round, so a call's repeats are spread
        over the whole measurement: a drift of the machine's load (other jobs on a shared node) hits
        every entry alike instead of whichever was timed at the wrong moment. ``progress(r)`` after
        round r."""
        clock = _clock(self.device)
        timers, numbers = [], []
        for call in calls:
            t0 = clock()
            for _ in range(max(self.warmup, 1)):
                call.fn(*call.args)
            per_call = max((clock() - t0) / max(self.warmup, 1), 1e-7)
            numbers.append(max(1, math.ceil(self.block_seconds / per_call)))
            timers.append(Timer(stmt="fn(*args)", globals={"fn": call.fn, "args": call.args}, timer=clock,
                                num_threads=self.threads))
        blocks: list[list[float]] = [[] for _ in calls]
        for r in range(self.repeats):
            for timer, number, times in zip(timers, numbers, blocks):
                # Timer.timeit runs number // 100 (at least 2) more calls as its own warm-up
                times.append(timer.timeit(number).median)
            if progress is not None:
                progress(r)
        reduce = min if self.statistic == "min" else statistics.median
        return [reduce(times) * 1e3 for times in blocks]


def _table_timing(table: "LatencyTable", device: torch.device, *, repeats: int | None = None,
                  warmup: int | None = None, block_seconds: float | None = None,
                  statistic: str | None = None) -> "_Timing":
    """How ``table``'s entries were timed (its settings), each setting overridable: what a whole
    backbone set beside the table is timed with."""
    s = table.settings
    return _Timing(device, table.threads,
                   repeats if repeats is not None else s.get("repeats", 15),
                   warmup if warmup is not None else s.get("warmup", 5),
                   block_seconds if block_seconds is not None else s.get("block_seconds", 0.01),
                   _check_statistic(statistic if statistic is not None else s.get("statistic", "median")))


def _check_statistic(statistic: str) -> str:
    if statistic not in STATISTICS:
        raise ValueError(f"statistic must be one of {', '.join(STATISTICS)}, got {statistic!r}")
    return statistic


def _seeded(seed: int, build: Callable[[], nn.Module], device: torch.device) -> nn.Module:
    """``build()`` with weights drawn from ``seed`` (the global RNG is left as it was), in eval mode."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        module = build()
    return module.to(device).eval()


def _input(shape: tuple[int, ...], seed: int, device: torch.device) -> Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=gen).to(device)


def _backbone_call(space: SearchSpace, arch: Arch, size: int, batch: int, seed: int, device: torch.device) -> _Call:
    """The detection backbone ``arch`` (stem + C2..C5) on a (batch, 3, size, size) input."""
    net = _seeded(seed, lambda: backbone_body(space, arch), device)
    return _Call(net, (_input((batch, 3, size, size), seed, device),))


def _progress(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _detector_settings(detector: DetectorSettings | dict[str, Any] | str, input_size: int) -> DetectorSettings:
    if isinstance(detector, str):
        settings = DetectorSettings.from_dict({"name": detector})
    elif isinstance(detector, dict):
        settings = DetectorSettings.from_dict(detector)
    elif isinstance(detector, DetectorSettings):
        settings = detector
    else:
        raise ValueError(f"detector must be DetectorSettings, a dict of them or a detector name, got {detector!r}")
    # the detector resizes its images to min_size: keep them at the table's input size
    return dataclasses.replace(settings, min_size=input_size, max_size=input_size)


def _detector_ms(
    space: SearchSpace, settings: DetectorSettings, num_classes: int, input_size: int, batch: int, seed: int,
    timing: _Timing,
) -> float:
    """Whole detector minus its backbone, both timed, for the all-3x3 path (see the module docstring)."""
    arch = space.uniform(0)
    det = _seeded(seed, lambda: build_detector(backbone_body(space, arch), num_classes=num_classes,
                                               settings=settings), timing.device)
    gen = torch.Generator().manual_seed(seed)
    images = [torch.rand(3, input_size, input_size, generator=gen).to(timing.device) for _ in range(batch)]
    padded = det.transform(images)[0].tensors  # (B, 3, S', S'), S' a multiple of 32: what the backbone sees
    body = det.backbone.body  # the same SinglePathNet modules, picked by IntermediateLayerGetter
    total, backbone = timing.ms([_Call(det, (images,)), _Call(body, (torch.randn_like(padded),))])
    return total - backbone


def measure_latency_table(
    space: SearchSpace | str,
    *,
    input_size: int,
    batch_size: int = 1,
    device: str | torch.device = "cpu",
    threads: int | None = None,
    repeats: int = 15,
    warmup: int = 5,
    seed: int = 0,
    block_seconds: float = 0.01,
    calibration_archs: int = 10,
    detector: DetectorSettings | dict[str, Any] | str | None = None,
    num_classes: int | None = None,
    statistic: str = "median",
) -> LatencyTable:
    """Time every (block position, choice) of ``space``, the stem and the tail at a square
    ``input_size`` (pixels) with ``batch_size`` images, calibrate the sum on ``calibration_archs``
    seeded random whole backbones, and, with ``detector`` (DetectorSettings, a dict of them, or a
    detector name) and ``num_classes``, time the fixed detector parts (``detector_ms``: a whole
    detector with the all-3x3 path minus its backbone). ``threads`` None: the current
    ``torch.get_num_threads()``; ``statistic``: how an entry reduces its ``repeats`` blocks of
    ~``block_seconds`` each ("median", or "min" on a machine shared with other jobs). Progress goes
    to stderr: one line per round, then one per block position."""
    space = _space(space)
    for name, value, low in (("input_size", input_size, 32), ("batch_size", batch_size, 1), ("repeats", repeats, 1),
                             ("warmup", warmup, 0), ("calibration_archs", calibration_archs, 1)):
        if not isinstance(value, int) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    if not block_seconds > 0:
        raise ValueError(f"block_seconds must be positive, got {block_seconds!r}")
    _check_statistic(statistic)
    if detector is not None and (not isinstance(num_classes, int) or num_classes < 1):
        raise ValueError(f"timing a detector needs num_classes (a positive integer), got {num_classes!r}")
    dev = torch.device(device)
    threads = _threads(threads)
    timing = _Timing(dev, threads, repeats, warmup, block_seconds, statistic)
    key = latency_key(space, input_size, batch_size, dev, threads)
    t_start = time.perf_counter()
    tag = f"latency {space.name}@{input_size}"
    with _measuring(threads):
        # every module built first, then all timed in interleaved rounds (see _Timing.ms): the
        # calibration backbones are timed over the same stretch of time as the blocks they calibrate
        stem = _seeded(seed, lambda: backbone_body(space, space.uniform(0)).stem, dev)
        calls = [_Call(stem, (_input((batch_size, 3, input_size, input_size), seed, dev),))]
        size, sizes = _out_size(input_size, 2), []  # after the stem
        for k, spec in enumerate(space.blocks()):
            sizes.append(size)
            x = _input((batch_size, spec.in_channels, size, size), seed + k, dev)  # (B, C_in, H, W)
            for c in range(len(CHOICES)):
                block = _seeded(seed + k * len(CHOICES) + c,
                                lambda c=c: make_block(c, spec.in_channels, spec.out_channels, spec.stride), dev)
                calls.append(_Call(block, (x,)))
            size = _out_size(size, spec.stride)
        rng = np.random.default_rng((seed, _CALIBRATION_STREAM))
        cal_archs = [space.sample(rng) for _ in range(calibration_archs)]
        calls += [_backbone_call(space, a, input_size, batch_size, seed + i, dev) for i, a in enumerate(cal_archs)]
        _progress(f"{tag}: timing the stem, {space.num_blocks} x {len(CHOICES)} blocks and {calibration_archs} "
                  f"calibration backbones in {repeats} rounds")
        times = timing.ms(calls, lambda r: _progress(f"{tag}: round {r + 1}/{repeats} "
                                                     f"({time.perf_counter() - t_start:.1f} s)"))
        stem_ms, n = times[0], space.num_blocks * len(CHOICES)
        rows = tuple(tuple(times[1 + k * len(CHOICES): 1 + (k + 1) * len(CHOICES)]) for k in range(space.num_blocks))
        tail_ms = 0.0  # the detection backbone ends at stage 4 (see the module docstring)
        for k, (spec, size, row) in enumerate(zip(space.blocks(), sizes, rows)):
            _progress(f"{tag}: block {k + 1}/{space.num_blocks} (stage {spec.stage}, {spec.in_channels}->"
                      f"{spec.out_channels}, stride {spec.stride}, {size}x{size} in): "
                      + ", ".join(f"{ms:.3f}" for ms in row) + " ms")
        raw = LatencyTable(**key, settings={}, ms=rows, stem_ms=stem_ms, tail_ms=tail_ms, scale=1.0)
        calibration = [(str(a), raw.sum_ms(a), m) for a, m in zip(cal_archs, times[1 + n:], strict=True)]
        scale = statistics.median(m / s for _, s, m in calibration)
        _progress(f"{tag}: calibration on {calibration_archs} backbones: scale {scale:.4f}")
        det_ms, det_record = None, None
        if detector is not None:
            settings = _detector_settings(detector, input_size)
            det_ms = _detector_ms(space, settings, num_classes, input_size, batch_size, seed, timing)
            det_record = {**dataclasses.asdict(settings), "num_classes": num_classes}
            _progress(f"{tag}: {settings.name} without backbone: {det_ms:.3f} ms")
    _progress(f"{tag}: table measured in {time.perf_counter() - t_start:.1f} s")
    return dataclasses.replace(
        raw,
        settings={"repeats": repeats, "warmup": warmup, "block_seconds": block_seconds, "statistic": statistic,
                  "seed": seed, "calibration_archs": calibration_archs},
        scale=scale,
        detector_ms=det_ms,
        detector=_jsonable(det_record),
        calibration=tuple(calibration),
    )


def _jsonable(d: dict[str, Any] | None) -> dict[str, Any] | None:
    # tuples (anchor sizes, aspect ratios) as lists: a JSON round trip gives an equal table
    return None if d is None else {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


# --------------------------------------------------------------------------------------------------
# validation


class ValidationEntry(NamedTuple):
    """One validated backbone: predicted (calibrated and not) and measured ms, error in percent."""

    arch: str
    predicted_ms: float
    measured_ms: float
    error_pct: float  # 100 * (predicted - measured) / measured
    uncalibrated_ms: float  # the plain sum of the table's entries

    @property
    def uncalibrated_error_pct(self) -> float:
        return 100.0 * (self.uncalibrated_ms - self.measured_ms) / self.measured_ms


@dataclass(frozen=True)
class Validation:
    """The table's predictions against end-to-end timings of random whole backbones."""

    entries: tuple[ValidationEntry, ...]

    @property
    def mean_abs_error_pct(self) -> float:
        return statistics.fmean(abs(e.error_pct) for e in self.entries)

    @property
    def worst_abs_error_pct(self) -> float:
        return max(abs(e.error_pct) for e in self.entries)

    @property
    def uncalibrated_mean_abs_error_pct(self) -> float:
        """The same for the plain sum (scale 1): what the calibration corrects."""
        return statistics.fmean(abs(e.uncalibrated_error_pct) for e in self.entries)


def validate_table(
    table: LatencyTable,
    space: SearchSpace | str,
    n: int = 10,
    seed: int = 0,
    *,
    repeats: int | None = None,
    warmup: int | None = None,
    block_seconds: float | None = None,
    statistic: str | None = None,
) -> Validation:
    """Time ``n`` seeded random whole backbones of ``space`` (SinglePathNet, the table's device,
    threads, input and batch size; timing settings the table's unless given) end to end and compare
    them with the table's predictions (timed in interleaved rounds, as the table). The architectures
    come from a seed stream the calibration never draws from. ValueError when the table was not
    measured for this space and machine. Progress goes to stderr, one line per round."""
    space = _space(space)
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    dev = _torch_device(table.device)
    expected = latency_key(space, table.input_size, table.batch_size, dev, table.threads)
    _refuse_other_setup(table, expected, "validate")
    timing = _table_timing(table, dev, repeats=repeats, warmup=warmup, block_seconds=block_seconds,
                           statistic=statistic)
    rng = np.random.default_rng((seed, _VALIDATION_STREAM))
    archs = [space.sample(rng) for _ in range(n)]
    with _measuring(table.threads):
        calls = [_backbone_call(space, a, table.input_size, table.batch_size, seed + i, dev)
                 for i, a in enumerate(archs)]
        t_start, tag = time.perf_counter(), f"latency {space.name}@{table.input_size}: validation"
        measured = timing.ms(calls, lambda r: _progress(f"{tag} round {r + 1}/{timing.repeats} "
                                                        f"({time.perf_counter() - t_start:.1f} s)"))
    entries = []
    for arch, m in zip(archs, measured):
        predicted = table.backbone_ms(arch)
        entries.append(ValidationEntry(str(arch), predicted, m, 100.0 * (predicted - m) / m, table.sum_ms(arch)))
    return Validation(tuple(entries))


def _refuse_other_setup(table: LatencyTable, expected: dict[str, Any], what: str) -> None:
    differ = [f"{k} {table.key[k]!r} (here {expected[k]!r})" for k in KEY_FIELDS if table.key[k] != expected[k]]
    if differ:
        raise ValueError(f"cannot {what} with a latency table of another setup: {'; '.join(differ)}")


def measure_backbone_ms(table: LatencyTable, space: SearchSpace | str, arch: Arch | str, *, seed: int = 0) -> float:
    """The end-to-end time (ms) of the detection backbone ``arch`` of ``space`` on this machine at the
    table's device, threads, input and batch size, timed as the table's entries (its repeats, warm-up,
    block length and statistic). ``space`` may differ from the table's (a width-scaled ShuffleNetV2, a
    published architecture of another space): only the device and the settings must be the table's
    (ValueError otherwise), since the measured time is set beside the table's predictions."""
    space = _space(space)
    arch = space.parse(arch) if isinstance(arch, str) else arch
    dev = _torch_device(table.device)
    expected = latency_key(table.space, table.input_size, table.batch_size, dev, table.threads)
    _refuse_other_setup(table, expected, "measure a backbone")
    timing = _table_timing(table, dev)
    with _measuring(table.threads):
        call = _backbone_call(space, arch, table.input_size, table.batch_size, seed, dev)
        (ms,) = timing.ms([call])
    return ms


def both(first: Callable[[Arch], bool], second: Callable[[Arch], bool]) -> Callable[[Arch], bool]:
    """The conjunction of two feasibility tests (the FLOPs bounds and the latency bound)."""
    return lambda arch: first(arch) and second(arch)


@dataclass(frozen=True)
class LatencyBound:
    """A search's latency constraint: the backbone's table-sum (``LatencyTable.backbone_ms``, the
    figure ``final.json`` reports as predicted) at most ``max_ms``."""

    table: LatencyTable
    max_ms: float

    def admits(self, arch: Arch) -> bool:
        return self.table.within(arch, self.max_ms)


def bound_problem(table: LatencyTable, max_ms: float, where: str, source: str) -> str | None:
    """Why ``max_ms`` admits no architecture of the table's space, naming the setting ``where`` and the
    table's file ``source`` (None when it admits one). The DAG build reads the same figures from the
    table's JSON (workflow/rules/common.smk) before any job runs."""
    lo, hi = table.bounds()
    if max_ms >= lo:
        return None
    # shown rounded outwards to 0.001 ms: a bound at the fastest figure shown admits an architecture
    return (f"{where}: {max_ms} admits no architecture (latency table {source}: fastest backbone "
            f"{math.ceil(lo * 1000) / 1000} ms, slowest {math.floor(hi * 1000) / 1000} ms on {table.device}, "
            f"{table.threads} thread(s), {table.input_size} px, batch {table.batch_size})")


def latency_bound(path: str | Path, space: SearchSpace, max_ms: float, where: str) -> LatencyBound:
    """The latency bound ``max_ms`` over the table at ``path``, which must be of ``space``; ValueError
    (naming ``where`` and the file) for another space's table or a bound no architecture meets."""
    if not max_ms > 0:
        raise ValueError(f"{where}: {max_ms} must be a positive number of milliseconds")
    table = read_latency_table(path)
    if table.space != space.name:
        raise ValueError(f"{path}: a latency table of space {table.space!r}, not {space.name!r}: measure it again")
    problem = bound_problem(table, max_ms, where, str(path))
    if problem:
        raise ValueError(problem)
    return LatencyBound(table, max_ms)
