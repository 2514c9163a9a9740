"""Upgrade requests (WebSocket and the like) passed through as raw byte streams.

The core decides as for any request (Host, access, limits, endpoint). The request head goes
upstream on a connection of its own (not from the pool: it will never be reusable); if the
upstream answers ``101 Switching Protocols`` the proxy answers 101 too and from then on copies
bytes both ways without looking at them: frames, masks and extensions are the endpoints'
business. Any other answer is relayed as an ordinary response and the connection closed.
Upstream writes apply backpressure to the client's connection (reading pauses while more than
:data:`HIGH_WATER` bytes wait to be sent).
"""

from __future__ import annotations

import asyncio
import ssl
import time

from aiohttp import web
from aiohttp.web_request import BaseRequest

from mesh.core.lifecycle import Answer, Failed, Lifecycle, Responded
from mesh.core.policies import Failure
from mesh.core.routing import Endpoint, Router
from mesh.proxy.forward import Exchange, Forwarder, Inbound, connect_with
from mesh.proxy.headers import request_headers, response_headers
from mesh.proxy.http1 import H1Protocol, local_response
from mesh.proxy.upstream import UpstreamError

HIGH_WATER = 1 << 20
_HEAD_LIMIT = 64 * 1024
_Conn = tuple[asyncio.StreamReader, asyncio.StreamWriter]


class _Feed:
    """Bytes the client sends after the upgrade (installed as aiohttp's payload parser)."""

    def __init__(self, writer: asyncio.StreamWriter, protocol: H1Protocol) -> None:
        self._writer = writer
        self._protocol = protocol
        self.received = 0
        self._resuming: asyncio.Future[None] | None = None

    def feed_data(self, data: bytes) -> tuple[bool, bytes]:
        self.received += len(data)
        self._writer.write(data)
        transport = self._protocol.transport
        if transport is not None and self._writer.transport.get_write_buffer_size() > HIGH_WATER:
            transport.pause_reading()
            if self._resuming is None or self._resuming.done():
                self._resuming = asyncio.ensure_future(self._resume(transport))
        return False, b""

    async def _resume(self, transport: asyncio.Transport) -> None:
        try:
            await self._writer.drain()
        except ConnectionError:
            return
        if not transport.is_closing():
            transport.resume_reading()

    def feed_eof(self) -> None:
        if not self._writer.is_closing():
            self._writer.close()


def _parse_head(raw: bytes, limit: int = 100) -> tuple[int, str, list[tuple[str, str]]]:
    lines = raw.decode("latin-1").split("\r\n")
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


async def tunnel(
    fw: Forwarder, request: BaseRequest, inbound: Inbound, *, connect_timeout: float
) -> web.StreamResponse:
    ex = fw.decide(inbound)
    d = ex.decision
    if ex.status or d is None or d.cluster is None or ex.snapshot is None:
        return local_response(fw, ex, close=True)
    context = fw.proxy.upstream_ssl if d.cluster.scheme == "https" else None
    name = fw.proxy.server_name(d.cluster.service) if context and context.check_hostname else None

    async def connect(endpoint: Endpoint) -> _Conn:
        try:
            async with asyncio.timeout(connect_timeout):
                return await asyncio.open_connection(
                    endpoint.ip, endpoint.port, ssl=context, server_hostname=name
                )
        except (OSError, TimeoutError, ssl.SSLError) as exc:
            raise UpstreamError(Failure.CONNECT, f"connect to {endpoint.key}: {exc!r}") from exc

    life = ex.life
    assert life is not None
    try:
        reader, writer = await connect_with(life, connect)
    except UpstreamError:
        answer = life.answer
        assert answer is not None
        ex.answer(answer.status, answer.reason, answer.detail)
        return local_response(fw, ex, close=True)
    try:
        return await _exchange(fw, request, inbound, ex, life, reader, writer)
    except Exception:
        fw.complete(ex, status=500, sent=0)  # never leave the engine's attempt open
        raise
    finally:
        writer.close()


async def _exchange(
    fw: Forwarder,
    request: BaseRequest,
    inbound: Inbound,
    ex: Exchange,
    life: Lifecycle,
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
) -> web.StreamResponse:
    canonical = inbound.request
    assert canonical is not None
    span = ex.span = fw.proxy.tracer.start(
        canonical.replaced.get("traceparent"),
        name=f"{inbound.method} {ex.service}",
        attributes={},
    )
    upgrade = request.headers.get("Upgrade", "")
    headers = request_headers(
        canonical, peer=inbound.peer, proto=inbound.proto, traceparent=span.traceparent, h2=False
    )
    lines = [f"{inbound.method} {canonical.target} HTTP/1.1"]
    lines += [f"{n}: {v}" for n, v in headers]
    lines += ["Connection: Upgrade", f"Upgrade: {upgrade}", "", ""]
    # Header values arrive decoded as UTF-8 with surrogate escapes: send back the same bytes.
    writer.write("\r\n".join(lines).encode("utf-8", "surrogateescape"))
    timeout = life.timeout
    try:
        async with asyncio.timeout(timeout):
            raw = await reader.readuntil(b"\r\n\r\n")
        status, reason, upstream_headers = _parse_head(raw[:_HEAD_LIMIT])
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
        return local_response(fw, ex, close=True)
    life.handle(Responded(status), time.monotonic())
    out_headers = response_headers(upstream_headers)
    if status == 101:
        out_headers += [("Connection", "Upgrade"), ("Upgrade", upgrade)]
    out = web.StreamResponse(status=status, reason=reason or None, headers=out_headers)
    out.force_close()
    sent = 0
    feed = None
    flow = None
    flows = fw.proxy.flows
    try:
        await out.prepare(request)
        remaining = None
        if status != 101:
            length = dict((n.lower(), v) for n, v in upstream_headers).get("content-length", "")
            remaining = int(length) if length.isascii() and length.isdigit() else None
        else:
            protocol = request.protocol
            assert isinstance(protocol, H1Protocol)
            feed = _Feed(writer, protocol)
            protocol.set_parser(feed)  # type: ignore[arg-type]
            flow = _Tunnel(inbound, ex, writer, protocol)
            flows.add(flow)
        while remaining is None or remaining > 0:
            chunk = await reader.read(65536 if remaining is None else min(65536, remaining))
            if not chunk:
                break
            if remaining is not None:
                remaining -= len(chunk)
            await out.write(chunk)
            sent += len(chunk)
    except (ConnectionError, asyncio.CancelledError) as exc:
        if flow is not None:
            flows.discard(flow)
        _count(inbound, feed)
        fw.complete(ex, status=status, sent=sent, client_gone=status != 101)
        if isinstance(exc, asyncio.CancelledError):
            raise
        return out
    if flow is not None:
        flows.discard(flow)
    _count(inbound, feed)
    fw.complete(ex, status=status, sent=sent)
    return out


class _Tunnel:
    """An upgraded connection, for the proxy's revocation on reload (``Proxy.revoke``)."""

    kind = "websocket"

    def __init__(
        self, inbound: Inbound, ex: Exchange, writer: asyncio.StreamWriter, protocol: H1Protocol
    ) -> None:
        self.inbound = inbound
        self.ex = ex
        self.writer = writer
        self.protocol = protocol

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
            request=self.inbound.request,
        )

    def revoke(self) -> None:
        self.writer.transport.abort()
        if self.protocol.transport is not None:
            self.protocol.transport.abort()


def _count(inbound: Inbound, feed: _Feed | None) -> None:
    if feed is not None:
        inbound.body.received += feed.received
