"""One HTTP request driven through the core: read, decide, then perform the lifecycle.

Both HTTP front ends (HTTP/1.1 and h2c) turn a request into an :class:`Inbound` and hand it
to :meth:`Forwarder.start` with a :class:`Front` to answer through. It does exactly what
docs/semantics.md says the core decides:

1. The request is read in its canonical form (``mesh.core.request.parse_request``: normalised
   path, combined headers; 400 when ambiguous), then ``engine.decide_http`` decides on it with
   the snapshot the request started on; a denial becomes a local answer (status, reason,
   detail) and nothing is sent upstream. What goes upstream is that canonical request.
2. The core's :class:`~mesh.core.lifecycle.Lifecycle` runs the rest: the :class:`Exchange`
   performs its commands (``Send`` an attempt, ``Wait`` out a backoff, ``Answer`` 502/504 and
   the like, ``Deliver`` a response) and feeds back what happened (``Responded``, ``Failed``).
   Which failure is retried, where, after how long, and what the client finally gets is the
   lifecycle's decision, the same one the simulator executes.
3. The exchange ends at the front end: ``front.answer(ex)`` for the proxy's own answer,
   ``front.deliver(ex)`` for a response to relay. The front end writes it and then calls
   :meth:`Forwarder.complete`: only then does the lifecycle finish that attempt (so in-flight
   counts cover the body), and metrics, access log and span are written.

The exchange is driven by callbacks, not a coroutine: the upstream client calls
``responded``/``failed`` (:class:`~mesh.proxy.upstream.Handler`), a backoff is a timer, and
only what must wait for the client (a body to buffer) runs as a task. A request on a pooled
``http`` connection whose answer fits in one read is served with no task or future at all.
:meth:`Forwarder.exchange` is the same as a coroutine (the h2c front end uses it). A client
that goes away mid-way calls :meth:`Exchange.abandon`: the attempt ends neutral, not the
upstream's fault. So does an attempt that could not get an upstream connection under
``--max-upstream-connections`` (:class:`~mesh.proxy.resources.UpstreamLimit`): that is the
proxy's own limit, answered 503 ``upstream-connection-limit`` and never retried.

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
from typing import Any, Final, TypeVar

from mypy_extensions import trait

from mesh.core.gamma import Edits
from mesh.core.lifecycle import (
    Abandoned,
    Answer,
    Command,
    Deliver,
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
from mesh.core.schema import HeaderEdit, host_port
from mesh.proxy.accesslog import AccessLog
from mesh.proxy.body import Body, ClientGone
from mesh.proxy.headers import Outgoing
from mesh.proxy.metrics import Metrics
from mesh.proxy.mirror import Mirrors
from mesh.proxy.mtls import ALPN, ALPN_H2, CLUSTER, TARGET, TunnelTls
from mesh.proxy.options import Options
from mesh.proxy.resources import UpstreamLimit
from mesh.proxy.snapshot import Snapshot
from mesh.proxy.tracing import Span, Tracer
from mesh.proxy.upstream import (
    Call,
    Handler,
    Response,
    TunnelHop,
    Upstream,
    UpstreamError,
    UpstreamRequest,
)

T = TypeVar("T")
_clock: Final = time.monotonic  # compiled: a static, not the module attribute looked up per call
UPSTREAM_LIMIT: Final = "upstream-connection-limit"  # X-Simmesh-Reason of UpstreamLimit's 503
_REDIRECT: Final = Reason.REDIRECT.value


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
        "tunnel",
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
        tunnel: str | None = None,
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
        self.tunnel = tunnel  # through an mTLS tunnel: the identity the peer's certificate proves

    @property
    def host(self) -> str:
        request = self.request
        return request.host if request is not None else (self.authority or "")


@trait
class Front:
    """Where an exchange ends: the front end that answers the client (a mypyc trait, like
    :class:`~mesh.proxy.upstream.Handler`: called natively)."""

    def answer(self, ex: Exchange) -> None:
        """Write the proxy's own answer (``ex.status``, ``ex.reason``), then ``complete``."""
        raise NotImplementedError

    def deliver(self, ex: Exchange) -> None:
        """Relay ``ex.response``, then ``complete``."""
        raise NotImplementedError


class Exchange(Handler):
    """One request's progress: the decision, the core's lifecycle performed by callbacks,
    and what is answered."""

    __slots__ = (
        "call",
        "decision",
        "detail",
        "finished",
        "front",
        "fw",
        "headers",
        "inbound",
        "life",
        "reason",
        "response",
        "retry_after",
        "sent_at",
        "server_name",
        "snapshot",
        "source",
        "span",
        "started",
        "status",
        "task",
        "timer",
        "upstream",
    )

    def __init__(
        self, fw: Forwarder | None, snapshot: Snapshot | None, inbound: Inbound, started: float
    ) -> None:
        self.fw = fw
        self.snapshot = snapshot
        self.inbound = inbound
        self.started = started
        self.decision: Decision | None = None
        self.source: str | None = None  # the caller's identity, for the metrics
        self.life: Lifecycle | None = None
        self.span: Span | None = None
        self.response: Response | None = None
        self.status = 0  # set for local answers
        self.reason = "forwarded"
        self.detail = ""
        self.retry_after = 0.0
        self.front: Front | None = None
        self.finished = False  # complete() ran
        self.call: Call | None = None  # the attempt in flight
        self.timer: asyncio.TimerHandle | None = None  # a backoff
        self.task: asyncio.Task[None] | None = None  # buffering the request body
        self.upstream: Upstream | None = None
        self.headers: Outgoing | None = None
        self.server_name: str | None = None
        self.sent_at = started

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
    def sent(self) -> Request | None:
        """The request that goes upstream: the canonical one, as a GAMMA route's filters
        left it (headers edited, URL rewritten)."""
        d = self.decision
        if d is not None and d.request is not None:
            return d.request
        return self.inbound.request

    @property
    def tries(self) -> int:
        return self.life.tries if self.life is not None else 0

    # -- performing the lifecycle -------------------------------------------------------------

    def run(self) -> None:
        """Start an allowed request: buffer a small body first (so it can be retried)."""
        body = self.inbound.body
        fw = self.fw
        assert fw is not None
        if body.wants_buffer(fw.buffer_limit):
            self.task = asyncio.get_running_loop().create_task(self._buffer(fw.buffer_limit))
        else:
            self._go()

    async def _buffer(self, limit: int) -> None:
        try:
            await self.inbound.body.buffer(limit)
        except ClientGone as exc:
            self.task = None
            self._client_gone(exc)
            return
        self.task = None
        self._go()

    def _go(self) -> None:
        fw, life, d = self.fw, self.life, self.decision
        assert fw is not None and life is not None and d is not None and d.cluster is not None
        inbound = self.inbound
        request = self.sent
        assert request is not None
        life.replayable = inbound.body.replayable
        scheme = d.scheme
        h2 = scheme == "h2c"
        self.upstream = fw.h2c if h2 else fw.http
        span = self.span = fw.tracer.start(
            request.replaced.get("traceparent"), inbound.method, self.service, request.host
        )
        self.headers = Outgoing(
            request, peer=inbound.peer, proto=inbound.proto, traceparent=span.traceparent
        )
        if scheme == "https" and self.snapshot is not None:
            self.server_name = self.snapshot.server_name(d.cluster.service)
        self._perform(life.start())
        if d.mirrors:
            self._mirror(fw, request)

    def _mirror(self, fw: Forwarder, request: Request) -> None:
        d, headers = self.decision, self.headers
        assert d is not None and headers is not None
        snapshot = self.snapshot
        https = any(shot.scheme == "https" for shot in d.mirrors)
        hops: list[TunnelHop | UpstreamError | None] = []
        tls = fw.tunnels
        if tls is not None and snapshot is not None and snapshot.router.mtls != "off":
            for shot in d.mirrors:
                try:
                    hops.append(
                        tls.plan(
                            snapshot.router,
                            endpoint=shot.endpoint,
                            source=self.source,
                            cluster=shot.cluster.key,
                            protocol=ALPN_H2 if shot.scheme == "h2c" else ALPN,
                        )
                    )
                except UpstreamError as exc:  # strict: never across nodes in the clear
                    hops.append(exc)
        fw.mirrors.send(
            d.mirrors,
            service=self.service,
            method=self.inbound.method,
            authority=request.host,
            target=request.target,
            headers=headers,
            body=self.inbound.body,
            timeout=min(d.policy.timeout or fw.upstream_timeout, fw.upstream_timeout),
            server_name=snapshot.server_name(d.mirrors[0].cluster.service)
            if https and snapshot is not None
            else None,
            hops=tuple(hops),
        )

    def _perform(self, command: Command | None) -> None:
        """Perform the lifecycle's commands until one has to wait for something."""
        life = self.life
        fw = self.fw
        assert life is not None and fw is not None
        while True:
            kind = type(command)
            if kind is Send:
                assert isinstance(command, Send)
                if self.response is not None:  # a retried 5xx: its body is not relayed
                    self.response.close()
                    self.response = None
                if command.attempt > 1:
                    fw.metrics.retry(self.service)
                self._send(command)
                return
            front = self.front
            assert front is not None
            if kind is Deliver:
                front.deliver(self)
                return
            if isinstance(command, Wait):
                loop = asyncio.get_running_loop()
                self.timer = loop.call_later(command.delay, self._resume)
                return
            if isinstance(command, Answer):
                if self.response is not None:
                    self.response.close()
                    self.response = None
                self.answer(command.status, command.reason, command.detail)
                front.answer(self)
                return
            raise AssertionError(f"unexpected command {command!r}")

    def _send(self, command: Send) -> None:
        upstream, d, headers = self.upstream, self.decision, self.headers
        assert upstream is not None and d is not None and d.cluster is not None
        assert headers is not None
        inbound = self.inbound
        request = self.sent
        assert request is not None
        endpoint = command.endpoint
        self.sent_at = _clock()
        hop: TunnelHop | None = None
        tls = self.fw.tunnels if self.fw is not None else None
        if tls is not None and self.snapshot is not None and self.snapshot.router.mtls != "off":
            h2 = d.scheme == "h2c"
            try:
                hop = tls.plan(
                    self.snapshot.router,
                    endpoint=endpoint,
                    source=self.source,
                    cluster=d.cluster.key,
                    protocol=ALPN_H2 if h2 else ALPN,
                    pipe=not h2 and self.fw is not None and self.fw.pipes,
                )
            except UpstreamError as exc:  # strict: never across nodes in the clear
                self.failed(exc)
                return
            if hop is not None and not h2 and self.fw is not None:
                upstream = self.fw.http  # HTTP/1.1 to the proxy, which delivers with the scheme
        self.call = upstream.start(
            self,
            UpstreamRequest(
                d.scheme,
                endpoint.ip,
                endpoint.port,
                inbound.method,
                request.host,
                request.target,
                headers,
                inbound.body,
                command.timeout,
                self.server_name,
                hop,
            ),
        )

    def _resume(self) -> None:
        self.timer = None
        life = self.life
        assert life is not None
        self._perform(life.resume(_clock()))

    # -- what the upstream client reports (mesh.proxy.upstream.Handler) -------------------------

    def responded(self, response: Response) -> None:
        self.call = None
        fw, life = self.fw, self.life
        assert fw is not None and life is not None
        if life.state is State.DONE:
            response.close()
            return
        if response.status == 101:  # no upgrade was asked for here (tunnels ask for theirs)
            response.close()
            self.failed(UpstreamError(Failure.RESET, "the upstream switched protocols unasked"))
            return
        now = _clock()
        cluster = self.decision.cluster if self.decision is not None else None
        backend = cluster.service if cluster is not None else None
        fw.metrics.attempt(self.service, now - self.sent_at, backend, response.status)
        self.response = response
        self._perform(life.responded(response.status, now))

    def failed(self, error: UpstreamError) -> None:
        self.call = None
        fw, life = self.fw, self.life
        assert fw is not None and life is not None
        if life.done:
            return
        body = self.inbound.body
        if body.client_error:
            self._client_gone(ClientGone(str(error)))
            return
        if isinstance(error, UpstreamLimit):
            self._limited(error)
            return
        now = _clock()
        fw.metrics.attempt(self.service, now - self.sent_at)
        command = life.failed(error.failure, now, error.detail, partial=body.touched)
        assert life.outcome is not None and life.outcome.failure is not None
        fw.metrics.failure(self.service, life.outcome.failure.value)
        self._perform(command)

    # -- the client goes away ---------------------------------------------------------------

    def _client_gone(self, exc: ClientGone) -> None:
        """The client stopped sending its body, or left: answered 408 (or 499), neutral."""
        fw = self.fw
        assert fw is not None and self.front is not None
        self._stop()
        if self.inbound.body.timed_out:
            fw.metrics.count("client_timeouts", "body")
            fw.metrics.count("bad_requests", "408")
            self.answer(408, "request-body-timeout", str(exc))
        else:
            self.answer(499, "client-gone", f"the client went away: {exc}")
        self.front.answer(self)

    def _limited(self, error: UpstreamLimit) -> None:
        """No upstream connection could be had: 503, the attempt ends neutral."""
        fw = self.fw
        assert fw is not None and self.front is not None
        self._stop()
        fw.limited(self, error)
        self.front.answer(self)

    def abandon(self) -> None:
        """The client is gone before its answer: stop, end the attempt neutral, count 499."""
        if self.finished:
            return
        self._stop()
        if self.fw is not None:
            self.fw.complete(self, status=499, sent=0, client_gone=True)

    def _stop(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.task is not None:
            self.task.cancel()
            self.task = None
        if self.call is not None:
            self.call.cancel()
            self.call = None
        if self.life is not None and not self.life.done:
            self.life.handle(Abandoned(), _clock())
        if self.response is not None:
            self.response.close()
            self.response = None


class _Resolve(Front):
    """The :class:`Front` of :meth:`Forwarder.exchange`: resolves a future."""

    __slots__ = ("future",)

    def __init__(self) -> None:
        self.future: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def answer(self, ex: Exchange) -> None:
        if not self.future.done():
            self.future.set_result(None)

    def deliver(self, ex: Exchange) -> None:
        self.answer(ex)


def _tunnel_lines(
    items: Iterable[tuple[str, str]],
) -> tuple[str | None, str | None, list[tuple[str, str]]]:
    """The tunnel's target and cluster lines (None unless exactly one of each), and the
    other header lines, which go on to the pod."""
    targets: list[str] = []
    clusters: list[str] = []
    rest: list[tuple[str, str]] = []
    for name, value in items:
        low = name.lower()
        if low == TARGET:
            targets.append(value)
        elif low == CLUSTER:
            clusters.append(value)
        else:
            rest.append((name, value))
    target = targets[0] if len(targets) == 1 else None
    cluster = clusters[0] if len(clusters) == 1 else None
    return target, cluster, rest


def tunnel_target(
    items: Iterable[tuple[str, str]],
) -> tuple[tuple[str, int] | None, str | None]:
    """The pod (IP, port) and the cluster a tunnel's header lines name (None unless exactly
    one valid line of each)."""
    target, cluster, _ = _tunnel_lines(items)
    return _target(target), cluster


def _target(text: str | None) -> tuple[str, int] | None:
    if text is None:
        return None
    try:
        return host_port(text.strip())
    except ValueError:
        return None


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


def local_headers(ex: Exchange) -> list[tuple[str, str]]:
    """The headers of the proxy's own answer, framing and ``Connection`` aside: the reason,
    Retry-After on a 429, and a redirect's Location (with its rule's response header edits)."""
    headers = [("Content-Type", "text/plain; charset=utf-8"), ("X-Simmesh-Reason", ex.reason)]
    if ex.status == 429:
        headers.append(("Retry-After", str(retry_after(ex))))
    d = ex.decision
    if d is not None and d.location is not None and ex.reason == _REDIRECT:
        headers.append(("Location", d.location))
        for edits in d.response_edits:
            headers = edits.apply(headers)
    return headers


# A pod's answer relayed back through a tunnel loses any X-Simmesh-Reason of its own: the
# source proxy reads that header from the destination proxy as the reason it could not reach
# the pod (a connect failure, a reset, a timeout: mesh.proxy.upstream_raw), and a workload must
# not be able to make its own 5xx look like one (retried as if never delivered).
_POD_REASON: Final = Edits(HeaderEdit(remove=["X-Simmesh-Reason"]))


def response_edits(ex: Exchange) -> tuple[Edits, ...]:
    """The response header edits of the GAMMA rule (and backendRef) that routed the request,
    and, for a request out of a tunnel, the removal of the pod's X-Simmesh-Reason."""
    d = ex.decision
    edits = d.response_edits if d is not None else ()
    if ex.inbound.tunnel is not None:
        return (*edits, _POD_REASON)
    return edits


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
        tunnels: TunnelTls | None = None,
    ) -> None:
        self.metrics = metrics
        self.node = options.node
        self.tunnels = tunnels  # mTLS to other nodes' proxies (None: never)
        self.pipes = options.tunnel_pipes  # HTTP/1.1 on pipes where they can be
        self.upstream_ssl = upstream_ssl  # for tunnels to https upstreams
        self.tracer = tracer
        self.access_log = access_log
        self.rng = rng
        self.http = http
        self.h2c = h2c
        self.buffer_limit = options.buffer_limit
        self._body_timeout = options.body_timeout
        self.upstream_timeout = options.upstream_timeout  # when the service sets none
        self.mirrors = Mirrors(http=http, h2c=h2c, metrics=metrics, limit=options.max_mirrors)

    def decide(self, inbound: Inbound, snapshot: Snapshot | None) -> Exchange:
        """The core's verdict on ``snapshot`` (the config the request started on); a denied
        request comes back answered (``ex.status`` set), an allowed one with its lifecycle,
        not started yet."""
        now = _clock()
        ex = Exchange(self, snapshot, inbound, now)
        if inbound.tunnel is not None:
            return self._decide_tunneled(ex, snapshot, now)
        try:
            request = inbound.request = parse_request(
                inbound.method, inbound.target, inbound.items, authority=inbound.authority
            )
        except BadRequest as exc:
            self.metrics.count("bad_requests", "400")
            return ex.answer(400, Reason.BAD_REQUEST.value, exc.detail)
        if snapshot is None:
            return ex.answer(503, "no-config", "the proxy has not received a config yet")
        router = snapshot.router
        if router.mtls == "off":
            source = ex.source = router.source_identity(inbound.peer)
        else:
            caller = router.caller(inbound.peer, self.node)
            source = ex.source = caller.identity
            if caller.remote:
                self.metrics.count("plaintext", "received")
            if caller.refused is not None:
                self.metrics.deny("-", "http", caller.refused.value)
                return ex.answer(
                    403,
                    caller.refused.value,
                    f"strict mTLS: {inbound.peer} is a pod of another node; its proxy must "
                    "tunnel the request",
                )
        d = ex.decision = snapshot.engine.decide_http(
            listener=inbound.listener,
            request=request,
            source=source,
            now=now,
            rng=self.rng,
        )
        return self._judged(ex, snapshot, d, now)

    def _judged(self, ex: Exchange, snapshot: Snapshot, d: Decision, now: float) -> Exchange:
        """A decision made: answered when denied, else given its lifecycle."""
        inbound = ex.inbound
        if not d.allowed:
            if d.reason is not Reason.REDIRECT:
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

    def _decide_tunneled(self, ex: Exchange, snapshot: Snapshot | None, now: float) -> Exchange:
        """A request out of an mTLS tunnel (mesh.proxy.inbound): the caller is the identity
        its certificate proves, the target the pod the source proxy named, which the core
        admits only when it is a pod of this node and the grants let that identity reach it."""
        inbound = ex.inbound
        target, cluster, items = _tunnel_lines(inbound.items)
        inbound.items = items
        try:
            request = inbound.request = parse_request(
                inbound.method, inbound.target, items, authority=inbound.authority
            )
        except BadRequest as exc:
            self.metrics.count("bad_requests", "400")
            return ex.answer(400, Reason.BAD_REQUEST.value, exc.detail)
        address = _target(target)
        if address is None or cluster is None:
            self.metrics.count("bad_requests", "400")
            detail = "a tunneled request needs one Simmesh-Target (IP:PORT) and one Simmesh-Cluster"
            return ex.answer(400, Reason.BAD_REQUEST.value, detail)
        if snapshot is None:
            return ex.answer(503, "no-config", "the proxy has not received a config yet")
        source = ex.source = inbound.tunnel
        d = ex.decision = snapshot.engine.decide_tunnel(
            cluster=cluster,
            ip=address[0],
            port=address[1],
            node=self.node,
            source=source,
            request=request,
        )
        return self._judged(ex, snapshot, d, now)

    def start(self, inbound: Inbound, snapshot: Snapshot | None, front: Front) -> Exchange:
        """Decide on the request and start performing its lifecycle; the exchange ends with
        ``front.answer(ex)`` or ``front.deliver(ex)`` (perhaps before this returns)."""
        inbound.body.timeout = self._body_timeout
        ex = self.decide(inbound, snapshot)
        ex.front = front
        if ex.status or ex.life is None:
            front.answer(ex)
        else:
            ex.run()
        return ex

    async def exchange(self, inbound: Inbound, snapshot: Snapshot | None) -> Exchange:
        """:meth:`start` as a coroutine: returns the exchange once it reached its answer."""
        front = _Resolve()
        ex = self.start(inbound, snapshot, front)
        try:
            await front.future
        except BaseException:
            ex.abandon()
            raise
        return ex

    def limited(self, ex: Exchange, error: UpstreamLimit, protocol: str = "http") -> None:
        """Count a request (or tunnel) the upstream connection limit turned away, and set its
        answer: 503 ``upstream-connection-limit`` (the gate logged it)."""
        self.metrics.count("upstream_limited", ex.service, protocol)
        ex.answer(503, UPSTREAM_LIMIT, error.detail)

    def broken(self, ex: Exchange, failure: Failure, detail: str) -> None:
        """The upstream broke its response before any byte reached the client: the lifecycle
        names the answer (502/504), which the front end sends instead."""
        life = ex.life
        assert life is not None
        command = life.handle(Delivered(failure, detail, started=False), _clock())
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
        if ex.finished:
            return
        ex.finished = True
        now = _clock()
        life = ex.life
        if life is not None and not life.done:
            # Nothing delivered (the client left, or the proxy failed before a response):
            # the attempt ends neutral, not the upstream's fault.
            if not client_gone and life.state is State.DELIVERING:
                life.delivered(now, failure)
            else:
                life.abandoned(now)
        if failure is not None:
            self.metrics.failure(ex.service, failure.value)
        elapsed = now - ex.started
        service = ex.service
        code = 499 if client_gone else status
        inbound = ex.inbound
        request = inbound.request
        self.metrics.http(
            service,
            code,
            inbound.method,
            elapsed,
            ex.source,
            request.path if request is not None and ex.decision is not None else None,
            inbound.body.received,
            sent,
        )
        if ex.span is not None:
            ex.span.end(code, failure.value if failure is not None else None)
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
    raises the last UpstreamError when the lifecycle answers instead (``life.answer``), or
    UpstreamLimit at once (the attempt ended neutral, ``life.answer`` is None)."""
    command: Command | None = life.start()
    while True:
        if isinstance(command, Wait):
            await asyncio.sleep(command.delay)
            command = life.resume(_clock())
            continue
        if not isinstance(command, Send):  # the decision's own answer: never attempted
            raise UpstreamError(Failure.CONNECT, life.answer.detail if life.answer else "")
        try:
            return await connect(command.endpoint)
        except UpstreamLimit:
            life.handle(Abandoned(), _clock())  # the proxy's limit: not the endpoint's
            raise
        except UpstreamError as exc:
            command = life.handle(Failed(exc.failure, exc.detail), _clock())
            if on_failure is not None:
                on_failure(exc)
            if isinstance(command, Answer):
                raise
        except BaseException:
            life.handle(Abandoned(), _clock())
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
    life = Lifecycle(engine, decision, method="", replayable=False, rng=rng, now=_clock())
    connection = await connect_with(life, connect, on_failure=on_failure)
    life.handle(Responded(None), _clock())
    return connection, life
