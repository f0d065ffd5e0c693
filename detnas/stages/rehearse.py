"""The ``rehearse`` wrapper: run one stage's real command for a few iterations and time it.

A rehearsal runs a stage at the experiment's real settings (image size, batch size, detector,
precision, loader workers, GPUs) but for a few steps, so that ``detnas plan`` can predict what the
full run costs before GPU-days go to it. This module runs the command, keeps its log, and reads
what the stage wrote (its metrics.json, arch.json or final.json) into per-step, per-candidate or
per-image times.

The wrapper always exits 0 after writing its JSON, also when the command failed: a failed
rehearsal is a result the plan reports (with the error line of the log), and the plan target must
still complete. The command runs in its own session (its own process group): a SIGTERM or SIGINT
to the wrapper (SLURM's ``scancel`` signals the job's whole group, which no longer includes the
command) is passed on to the command's group, which is killed after a grace period, and the
wrapper exits without writing its JSON (128 + the signal's number).
"""

from __future__ import annotations

import os
import re
import resource
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Sequence


__all__ = ["SEARCH_REHEARSALS", "STAGES", "TRAINING_STAGES", "error_line", "run_rehearse", "timing"]

TRAINING_STAGES = ("pretrain_supernet", "finetune_supernet", "retrain_pretrain", "retrain_finetune")
# ClsNAS scores paths on classification images, a proxy search scores fresh networks: each its own cost
SEARCH_REHEARSALS = ("search", "search_clsnas", "search_synflow", "search_naswot", "search_zico", "search_mae_entropy")
STAGES = (*TRAINING_STAGES, *SEARCH_REHEARSALS, "evaluate")
GRACE_S = 10.0  # seconds the command's group has after a SIGTERM before it is killed (SIGKILL)
_LOG_TAIL_BYTES = 1 << 20  # the error line is looked for in the log's last MiB

# "error: ..." (detnas's one-line errors, maybe after "rank i/n: " or argparse's "prog: ") or a traceback's last line
# ("ValueError: ...", "torch.OutOfMemoryError: ...", "...ChildFailedError: ...")
_ERROR_RE = re.compile(r"^(?:[^:]*: )?error: .*$"
                       r"|^(?:rank \d+/\d+: )?[A-Za-z_][\w.]*(?:Error|Exception|Exit|Interrupt)(?:: .*)?$")


def error_line(log: Path) -> str | None:
    """The failure of a command in one line: the last line of ``log`` that starts with ``error:``
    or is the last line of a Python traceback (``ValueError: ...``); None if there is none."""
    try:
        with open(log, "rb") as f:
            f.seek(max(0, os.path.getsize(log) - _LOG_TAIL_BYTES))
            lines = f.read().decode(errors="replace").splitlines()
    except OSError:
        return None
    found = [line.strip() for line in lines if _ERROR_RE.match(line.strip())]
    return found[-1] if found else None


def _host_memory_mb() -> float | None:
    """The host's memory (MB): MemTotal of /proc/meminfo; None where there is none."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def _device() -> tuple[str, float | None]:
    """The device a stage's job runs on and its total memory (MB): CUDA device 0, else the CPU and
    the host's memory."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0), torch.cuda.get_device_properties(0).total_memory / 2**20
    return "cpu", _host_memory_mb()


def _median_spread(values: list[float]) -> tuple[float, float, float]:
    """(median, 10th, 90th percentile) of ``values``."""
    values = sorted(values)
    deciles = statistics.quantiles(values, n=10, method="inclusive") if len(values) > 1 else values * 9
    return statistics.median(values), deciles[0], deciles[-1]


def _steps_timing(metrics: Path, batch_size: int, warmup_steps: int, wall_s: float) -> dict[str, Any]:
    """A training stage's seconds per step from its metrics.json: per history row after the warm-up
    (step > ``warmup_steps``; the last row if none is), ``batch_size / images_per_s``. Also, where
    the stage measured them: the model's own images/s (``model_images_per_s``: a step less its wait
    for the batch, ``data_s``), the loader's alone (``loader_images_per_s``, its ``loader_workers``
    per process) and the peak CUDA memory (``peak_gpu_memory_mb``, MB)."""
    from ..io import read_json

    m = read_json(metrics)
    try:
        steps = int(m["iterations"])
        rows = [(int(r["step"]), float(r["images_per_s"]), r.get("data_s")) for r in m["history"]]
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ValueError(f"{metrics}: not a training stage's metrics (no iterations or history: {exc!r})") from None
    rows = [(s, x, d) for s, x, d in rows if x == x and 0 < x < float("inf")]
    if not rows:
        raise ValueError(f"{metrics}: no history row with a positive images_per_s")
    timed = [(x, d) for s, x, d in rows if s > warmup_steps] or [rows[-1][1:]]
    median, p10, p90 = _median_spread([batch_size / x for x, _ in timed])
    waits = [float(d) for _, d in timed if isinstance(d, (int, float))]
    data_s = statistics.median(waits) if waits else None
    compute_s = median - data_s if data_s is not None else None
    loader = m.get("loader_images_per_s")
    return {"kind": "steps", "steps": steps, "sec_per_step": median, "sec_per_step_p10": p10,
            "sec_per_step_p90": p90, "images_per_s": batch_size / median, "timed_rows": len(timed),
            "data_s_per_step": data_s,
            "model_images_per_s": batch_size / compute_s if compute_s and compute_s > 0 else None,
            "loader_images_per_s": float(loader) if isinstance(loader, (int, float)) and loader > 0 else None,
            "loader_workers": m.get("loader_workers"), "world_size": m.get("world_size"),
            "peak_gpu_memory_mb": m.get("peak_gpu_memory_mb"),
            "overhead_s": max(0.0, wall_s - steps * median)}


def _candidates_timing(arch_file: Path, wall_s: float) -> dict[str, Any]:
    """The search's seconds per scored candidate from its arch.json."""
    from ..io import read_json

    a = read_json(arch_file)
    try:
        n, s = int(a["evaluations"]), float(a["seconds_per_candidate"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{arch_file}: no evaluations or seconds_per_candidate ({exc!r})") from None
    return {"kind": "candidates", "candidates": n, "sec_per_candidate": s, "overhead_s": max(0.0, wall_s - n * s),
            "peak_gpu_memory_mb": a.get("peak_gpu_memory_mb")}


def _images_timing(final: Path, wall_s: float) -> dict[str, Any]:
    """The evaluation's seconds per test image from its final.json (its own ``seconds``, else the
    job's wall-clock)."""
    from ..io import read_json

    f = read_json(final)
    try:
        n = int(f["test_images"])
        total = int(f.get("test_images_total") or n)
        seconds = float(f["seconds"]) if f.get("seconds") is not None else wall_s
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{final}: no test_images ({exc!r})") from None
    if n <= 0:
        raise ValueError(f"{final}: test_images is {n}")
    return {"kind": "images", "images": n, "images_total": total, "sec_per_image": seconds / n,
            "overhead_s": max(0.0, wall_s - seconds), "peak_gpu_memory_mb": f.get("peak_gpu_memory_mb")}


def timing(stage: str, *, wall_s: float, metrics: Path | None = None, batch_size: int | None = None,
           warmup_steps: int = 0, arch_file: Path | None = None, final: Path | None = None) -> dict[str, Any]:
    """What a successful rehearsal of ``stage`` measured (see the module's docstring); ValueError
    names the stage's file when it is missing or malformed."""
    if stage in TRAINING_STAGES:
        assert metrics is not None and batch_size is not None
        return _steps_timing(metrics, batch_size, warmup_steps, wall_s)
    if stage in SEARCH_REHEARSALS:
        assert arch_file is not None
        return _candidates_timing(arch_file, wall_s)
    assert final is not None
    return _images_timing(final, wall_s)


def _check_args(stage: str, command: Sequence[str], metrics: Path | None, batch_size: int | None,
                arch_file: Path | None, final: Path | None) -> None:
    """ValueError for a wrapper called wrongly (the only case it does not exit 0)."""
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; known: {', '.join(STAGES)}")
    if not command:
        raise ValueError("no command to rehearse: give it after --")
    if stage in TRAINING_STAGES and (metrics is None or batch_size is None or batch_size <= 0):
        raise ValueError(f"{stage}: give --metrics (the stage's metrics.json) and --batch-size (> 0)")
    if stage in SEARCH_REHEARSALS and arch_file is None:
        raise ValueError(f"{stage}: give --arch-file (the search's arch.json)")
    if stage == "evaluate" and final is None:
        raise ValueError("evaluate: give --final (the evaluation's final.json)")


def _kill_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _run(command: Sequence[str], log: Path) -> tuple[int, float]:
    """Run ``command`` in its own session, stdout and stderr to ``log``; (return code, seconds).
    A SIGTERM or SIGINT meanwhile kills the command's process group and exits (128 + signal)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    received: list[int] = []
    proc: subprocess.Popen[bytes] | None = None

    def on_signal(signum: int, _frame: Any) -> None:
        received.append(signum)
        if proc is not None:
            _kill_group(proc.pid, signal.SIGTERM)

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        t = time.perf_counter()
        with open(log, "wb") as out:
            proc = subprocess.Popen(list(command), stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True)
            if received:  # signalled before the command had a pid
                _kill_group(proc.pid, signal.SIGTERM)
            returncode = proc.wait()
        wall_s = time.perf_counter() - t
        if received:
            try:
                proc.wait(timeout=GRACE_S)
            except subprocess.TimeoutExpired:
                pass
            deadline = time.monotonic() + GRACE_S  # the leader is gone; give the rest of its group the grace too
            while time.monotonic() < deadline and _group_alive(proc.pid):
                time.sleep(0.1)
            _kill_group(proc.pid, signal.SIGKILL)
            print(f"rehearse: got signal {received[0]}; killed the command's process group {proc.pid}",
                  file=sys.stderr, flush=True)
            sys.exit(128 + received[0])
        _kill_group(proc.pid, signal.SIGKILL)  # nothing of a rehearsal is left running after it
        return returncode, wall_s
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def run_rehearse(*, stage: str, command: Sequence[str], out: Path, log: Path, metrics: Path | None = None,
                 batch_size: int | None = None, warmup_steps: int = 0, arch_file: Path | None = None,
                 final: Path | None = None) -> dict[str, Any]:
    """Run ``command`` (a stage's real command at rehearsal length), then write ``out``:
    ``{"stage", "ok", "returncode", "error" (one line or None), "wall_s" (s), "peak_rss_mb" (the
    largest resident set of the command's processes, MB), "device", "device_memory_mb" (MB),
    "host_memory_mb" (MB), "timing"}`` (``timing``: see ``timing``; {} when not ok)."""
    _check_args(stage, command, metrics, batch_size, arch_file, final)
    returncode, wall_s = _run(command, log)
    peak_rss_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # Linux: KiB
    error = None
    measured: dict[str, Any] = {}
    if returncode != 0:
        error = error_line(log) or (f"exit status {returncode}" if returncode > 0
                                    else f"exit status {returncode} (killed by {signal.Signals(-returncode).name})")
    else:
        try:
            measured = timing(stage, wall_s=wall_s, metrics=metrics, batch_size=batch_size,
                              warmup_steps=warmup_steps, arch_file=arch_file, final=final)
        except ValueError as exc:
            error = str(exc)
    device, device_memory_mb = _device()
    result = {"stage": stage, "ok": error is None, "returncode": returncode, "error": error, "wall_s": wall_s,
              "peak_rss_mb": peak_rss_mb, "device": device, "device_memory_mb": device_memory_mb,
              "host_memory_mb": _host_memory_mb(), "timing": measured}
    from ..io import write_json_atomic  # imports torch: only after the command, so as not to weigh on its memory

    write_json_atomic(result, out)
    status = "ok" if error is None else f"FAILED: {error}"
    print(f"rehearse {stage}: {status} ({wall_s:.1f} s, peak RSS {peak_rss_mb:.0f} MB, on {device}); log {log}")
    return result

