"""How the test app serves: latency, error rate, error status and capacity, changeable at runtime.

``Behaviour`` is a frozen value parsed from the CLI or from ``PUT /behaviour`` JSON; latency is
a number of seconds or a distribution spec in the scenario format (mesh.core.distributions), so
a scenario's workload is sampled exactly as the simulator samples it. A request's service time
is ``sample * latencyFactor * (1 + contention * others) + latencyAdd``, where ``others`` is the
number of requests already in service when it starts: the factor and the added seconds are a
scenario's latency spike, contention its load-dependent service time, computed as the
simulator computes them (sim/model.py). ``Gate`` is the capacity:
at most ``limit`` requests are served at once, the others wait in FIFO order (a c-server queue,
like the simulator's slots); the limit can change while requests wait.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from mesh.core.distributions import DistributionError, Sampler, sampler

__all__ = ["Behaviour", "BehaviourError", "Gate", "parse_latency"]

# JSON field -> Behaviour attribute
KEYS = {
    "latency": "latency",
    "errorRate": "error_rate",
    "errorStatus": "error_status",
    "capacity": "capacity",
    "latencyFactor": "latency_factor",
    "latencyAdd": "latency_add",
    "contention": "contention",
}


class BehaviourError(ValueError):
    """A bad behaviour value; the message names the field."""


@dataclass(frozen=True, slots=True)
class Behaviour:
    latency: Any = 0.0  # seconds, or a distribution spec (JSON-able, as given)
    error_rate: float = 0.0
    error_status: int = 500
    capacity: int | None = None  # None: unbounded
    latency_factor: float = 1.0
    latency_add: float = 0.0
    contention: float = 0.0

    def __post_init__(self) -> None:
        self.sampler()  # validates the latency spec
        for name in ("latency_factor", "latency_add", "contention"):
            value = getattr(self, name)
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not (math.isfinite(value) and value >= 0)
            ):
                field = next(k for k, v in KEYS.items() if v == name)
                raise BehaviourError(f"{field}: expected a number >= 0, got {value!r}")
        rate = self.error_rate
        if isinstance(rate, bool) or not isinstance(rate, int | float) or not 0 <= rate <= 1:
            raise BehaviourError(f"errorRate: expected a number in [0, 1], got {rate!r}")
        status = self.error_status
        if isinstance(status, bool) or not isinstance(status, int) or not 100 <= status <= 599:
            raise BehaviourError(f"errorStatus: expected an HTTP status 100..599, got {status!r}")
        cap = self.capacity
        if cap is not None and (isinstance(cap, bool) or not isinstance(cap, int) or cap < 1):
            raise BehaviourError(f"capacity: expected a positive integer or null, got {cap!r}")

    def sampler(self) -> Sampler:
        if isinstance(self.latency, float) and not math.isfinite(self.latency):
            raise BehaviourError(f"latency: expected finite seconds, got {self.latency!r}")
        try:
            return sampler(self.latency)[0]
        except DistributionError as exc:
            raise BehaviourError(f"latency: {exc}") from None

    def updated(self, raw: Any) -> Behaviour:
        """This behaviour with the fields of a ``PUT /behaviour`` body replaced."""
        if not isinstance(raw, Mapping):
            raise BehaviourError(f"expected a JSON object with {', '.join(KEYS)}")
        unknown = sorted(set(raw) - set(KEYS))
        if unknown:
            raise BehaviourError(f"{unknown[0]}: unknown field (known: {', '.join(KEYS)})")
        return replace(self, **{KEYS[key]: value for key, value in raw.items()})

    def to_json(self) -> dict[str, Any]:
        return {
            "latency": self.latency,
            "errorRate": self.error_rate,
            "errorStatus": self.error_status,
            "capacity": self.capacity,
            "latencyFactor": self.latency_factor,
            "latencyAdd": self.latency_add,
            "contention": self.contention,
        }

    def service_time(self, sample: float, others: int) -> float:
        """Seconds to serve a request whose latency sample is ``sample`` when ``others``
        requests are already in service."""
        return sample * self.latency_factor * (1 + self.contention * others) + self.latency_add


def parse_latency(text: str) -> Any:
    """``--latency``: seconds (``0.01``) or JSON (``{"dist": "exponential", "mean": 0.01}``)."""
    try:
        value = float(text)
    except ValueError:
        pass
    else:
        if not math.isfinite(value) or value < 0:
            raise BehaviourError(f"latency: expected seconds >= 0, got {text!r}")
        return value
    try:
        spec = json.loads(text)
    except json.JSONDecodeError:
        raise BehaviourError(
            f"latency: expected seconds or a JSON distribution such as "
            f'{{"dist": "exponential", "mean": 0.01}}, got {text!r}'
        ) from None
    Behaviour(latency=spec)
    return spec


class Gate:
    """At most ``limit`` holders at once (None: no limit); waiters are served first come first."""

    def __init__(self, limit: int | None) -> None:
        self.limit = limit
        self.busy = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def queued(self) -> int:
        return sum(1 for waiter in self._waiters if not waiter.done())

    def _free(self) -> bool:
        return self.limit is None or self.busy < self.limit

    async def __aenter__(self) -> None:
        if self._free() and not self._waiters:
            self.busy += 1
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self._release()  # the slot was handed over just as we were cancelled
            raise

    async def __aexit__(self, *exc: object) -> None:
        self._release()

    def _release(self) -> None:
        self.busy -= 1
        self._wake()

    def _wake(self) -> None:
        while self._waiters and self._free():
            waiter = self._waiters.popleft()
            if not waiter.done():
                self.busy += 1
                waiter.set_result(None)

    def set_limit(self, limit: int | None) -> None:
        self.limit = limit
        self._wake()
