"""Service annotations -> traffic type, scheme and policies.

Keys use the prefix ``simmesh.io/``; the Traefik Mesh prefixes ``mesh.traefik.io/`` and
``maesh.containo.us/`` are read as aliases so Maesh users can migrate. When a key is given under
several prefixes, ``simmesh.io/`` wins. A bad value is an error on that annotation only: the
service stays meshed without that policy.

Circuit-breaker expressions follow Traefik's: ``NetworkErrorRatio() > 0.30``,
``ResponseCodeRatio(500, 600, 0, 600) > 0.25``, ``LatencyAtQuantileMS(50.0) > 100``, plus
``ConsecutiveFailures() >= 5``; combined with ``&&`` and ``||`` (``&&`` binds tighter).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from mesh.core.errors import InvalidObject
from mesh.core.model import Scheme, TrafficType
from mesh.core.policies import (
    CircuitBreakerSpec,
    Condition,
    Metric,
    RateLimitSpec,
    RetrySpec,
)

PREFIXES = ("simmesh.io/", "mesh.traefik.io/", "maesh.containo.us/")
ALIASES = {"circuit-breaker-expression": "circuit-breaker"}
KEYS = (
    "traffic-type",
    "scheme",
    "retry-attempts",
    "retry-non-idempotent",
    "retry-backoff",
    "retry-budget",
    "timeout",
    "request-timeout",
    "circuit-breaker",
    "circuit-breaker-window",
    "circuit-breaker-open-duration",
    "circuit-breaker-min-requests",
    "ratelimit-average",
    "ratelimit-burst",
    "load-balancer",
)
LOAD_BALANCERS = ("round-robin", "least-request")


@dataclass(frozen=True, slots=True)
class ServicePolicy:
    retry: RetrySpec | None = None
    timeout: float | None = None  # per try
    request_timeout: float | None = None  # the whole request: every try and backoff
    circuit_breaker: CircuitBreakerSpec | None = None
    rate_limit: RateLimitSpec | None = None
    load_balancer: str = "round-robin"


@dataclass(frozen=True, slots=True)
class ServiceOptions:
    traffic_type: TrafficType
    scheme: Scheme
    policy: ServicePolicy
    scheme_set: bool = False  # the scheme annotation was given (it wins over appProtocol)


def mesh_annotations(annotations: tuple[tuple[str, str], ...]) -> dict[str, tuple[str, str]]:
    """Our keys (without prefix) -> (full annotation key, value); simmesh.io/ wins."""
    found: dict[str, tuple[str, str]] = {}
    for prefix in reversed(PREFIXES):
        for key, value in annotations:
            if key.startswith(prefix):
                short = key[len(prefix) :]
                found[ALIASES.get(short, short)] = (key, value)
    return found


_DURATION = re.compile(r"^([0-9]+(?:\.[0-9]+)?)(ms|s|m|h)?$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def parse_duration(text: str) -> float:
    match = _DURATION.match(text.strip())
    if match is None:
        raise ValueError(f"expected a duration such as 500ms, 2s or 1m, got {text!r}")
    seconds = float(match.group(1)) * _UNITS[match.group(2)]
    if not math.isfinite(seconds) or seconds > 86400 * 365:
        raise ValueError(f"expected a duration of at most a year, got {text!r}")
    return seconds


def _choice(kind: type[StrEnum]) -> Callable[[str], StrEnum]:
    def convert(text: str) -> StrEnum:
        try:
            return kind(text)
        except ValueError:
            allowed = ", ".join(m.value for m in kind)
            raise ValueError(f"expected one of {allowed}, got {text!r}") from None

    return convert


def _positive_duration(text: str) -> float:
    seconds = parse_duration(text)
    if seconds <= 0:
        raise ValueError(f"expected a positive duration, got {text!r}")
    return seconds


def _positive_int(text: str, *, allow_zero: bool) -> int:
    digits = text.strip()
    if not (digits.isascii() and digits.isdigit()) or (int(digits) == 0 and not allow_zero):
        floor = "a non-negative" if allow_zero else "a positive"
        raise ValueError(f"expected {floor} integer, got {text!r}")
    if len(digits) > 16 or int(digits) > 2**53:
        raise ValueError(f"expected an integer up to 2**53, got {text[:20]!r}...")
    return int(digits)


_TOKEN = re.compile(r"\s*(?:(\d+(?:\.\d+)?)|([A-Za-z]+)|(&&|\|\||>=|<=|==|!=|>|<|\(|\)|,))")
_ARITY = {
    Metric.NETWORK_ERROR_RATIO: 0,
    Metric.RESPONSE_CODE_RATIO: 4,
    Metric.LATENCY_AT_QUANTILE_MS: 1,
    Metric.CONSECUTIVE_FAILURES: 0,
}


def _tokens(text: str) -> list[str]:
    out, pos = [], 0
    text = text.strip()
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if match is None or match.end() == pos:
            raise ValueError(f"unexpected {text[pos : pos + 10]!r} at position {pos}")
        out.append(match.group(match.lastindex or 0))
        pos = match.end()
    return out


def parse_circuit_breaker_expression(text: str) -> tuple[tuple[Condition, ...], ...]:
    tokens = _tokens(text)
    groups: list[tuple[Condition, ...]] = []
    current: list[Condition] = []
    i = 0
    while True:
        condition, i = _condition(tokens, i)
        current.append(condition)
        if i == len(tokens):
            break
        if tokens[i] == "&&":
            i += 1
        elif tokens[i] == "||":
            groups.append(tuple(current))
            current = []
            i += 1
        else:
            raise ValueError(f"expected && or || , got {tokens[i]!r}")
    groups.append(tuple(current))
    return tuple(groups)


def _condition(tokens: list[str], i: int) -> tuple[Condition, int]:
    def take(expected: str | None = None) -> str:
        nonlocal i
        if i >= len(tokens):
            raise ValueError("expression ends too early")
        token = tokens[i]
        if expected is not None and token != expected:
            raise ValueError(f"expected {expected!r}, got {token!r}")
        i += 1
        return token

    name = take()
    try:
        metric = Metric(name)
    except ValueError:
        known = ", ".join(m.value for m in Metric)
        raise ValueError(f"unknown metric {name!r}; expected one of {known}") from None
    take("(")
    args: list[float] = []
    while i < len(tokens) and tokens[i] != ")":
        args.append(_number(take()))
        if i < len(tokens) and tokens[i] == ",":
            take(",")
    take(")")
    if len(args) != _ARITY[metric]:
        raise ValueError(f"{metric.value} takes {_ARITY[metric]} arguments, got {len(args)}")
    if metric is Metric.LATENCY_AT_QUANTILE_MS and not 0 < args[0] <= 100:
        raise ValueError(f"{metric.value}: expected a percentile in (0, 100], got {args[0]}")
    op = take()
    if op not in (">", ">=", "<", "<=", "==", "!="):
        raise ValueError(f"expected a comparison after {metric.value}(), got {op!r}")
    return Condition(metric, tuple(args), op, _number(take())), i


_NUMBER = re.compile(r"\d+(?:\.\d+)?")


def _number(token: str) -> float:
    """A decimal number token; words such as ``nan`` or ``inf`` and overflowing digits are not
    numbers (a NaN threshold would make every comparison false, silently)."""
    value = float(token) if _NUMBER.fullmatch(token) else math.nan
    if not math.isfinite(value):
        raise ValueError(f"expected a number, got {token[:20]!r}")
    return value


def service_options(
    annotations: tuple[tuple[str, str], ...], default_traffic_type: TrafficType
) -> tuple[ServiceOptions, list[InvalidObject]]:
    """Options from a Service's annotations, and one error per bad annotation."""
    found = mesh_annotations(annotations)
    if not found:  # most Services: no mesh annotation, the same options (one shared value)
        plain = _PLAIN.get(default_traffic_type)
        if plain is None:
            plain = _PLAIN[default_traffic_type] = _options(found, default_traffic_type)[0]
        return plain, []
    return _options(found, default_traffic_type)


_PLAIN: dict[TrafficType, ServiceOptions] = {}  # the options of a Service without annotations


def _options(
    found: dict[str, tuple[str, str]], default_traffic_type: TrafficType
) -> tuple[ServiceOptions, list[InvalidObject]]:
    errors: list[InvalidObject] = []

    def read(short: str, convert: type | object) -> object:
        if short not in found:
            return None
        key, value = found[short]
        try:
            return convert(value)  # type: ignore[operator]
        except ValueError as exc:
            errors.append(InvalidObject(f"metadata.annotations[{key}]", str(exc)))
            return None

    traffic = read("traffic-type", _choice(TrafficType)) or default_traffic_type
    chosen = read("scheme", _choice(Scheme))
    scheme = chosen or Scheme.HTTP
    attempts = read("retry-attempts", lambda t: _positive_int(t, allow_zero=True))
    non_idempotent = read("retry-non-idempotent", _boolean)
    backoff = read("retry-backoff", parse_duration)
    budget = read("retry-budget", _percent)
    timeout = read("timeout", parse_duration)
    request_timeout = read("request-timeout", _positive_duration)
    expression = read("circuit-breaker", parse_circuit_breaker_expression)
    window = read("circuit-breaker-window", _positive_duration)
    open_duration = read("circuit-breaker-open-duration", parse_duration)
    min_requests = read("circuit-breaker-min-requests", lambda t: _positive_int(t, allow_zero=True))
    average = read("ratelimit-average", lambda t: _positive_int(t, allow_zero=False))
    burst = read("ratelimit-burst", lambda t: _positive_int(t, allow_zero=False))
    balancer = read("load-balancer", _load_balancer) or "round-robin"
    for short in found:
        if short not in KEYS:
            key = found[short][0]
            errors.append(
                InvalidObject(
                    f"metadata.annotations[{key}]",
                    f"unknown annotation; expected one of {', '.join(KEYS)}",
                )
            )

    retry = None
    if isinstance(attempts, int) and attempts > 0:
        retry = RetrySpec(
            attempts=attempts,
            non_idempotent=bool(non_idempotent),
            backoff=float(backoff) if isinstance(backoff, float) else 0.0,
            budget=float(budget) if isinstance(budget, float) else None,
        )
    breaker = None
    if isinstance(expression, tuple):
        breaker = CircuitBreakerSpec(
            expression=found["circuit-breaker"][1],
            any_of=expression,
            window=float(window) if isinstance(window, float) else 10.0,
            open_duration=float(open_duration) if isinstance(open_duration, float) else 10.0,
            min_requests=min_requests if isinstance(min_requests, int) else 5,
        )
    rate_limit = None
    if isinstance(average, int):
        rate_limit = RateLimitSpec(
            average=float(average), burst=burst if isinstance(burst, int) else max(1, average)
        )
    elif isinstance(burst, int):
        errors.append(
            InvalidObject(
                f"metadata.annotations[{found['ratelimit-burst'][0]}]",
                "ratelimit-burst needs ratelimit-average",
            )
        )
    policy = ServicePolicy(
        retry=retry,
        timeout=float(timeout) if isinstance(timeout, float) and timeout > 0 else None,
        request_timeout=float(request_timeout) if isinstance(request_timeout, float) else None,
        circuit_breaker=breaker,
        rate_limit=rate_limit,
        load_balancer=str(balancer),
    )
    options = ServiceOptions(
        TrafficType(str(traffic)), Scheme(str(scheme)), policy, chosen is not None
    )
    return options, errors


def _percent(text: str) -> float:
    """A share: ``20%`` or ``0.2``."""
    raw = text.strip()
    try:
        value = float(raw[:-1]) / 100 if raw.endswith("%") else float(raw)
    except ValueError:
        raise ValueError(f"expected a percentage such as 20%, got {text!r}") from None
    if not 0 < value <= 1:
        raise ValueError(f"expected a percentage in (0%, 100%], got {text!r}")
    return value


def _boolean(text: str) -> bool:
    if text.lower() in ("true", "yes", "1"):
        return True
    if text.lower() in ("false", "no", "0"):
        return False
    raise ValueError(f"expected true or false, got {text!r}")


def _load_balancer(text: str) -> str:
    if text not in LOAD_BALANCERS:
        raise ValueError(f"expected one of {', '.join(LOAD_BALANCERS)}, got {text!r}")
    return text
