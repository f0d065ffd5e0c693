"""Rank correlation between two scores of the same architectures, with a bootstrap interval.

Used to ask whether a supernet orders architectures as standalone retraining does: one score is the
supernet's fitness of a path, the other the retrained network's test metric. The statistics are
scipy's (``kendalltau`` tau-b, ``spearmanr``, ``bootstrap``); this module adds what a handful of
architectures needs on top: a null with a reason where a rank correlation is undefined, and an
interval that leaves out the resamples in which one side is constant.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass
from typing import Any, Sequence

import numpy as np
import scipy.stats

__all__ = ["Correlation", "average_ranks", "bootstrap_ci", "correlate", "kendall_tau_b", "spearman_rho"]

BOOTSTRAP_METHOD = ("percentile bootstrap over resampled (x, y) pairs, drawn with replacement (scipy.stats.bootstrap, "
                    "paired); a resample in which either side is constant has no rank correlation and is skipped")


def _pair(x: Sequence[float], y: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if a.ndim != 1 or a.shape != b.shape:
        raise ValueError(f"x and y must be 1-d of the same length, got shapes {a.shape} and {b.shape}")
    return a, b


def _varies(a: np.ndarray, b: np.ndarray) -> bool:
    return len(a) > 1 and np.ptp(a) > 0 and np.ptp(b) > 0


def average_ranks(values: Sequence[float]) -> np.ndarray:
    """Ranks 1..n of ``values``; tied values share the mean of the ranks they span ([5, 1, 5] -> [2.5, 1, 2.5])."""
    return scipy.stats.rankdata(np.asarray(values, dtype=float), method="average")


def kendall_tau_b(x: Sequence[float], y: Sequence[float]) -> float:
    """Kendall's tau-b: (concordant - discordant) / sqrt(pairs untied in x * pairs untied in y), so it
    reaches +-1 for a monotone relation even with ties. NaN when a side is constant."""
    a, b = _pair(x, y)
    return float(scipy.stats.kendalltau(a, b, variant="b").statistic) if _varies(a, b) else float("nan")


def spearman_rho(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rho: Pearson's correlation of the average ranks. NaN when a side is constant."""
    a, b = _pair(x, y)
    return float(scipy.stats.spearmanr(a, b).statistic) if _varies(a, b) else float("nan")


def _both(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return np.array([kendall_tau_b(x, y), spearman_rho(x, y)])


def bootstrap_ci(x: Sequence[float], y: Sequence[float], *, samples: int = 2000, seed: int = 0,
                 level: float = 0.9) -> dict[str, Any]:
    """Percentile bootstrap intervals of tau-b and rho over resampled pairs.

    Returns {"kendall_tau": [lo, hi], "spearman_rho": [lo, hi], "used": resamples that counted};
    the intervals are None when no resample had both sides varying.
    """
    a, b = _pair(x, y)
    with warnings.catch_warnings():  # scipy's own interval is NaN where a resample is constant: ours skips them
        warnings.simplefilter("ignore")
        result = scipy.stats.bootstrap((a, b), _both, paired=True, vectorized=False, n_resamples=samples,
                                       method="percentile", confidence_level=level, rng=np.random.default_rng(seed))
    taus, rhos = result.bootstrap_distribution  # (2, samples); NaN where a side of the resample is constant
    kept = ~np.isnan(taus)
    tail = 100 * (1 - level) / 2

    def interval(values: np.ndarray) -> list[float] | None:
        return [float(v) for v in np.percentile(values, [tail, 100 - tail])] if len(values) else None

    return {"kendall_tau": interval(taus[kept]), "spearman_rho": interval(rhos[kept]), "used": int(kept.sum())}


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
