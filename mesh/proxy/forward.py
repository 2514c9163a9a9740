"""One HTTP request driven through the core: read, decide, then perform the lifecycle.

Both HTTP front ends (HTTP/1.1 and h2c) turn a request into an :class:`Inbound` and call
:meth:`Forwarder.exchange`, which does exactly what docs/semantics.md says the core decides:

1. The request is read in its canonical form (``mesh.core.request.parse_request``: normalised
   path, combined headers; 400 when ambiguous), then ``engine.decide_http`` decides on it with
   the snapshot the request started on; a denial becomes a local answer (status, reason,
   detail) and nothing is sent upstream. What goes upstream is that canonical request.
2. The core's :class:`~mesh.core.lifecycle.Lifecycle` runs the rest: :meth:`Forwarder._run`
   performs its commands (``Send`` an attempt, ``Wait`` out a backoff, ``Answer`` 502/504 and
   the like, ``Deliver`` a response) and feeds back what happened (``Responded``,
   ``Failed``). Which failure is retried, where, after how long, and what the client finally
   gets is the lifecycle's decision, the same one the simulator executes.
3. A response to deliver is handed back to the front end, which relays its body and then
   calls :meth:`Forwarder.complete`: only then does the lifecycle finish that attempt (so
   in-flight counts cover the body), and metrics, access log and span are written.

Flows (TCP, UDP, WebSocket upgrades) connect through :func:`connect_flow`, the same lifecycle
with only connect failures retried."""

from __future__ import annotations

import asyncio
import math
import random
import ssl
import time
from collections.abc import Awaitable, Callable, Iterable
from http import HTTPStatus
from typing import Any, TypeVar

from mesh.core.lifecycle import (
    Abandoned,
    Answer,
    Command,
    Delivered,
    Failed,
    Lifecycle,
    Responded,
    Send,
    State,
    Wait,
)
from mesh.core.policies import Failure
from mesh.core.request import BadRequest, Request, parse_request
from mesh.core.routing import Decision, Endpoint, Engine, Reason
from mesh.proxy.accesslog import AccessLog
from mesh.proxy.body import Body, ClientGone
from mesh.proxy.headers import request_headers
from mesh.proxy.metrics import Metrics
from mesh.proxy.options import Options
from mesh.proxy.snapshot import Snapshot
from mesh.proxy.tracing import Span, Tracer
from mesh.proxy.upstream import Response, Upstream, UpstreamError

T = TypeVar("T")


class Inbound:
    """A request as a front end received it; ``request`` is its canonical form, read by
    :meth:`Forwarder.decide` (mesh.core.request): what is matched is what is sent."""

    __slots__ = (
        "authority",
        "body",
        "items",
        "listener",
        "method",
        "peer",
        "proto",
        "request",
        "target",
    )

    def __init__(
        self,
        *,
        listener: int,
        method: str,
        target: str,
        items: Iterable[tuple[str, str]],
        peer: str,
        body: Body,
        authority: str | None = None,
        proto: str = "http",
    ) -> None:
        self.listener = listener
        self.method = method
        self.target = target  # as received: path and query
        self.items = items  # every header line as received
        self.authority = authority  # :authority, or the host of an absolute-form target
        self.peer = peer
        self.body = body
        self.proto = proto
        self.request: Request | None = None

    @property
    def host(self) -> str:
        request = self.request
        return request.host if request is not None else (self.authority or "")


class Exchange:
    """One request's progress: the decision, the core's lifecycle, and what is answered."""

    __slots__ = (
        "decision",
        "detail",
        "inbound",
        "life",
        "reason",
        "response",
        "retry_after",
        "snapshot",
        "span",
        "started",
        "status",
    )

    def __init__(self, snapshot: Snapshot | None, inbound: Inbound, started: float) -> None:
        self.snapshot = snapshot
        self.inbound = inbound
        self.started = started
        self.decision: Decision | None = None
        self.life: Lifecycle | None = None
        self.span: Span | None = None
        self.response: Response | None = None
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

    @property
    def endpoint(self) -> Endpoint | None:
        return self.life.endpoint if self.life is not None else None

    @property
    def tries(self) -> int:
        return self.life.tries if self.life is not None else 0


def local_text(ex: Exchange) -> str:
    """The body of the proxy's own answers: ``<status> <phrase>: <reason>: <detail>``."""
    try:
        phrase = HTTPStatus(ex.status).phrase
    except ValueError:
        phrase = "Client Closed Request" if ex.status == 499 else "Error"
    return f"{ex.status} {phrase}: {ex.reason}: {ex.detail}\n"


def retry_after(ex: Exchange) -> int:
    """Whole seconds for the Retry-After header of a 429."""
    return max(1, math.ceil(ex.retry_after))


class Forwarder:
    """Drives requests through the core with the upstream clients; shared by the front ends."""

    def __init__(
        self,
        *,
        options: Options,
        metrics: Metrics,
        tracer: Tracer,
        access_log: AccessLog | None,
        http: Upstream,
        h2c: Upstream,
        upstream_ssl: ssl.SSLContext,
        rng: random.Random,
    ) -> None:
        self.metrics = metrics
        self.upstream_ssl = upstream_ssl  # for tunnels to https upstreams
        self.tracer = tracer
        self.access_log = access_log
        self.rng = rng
        self._http = http
        self._h2c = h2c
        self._buffer_limit = options.buffer_limit
        self._body_timeout = options.body_timeout
        self.upstream_timeout = options.upstream_timeout  # when the service sets none

    def decide(self, inbound: Inbound, snapshot: Snapshot | None) -> Exchange:
        """The core's verdict on ``snapshot`` (the config the request started on); a denied
        request comes back answered (``ex.status`` set), an allowed one with its lifecycle,
        not started yet."""
        now = time.monotonic()
        ex = Exchange(snapshot, inbound, now)
        try:
            request = inbound.request = parse_request(
                inbound.method, inbound.target, inbound.items, authority=inbound.authority
            )
        except BadRequest as exc:
            self.metrics.count("bad_requests", "400")
            return ex.answer(400, Reason.BAD_REQUEST.value, exc.detail)
        if snapshot is None:
            return ex.answer(503, "no-config", "the proxy has not received a config yet")
        d = ex.decision = snapshot.engine.decide_http(
            listener=inbound.listener,
            request=request,
            source=snapshot.router.source_identity(inbound.peer),
            now=now,
            rng=self.rng,
        )
        if not d.allowed:
            self.metrics.deny(ex.service, "http", d.reason.value)
            ex.retry_after = d.retry_after
            return ex.answer(d.status or 503, d.reason.value, d.detail)
        ex.life = Lifecycle(
            snapshot.engine,
            d,
            method=inbound.method,
            replayable=False,
            rng=self.rng,
            now=now,
            default_timeout=self.upstream_timeout,
        )
        return ex

    async def exchange(self, inbound: Inbound, snapshot: Snapshot | None) -> Exchange:
        inbound.body.timeout = self._body_timeout
        ex = self.decide(inbound, snapshot)
        if ex.status or ex.life is None:
            return ex
        try:
            await self._run(ex, ex.life)
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
        if ex.life is not None and not ex.life.done:
            ex.life.handle(Abandoned(), time.monotonic())
        if ex.response is not None:
            ex.response.close()
            ex.response = None

    async def _run(self, ex: Exchange, life: Lifecycle) -> None:
        """Perform the lifecycle's commands until there is a response to relay (``ex.response``)
        or an answer of the proxy's own (``ex.status``)."""
        d = ex.decision
        assert d is not None and d.cluster is not None and d.route is not None
        inbound = ex.inbound
        request = inbound.request
        assert request is not None
        body = inbound.body
        await body.buffer(self._buffer_limit)
        life.replayable = body.replayable
        scheme = d.cluster.scheme
        h2 = scheme == "h2c"
        upstream = self._h2c if h2 else self._http
        service = d.route.service
        span = ex.span = self.tracer.start(
            request.replaced.get("traceparent"),
            name=f"{inbound.method} {service}",
            attributes={"http.request.method": inbound.method, "server.address": request.host},
        )
        headers = request_headers(
            request, peer=inbound.peer, proto=inbound.proto, traceparent=span.traceparent, h2=h2
        )
        snapshot = ex.snapshot
        assert snapshot is not None
        server_name = snapshot.server_name(d.cluster.service) if scheme == "https" else None
        target = request.target
        command: Command | None = life.start()
        while True:
            if isinstance(command, Send):
                if ex.response is not None:  # a retried 5xx: its body is not relayed
                    ex.response.close()
                    ex.response = None
                if command.attempt > 1:
                    self.metrics.retry(service)
                endpoint = command.endpoint
                started = time.monotonic()
                try:
                    response = await upstream.send(
                        scheme=scheme,
                        ip=endpoint.ip,
                        port=endpoint.port,
                        method=inbound.method,
                        authority=request.host,
                        path=target,
                        headers=headers,
                        body=body,
                        timeout=command.timeout,
                        server_name=server_name,
                    )
                except UpstreamError as exc:
                    if body.client_error:
                        raise ClientGone(str(exc)) from exc
                    now = time.monotonic()
                    self.metrics.attempt(service, now - started)
                    event = Failed(exc.failure, exc.detail, partial=body.touched)
                    command = life.handle(event, now)
                    assert life.outcome is not None and life.outcome.failure is not None
                    self.metrics.failure(service, life.outcome.failure.value)
                    continue
                now = time.monotonic()
                self.metrics.attempt(service, now - started)
                ex.response = response
                command = life.handle(Responded(response.status), now)
            elif isinstance(command, Wait):
                await asyncio.sleep(command.delay)
                command = life.resume(time.monotonic())
            elif isinstance(command, Answer):
                if ex.response is not None:
                    ex.response.close()
                    ex.response = None
                ex.answer(command.status, command.reason, command.detail)
                return
            else:  # Deliver: the front end relays ex.response, then calls complete()
                return

    def broken(self, ex: Exchange, failure: Failure, detail: str) -> None:
        """The upstream broke its response before any byte reached the client: the lifecycle
        names the answer (502/504), which the front end sends instead."""
        life = ex.life
        assert life is not None
        command = life.handle(Delivered(failure, detail, started=False), time.monotonic())
        assert isinstance(command, Answer)
        self.metrics.failure(ex.service, failure.value)
        ex.answer(command.status, command.reason, command.detail)

    def complete(
        self,
        ex: Exchange,
        *,
        status: int,
        sent: int,
        failure: Failure | None = None,
        client_gone: bool = False,
    ) -> None:
        """The answer is out (or abandoned): end the lifecycle, count, log, end the span."""
        life = ex.life
        if life is not None and not life.done:
            # Nothing delivered (the client left, or the proxy failed before a response):
            # the attempt ends neutral, not the upstream's fault.
            delivered = not client_gone and life.state is State.DELIVERING
            life.handle(Delivered(failure) if delivered else Abandoned(), time.monotonic())
        if failure is not None:
            self.metrics.failure(ex.service, failure.value)
        elapsed = time.monotonic() - ex.started
        service = ex.service
        code = 499 if client_gone else status
        self.metrics.request(service, code, ex.inbound.method, elapsed)
        self.metrics.transferred(service, "http", ex.inbound.body.received, sent)
        if ex.span is not None:
            ex.span.end(status=code, error=failure.value if failure is not None else None)
        log = self.access_log
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
            "path": inbound.request.target if inbound.request is not None else inbound.target,
            "status": code,
            "reason": ex.reason if failure is None else f"upstream-{failure.value}",
            "service": ex.service,
            "endpoint": endpoint.key if endpoint is not None else None,
            "tries": ex.tries,
            "attempts": [
                [e.key, o.failure.value if o.failure is not None else o.status]
                for e, o in (ex.life.attempts if ex.life is not None else ())
            ],
            "bytes_in": inbound.body.received,
            "bytes_out": sent,
            "duration_ms": round(elapsed * 1000.0, 3),
            "trace_id": ex.span.trace_id if ex.span is not None else None,
            "config": ex.snapshot.version if ex.snapshot is not None else None,
        }


async def connect_with(
    life: Lifecycle,
    connect: Callable[[Endpoint], Awaitable[T]],
    *,
    on_failure: Callable[[UpstreamError], None] | None = None,
) -> T:
    """Start ``life`` and perform its attempts as connects, retrying where the core says.
    Returns the connection (the attempt stays open: the caller reports what came of it);
    raises the last UpstreamError when the lifecycle answers instead (``life.answer``)."""
    command: Command | None = life.start()
    while True:
        if isinstance(command, Wait):
            await asyncio.sleep(command.delay)
            command = life.resume(time.monotonic())
            continue
        if not isinstance(command, Send):  # the decision's own answer: never attempted
            raise UpstreamError(Failure.CONNECT, life.answer.detail if life.answer else "")
        try:
            return await connect(command.endpoint)
        except UpstreamError as exc:
            command = life.handle(Failed(exc.failure, exc.detail), time.monotonic())
            if on_failure is not None:
                on_failure(exc)
            if isinstance(command, Answer):
                raise
        except BaseException:
            life.handle(Abandoned(), time.monotonic())
            raise


async def connect_flow(
    engine: Engine,
    decision: Decision,
    connect: Callable[[Endpoint], Awaitable[T]],
    *,
    rng: random.Random,
    on_failure: Callable[[UpstreamError], None] | None = None,
) -> tuple[T, Lifecycle]:
    """Connect a TCP or UDP flow to the decided endpoint, retrying connect failures where the
    core says. Returns the connection and its lifecycle, which the caller ends with
    ``Delivered`` (or ``Abandoned``) when the flow is over; raises the last UpstreamError."""
    life = Lifecycle(engine, decision, method="", replayable=False, rng=rng, now=time.monotonic())
    connection = await connect_with(life, connect, on_failure=on_failure)
    life.handle(Responded(None), time.monotonic())
    return connection, life
