"""One HTTP request driven through the core: decide, attempt, retry, report.

Both HTTP front ends (HTTP/1.1 and h2c) turn a request into an :class:`Inbound` and call
:meth:`Forwarder.exchange`, which does exactly what docs/semantics.md says the core decides:

1. ``engine.decide_http`` with the snapshot the request started on; a denial becomes a local
   answer (status, reason, detail) and nothing is sent upstream.
2. Attempts: send to the decided endpoint; every attempt's outcome is reported once with
   ``engine.finish``; after a failed attempt ``engine.retry`` names the next endpoint or
   None. Upstream refused/reset after retries -> 502, timed out -> 504.
3. A successful attempt's response is handed back to the front end, which relays its body
   and then calls :meth:`Forwarder.complete`: only then is that attempt finished in the
   engine (so in-flight counts cover the body), metrics counted and the span ended.

Nothing here chooses an endpoint, counts a retry budget or judges a failure: the core does.
"""

from __future__ import annotations

import random
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from mesh.core.policies import FAILURE_ANSWERS, Failure, Outcome
from mesh.core.routing import Decision, Endpoint, Engine
from mesh.proxy.body import Body, ClientGone
from mesh.proxy.headers import request_headers
from mesh.proxy.tracing import Span
from mesh.proxy.upstream import Response, Upstream, UpstreamError

if TYPE_CHECKING:
    from mesh.proxy.proxy import Proxy, Snapshot

T = TypeVar("T")
_NEUTRAL = Outcome(status=None)


class Inbound:
    """A request as a front end received it."""

    __slots__ = ("body", "headers", "host", "items", "listener", "method", "path", "peer", "proto")

    def __init__(
        self,
        *,
        listener: int,
        method: str,
        host: str,
        path: str,
        headers: Mapping[str, str],
        items: Iterable[tuple[str, str]],
        peer: str,
        body: Body,
        proto: str = "http",
    ) -> None:
        self.listener = listener
        self.method = method
        self.host = host
        self.path = path
        self.headers = headers  # case-insensitive lookups (lowercase names)
        self.items = items  # every header, for forwarding
        self.peer = peer
        self.body = body
        self.proto = proto


class Exchange:
    """One request's progress: the decision, the attempts, and what is answered."""

    __slots__ = (
        "attempt_open",
        "decision",
        "detail",
        "endpoint",
        "inbound",
        "outcome",
        "reason",
        "response",
        "retry_after",
        "snapshot",
        "span",
        "started",
        "status",
        "tries",
    )

    def __init__(self, snapshot: Snapshot | None, inbound: Inbound, started: float) -> None:
        self.snapshot = snapshot
        self.inbound = inbound
        self.started = started
        self.decision: Decision | None = None
        self.span: Span | None = None
        self.endpoint: Endpoint | None = None
        self.response: Response | None = None
        self.outcome = _NEUTRAL
        self.attempt_open = False  # an attempt awaits engine.finish
        self.tries = 0
        self.status = 0  # set for local answers
        self.reason = "forwarded"
        self.detail = ""
        self.retry_after = 0.0

    def answer(self, status: int, reason: str, detail: str) -> Exchange:
        self.status = status
        self.reason = reason
        self.detail = detail
        return self

    @property
    def service(self) -> str:
        d = self.decision
        return d.route.service if d is not None and d.route is not None else "-"


class Forwarder:
    def __init__(self, proxy: Proxy, *, http: Upstream, h2c: Upstream) -> None:
        self.proxy = proxy
        self.metrics = proxy.metrics
        self.rng = random.Random()
        self._http = http
        self._h2c = h2c
        self._buffer_limit = proxy.options.buffer_limit
        self._body_timeout = proxy.options.body_timeout
        self.upstream_timeout = proxy.options.upstream_timeout  # when the service sets none

    def decide(self, inbound: Inbound) -> Exchange:
        """The core's verdict; a denied request comes back answered (``ex.status`` set)."""
        snapshot = self.proxy.snapshot
        now = time.monotonic()
        ex = Exchange(snapshot, inbound, now)
        if snapshot is None:
            return ex.answer(503, "no-config", "the proxy has not received a config yet")
        d = ex.decision = snapshot.engine.decide_http(
            listener=inbound.listener,
            host=inbound.host,
            method=inbound.method,
            path=inbound.path,
            headers=inbound.headers,
            source=snapshot.router.source_identity(inbound.peer),
            now=now,
            rng=self.rng,
        )
        if not d.allowed:
            self.metrics.deny(ex.service, "http", d.reason.value)
            ex.retry_after = d.retry_after
            return ex.answer(d.status or 503, d.reason.value, d.detail)
        ex.endpoint = d.endpoint
        ex.attempt_open = True
        return ex

    async def exchange(self, inbound: Inbound) -> Exchange:
        inbound.body.timeout = self._body_timeout
        ex = self.decide(inbound)
        d = ex.decision
        if ex.status or d is None:
            return ex
        try:
            await self._attempts(ex, d)
        except ClientGone as exc:
            self._abandon(ex)
            if inbound.body.timed_out:
                self.metrics.count("client_timeouts", "body")
                self.metrics.count("bad_requests", "408")
                return ex.answer(408, "request-body-timeout", str(exc))
            return ex.answer(499, "client-gone", f"the client went away: {exc}")
        except BaseException:
            self._abandon(ex)
            self.complete(ex, status=499, sent=0, client_gone=True)
            raise
        return ex

    def _abandon(self, ex: Exchange) -> None:
        """The client went away: not the upstream's fault, so the attempt ends neutral."""
        ex.outcome = _NEUTRAL
        self.finish_attempt(ex, _NEUTRAL)
        if ex.response is not None:
            ex.response.close()
            ex.response = None

    async def _attempts(self, ex: Exchange, d: Decision) -> None:
        assert d.cluster is not None and d.route is not None and ex.endpoint is not None
        inbound = ex.inbound
        body = inbound.body
        await body.buffer(self._buffer_limit)
        scheme = d.cluster.scheme
        h2 = scheme == "h2c"
        upstream = self._h2c if h2 else self._http
        span = ex.span = self.proxy.tracer.start(
            inbound.headers.get("traceparent"),
            name=f"{inbound.method} {d.route.service}",
            attributes={"http.request.method": inbound.method, "server.address": inbound.host},
        )
        headers = request_headers(
            inbound.items,
            peer=inbound.peer,
            host=inbound.host,
            proto=inbound.proto,
            traceparent=span.traceparent,
            h2=h2,
        )
        server_name = self.proxy.server_name(d.cluster.service) if scheme == "https" else None
        engine = ex.snapshot.engine if ex.snapshot is not None else None
        assert engine is not None
        tried = [ex.endpoint]
        while True:
            endpoint = ex.endpoint
            ex.tries += 1
            started = time.monotonic()
            response = None
            try:
                response = await upstream.send(
                    scheme=scheme,
                    ip=endpoint.ip,
                    port=endpoint.port,
                    method=inbound.method,
                    authority=inbound.host,
                    path=inbound.path,
                    headers=headers,
                    body=body,
                    timeout=self.timeout(d),
                    server_name=server_name,
                )
                outcome = Outcome(status=response.status, latency=time.monotonic() - started)
            except UpstreamError as exc:
                if body.client_error:
                    raise ClientGone(str(exc)) from exc
                failure = exc.failure
                if failure is Failure.CONNECT and body.touched and not body.replayable:
                    failure = Failure.RESET  # part of the body went out: not "never sent"
                outcome = Outcome(None, failure, time.monotonic() - started)
                ex.detail = exc.detail
                self.metrics.failure(d.route.service, failure.value)
            self.metrics.attempt(d.route.service, outcome.latency)
            ex.outcome = outcome
            ex.response = response
            if not outcome.failed:
                return  # finished by complete() once the body is relayed
            self.finish_attempt(ex, outcome)
            nxt = engine.retry(
                d,
                tries=ex.tries,
                tried=tried,
                method=inbound.method,
                replayable=body.replayable,
                outcome=outcome,
                now=time.monotonic(),
                rng=self.rng,
            )
            if nxt is None:
                if response is None:
                    assert outcome.failure is not None
                    status, reason = FAILURE_ANSWERS[outcome.failure]
                    ex.answer(status, reason, f"{d.route.service}: {ex.detail}")
                return
            if response is not None:
                response.close()
                ex.response = None
            self.metrics.retry(d.route.service)
            ex.endpoint = nxt
            ex.attempt_open = True
            tried.append(nxt)

    def timeout(self, d: Decision) -> float:
        """The per-try timeout: the service's, else ``--upstream-timeout``."""
        timeout = d.policy.timeout
        return self.upstream_timeout if timeout is None else timeout

    def finish_attempt(self, ex: Exchange, outcome: Outcome) -> None:
        if not ex.attempt_open:
            return
        ex.attempt_open = False
        assert ex.snapshot is not None and ex.decision is not None and ex.endpoint is not None
        ex.snapshot.engine.finish(ex.decision, ex.endpoint, outcome, time.monotonic())

    def complete(
        self,
        ex: Exchange,
        *,
        status: int,
        sent: int,
        failure: Failure | None = None,
        client_gone: bool = False,
    ) -> None:
        """The answer is out (or abandoned): finish the attempt, count, log, end the span."""
        if failure is not None:
            ex.outcome = Outcome(ex.outcome.status, failure, ex.outcome.latency)
            self.metrics.failure(ex.service, failure.value)
        self.finish_attempt(ex, ex.outcome)
        elapsed = time.monotonic() - ex.started
        service = ex.service
        code = 499 if client_gone else status
        self.metrics.request(service, code, ex.inbound.method, elapsed)
        self.metrics.transferred(service, "http", ex.inbound.body.received, sent)
        if ex.span is not None:
            ex.span.end(status=code, error=failure.value if failure is not None else None)
        log = self.proxy.access_log
        if log is not None:
            log.write(self._record(ex, code, sent, elapsed, failure))

    def _record(
        self, ex: Exchange, code: int, sent: int, elapsed: float, failure: Failure | None
    ) -> dict[str, Any]:
        inbound = ex.inbound
        endpoint = ex.endpoint
        return {
            "kind": "http",
            "proto": inbound.proto,
            "listener": inbound.listener,
            "client": inbound.peer,
            "method": inbound.method,
            "host": inbound.host,
            "path": inbound.path,
            "status": code,
            "reason": ex.reason if failure is None else f"upstream-{failure.value}",
            "service": ex.service,
            "endpoint": endpoint.key if endpoint is not None else None,
            "tries": ex.tries,
            "bytes_in": inbound.body.received,
            "bytes_out": sent,
            "duration_ms": round(elapsed * 1000.0, 3),
            "trace_id": ex.span.trace_id if ex.span is not None else None,
            "config": ex.snapshot.version if ex.snapshot is not None else None,
        }


async def connect_attempts(
    engine: Engine,
    decision: Decision,
    connect: Callable[[Endpoint], Awaitable[T]],
    *,
    rng: random.Random,
    on_failure: Callable[[UpstreamError], None] | None = None,
) -> tuple[T, Endpoint, float]:
    """Connect to the decided endpoint, retrying where the core says (connection flows and
    upgrades). Returns (connection, endpoint, connect latency); the caller finishes that
    attempt when the flow ends. Raises the last UpstreamError when the core stops retrying.
    """
    assert decision.endpoint is not None
    endpoint = decision.endpoint
    tried = [endpoint]
    tries = 1
    while True:
        started = time.monotonic()
        try:
            connection = await connect(endpoint)
        except UpstreamError as exc:
            outcome = Outcome(None, exc.failure, time.monotonic() - started)
            engine.finish(decision, endpoint, outcome, time.monotonic())
            if on_failure is not None:
                on_failure(exc)
            nxt = engine.retry(
                decision,
                tries=tries,
                tried=tried,
                method="",
                replayable=False,
                outcome=outcome,
                now=time.monotonic(),
                rng=rng,
            )
            if nxt is None:
                raise
            endpoint = nxt
            tried.append(nxt)
            tries += 1
            continue
        except BaseException:
            engine.finish(decision, endpoint, _NEUTRAL, time.monotonic())
            raise
        return connection, endpoint, time.monotonic() - started
