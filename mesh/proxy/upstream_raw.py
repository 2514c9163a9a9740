"""Plain ``http`` upstreams on asyncio Protocols and httptools' C parser (llhttp).

The general client (aiohttp's ClientSession, :mod:`mesh.proxy.upstream_http`) spends most of
a proxied request's CPU on objects the proxy does not need (URL objects, multidicts, request
and response wrappers, a writer task). This client does one thing: send an already rewritten
request head (and body) on a pooled keep-alive connection and parse the response with
llhttp. ``https`` goes to the aiohttp client given as ``fallback``.

- **Pool**: idle keep-alive connections per endpoint (ip, port), reused last-in first-out;
  idle ones are closed after ``keepalive`` seconds, or as soon as the server closes them. A
  connection goes back to the pool only when its response was read to the end, the request
  body was sent whole, and both sides keep it alive (never after ``HEAD``, whose response
  length the parser cannot know, nor after an unread or broken response).
- **Bodies**: an empty or buffered request body goes out with the head in one write; a
  streamed one is written by a task, chunk by chunk (``Transfer-Encoding: chunked`` when its
  length is unknown), waiting for the socket to drain, while the response is awaited. The
  response body is queued as it arrives; reading from the socket pauses while more than
  ``HIGH_WATER`` bytes wait for the downstream.
- **Calls**: :meth:`RawUpstream.start` writes the request on a pooled connection at once (or
  connects first, in a task) and returns; the connection tells the handler when the response
  headers are parsed (after the whole read is, so a small body is complete by then and is
  relayed without waiting) or why it failed. No task or future is made for a request on a
  pooled connection.
- **Failures**, as :mod:`mesh.proxy.upstream_http` maps them: cannot connect within
  ``--connect-timeout`` -> CONNECT; closed, reset or unparsable before the response is
  complete -> RESET; no response headers within the per-try timeout (armed when the request is
  written, re-armed while a streamed body makes progress), or no body bytes for that long
  between reads -> TIMEOUT. A pooled connection that turns out to have been closed by the
  server before it answered a single byte is retried once on a new connection when the
  request is idempotent and replayable (the server never saw it); otherwise RESET.
- **Limits**: response heads larger than ``max_header_bytes`` (``--max-response-header-size``)
  or with more than ``max_headers`` headers are RESET failures (502 once retries are spent)
  and nothing of them is relayed. Every connection, busy or idle, holds a slot of the
  :class:`~mesh.proxy.resources.UpstreamGate` (``--max-upstream-connections``) from before it
  connects until its socket closes; when none is free the oldest idle connection of the pool,
  whatever its endpoint, is closed to make room (:meth:`RawUpstream._reclaim`), and while
  someone waits for a slot a finished connection closes instead of going back to the pool.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections import deque
from collections.abc import AsyncIterator, Iterable
from typing import Final, cast

import httptools

from mesh.core.policies import IDEMPOTENT_METHODS, Failure
from mesh.proxy.body import Body, ClientGone
from mesh.proxy.headers import Outgoing, body_framing, encode_head, head_block, status_line
from mesh.proxy.mtls import ALPN_PIPE, TunnelTls, dial, tunnel_failure
from mesh.proxy.resources import Slot, UpstreamGate
from mesh.proxy.upstream import (
    Call,
    CallbackUpstream,
    Handler,
    Response,
    TunnelHop,
    Upstream,
    UpstreamError,
    UpstreamRequest,
)

Key = tuple[str, int, str]  # ip, port; for a tunnel, its pool (identities), else ""
HIGH_WATER: Final = 256 * 1024  # response bytes queued before reading from the upstream pauses
_FRAMING: Final = frozenset({"content-length", "transfer-encoding"})
_SPLICED: Final = b"+\r\n"  # a pipe's answers (mesh.proxy.pipe)
_PER_REQUEST: Final = b"=\r\n"


def _stop(handle: asyncio.TimerHandle | None) -> None:
    if handle is not None:
        handle.cancel()


class _HeadTooLarge(Exception):
    pass


class _Conn(asyncio.Protocol):
    """One keep-alive connection; at most one request in flight."""

    def __init__(self, upstream: RawUpstream, key: Key, slot: Slot) -> None:
        self.upstream = upstream
        self.key = key
        self.slot = slot  # given back when the socket closes
        self.tunnel = bool(key[2])  # an mTLS tunnel to another node's proxy
        self.counted = False  # its handshake was counted (an open tunnel)
        # a pipe (mesh.proxy.pipe): the destination's answer to its first line, awaited once;
        # spliced, its responses are the pod's own bytes (their X-Simmesh-Reason is not read)
        self.reply: asyncio.Future[None] | None = None
        self.reply_read = b""
        self.spliced = False
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.closed = False
        self.idle_since = 0.0
        self.in_pool = False
        # per request
        self.active = False
        self.head_request = False
        self.received = 0  # response bytes received for the current request
        self.status = 0
        self.reason = b""
        self.headers: list[tuple[bytes, bytes]] = []  # as received: decoded only if asked
        self.content_length: int | None = None
        self.head_bytes = 0
        self.interim = False
        self.until_close = False
        self.headers_done = False
        self.complete = False
        self.keep_alive = False
        self.error: UpstreamError | None = None
        self.handler: _Attempt | None = None  # told when the headers are here (or not)
        self.feeding = False  # inside data_received: the handler is told after the read
        self.waiter: asyncio.Future[None] | None = None
        self.timer: asyncio.TimerHandle | None = None  # lazy: see _arm
        self.timer_at = 0.0
        self.deadline = 0.0
        self.timeout: float | None = None
        self.chunks: deque[bytes] = deque()
        self.queued = 0
        self.reading_paused = False
        self.write_paused = False
        self.drain: asyncio.Future[None] | None = None
        self.sender: asyncio.Task[None] | None = None
        self.body_sent = True

    # -- transport callbacks ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        if not self.active:
            if self.reply is not None:
                self._replied(data)
                return
            self._close()  # bytes nobody asked for: the connection cannot be trusted
            return
        self.received += len(data)
        self.feeding = True
        try:
            self._feed(data)
        finally:
            self.feeding = False
        if self.handler is not None and (self.headers_done or self.error is not None):
            self._notify()

    def _replied(self, data: bytes) -> None:
        """The pipe's answer: ``+`` (spliced) or ``=`` (per request), one line."""
        reply = self.reply
        assert reply is not None
        read = self.reply_read = self.reply_read + data
        if len(read) < len(_SPLICED):
            return
        self.reply = None
        if read in (_SPLICED, _PER_REQUEST):
            self.spliced = read == _SPLICED
            if not reply.done():
                reply.set_result(None)
            return
        if not reply.done():
            reply.set_exception(
                UpstreamError(Failure.CONNECT, f"{self._name()}: bad pipe answer {read[:40]!r}")
            )
        self._abort()

    def _feed(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
            if not self.headers_done and self.received > self.upstream.max_header_bytes:
                limit = self.upstream.max_header_bytes
                self._too_large(f"response headers larger than {limit} bytes")
        except _HeadTooLarge:
            self._close()
        except httptools.HttpParserUpgrade:
            self._fail(UpstreamError(Failure.RESET, f"{self._name()} switched protocols"))
        except httptools.HttpParserError as exc:
            if not (self.complete and self.head_request):
                self._fail(
                    UpstreamError(Failure.RESET, f"{self._name()} sent a bad response: {exc}")
                )
            self._close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.slot.release()
        reply = self.reply
        if reply is not None and not reply.done():
            self.reply = None
            reply.set_exception(
                UpstreamError(Failure.CONNECT, f"{self._name()} closed the pipe before answering")
            )
        if self.counted and self.upstream.tunnels is not None:
            self.counted = False
            self.upstream.tunnels.closed("client")
        _stop(self.timer)
        self.timer = None
        if self.in_pool:
            self.upstream._forget(self)
        if self.active and not self.complete:
            if self.until_close and self.headers_done and exc is None:
                self.on_message_complete()
            else:
                detail = f"{self._name()} closed the connection" + (f": {exc!r}" if exc else "")
                self._fail(UpstreamError(Failure.RESET, detail))
        drain = self.drain
        if drain is not None and not drain.done():
            drain.set_exception(ConnectionResetError("upstream connection lost"))
            drain.exception()
        if self.handler is not None and (self.headers_done or self.error is not None):
            self._notify()

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        drain = self.drain
        if drain is not None:
            self.drain = None
            if not drain.done():
                drain.set_result(None)

    # -- parser callbacks ---------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self.headers = []
        self.reason = b""
        self.head_bytes = 0

    def on_status(self, status: bytes) -> None:
        self.reason += status

    def on_header(self, name: bytes, value: bytes) -> None:
        headers = self.headers
        if len(headers) >= self.upstream.max_headers:
            self._too_large(f"more than {self.upstream.max_headers} response headers")
        headers.append((name, value))

    def _too_large(self, what: str) -> None:
        self._fail(UpstreamError(Failure.RESET, f"{self._name()} sent {what}"))
        raise _HeadTooLarge(what)

    def on_headers_complete(self) -> None:
        limit = self.upstream.max_header_bytes
        # The head is at most what was received: the sum is rarely needed.
        if self.received > limit and sum(len(n) + len(v) + 4 for n, v in self.headers) > limit:
            self._too_large(f"response headers larger than {limit} bytes")
        status = self.parser.get_status_code()
        if 100 <= status < 200 and status != 101:
            self.interim = True  # 100 Continue, 103 Early Hints: the answer follows
            return
        if self.headers_done:  # a second response to one request: protocol error
            raise ValueError("unexpected response")
        self.status = status
        self.headers_done = True
        length = None
        framed = False
        for name, value in self.headers:
            if len(name) in (14, 17):
                low = name.lower()
                if low == b"content-length":
                    length = int(value)  # llhttp checked it
                    framed = True
                elif low == b"transfer-encoding" and value:
                    framed = True
        self.content_length = length
        if not self.head_request and status not in (204, 304):
            self.until_close = not framed
        self._wake()
        if self.head_request:
            self.keep_alive = False  # the parser would wait for the announced body
            self.complete = True

    def on_body(self, body: bytes) -> None:
        if self.complete:
            return
        self.chunks.append(body)
        self.queued += len(body)
        if self.queued > HIGH_WATER and not self.reading_paused and self.transport is not None:
            self.reading_paused = True
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        if self.interim:
            self.interim = False
            return
        if self.complete:
            return
        self.complete = True
        self.keep_alive = self.parser.should_keep_alive() and not self.until_close
        self._wake()

    # -- the request --------------------------------------------------------------------------

    def _name(self) -> str:
        return f"{self.key[0]}:{self.key[1]}"

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None:
            self.waiter = None
            if not waiter.done():
                waiter.set_result(None)

    def _fail(self, error: UpstreamError) -> None:
        if self.error is None:
            self.error = error
        self.keep_alive = False
        self._wake()
        if self.handler is not None and not self.feeding:
            self._notify()

    def _notify(self) -> None:
        """Tell the handler: the response headers are here, or the attempt failed."""
        handler, self.handler = self.handler, None
        assert handler is not None
        error = self.error
        if error is not None and not self.headers_done:
            if error.failure is Failure.TIMEOUT:
                error = UpstreamError(Failure.TIMEOUT, f"no response from {self._name()} in time")
            handler.conn_failed(self, error)
        else:
            handler.responded(RawResponse(self))

    def _close(self) -> None:
        self.keep_alive = False
        if self.transport is not None and not self.closed:
            self.transport.close()

    def _abort(self) -> None:
        self.keep_alive = False
        if self.transport is not None and not self.closed:
            self.transport.abort()

    def _on_timer(self) -> None:
        self.timer = None
        if (self.waiter is None and self.handler is None) or self.timeout is None:
            return  # not waiting: the next wait arms it again
        now = self.loop.time()
        if now < self.deadline:
            self._arm()
            return
        self._fail(UpstreamError(Failure.TIMEOUT, "timed out"))

    def _arm(self) -> None:
        """The per-try timeout's timer, made lazily: kept from one wait to the next (a
        request's waits, then the next request's on this pooled connection) and re-armed when
        it fires before the deadline, instead of a new timer for every wait."""
        if self.timer is None or self.timer_at > self.deadline:
            _stop(self.timer)
            self.timer_at = self.deadline
            self.timer = self.loop.call_at(self.deadline, self._on_timer)

    async def _wait(self) -> None:
        """Until something happened (headers, body bytes, end, error) or the timeout."""
        waiter = self.waiter = self.loop.create_future()
        timeout = self.timeout
        if timeout is not None:
            self.deadline = self.loop.time() + timeout
            self._arm()
        try:
            await waiter
        finally:
            self.waiter = None

    def begin(
        self, attempt: _Attempt, head: bytes, body: Body, stream: bool, timeout: float | None
    ) -> None:
        """Send one request; ``attempt`` is told when the response headers are here."""
        self.active = True
        self.received = 0
        self.headers_done = self.complete = self.until_close = self.interim = False
        self.error = None
        self.timeout = timeout
        self.chunks.clear()
        self.queued = 0
        self.handler = attempt
        transport = self.transport
        assert transport is not None
        if not stream:
            buffered = body.buffered
            transport.write(head + buffered if buffered else head)
            self.body_sent = True
        else:
            transport.write(head)
            self.body_sent = False
            self.sender = self.loop.create_task(self._send(body.chunks(), body.length is None))
        if timeout is not None:
            self.deadline = self.loop.time() + timeout
            self._arm()

    async def _send(self, chunks: AsyncIterator[bytes], chunked: bool) -> None:
        transport = self.transport
        assert transport is not None
        try:
            async for chunk in chunks:
                if self.closed or self.error is not None:
                    return
                if not chunk:
                    continue
                if chunked:
                    transport.writelines((b"%x\r\n" % len(chunk), chunk, b"\r\n"))
                else:
                    transport.write(chunk)
                if self.timeout is not None and not self.headers_done:
                    self.deadline = self.loop.time() + self.timeout  # the upload progresses
                if self.write_paused and not self.closed:
                    drain = self.drain = self.loop.create_future()
                    await drain
            if chunked and not self.closed:
                transport.write(b"0\r\n\r\n")
            self.body_sent = True
        except ClientGone as exc:
            self._fail(UpstreamError(Failure.RESET, f"the client went away mid-upload: {exc}"))
            self._abort()
        except ConnectionError:
            pass  # connection_lost reports it
        except Exception as exc:
            self._fail(UpstreamError(Failure.RESET, f"request body failed: {exc!r}"))
            self._abort()
        except asyncio.CancelledError:
            self._abort()
            raise

    async def read(self) -> bytes:
        while True:
            chunks = self.chunks
            if chunks:
                if len(chunks) == 1:
                    data = chunks.popleft()
                else:
                    data = b"".join(chunks)
                    chunks.clear()
                self.queued = 0
                if self.reading_paused and self.transport is not None and not self.closed:
                    self.reading_paused = False
                    self.transport.resume_reading()
                return data
            if self.complete:
                return b""
            if self.error is not None:
                error = self.error
                if error.failure is Failure.TIMEOUT:
                    raise UpstreamError(Failure.TIMEOUT, "upstream stalled mid-response")
                raise UpstreamError(error.failure, f"upstream broke mid-response: {error.detail}")
            await self._wait()

    def finish(self, reuse: bool) -> None:
        """The response is done with: back to the pool when that is safe, else closed."""
        self.active = False
        self.handler = None
        self.chunks.clear()
        self.upstream._busy.discard(self)
        sender = self.sender
        self.sender = None
        if (
            reuse
            and self.complete
            and self.keep_alive
            and self.body_sent
            and self.error is None
            and not self.closed
            and not self.reading_paused
        ):
            self.upstream._release(self)
            return
        if sender is not None and not sender.done():
            sender.cancel()
        if reuse:
            self._close()
        else:
            self._abort()


class RawResponse(Response):
    __slots__ = ("_conn", "_headers", "_reason", "content_length", "status")

    def __init__(self, conn: _Conn) -> None:
        self._conn: _Conn | None = conn
        self._headers = conn.headers
        self._reason = conn.reason
        self.status = conn.status
        self.content_length = conn.content_length

    @property
    def reason(self) -> str:
        return self._reason.decode("utf-8", "surrogateescape")

    def header_items(self) -> Iterable[tuple[str, str]]:
        return [
            (name.decode("latin-1"), value.decode("utf-8", "surrogateescape"))
            for name, value in self._headers
        ]

    def http1_head(self) -> bytes:
        return head_block(self._headers, status_line(self.status, self._reason))

    def trailers(self) -> list[tuple[str, str]] | None:
        return None

    def whole(self) -> bytes | None:
        conn = self._conn
        if conn is None or not conn.complete or conn.error is not None:
            return None
        chunks = conn.chunks
        data = chunks.popleft() if len(chunks) == 1 else b"".join(chunks)
        chunks.clear()
        conn.queued = 0
        return data

    async def read(self) -> bytes:
        conn = self._conn
        if conn is None:
            return b""
        return await conn.read()

    def release(self) -> None:
        conn = self._conn
        if conn is not None:
            self._conn = None
            conn.finish(reuse=True)

    def close(self) -> None:
        conn = self._conn
        if conn is not None:
            self._conn = None
            conn.finish(reuse=False)


class _Attempt:
    """One request to one endpoint: on a pooled connection, or on a new one (connected in a
    task); a pooled connection the server had closed before answering a single byte is
    replaced once when the request is idempotent and replayable (the server never saw it)."""

    __slots__ = (
        "body",
        "cancelled",
        "conn",
        "handler",
        "head",
        "hop",
        "key",
        "method",
        "retried",
        "reused",
        "stream",
        "task",
        "timeout",
        "upstream",
    )

    def __init__(
        self,
        upstream: RawUpstream,
        handler: Handler,
        key: Key,
        head: bytes,
        body: Body,
        stream: bool,
        timeout: float | None,
        method: str,
        hop: TunnelHop | None,
    ) -> None:
        self.upstream = upstream
        self.hop = hop
        self.handler = handler
        self.key = key
        self.head = head
        self.body = body
        self.stream = stream
        self.timeout = timeout
        self.method = method
        self.conn: _Conn | None = None
        self.task: asyncio.Task[None] | None = None
        self.reused = False
        self.retried = False
        self.cancelled = False

    def begin(self, conn: _Conn, *, reused: bool) -> None:
        self.conn = conn
        self.reused = reused
        conn.head_request = self.method == "HEAD"
        self.upstream._busy.add(conn)
        head, hop = self.head, self.hop
        if hop is not None and not conn.spliced:  # the target's lines, on each request
            head = head[:-2] + hop.head + b"\r\n"
        conn.begin(self, head, self.body, self.stream, self.timeout)

    def connect(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._connect())

    async def _connect(self) -> None:
        try:
            conn = await self.upstream._connect(self.key, self.hop)
        except UpstreamError as exc:
            if not self.cancelled:
                self.handler.failed(exc)
            return
        if self.cancelled:
            conn._close()
            return
        self.begin(conn, reused=False)

    def responded(self, response: Response) -> None:
        conn = self.conn
        self.conn = None
        spliced = conn is not None and conn.spliced
        if self.hop is not None and response.status >= 502 and not spliced:
            failure = tunnel_failure(response.status, response.header_items())
            if failure is not None:  # the destination proxy could not reach its pod
                response.whole()
                response.release()
                where = f"via {self.hop.host}:{self.hop.port}"
                self.handler.failed(UpstreamError(failure, f"{where}: {failure.value}"))
                return
        self.handler.responded(response)

    def conn_failed(self, conn: _Conn, error: UpstreamError) -> None:
        conn.finish(reuse=False)
        self.conn = None
        if (
            self.reused
            and not self.retried
            and error.failure is Failure.RESET
            and conn.received == 0
            and not self.stream
            and self.method in IDEMPOTENT_METHODS
            and not self.body.client_error
        ):
            self.retried = True  # a stale pooled connection: the server never saw it
            self.connect()
            return
        self.handler.failed(error)

    def cancel(self) -> None:
        """The request is abandoned: stop connecting, or abort the connection it is on."""
        self.cancelled = True
        if self.task is not None and not self.task.done():
            self.task.cancel()
        if self.conn is not None:
            self.conn.finish(reuse=False)
            self.conn = None


class RawUpstream(CallbackUpstream):
    """:class:`~mesh.proxy.upstream.Upstream` for ``http``; ``https`` goes to ``fallback``."""

    def __init__(
        self,
        *,
        connect_timeout: float,
        fallback: Upstream,
        keepalive: float = 15.0,
        max_header_bytes: int = 64 * 1024,
        max_headers: int = 100,
        gate: UpstreamGate | None = None,
        tunnels: TunnelTls | None = None,
    ) -> None:
        self.tunnels = tunnels
        self.max_header_bytes = max_header_bytes
        self.max_headers = max_headers
        self._gate = gate = gate or UpstreamGate.unlimited()
        gate.add_reclaimer(self._reclaim)
        self._connect_timeout = connect_timeout
        self._fallback = fallback
        self._keepalive = keepalive
        self._idle: dict[Key, list[_Conn]] = {}
        self._busy: set[_Conn] = set()
        self._sweeper: asyncio.TimerHandle | None = None

    # -- pool ---------------------------------------------------------------------------------

    def _acquire(self, key: Key) -> _Conn | None:
        idle = self._idle.get(key)
        while idle:
            conn = idle.pop()
            conn.in_pool = False
            if not conn.closed and conn.transport is not None and not conn.transport.is_closing():
                return conn
        return None

    def _release(self, conn: _Conn) -> None:
        self._busy.discard(conn)
        if self._gate.contended():
            conn._close()  # its slot goes to whoever waits for one
            return
        conn.in_pool = True
        conn.idle_since = conn.loop.time()
        idle = self._idle.get(conn.key)
        if idle is None:
            idle = self._idle[conn.key] = []
        idle.append(conn)
        if self._sweeper is None:
            self._sweeper = conn.loop.call_later(self._keepalive / 2, self._sweep)

    def _forget(self, conn: _Conn) -> None:
        conn.in_pool = False
        idle = self._idle.get(conn.key)
        if idle is not None:
            with contextlib.suppress(ValueError):
                idle.remove(conn)
            if not idle:
                del self._idle[conn.key]

    def _sweep(self) -> None:
        self._sweeper = None
        loop = asyncio.get_running_loop()
        limit = loop.time() - self._keepalive
        for key, idle in list(self._idle.items()):
            keep = []
            for conn in idle:
                if conn.idle_since <= limit or conn.closed:
                    conn.in_pool = False
                    conn._close()
                else:
                    keep.append(conn)
            if keep:
                self._idle[key] = keep
            else:
                del self._idle[key]
        if self._idle:
            self._sweeper = loop.call_later(self._keepalive / 2, self._sweep)

    def _reclaim(self) -> bool:
        """Close the pool's oldest idle connection (the gate needs its slot)."""
        oldest: _Conn | None = None
        for idle in self._idle.values():
            if idle and (oldest is None or idle[0].idle_since < oldest.idle_since):
                oldest = idle[0]
        if oldest is None:
            return False
        self._forget(oldest)
        oldest._close()
        return True

    async def _connect(self, key: Key, hop: TunnelHop | None = None) -> _Conn:
        ip, port, _ = key
        loop = asyncio.get_running_loop()

        async def connect(slot: Slot) -> _Conn:
            async with asyncio.timeout(self._connect_timeout):
                _, conn = await loop.create_connection(lambda: _Conn(self, key, slot), ip, port)
            return conn

        if hop is not None:
            return await self._tunnel(key, hop)
        try:
            conn = await self._gate.connect(connect, where=f"{ip}:{port}")
        except TimeoutError as exc:
            raise UpstreamError(Failure.CONNECT, f"connect to {ip}:{port} timed out") from exc
        except OSError as exc:
            raise UpstreamError(Failure.CONNECT, f"connect to {ip}:{port}: {exc}") from exc
        return conn

    async def _tunnel(self, key: Key, hop: TunnelHop) -> _Conn:
        """A new mTLS connection to another node's proxy that proved ``hop.expect``."""
        tls = self.tunnels
        assert tls is not None
        _, conn = await dial(
            tls, hop, self._gate, lambda slot: _Conn(self, key, slot), self._connect_timeout
        )
        conn.counted = True
        transport = conn.transport
        assert transport is not None
        ssl_object = transport.get_extra_info("ssl_object")
        alpn = ssl_object.selected_alpn_protocol() if ssl_object is not None else None
        # a pipe: name the target, wait for how it will be served; a proxy of an earlier
        # release, which does not know pipes, negotiates no protocol: a tunnel connection then
        if hop.preamble and alpn == ALPN_PIPE:
            reply = conn.reply = conn.loop.create_future()
            transport.write(hop.preamble)
            try:
                async with asyncio.timeout(self._connect_timeout):
                    await reply
            except TimeoutError:
                conn._abort()
                raise UpstreamError(
                    Failure.CONNECT, f"{conn._name()}: no answer to the pipe in time"
                ) from None
            except BaseException:  # a bad answer, closed, cancelled
                conn._abort()
                raise
        return conn

    # -- Upstream -----------------------------------------------------------------------------

    def start(self, handler: Handler, request: UpstreamRequest) -> Call:
        hop = request.tunnel
        if hop is not None:
            return self._start_tunnel(handler, request, hop)
        if request.scheme != "http":
            return self._fallback.start(handler, request)
        ip, port, method, path, body = (
            request.ip,
            request.port,
            request.method,
            request.path,
            request.body,
        )
        headers, timeout = request.headers, request.timeout
        if isinstance(headers, Outgoing):
            head, stream = headers.http1_head(method, path, body)
        else:
            head, stream = request_head(
                method, path, headers, body, request.authority or f"{ip}:{port}"
            )
        attempt = _Attempt(self, handler, (ip, port, ""), head, body, stream, timeout, method, None)
        conn = self._acquire(attempt.key)
        if conn is None:
            attempt.connect()
        else:
            attempt.begin(conn, reused=True)
        return attempt

    def _start_tunnel(self, handler: Handler, request: UpstreamRequest, hop: TunnelHop) -> Call:
        """The request as the pod would get it, with the target's lines, on a pooled mTLS
        connection to the pod's node's proxy (whatever the cluster's scheme: that proxy
        delivers with it)."""
        method, path, body, headers = request.method, request.path, request.body, request.headers
        if isinstance(headers, Outgoing):
            head, stream = headers.http1_head(method, path, body)
        else:
            head, stream = request_head(method, path, headers, body, request.authority)
        key = (hop.host, hop.port, hop.pool)
        attempt = _Attempt(self, handler, key, head, body, stream, request.timeout, method, hop)
        conn = self._acquire(key)
        if conn is None:
            attempt.connect()
        else:
            attempt.begin(conn, reused=True)
        return attempt

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for idle in self._idle.values():
            for conn in idle:
                conn.in_pool = False
                conn._close()
        self._idle.clear()
        for conn in list(self._busy):
            conn._abort()
        self._busy.clear()
        await self._fallback.close()


def request_head(
    method: str, path: str, headers: list[tuple[str, str]], body: Body, host: str
) -> tuple[bytes, bool]:
    """The request line and ``headers``, with this hop's body framing; and whether the body is
    streamed (written after the head) rather than sent with it."""
    lines = []
    has_host = has_length = False
    for name, value in headers:
        low = name.lower()
        if low in _FRAMING:
            has_length = has_length or low == "content-length"
            continue
        has_host = has_host or low == "host"
        lines.append(f"{name}: {value}")
    if not has_host:
        lines.insert(0, f"Host: {host}")
    framing, stream = body_framing(method, body, has_length)
    if framing:
        lines.append(framing)
    text = f"{method} {path} HTTP/1.1\r\n" + "".join(f"{line}\r\n" for line in lines) + "\r\n"
    return encode_head(text, len(lines) + 2), stream
