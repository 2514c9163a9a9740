"""The h2c front end: HTTP/2 with prior knowledge on the shared HTTP listeners.

:class:`~mesh.proxy.listeners.Sniffer` hands a connection here when it starts with the HTTP/2
preface. Each stream is one request for the :class:`~mesh.proxy.forward.Forwarder`, run as
its own task; its body is read from an :class:`~mesh.proxy.h2common.Inbox` (window handed
back as the upstream consumes it) and every answer, relayed or the proxy's own, is sent within
the client's flow-control windows. Upstream trailers (gRPC's ``grpc-status``) are sent as
trailers, so gRPC works end to end when the service's scheme is h2c. A client's RST_STREAM
cancels its request. What a stream holds (its entry in ``streams``, the in-flight count, the
idle timer) is given back by its task's done-callback, which runs however the task ends, also
when it is cancelled before it ever ran (HEADERS and RST_STREAM in one read).

Requests are checked before they are routed: a ``:method`` that is not an RFC 9110 token, or a
``:path`` with whitespace or control characters, is a malformed request (RFC 9113 8.1.1,
8.3.1): RST_STREAM(PROTOCOL_ERROR), counted as a 400. Streams beyond the
SETTINGS_MAX_CONCURRENT_STREAMS we advertised are refused (RST_STREAM(REFUSED_STREAM)); h2
itself only ends the connection at twice that.

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

Abuse (docs/security.md#limits). Each connection has two budgets, token buckets refilled per
second: streams reset while the proxy still serves them, by the client or by h2 for the
client's errors (``--h2-reset-rate``/``--h2-reset-burst``: rapid reset, CVE-2023-44487), and
frames the proxy must answer that bring no request it serves: SETTINGS, refused or malformed
HEADERS, and PING (free when response HEADERS or DATA went out since the last one, as gRPC
servers count them) (``--h2-control-rate``/``--h2-control-burst``). A connection that
overspends either gets GOAWAY(ENHANCE_YOUR_CALM) and is closed, counted in
``simmesh_proxy_h2_abusive_connections_total{budget}`` and logged (once per 10 s at most).
What one read brings is fed to h2 32 whole frames at a time, with the event loop yielded (and
reading paused) in between, so one connection's frames cannot starve the others; and while the
client reads nothing of what the proxy writes (the transport is over its high-water mark)
nothing more is read from it, so it cannot make the proxy queue answers; after
``--write-timeout`` of that the connection is cut.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import Callable

import h2.events
import h2.exceptions
import h2.settings

from mesh.core.policies import RateLimitSpec, TokenBucket
from mesh.core.request import is_token
from mesh.proxy.body import Body
from mesh.proxy.context import Context
from mesh.proxy.forward import Exchange, Inbound, local_headers, local_text, response_edits
from mesh.proxy.h2common import PREFACE, H2Protocol, Inbox, decode, encode
from mesh.proxy.headers import response_headers
from mesh.proxy.upstream import UpstreamError

log = logging.getLogger("simmesh.proxy")

_PROTOCOL_ERROR = 1
_INTERNAL_ERROR = 2
_REFUSED_STREAM = 7
_ENHANCE_YOUR_CALM = 11
_FRAMES = 32  # frames fed to h2 before the event loop gets a turn (h2: 30-150 us each)
_NOT_IN_TARGET = re.compile(r"[\x00-\x20\x7f]")  # whitespace and controls
_LOG_EVERY = 10.0
_LINGER = 1.0  # seconds a connection ended for abuse is read (and discarded) after GOAWAY
LINGER = 2.0  # seconds a connection going away still reads (and drops) after GOAWAY and FIN
Headers = list[tuple[str, str]]


def malformed(headers: Headers) -> str | None:
    """Why a request head is malformed beyond what h2 checks (None: it is not)."""
    for name, value in headers:
        if name == ":method" and not is_token(value):
            return f"the method is not a token: {value[:40]!r}"
        if name == ":path" and _NOT_IN_TARGET.search(value):
            return f"whitespace or a control character in the path: {value[:80]!r}"
    return None


def frames_end(data: bytes, start: int, count: int, limit: int) -> int:
    """The end of the first ``count`` whole HTTP/2 frames of ``data`` from ``start`` (``start``
    when not one is whole yet). A frame declared longer than ``limit`` ends the walk at
    ``len(data)``: h2 refuses it at once, nothing waits for its bytes."""
    at = start
    size = len(data)
    for _ in range(count):
        if at + 9 > size:
            break
        length = int.from_bytes(data[at : at + 3], "big")
        if length > limit:
            return size
        if at + 9 + length > size:
            break
        at += 9 + length
    return at


class _InboxReader:
    __slots__ = ("inbox",)

    def __init__(self, inbox: Inbox) -> None:
        self.inbox = inbox

    async def readany(self) -> bytes:
        return await self.inbox.read()


class _Stream:
    __slots__ = ("ended", "headers", "inbox", "stream_id", "task")

    def __init__(
        self, ack: Callable[[int], None], stream_id: int, headers: Headers, ended: bool
    ) -> None:
        self.stream_id = stream_id
        self.headers = headers
        self.ended = ended
        self.inbox = Inbox(ack)
        if ended:
            self.inbox.end()
        self.task: asyncio.Task[None] | None = None


class H2Server:
    """The h2c connections of one listener port."""

    def __init__(self, ctx: Context, port: int) -> None:
        self.ctx = ctx
        self.port = port
        self.connections: set[H2ServerProtocol] = set()
        self._logged_at: float | None = None
        self._unlogged = 0

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

    def abusive(self, peer: str, budget: str) -> None:
        """Count a connection ended for overspending ``budget``; log it (throttled)."""
        self.ctx.metrics.count("h2_abusive", budget)
        self._unlogged += 1
        now = time.monotonic()
        if self._logged_at is not None and now - self._logged_at < _LOG_EVERY:
            return
        log.warning(
            "h2c client %s overspent its %s budget: GOAWAY(ENHANCE_YOUR_CALM) "
            "(%d connections on port %d since the last message; "
            "simmesh_proxy_h2_abusive_connections_total)",
            peer,
            budget,
            self._unlogged,
            self.port,
        )
        self._logged_at = now
        self._unlogged = 0


def _budget(rate: float, burst: int) -> TokenBucket:
    return TokenBucket(RateLimitSpec(average=rate, burst=burst))


class H2ServerProtocol(H2Protocol):
    def __init__(self, server: H2Server) -> None:
        options = server.ctx.options
        super().__init__(
            client_side=False,
            write_timeout=options.write_timeout,
            max_streams=options.max_concurrent_streams,
        )
        self.server = server
        self.ctx = server.ctx
        self.peer_ip = ""
        # from an mTLS tunnel (mesh.proxy.inbound): the identity the peer's certificate
        # proves, and who is told when the connection ends
        self.peer_identity: str | None = None
        self.on_close: Callable[[], None] | None = None
        self.streams: dict[int, _Stream] = {}
        self.max_streams = 0  # the SETTINGS_MAX_CONCURRENT_STREAMS we advertise
        self.retiring = False  # new streams are refused; GOAWAY once the open ones are done
        self.parting = False  # new streams are served; GOAWAY at the first moment without one
        self.gone = False  # GOAWAY sent: what the client sends is dropped until the close
        self.ending = False  # closed for abuse or a protocol error: read nothing more
        self._idle: asyncio.TimerHandle | None = None
        self._stalled: asyncio.TimerHandle | None = None
        self._resets = _budget(options.h2_reset_rate, options.h2_reset_burst)
        self._control = _budget(options.h2_control_rate, options.h2_control_burst)
        self._answered = False  # response HEADERS or DATA sent since the last PING
        self._backlog = b""
        self._offset = 0
        self._preface = len(PREFACE)  # the first read starts with it: not a frame
        self._feeding = False
        self._paused: set[str] = set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._relax_stream_limit()
        peer = transport.get_extra_info("peername")
        self.peer_ip = peer[0] if peer else ""
        self.server.connections.add(self)
        self.ctx.metrics.opened("h2c")
        self.parting = self.ctx.draining  # (a connection opened during a drain's delay)
        self._arm(self.ctx.options.header_timeout, "h2c-preface")

    def _relax_stream_limit(self) -> None:
        """Keep the advertised stream limit for ourselves (REFUSED_STREAM beyond it, a stream
        error); h2 would make the first stream over it a connection error."""
        settings = self.h2.local_settings
        self.max_streams = settings.max_concurrent_streams
        codes = h2.settings.SettingCodes
        values = {codes(code): settings[code] for code in settings}
        values[codes.MAX_CONCURRENT_STREAMS] = 2 * self.max_streams
        self.h2.local_settings = h2.settings.Settings(client=False, initial_values=values)

    # -- timers -------------------------------------------------------------------------------

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

    def write_timed_out(self) -> None:
        self.ctx.metrics.count("client_timeouts", "response")

    # -- reading, paced -----------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self.ending or self.gone:
            return
        self._backlog = self._backlog[self._offset :] + data if self._backlog else data
        self._offset = 0
        if not self._feeding:
            self._feed()

    def _feed(self) -> None:
        """Feed h2 the next whole frames of what was read (a partial one waits for the rest
        of its bytes); yield the loop before the next slice."""
        if self.closed or self.ending:
            self._stop_feeding(b"")
            return
        backlog, offset = self._backlog, self._offset
        limit = self.h2.max_inbound_frame_size
        end = frames_end(backlog, offset + self._preface, _FRAMES, limit)
        if end == offset:  # not one whole frame: read on
            self._stop_feeding(backlog[offset:])
            return
        self._preface = 0
        self._receive(backlog[offset:end])
        self._offset = end
        if end < len(backlog) and not self.ending:
            self._feeding = True
            self._pause("backlog")
            asyncio.get_running_loop().call_soon(self._feed)
            return
        self._stop_feeding(b"")

    def _stop_feeding(self, rest: bytes) -> None:
        self._feeding = False
        self._backlog = rest
        self._offset = 0
        self._resume("backlog")

    def _receive(self, data: bytes) -> None:
        try:
            events = self.h2.receive_data(data)
        except h2.exceptions.ProtocolError as exc:
            if isinstance(exc, h2.exceptions.TooManyStreamsError):  # past twice the limit
                self.ctx.gate.stream_refused("max-concurrent-streams", self.peer_ip)
            self._end(abort=False)  # h2 queued its GOAWAY
            return
        for event in events:
            if self.ending:
                break
            self._event(event)
        self.flush()

    def _pause(self, reason: str) -> None:
        if not self._paused and self.transport is not None:
            self.transport.pause_reading()
        self._paused.add(reason)

    def _resume(self, reason: str) -> None:
        if reason not in self._paused:
            return
        self._paused.discard(reason)
        if not self._paused and self.transport is not None and not self.closed:
            self.transport.resume_reading()

    def pause_writing(self) -> None:
        """The client is not reading what we write: read nothing more from it meanwhile."""
        super().pause_writing()
        self._pause("write")
        timeout = self.ctx.options.write_timeout
        self._stalled = asyncio.get_running_loop().call_later(timeout, self._write_stalled)

    def resume_writing(self) -> None:
        super().resume_writing()
        if self._stalled is not None:
            self._stalled.cancel()
            self._stalled = None
        self._resume("write")

    def _write_stalled(self) -> None:
        self._stalled = None
        self.write_timed_out()
        if self.transport is not None:
            self.transport.abort()

    # -- events -------------------------------------------------------------------------------

    def _event(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.RequestReceived):
            self._request(event)
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
                self._stream_reset(stream)
        elif isinstance(event, h2.events.WindowUpdated):
            self.wake_windows()
        elif isinstance(event, h2.events.RemoteSettingsChanged):
            self.wake_windows()
            self._spend(self._control, "control")
        elif isinstance(event, h2.events.PingReceived):
            self._ping()
        elif isinstance(event, h2.events.ConnectionTerminated):
            self.retire()

    def _request(self, event: h2.events.RequestReceived) -> None:
        stream_id = event.stream_id
        if self.retiring:
            self.reset(stream_id, _REFUSED_STREAM)  # never processed: safe to retry
            self.ctx.gate.stream_refused("draining", self.peer_ip)
            return
        if len(self.streams) >= self.max_streams:
            self.reset(stream_id, _REFUSED_STREAM)
            self.ctx.gate.stream_refused("max-concurrent-streams", self.peer_ip)
            self._spend(self._control, "control")
            return
        headers = decode(event.headers or [])
        problem = malformed(headers)
        if problem is not None:
            log.debug("h2c client %s, stream %d: malformed: %s", self.peer_ip, stream_id, problem)
            self.ctx.metrics.count("bad_requests", "400")
            self.reset(stream_id, _PROTOCOL_ERROR)
            self._spend(self._control, "control")
            return
        self._disarm()
        self._open(stream_id, headers, ended=event.stream_ended is not None)

    def _open(self, stream_id: int, headers: Headers, *, ended: bool) -> None:
        stream = _Stream(lambda flow: self.ack(stream_id, flow), stream_id, headers, ended)
        self.streams[stream_id] = stream
        self.ctx.inflight += 1
        task = stream.task = asyncio.create_task(self._serve(stream))
        task.add_done_callback(lambda _: self._stream_done(stream))

    def _stream_done(self, stream: _Stream) -> None:
        """A stream's task ended (or was cancelled before it started): give back what the
        stream held and, without streams, start the idle timeout."""
        self.ctx.inflight -= 1
        self.streams.pop(stream.stream_id, None)
        self._close_if_idle()
        if not self.streams and not self.retiring and not self.closed and not self.gone:
            self._arm(self.ctx.options.keepalive_timeout, "h2c-idle")

    def _stream_reset(self, stream: _Stream) -> None:
        stream.inbox.fail(ConnectionResetError("the client reset the stream"))
        if stream.task is not None:
            stream.task.cancel()
        self._spend(self._resets, "resets")

    def _ping(self) -> None:
        if self._answered:
            self._answered = False
            return
        self._spend(self._control, "control")

    def _spend(self, bucket: TokenBucket, budget: str) -> None:
        if bucket.take(time.monotonic()) > 0.0 and not self.ending:
            self.server.abusive(self.peer_ip, budget)
            with contextlib.suppress(h2.exceptions.H2Error):
                self.h2.close_connection(error_code=_ENHANCE_YOUR_CALM)
            self._end(abort=self._write_paused)

    def _end(self, *, abort: bool) -> None:
        """Send what h2 queued (its GOAWAY), stop every stream, close (or abort: the client
        does not read)."""
        self.ending = True
        self.retiring = True
        self.flush()
        self._stop_streams("the connection was closed")
        transport = self.transport
        if transport is None:
            return
        if abort or not transport.can_write_eof():
            transport.abort()
            return
        # Closing with unread bytes would reset the connection, and the client could lose
        # the GOAWAY: end our side, discard what still comes for a moment, then close.
        transport.write_eof()
        self._paused.clear()
        transport.resume_reading()
        asyncio.get_running_loop().call_later(_LINGER, transport.abort)

    def _stop_streams(self, why: str) -> None:
        for stream in self.streams.values():
            stream.inbox.fail(ConnectionResetError(why))
            if stream.task is not None:
                stream.task.cancel()

    def retire(self) -> None:
        """Finish the open streams, refuse new ones, then GOAWAY and close."""
        self.retiring = True
        self._close_if_idle()

    def part(self) -> None:
        """The proxy drains but still accepts: serve what comes, GOAWAY once idle."""
        self.parting = True
        self._close_if_idle()

    def _close_if_idle(self) -> None:
        if self.ending:  # closing already (_end)
            return
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
            self._paused.clear()  # read on (and drop) what still comes
            transport.resume_reading()
            asyncio.get_running_loop().call_later(LINGER, transport.close)
        else:
            transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self._disarm()
        if self._stalled is not None:
            self._stalled.cancel()
            self._stalled = None
        self._backlog = b""
        self.server.connections.discard(self)
        self.ctx.metrics.closed("h2c")
        self.ctx.gate.leave(self.peer_ip)
        if self.on_close is not None:
            self.on_close()
            self.on_close = None
        self._stop_streams("the client closed the connection")

    # -- serving a stream ---------------------------------------------------------------------

    async def _serve(self, stream: _Stream) -> None:
        try:
            await self._exchange(stream)
        except asyncio.CancelledError:
            pass
        except (h2.exceptions.H2Error, ConnectionError):
            self.reset(stream.stream_id, _INTERNAL_ERROR)

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
            tunnel=self.peer_identity,
        )

    async def _exchange(self, stream: _Stream) -> None:
        ctx = self.ctx
        fw = ctx.forwarder
        inbound = self._inbound(stream)
        limit = ctx.options.max_headers
        if len(stream.headers) > limit + 4:  # and the four pseudo-headers
            ctx.metrics.count("bad_requests", "431")
            ex = Exchange(fw, ctx.snapshot, inbound, time.monotonic())
            await self._local(stream.stream_id, ex.answer(431, "too-many-headers", f"over {limit}"))
            return
        ex = await fw.exchange(inbound, ctx.snapshot)
        if ex.response is None:
            await self._local(stream.stream_id, ex)
            return
        await self._relay(stream.stream_id, ex)

    async def send_data(self, stream_id: int, data: bytes, *, is_gone: Callable[[], bool]) -> None:
        self._answered = True
        await super().send_data(stream_id, data, is_gone=is_gone)

    def _send_headers(self, stream_id: int, headers: Headers, *, end_stream: bool = False) -> None:
        self._answered = True
        self.h2.send_headers(stream_id, encode(headers), end_stream=end_stream)
        self.flush()

    def _gone(self, stream_id: int) -> Callable[[], bool]:
        return lambda: stream_id not in self.streams

    async def _local(self, stream_id: int, ex: Exchange) -> None:
        """The proxy's own answer, its body within the client's flow-control windows."""
        body = local_text(ex).encode()
        headers = [(":status", str(ex.status)), ("content-length", str(len(body)))]
        headers += [(name.lower(), value) for name, value in local_headers(ex)]
        head = ex.inbound.method == "HEAD"
        fw = self.ctx.forwarder
        try:
            self._send_headers(stream_id, headers, end_stream=head)
            if not head:
                await self.send_data(stream_id, body, is_gone=self._gone(stream_id))
                self.h2.end_stream(stream_id)
                self.flush()
        except BaseException:
            fw.complete(ex, status=ex.status, sent=0, client_gone=True)
            raise
        fw.complete(ex, status=ex.status, sent=0 if head else len(body))

    async def _relay(self, stream_id: int, ex: Exchange) -> None:
        fw = self.ctx.forwarder
        upstream = ex.response
        assert upstream is not None
        status = upstream.status
        found = response_headers(upstream.header_items())
        for edits in response_edits(ex):
            found = edits.apply(found)
        headers = [(":status", str(status)), *((n.lower(), v) for n, v in found)]
        sent = 0
        gone = self._gone(stream_id)
        try:
            self._send_headers(stream_id, headers)
            while chunk := await upstream.read():
                await self.send_data(stream_id, chunk, is_gone=gone)
                sent += len(chunk)
            trailers = upstream.trailers()
            if trailers:
                self._send_headers(
                    stream_id, response_headers(trailers, lower=True), end_stream=True
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
