"""How numbers are printed in logs, CSV files and reports: small values keep their size."""

from __future__ import annotations

import math

__all__ = ["fmt_number"]


def fmt_number(value: float | None, decimals: int = 4) -> str:
    """``value`` with ``decimals`` decimals, or in scientific notation with 3 significant digits when
    it is below 10**-(decimals - 1) in magnitude, so it never prints as ``0.0000``: an mmAP of
    1.3e-06 or a learning rate of 2e-05 shows its size. ``None`` prints as ``-``."""
    if value is None:
        return "-"
    if value == 0 or not math.isfinite(value) or abs(value) >= 10.0 ** -(decimals - 1):
        return f"{value:.{decimals}f}"
    return f"{value:.3g}"
