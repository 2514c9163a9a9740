"""Service annotations: every key, the Maesh aliases, precedence, and errors per annotation."""

from __future__ import annotations

import pytest

from mesh.core.annotations import (
    ServiceOptions,
    mesh_annotations,
    parse_circuit_breaker_expression,
    parse_duration,
    service_options,
)
from mesh.core.errors import InvalidObject
from mesh.core.model import Scheme, TrafficType
from mesh.core.policies import Condition, Metric, RateLimitSpec, RetrySpec


def options(pairs: dict[str, str], default: TrafficType = TrafficType.HTTP) -> ServiceOptions:
    got, errors = service_options(tuple(sorted(pairs.items())), default)
    assert errors == [], errors
    return got


def problems(pairs: dict[str, str]) -> tuple[ServiceOptions, list[InvalidObject]]:
    return service_options(tuple(sorted(pairs.items())), TrafficType.HTTP)


def test_defaults() -> None:
    got = options({"unrelated.io/x": "1"})
    assert (got.traffic_type, got.scheme) == (TrafficType.HTTP, Scheme.HTTP)
    policy = got.policy
    assert (policy.retry, policy.timeout, policy.circuit_breaker, policy.rate_limit) == (None,) * 4
    assert policy.load_balancer == "round-robin"
    assert options({}, TrafficType.TCP).traffic_type is TrafficType.TCP


def test_every_key() -> None:
    got = options(
        {
            "simmesh.io/traffic-type": "tcp",
            "simmesh.io/scheme": "h2c",
            "simmesh.io/retry-attempts": "3",
            "simmesh.io/retry-non-idempotent": "true",
            "simmesh.io/retry-backoff": "25ms",
            "simmesh.io/retry-budget": "20%",
            "simmesh.io/timeout": "500ms",
            "simmesh.io/request-timeout": "2s",
            "simmesh.io/circuit-breaker": "NetworkErrorRatio() > 0.5",
            "simmesh.io/circuit-breaker-window": "30s",
            "simmesh.io/circuit-breaker-open-duration": "1m",
            "simmesh.io/circuit-breaker-min-requests": "20",
            "simmesh.io/ratelimit-average": "100",
            "simmesh.io/ratelimit-burst": "200",
            "simmesh.io/load-balancer": "least-request",
        }
    )
    assert (got.traffic_type, got.scheme) == (TrafficType.TCP, Scheme.H2C)
    policy = got.policy
    assert policy.retry == RetrySpec(attempts=3, non_idempotent=True, backoff=0.025, budget=0.2)
    assert (policy.timeout, policy.request_timeout) == (0.5, 2.0)
    assert policy.rate_limit == RateLimitSpec(100.0, 200)
    assert policy.load_balancer == "least-request"
    breaker = policy.circuit_breaker
    assert breaker is not None
    assert (breaker.window, breaker.open_duration, breaker.min_requests) == (30.0, 60.0, 20)
    assert breaker.any_of == ((Condition(Metric.NETWORK_ERROR_RATIO, (), ">", 0.5),),)


def test_retry_attempts_zero_means_no_retry_and_burst_defaults_to_average() -> None:
    got = options({"simmesh.io/retry-attempts": "0", "simmesh.io/ratelimit-average": "7"})
    assert got.policy.retry is None
    assert got.policy.rate_limit == RateLimitSpec(7.0, 7)


@pytest.mark.parametrize("prefix", ["mesh.traefik.io/", "maesh.containo.us/"])
def test_maesh_prefixes_are_aliases(prefix: str) -> None:
    got = options({prefix + "traffic-type": "udp", prefix + "retry-attempts": "2"})
    assert got.traffic_type is TrafficType.UDP
    assert got.policy.retry == RetrySpec(2)


def test_simmesh_prefix_wins_then_traefik_then_maesh() -> None:
    three = {
        "maesh.containo.us/scheme": "https",
        "mesh.traefik.io/scheme": "h2c",
        "simmesh.io/scheme": "http",
    }
    assert options(three).scheme is Scheme.HTTP
    two = {"maesh.containo.us/scheme": "https", "mesh.traefik.io/scheme": "h2c"}
    assert options(two).scheme is Scheme.H2C
    assert mesh_annotations(tuple(sorted(three.items())))["scheme"] == ("simmesh.io/scheme", "http")


def test_circuit_breaker_expression_alias() -> None:
    got = options({"mesh.traefik.io/circuit-breaker-expression": "ConsecutiveFailures() >= 5"})
    assert got.policy.circuit_breaker is not None
    assert got.policy.circuit_breaker.expression == "ConsecutiveFailures() >= 5"
    winner = options(
        {
            "maesh.containo.us/circuit-breaker-expression": "ConsecutiveFailures() >= 9",
            "simmesh.io/circuit-breaker": "ConsecutiveFailures() >= 5",
        }
    )
    assert winner.policy.circuit_breaker is not None
    assert winner.policy.circuit_breaker.expression == "ConsecutiveFailures() >= 5"


def test_a_bad_alias_value_is_an_error_naming_the_full_key() -> None:
    got, errors = problems(
        {"maesh.containo.us/timeout": "soon", "mesh.traefik.io/retry-attempts": "2"}
    )
    assert [e.field for e in errors] == ["metadata.annotations[maesh.containo.us/timeout]"]
    assert got.policy.retry == RetrySpec(2)


BAD = [
    ("traffic-type", "grpc"),
    ("scheme", "ftp"),
    ("retry-attempts", "-1"),
    ("retry-attempts", "two"),
    ("retry-non-idempotent", "maybe"),
    ("timeout", "2 weeks"),
    ("retry-backoff", "soon"),
    ("retry-budget", "0%"),
    ("retry-budget", "150%"),
    ("retry-budget", "lots"),
    ("request-timeout", "0s"),
    ("request-timeout", "x"),
    ("timeout", "-1s"),
    ("circuit-breaker", "NetworkErrorRatio() >"),
    ("circuit-breaker", "Bogus() > 1"),
    ("circuit-breaker", "ResponseCodeRatio(500) > 0.1"),
    ("circuit-breaker", "NetworkErrorRatio() ~ 0.1"),
    ("circuit-breaker", "NetworkErrorRatio() > 0.1 &&"),
    ("circuit-breaker", "NetworkErrorRatio() > 0.1 NetworkErrorRatio() > 0.2"),
    ("circuit-breaker", "LatencyAtQuantileMS(99"),
    ("circuit-breaker", "ResponseCodeRatio(500, 600"),
    ("circuit-breaker", "NetworkErrorRatio() > $"),
    ("circuit-breaker-window", "ten"),
    ("circuit-breaker-window", "0s"),
    ("circuit-breaker-open-duration", "x"),
    ("circuit-breaker-min-requests", "many"),
    ("ratelimit-average", "0"),
    ("ratelimit-average", "1.5"),
    ("ratelimit-average", "9" * 400),
    ("ratelimit-burst", "0"),
    ("load-balancer", "random"),
    ("no-such-key", "1"),
]


@pytest.mark.parametrize(("short", "value"), BAD)
def test_bad_values_are_an_error_on_that_annotation_only(short: str, value: str) -> None:
    key = "simmesh.io/" + short
    good = {
        "simmesh.io/retry-attempts": "2",
        "simmesh.io/circuit-breaker": "ConsecutiveFailures() >= 5",
        "simmesh.io/ratelimit-average": "10",
        "simmesh.io/scheme": "h2c",
    }
    good[key] = value
    got, errors = problems(good)
    assert [e.field for e in errors] == [f"metadata.annotations[{key}]"], errors
    untouched = {k for k in good if k != key}
    if "simmesh.io/retry-attempts" in untouched:
        assert got.policy.retry == RetrySpec(2)
    if "simmesh.io/circuit-breaker" in untouched and not short.startswith("circuit-breaker-"):
        assert got.policy.circuit_breaker is not None
    if "simmesh.io/ratelimit-average" in untouched and short != "ratelimit-burst":
        assert got.policy.rate_limit == RateLimitSpec(10.0, 10)
    if "simmesh.io/scheme" in untouched:
        assert got.scheme is Scheme.H2C


def test_bad_window_keeps_the_breaker_with_the_default_window() -> None:
    got, errors = problems(
        {
            "simmesh.io/circuit-breaker": "ConsecutiveFailures() >= 5",
            "simmesh.io/circuit-breaker-window": "0s",
        }
    )
    assert len(errors) == 1
    assert got.policy.circuit_breaker is not None
    assert got.policy.circuit_breaker.window == 10.0


def test_burst_without_average_is_an_error() -> None:
    got, errors = problems({"simmesh.io/ratelimit-burst": "5"})
    assert got.policy.rate_limit is None
    assert [(e.field, e.message) for e in errors] == [
        (
            "metadata.annotations[simmesh.io/ratelimit-burst]",
            "ratelimit-burst needs ratelimit-average",
        )
    ]


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("500ms", 0.5),
        ("2s", 2.0),
        ("1m", 60.0),
        ("1h", 3600.0),
        ("1.5s", 1.5),
        ("3", 3.0),
        (" 2s ", 2.0),
    ],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


def test_expression_grammar() -> None:
    parsed = parse_circuit_breaker_expression(
        "NetworkErrorRatio() > 0.3 && LatencyAtQuantileMS(50.0) > 100 || "
        "ResponseCodeRatio(500, 600, 0, 600) >= 0.25"
    )
    assert parsed == (
        (
            Condition(Metric.NETWORK_ERROR_RATIO, (), ">", 0.3),
            Condition(Metric.LATENCY_AT_QUANTILE_MS, (50.0,), ">", 100.0),
        ),
        (Condition(Metric.RESPONSE_CODE_RATIO, (500.0, 600.0, 0.0, 600.0), ">=", 0.25),),
    )


def test_absurd_durations_are_rejected_not_infinite() -> None:
    import pytest

    from mesh.core.annotations import parse_duration

    with pytest.raises(ValueError, match="at most a year"):
        parse_duration("9" * 400 + "s")
    assert parse_duration("1.5s") == 1.5
