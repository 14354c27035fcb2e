"""Statistics for comparing arms over seeds: mean ± sample std with n, and seed-paired deltas with a t interval.

Pairing by seed removes the variation that two arms share through the same seed (data order, augmentation draws),
so a paired interval is tighter than comparing two independent means when the seeds are shared.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

CI_LABEL = "paired t, 95%"


@dataclass(frozen=True)
class Summary:
    """Mean and sample standard deviation (ddof=1) over ``n`` values; with n < 2 the std is undefined: NaN."""

    mean: float
    std: float
    n: int


@dataclass(frozen=True)
class PairedDelta:
    """Mean of ``arm - baseline`` over the seeds both have, with its confidence interval (None when n < 2, and when
    every difference is the same: ``equal``)."""

    mean: float
    ci: tuple[float, float] | None
    n: int
    seeds: tuple[int, ...]
    equal: bool = False


def mean_std(values: Iterable[float]) -> Summary:
    """Mean ± sample std; NaN mean for no values, NaN std for one (0.0 would claim a precision one run cannot show)."""
    x = np.asarray(list(values), dtype=float)
    if x.size == 0:
        return Summary(math.nan, math.nan, 0)
    std = float(np.std(x, ddof=1)) if x.size > 1 else math.nan
    return Summary(float(np.mean(x)), std, int(x.size))


def t_interval(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float] | None:
    """Student's t interval for the mean: mean ± t_{(1+c)/2, n-1} · s / √n; None with fewer than two values."""
    x = np.asarray(values, dtype=float)
    if x.size < 2:
        return None
    # stdtrit is the function behind scipy.stats.t.ppf, without the seconds scipy.stats takes to import.
    from scipy.special import stdtrit

    mean, sem = float(np.mean(x)), float(np.std(x, ddof=1)) / math.sqrt(x.size)
    half = float(stdtrit(x.size - 1, (1 + confidence) / 2)) * sem
    return (mean - half, mean + half)


def paired_delta(
    arm: Mapping[int, float], baseline: Mapping[int, float], confidence: float = 0.95
) -> PairedDelta | None:
    """``arm - baseline`` paired by seed (keys are seeds); None when they share no seed."""
    seeds = tuple(sorted(set(arm) & set(baseline)))
    if not seeds:
        return None
    diffs = [arm[s] - baseline[s] for s in seeds]
    if len(diffs) > 1 and all_equal(diffs):
        # Zero spread makes the t interval a single point, which would read as certainty. The seeds agree exactly
        # (deterministic training moves the same examples on every seed), which says nothing of how far the
        # difference could vary with other seeds: no interval is claimed.
        return PairedDelta(float(np.mean(diffs)), None, len(seeds), seeds, equal=True)
    return PairedDelta(float(np.mean(diffs)), t_interval(diffs, confidence), len(seeds), seeds)


def all_equal(values: Sequence[float]) -> bool:
    """Whether ``values`` agree up to float32 rounding (metrics are logged in float32: about 1e-7 of their size)."""
    x = np.asarray(values, dtype=float)
    return bool(x.size) and float(np.ptp(x)) <= 1e-6 * max(1.0, float(np.max(np.abs(x))))


def bootstrap_interval(
    values: Sequence[float], confidence: float = 0.95, n_resamples: int = 10_000, seed: int = 0
) -> tuple[float, float] | None:
    """Percentile bootstrap interval for the mean (e.g. of paired differences); None with fewer than two values.

    An alternative to :func:`t_interval` that does not assume normality, though with the usual 3–5 seeds neither
    interval can be trusted far; the report uses the t interval and says so.
    """
    x = np.asarray(values, dtype=float)
    if x.size < 2:
        return None
    # Plain NumPy: the percentile method is four lines, and scipy.stats takes seconds to import.
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(n_resamples, x.size))].mean(axis=1)
    low, high = np.percentile(means, [50 * (1 - confidence), 50 * (1 + confidence)])
    return (float(low), float(high))


def edf(values: Iterable[float]) -> tuple[np.ndarray, np.ndarray]:
    """Empirical distribution function: sorted values and the fraction of values ≤ each (Radosavovic et al. 2019)."""
    x = np.sort(np.asarray(list(values), dtype=float))
    return x, np.arange(1, x.size + 1) / max(x.size, 1)
