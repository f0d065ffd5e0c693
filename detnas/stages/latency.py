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


def run_latency_table(*, space: str, input_size: int, batch_size: int, device: str, threads: int, repeats: int,
                      warmup: int, block_seconds: float, calibration_archs: int, validate: int, seed: int,
                      detector: dict[str, Any] | None, num_classes: int | None, out: Path, validation_out: Path,
                      plot_out: Path) -> dict[str, Any]:
    """Measure the table on this machine (always: a table is never carried over from another run),
    validate it on ``validate`` seeded random backbones, write the three outputs."""
    import torch

    from ..latency import measure_latency_table, validate_table

    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("latency.device is cuda but this job sees no GPU: run it on the deployment node "
                         "(the profile's latency resources) or set latency.device: cpu")
    t0 = time.perf_counter()
    table = measure_latency_table(space, input_size=input_size, batch_size=batch_size, device=device, threads=threads,
                                  repeats=repeats, warmup=warmup, seed=seed, block_seconds=block_seconds,
                                  calibration_archs=calibration_archs, detector=detector, num_classes=num_classes)
    table_seconds = time.perf_counter() - t0
    validation = validate_table(table, space, n=validate, seed=seed)
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

    plot_latency_validation(validation, f"latency table {space}@{input_size} px, batch {batch_size}, {table.device}, "
                                              f"{table.threads} thread(s)", plot_out)
    table.save(out)
    write_json_atomic(summary, validation_out)
    print(f"latency table of {space} at {input_size} px, batch {batch_size} on {table.device} ({table.threads} "
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
    from ..latency import _torch_device, latency_key, load_latency_table, measure_backbone_ms
    from ..space import get_space

    chosen = read_json(arch_file)
    for key in ("arch", "space"):
        if key not in chosen:
            raise ValueError(f"{arch_file}: no {key!r} (not an arch.json)")
    recorded = read_json(table_file)
    device = _torch_device(str(recorded.get("device", "cpu")))
    expected = latency_key(str(recorded.get("space")), int(recorded.get("input_size", 0)),
                           int(recorded.get("batch_size", 0)), device, recorded.get("threads"))
    table = load_latency_table(table_file, expected)
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
