"""WebSocket upgrades passed through as raw byte streams.

Only WebSocket: the front end hands over requests that ask for it
(``mesh.core.request.websocket_upgrade``) and serves every other upgrade offer as a plain
request, because once a connection is switched the proxy no longer reads what goes through it.
The core decides as for any request (Host, access, limits, endpoint). The request head goes
upstream on a connection of its own (not from the pool: it will never be reusable), with
``Connection: Upgrade`` and ``Upgrade: websocket``; if the upstream answers ``101 Switching
Protocols`` naming ``websocket`` in its ``Upgrade`` header, the proxy answers 101 too, takes the
client's connection over (:meth:`Client.take_over`) and from then on copies bytes both ways
without looking at them: frames, masks and extensions are the endpoints' business. A 101 that
names another protocol is a 502 (the upstream broke the handshake); any other answer is relayed
as it is and the connection closed. Each direction applies backpressure to the
other: reading from the client pauses while more than :data:`HIGH_WATER` bytes wait for the
upstream, and the copy towards the client waits for the client to take what was written.

The front end this runs on is any :class:`Client` (the HTTP/1.1 connection); an open tunnel
is a flow (:class:`_Tunnel`) that a new config judges again (revocation).
"""

from __future__ import annotations

import asyncio
import ssl
import time
from typing import Protocol

from mesh.core.lifecycle import Answer, Failed, Responded
from mesh.core.policies import Failure
from mesh.core.request import offers_websocket
from mesh.core.routing import Endpoint, Router
from mesh.proxy.context import Context
from mesh.proxy.forward import Exchange, Inbound, connect_with, response_edits
from mesh.proxy.headers import request_headers, response_headers
from mesh.proxy.mtls import dial
from mesh.proxy.resources import Slot, UpstreamLimit
from mesh.proxy.upstream import TunnelHop, UpstreamError

HIGH_WATER = 1 << 20
_HEAD_LIMIT = 64 * 1024
_Conn = tuple[asyncio.StreamReader, asyncio.StreamWriter]


class Sink(Protocol):
    """Where an upgraded client connection's bytes go."""

    def feed_data(self, data: bytes) -> None: ...

    def feed_eof(self) -> None: ...

    def connection_lost(self) -> None: ...


class Client(Protocol):
    """The client side of a tunnel: what the HTTP/1.1 front end offers it."""

    peer_ip: str

    def write(self, data: bytes) -> None: ...

    async def drain(self) -> None: ...

    def take_over(self, sink: Sink) -> None: ...

    def pause(self, why: str) -> None: ...

    def resume(self, why: str) -> None: ...

    def local(self, ex: Exchange) -> None: ...

    def close(self) -> None: ...

    def abort(self) -> None: ...


class _Feed:
    """The client's bytes after the upgrade, written to the upstream."""

    def __init__(self, writer: asyncio.StreamWriter, client: Client) -> None:
        self._writer = writer
        self._client = client
        self.received = 0
        self._resuming: asyncio.Task[None] | None = None

    def feed_data(self, data: bytes) -> None:
        self.received += len(data)
        writer = self._writer
        if writer.is_closing():
            return
        writer.write(data)
        if writer.transport.get_write_buffer_size() > HIGH_WATER:
            self._client.pause("tunnel")
            if self._resuming is None or self._resuming.done():
                self._resuming = asyncio.get_running_loop().create_task(self._resume())

    async def _resume(self) -> None:
        try:
            await self._writer.drain()
        except ConnectionError:
            return
        self._client.resume("tunnel")

    def feed_eof(self) -> None:
        writer = self._writer
        if not writer.is_closing() and writer.can_write_eof():
            writer.write_eof()

    def connection_lost(self) -> None:
        self._writer.transport.abort()


def _parse_head(raw: bytes, limit: int = 100) -> tuple[int, str, list[tuple[str, str]]]:
    lines = raw.decode("utf-8", "surrogateescape").split("\r\n")
    if len(lines) > limit + 3:  # the status line and the blank lines at the end
        raise UpstreamError(Failure.RESET, f"more than {limit} response headers")
    version, _, rest = lines[0].partition(" ")
    code, _, reason = rest.partition(" ")
    if not version.startswith("HTTP/1.") or not (code.isascii() and code.isdigit()):
        raise UpstreamError(Failure.RESET, f"bad response line {lines[0][:80]!r}")
    headers = []
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers.append((name.strip(), value.strip()))
    return int(code), reason, headers


async def tunnel(ctx: Context, client: Client, inbound: Inbound) -> None:
    """Serve one WebSocket upgrade from ``client``; the connection closes when it is over."""
    fw = ctx.forwarder
    snapshot = ctx.snapshot
    ex = fw.decide(inbound, snapshot)
    d = ex.decision
    if ex.status or d is None or d.cluster is None or snapshot is None:
        client.local(ex)
        return
    context = fw.upstream_ssl if d.scheme == "https" else None
    verify = context is not None and context.check_hostname
    name = snapshot.server_name(d.cluster.service) if verify else None
    connect_timeout = ctx.options.connect_timeout
    slots: list[Slot] = []  # the connection's place under --max-upstream-connections
    hops: list[TunnelHop] = []  # the attempt that connected went through an mTLS tunnel
    tls = fw.tunnels if snapshot.router.mtls != "off" else None

    async def connect(endpoint: Endpoint) -> _Conn:
        hop = None
        if tls is not None:
            hop = tls.plan(
                snapshot.router,
                endpoint=endpoint,
                source=ex.source,
                cluster=d.cluster.key if d.cluster is not None else "",
            )
        if hop is not None:
            return await _through(ctx, hop, slots, hops)

        async def open_(slot: Slot) -> _Conn:
            async with asyncio.timeout(connect_timeout):
                conn = await asyncio.open_connection(
                    endpoint.ip, endpoint.port, ssl=context, server_hostname=name
                )
            slots.append(slot)
            return conn

        try:
            return await ctx.upstreams.connect(open_, where=endpoint.key)
        except (OSError, TimeoutError, ssl.SSLError) as exc:
            raise UpstreamError(Failure.CONNECT, f"connect to {endpoint.key}: {exc!r}") from exc

    life = ex.life
    assert life is not None
    try:
        reader, writer = await connect_with(life, connect)
    except UpstreamLimit as exc:
        fw.limited(ex, exc, "websocket")
        client.local(ex)
        return
    except UpstreamError:
        answer = life.answer
        assert answer is not None
        ex.answer(answer.status, answer.reason, answer.detail)
        client.local(ex)
        return
    try:
        extra = hops[-1].head if hops else b""
        await _exchange(ctx, client, inbound, ex, reader, writer, extra)
    except BaseException:
        if life.done:
            raise
        fw.complete(ex, status=500, sent=0, client_gone=True)  # never leave the attempt open
        raise
    finally:
        writer.close()
        for slot in slots:
            slot.release()
        if hops and tls is not None:
            tls.closed("client")


async def _through(ctx: Context, hop: TunnelHop, slots: list[Slot], hops: list[TunnelHop]) -> _Conn:
    """A connection of its own through an mTLS tunnel (HTTP/1.1, ``simmesh-tunnel/1``) to the
    pod's node's proxy, which proved the pod's identity; that proxy performs the upgrade."""
    tls = ctx.forwarder.tunnels
    assert tls is not None
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(loop=loop)

    def protocol(slot: Slot) -> asyncio.StreamReaderProtocol:
        slots.append(slot)  # (released once whatever happens: release is idempotent)
        return asyncio.StreamReaderProtocol(reader, loop=loop)

    transport, stream = await dial(
        tls, hop, ctx.upstreams, protocol, ctx.options.connect_timeout, alpn=None
    )
    hops.append(hop)
    return reader, asyncio.StreamWriter(transport, stream, reader, loop)


async def _exchange(
    ctx: Context,
    client: Client,
    inbound: Inbound,
    ex: Exchange,
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    extra: bytes = b"",
) -> None:
    """``extra``: header lines for the proxy at the other end of an mTLS tunnel."""
    fw = ctx.forwarder
    life = ex.life
    canonical = ex.sent
    assert canonical is not None and life is not None
    span = ex.span = fw.tracer.start(
        canonical.replaced.get("traceparent"), inbound.method, ex.service, ""
    )
    headers = request_headers(
        canonical, peer=inbound.peer, proto=inbound.proto, traceparent=span.traceparent, h2=False
    )
    lines = [f"{inbound.method} {canonical.target} HTTP/1.1"]
    lines += [f"{n}: {v}" for n, v in headers]
    lines += ["Connection: Upgrade", "Upgrade: websocket", "", ""]
    # Header values arrive decoded as UTF-8 with surrogate escapes: send back the same bytes.
    upgrade = "\r\n".join(lines).encode("utf-8", "surrogateescape")
    writer.write(upgrade[:-2] + extra + b"\r\n" if extra else upgrade)
    try:
        async with asyncio.timeout(life.timeout):
            raw = await reader.readuntil(b"\r\n\r\n")
        status, reason, upstream_headers = _parse_head(raw[:_HEAD_LIMIT])
        if status == 101 and not any(
            n.lower() == "upgrade" and offers_websocket(v) for n, v in upstream_headers
        ):
            raise UpstreamError(Failure.RESET, "101 without Upgrade: websocket")
    except (
        OSError,
        asyncio.IncompleteReadError,
        asyncio.LimitOverrunError,
        TimeoutError,
        UpstreamError,
    ) as exc:
        failure = Failure.TIMEOUT if isinstance(exc, TimeoutError) else Failure.RESET
        answer = life.handle(Failed(failure, repr(exc), partial=True), time.monotonic())
        assert isinstance(answer, Answer)  # the upgrade went out: not replayable, not retried
        ex.answer(answer.status, answer.reason, answer.detail)
        client.local(ex)
        return
    life.handle(Responded(status), time.monotonic())
    out = response_headers(upstream_headers)
    for edits in response_edits(ex):
        out = edits.apply(out)
    remaining: int | None = None
    if status == 101:
        out += [("Connection", "Upgrade"), ("Upgrade", "websocket")]
    else:
        out.append(("Connection", "close"))
        length = next((v for n, v in upstream_headers if n.lower() == "content-length"), "")
        remaining = int(length) if length.isascii() and length.isdigit() else None
    head = [f"HTTP/1.1 {status} {reason}", *(f"{n}: {v}" for n, v in out), "", ""]
    client.write("\r\n".join(head).encode("utf-8", "surrogateescape"))
    feed = flow = None
    if status == 101:
        feed = _Feed(writer, client)
        flow = _Tunnel(inbound, ex, writer, client)
        ctx.flows.add(flow)
        client.take_over(feed)
    sent = 0
    gone = False
    try:
        while remaining is None or remaining > 0:
            chunk = await reader.read(65536 if remaining is None else min(65536, remaining))
            if not chunk:
                break
            if remaining is not None:
                remaining -= len(chunk)
            client.write(chunk)
            sent += len(chunk)
            await client.drain()
    except ConnectionError:
        gone = status != 101
    finally:
        if flow is not None:
            ctx.flows.discard(flow)
        if feed is not None:
            inbound.body.received += feed.received
        client.close()
    fw.complete(ex, status=status, sent=sent, client_gone=gone)


class _Tunnel:
    """An upgraded connection, for revocation on reload (``Flows.revoke``)."""

    kind = "websocket"

    def __init__(
        self, inbound: Inbound, ex: Exchange, writer: asyncio.StreamWriter, client: Client
    ) -> None:
        self.inbound = inbound
        self.ex = ex
        self.writer = writer
        self.client = client

    @property
    def service(self) -> str:
        return self.ex.service

    def readmitted(self, router: Router) -> bool:
        d, endpoint = self.ex.decision, self.ex.endpoint
        if d is None or d.cluster is None or endpoint is None:
            return True
        return router.readmits(
            cluster=d.cluster.key,
            endpoint=endpoint,
            source_ip=self.inbound.peer,
            request=self.ex.sent,
        )

    def revoke(self) -> None:
        self.writer.transport.abort()
        self.client.abort()
