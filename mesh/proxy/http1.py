"""The HTTP/1.1 front end: an asyncio Protocol on httptools' C parser (llhttp).

One :class:`H1Connection` per client connection (handed over by the listener's sniffer once
the first bytes are not the h2c preface). Bytes go into llhttp; its callbacks build each
request; a request whose headers are complete is served by a task of its own
(:meth:`H1Connection._serve`), which asks the :class:`~mesh.proxy.forward.Forwarder` for the
core's decision and lifecycle, then writes the proxy's own answer or relays the upstream's
response. The upstream side is the same shape (:mod:`mesh.proxy.upstream_raw`).

The connection's two halves, and everything that moves them, are in this class:

- **reading**: between requests -> a request head (``on_message_begin``; the header timer
  runs) -> its body (``on_headers_complete``; bytes go to the request's :class:`BodyReader`)
  -> between requests (``on_message_complete``). Requests that arrive while one is served
  (pipelining) wait in ``queue`` and reading pauses until they are served, in order.
- **serving**: idle (keep-alive timer) -> busy (one request's task) -> idle, or closed after
  the answer when the client asked for it, the request was HTTP/1.0 without keep-alive, the
  client half-closed, the listener was removed or the answer said ``Connection: close``
  (every answer does while the proxy drains). An answer that did not say so is never followed
  by a close from this side while the client may be sending its next request: the connection
  stays idle, and when it must go (listener removed, drain), :meth:`H1Connection.retire`
  sends FIN first and reads what the client sent meanwhile for :data:`LINGER` seconds, so a
  request that crossed the close is seen by the client as never answered on a closed
  connection (which clients retry), not as a reset.

Limits and abuse (the answer is written once the request before it, if any, is answered, then
the connection closes; each is counted in ``simmesh_proxy_bad_requests_total``): a request
line longer than ``--max-header-size`` -> 414; a header line longer than that, or more than
``max_headers`` headers -> 431; anything llhttp rejects (a malformed line, ``Content-Length``
with ``Transfer-Encoding``, duplicate ``Content-Length``) -> 400; a version other than
HTTP/1.0 and 1.1 -> 505; bytes that are not HTTP/1.x at all (no method where a request
starts, e.g. a TLS handshake, or an HTTP/2 preface gone wrong) are not answered, the
connection is closed. Timeouts: a request head not complete within ``--header-timeout``
-> 408 (``client_timeouts{phase="headers"}``); an idle keep-alive connection is closed after
``--keepalive-timeout``; request bodies are bounded by ``--body-timeout`` (the forwarder answers
408); a client that reads nothing of its answer for ``--write-timeout`` while the proxy has
more to send is cut (``client_timeouts{phase="response"}``), so a client that stops reading
cannot hold a connection, a request and its upstream forever.

A client that half-closes after its request (``shutdown(SHUT_WR)``) still gets its answer;
then the connection closes. ``Expect: 100-continue`` is answered when the body is first read,
that is once the core allowed the request.

Upgrades: only a WebSocket upgrade (``mesh.core.request.websocket_upgrade``) is handed to
:mod:`mesh.proxy.tunnel`, with the bytes after it kept for the tunnel; CONNECT is answered and
the connection closed. llhttp stops at the end of any request that offers an upgrade; when the
offer is another protocol the request is served as a plain one (its ``Upgrade`` header is
hop-by-hop: not forwarded) and parsing goes on with a new parser (:meth:`H1Connection._resume`),
which first reads that request's body (llhttp skipped it) under a head that frames it the same
way. So no request ever passes the proxy unread.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections import deque
from collections.abc import Callable
from http import HTTPStatus
from typing import Final, cast

import httptools

from mesh.core.request import websocket_upgrade
from mesh.proxy.body import Body, ClientGone
from mesh.proxy.context import Context
from mesh.proxy.forward import (
    Exchange,
    Forwarder,
    Front,
    Inbound,
    local_headers,
    local_text,
    response_edits,
)
from mesh.proxy.headers import edited_head, status_line
from mesh.proxy.tunnel import Sink, tunnel
from mesh.proxy.upstream import Response, UpstreamError

log = logging.getLogger("simmesh.proxy")

# Final: compiled, these are C constants or statics, not a globals-dict lookup at each use.
HIGH_WATER: Final = 256 * 1024  # request body bytes buffered before reading pauses
LOW_WATER: Final = 64 * 1024
SMALL_RESPONSE: Final = 64 * 1024  # responses up to this size go out in one write
_CONTINUE: Final = b"HTTP/1.1 100 Continue\r\n\r\n"
PROBE_AFTER: Final = 0.1  # a half-closed client's answer pending this long: still there?
_TCP_CLOSE: Final = 7  # include/net/tcp_states.h
_VERSIONS: Final = frozenset({"1.0", "1.1"})
_FRAMING_LENGTHS: Final = frozenset({6, 7, 14, 17})  # Expect, Upgrade, Content-Length, T-E
_NO_BODY: Final = frozenset({204, 304})
LINGER: Final = 2.0  # seconds an idle connection closed from this side still reads after its FIN


# What llhttp says when the bytes are not HTTP/1.x: no method where a request starts, or an
# HTTP/2 connection preface that goes wrong after "PRI * HTTP/2.0".
_NOT_HTTP1 = frozenset({"Invalid method encountered", "Expected HTTP/2 Connection Preface"})


class _Refuse(Exception):
    """A request the proxy answers itself before reading further (414, 431, 505)."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


class BodyReader:
    """A request body as it arrives, read by the upstream client; reading from the client
    pauses while more than :data:`HIGH_WATER` bytes wait here."""

    __slots__ = ("_chunks", "_conn", "_size", "_waiter", "eof", "error")

    def __init__(self, conn: H1Connection) -> None:
        self._conn = conn
        self._chunks: deque[bytes] = deque()
        self._size = 0
        self._waiter: asyncio.Future[None] | None = None
        self.eof = False
        self.error: Exception | None = None

    def feed(self, data: bytes) -> None:
        self._chunks.append(data)
        self._size += len(data)
        if self._size > HIGH_WATER:
            self._conn.pause("body")
        self._wake()

    def feed_eof(self) -> None:
        self.eof = True
        self._wake()

    def fail(self, error: Exception) -> None:
        if not self.eof and self.error is None:
            self.error = error
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    async def readany(self) -> bytes:
        chunks = self._chunks
        while not chunks:
            if self.error is not None:
                raise self.error
            if self.eof:
                return b""
            waiter = self._waiter = asyncio.get_running_loop().create_future()
            await waiter
        data = chunks.popleft() if len(chunks) == 1 else b"".join(chunks)
        chunks.clear()
        self._size = 0
        self._conn.resume("body")
        return data


class _Request(Inbound):
    """One request as parsed here: an :class:`~mesh.proxy.forward.Inbound` for the
    forwarder, with what this connection needs to know of it."""

    __slots__ = ("keep_alive", "upgrade", "version")

    def __init__(  # every Inbound field set here (once per request: no super() call)
        self,
        conn: H1Connection,
        method: str,
        target: str,
        authority: str | None,
        headers: list[tuple[str, str]],
        body: Body,
        version: str,
        upgrade: bool,
    ) -> None:
        self.listener = conn.server.port
        self.method = method
        self.target = target
        self.items = headers
        self.authority = authority
        self.peer = conn.peer_ip
        self.body = body
        self.proto = "http"
        self.request = None
        self.tunnel = conn.peer_identity
        self.version = version
        self.keep_alive = conn.parser.should_keep_alive()
        self.upgrade = upgrade  # the connection switches protocols after it: tunnel


class H1Server:
    """The HTTP/1.1 connections of one listener port."""

    def __init__(self, ctx: Context, port: int) -> None:
        self.ctx = ctx
        self.port = port
        self.closing = False  # the listener was removed (or the proxy drains)
        self.connections: set[H1Connection] = set()

    def connection(self) -> H1Connection:
        return H1Connection(self)

    def retire_all(self) -> None:
        """Idle connections close now, busy ones after their current request."""
        self.closing = True
        for conn in list(self.connections):
            conn.retire()

    def abort_all(self) -> None:
        for conn in list(self.connections):
            conn.abort()

    def active(self) -> int:
        return len(self.connections)


class H1Connection(asyncio.Protocol, Front):
    """One client connection: see the module docstring for its states."""

    def __init__(self, server: H1Server) -> None:
        self.server = server
        ctx = self.ctx = server.ctx
        options = ctx.options
        self._max_line = options.max_header_size
        self._max_headers = options.max_headers
        self.transport: asyncio.Transport | None = None
        self.peer_ip = ""
        # from an mTLS tunnel (mesh.proxy.inbound): the identity the peer's certificate
        # proves, and who is told when the connection ends
        self.peer_identity: str | None = None
        self.on_close: Callable[[], None] | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.closed = False
        # reading
        self._in_message = False  # between on_message_begin and on_message_complete
        self._in_head = False  # between on_message_begin and on_headers_complete
        self._url: list[bytes] = []
        self._url_size = 0
        self._headers: list[tuple[str, str]] = []
        self._receiving: BodyReader | None = None
        self._line = 0  # bytes of the header line in progress, when a head spans reads
        self._past_line = False  # the request line of the head in progress is complete
        self._completed = 0  # messages completed during the current read
        self._read = b""  # the read being parsed, until a request starts in it (see _version)
        self._head_read = b""  # the read the head in progress started, if at its beginning
        self._paused: set[str] = set()  # why reading is paused
        self._eof = False  # the client half-closed
        self._refused: bytes | None = None  # an answer to write, then close
        self._switching = False  # the request llhttp stopped at switches protocols
        self._framing = b""  # its body's framing, when it does not and has a body
        self._priming = False  # a new parser reads the head that frames that body
        # serving
        self.current: _Request | None = None
        self.queue: deque[_Request] = deque()
        self._parsing = False  # inside feed_data: requests are served after it returns
        self._to_serve: _Request | None = None
        self._exchange: Exchange | None = None  # the current request's, until its answer
        self._after_drain: _Request | None = None  # answered; done once the client reads it
        self._task: asyncio.Task[None] | None = None  # relaying a long answer, or a tunnel
        self._close_after = False
        self._said_close = False  # the current answer says Connection: close
        self._loop = asyncio.get_running_loop()
        self._tick = min(options.header_timeout, options.keepalive_timeout)
        self._timer: asyncio.TimerHandle | None = None  # the header or keep-alive deadline's
        self._timer_at = 0.0  # when it fires
        self._timing = ""  # what the deadline is for: "headers", "idle" or nothing (busy)
        self._deadline = 0.0
        self._probe_timer: asyncio.TimerHandle | None = None
        self._answering = False  # a byte of the current answer was written
        self._write_timer: asyncio.TimerHandle | None = None
        self._write_paused = False
        self._drain: list[asyncio.Future[None]] = []
        # after an upgrade
        self._sink: Sink | None = None
        self._early: list[bytes] | None = None  # bytes after an upgrade request, for the tunnel

    # -- transport callbacks ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass
        peer = transport.get_extra_info("peername")
        self.peer_ip = peer[0] if peer else ""
        self.server.connections.add(self)
        self.ctx.metrics.opened("http")
        self._due("headers", self.ctx.options.header_timeout)

    def data_received(self, data: bytes) -> None:
        if self._sink is not None:
            self._sink.feed_data(data)
            return
        if self._early is not None:
            self._early.append(data)
            if sum(map(len, self._early)) > HIGH_WATER:
                self.pause("upgrade")
            return
        if self._refused is not None or self.closed:
            return
        self._completed = 0
        self._parsing = True
        try:
            self._feed(data)
        finally:
            self._parsing = False
        request = self._to_serve
        if request is not None:
            self._to_serve = None
            self._serve(request)

    def _feed(self, data: bytes) -> None:
        while data:
            data = self._feed_once(data)

    def _feed_once(self, data: bytes) -> bytes:
        """Parse ``data``; what is left to parse after an upgrade offer that is ignored."""
        self._read = b"" if self._in_message else data
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            rest = data[exc.args[0] :]
            if not self._switching:
                self._resume()
                return rest
            self._early = [rest] if rest else []
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__
            if not isinstance(cause, _Refuse):
                raise
            self.refuse(cause.status, cause.detail)
        except httptools.HttpParserError as exc:
            detail = str(exc) or "malformed request"
            self.refuse(400, detail, answer=detail not in _NOT_HTTP1)
        else:
            if self._in_head:
                self._check_line(data, whole=self._completed == 0)
        return b""

    def _resume(self) -> None:
        """Go on reading HTTP after a request whose upgrade offer is ignored: a new parser,
        first primed with a head that frames that request's body (if any) as it was framed."""
        self.parser = httptools.HttpRequestParser(self)
        framing, self._framing = self._framing, b""
        if framing:
            self._priming = True
            self.parser.feed_data(b"POST / HTTP/1.1\r\n%b\r\n\r\n" % framing)

    def _check_line(self, data: bytes, *, whole: bool) -> None:
        """The header line in progress at the end of a read must stay within the limit
        (complete lines are checked by the callbacks). ``whole``: all of ``data`` belongs to
        this head (no request ended in this read); otherwise where the head starts is not
        known and this read is not counted (one read: memory stays bounded)."""
        newline = data.rfind(b"\n")
        if not whole:
            self._line = 0
        elif newline < 0:
            self._line += len(data)
        else:
            self._line = len(data) - newline - 1
            self._past_line = True
        if self._line > self._max_line:
            status = 431 if self._headers or self._past_line else 414
            what = "header line" if status == 431 else "request line"
            self.refuse(status, f"{what} longer than {self._max_line} bytes")

    def eof_received(self) -> bool:
        self._eof = True
        if self._sink is not None:
            self._sink.feed_eof()
            return True
        if self._receiving is not None:
            self._receiving.fail(ClientGone("the client closed its side mid-body"))
        if self.current is None and not self.queue:
            return False  # nothing asked, nothing to answer: close
        self._probe_timer = asyncio.get_running_loop().call_later(PROBE_AFTER, self._probe)
        return True  # answer what was asked (the queue too), then close

    def _probe(self, delay: float = 0.0) -> None:
        """After a FIN: half-closed (still reading: answer it) or gone (closed: give up)?

        TCP cannot tell the two apart until something is sent, so a client whose answer takes
        longer than :data:`PROBE_AFTER` is sent an interim ``100 Continue`` (HTTP/1.1 clients
        must skip unexpected 1xx answers); a closed client's kernel answers it with a reset,
        which the socket's state shows. Checked again with growing pauses while the answer is
        pending."""
        self._probe_timer = None
        request = self.current
        if self.closed or (request is None and not self.queue):
            return
        if not delay:
            if self._answering or request is None or request.version != "1.1":
                return  # bytes of the answer will show it; a 1.0 client gets no 1xx
            self.write(_CONTINUE)
        elif _closed_by_peer(self.transport):
            self.abort()  # connection_lost cancels the request: the client is gone (499)
            return
        delay = min(1.0, max(0.01, delay * 2))
        self._probe_timer = asyncio.get_running_loop().call_later(delay, self._probe, delay)

    def pause_writing(self) -> None:
        self._write_paused = True
        if self._write_timer is None:
            loop = asyncio.get_running_loop()
            timeout = self.ctx.options.write_timeout
            self._write_timer = loop.call_later(timeout, self._write_timeout)

    def resume_writing(self) -> None:
        self._write_paused = False
        self._stop_write_timer()
        waiters, self._drain = self._drain, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)
        if self._after_drain is not None:
            self._drained()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.on_close is not None:
            self.on_close()
            self.on_close = None
        self._stop_timer()
        if self._probe_timer is not None:
            self._probe_timer.cancel()
        self._stop_write_timer()
        if self in self.server.connections:
            self.server.connections.discard(self)
            self.ctx.metrics.closed("http")
            self.ctx.gate.leave(self.peer_ip)
        gone = ClientGone(f"the client closed the connection{f': {exc!r}' if exc else ''}")
        if self._receiving is not None:
            self._receiving.fail(gone)
        for queued in self.queue:
            reader = queued.body.reader
            if isinstance(reader, BodyReader):
                reader.fail(gone)
        waiters, self._drain = self._drain, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_exception(ConnectionResetError("the client closed the connection"))
                waiter.exception()
        if self._sink is not None:
            self._sink.connection_lost()  # the tunnel ends as a tunnel ends: one side closed
            return
        task = self._task
        if task is not None and not task.done():
            task.cancel()  # the client is gone: the attempt ends neutral (forward.py)
            return  # the task finishes the request
        ex = self._exchange
        request = self.current
        if ex is not None:
            self._exchange = None
            ex.abandon()
        if request is not None and (ex is not None or self._after_drain is request):
            self._after_drain = None
            self._finish(request)

    # -- parser callbacks ---------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._in_message = self._in_head = True
        self._head_read, self._read = self._read, b""  # only the read's first request starts it
        self._url = []
        self._url_size = 0
        self._headers = []
        self._line = 0
        self._past_line = False
        if self.current is None and self._timing != "headers":
            self._due("headers", self.ctx.options.header_timeout)

    def on_url(self, url: bytes) -> None:
        self._url_size += len(url)
        if self._url_size > self._max_line:
            raise _Refuse(414, f"request line longer than {self._max_line} bytes")
        self._url.append(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        headers = self._headers
        if len(headers) >= self._max_headers or len(name) + len(value) + 2 > self._max_line:
            if len(headers) >= self._max_headers:
                raise _Refuse(431, f"more than {self._max_headers} headers")
            raise _Refuse(431, f"header line longer than {self._max_line} bytes")
        headers.append((name.decode("latin-1"), value.decode("utf-8", "surrogateescape")))

    def on_headers_complete(self) -> None:
        self._in_head = False
        if self._priming:  # the head _resume made up: the body is the current request's
            self._priming = False
            self._head_read = b""
            return
        parser = self.parser
        raw_method = parser.get_method()
        at = len(raw_method) + self._url_size + 2  # METHOD SP target SP: where the version is
        version = _version(self._head_read, at) or parser.get_http_version()
        self._head_read = b""
        if version not in _VERSIONS:
            raise _Refuse(505, f"HTTP/{version} is not served here, only HTTP/1.0 and 1.1")
        url = self._url
        target = (url[0] if len(url) == 1 else b"".join(url)).decode("utf-8", "surrogateescape")
        headers = self._headers
        length: int | None = None
        chunked = expect = offered = False
        for name, value in headers:
            if len(name) in _FRAMING_LENGTHS:
                low = name.lower()
                if low == "content-length":
                    length = int(value)  # llhttp checked it
                elif low == "transfer-encoding":
                    chunked = True  # llhttp refuses any other final coding in a request
                elif low == "expect":
                    expect = value.lower() == "100-continue"
                elif low == "upgrade":
                    offered = True
        if chunked or length:
            reader = self._receiving = BodyReader(self)
            body = Body(reader, length, chunked=chunked)
            if expect and version == "1.1":
                body.on_first_read = self._continue
        else:
            body = Body(None, length, chunked=False)
        authority = None
        if target[:1] != "/" and "://" in target:
            authority, target = request_target(target)
        method = raw_method.decode("latin-1")
        # llhttp stops at an upgrade only when an Upgrade header was sent, or for CONNECT
        upgrade = (offered or method == "CONNECT") and parser.should_upgrade()
        if upgrade:  # llhttp stops after this request: switch protocols, or go on reading?
            upgrade = self._switching = method == "CONNECT" or websocket_upgrade(headers)
            if not upgrade:
                self._framing = _framing(chunked, length)
        request = _Request(self, method, target, authority, headers, body, version, upgrade)
        if self.current is None:
            self._timing = ""  # busy: no deadline until the answer is out
            self._start(request)
        else:
            self.queue.append(request)
            self.pause("pipeline")

    def on_body(self, body: bytes) -> None:
        if self._receiving is not None:
            self._receiving.feed(body)

    def on_message_complete(self) -> None:
        if self._framing:
            return  # an ignored upgrade offer's head: its body follows (_resume)
        self._in_message = False
        self._completed += 1
        if self._receiving is not None:
            self._receiving.feed_eof()
            self._receiving = None

    # -- flow control and timers --------------------------------------------------------------

    def pause(self, why: str) -> None:
        if not self._paused and self.transport is not None and not self.closed:
            self.transport.pause_reading()
        self._paused.add(why)

    def resume(self, why: str) -> None:
        paused = self._paused
        if why in paused:
            paused.discard(why)
            if not paused and self.transport is not None and not self.closed:
                self.transport.resume_reading()

    async def drain(self) -> None:
        """Until the client has taken what was written (``--write-timeout`` bounds it)."""
        if self.closed:
            raise ConnectionResetError("the client closed the connection")
        if not self._write_paused:
            return
        waiter = asyncio.get_running_loop().create_future()
        self._drain.append(waiter)
        await waiter

    def _due(self, timing: str, seconds: float) -> None:
        """Set the header or keep-alive deadline. The timer is lazy: it is re-armed when it
        fires early rather than cancelled and made again for every request; it fires at
        least every ``_tick`` seconds, so a new deadline is never later than the timer."""
        loop = self._loop
        now = loop.time()
        self._timing = timing
        deadline = self._deadline = now + seconds
        if self._timer is None or self._timer_at > deadline:
            if self._timer is not None:
                self._timer.cancel()
            at = self._timer_at = min(deadline, now + self._tick)
            self._timer = loop.call_at(at, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        if self.closed or not self._timing:
            return  # busy (or gone): the next deadline makes a timer again
        now = self._loop.time()
        if now < self._deadline:
            at = self._timer_at = min(self._deadline, now + self._tick)
            self._timer = self._loop.call_at(at, self._on_timer)
            return
        timing, self._timing = self._timing, ""
        if timing == "headers":
            self._header_timeout()
        else:
            self._idle_timeout()

    def _stop_timer(self) -> None:
        self._timing = ""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _stop_write_timer(self) -> None:
        if self._write_timer is not None:
            self._write_timer.cancel()
            self._write_timer = None

    def _header_timeout(self) -> None:
        if self.current is not None or self.closed:
            return
        if not self._in_message:  # connected (or idle) and never said anything
            self.ctx.metrics.count("client_timeouts", "headers")
            self.close()
            return
        self.ctx.metrics.count("client_timeouts", "headers")
        self.refuse(408, "the request headers took too long")

    def _idle_timeout(self) -> None:
        if self.current is None and not self.queue and not self._in_message:
            self.close()

    def _write_timeout(self) -> None:
        self._write_timer = None
        self.ctx.metrics.count("client_timeouts", "response")
        self.abort()

    # -- answers ------------------------------------------------------------------------------

    def refuse(self, status: int, detail: str, *, answer: bool = True) -> None:
        """Answer ``status`` (or nothing: ``answer=False``) once the requests before it are
        answered, read nothing more, close."""
        self.ctx.metrics.count("bad_requests", str(status))
        self.pause("refused")
        body = f"{status} {HTTPStatus(status).phrase}: {detail}\n".encode(errors="replace")
        self._refused = b"".join(
            (
                status_line(status),
                b"Content-Type: text/plain; charset=utf-8\r\n",
                b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body),
                body,
            )
        )
        if not answer:
            self._refused = b""  # (not HTTP/1.x: nothing the peer could read)
        if self.current is None and not self.queue:
            self._write_refusal()

    def _write_refusal(self) -> None:
        if self.transport is not None and self._refused is not None and not self.closed:
            self.transport.write(self._refused)
        self.close()

    def _continue(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.write(_CONTINUE)

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.closed:
            self.transport.write(data)
            self._answering = True

    def close(self) -> None:
        """Close after what was written is sent; a client that does not read it is cut after
        ``--write-timeout``."""
        transport = self.transport
        if transport is None or self.closed:
            return
        self.closed = True
        self._stop_timer()
        transport.close()
        if transport.get_write_buffer_size() > 0 and self._write_timer is None:
            loop = asyncio.get_running_loop()
            self._write_timer = loop.call_later(self.ctx.options.write_timeout, self._cut)

    def _cut(self) -> None:
        self._write_timer = None
        if self.transport is not None:
            self.ctx.metrics.count("client_timeouts", "response")
            self.transport.abort()

    def abort(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    def retire(self) -> None:
        """Stop after the current request (at once when idle): the listener was removed or the
        proxy no longer accepts."""
        self._close_after = True
        if self.current is None and not self.queue:
            self._part()

    def _part(self) -> None:
        """Close an idle connection: FIN, then drop what the client still sends (a request
        that crossed the FIN) until it closes too or :data:`LINGER` seconds have passed.
        Closing at once would answer such a request with a reset, which may also destroy the
        FIN the client has not read yet."""
        transport = self.transport
        if transport is None or self.closed:
            return
        if not transport.can_write_eof() or transport.get_write_buffer_size() > 0:
            self.close()  # (which cuts a client that does not read what is left)
            return
        self.closed = True  # data_received drops everything from now on
        self._stop_timer()
        transport.write_eof()
        self._loop.call_later(LINGER, transport.close)

    def closing(self) -> bool:
        """Whether the answer about to be written is to be this connection's last (it then
        says ``Connection: close``, and the connection closes once it is out)."""
        return self._close_after or self.server.closing or self.ctx.draining

    # -- serving ------------------------------------------------------------------------------

    def _start(self, request: _Request) -> None:
        """Serve ``request`` once the read it came in has been parsed (not from inside the
        parser's callbacks: its answer may be written, and the next request started, at once);
        a pipelined one on the next turn of the loop (not from inside the previous answer)."""
        self.current = request
        self._answering = False
        self._said_close = False
        if self._parsing:
            self._to_serve = request
        else:
            self._loop.call_soon(self._serve, request)

    def _serve(self, request: _Request) -> None:
        if self.current is not request or self.closed:
            return
        ctx = self.ctx
        ctx.inflight += 1
        if request.upgrade:
            self._close_after = True
            self._task = self._loop.create_task(self._upgrade(request))
            return
        ex = ctx.forwarder.start(request, ctx.snapshot, self)
        if not ex.finished:  # (a denial is answered before start returns)
            self._exchange = ex

    def _finish(self, request: _Request) -> None:
        """The answer to ``request`` is written (or the client is gone)."""
        if self.current is not request:
            return
        self._exchange = None
        self._task = None
        if self._write_paused and not self.closed:
            self._after_drain = request  # the next request once the client took this answer
            return
        self.ctx.inflight -= 1
        self._done(request)

    def _drained(self) -> None:
        request, self._after_drain = self._after_drain, None
        if request is not None and self.current is request:
            self.ctx.inflight -= 1
            self._done(request)

    def _done(self, request: _Request) -> None:
        """The answer to ``request`` is out: next request, idle, or close."""
        self.current = None
        if self.closed:
            return
        reader = request.body.reader
        if not request.keep_alive or (isinstance(reader, BodyReader) and not reader.eof):
            self._close_after = True  # (an unread body cannot be skipped safely)
        if self._close_after or self.server.closing:
            if self._refused is not None and not self.queue:
                self._write_refusal()
            elif self._said_close:
                self.close()
            else:
                self._part()  # the client was not told: it may be sending its next request
            return
        if self.queue:
            self._start(self.queue.popleft())
            if not self.queue:
                self.resume("pipeline")
        elif self._refused is not None:
            self._write_refusal()
        elif self._eof:
            self.close()
        elif self._in_message:
            self._due("headers", self.ctx.options.header_timeout)
        else:
            self._due("idle", self.ctx.options.keepalive_timeout)

    # -- the forwarder's front (mesh.proxy.forward.Front) ----------------------------------------

    def answer(self, ex: Exchange) -> None:
        request = self.current
        if request is None or ex.front is not self:
            return
        if ex.status in (408, 499):
            self._close_after = True
        self.local(ex)
        self._finish(request)

    def deliver(self, ex: Exchange) -> None:
        request = self.current
        upstream = ex.response
        if request is None or upstream is None:
            return
        self._exchange = None
        status = upstream.status
        length = upstream.content_length
        if request.method == "HEAD" or status in _NO_BODY or status < 200:
            data: bytes | None = b""
            upstream.whole()
        elif length is not None and length <= SMALL_RESPONSE:
            data = upstream.whole()
        else:
            data = None
        if data is None:  # more to come: relayed as it arrives
            self._task = self._loop.create_task(self._relay(ex, request))
            return
        self.write(self._response_head(upstream, request, ex, chunked=False, body=data))
        upstream.release()
        ex.fw.complete(ex, status=status, sent=len(data))  # type: ignore[union-attr]
        self._finish(request)

    async def _relay(self, ex: Exchange, request: _Request) -> None:
        try:
            await self.relay(self.ctx.forwarder, ex, request)
            if self._write_paused:
                await self.drain()  # read the next request once this answer is taken
        except (ConnectionError, asyncio.CancelledError):
            self.abort()
        except Exception:
            log.exception("error relaying %s %s", request.method, request.target[:200])
            self.abort()
        finally:
            self._task = None
            self._finish(request)

    async def _upgrade(self, request: _Request) -> None:
        try:
            if request.method != "CONNECT":
                await tunnel(self.ctx, self, request)  # a WebSocket upgrade
                return
            # CONNECT: nothing after it can be parsed; answered, then closed
            fw = self.ctx.forwarder
            ex = await fw.exchange(request, self.ctx.snapshot)
            if ex.response is None:
                self.local(ex)
            else:
                await self.relay(fw, ex, request)
        except (ConnectionError, asyncio.CancelledError):
            self.abort()
        except Exception:
            log.exception("error serving %s %s", request.method, request.target[:200])
            self.abort()
        finally:
            self._task = None
            self._finish(request)

    def take_over(self, sink: Sink) -> None:
        """From now on the client's bytes go to ``sink`` (an upgraded connection)."""
        early, self._early = self._early or [], None
        self._sink = sink
        for data in early:
            sink.feed_data(data)
        self.resume("upgrade")
        if self._eof:
            sink.feed_eof()

    def local(self, ex: Exchange) -> None:
        """The proxy's own answer to the current request: the status with a short body naming
        the reason (the tunnel's too)."""
        request = self.current
        assert request is not None
        body = local_text(ex).encode(errors="replace")
        lines = [status_line(ex.status), b"Content-Length: %d\r\n" % len(body)]
        lines += [
            f"{name}: {value}\r\n".encode("utf-8", "surrogateescape")
            for name, value in local_headers(ex)
        ]
        lines.append(self._connection_header(request))
        lines.append(b"\r\n")
        if request.method != "HEAD":
            lines.append(body)
        self.write(b"".join(lines))
        self.ctx.forwarder.complete(ex, status=ex.status, sent=len(body))

    def _connection_header(self, request: _Request) -> bytes:
        if self.closing():
            self._close_after = self._said_close = True  # closed once this answer is out
            return b"Connection: close\r\n"
        if request.version == "1.0":
            return b"Connection: keep-alive\r\n"
        return b""

    async def relay(self, fw: Forwarder, ex: Exchange, request: _Request) -> None:
        """Stream the upstream's response to the client; cut it if the upstream breaks."""
        upstream = ex.response
        assert upstream is not None
        status = upstream.status
        length = upstream.content_length
        bodyless = request.method == "HEAD" or status in _NO_BODY or status < 200
        chunked = length is None and not bodyless and request.version == "1.1"
        if length is None and not bodyless and not chunked:
            self._close_after = True  # HTTP/1.0 client: the end of the body is the close
        sent = 0
        started = False
        try:
            if bodyless or (length is not None and length <= SMALL_RESPONSE):
                parts = []
                while chunk := await upstream.read():
                    parts.append(chunk)
                data = b"".join(parts)
                if bodyless:
                    data = b""
                head = self._response_head(upstream, request, ex, chunked=False)
                self.write(head + data if data else head)
                sent = len(data)
            else:
                self.write(self._response_head(upstream, request, ex, chunked=chunked))
                started = True
                while chunk := await upstream.read():
                    if chunked:
                        self.write(b"%x\r\n%b\r\n" % (len(chunk), chunk))
                    else:
                        self.write(chunk)
                    sent += len(chunk)
                    if self._write_paused:
                        await self.drain()
                if chunked:
                    self.write(b"0\r\n\r\n")
            upstream.release()
        except UpstreamError as exc:
            upstream.close()
            if started:
                self.abort()  # the client must see a truncated response
                fw.complete(ex, status=status, sent=sent, failure=exc.failure)
                return
            fw.broken(ex, exc.failure, exc.detail)
            self.local(ex)
            return
        except (ConnectionError, ClientGone):
            upstream.close()
            fw.complete(ex, status=status, sent=sent, client_gone=True)
            self.abort()
            return
        except asyncio.CancelledError:
            upstream.close()
            fw.complete(ex, status=status, sent=sent, client_gone=True)
            raise
        fw.complete(ex, status=status, sent=sent)

    def _response_head(
        self,
        upstream: Response,
        request: _Request,
        ex: Exchange,
        *,
        chunked: bool,
        body: bytes = b"",
    ) -> bytes:
        """The head for the client (and ``body`` after it: one join, one copy)."""
        edits = response_edits(ex)
        if edits:
            head = edited_head(upstream.status, upstream.header_items(), edits)
        else:
            head = upstream.http1_head()
        connection = self._connection_header(request)
        if chunked:
            return b"".join((head, b"Transfer-Encoding: chunked\r\n", connection, b"\r\n"))
        return b"".join((head, connection, b"\r\n", body))


def _version(read: bytes, at: int) -> str | None:
    """The HTTP version of the request line that ``read`` begins with, when it is 1.1 or 1.0
    (llhttp checked the line; ``at``: where the version starts if the line is as sent by the
    book, one space apart); None: ask the parser (httptools formats a new string each time).
    Nine bytes ending in CR can only be the line's end: a CR is nowhere else in it, so a line
    spaced otherwise, or bytes before it, never match."""
    tail = read[at : at + 9]
    if tail == b"HTTP/1.1\r":
        return "1.1"
    if tail == b"HTTP/1.0\r":
        return "1.0"
    return None


def _framing(chunked: bool, length: int | None) -> bytes:
    """The framing header of a request body (b"" when it has none)."""
    if chunked:
        return b"Transfer-Encoding: chunked"
    return b"Content-Length: %d" % length if length else b""


def _closed_by_peer(transport: asyncio.BaseTransport | None) -> bool:
    """Whether the peer reset the connection (Linux: TCP_INFO's state is CLOSE)."""
    sock = transport.get_extra_info("socket") if transport is not None else None
    if sock is None:
        return False
    try:
        if hasattr(socket, "TCP_INFO"):
            info: bytes = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)
            return info[0] == _TCP_CLOSE
        error: int = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        return error != 0
    except OSError:
        return True


def request_target(target: str) -> tuple[str | None, str]:
    """(authority, target): the authority is set for absolute-form targets
    (``GET http://h/p``), whose host wins over the Host header (RFC 9112 section 3.2.2)."""
    if not target.startswith("/") and "://" in target:
        rest = target.split("://", 1)[1]
        authority, slash, tail = rest.partition("/")
        return authority or None, slash + tail if slash else "/"
    return None, target
