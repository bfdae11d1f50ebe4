"""Aggregate final returns across seeds the way rliable recommends (Agarwal et al., "Deep RL at the Edge of the
Statistical Precipice", NeurIPS 2021): the interquartile mean (IQM: the mean of the middle 50% of the runs) with
a 95% percentile-bootstrap confidence interval, and a paired bootstrap for the difference of two methods that
started from the same agents (seed i of both methods refines the same pre-trained agent).

Computed with `scipy.stats.trim_mean` and `scipy.stats.bootstrap`. Non-finite inputs raise `ValueError`: a NaN
seed is a failed run to report, never a value to average away.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats

CONFIDENCE = 0.95
RESAMPLES = 2000


@dataclass(frozen=True)
class Interval:
    """A statistic and its confidence interval (same units as the data)."""

    point: float
    low: float
    high: float
    n: int  # runs (seeds) behind it

    def as_dict(self) -> dict[str, float | int]:
        return {"point": self.point, "low": self.low, "high": self.high, "n": self.n}

    def __str__(self) -> str:
        return f"{self.point:.1f} [{self.low:.1f}, {self.high:.1f}]"


def iqm(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """Interquartile mean along `axis`: the mean of the values between the 25th and 75th percentiles (scipy's
    `trim_mean(x, 0.25)`; with fewer than 4 values nothing is trimmed, i.e. the plain mean)."""
    return stats.trim_mean(x, 0.25, axis=axis)


def _finite(x, what: str) -> np.ndarray:
    x = np.asarray(x, np.float64).reshape(-1)
    if x.size == 0:
        raise ValueError(f"{what}: no runs")
    bad = np.flatnonzero(~np.isfinite(x))
    if bad.size:
        raise ValueError(f"{what}: run(s) {bad.tolist()} are not finite ({x[bad].tolist()}); a failed run is reported, "
                         "not averaged")
    return x


def _interval(point: float, data: tuple[np.ndarray, ...], statistic, paired: bool, confidence: float,
              resamples: int, seed: int) -> Interval:
    n = data[0].size
    if n < 2 or all(np.ptp(d) == 0 for d in data):  # nothing to resample: the interval is the point
        return Interval(point, point, point, n)
    res = stats.bootstrap(data, statistic, paired=paired, vectorized=True, confidence_level=confidence,
                          n_resamples=resamples, method="percentile", rng=np.random.default_rng(seed))
    low, high = res.confidence_interval
    return Interval(point, float(low), float(high), n)


def iqm_ci(x, confidence: float = CONFIDENCE, resamples: int = RESAMPLES, seed: int = 0) -> Interval:
    """IQM of `x` ([seeds] final returns) with a percentile-bootstrap interval over seeds (deterministic for a
    `seed`). Raises `ValueError` on an empty or non-finite `x`."""
    x = _finite(x, "iqm_ci")
    return _interval(float(iqm(x)), (x,), lambda s, axis: iqm(s, axis=axis), False, confidence, resamples, seed)


def iqm_difference_ci(a, b, confidence: float = CONFIDENCE, resamples: int = RESAMPLES, seed: int = 0) -> Interval:
    """IQM(a) - IQM(b) for two methods run on the same seeds (`a[i]`, `b[i]` refine the same agent), with a paired
    bootstrap interval (seeds resampled jointly). Raises `ValueError` on empty, non-finite or unequal inputs."""
    a, b = _finite(a, "iqm_difference_ci"), _finite(b, "iqm_difference_ci")
    if a.size != b.size:
        raise ValueError(f"iqm_difference_ci: paired runs differ in number ({a.size} vs {b.size})")
    return _interval(float(iqm(a) - iqm(b)), (a, b), lambda s, t, axis: iqm(s, axis=axis) - iqm(t, axis=axis), True,
                     confidence, resamples, seed)


def verdict(difference: Interval) -> str:
    """'better' when the interval of a method's gain lies above 0, 'worse' below, else 'same' (within noise)."""
    if difference.low > 0:
        return "better"
    if difference.high < 0:
        return "worse"
    return "same"
