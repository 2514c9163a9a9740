"""Latency distributions of workloads, sampled with an injected RNG.

The simulator (sim/) and the test app (mesh/testapp) read the same specs and sample them the
same way, so a scenario's workload behaves alike when simulated and when run for real. Pure: the
random source is a parameter (anything with ``random``, ``expovariate`` and ``gauss``, such as
``random.Random``); this module never creates or seeds one.

``constant``: {value}; ``exponential``: {mean}; ``lognormal``: {median, sigma} (or {mean,
sigma}); ``empirical``: {percentiles: {50: 0.010, 90: 0.030, 99: 0.120}}, sampled by linear
interpolation between the given quantiles (0 -> the smallest given value, 100 -> the largest).
Values are seconds.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Mapping
from typing import Any, Protocol

__all__ = ["DistributionError", "Rng", "Sampler", "sampler"]


class Rng(Protocol):
    """The part of ``random.Random`` the samplers use."""

    def random(self) -> float: ...

    def expovariate(self, lambd: float, /) -> float: ...

    def gauss(self, mu: float = 0.0, sigma: float = 1.0) -> float: ...


Sampler = Callable[[Rng], float]


class DistributionError(ValueError):
    pass


def _positive(raw: Mapping[str, Any], key: str, *, zero: bool = False) -> float:
    value = raw.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise DistributionError(f"{key}: expected a number of seconds, got {value!r}")
    if not math.isfinite(value) or value < 0 or (value == 0 and not zero):
        raise DistributionError(f"{key}: expected a positive number, got {value!r}")
    return float(value)


def sampler(raw: Any) -> tuple[Sampler, float]:
    """A sampler and the distribution's mean (for capacity planning and reports)."""
    if isinstance(raw, int | float) and not isinstance(raw, bool):
        value = float(raw)
        if not math.isfinite(value) or value < 0:
            raise DistributionError(f"expected a non-negative number of seconds, got {raw!r}")
        return (lambda rng: value), value
    if not isinstance(raw, Mapping):
        raise DistributionError(f"expected a number or a mapping with dist, got {raw!r}")
    kind = raw.get("dist", "constant")
    if kind == "constant":
        value = _positive(raw, "value", zero=True)
        return (lambda rng: value), value
    if kind == "exponential":
        mean = _positive(raw, "mean")
        rate = 1.0 / mean
        return (lambda rng: rng.expovariate(rate)), mean
    if kind == "lognormal":
        sigma = _positive(raw, "sigma", zero=True)
        if "median" in raw:
            mu = math.log(_positive(raw, "median"))
        else:
            mu = math.log(_positive(raw, "mean")) - sigma * sigma / 2
        # exp(mu + sigma * N(0,1)) with gauss (Box-Muller): a quarter cheaper than
        # lognormvariate's Kinderman-Monahan normal, the same distribution.
        exp = math.exp
        return (lambda rng: exp(mu + sigma * rng.gauss())), math.exp(mu + sigma * sigma / 2)
    if kind == "empirical":
        return _empirical(raw.get("percentiles"))
    raise DistributionError(
        f"dist: expected constant, exponential, lognormal or empirical, got {kind!r}"
    )


def _empirical(raw: Any) -> tuple[Sampler, float]:
    if not isinstance(raw, Mapping) or not raw:
        raise DistributionError("percentiles: expected a mapping such as {50: 0.01, 99: 0.1}")
    points: list[tuple[float, float]] = []
    for key, value in raw.items():
        try:
            q = float(key)
        except (TypeError, ValueError):
            raise DistributionError(f"percentiles: {key!r} is not a percentile") from None
        if not 0 <= q <= 100:
            raise DistributionError(f"percentiles: {key!r} is not in 0..100")
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
            or value < 0
        ):
            raise DistributionError(f"percentiles.{key}: expected seconds, got {value!r}")
        points.append((q / 100.0, float(value)))
    points.sort()
    values = [v for _, v in points]
    if values != sorted(values):
        raise DistributionError("percentiles: values must not decrease as the percentile grows")
    if points[0][0] > 0:
        points.insert(0, (0.0, points[0][1]))
    if points[-1][0] < 1:
        points.append((1.0, points[-1][1]))
    qs = [q for q, _ in points]
    vs = [v for _, v in points]

    def sample(rng: Rng) -> float:
        u = rng.random()
        i = bisect.bisect_right(qs, u)
        if i >= len(qs):
            return vs[-1]
        q0, q1 = qs[i - 1], qs[i]
        v0, v1 = vs[i - 1], vs[i]
        return v0 + (v1 - v0) * (u - q0) / (q1 - q0) if q1 > q0 else v1

    mean = sum((qs[i + 1] - qs[i]) * (vs[i] + vs[i + 1]) / 2 for i in range(len(qs) - 1))
    return sample, mean
