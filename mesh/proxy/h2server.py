"""The h2c front end: HTTP/2 with prior knowledge on the shared HTTP listeners.

:class:`~mesh.proxy.listeners.Sniffer` hands a connection here when it starts with the HTTP/2
preface. Each stream is one request for the :class:`~mesh.proxy.forward.Forwarder`, run as
its own task; its body is read from an :class:`~mesh.proxy.h2common.Inbox` (window handed
back as the upstream consumes it) and the response is sent within the client's flow-control
windows. Upstream trailers (gRPC's ``grpc-status``) are sent as trailers, so gRPC works
end to end when the service's scheme is h2c. A client's RST_STREAM cancels its request.

Timeouts: after the preface the first request must open within ``--header-timeout``; a
connection without open streams is closed (GOAWAY) after ``--keepalive-timeout``, whatever
else (PING, SETTINGS, half-sent HEADERS) the client sends meanwhile. Request bodies are bounded
by ``--body-timeout`` like HTTP/1.1's (the forwarder answers 408). Request header lists are
bounded by h2's SETTINGS_MAX_HEADER_LIST_SIZE (64 KiB) and by ``max_headers`` (431).

Going away: GOAWAY is sent only once no stream is open (h2, which many clients are built on,
accepts no frame of a connection after its GOAWAY, so one sent mid-stream would break the
streams still being answered), with the last stream id this side processed; then FIN, and
what the client still sends (a stream that crossed the GOAWAY, which the client knows was
never processed from the GOAWAY's last stream id) is dropped for :data:`LINGER` seconds
before the connection closes, so that the client reads the GOAWAY instead of a reset. While
the proxy drains but still accepts (:meth:`H2ServerProtocol.part`) new streams are served and
the GOAWAY waits for the first moment without one; once it no longer accepts
(:meth:`H2ServerProtocol.retire`) new streams are refused (REFUSED_STREAM: safe to retry).
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import h2.events
import h2.exceptions

from mesh.proxy.body import Body
from mesh.proxy.context import Context
from mesh.proxy.forward import Exchange, Inbound, local_text, retry_after
from mesh.proxy.h2common import H2Protocol, Inbox, decode, encode
from mesh.proxy.headers import response_headers
from mesh.proxy.upstream import UpstreamError

_INTERNAL_ERROR = 2
_REFUSED_STREAM = 7
LINGER = 2.0  # seconds a connection still reads (and drops) after its GOAWAY and FIN


class _InboxReader:
    __slots__ = ("inbox",)

    def __init__(self, inbox: Inbox) -> None:
        self.inbox = inbox

    async def readany(self) -> bytes:
        return await self.inbox.read()


class _Stream:
    __slots__ = ("ended", "headers", "inbox", "stream_id", "task")

    def __init__(
        self,
        conn: H2ServerProtocol,
        stream_id: int,
        headers: list[tuple[bytes, bytes]],
        ended: bool,
    ) -> None:
        self.stream_id = stream_id
        self.headers = decode(headers)
        self.ended = ended
        self.inbox = Inbox(lambda flow: conn.ack(stream_id, flow))
        if ended:
            self.inbox.end()
        self.task: asyncio.Task[None] | None = None


class H2Server:
    """The h2c connections of one listener port."""

    def __init__(self, ctx: Context, port: int) -> None:
        self.ctx = ctx
        self.port = port
        self.connections: set[H2ServerProtocol] = set()

    def connection(self) -> H2ServerProtocol:
        return H2ServerProtocol(self)

    def retire_all(self) -> None:
        for conn in list(self.connections):
            conn.retire()

    def part_all(self) -> None:
        for conn in list(self.connections):
            conn.part()

    def abort_all(self) -> None:
        for conn in list(self.connections):
            if conn.transport is not None:
                conn.transport.abort()

    def active(self) -> int:
        return len(self.connections)


class H2ServerProtocol(H2Protocol):
    def __init__(self, server: H2Server) -> None:
        super().__init__(client_side=False, write_timeout=server.ctx.options.write_timeout)
        self.server = server
        self.ctx = server.ctx
        self.peer_ip = ""
        self.streams: dict[int, _Stream] = {}
        self.retiring = False  # new streams are refused; GOAWAY once the open ones are done
        self.parting = False  # new streams are served; GOAWAY at the first moment without one
        self.gone = False  # GOAWAY sent: what the client sends is dropped until the close
        self._idle: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        peer = transport.get_extra_info("peername")
        self.peer_ip = peer[0] if peer else ""
        self.server.connections.add(self)
        self.ctx.metrics.opened("h2c")
        self.parting = self.ctx.draining  # (a connection opened during a drain's delay)
        self._arm(self.ctx.options.header_timeout, "h2c-preface")

    def write_timed_out(self) -> None:
        self.ctx.metrics.count("client_timeouts", "response")

    def _arm(self, seconds: float, phase: str) -> None:
        """Close the connection if no stream opens within ``seconds``."""
        self._disarm()
        self._idle = asyncio.get_running_loop().call_later(seconds, self._idle_timeout, phase)

    def _disarm(self) -> None:
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None

    def _idle_timeout(self, phase: str) -> None:
        self._idle = None
        if self.streams or self.closed:
            return
        self.ctx.metrics.count("client_timeouts", phase)
        self.retire()

    def data_received(self, data: bytes) -> None:
        if self.gone:
            return
        try:
            events = self.h2.receive_data(data)
        except h2.exceptions.ProtocolError:
            self.flush()
            if self.transport is not None:
                self.transport.close()
            return
        for event in events:
            self._event(event)
        self.flush()

    def _event(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.RequestReceived):
            if self.retiring:
                self.reset(event.stream_id, _REFUSED_STREAM)  # never processed: safe to retry
                return
            self._disarm()
            ended = event.stream_ended is not None
            new = _Stream(self, event.stream_id, event.headers or [], ended)
            self.streams[event.stream_id] = new
            new.task = asyncio.create_task(self._serve(new))
            return
        stream = self.streams.get(getattr(event, "stream_id", 0) or 0)
        if isinstance(event, h2.events.DataReceived):
            if stream is None:
                self.ack(event.stream_id, event.flow_controlled_length)
            else:
                stream.inbox.push(event.data, event.flow_controlled_length)
        elif isinstance(event, h2.events.StreamEnded):
            if stream is not None:
                stream.inbox.end()
        elif isinstance(event, h2.events.StreamReset):
            if stream is not None:
                stream.inbox.fail(ConnectionResetError("the client reset the stream"))
                if stream.task is not None:
                    stream.task.cancel()
        elif isinstance(event, h2.events.WindowUpdated | h2.events.RemoteSettingsChanged):
            self.wake_windows()
        elif isinstance(event, h2.events.ConnectionTerminated):
            self.retire()

    def retire(self) -> None:
        """Finish the open streams, refuse new ones, then GOAWAY and close."""
        self.retiring = True
        self._close_if_idle()

    def part(self) -> None:
        """The proxy drains but still accepts: serve what comes, GOAWAY once idle."""
        self.parting = True
        self._close_if_idle()

    def _close_if_idle(self) -> None:
        if (self.retiring or self.parting) and not self.streams and self.transport is not None:
            self._go_away()

    def _go_away(self) -> None:
        """GOAWAY (the last stream id processed), FIN, drop what comes, close: see the module
        docstring."""
        transport = self.transport
        if transport is None or self.gone:
            return
        self.gone = True
        self._disarm()
        if self.closed:
            transport.close()
            return
        with contextlib.suppress(h2.exceptions.H2Error):
            self.h2.close_connection()
        self.flush()
        if transport.can_write_eof():
            transport.write_eof()
            asyncio.get_running_loop().call_later(LINGER, transport.close)
        else:
            transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self._disarm()
        self.server.connections.discard(self)
        self.ctx.metrics.closed("h2c")
        for stream in self.streams.values():
            stream.inbox.fail(ConnectionResetError("the client closed the connection"))
            if stream.task is not None:
                stream.task.cancel()

    async def _serve(self, stream: _Stream) -> None:
        ctx = self.ctx
        ctx.inflight += 1
        try:
            await self._exchange(stream)
        except asyncio.CancelledError:
            pass
        except (h2.exceptions.H2Error, ConnectionError):
            self.reset(stream.stream_id, _INTERNAL_ERROR)
        finally:
            ctx.inflight -= 1
            self.streams.pop(stream.stream_id, None)
            self._close_if_idle()
            if not self.streams and not self.closed and not self.gone:
                self._arm(ctx.options.keepalive_timeout, "h2c-idle")

    def _inbound(self, stream: _Stream) -> Inbound:
        pseudo = {}
        regular = []
        for name, value in stream.headers:
            if name.startswith(":"):
                pseudo[name] = value
            else:
                regular.append((name, value))
        length_text = next((v for n, v in regular if n == "content-length"), "")
        length = int(length_text) if length_text.isascii() and length_text.isdigit() else None
        reader = None if stream.ended else _InboxReader(stream.inbox)
        body = Body(reader, length, chunked=length is None and not stream.ended)
        return Inbound(
            listener=self.server.port,
            method=pseudo.get(":method", "GET"),
            target=pseudo.get(":path", "/"),
            authority=pseudo.get(":authority") or None,
            items=regular,
            peer=self.peer_ip,
            body=body,
        )

    async def _exchange(self, stream: _Stream) -> None:
        ctx = self.ctx
        fw = ctx.forwarder
        inbound = self._inbound(stream)
        limit = ctx.options.max_headers
        if len(stream.headers) > limit + 4:  # and the four pseudo-headers
            ctx.metrics.count("bad_requests", "431")
            ex = Exchange(fw, ctx.snapshot, inbound, time.monotonic())
            self._local(stream.stream_id, ex.answer(431, "too-many-headers", f"over {limit}"))
            return
        ex = await fw.exchange(inbound, ctx.snapshot)
        if ex.response is None:
            self._local(stream.stream_id, ex)
            return
        await self._relay(stream.stream_id, ex)

    def _local(self, stream_id: int, ex: Exchange) -> None:
        body = local_text(ex).encode()
        headers = [(":status", str(ex.status)), ("content-type", "text/plain; charset=utf-8")]
        headers += [("content-length", str(len(body))), ("x-simmesh-reason", ex.reason)]
        if ex.status == 429:
            headers.append(("retry-after", str(retry_after(ex))))
        self.h2.send_headers(stream_id, encode(headers))
        self.h2.send_data(stream_id, body, end_stream=True)
        self.flush()
        self.ctx.forwarder.complete(ex, status=ex.status, sent=len(body))

    async def _relay(self, stream_id: int, ex: Exchange) -> None:
        fw = self.ctx.forwarder
        upstream = ex.response
        assert upstream is not None
        status = upstream.status
        headers = [(":status", str(status)), *response_headers(upstream.header_items(), lower=True)]
        sent = 0

        def gone() -> bool:
            return stream_id not in self.streams

        try:
            self.h2.send_headers(stream_id, encode(headers))
            self.flush()
            while chunk := await upstream.read():
                await self.send_data(stream_id, chunk, is_gone=gone)
                sent += len(chunk)
            trailers = upstream.trailers()
            if trailers:
                self.h2.send_headers(
                    stream_id, encode(response_headers(trailers, lower=True)), end_stream=True
                )
            else:
                self.h2.end_stream(stream_id)
            self.flush()
            upstream.release()
        except UpstreamError as exc:
            upstream.close()
            self.reset(stream_id, _INTERNAL_ERROR)
            fw.complete(ex, status=status, sent=sent, failure=exc.failure)
            return
        except BaseException:
            upstream.close()
            fw.complete(ex, status=status, sent=sent, client_gone=True)
            raise
        fw.complete(ex, status=status, sent=sent, failure=None)
