"""HTTP/1.1 and HTTPS upstreams through one aiohttp ClientSession.

One TCPConnector pools keep-alive connections per endpoint (ip, port, TLS), so the proxy does
not open a connection per request. The session is stripped for proxying: no cookie jar, no
automatic decompression, no default User-Agent/Accept headers, no redirects, URLs taken as
already encoded. aiohttp's exceptions are folded into the core's three failure kinds.
Response heads are bounded by aiohttp's parser: lines of 8190 bytes, ``max_headers`` headers
(a RESET, 502).

Timeouts: connecting is bounded by ``--connect-timeout`` (a CONNECT failure, never sent); the
service's per-try timeout bounds the wait for each read, from sending the request to its
response headers and then between body chunks (a TIMEOUT, answered 504 when nothing was sent
downstream yet).

HTTPS upstreams are pod IPs, whose certificates rarely name them: without ``--upstream-ca``
certificates are not verified (encryption without authentication, as most meshes do for
pod-to-pod TLS they do not manage); with it, the chain is verified against that CA and the
name checked is the service's cluster DNS name.

A request holds a slot of the :class:`~mesh.proxy.resources.UpstreamGate`
(``--max-upstream-connections``) from before it is sent until its response is released or
closed. aiohttp's idle keep-alive connections (at most as many as were busy at once, closed
after ``keepalive`` seconds) hold none: its pool offers no way to count them.
"""

from __future__ import annotations

import errno
import ssl
from collections.abc import Iterable

import aiohttp
from yarl import URL

from mesh.core.policies import Failure
from mesh.proxy.headers import Outgoing, response_head_lines, status_line
from mesh.proxy.resources import Slot, UpstreamGate
from mesh.proxy.upstream import Response, TaskUpstream, UpstreamError, UpstreamRequest

_SKIP = ("User-Agent", "Accept", "Accept-Encoding", "Content-Type")


def client_ssl_context(ca_file: str | None) -> ssl.SSLContext:
    if ca_file is None:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context
    return ssl.create_default_context(cafile=ca_file)


class HttpResponse(Response):
    __slots__ = ("_resp", "_slot", "content_length", "reason", "status")

    def __init__(self, resp: aiohttp.ClientResponse, slot: Slot) -> None:
        self._resp = resp
        self._slot = slot
        self.status = resp.status
        self.reason = resp.reason or ""
        self.content_length = resp.content_length

    def header_items(self) -> Iterable[tuple[str, str]]:
        return self._resp.headers.items()

    def http1_head(self) -> bytes:
        reason = self.reason.encode("utf-8", "surrogateescape") if self.reason else None
        lines = response_head_lines(self.header_items())
        return status_line(self.status, reason) + b"".join(lines)

    def whole(self) -> bytes | None:
        return None  # read it, chunk by chunk

    def trailers(self) -> list[tuple[str, str]] | None:
        return None

    async def read(self) -> bytes:
        try:
            return await self._resp.content.readany()
        except aiohttp.SocketTimeoutError as exc:
            raise UpstreamError(Failure.TIMEOUT, "upstream stalled mid-response") from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise UpstreamError(Failure.RESET, f"upstream broke mid-response: {exc!r}") from exc

    def release(self) -> None:
        self._resp.release()
        self._slot.release()

    def close(self) -> None:
        self._resp.close()
        self._slot.release()


class HttpUpstream(TaskUpstream):
    def __init__(
        self,
        *,
        connect_timeout: float,
        ca_file: str | None,
        keepalive: float = 15.0,
        max_headers: int = 100,
        gate: UpstreamGate | None = None,
    ) -> None:
        self._max_headers = max_headers
        self._gate = gate or UpstreamGate.unlimited()
        self._connect_timeout = connect_timeout
        self._ssl = client_ssl_context(ca_file)
        self._verify = ca_file is not None
        self._keepalive = keepalive
        self._session: aiohttp.ClientSession | None = None
        self._timeouts: dict[float | None, aiohttp.ClientTimeout] = {}

    def _open(self) -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(
            limit=0, keepalive_timeout=self._keepalive, ssl=self._ssl, use_dns_cache=False
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            cookie_jar=aiohttp.DummyCookieJar(),
            auto_decompress=False,
            skip_auto_headers=_SKIP,
            requote_redirect_url=False,
            timeout=aiohttp.ClientTimeout(total=None),
            max_line_size=8190,
            max_field_size=8190,
            max_headers=self._max_headers,
        )
        return self._session

    def _timeout(self, per_try: float | None) -> aiohttp.ClientTimeout:
        timeout = self._timeouts.get(per_try)
        if timeout is None:
            timeout = self._timeouts[per_try] = aiohttp.ClientTimeout(
                total=None, sock_connect=self._connect_timeout, sock_read=per_try
            )
        return timeout

    async def send(self, request: UpstreamRequest) -> Response:
        scheme, ip, port, path, body = (
            request.scheme,
            request.ip,
            request.port,
            request.path,
            request.body,
        )
        method, headers, timeout, server_name = (
            request.method,
            request.headers,
            request.timeout,
            request.server_name,
        )
        session = self._session or self._open()
        tls = scheme == "https"
        url = URL(f"{'https' if tls else 'http'}://{ip}:{port}{path}", encoded=True)
        data = None if body.empty else (body.buffered or body.chunks())
        slot = await self._gate.acquire()
        try:
            resp = await session.request(
                method,
                url,
                headers=headers.pairs(h2=False) if isinstance(headers, Outgoing) else headers,
                data=data,
                allow_redirects=False,
                timeout=self._timeout(timeout),
                server_hostname=server_name if tls and self._verify else None,
            )
        except BaseException as exc:
            slot.release()
            error = self._error(exc, ip, port)
            if error is None:
                raise
            raise error from exc
        return HttpResponse(resp, slot)

    def _error(self, exc: BaseException, ip: str, port: int) -> UpstreamError | None:
        """The failure kind of what aiohttp raised (None: not a failure of the attempt)."""
        if isinstance(exc, aiohttp.ConnectionTimeoutError):
            return UpstreamError(Failure.CONNECT, f"connect to {ip}:{port} timed out")
        if isinstance(exc, aiohttp.ClientConnectorError):
            if exc.os_error.errno in (errno.EMFILE, errno.ENFILE):
                return self._gate.refuse(f"out of file descriptors connecting to {ip}:{port}")
            return UpstreamError(Failure.CONNECT, f"connect to {ip}:{port}: {exc.os_error}")
        if isinstance(exc, TimeoutError | aiohttp.SocketTimeoutError):
            return UpstreamError(Failure.TIMEOUT, f"no response from {ip}:{port} in time")
        if isinstance(exc, aiohttp.ClientError | OSError):
            return UpstreamError(Failure.RESET, f"{ip}:{port} closed: {exc!r}")
        return None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
