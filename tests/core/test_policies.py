"""Policies as transcripts: outcomes and ``now`` in, state out."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import pytest

from mesh.core.annotations import parse_circuit_breaker_expression
from mesh.core.policies import (
    CircuitBreaker,
    CircuitBreakerSpec,
    CircuitState,
    Failure,
    LeastRequest,
    Outcome,
    RateLimitSpec,
    RetrySpec,
    RoundRobin,
    SmoothWeightedRoundRobin,
    TokenBucket,
    retry_verdict,
)

OK = Outcome(200, latency=0.01)
E500 = Outcome(500)
E503 = Outcome(503)
CONNECT = Outcome(None, Failure.CONNECT)
RESET = Outcome(None, Failure.RESET)
TIMEOUT = Outcome(None, Failure.TIMEOUT)


def breaker(
    expression: str, *, window: float = 10.0, open_duration: float = 10.0, min_requests: int = 5
) -> CircuitBreaker:
    return CircuitBreaker(
        CircuitBreakerSpec(
            expression=expression,
            any_of=parse_circuit_breaker_expression(expression),
            window=window,
            open_duration=open_duration,
            min_requests=min_requests,
        )
    )


def transcript(cb: CircuitBreaker, steps: Iterable[tuple[float, Outcome]]) -> list[str]:
    """Record each outcome at its time; the state after each one."""
    states = []
    for now, outcome in steps:
        cb.record(now, outcome)
        states.append(cb.state.value)
    return states


def spaced(
    outcomes: Sequence[Outcome], *, start: float = 0.0, step: float = 0.2
) -> list[tuple[float, Outcome]]:
    return [(start + i * step, o) for i, o in enumerate(outcomes)]


def test_outcome_failed() -> None:
    assert [o.failed for o in (OK, Outcome(404), E500, E503, CONNECT, RESET, TIMEOUT)] == [
        False,
        False,
        True,
        True,
        True,
        True,
        True,
    ]


# -- circuit breaker: each metric ---------------------------------------------------------------


def test_network_error_ratio_waits_for_min_requests() -> None:
    cb = breaker("NetworkErrorRatio() > 0.5")
    states = transcript(cb, spaced([OK, CONNECT, RESET, TIMEOUT, OK]))
    assert states == ["closed", "closed", "closed", "closed", "open"]  # 3/5 > 0.5 at the 5th
    assert (cb.opened_at, cb.opens) == (0.8, 1)


def test_network_error_ratio_ignores_5xx() -> None:
    cb = breaker("NetworkErrorRatio() > 0.5")
    assert transcript(cb, spaced([E500] * 8)) == ["closed"] * 8


def test_network_error_ratio_at_threshold_stays_closed() -> None:
    cb = breaker("NetworkErrorRatio() > 0.5")
    assert transcript(cb, spaced([OK, CONNECT, OK, CONNECT, OK, CONNECT])) == ["closed"] * 6


def test_ratios_are_evaluated_at_most_every_check_period() -> None:
    cb = breaker("NetworkErrorRatio() > 0.5")
    burst = [(1.0 + i * 0.01, CONNECT) for i in range(6)]  # within 100 ms of the first check
    assert transcript(cb, burst) == ["closed"] * 6
    assert transcript(cb, [(1.25, CONNECT)]) == ["open"]


def test_response_code_ratio() -> None:
    cb = breaker("ResponseCodeRatio(500, 600, 0, 600) > 0.25")
    states = transcript(cb, spaced([OK, OK, OK, E500, OK, E503]))
    # 1/4 at the 4th (min-requests not reached), 1/5 at the 5th, 2/6 at the 6th
    assert states == ["closed"] * 5 + ["open"]


def test_response_code_ratio_does_not_count_network_errors() -> None:
    cb = breaker("ResponseCodeRatio(500, 600, 0, 600) > 0.25")
    assert transcript(cb, spaced([OK, OK, OK, CONNECT, CONNECT, CONNECT, OK])) == ["closed"] * 7


def test_latency_at_quantile() -> None:
    cb = breaker("LatencyAtQuantileMS(99) > 200")
    fast, slow = Outcome(200, latency=0.05), Outcome(200, latency=0.3)
    assert transcript(cb, spaced([fast] * 5 + [slow])) == ["closed"] * 5 + ["open"]


def test_latency_at_median_ignores_one_slow_answer() -> None:
    cb = breaker("LatencyAtQuantileMS(50) > 200")
    fast, slow = Outcome(200, latency=0.05), Outcome(200, latency=0.3)
    assert transcript(cb, spaced([fast] * 5 + [slow])) == ["closed"] * 6


def test_consecutive_failures_count_every_outcome_without_min_requests() -> None:
    cb = breaker("ConsecutiveFailures() >= 3", min_requests=100)
    burst = [(0.0, E500), (0.001, CONNECT), (0.002, TIMEOUT)]
    assert transcript(cb, burst) == ["closed", "closed", "open"]


def test_consecutive_failures_reset_on_success() -> None:
    cb = breaker("ConsecutiveFailures() >= 3")
    assert transcript(cb, spaced([E500, E500, OK, E500, E500, Outcome(404)])) == ["closed"] * 6


def test_and_binds_tighter_than_or() -> None:
    expression = (
        "NetworkErrorRatio() > 0.5 && LatencyAtQuantileMS(50) > 100 || ConsecutiveFailures() >= 10"
    )
    fast_fail = Outcome(None, Failure.CONNECT, latency=0.001)
    slow_fail = Outcome(None, Failure.RESET, latency=0.5)
    assert transcript(breaker(expression), spaced([fast_fail] * 9)) == ["closed"] * 9
    assert transcript(breaker(expression), spaced([fast_fail] * 10))[-1] == "open"
    assert transcript(breaker(expression), spaced([slow_fail] * 5)) == ["closed"] * 4 + ["open"]


def test_outcomes_older_than_the_window_do_not_count() -> None:
    old = spaced([CONNECT] * 4)
    assert transcript(breaker("NetworkErrorRatio() > 0.5"), [*old, (1.0, OK)]) == ["closed"] * 4 + [
        "open"
    ]
    later = spaced([OK] * 4, start=11.0)
    assert transcript(breaker("NetworkErrorRatio() > 0.5"), [*old, *later]) == ["closed"] * 8


# -- circuit breaker: open, half-open, probe ----------------------------------------------------


def opened(now: float = 1.0, open_duration: float = 5.0) -> CircuitBreaker:
    cb = breaker("ConsecutiveFailures() >= 2", open_duration=open_duration)
    transcript(cb, [(now - 0.5, E500), (now, E500)])
    assert cb.state is CircuitState.OPEN and cb.opened_at == now
    return cb


def test_open_breaker_refuses_until_the_open_duration_has_passed() -> None:
    cb = opened(now=1.0, open_duration=5.0)
    assert (cb.available(5.99), cb.allow(5.99), cb.state) == (False, False, CircuitState.OPEN)
    transcript(cb, [(3.0, OK)])  # a late answer to a request sent before opening
    assert cb.state is CircuitState.OPEN
    assert cb.available(6.0) is True
    assert cb.state is CircuitState.OPEN  # available() takes no probe


def test_half_open_lets_one_probe_through_and_closes_on_success() -> None:
    cb = opened(now=1.0, open_duration=5.0)
    assert cb.allow(6.0) is True
    assert cb.state is CircuitState.HALF_OPEN
    assert (cb.allow(6.1), cb.available(6.1)) == (False, False)  # one probe at a time
    assert transcript(cb, [(6.2, OK)]) == ["closed"]
    assert (cb.allow(6.3), cb.allow(6.3), cb.opens) == (True, True, 1)


def test_half_open_probe_failure_opens_again() -> None:
    cb = opened(now=1.0, open_duration=5.0)
    assert cb.allow(6.0) is True
    assert transcript(cb, [(6.5, TIMEOUT)]) == ["open"]
    assert (cb.opened_at, cb.opens) == (6.5, 2)
    assert cb.allow(11.4) is False
    assert cb.allow(11.5) is True
    assert transcript(cb, [(11.6, OK)]) == ["closed"]


def test_closing_forgets_the_outcomes_that_opened_the_breaker() -> None:
    cb = breaker("NetworkErrorRatio() > 0.5", window=10.0, open_duration=2.0)
    assert transcript(cb, spaced([CONNECT] * 5, start=1.0))[-1] == "open"
    assert cb.allow(3.8) is True
    assert transcript(cb, [(3.8, OK), (4.0, OK), (4.2, OK)]) == ["closed"] * 3
    later = [(20.0 + i * 0.2, o) for i, o in enumerate([OK, OK, CONNECT, OK, OK])]
    assert transcript(cb, later) == ["closed"] * 5


def test_closing_resets_consecutive_failures() -> None:
    cb = breaker("ConsecutiveFailures() >= 2", open_duration=1.0)
    transcript(cb, [(0.0, E500), (0.1, E500)])
    assert cb.allow(1.1)
    assert transcript(cb, [(1.2, OK), (1.3, E500)]) == ["closed", "closed"]


# -- token bucket --------------------------------------------------------------------------------


def test_token_bucket_burst_then_average() -> None:
    bucket = TokenBucket(RateLimitSpec(average=2.0, burst=3))
    assert [bucket.take(0.0) for _ in range(4)] == [0.0, 0.0, 0.0, 0.5]
    assert bucket.take(0.25) == pytest.approx(0.25)
    assert bucket.take(0.5) == 0.0
    assert bucket.take(0.5) == pytest.approx(0.5)


def test_token_bucket_refill_is_capped_at_burst() -> None:
    bucket = TokenBucket(RateLimitSpec(average=1.0, burst=2))
    bucket.take(0.0)
    assert [bucket.take(100.0) for _ in range(3)] == [0.0, 0.0, 1.0]


def test_token_bucket_ignores_time_going_backwards() -> None:
    bucket = TokenBucket(RateLimitSpec(average=1.0, burst=1))
    assert bucket.take(10.0) == 0.0
    assert bucket.take(5.0) == pytest.approx(1.0)
    assert bucket.take(11.0) == 0.0


def test_token_bucket_rate_over_time() -> None:
    bucket = TokenBucket(RateLimitSpec(average=10.0, burst=1))
    granted = sum(bucket.take(i * 0.003) == 0.0 for i in range(3334))  # 10 s, 333 tries/s
    assert 0.95 * 100 <= granted <= 1 + 100  # the burst, then at most the average rate


# -- retry ----------------------------------------------------------------------------------------

RETRY2 = RetrySpec(attempts=2)


@pytest.mark.parametrize(
    ("spec", "tries", "method", "replayable", "outcome", "verdict"),
    [
        (None, 1, "GET", True, CONNECT, None),
        (RETRY2, 1, "GET", True, CONNECT, "connect failure"),
        (RETRY2, 2, "GET", True, CONNECT, "connect failure"),
        (RETRY2, 3, "GET", True, CONNECT, None),  # at most 2 retries after the first try
        (RETRY2, 1, "POST", False, CONNECT, "connect failure"),  # never sent: always safe
        (RETRY2, 1, "GET", True, RESET, "reset"),
        (RETRY2, 1, "GET", True, TIMEOUT, "timeout"),
        (RETRY2, 1, "GET", True, Outcome(502), "status 502"),
        (RETRY2, 1, "HEAD", True, E503, "status 503"),
        (RETRY2, 1, "PUT", True, Outcome(504), "status 504"),
        (RETRY2, 1, "DELETE", True, RESET, "reset"),
        (RETRY2, 1, "OPTIONS", True, RESET, "reset"),
        (RETRY2, 1, "TRACE", True, RESET, "reset"),
        (RETRY2, 1, "GET", True, E500, "status 500"),
        (RETRY2, 1, "POST", True, E500, None),
        (RETRY2, 1, "GET", True, OK, None),
        (RETRY2, 1, "GET", True, Outcome(429), None),
        (RETRY2, 1, "POST", True, RESET, None),
        (RETRY2, 1, "PATCH", True, E503, None),
        (RetrySpec(2, non_idempotent=True), 1, "POST", True, RESET, "reset"),
        (RetrySpec(2, non_idempotent=True), 1, "PATCH", True, E503, "status 503"),
        (RetrySpec(2, non_idempotent=True), 1, "POST", False, RESET, None),
        (RETRY2, 1, "GET", False, TIMEOUT, None),  # the body cannot be replayed
        (RetrySpec(0), 1, "GET", True, CONNECT, None),
    ],
)
def test_retry_verdict(
    spec: RetrySpec | None,
    tries: int,
    method: str,
    replayable: bool,
    outcome: Outcome,
    verdict: str | None,
) -> None:
    got = retry_verdict(spec, tries=tries, method=method, replayable=replayable, outcome=outcome)
    assert got == verdict


# -- balancers ------------------------------------------------------------------------------------


def test_smooth_weighted_round_robin_sequence_is_nginx() -> None:
    swrr = SmoothWeightedRoundRobin([5, 1, 1])
    assert "".join("abc"[swrr.pick()] for _ in range(14)) == "aabacaa" * 2


@pytest.mark.parametrize(
    ("weights", "cycle"),
    [
        ((1, 0), [1, 0]),
        ((0, 1), [0, 1]),
        ((75, 25), [3, 1]),
        ((1000, 500), [2, 1]),
        ((3, 0, 2), [3, 0, 2]),
        ((7,), [1]),
    ],
)
def test_smooth_weighted_round_robin_exact_shares_per_cycle(
    weights: tuple[int, ...], cycle: list[int]
) -> None:
    swrr = SmoothWeightedRoundRobin(weights)
    total = sum(weights)
    picks = [swrr.pick() for _ in range(3 * total)]
    for start in range(0, 3 * total, total):
        window = picks[start : start + total]
        assert [window.count(i) for i in range(len(weights))] == [w for w in weights]
    scale = total // sum(cycle)
    assert [w // scale for w in weights] == cycle


def test_smooth_weighted_round_robin_without_positive_weight_raises() -> None:
    with pytest.raises(ValueError, match="positive weight"):
        SmoothWeightedRoundRobin([0, 0]).pick()


def test_round_robin_cycles_and_adapts_to_a_smaller_set() -> None:
    robin = RoundRobin()
    rng = ScriptedRng([])
    assert [robin.pick(3, rng) for _ in range(7)] == [0, 1, 2, 0, 1, 2, 0]
    assert [robin.pick(1, rng) for _ in range(2)] == [0, 0]
    assert [robin.pick(2, rng) for _ in range(3)] == [1, 0, 1]


class ScriptedRng:
    """An RNG whose ``random()`` answers are given in advance."""

    def __init__(self, values: Sequence[float]) -> None:
        self.values = list(values)

    def random(self) -> float:
        value = self.values.pop(0)
        assert 0.0 <= value < 1.0
        return value


def test_least_request_picks_the_less_loaded_of_two() -> None:
    balancer = LeastRequest()
    balancer.inflight = {"a": 5, "b": 1, "c": 0}
    keys = ["a", "b", "c"]
    # the second sample is drawn from the others: (a, b) -> b; (c, a) -> c; (b, c) -> c
    assert balancer.pick(3, ScriptedRng([0.0, 0.0]), keys) == 1
    assert balancer.pick(3, ScriptedRng([0.9, 0.0]), keys) == 2
    assert balancer.pick(3, ScriptedRng([0.5, 0.6]), keys) == 2


def test_least_request_ties_go_to_the_first_sample_and_one_endpoint_needs_no_rng() -> None:
    balancer = LeastRequest()
    balancer.inflight = {"a": 2, "b": 2}
    assert balancer.pick(2, ScriptedRng([0.99, 0.0]), ["a", "b"]) == 1
    assert balancer.pick(2, ScriptedRng([0.0, 0.99]), ["a", "b"]) == 0
    assert balancer.pick(1, ScriptedRng([]), ["a"]) == 0


def test_least_request_samples_two_distinct_endpoints() -> None:
    balancer = LeastRequest()
    balancer.inflight = {"a": 1}
    for first in (0.0, 0.4, 0.99):
        for second in (0.0, 0.5, 0.99):
            assert balancer.pick(2, ScriptedRng([first, second]), ["a", "b"]) == 1


def test_token_bucket_admits_the_full_rate_at_exact_steps() -> None:
    from mesh.core.policies import RateLimitSpec, TokenBucket

    bucket = TokenBucket(RateLimitSpec(average=10.0, burst=1))
    admitted = sum(bucket.take(k * 0.1) == 0.0 for k in range(1000))
    assert admitted == 1000
