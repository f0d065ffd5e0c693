"""Latency stages: the experiment's latency table measured on the deployment device (``detnas.latency``),
validated against whole backbones, and each retrained network's predicted and measured latency.

``run_latency_table`` writes the table (what the search's ``max_latency_ms`` bound reads), its
validation (table-sum against end-to-end times of seeded random backbones: mean and worst error in %)
and a predicted-against-measured plot. ``run_arch_latency`` writes one network's ``latency.json``
(its backbone's table-sum prediction and its measured end-to-end time on the table's device), which
the evaluation copies into ``final.json`` and the comparison shows.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from ..io import read_json, write_json_atomic

__all__ = ["run_arch_latency", "run_latency_table"]


# the latency section's settings measure_latency_table takes (a missing or null one: its default)
_MEASURE_KEYS = ("batch_size", "device", "threads", "repeats", "warmup", "seed", "block_seconds", "calibration_archs")


def run_latency_table(*, space: str, settings: dict[str, Any], detector: dict[str, Any] | None,
                      num_classes: int | None, out: Path, validation_out: Path, plot_out: Path) -> dict[str, Any]:
    """Measure the table on this machine (always: a table is never carried over from another run)
    with ``settings`` (the experiment's latency section: input_size and the ``_MEASURE_KEYS``), validate
    it on ``settings["validate"]`` (10) seeded random backbones, write the three outputs."""
    import torch

    from ..latency import measure_latency_table, validate_table

    if settings.get("input_size") is None:
        raise ValueError("latency settings: give input_size (the detection input's square side)")
    given = {"threads": 1, **{k: settings[k] for k in _MEASURE_KEYS if settings.get(k) is not None}}
    device, input_size = given.get("device", "cpu"), int(settings["input_size"])
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("latency.device is cuda but this job sees no GPU: run it on the deployment node "
                         "(the profile's latency resources) or set latency.device: cpu")
    t0 = time.perf_counter()
    table = measure_latency_table(space, input_size=input_size, **given, detector=detector, num_classes=num_classes)
    table_seconds = time.perf_counter() - t0
    validation = validate_table(table, space, n=int(settings.get("validate") or 10), seed=table.settings["seed"])
    lo, hi = table.bounds()
    summary = {
        "table": str(out),
        "key": table.key,
        "scale": table.scale,
        "bounds_ms": [lo, hi],
        "detector_ms": table.detector_ms,
        "table_seconds": table_seconds,
        "validation_seconds": time.perf_counter() - t0 - table_seconds,
        "n": len(validation.entries),
        "mean_abs_error_pct": validation.mean_abs_error_pct,
        "worst_abs_error_pct": validation.worst_abs_error_pct,
        "uncalibrated_mean_abs_error_pct": validation.uncalibrated_mean_abs_error_pct,
        "entries": [{"arch": e.arch, "predicted_ms": e.predicted_ms, "measured_ms": e.measured_ms,
                     "error_pct": e.error_pct, "uncalibrated_ms": e.uncalibrated_ms} for e in validation.entries],
    }
    from ..plots.latency import plot_latency_validation

    plot_latency_validation(validation, f"latency table {space}@{input_size} px, batch {table.batch_size}, "
                                        f"{table.device}, {table.threads} thread(s)", plot_out)
    table.save(out)
    write_json_atomic(summary, validation_out)
    print(f"latency table of {space} at {input_size} px, batch {table.batch_size} on {table.device} ({table.threads} "
          f"thread(s)) in {table_seconds:.1f} s: backbones {lo:.2f}..{hi:.2f} ms (calibration x{table.scale:.3f}); "
          f"against {len(validation.entries)} random backbones: mean error {validation.mean_abs_error_pct:.1f}%, "
          f"worst {validation.worst_abs_error_pct:.1f}% (uncalibrated sum: "
          f"{validation.uncalibrated_mean_abs_error_pct:.1f}% mean)", flush=True)
    return summary


def run_arch_latency(*, arch_file: Path, table_file: Path, out: Path, seed: int = 0) -> dict[str, Any]:
    """``out``: the network of ``arch_file``: its backbone's predicted latency (the table's sum, the one
    the search's bound reads; None for an architecture of another space than the table's, e.g. a
    width-scaled ShuffleNetV2) and its end-to-end time measured here with the table's settings. The
    table must be this machine's (device, threads, versions): one from another device is refused."""
    from ..latency import _torch_device, check_table_setup, latency_key, measure_backbone_ms, read_latency_table
    from ..space import get_space

    chosen = read_json(arch_file)
    for key in ("arch", "space"):
        if key not in chosen:
            raise ValueError(f"{arch_file}: no {key!r} (not an arch.json)")
    recorded = read_latency_table(table_file)
    expected = latency_key(recorded.space, recorded.input_size, recorded.batch_size, _torch_device(recorded.device),
                           recorded.threads)
    table = check_table_setup(recorded, expected, table_file)
    space = get_space(chosen["space"])
    arch = space.parse(chosen["arch"])
    same_space = space.name == table.space
    predicted = table.backbone_ms(arch) if same_space else None
    measured = measure_backbone_ms(table, space, arch, seed=seed)
    result = {
        "arch": chosen["arch"],
        "space": space.name,
        "method": chosen.get("method"),
        "predicted_ms": predicted,
        "measured_ms": measured,
        "error_pct": None if predicted is None else 100.0 * (predicted - measured) / measured,
        "predicted_detector_ms": (predicted + table.detector_ms
                                  if predicted is not None and table.detector_ms is not None else None),
        "note": None if same_space else f"space {space.name} is not the table's ({table.space}): measured only",
        "device": table.device,
        "threads": table.threads,
        "input_size": table.input_size,
        "batch_size": table.batch_size,
        "table": str(table_file),
    }
    write_json_atomic(result, out)
    shown = "n/a" if predicted is None else f"{predicted:.2f} ms"
    print(f"latency of {chosen['arch']} ({space.name}) on {table.device}: predicted {shown}, measured "
          f"{measured:.2f} ms", flush=True)
    return result
