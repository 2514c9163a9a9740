"""The HTTP/1.1 front end, on aiohttp's low-level server.

aiohttp parses requests (C parser, keep-alive, pipelining, chunked bodies, limits) and calls
:meth:`HttpListener.handle` once per request; the handler drives the request with the
:class:`~mesh.proxy.forward.Forwarder` and streams the response body back chunk by chunk, with
backpressure both ways, so memory stays bounded whatever the body size.

:class:`H1Protocol` adds what a proxy facing untrusted clients needs on top of aiohttp:

- a header timeout (slowloris): bytes of a request arrived but its headers did not complete
  within ``--header-timeout`` -> 408 and close (before the first byte, the listener's
  :class:`~mesh.proxy.listeners.Sniffer` times out);
- 431 (header too large, too many headers) and 414 (request line too long) instead of 400,
  without a traceback in the log for each abusive client;
- graceful retirement: idle keep-alive connections close at once, busy ones after their
  current request (listener removed, or draining on SIGTERM).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from http import HTTPStatus
from typing import TYPE_CHECKING, Any, NoReturn

from aiohttp import web
from aiohttp.http_exceptions import BadHttpMessage, LineTooLong
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest
from aiohttp.web_server import Server

from mesh.core.policies import Failure
from mesh.proxy.body import Body, ClientGone
from mesh.proxy.forward import Exchange, Forwarder
from mesh.proxy.headers import response_headers
from mesh.proxy.upstream import UpstreamError

if TYPE_CHECKING:
    from mesh.proxy.listeners import HttpListener

SMALL_RESPONSE = 64 * 1024
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


class H1Server(Server):
    """aiohttp's connection manager, making :class:`H1Protocol` handlers."""

    def __init__(self, listener: HttpListener, **kwargs: Any) -> None:
        super().__init__(listener.handle, handler_cancellation=True, **kwargs)
        self.listener = listener

    def __call__(self) -> RequestHandler:
        return H1Protocol(self, loop=self._loop, listener=self.listener, **self._kwargs)

    def retire_all(self) -> None:
        for conn in self.connections:
            if isinstance(conn, H1Protocol):
                conn.retire()


class H1Protocol(RequestHandler):
    def __init__(self, manager: H1Server, *, listener: HttpListener, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self.listener = listener
        self.peer_ip = ""
        self.busy = False
        self._counted = False
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        peer = transport.get_extra_info("peername")
        self.peer_ip = peer[0] if peer else ""
        self.listener.proxy.metrics.opened("http")
        self._counted = True
        self._arm()

    def data_received(self, data: bytes) -> None:
        if not self.busy and self._timer is None and data:
            self._arm()
        super().data_received(data)

    def _arm(self) -> None:
        self._timer = self._loop.call_later(self.listener.header_timeout, self._header_timeout)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _header_timeout(self) -> None:
        self._timer = None
        if self.busy or self.transport is None:
            return
        self.listener.proxy.metrics.count("bad_requests", "408")
        self.listener.proxy.metrics.count("client_timeouts", "headers")
        self.transport.write(
            b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
        )
        self.force_close()

    def refuse_version(self) -> NoReturn:
        """505 for a request line that is not HTTP/1.0 or 1.1, then close (aiohttp would answer
        an HTTP/0.9 request with an ``HTTP/0.9`` status line and headers)."""
        self.listener.proxy.metrics.count("bad_requests", "505")
        if self.transport is not None:
            self.transport.write(
                b"HTTP/1.1 505 HTTP Version Not Supported\r\nConnection: close\r\n"
                b"Content-Length: 0\r\n\r\n"
            )
            self.transport.close()
        raise asyncio.CancelledError()

    def request_started(self) -> None:
        self.busy = True
        self._disarm()

    def request_ended(self) -> None:
        self.busy = False

    def retire(self) -> None:
        if self.busy:
            self.close()
        else:
            self.force_close()

    def connection_lost(self, exc: BaseException | None) -> None:
        self._disarm()
        if self._counted:
            self._counted = False
            self.listener.proxy.metrics.closed("http")
        super().connection_lost(exc)

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if status == 500 or not isinstance(exc, BadHttpMessage):
            return super().handle_error(request, status, exc, message)
        if isinstance(exc, LineTooLong):
            line = exc.args[0] if exc.args else b""
            first = line[:1].encode() if isinstance(line, str) else bytes(line[:1])
            status = 414 if first in (b"/", b"h") else 431  # the request target, or a header
        elif "Too many headers" in str(exc):
            status = 431
        self.listener.proxy.metrics.count("bad_requests", str(status))
        if request.writer.output_size > 0:
            raise ConnectionError("response already started")
        phrase = HTTPStatus(status).phrase
        resp = web.Response(status=status, text=f"{status} {phrase}: {exc.message}\n")
        resp.force_close()
        return resp


class _Whole(web.StreamResponse):
    """A response whose body is already here: headers and body go out in one write."""

    _send_headers_immediately = False


def h1_body(request: BaseRequest, protocol: H1Protocol) -> Body:
    headers = request.headers
    chunked = "chunked" in headers.get("Transfer-Encoding", "").lower()
    body = Body(
        request.content if request.body_exists else None, request.content_length, chunked=chunked
    )
    if not body.empty and headers.get("Expect", "").lower() == "100-continue":
        transport = protocol.transport
        if transport is not None:
            body.on_first_read = lambda: transport.write(_CONTINUE)
    return body


def request_target(request: BaseRequest) -> tuple[str | None, str]:
    """(authority, target): the authority is set for absolute-form targets
    (``GET http://h/p``), whose host wins over the Host header (RFC 9112 section 3.2.2)."""
    target = request.raw_path
    if not target.startswith("/") and "://" in target:
        rest = target.split("://", 1)[1]
        authority, slash, tail = rest.partition("/")
        return authority or None, slash + tail if slash else "/"
    return None, target


def local_response(fw: Forwarder, ex: Exchange, *, close: bool) -> web.Response:
    """The proxy's own answer: the status with a short body naming the reason."""
    resp = _local(ex, close=close)
    fw.complete(ex, status=ex.status, sent=resp.content_length or 0)
    return resp


def _local(ex: Exchange, *, close: bool) -> web.Response:
    headers = {"X-Simmesh-Reason": ex.reason}
    if ex.status == 429:
        headers["Retry-After"] = str(max(1, math.ceil(ex.retry_after)))
    resp = web.Response(status=ex.status, text=local_text(ex), headers=headers)
    if close:
        resp.force_close()
    return resp


def local_text(ex: Exchange) -> str:
    try:
        phrase = HTTPStatus(ex.status).phrase
    except ValueError:
        phrase = "Client Closed Request" if ex.status == 499 else "Error"
    return f"{ex.status} {phrase}: {ex.reason}: {ex.detail}\n"


async def relay(
    fw: Forwarder, request: BaseRequest, ex: Exchange, *, close: Callable[[], bool]
) -> web.StreamResponse:
    """Stream the upstream's response to the client; truncate it if the upstream breaks."""
    upstream = ex.response
    assert upstream is not None
    status = upstream.status
    length = upstream.content_length
    whole = length is not None and length <= SMALL_RESPONSE
    out = (_Whole if whole else web.StreamResponse)(
        status=status,
        reason=upstream.reason or None,
        headers=response_headers(upstream.header_items()),
    )
    sent = 0
    failure: Failure | None = None
    gone = False
    try:
        if whole:
            parts = []
            while chunk := await upstream.read():
                parts.append(chunk)
            data = b"".join(parts)
            if close():
                out.force_close()
            await out.prepare(request)
            if data:
                await out.write(data)
            sent = len(data)
        else:
            if close():
                out.force_close()
            await out.prepare(request)
            while chunk := await upstream.read():
                await out.write(chunk)
                sent += len(chunk)
        upstream.release()
    except UpstreamError as exc:
        failure = exc.failure
        upstream.close()
        if out.prepared:
            request.protocol.force_close()  # the client must see a truncated response
        else:
            fw.broken(ex, failure, exc.detail)
            return local_response(fw, ex, close=close())
    except (ConnectionError, ClientGone):
        gone = True
        upstream.close()
    except asyncio.CancelledError:
        upstream.close()
        fw.complete(ex, status=status, sent=sent, client_gone=True)
        raise
    fw.complete(ex, status=status, sent=sent, failure=failure, client_gone=gone)
    return out
