"""Means and confidence intervals across seeds, for what-ifs and sweeps.

A run of a scenario is one sample: its success rate, its p99, whether an SLO passed. Runs with
different seeds are independent samples, so a metric over N seeds has a mean and a Student t
interval: ``mean +/- t(1 - (1 - level) / 2, N - 1) * s / sqrt(N)``, with ``s`` the sample
standard deviation. A what-if compares two runs of the same seed (before and after the change:
paired, common random numbers), so its interval is the t interval of the per-seed differences,
which is narrower than comparing two independent means whenever the seed's luck is shared.

The t quantile is computed here (the regularized incomplete beta function by its continued
fraction, then bisection), so the simulator needs no SciPy; tests/sim/test_stats.py checks it
against published tables.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

LEVEL = 0.95


@dataclass(frozen=True, slots=True)
class Interval:
    """A mean over ``n`` samples and its confidence interval (None below two samples, or when
    every sample is the same: then the interval is the mean itself)."""

    n: int
    mean: float
    low: float | None
    high: float | None

    @property
    def half(self) -> float | None:
        return None if self.high is None else self.high - self.mean


def interval(values: Sequence[float], *, level: float = LEVEL) -> Interval | None:
    """The mean of ``values`` with its t interval; None for no values."""
    n = len(values)
    if n == 0:
        return None
    mean = math.fsum(values) / n
    if n == 1:
        return Interval(1, mean, None, None)
    variance = math.fsum((v - mean) ** 2 for v in values) / (n - 1)
    half = t_quantile(1 - (1 - level) / 2, n - 1) * math.sqrt(variance / n)
    return Interval(n, mean, mean - half, mean + half)


def paired(
    before: Sequence[float | None], after: Sequence[float | None], *, level: float = LEVEL
) -> Interval | None:
    """The interval of ``after - before`` over the seeds where both were measured."""
    diffs = [a - b for b, a in zip(before, after, strict=True) if a is not None and b is not None]
    return interval(diffs, level=level)


def t_quantile(p: float, df: int) -> float:
    """The ``p`` quantile of Student's t distribution with ``df`` degrees of freedom."""
    if not 0 < p < 1 or df < 1:
        raise ValueError(f"t_quantile: need 0 < p < 1 and df >= 1, got {p}, {df}")
    if p < 0.5:
        return -t_quantile(1 - p, df)
    low, high = 0.0, 1.0
    while t_cdf(high, df) < p:
        high *= 2
    for _ in range(200):  # bisection to the float's resolution
        middle = (low + high) / 2
        if middle in (low, high):
            break
        low, high = (middle, high) if t_cdf(middle, df) < p else (low, middle)
    return (low + high) / 2


def t_cdf(t: float, df: int) -> float:
    """P(T <= t) for Student's t with ``df`` degrees of freedom."""
    tail = 0.5 * betainc(df / 2, 0.5, df / (df + t * t))
    return 1 - tail if t >= 0 else tail


def betainc(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta function I_x(a, b), by its continued fraction
    (Numerical Recipes, betai and betacf), on the side where it converges fast."""
    if x <= 0:
        return 0.0
    if x >= 1:
        return 1.0
    front = math.exp(
        math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    )
    if x < (a + 1) / (a + b + 2):
        return front * _fraction(a, b, x) / a
    return 1 - front * _fraction(b, a, 1 - x) / b


def _fraction(a: float, b: float, x: float) -> float:
    """The continued fraction of I_x(a, b) (modified Lentz)."""
    tiny = 1e-300
    c, d = 1.0, 1 - (a + b) * x / (a + 1)
    d = 1 / (d if abs(d) > tiny else tiny)
    result = d
    for m in range(1, 500):
        for numerator in (
            m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
            -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1)),
        ):
            d = 1 + numerator * d
            d = 1 / (d if abs(d) > tiny else tiny)
            c = 1 + numerator / c
            c = c if abs(c) > tiny else tiny
            result *= c * d
        if abs(c * d - 1) < 1e-15:
            break
    return result
