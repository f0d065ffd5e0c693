"""The latency table's validation: its predictions against end-to-end measured backbones."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .style import plt, save

__all__ = ["plot_latency_validation"]


def plot_latency_validation(validation: Any, title: str, out: Path) -> None:
    """Predicted (the table's sum, calibrated and not) against measured end-to-end backbone latency."""
    predicted = [e.predicted_ms for e in validation.entries]
    measured = [e.measured_ms for e in validation.entries]
    raw = [e.uncalibrated_ms for e in validation.entries]
    fig, ax = plt.subplots(figsize=(5, 4.5))
    lo, hi = min(measured + predicted + raw), max(measured + predicted + raw)
    ax.plot([lo, hi], [lo, hi], color="0.6", lw=1, label="predicted = measured")
    ax.scatter(measured, raw, marker="x", color="0.5",
               label=f"table sum, uncalibrated ({validation.uncalibrated_mean_abs_error_pct:.1f}% mean error)")
    ax.scatter(measured, predicted, color="C0",
               label=f"table sum, calibrated ({validation.mean_abs_error_pct:.1f}% mean, "
                     f"{validation.worst_abs_error_pct:.1f}% worst)")
    ax.set_xlabel("measured end to end (ms)")
    ax.set_ylabel("predicted from the table (ms)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    save(fig, out)
