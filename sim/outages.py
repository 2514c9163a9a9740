"""Pods and nodes that go down: what a connect and an attempt in flight come to.

Two ways to be down, as a real network shows them:

- ``refused``: the pod's process is gone but its node answers. A connect is refused after one
  round trip (``Failure.CONNECT``, retried by the core like any connect failure). Attempts in
  flight on the pod are reset when it dies: the proxy sees ``Failure.RESET`` one network hop
  later (retried only when the request may be replayed).
- ``unreachable``: the node is gone (or cut off); nothing answers. A connect waits for the
  proxy's connect timeout (``--connect-timeout``, 5 s by default) before it fails. Attempts in
  flight never get an answer: they end at their per-try timeout (``Failure.TIMEOUT``), or,
  when the service has none, when the node is back: its new kernel resets the connection
  (``Failure.RESET``; still in flight at the end of the run if it never comes back).

An attempt that was already answered, or had already timed out, before the pod went down is
not touched.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from mesh.core.policies import Failure

__all__ = ["Cut", "InFlight", "Outage", "connect_failure_delay", "cut"]


class Outage(StrEnum):
    REFUSED = "refused"
    UNREACHABLE = "unreachable"


@dataclass(slots=True)
class InFlight:
    """An attempt sent to a pod: who sent it (``owner`` and its ``epoch``, which changes when
    the attempt's outcome is replaced), when it left the proxy and when its answer is due."""

    owner: Any
    epoch: int
    sent: float
    back: float  # when its answer reaches the proxy
    timeout: float | None
    node: str  # the proxy's node


@dataclass(frozen=True, slots=True)
class Cut:
    """An attempt the outage ends: its new outcome, due at ``at`` (None: never answered)."""

    attempt: InFlight
    failure: Failure
    at: float | None


def connect_failure_delay(outage: Outage, *, round_trip: float, connect_timeout: float) -> float:
    """How long a connect to a pod that is down takes to fail."""
    return connect_timeout if outage is Outage.UNREACHABLE else round_trip


def cut(attempts: list[InFlight], *, at: float, outage: Outage, hop: float) -> list[Cut]:
    """The attempts still waiting for their pod when it goes down at ``at``, with the failure
    each now comes to; ``hop`` is the one-way delay from the pod back to the proxy."""
    out = []
    for attempt in attempts:
        if attempt.back <= at:
            continue  # answered before the pod went down
        deadline = attempt.sent + attempt.timeout if attempt.timeout is not None else None
        if deadline is not None and deadline <= at:
            continue  # already timed out
        if outage is Outage.REFUSED:
            out.append(Cut(attempt, Failure.RESET, at + hop))
        else:
            out.append(Cut(attempt, Failure.TIMEOUT, deadline))
    return out
