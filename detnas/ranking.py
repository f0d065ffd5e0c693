"""Rank correlation between two scores of the same architectures, with a bootstrap interval.

Used to ask whether a supernet orders architectures as standalone retraining does: one score is the
supernet's fitness of a path, the other the retrained network's test metric. Pure numpy, O(n^2) per
statistic: n is the handful to a few dozen architectures an experiment retrains.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Sequence

import numpy as np

__all__ = ["Correlation", "average_ranks", "bootstrap_ci", "correlate", "kendall_tau_b", "spearman_rho"]

BOOTSTRAP_METHOD = ("percentile bootstrap over resampled (x, y) pairs, drawn with replacement; a resample in "
                    "which either side is constant has no rank correlation and is skipped")


def _pair(x: Sequence[float], y: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if a.ndim != 1 or a.shape != b.shape:
        raise ValueError(f"x and y must be 1-d of the same length, got shapes {a.shape} and {b.shape}")
    return a, b


def average_ranks(values: Sequence[float]) -> np.ndarray:
    """Ranks 1..n of ``values``; tied values share the mean of the ranks they span ([5, 1, 5] -> [2.5, 1, 2.5])."""
    v = np.asarray(values, dtype=float)
    order = np.argsort(v, kind="mergesort")
    ranks = np.empty(len(v))
    ranks[order] = np.arange(1, len(v) + 1)
    sorted_v = v[order]
    # runs of equal values in sorted order: every member gets the run's mean rank
    starts = np.flatnonzero(np.r_[True, sorted_v[1:] != sorted_v[:-1]])
    ends = np.r_[starts[1:], len(v)]
    for s, e in zip(starts, ends):
        if e - s > 1:
            ranks[order[s:e]] = (s + 1 + e) / 2
    return ranks


def kendall_tau_b(x: Sequence[float], y: Sequence[float]) -> float:
    """Kendall's tau-b: (concordant - discordant) / sqrt(pairs untied in x * pairs untied in y).

    A pair tied in x or in y counts as neither concordant nor discordant, and the denominator leaves
    out the ties of each side, so tau-b reaches +-1 for a monotone relation even with ties. NaN when
    a side is constant.
    """
    a, b = _pair(x, y)
    sx = np.sign(a[:, None] - a[None, :])  # (n, n): each unordered pair appears twice, which cancels
    sy = np.sign(b[:, None] - b[None, :])
    denominator = np.sqrt(float(np.count_nonzero(sx)) * float(np.count_nonzero(sy)))
    return float((sx * sy).sum() / denominator) if denominator > 0 else float("nan")


def spearman_rho(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rho: Pearson's correlation of the average ranks. NaN when a side is constant."""
    a, b = _pair(x, y)
    ra, rb = average_ranks(a), average_ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denominator = np.sqrt(float((ra * ra).sum()) * float((rb * rb).sum()))
    return float((ra * rb).sum() / denominator) if denominator > 0 else float("nan")


def bootstrap_ci(x: Sequence[float], y: Sequence[float], *, samples: int = 2000, seed: int = 0,
                 level: float = 0.9) -> dict[str, Any]:
    """Percentile bootstrap intervals of tau-b and rho over resampled pairs.

    Returns {"kendall_tau": [lo, hi], "spearman_rho": [lo, hi], "used": resamples that counted};
    the intervals are None when no resample had both sides varying.
    """
    a, b = _pair(x, y)
    rng = np.random.default_rng(seed)
    index = rng.integers(0, len(a), size=(samples, len(a)))  # drawn at once: the same seed, the same resamples
    taus, rhos = [], []
    for i in index:
        xa, yb = a[i], b[i]
        if np.ptp(xa) == 0 or np.ptp(yb) == 0:
            continue
        taus.append(kendall_tau_b(xa, yb))
        rhos.append(spearman_rho(xa, yb))
    tail = 100 * (1 - level) / 2

    def interval(values: list[float]) -> list[float] | None:
        return [float(v) for v in np.percentile(values, [tail, 100 - tail])] if values else None

    return {"kendall_tau": interval(taus), "spearman_rho": interval(rhos), "used": len(taus)}


@dataclass(frozen=True)
class Correlation:
    """Rank agreement of two scores over n items; the statistics are None, with ``reason``, when
    they are undefined (fewer than 3 items, or a side that is constant)."""

    n: int
    kendall_tau: float | None
    kendall_tau_ci90: list[float] | None
    spearman_rho: float | None
    spearman_rho_ci90: list[float] | None
    bootstrap: dict[str, Any]
    reason: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def correlate(x: Sequence[float], y: Sequence[float], *, samples: int = 2000, seed: int = 0) -> Correlation:
    """Kendall tau-b and Spearman rho of ``x`` against ``y`` with their 90% bootstrap intervals."""
    a, b = _pair(x, y)
    n = len(a)
    bootstrap: dict[str, Any] = {"samples": samples, "seed": seed, "level": 0.9, "method": BOOTSTRAP_METHOD}
    reason = None
    if n < 3:
        reason = f"{n} architecture(s): a rank correlation needs at least 3"
    elif np.ptp(a) == 0 or np.ptp(b) == 0:
        reason = "one side has the same value for every architecture: no ranking to compare"
    if reason is not None:
        return Correlation(n, None, None, None, None, {**bootstrap, "used": 0}, reason)
    ci = bootstrap_ci(a, b, samples=samples, seed=seed)
    return Correlation(n, kendall_tau_b(a, b), ci["kendall_tau"], spearman_rho(a, b), ci["spearman_rho"],
                       {**bootstrap, "used": ci["used"]})
