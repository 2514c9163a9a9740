"""The request lifecycle (mesh.core.lifecycle) as transcripts: event in, command out.

These are the decisions the proxy and the simulator both execute: attempts, retries and where
they go, backoff, per-try and overall timeouts, the retry budget, breaker feedback and the
final answer. A property checks that any script of upstream behaviour ends in exactly one
answer with every attempt reported once.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mesh.core.lifecycle import (
    Abandoned,
    Answer,
    Deliver,
    Delivered,
    Failed,
    Lifecycle,
    LifecycleError,
    Responded,
    Send,
    State,
    Wait,
)
from mesh.core.policies import Failure
from mesh.core.routing import Decision
from tests.core.builders import Client, app, compile_docs

IPS = ["10.0.0.1", "10.0.0.2", "10.0.0.3"]


def client(ips: list[str] = IPS, **annotations: str) -> Client:
    notes = {f"simmesh.io/{k.replace('_', '-')}": v for k, v in annotations.items()}
    return Client(compile_docs(app("web", ips=ips, annotations=notes)))


def begin(c: Client, *, method: str = "GET", replayable: bool = True, now: float = 0.0) -> Any:
    decision = c.http("web.demo.mesh", method=method, now=now)
    life = Lifecycle(c.engine, decision, method=method, replayable=replayable, rng=c.rng, now=now)
    return life, life.start()


def idle(c: Client) -> bool:
    """Every attempt was reported: nothing in flight, no request active or retrying."""
    state = c.engine.state
    return (
        all(v == 0 for v in state.inflight.values())
        and all(v == 0 for v in state.active.values())
        and all(v == 0 for v in state.retrying.values())
    )


def test_a_successful_request_is_one_attempt_delivered() -> None:
    c = client()
    life, command = begin(c)
    assert isinstance(command, Send) and command.attempt == 1 and command.timeout is None
    assert c.engine.state.inflight[command.endpoint.key] == 1
    assert life.handle(Responded(200), 0.01) == Deliver(200)
    assert c.engine.state.inflight[command.endpoint.key] == 1  # the body is still on its way
    assert life.handle(Delivered(), 0.02) is None
    assert life.done and life.tries == 1 and idle(c)


def test_retries_go_to_untried_endpoints_then_the_last_5xx_is_relayed() -> None:
    c = client(retry_attempts="2")
    life, first = begin(c)
    second = life.handle(Responded(503), 0.1)
    assert isinstance(second, Send) and second.attempt == 2
    third = life.handle(Failed(Failure.RESET, "closed"), 0.2)
    assert isinstance(third, Send) and third.attempt == 3
    assert len({first.endpoint, second.endpoint, third.endpoint}) == 3
    assert life.handle(Responded(503), 0.3) == Deliver(503)
    assert life.handle(Delivered(), 0.4) is None
    assert idle(c)


@pytest.mark.parametrize(
    ("failure", "status", "reason"),
    [
        (Failure.CONNECT, 502, "upstream-connect-failed"),
        (Failure.RESET, 502, "upstream-reset"),
        (Failure.TIMEOUT, 504, "upstream-timeout"),
    ],
)
def test_the_last_failure_names_the_answer(failure: Failure, status: int, reason: str) -> None:
    c = client()
    life, _ = begin(c)
    answer = life.handle(Failed(failure, "boom"), 0.1)
    assert answer == Answer(status, reason, "demo/web: boom")
    assert life.done and idle(c)


def test_non_idempotent_requests_retry_only_what_was_never_sent() -> None:
    c = client(retry_attempts="2")
    life, _ = begin(c, method="POST")
    assert life.handle(Responded(503), 0.1) == Deliver(503)
    life.handle(Delivered(), 0.1)
    life, _ = begin(c, method="POST")
    assert isinstance(life.handle(Failed(Failure.CONNECT), 0.1), Send)


def test_a_streamed_body_partly_sent_is_a_reset_not_a_connect_failure() -> None:
    c = client(retry_attempts="2")
    life, _ = begin(c, replayable=False)
    answer = life.handle(Failed(Failure.CONNECT, "mid-upload", partial=True), 0.1)
    assert isinstance(answer, Answer) and answer.reason == "upstream-reset"
    assert life.outcome is not None and life.outcome.failure is Failure.RESET


def test_with_every_endpoint_tried_a_retry_goes_back_to_one() -> None:
    c = client(ips=IPS[:1], retry_attempts="1")
    life, first = begin(c)
    again = life.handle(Failed(Failure.CONNECT), 0.1)
    assert isinstance(again, Send) and again.endpoint is first.endpoint


def test_backoff_waits_a_jittered_exponential_capped_delay() -> None:
    c = client(retry_attempts="5", retry_backoff="100ms")
    life, _ = begin(c)
    delays = []
    for i in range(5):
        wait = life.handle(Responded(503), float(i))
        assert isinstance(wait, Wait) and life.state is State.WAITING
        delays.append(wait.delay)
        assert isinstance(life.resume(float(i) + wait.delay), Send)
    caps = [0.1, 0.2, 0.4, 0.8, 1.0]
    assert all(0 <= d <= cap for d, cap in zip(delays, caps, strict=True))
    assert life.handle(Responded(503), 9.0) == Deliver(503)


def test_the_request_timeout_caps_each_try_and_ends_the_request() -> None:
    c = client(retry_attempts="5", timeout="2s", request_timeout="3s")
    life, first = begin(c)
    assert first.timeout == 2.0
    second = life.handle(Failed(Failure.TIMEOUT), 2.0)
    assert isinstance(second, Send) and second.timeout == pytest.approx(1.0)
    answer = life.handle(Failed(Failure.TIMEOUT), 3.0)
    assert isinstance(answer, Answer) and (answer.status, answer.reason) == (504, "request-timeout")
    assert "3s" in answer.detail and idle(c)


def test_a_backoff_past_the_request_timeout_ends_the_request() -> None:
    c = client(retry_attempts="5", retry_backoff="10s", request_timeout="1s")
    life, _ = begin(c)
    wait = life.handle(Responded(503), 0.5)
    assert isinstance(wait, Wait)
    answer = life.resume(2.0)
    assert isinstance(answer, Answer) and answer.reason == "request-timeout"
    assert idle(c)


def test_the_retry_budget_bounds_concurrent_retries() -> None:
    c = client(retry_attempts="1", retry_budget="20%")
    lives = [begin(c, now=0.0) for _ in range(10)]
    commands = [life.handle(Responded(503), 0.1) for life, _ in lives]
    # 10 active requests, 20% of them = 2, but at least 3 may retry at once.
    assert [type(x).__name__ for x in commands] == ["Send"] * 3 + ["Deliver"] * 7
    for (life, _), command in zip(lives, commands, strict=True):
        if isinstance(command, Send):
            life.handle(Responded(200), 0.2)
        life.handle(Delivered(), 0.3)
    assert idle(c)


@pytest.mark.parametrize("at", ["trying", "waiting", "delivering"])
def test_a_client_going_away_ends_the_attempt_neutral(at: str) -> None:
    c = client(retry_attempts="2", retry_backoff="1s", circuit_breaker="ConsecutiveFailures() >= 1")
    life, _ = begin(c)
    if at == "waiting":
        assert isinstance(life.handle(Responded(503), 0.1), Wait)
    if at == "delivering":
        assert isinstance(life.handle(Responded(200), 0.1), Deliver)
    assert life.handle(Abandoned(), 0.2) is None
    assert life.done and idle(c)
    breakers = c.engine.state.breakers.values()
    assert sum(b.state.value != "closed" for b in breakers) == (1 if at == "waiting" else 0)


def test_a_client_gone_before_the_first_try_releases_the_decisions_pick() -> None:
    c = client()
    decision = c.http("web.demo.mesh")
    life = Lifecycle(c.engine, decision, method="GET", replayable=True, rng=c.rng, now=0.0)
    assert c.engine.state.inflight[decision.endpoint.key] == 1
    assert life.handle(Abandoned(), 0.1) is None
    assert life.done and life.tries == 0 and idle(c)


def test_a_denied_decision_is_answered_at_once() -> None:
    c = client()
    decision = c.http("nowhere.demo.mesh")
    life = Lifecycle(c.engine, decision, method="GET", replayable=True, rng=c.rng, now=0.0)
    assert life.start() == Answer(404, "unknown-host", decision.detail)
    assert life.done and life.tries == 0


def test_a_body_broken_before_any_byte_reached_the_client_is_answered() -> None:
    c = client()
    life, _ = begin(c)
    life.handle(Responded(200), 0.1)
    answer = life.handle(Delivered(Failure.TIMEOUT, "stalled", started=False), 0.2)
    assert answer == Answer(504, "upstream-timeout", "stalled")
    assert idle(c)


def test_a_flow_connects_then_delivers() -> None:
    c = client(retry_attempts="1")
    decision: Decision = c.http("web.demo.mesh")
    life = Lifecycle(c.engine, decision, method="", replayable=False, rng=c.rng, now=0.0)
    life.start()
    assert isinstance(life.handle(Failed(Failure.CONNECT), 0.1), Send)
    assert life.handle(Responded(None), 0.2) == Deliver(None)
    life.handle(Delivered(Failure.RESET), 5.0)
    assert idle(c)


def test_events_out_of_order_are_driver_bugs() -> None:
    life, _ = begin(client())
    with pytest.raises(LifecycleError, match="the end of a delivery in state trying"):
        life.handle(Delivered(), 0.1)
    with pytest.raises(LifecycleError, match="resume in state trying"):
        life.resume(0.1)


upstream = st.one_of(
    st.sampled_from([200, 204, 404, 500, 502, 503, 504]).map(Responded),
    st.sampled_from(list(Failure)).map(Failed),
)


@given(
    script=st.lists(upstream, min_size=1, max_size=8),
    attempts=st.integers(0, 4),
    method=st.sampled_from(["GET", "POST"]),
    replayable=st.booleans(),
    backoff=st.booleans(),
    abandon=st.integers(0, 10),
)
@settings(max_examples=300, deadline=None)
def test_any_script_ends_in_exactly_one_answer_with_every_attempt_reported(
    script: list[Any], attempts: int, method: str, replayable: bool, backoff: bool, abandon: int
) -> None:
    notes = {"retry_attempts": str(attempts)}
    if backoff:
        notes["retry_backoff"] = "50ms"
    c = client(**notes)
    life, command = begin(c, method=method, replayable=replayable)
    now, steps = 0.0, 0
    events = iter(script * 10)
    while not life.done:
        now += 0.01
        steps += 1
        if steps == abandon:
            assert life.handle(Abandoned(), now) is None
            break
        if isinstance(command, Send):
            command = life.handle(next(events), now)
        elif isinstance(command, Wait):
            command = life.resume(now + command.delay)
        elif isinstance(command, Deliver):
            command = life.handle(Delivered(), now)
        else:
            assert isinstance(command, Answer)
            assert command.status in (502, 504)
    assert life.done and idle(c)
    assert 1 <= life.tries <= attempts + 1
