"""Seeded percentile-bootstrap confidence intervals for per-attribute audit statistics.

Percentile bootstrap (Efron & Tibshirani 1993, ch. 13): resample scans with replacement, recompute the
statistic, take the (1-level)/2 and (1+level)/2 quantiles. It needs no distributional assumption, which
matters for minimal strengths (bounded, discrete) and changes of probability (skewed). Its known weakness:
with few scans or a rate of exactly 0 or 1 the interval collapses to a point; the shortcut rule therefore
also requires a minimum number of scans.
"""
from __future__ import annotations

import hashlib
import warnings
from typing import Callable

import numpy as np

DEFAULT_RESAMPLES = 2000
DEFAULT_LEVEL = 0.95


def derived_seed(seed: int, *parts: str) -> int:
    """A seed for one statistic from the audit seed and names: results do not depend on computation order."""
    digest = hashlib.sha256(":".join([str(int(seed)), *parts]).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big")


def bootstrap_ci(values: "np.ndarray | list[float]", statistic: Callable[..., np.ndarray] = np.mean, *,
                 seed: int = 0, level: float = DEFAULT_LEVEL,
                 n_resamples: int = DEFAULT_RESAMPLES) -> tuple[float | None, float | None]:
    """(low, high) of `statistic` over scans; `statistic(array, axis=1)` must reduce rows.

    NaN entries mean "no value for this scan" (e.g. no flip, so no minimal strength): use a nan-aware
    statistic; resamples where it is undefined are left out. Empty input gives (None, None).
    """
    data = np.asarray(values, dtype=np.float64)
    if data.size == 0 or not 0 < level < 1:
        return None, None
    rng = np.random.default_rng(seed)
    indices = rng.integers(0, data.size, size=(int(n_resamples), data.size))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN resamples: dropped below
        estimates = np.asarray(statistic(data[indices], axis=1), dtype=np.float64)
    estimates = estimates[np.isfinite(estimates)]
    if estimates.size == 0:
        return None, None
    low, high = np.quantile(estimates, [(1 - level) / 2, (1 + level) / 2])
    return float(low), float(high)
