"""Traffic policies as small state machines fed with outcomes and ``now``.

The proxy feeds them wall-clock time and real outcomes; the simulator feeds them simulated time
and simulated outcomes. Each machine lives here once:

- :func:`retry_verdict`: may this attempt be retried (bounded attempts; connect failures always,
  other failures (reset, timeout, 500/502/503/504) only for idempotent methods or an explicit
  opt-in, never an unreplayable body).
- :class:`CircuitBreaker`: closed -> open (a trip condition holds) -> half-open after the open
  duration -> closed on a successful probe, open again on a failed one.
- :class:`TokenBucket`: average rate and burst; a refused take says how long to wait.
- :class:`SmoothWeightedRoundRobin`, :class:`RoundRobin`, :class:`LeastRequest`: balancers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

IDEMPOTENT_METHODS = frozenset(["GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"])


class Rng(Protocol):
    """The part of ``random.Random`` the core uses; injected by drivers."""

    def random(self) -> float: ...


class Failure(StrEnum):
    CONNECT = "connect"  # never reached the upstream: the request was not sent
    RESET = "reset"  # the upstream closed or reset before a complete response
    TIMEOUT = "timeout"  # no response within the timeout


@dataclass(slots=True)
class Outcome:
    """What one attempt to an endpoint came to (its own __init__: see lifecycle.Send)."""

    status: int | None
    failure: Failure | None = None
    latency: float = 0.0

    def __init__(
        self, status: int | None, failure: Failure | None = None, latency: float = 0.0
    ) -> None:
        self.status = status
        self.failure = failure
        self.latency = latency

    @property
    def failed(self) -> bool:
        return self.failure is not None or (self.status is not None and self.status >= 500)


# What the proxy answers when the last attempt failed: the status and the reason it names.
FAILURE_ANSWERS: dict[Failure, tuple[int, str]] = {
    Failure.CONNECT: (502, "upstream-connect-failed"),
    Failure.RESET: (502, "upstream-reset"),
    Failure.TIMEOUT: (504, "upstream-timeout"),
}


def final_status(outcome: Outcome) -> int:
    """The status a client gets for the last attempt's outcome."""
    if outcome.failure is not None:
        return FAILURE_ANSWERS[outcome.failure][0]
    return outcome.status if outcome.status is not None else 200


# ---------------------------------------------------------------------------------------------
# Retry


@dataclass(frozen=True, slots=True)
class RetrySpec:
    attempts: int  # retries after the first try; 0 disables retrying
    non_idempotent: bool = False  # explicit opt-in to retry POST and PATCH
    on_statuses: tuple[int, ...] = (500, 502, 503, 504)
    backoff: float = 0.0  # base of the exponential, jittered wait between tries (0: none)
    budget: float | None = None  # share of a route's active requests that may be retrying


MIN_RETRY_CONCURRENCY = 3  # retries a budget always allows at once (as Envoy's)


def retry_budget_allows(spec: RetrySpec | None, *, active: int, retrying: int) -> bool:
    """Whether one more request of a route may start retrying: at most ``budget`` of the
    route's active requests (and always :data:`MIN_RETRY_CONCURRENCY`) retry at once, so a
    failing upstream is not hit by a retry storm."""
    if spec is None or spec.budget is None:
        return True
    return retrying < max(MIN_RETRY_CONCURRENCY, spec.budget * active)


def retry_verdict(
    spec: RetrySpec | None,
    *,
    tries: int,
    method: str,
    replayable: bool,
    outcome: Outcome,
) -> str | None:
    """The reason to retry after ``tries`` attempts ending in ``outcome``, or None to stop."""
    if spec is None or tries > spec.attempts:
        return None
    if outcome.failure is Failure.CONNECT:
        return "connect failure"
    if not replayable:
        return None
    if method not in IDEMPOTENT_METHODS and not spec.non_idempotent:
        return None
    if outcome.failure is not None:
        return str(outcome.failure)
    if outcome.status in spec.on_statuses:
        return f"status {outcome.status}"
    return None


# ---------------------------------------------------------------------------------------------
# Circuit breaker


class Metric(StrEnum):
    NETWORK_ERROR_RATIO = "NetworkErrorRatio"
    RESPONSE_CODE_RATIO = "ResponseCodeRatio"
    LATENCY_AT_QUANTILE_MS = "LatencyAtQuantileMS"
    CONSECUTIVE_FAILURES = "ConsecutiveFailures"


@dataclass(frozen=True, slots=True)
class Condition:
    metric: Metric
    args: tuple[float, ...]
    op: str
    threshold: float


@dataclass(frozen=True, slots=True)
class CircuitBreakerSpec:
    expression: str
    any_of: tuple[tuple[Condition, ...], ...]  # OR of ANDs
    window: float = 10.0
    open_duration: float = 10.0
    min_requests: int = 5
    check_period: float = 0.1


class CircuitState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half-open"


_BUCKETS = 10


class _Window:
    """Outcomes over a rolling window, in ``_BUCKETS`` slots of ``window / _BUCKETS`` seconds."""

    __slots__ = ("counts", "latencies", "slot_ids", "statuses", "width")

    def __init__(self, window: float) -> None:
        self.width = window / _BUCKETS
        self.slot_ids = [-1] * _BUCKETS
        self.counts = [[0, 0] for _ in range(_BUCKETS)]  # [total, network errors]
        self.statuses: list[dict[int, int]] = [{} for _ in range(_BUCKETS)]
        self.latencies: list[list[float]] = [[] for _ in range(_BUCKETS)]

    def add(self, now: float, outcome: Outcome) -> None:
        slot_id = int(now / self.width)
        slot = slot_id % _BUCKETS
        if self.slot_ids[slot] != slot_id:
            self.slot_ids[slot] = slot_id
            self.counts[slot] = [0, 0]
            self.statuses[slot] = {}
            self.latencies[slot] = []
        counts = self.counts[slot]
        counts[0] += 1
        if outcome.failure is not None:
            counts[1] += 1
        elif outcome.status is not None:
            statuses = self.statuses[slot]
            statuses[outcome.status] = statuses.get(outcome.status, 0) + 1
        self.latencies[slot].append(outcome.latency)

    def _live(self, now: float) -> list[int]:
        current = int(now / self.width)
        return [i for i in range(_BUCKETS) if current - _BUCKETS < self.slot_ids[i] <= current]

    def total(self, now: float) -> int:
        return sum(self.counts[i][0] for i in self._live(now))

    def network_error_ratio(self, now: float) -> float:
        live = self._live(now)
        total = sum(self.counts[i][0] for i in live)
        return sum(self.counts[i][1] for i in live) / total if total else 0.0

    def response_code_ratio(self, now: float, args: tuple[float, ...]) -> float:
        low, high, dlow, dhigh = args
        num = den = 0
        for i in self._live(now):
            for status, count in self.statuses[i].items():
                if low <= status < high:
                    num += count
                if dlow <= status < dhigh:
                    den += count
        return num / den if den else 0.0

    def latency_quantile_ms(self, now: float, quantile: float) -> float:
        values = sorted(v for i in self._live(now) for v in self.latencies[i])
        if not values:
            return 0.0
        rank = min(len(values) - 1, max(0, math.ceil(quantile / 100.0 * len(values)) - 1))
        return values[rank] * 1000.0

    def clear(self) -> None:
        # Reset the contents too: a slot id of -1 still counts as live while now < window.
        self.slot_ids = [-1] * _BUCKETS
        self.counts = [[0, 0] for _ in range(_BUCKETS)]
        self.statuses = [{} for _ in range(_BUCKETS)]
        self.latencies = [[] for _ in range(_BUCKETS)]


_OPS = {
    ">": lambda a, b: a > b,
    ">=": lambda a, b: a >= b,
    "<": lambda a, b: a < b,
    "<=": lambda a, b: a <= b,
    "==": lambda a, b: a == b,
    "!=": lambda a, b: a != b,
}


class CircuitBreaker:
    """One endpoint's (or one service's) breaker. Transitions happen only in this class."""

    __slots__ = (
        "_consecutive",
        "_last_check",
        "_probes",
        "_window",
        "_windowed",
        "opened_at",
        "opens",
        "spec",
        "state",
    )

    def __init__(self, spec: CircuitBreakerSpec) -> None:
        self.spec = spec
        self.state = CircuitState.CLOSED
        self.opened_at = 0.0
        self.opens = 0
        self._window = _Window(spec.window)
        self._windowed = any(
            c.metric is not Metric.CONSECUTIVE_FAILURES for group in spec.any_of for c in group
        )
        self._consecutive = 0
        self._probes = 0
        self._last_check = float("-inf")

    def allow(self, now: float) -> bool:
        """May a request go to this endpoint now? In half-open state, one probe at a time."""
        if self.state is CircuitState.CLOSED:
            return True
        if self.state is CircuitState.OPEN:
            if now < self.opened_at + self.spec.open_duration:
                return False
            self.state = CircuitState.HALF_OPEN
            self._probes = 0
        if self._probes >= 1:
            return False
        self._probes += 1
        return True

    def available(self, now: float) -> bool:
        """Like :meth:`allow` but without taking a probe: for choosing among endpoints."""
        if self.state is CircuitState.CLOSED:
            return True
        if self.state is CircuitState.OPEN:
            return now >= self.opened_at + self.spec.open_duration
        return self._probes < 1

    def record(self, now: float, outcome: Outcome) -> None:
        if self.state is CircuitState.HALF_OPEN:
            if outcome.failed:
                self._open(now)
            else:
                self._close()
            return
        if self.state is CircuitState.OPEN:
            return  # a late answer to a request sent before the breaker opened
        if self._windowed:
            self._window.add(now, outcome)
        self._consecutive = self._consecutive + 1 if outcome.failed else 0
        if self._tripped(now):
            self._open(now)

    def _open(self, now: float) -> None:
        self.state = CircuitState.OPEN
        self.opened_at = now
        self.opens += 1

    def _close(self) -> None:
        self.state = CircuitState.CLOSED
        self._window.clear()
        self._consecutive = 0
        self._last_check = float("-inf")

    def _tripped(self, now: float) -> bool:
        periodic = now - self._last_check >= self.spec.check_period
        if periodic:
            self._last_check = now
        holds = self._holds
        for conditions in self.spec.any_of:  # (loops, not all(): this runs for every outcome)
            for condition in conditions:
                if not holds(condition, now, periodic):
                    break
            else:
                return True
        return False

    def _holds(self, condition: Condition, now: float, periodic: bool) -> bool:
        if condition.metric is Metric.CONSECUTIVE_FAILURES:
            value = float(self._consecutive)
        elif not periodic or self._window.total(now) < self.spec.min_requests:
            return False
        elif condition.metric is Metric.NETWORK_ERROR_RATIO:
            value = self._window.network_error_ratio(now)
        elif condition.metric is Metric.RESPONSE_CODE_RATIO:
            value = self._window.response_code_ratio(now, condition.args)
        else:
            value = self._window.latency_quantile_ms(now, condition.args[0])
        return bool(_OPS[condition.op](value, condition.threshold))


# ---------------------------------------------------------------------------------------------
# Rate limit


@dataclass(frozen=True, slots=True)
class RateLimitSpec:
    average: float  # requests per second
    burst: int


class TokenBucket:
    __slots__ = ("_last", "_tokens", "spec")

    def __init__(self, spec: RateLimitSpec) -> None:
        self.spec = spec
        self._tokens = float(spec.burst)
        self._last: float | None = None

    def take(self, now: float) -> float:
        """Take a token: 0.0 when granted, else the seconds until one will be available."""
        if self._last is not None and now > self._last:
            self._tokens = min(
                float(self.spec.burst), self._tokens + (now - self._last) * self.spec.average
            )
        if self._last is None or now > self._last:
            self._last = now
        if self._tokens >= 1.0 - 1e-9:  # float sums of refills must not lose a token
            self._tokens -= 1.0
            return 0.0
        if self.spec.average <= 0:
            return float("inf")
        return (1.0 - self._tokens) / self.spec.average


# ---------------------------------------------------------------------------------------------
# Load balancing


class SmoothWeightedRoundRobin:
    """nginx's smooth weighted round robin: exact shares over each cycle, well interleaved."""

    __slots__ = (
        "_current",
        "_current0",
        "_current1",
        "_pair",
        "_total",
        "_weight0",
        "_weight1",
        "weights",
    )

    def __init__(self, weights: Sequence[int]) -> None:
        self.weights = tuple(weights)
        self._current = [0] * len(self.weights)
        self._total = sum(self.weights)
        # Two backends (a canary split, the usual case): their weights and running counts as
        # native ints, not read from a tuple and a list (a compiled build boxes their items)
        self._pair = len(self.weights) == 2
        self._weight0 = self.weights[0] if self._pair else 0
        self._weight1 = self.weights[1] if self._pair else 0
        self._current0 = 0
        self._current1 = 0

    def pick(self) -> int:
        if self._total <= 0:
            raise ValueError("no backend has a positive weight")
        if self._pair:
            return self._pick_pair()
        best = -1
        current = self._current
        for i, weight in enumerate(self.weights):
            if weight <= 0:
                continue
            current[i] += weight
            if best < 0 or current[i] > current[best]:
                best = i
        current[best] -= self._total
        return best

    def _pick_pair(self) -> int:
        """pick() of two backends: the same choices, in native ints."""
        weight0 = self._weight0
        weight1 = self._weight1
        current0 = self._current0
        current1 = self._current1
        best = -1
        if weight0 > 0:
            current0 += weight0
            best = 0
        if weight1 > 0:
            current1 += weight1
            if best < 0 or current1 > current0:
                best = 1
        if best == 0:
            current0 -= self._total
        else:  # (best is never -1 here: a positive total has a positive weight)
            current1 -= self._total
        self._current0 = current0
        self._current1 = current1
        return best


class RoundRobin:
    __slots__ = ("_next",)

    def __init__(self) -> None:
        self._next = 0

    def pick(self, count: int, rng: Rng) -> int:
        index = self._next % count
        self._next = index + 1
        return index


class LeastRequest:
    """Power of two choices on in-flight requests (ties go to the first sampled)."""

    __slots__ = ("inflight",)

    def __init__(self) -> None:
        self.inflight: dict[str, int] = {}

    def pick(self, count: int, rng: Rng, keys: Sequence[str] = ()) -> int:
        if count == 1:
            return 0
        a = min(count - 1, int(rng.random() * count))
        b = min(count - 2, int(rng.random() * (count - 1)))
        if b >= a:
            b += 1
        load_a = self.inflight.get(keys[a], 0) if keys else 0
        load_b = self.inflight.get(keys[b], 0) if keys else 0
        return b if load_b < load_a else a
