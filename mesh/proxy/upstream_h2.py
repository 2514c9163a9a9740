"""h2c upstreams: HTTP/2 over cleartext TCP with prior knowledge, on the h2 state machine.

One connection per endpoint carries many concurrent streams; another is opened only when it
is full, going away or gone. Requests stream their bodies within the peer's flow-control
windows while the response is awaited (so gRPC-style bidirectional streams work), and
received DATA is acknowledged only as the downstream consumes it, so a slow client slows the
upstream instead of filling memory. Response trailers (``grpc-status``) are kept.

Failure kinds: a connection that cannot be opened, and a stream refused (REFUSED_STREAM) or
above a GOAWAY's last stream id, were never processed: CONNECT. Any other reset or loss:
RESET. No response headers within the per-try timeout: TIMEOUT. A response header list larger
than h2's SETTINGS_MAX_HEADER_LIST_SIZE (64 KiB, a protocol error that closes the connection)
or with more than ``max_headers`` headers: RESET, and nothing of it is relayed.

Each connection holds a slot of the :class:`~mesh.proxy.resources.UpstreamGate`
(``--max-upstream-connections``) until it closes, however many streams it carries; when the
gate is full, a connection without open streams is closed to make room (and one whose last
stream ends while someone waits for a slot).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

import h2.errors
import h2.events
import h2.exceptions

from mesh.core.policies import Failure
from mesh.proxy.body import Body, ClientGone
from mesh.proxy.h2common import H2Protocol, Inbox, decode, encode
from mesh.proxy.headers import Outgoing, response_head_lines, status_line
from mesh.proxy.mtls import ALPN_H2, TunnelTls, dial, tunnel_failure
from mesh.proxy.resources import Slot, UpstreamGate
from mesh.proxy.upstream import (
    Response,
    TaskUpstream,
    TunnelHop,
    UpstreamError,
    UpstreamRequest,
)

Key = tuple[str, int, str]  # ip, port; for an mTLS tunnel, its pool (identities), else ""


class _Stream:
    __slots__ = ("headers", "inbox", "sender", "stream_id")

    def __init__(self, conn: H2ClientProtocol, stream_id: int) -> None:
        self.stream_id = stream_id
        self.headers: asyncio.Future[list[tuple[bytes, bytes]]] = (
            asyncio.get_running_loop().create_future()
        )
        self.inbox = Inbox(lambda flow: conn.ack(stream_id, flow))
        self.sender: asyncio.Task[None] | None = None

    def fail(self, error: UpstreamError) -> None:
        if not self.headers.done():
            self.headers.set_exception(error)
            self.headers.exception()  # retrieved: the waiter may have gone
        self.inbox.fail(error)


class H2ClientProtocol(H2Protocol):
    def __init__(self, key: Key, slot: Slot, tunnels: TunnelTls | None = None) -> None:
        super().__init__(client_side=True)
        self.key = key
        self.slot = slot  # given back when the connection closes
        self.streams: dict[int, _Stream] = {}
        self.going_away = False
        self.tunnels = tunnels  # an mTLS tunnel whose handshake was counted (None: not one)

    def usable(self) -> bool:
        if self.closed or self.going_away:
            return False
        limit = self.h2.remote_settings.max_concurrent_streams
        return self.h2.open_outbound_streams < limit and self.h2.highest_outbound_stream_id < (
            1 << 30
        )

    def data_received(self, data: bytes) -> None:
        try:
            events = self.h2.receive_data(data)
        except h2.exceptions.ProtocolError as exc:
            self._lost(UpstreamError(Failure.RESET, f"HTTP/2 protocol error: {exc}"))
            if self.transport is not None:
                self.transport.close()
            return
        for event in events:
            self._event(event)
        self.flush()

    def _event(self, event: h2.events.Event) -> None:
        stream = self.streams.get(getattr(event, "stream_id", 0) or 0)
        if isinstance(event, h2.events.ResponseReceived):
            if stream is not None and not stream.headers.done():
                stream.headers.set_result(event.headers)
        elif isinstance(event, h2.events.DataReceived):
            if stream is None:
                self.ack(event.stream_id, event.flow_controlled_length)
            else:
                stream.inbox.push(event.data, event.flow_controlled_length)
        elif isinstance(event, h2.events.TrailersReceived):
            if stream is not None:
                stream.inbox.trailers = event.headers
        elif isinstance(event, h2.events.StreamEnded):
            if stream is not None:
                if not stream.headers.done():
                    stream.fail(UpstreamError(Failure.RESET, "stream ended without headers"))
                stream.inbox.end()
        elif isinstance(event, h2.events.StreamReset):
            if stream is not None:
                refused = event.error_code == h2.errors.ErrorCodes.REFUSED_STREAM
                kind = Failure.CONNECT if refused else Failure.RESET
                detail = f"upstream reset the stream ({event.error_code!r})"
                stream.fail(UpstreamError(kind, detail))
                self.streams.pop(event.stream_id, None)
        elif isinstance(event, h2.events.WindowUpdated | h2.events.RemoteSettingsChanged):
            self.wake_windows()
        elif isinstance(event, h2.events.ConnectionTerminated):
            self.going_away = True
            last = event.last_stream_id or 0
            for stream_id, item in list(self.streams.items()):
                if stream_id > last:
                    item.fail(UpstreamError(Failure.CONNECT, "upstream is going away (GOAWAY)"))

    def _lost(self, error: UpstreamError) -> None:
        self.closed = True
        for stream in self.streams.values():
            stream.fail(error)
        self.streams.clear()

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self.slot.release()
        if self.tunnels is not None:
            self.tunnels.closed("client")
            self.tunnels = None
        self._lost(UpstreamError(Failure.RESET, f"upstream connection lost: {exc!r}"))

    def open(self, headers: list[tuple[bytes, bytes]], body: Body) -> _Stream:
        stream_id = self.h2.get_next_available_stream_id()
        stream = self.streams[stream_id] = _Stream(self, stream_id)
        self.h2.send_headers(stream_id, headers, end_stream=body.empty)
        self.flush()
        if not body.empty:
            stream.sender = asyncio.create_task(self._send_body(stream, body))
        return stream

    async def _send_body(self, stream: _Stream, body: Body) -> None:
        def gone() -> bool:
            return stream.inbox.error is not None or stream.stream_id not in self.streams

        try:
            async for chunk in body.chunks():
                await self.send_data(stream.stream_id, chunk, is_gone=gone)
            if not gone():
                self.h2.end_stream(stream.stream_id)
                self.flush()
        except ClientGone as exc:
            self.reset(stream.stream_id)
            stream.fail(UpstreamError(Failure.RESET, f"client went away: {exc}"))
        except (h2.exceptions.H2Error, ConnectionError):
            return  # the stream was answered early or reset: its reader sees why

    def forget(self, stream: _Stream, *, complete: bool) -> None:
        if stream.sender is not None and not stream.sender.done():
            stream.sender.cancel()
        if self.streams.pop(stream.stream_id, None) is not None and not complete:
            self.reset(stream.stream_id)
        if not self.streams and self.slot.contended() and self.transport is not None:
            self.going_away = True
            self.transport.close()  # its slot goes to whoever waits for one


class H2Response(Response):
    __slots__ = ("_conn", "_headers", "_stream", "_timeout", "content_length", "reason", "status")

    def __init__(
        self,
        conn: H2ClientProtocol,
        stream: _Stream,
        headers: list[tuple[bytes, bytes]],
        timeout: float | None,
    ) -> None:
        self._conn = conn
        self._stream = stream
        self._timeout = timeout
        self._headers = decode(headers)
        self.status = 502
        self.reason = ""
        self.content_length: int | None = None
        for name, value in self._headers:
            if name == ":status":
                self.status = int(value)
            elif name == "content-length" and value.isascii() and value.isdigit():
                self.content_length = int(value)

    def header_items(self) -> Iterable[tuple[str, str]]:
        return [(n, v) for n, v in self._headers if not n.startswith(":")]

    def http1_head(self) -> bytes:
        return status_line(self.status) + b"".join(response_head_lines(self.header_items()))

    def whole(self) -> bytes | None:
        return None  # read it, chunk by chunk

    def trailers(self) -> list[tuple[str, str]] | None:
        raw = self._stream.inbox.trailers
        return decode(raw) if raw else None

    async def read(self) -> bytes:
        try:
            return await self._stream.inbox.read(self._timeout)
        except UpstreamError:
            raise
        except Exception as exc:
            raise UpstreamError(Failure.RESET, f"upstream stream broke: {exc!r}") from exc

    def release(self) -> None:
        self._conn.forget(self._stream, complete=self._stream.inbox.ended)

    def close(self) -> None:
        self._conn.forget(self._stream, complete=False)


class H2Upstream(TaskUpstream):
    """h2c upstreams; with ``tunnels``, also HTTP/2 over an mTLS tunnel to another node's
    proxy (``UpstreamRequest.tunnel``): one pool of connections per (proxy address, caller
    and pod identities), each stream carrying the target's two header lines."""

    def __init__(
        self,
        *,
        connect_timeout: float,
        max_headers: int = 100,
        gate: UpstreamGate | None = None,
        tunnels: TunnelTls | None = None,
    ) -> None:
        self._tunnels = tunnels
        self._max_headers = max_headers
        self._gate = gate = gate or UpstreamGate.unlimited()
        gate.add_reclaimer(self._reclaim)
        self._connect_timeout = connect_timeout
        self._conns: dict[Key, list[H2ClientProtocol]] = {}
        self._connecting: dict[Key, asyncio.Task[H2ClientProtocol]] = {}

    async def _connection(self, key: Key, hop: TunnelHop | None) -> H2ClientProtocol:
        conns = self._conns.get(key)
        if conns:
            conns[:] = [c for c in conns if not c.closed]
            for conn in conns:
                if conn.usable():
                    return conn
        task = self._connecting.get(key)
        if task is None:
            opening = self._connect(key) if hop is None else self._tunnel(key, hop)
            task = self._connecting[key] = asyncio.create_task(opening)
            task.add_done_callback(lambda _: self._connecting.pop(key, None))
        return await asyncio.shield(task)

    def _reclaim(self) -> bool:
        """Close a connection that carries no stream (the gate needs its slot)."""
        for conns in self._conns.values():
            for conn in conns:
                if not conn.streams and not conn.closed and conn.transport is not None:
                    conns.remove(conn)
                    conn.going_away = True
                    conn.transport.close()
                    return True
        return False

    async def _connect(self, key: Key) -> H2ClientProtocol:
        loop = asyncio.get_running_loop()

        async def connect(slot: Slot) -> H2ClientProtocol:
            async with asyncio.timeout(self._connect_timeout):
                _, conn = await loop.create_connection(
                    lambda: H2ClientProtocol(key, slot), key[0], key[1]
                )
            return conn

        try:
            conn = await self._gate.connect(connect, where=f"{key[0]}:{key[1]}")
        except TimeoutError as exc:
            raise UpstreamError(Failure.CONNECT, f"connect to {key[0]}:{key[1]} timed out") from exc
        except OSError as exc:
            raise UpstreamError(Failure.CONNECT, f"connect to {key[0]}:{key[1]}: {exc}") from exc
        self._conns.setdefault(key, []).append(conn)
        return conn

    async def _tunnel(self, key: Key, hop: TunnelHop) -> H2ClientProtocol:
        """A new HTTP/2 connection over mTLS to another node's proxy that proved
        ``hop.expect``."""
        tls = self._tunnels
        assert tls is not None
        _, conn = await dial(
            tls,
            hop,
            self._gate,
            lambda slot: H2ClientProtocol(key, slot),
            self._connect_timeout,
            alpn=ALPN_H2,
        )
        conn.tunnels = tls
        self._conns.setdefault(key, []).append(conn)
        return conn

    async def send(self, request: UpstreamRequest) -> Response:
        ip, port, method, authority, path = (
            request.ip,
            request.port,
            request.method,
            request.authority,
            request.path,
        )
        headers, body, timeout = request.headers, request.body, request.timeout
        hop = request.tunnel
        key = (ip, port, "") if hop is None else (hop.host, hop.port, hop.pool)
        conn = await self._connection(key, hop)
        pseudo = [(":method", method), (":scheme", "http"), (":authority", authority)]
        pseudo.append((":path", path))
        try:
            pairs = headers.pairs(h2=True) if isinstance(headers, Outgoing) else headers
            if hop is not None:
                pairs = pairs + hop.pairs
            stream = conn.open(encode(pseudo + pairs), body)
        except h2.exceptions.H2Error as exc:
            raise UpstreamError(Failure.CONNECT, f"cannot open a stream: {exc!r}") from exc
        try:
            async with asyncio.timeout(timeout):
                raw = await stream.headers
        except TimeoutError as exc:
            conn.forget(stream, complete=False)
            raise UpstreamError(Failure.TIMEOUT, f"no response from {ip}:{port} in time") from exc
        except BaseException:
            conn.forget(stream, complete=False)
            raise
        if len(raw) > self._max_headers + 1:  # and :status
            conn.forget(stream, complete=False)
            detail = f"{ip}:{port} sent more than {self._max_headers} response headers"
            raise UpstreamError(Failure.RESET, detail)
        response = H2Response(conn, stream, raw, timeout)
        if hop is not None and response.status >= 502:
            failure = tunnel_failure(response.status, response.header_items())
            if failure is not None:  # the destination proxy could not reach its pod
                response.close()
                raise UpstreamError(failure, f"via {hop.host}:{hop.port}: {failure.value}")
        return response

    async def close(self) -> None:
        for task in list(self._connecting.values()):
            task.cancel()
        for conns in self._conns.values():
            for conn in conns:
                if conn.transport is not None:
                    conn.transport.close()
        self._conns.clear()
