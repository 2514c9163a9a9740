"""One request's life after the routing decision, as commands and events (sans I/O).

The routing :class:`~mesh.core.routing.Engine` decides where a request may go. What happens next
(the attempts, which failures are retried and where, the backoff between tries, the per-try
and overall timeouts, the retry budget, what each attempt tells the circuit breakers and the
balancers, and the final answer) is decided here, once, for every driver: the node proxy runs
it with real sockets and wall-clock time, the simulator with simulated pods and simulated
time. A driver never decides any of it; it only performs commands and reports events::

    life = Lifecycle(engine, decision, method="GET", replayable=True, rng=rng, now=now)
    command = life.start()
    while command is not None:
        Send(endpoint, timeout)    -> try the endpoint; then handle(Responded(status) or
                                      Failed(failure, detail), now)
        Wait(delay)                -> sleep; then resume(now)
        Deliver(status)            -> relay the response (or run the flow); then
                                      handle(Delivered(failure), now) when it is over
        Answer(status, reason, ..) -> answer the client yourself; the request is over

and :class:`Abandoned` whenever the client goes away. Each attempt is reported to the engine
exactly once (``Engine.finish``), so in-flight counts and breakers stay exact.

Transitions (``State``)::

    IDLE --start--> TRYING --Responded(ok)--> DELIVERING --Delivered--> DONE
                       |  \\--Responded(5xx)/Failed--> retry? --yes--> TRYING (or WAITING)
                       |                                   \\--no---> DELIVERING (5xx) / DONE
                    WAITING --resume--> TRYING
    any --Abandoned--> DONE

TCP and UDP flows and upgrades use the same machine with ``method=""`` and
``replayable=False`` (only connect failures are retried) and ``Responded(None)`` for "connected".
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Final

from mypy_extensions import mypyc_attr

from mesh.core.policies import FAILURE_ANSWERS, Failure, Outcome, Rng
from mesh.core.routing import Decision, Endpoint, Engine

# -- commands (lifecycle -> driver) -------------------------------------------------------------
# Plain slotted dataclasses, not frozen ones: a frozen dataclass costs three times as much to
# build, and two commands are built for every request the proxy or the simulator runs. The hot
# ones write their own __init__ (dataclass keeps it): compiled, the one dataclass generates
# runs interpreted, about ten times the cost of a native one.


@dataclass(slots=True)
class Send:
    """Try ``endpoint``; give up on it after ``timeout`` seconds (None: no limit)."""

    endpoint: Endpoint
    timeout: float | None
    attempt: int  # 1 for the first try

    def __init__(self, endpoint: Endpoint, timeout: float | None, attempt: int) -> None:
        self.endpoint = endpoint
        self.timeout = timeout
        self.attempt = attempt


@dataclass(slots=True)
class Wait:
    """Back off for ``delay`` seconds, then call :meth:`Lifecycle.resume`."""

    delay: float


@dataclass(slots=True)
class Deliver:
    """Relay the last attempt's response (``status``; None: a connected flow) to the client,
    then report :class:`Delivered`."""

    status: int | None

    def __init__(self, status: int | None) -> None:
        self.status = status


@dataclass(slots=True)
class Answer:
    """Answer the client with this status and reason; nothing (more) goes upstream."""

    status: int
    reason: str
    detail: str


Command = Send | Wait | Deliver | Answer


# -- events (driver -> lifecycle) ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Responded:
    """The attempt got response headers (or, for a flow, connected: ``status`` None)."""

    status: int | None


@dataclass(frozen=True, slots=True)
class Failed:
    """The attempt failed before a response. ``partial``: part of the request went out."""

    failure: Failure
    detail: str = ""
    partial: bool = False


@dataclass(frozen=True, slots=True)
class Delivered:
    """The response (or flow) is over; ``failure`` when the upstream broke it. ``started``:
    some of it reached the client (otherwise the failure can still be answered)."""

    failure: Failure | None = None
    detail: str = ""
    started: bool = True


@dataclass(frozen=True, slots=True)
class Abandoned:
    """The client went away: not the upstream's fault, the attempt ends neutral."""


Event = Responded | Failed | Delivered | Abandoned


class State(Enum):
    IDLE = "idle"
    TRYING = "trying"
    WAITING = "waiting"
    DELIVERING = "delivering"
    DONE = "done"


_NEUTRAL: Final = Outcome(status=None)
# The states as module constants: an Enum member lookup costs more than the comparison, and
# the machine compares states several times per request. Final: compiled, each is read from a
# C static, not looked up in the module's globals at every use.
_IDLE: Final = State.IDLE
_TRYING: Final = State.TRYING
_WAITING: Final = State.WAITING
_DELIVERING: Final = State.DELIVERING
_DONE: Final = State.DONE


@mypyc_attr(native_class=False)  # a native class cannot derive from RuntimeError
class LifecycleError(RuntimeError):
    """An event the current state cannot take: a driver bug, never a user's."""


@mypyc_attr(allow_interpreted_subclasses=True)  # the simulator's flights are lifecycles
class Lifecycle:
    # What most requests never change is a class default (no slots): building a lifecycle is
    # part of every request's cost in the proxy and in the simulator. (The state is set in
    # __init__: an Enum member is no default mypyc can compile.)
    state: State
    tries = 0  # attempts sent
    endpoint: Endpoint | None = None  # the attempt in progress or delivered
    pending: Endpoint | None = None  # the next attempt, while backing off
    timeout: float | None = None  # the current attempt's
    outcome: Outcome | None = None  # the last attempt's
    answer: Answer | None = None
    detail = ""
    _open = False  # the current attempt awaits Engine.finish
    _retrying = False  # counted in the route's active retries

    def __init__(
        self,
        engine: Engine,
        decision: Decision,
        *,
        method: str,
        replayable: bool,
        rng: Rng,
        now: float,
        default_timeout: float | None = None,
    ) -> None:
        """``default_timeout``: the per-try timeout of services that set none (the proxy's
        ``--upstream-timeout``)."""
        self.state = _IDLE
        self.engine = engine
        self.decision = decision
        self.method = method
        self.replayable = replayable
        self.rng = rng
        self.started = self.sent_at = now
        self.default_timeout = default_timeout
        policy = decision.policy
        limit = policy.request_timeout
        self.deadline = now + limit if limit is not None else None
        self.attempts: list[tuple[Endpoint, Outcome]] = []  # each attempt as reported
        retry = policy.retry
        self._counted = retry is not None and retry.budget is not None  # for the retry budget

    # -- the driver's calls -------------------------------------------------------------------

    def start(self) -> Command:
        """The first command: the first attempt, or the decision's own answer."""
        if self.state is not _IDLE:
            raise LifecycleError(f"start in state {self.state.value}")
        d = self.decision
        if not d.allowed or d.endpoint is None:
            self._counted = False
            return self._finish_with(d.status or 503, d.reason.value, d.detail)
        if self._counted:
            self.engine.request_started(d)
        return self._send(d.endpoint, self.started)

    def resume(self, now: float) -> Command:
        """After a :class:`Wait`: the next attempt."""
        self._expect(_WAITING, "resume")
        endpoint = self.pending
        assert endpoint is not None
        self.pending = None
        return self._send(endpoint, now)

    def handle(self, event: Event, now: float) -> Command | None:
        """Feed one event; the next command, or None when the request is over."""
        if isinstance(event, Responded):
            return self.responded(event.status, now)
        if isinstance(event, Failed):
            return self.failed(event.failure, now, event.detail, partial=event.partial)
        if isinstance(event, Delivered):
            return self.delivered(now, event.failure, event.detail, started=event.started)
        self.abandoned(now)
        return None

    # The events as methods, for drivers that run one per request (no event object built).

    def responded(self, status: int | None, now: float) -> Command | None:
        """:class:`Responded`."""
        if self.state is not _TRYING:
            raise LifecycleError(f"a response in state {self.state.value}")
        outcome = self.outcome = Outcome(status, None, now - self.sent_at)
        if status is not None and status >= 500:
            return self._failed(outcome, now, response=True)
        self.state = _DELIVERING
        return Deliver(status)

    def failed(
        self, failure: Failure, now: float, detail: str = "", *, partial: bool = False
    ) -> Command | None:
        """:class:`Failed`."""
        if self.state is not _TRYING:
            raise LifecycleError(f"a failure in state {self.state.value}")
        if failure is Failure.CONNECT and partial and not self.replayable:
            failure = Failure.RESET  # some of the body went out: it was sent after all
        self.detail = detail
        return self._failed(Outcome(None, failure, now - self.sent_at), now, response=False)

    def delivered(
        self, now: float, failure: Failure | None = None, detail: str = "", *, started: bool = True
    ) -> Command | None:
        """:class:`Delivered`."""
        if self.state is not _DELIVERING:
            raise LifecycleError(f"the end of a delivery in state {self.state.value}")
        outcome = self.outcome
        assert outcome is not None
        if failure is not None:
            outcome = self.outcome = Outcome(outcome.status, failure, outcome.latency)
        self._finish_attempt(outcome, now)
        if failure is not None and not started:
            status, reason = FAILURE_ANSWERS[failure]
            return self._finish_with(status, reason, detail)
        self._end()
        return None

    def abandoned(self, now: float) -> None:
        """:class:`Abandoned`: the client went away; the attempt ends neutral."""
        d = self.decision
        if self.state is _IDLE and d.allowed and d.endpoint is not None:
            self.engine.finish(d, d.endpoint, _NEUTRAL, now)  # the decision's pick, never tried
        if self.state is _WAITING and self.pending is not None:
            self.engine.finish(d, self.pending, _NEUTRAL, now)
            self.pending = None
        self._finish_attempt(_NEUTRAL, now)
        self._end()

    @property
    def tried(self) -> list[Endpoint]:
        """The endpoints tried so far, in order."""
        out = [endpoint for endpoint, _ in self.attempts]
        if self._open and self.endpoint is not None:
            out.append(self.endpoint)
        return out

    @property
    def done(self) -> bool:
        return self.state is _DONE

    # -- transitions --------------------------------------------------------------------------

    def _send(self, endpoint: Endpoint, now: float) -> Command:
        timeout = self.decision.policy.timeout
        if timeout is None:
            timeout = self.default_timeout
        if self.deadline is not None:
            left = self.deadline - now
            if left <= 0:
                # The request's time ran out while backing off; the engine's pick is undone.
                self.engine.finish(self.decision, endpoint, _NEUTRAL, now)
                return self._finish_with(504, "request-timeout", self._timeout_detail())
            timeout = left if timeout is None else min(timeout, left)
        self.state = _TRYING
        self.endpoint = endpoint
        self.tries += 1
        self.sent_at = now
        self.timeout = timeout
        self._open = True
        return Send(endpoint, timeout, self.tries)

    def _failed(self, outcome: Outcome, now: float, *, response: bool) -> Command | None:
        self.outcome = outcome
        self._finish_attempt(outcome, now)
        nxt = self._next(outcome, now)
        if nxt is not None:
            return self._retry(nxt, now)
        if response:  # the last attempt's own 5xx is relayed as it is
            self.state = _DELIVERING
            return Deliver(outcome.status)
        assert outcome.failure is not None
        status, reason = FAILURE_ANSWERS[outcome.failure]
        late = self.deadline is not None and now >= self.deadline
        if late and outcome.failure is Failure.TIMEOUT:
            return self._finish_with(504, "request-timeout", self._timeout_detail())
        route = self.decision.route
        service = route.service if route is not None else "-"
        return self._finish_with(status, reason, f"{service}: {self.detail}".rstrip(": "))

    def _next(self, outcome: Outcome, now: float) -> Endpoint | None:
        engine, d = self.engine, self.decision
        if self.deadline is not None and now >= self.deadline:
            return None
        if not engine.may_retry(
            d,
            tries=self.tries,
            method=self.method,
            replayable=self.replayable,
            outcome=outcome,
        ):
            return None
        if self._counted and not self._retrying and not engine.retry_budget_allows(d):
            return None
        return engine.next_endpoint(d, tried=self.tried, now=now, rng=self.rng)

    def _retry(self, endpoint: Endpoint, now: float) -> Command:
        if self._counted and not self._retrying:
            self._retrying = True
            self.engine.retry_started(self.decision)
        retry = self.decision.policy.retry
        base = retry.backoff if retry is not None else 0.0
        if base > 0:
            # Exponential with full jitter, capped at ten times the base (Envoy's default).
            ceiling = min(base * 2 ** (self.tries - 1), base * 10)
            self.state = _WAITING
            self.pending = endpoint
            return Wait(self.rng.random() * ceiling)
        return self._send(endpoint, now)

    def _finish_with(self, status: int, reason: str, detail: str) -> Answer:
        self.answer = Answer(status, reason, detail)
        self._end()
        return self.answer

    def _finish_attempt(self, outcome: Outcome, now: float) -> None:
        if self._open:
            self._open = False
            assert self.endpoint is not None
            self.attempts.append((self.endpoint, outcome))
            self.engine.finish(self.decision, self.endpoint, outcome, now)

    def _end(self) -> None:
        if self.state is _DONE:
            return
        if self._counted and self.state is not _IDLE:
            self.engine.request_ended(self.decision, retried=self._retrying)
        self.state = _DONE

    def _timeout_detail(self) -> str:
        limit = self.decision.policy.request_timeout
        return f"no answer within the request timeout ({limit:g}s) after {self.tries} tries"

    def _expect(self, state: State, what: str) -> None:
        if self.state is not state:
            raise LifecycleError(f"{what} in state {self.state.value}")


__all__ = [
    "Abandoned",
    "Answer",
    "Command",
    "Deliver",
    "Delivered",
    "Event",
    "Failed",
    "Lifecycle",
    "LifecycleError",
    "Responded",
    "Send",
    "State",
    "Wait",
]
