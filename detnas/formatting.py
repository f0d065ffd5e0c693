"""How numbers are printed in logs, CSV files and reports: small values keep their size."""

from __future__ import annotations

import math

import numpy as np

__all__ = ["fmt_duration", "fmt_number", "fmt_significant"]


def fmt_number(value: float | None, decimals: int = 4) -> str:
    """``value`` with ``decimals`` decimals, or in scientific notation with 3 significant digits when
    it is below 10**-(decimals - 1) in magnitude, so it never prints as ``0.0000``: an mmAP of
    1.3e-06 or a learning rate of 2e-05 shows its size. ``None`` prints as ``-``."""
    if value is None:
        return "-"
    if value == 0 or not math.isfinite(value) or abs(value) >= 10.0 ** -(decimals - 1):
        return f"{value:.{decimals}f}"
    return f"{value:.3g}"


def fmt_significant(value: float, digits: int = 4) -> str:
    """``value`` with ``digits`` significant digits, always positional (never ``1e-05``), trailing
    zeros dropped, and never fewer digits than its whole part has (a count stays exact):
    0.91345678 -> "0.9135", 1.3e-06 -> "0.0000013", 299.87 -> "299.9", 12.0 -> "12", 12345.6 -> "12346".

    The one number format of comparison.csv: every float of the table reads the same way, and a
    tiny mmAP still shows its size."""
    if not math.isfinite(value):
        return str(value)
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    whole = math.floor(math.log10(abs(value))) + 1 if abs(value) >= 1 else 0
    return np.format_float_positional(value, precision=max(digits, whole), unique=False, fractional=False, trim="-")


def fmt_duration(seconds: float | None) -> str:
    """A duration in seconds as a person reads it: "45 s", "12.5 min", "7.3 h", "3.2 days" (seconds
    below 90 s, minutes below 90 min, hours below 48 h). ``None`` or not finite prints as ``-``."""
    if seconds is None or not math.isfinite(seconds):
        return "-"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"
