"""What the request driver needs from an upstream client, whatever the protocol.

An attempt is started with :meth:`Upstream.start`, which returns at once with a :class:`Call`
(to cancel it) and later tells its :class:`Handler` exactly once: ``responded(response)`` when
the response headers arrived, or ``failed(error)`` with an :class:`UpstreamError` carrying the
core's :class:`~mesh.core.policies.Failure` kind: CONNECT (never sent), RESET (closed or reset
before a complete response) or TIMEOUT (no response in time). Neither is called from within
``start`` itself. Body chunks are read with :meth:`Response.read` (``b""`` at the end), which
raises UpstreamError too when the stream breaks half-way; :meth:`Response.whole` hands over a
body that is already complete, so a small response is relayed without waiting for anything.

:meth:`Upstream.send` is the same as a coroutine (for tests and simple callers). Clients
written as coroutines (``https`` through aiohttp, ``h2c``) get ``start`` from
:class:`TaskUpstream`: the attempt runs as a task and reports to the handler.

:class:`Response` and :class:`Handler` are mypyc traits, not Protocols: their implementations
name them as bases, and a compiled caller reaches their methods and attributes natively (a
Protocol-typed value is called by name, as Python would), once or more per request.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Awaitable, Callable, Iterable
from typing import Protocol, final

from mypy_extensions import mypyc_attr, trait

from mesh.core.policies import Failure
from mesh.proxy.body import Body
from mesh.proxy.headers import Outgoing


class UpstreamError(Exception):
    def __init__(self, failure: Failure, detail: str) -> None:
        super().__init__(detail)
        self.failure = failure
        self.detail = detail


@trait
class Response:
    """An upstream's response (each implementation also has ``reason``, the status line's
    phrase as text)."""

    status: int
    content_length: int | None

    def header_items(self) -> Iterable[tuple[str, str]]:
        raise NotImplementedError

    def http1_head(self) -> bytes:
        """The status line and the header lines for an HTTP/1.1 client, hop-by-hop headers
        left out (the client's framing and Connection header follow)."""
        raise NotImplementedError

    def trailers(self) -> list[tuple[str, str]] | None:
        raise NotImplementedError

    def whole(self) -> bytes | None:
        """The complete body if it is already here (then it is taken), else None."""
        raise NotImplementedError

    async def read(self) -> bytes:
        raise NotImplementedError

    def release(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


@trait
class Handler:
    """Who is told how an attempt went (the request driver)."""

    def responded(self, response: Response) -> None:
        raise NotImplementedError

    def failed(self, error: UpstreamError) -> None:
        raise NotImplementedError


class Call(Protocol):
    def cancel(self) -> None: ...


@final
class UpstreamRequest:
    """One upstream attempt's request, as every upstream client takes it: built once per
    attempt by the forwarder (positional arguments: a compiled caller passes them natively)."""

    __slots__ = (
        "authority",
        "body",
        "headers",
        "ip",
        "method",
        "path",
        "port",
        "scheme",
        "server_name",
        "timeout",
        "tunnel",
    )

    def __init__(
        self,
        scheme: str,
        ip: str,
        port: int,
        method: str,
        authority: str,
        path: str,
        headers: Outgoing | list[tuple[str, str]],
        body: Body,
        timeout: float | None,
        server_name: str | None,
        tunnel: TunnelHop | None = None,
    ) -> None:
        self.scheme = scheme
        self.ip = ip
        self.port = port
        self.method = method
        self.authority = authority
        self.path = path
        self.headers = headers
        self.body = body
        self.timeout = timeout  # per try; None: none
        self.server_name = server_name  # https: the name the certificate must carry
        self.tunnel = tunnel  # to a pod of another node: through its proxy, over mTLS


@final
class TunnelHop:
    """How an attempt reaches a pod of another node: that node's proxy at ``host:port``,
    over TLS with ``context`` (the caller's certificate), asking by ``server_name`` (SNI)
    for the certificate of ``expect`` (the pod's identity), with ``head`` (the target's
    header lines) added to the request (``pairs``: the same as HTTP/2 headers); ``pool``
    keys the pooled connections; ``preamble``, for a pipe (mesh.proxy.pipe), is the line
    that names the target once when a connection opens (``head`` is then sent only if the
    destination serves the pipe per request)."""

    __slots__ = (
        "context",
        "expect",
        "head",
        "host",
        "pairs",
        "pool",
        "port",
        "preamble",
        "server_name",
    )

    def __init__(
        self,
        host: str,
        port: int,
        context: ssl.SSLContext,
        server_name: str,
        expect: str,
        head: bytes,
        pool: str,
        pairs: list[tuple[str, str]],
        preamble: bytes = b"",
    ) -> None:
        self.preamble = preamble
        self.host = host
        self.port = port
        self.context = context
        self.server_name = server_name
        self.expect = expect
        self.head = head
        self.pool = pool
        self.pairs = pairs


class Upstream(Protocol):
    def start(self, handler: Handler, request: UpstreamRequest) -> Call: ...

    async def send(self, request: UpstreamRequest) -> Response: ...

    async def close(self) -> None: ...


class _TaskCall:
    """An attempt run as a task; cancelling it closes a response that arrives late."""

    __slots__ = ("_cancelled", "task")

    def __init__(self, attempt: Awaitable[Response], handler: Handler) -> None:
        self._cancelled = False
        self.task = asyncio.get_running_loop().create_task(self._run(attempt, handler))

    async def _run(self, attempt: Awaitable[Response], handler: Handler) -> None:
        try:
            response = await attempt
        except UpstreamError as exc:
            if not self._cancelled:
                handler.failed(exc)
            return
        if self._cancelled:
            response.close()
        else:
            handler.responded(response)

    def cancel(self) -> None:
        self._cancelled = True
        self.task.cancel()


@mypyc_attr(native_class=False)  # a mixin: ``send`` is the subclass's method
class TaskUpstream:
    """``start`` for a client written as ``async def send``."""

    send: Callable[[UpstreamRequest], Awaitable[Response]]

    def start(self, handler: Handler, request: UpstreamRequest) -> Call:
        return _TaskCall(self.send(request), handler)


@mypyc_attr(native_class=False)  # a mixin: ``start`` is the subclass's method
class CallbackUpstream:
    """``send`` for a client written as ``start`` (callbacks): the mirror of TaskUpstream."""

    start: Callable[[Handler, UpstreamRequest], Call]

    async def send(self, request: UpstreamRequest) -> Response:
        waiter = Waiter()
        call = self.start(waiter, request)
        try:
            return await waiter.future
        except asyncio.CancelledError:
            call.cancel()
            raise


class Waiter(Handler):
    """A :class:`Handler` that a coroutine awaits (``Upstream.send`` over ``start``)."""

    __slots__ = ("future",)

    def __init__(self) -> None:
        self.future: asyncio.Future[Response] = asyncio.get_running_loop().create_future()

    def responded(self, response: Response) -> None:
        if self.future.done():
            response.close()
        else:
            self.future.set_result(response)

    def failed(self, error: UpstreamError) -> None:
        if not self.future.done():
            self.future.set_exception(error)
