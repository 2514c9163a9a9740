"""The pooled httptools upstream (mesh.proxy.upstream_raw) against scripted servers on
127.0.0.x: framing (chunked, until-close, HEAD, 204/304, 1xx), keep-alive reuse, stale pooled
connections, failures mapped to the core's kinds, and large streamed bodies both ways."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from aiohttp import web

from mesh.core.policies import Failure
from mesh.proxy.body import Body
from mesh.proxy.upstream import Response, UpstreamError, UpstreamRequest
from mesh.proxy.upstream_http import HttpUpstream
from mesh.proxy.upstream_raw import RawUpstream, request_head
from tests.proxy.harness import serve_app

IP = "127.0.0.3"
Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, int], Awaitable[None]]


class Script:
    """A TCP server running ``handler(reader, writer, connection_number)`` per connection."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.requests: list[bytes] = []
        self.port = 0

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            await self.handler(reader, writer, self.connections)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def request(self, reader: asyncio.StreamReader) -> bytes:
        """One request: its head, then its body (Content-Length or chunked)."""
        head = await reader.readuntil(b"\r\n\r\n")
        lower = head.lower()
        body = b""
        if b"content-length:" in lower:
            length = int(lower.split(b"content-length:")[1].split(b"\r\n")[0])
            body = await reader.readexactly(length)
        elif b"transfer-encoding: chunked" in lower:
            body = await reader.readuntil(b"0\r\n\r\n")
        self.requests.append(head + body)
        return head + body


@contextlib.asynccontextmanager
async def scripted(handler: Handler) -> AsyncIterator[Script]:
    script = Script(handler)
    server = await asyncio.start_server(script._serve, IP, 0)
    script.port = server.sockets[0].getsockname()[1]
    try:
        yield script
    finally:
        server.close()
        await server.wait_closed()


@contextlib.asynccontextmanager
async def client(**kwargs: float) -> AsyncIterator[RawUpstream]:
    upstream = RawUpstream(
        connect_timeout=2.0, fallback=HttpUpstream(connect_timeout=2.0, ca_file=None), **kwargs
    )
    try:
        yield upstream
    finally:
        await upstream.close()


class Chunks:
    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = list(chunks)

    async def readany(self) -> bytes:
        await asyncio.sleep(0)
        return self.chunks.pop(0) if self.chunks else b""


async def send(
    upstream: RawUpstream,
    port: int,
    *,
    method: str = "GET",
    path: str = "/",
    body: Body | None = None,
    timeout: float | None = 5.0,
) -> Response:
    return await upstream.send(
        UpstreamRequest(
            scheme="http",
            ip=IP,
            port=port,
            method=method,
            authority="web.demo",
            path=path,
            headers=[("Host", "web.demo"), ("X-Test", "1")],
            body=body or Body(None, None, chunked=False),
            timeout=timeout,
            server_name=None,
        )
    )


async def read_all(resp: Response) -> bytes:
    parts = []
    while chunk := await resp.read():
        parts.append(chunk)
    return b"".join(parts)


OK = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"


async def answer_each(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
    while True:
        head = await reader.readuntil(b"\r\n\r\n")
        writer.write(OK if not head.startswith(b"HEAD") else OK[:-5])
        await writer.drain()


async def test_keepalive_reuses_one_connection() -> None:
    async with scripted(answer_each) as script, client() as upstream:
        for _ in range(5):
            resp = await send(upstream, script.port)
            assert (resp.status, resp.reason, resp.content_length) == (200, "OK", 5)
            assert await read_all(resp) == b"hello"
            resp.release()
        assert script.connections == 1


async def test_unread_or_closed_responses_are_not_reused() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
        while True:
            head = await script.request(reader)
            if b"/partial" not in head:
                writer.write(OK)
                continue
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nfirst")
            await writer.drain()
            await asyncio.sleep(0.05)
            writer.write(b"-last")

    async with scripted(handler) as script, client() as upstream:
        resp = await send(upstream, script.port)
        resp.close()  # closed: never reused
        resp = await send(upstream, script.port, path="/partial")
        assert await resp.read() == b"first"
        resp.release()  # released before its end arrived: not reused either
        for _ in range(2):
            resp = await send(upstream, script.port)
            assert await read_all(resp) == b"hello"
            resp.release()
        assert script.connections == 3


async def test_chunked_response_in_pieces() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
        while True:
            await script.request(reader)
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            for part in (b"abc", b"defgh", b"i" * 5000):
                writer.write(b"%x\r\n%s\r\n" % (len(part), part))
                await writer.drain()
                await asyncio.sleep(0.01)
            writer.write(b"0\r\n\r\n")

    async with scripted(handler) as script, client() as upstream:
        for _ in range(2):
            resp = await send(upstream, script.port)
            assert resp.content_length is None
            assert ("Transfer-Encoding", "chunked") in list(resp.header_items())
            assert await read_all(resp) == b"abcdefgh" + b"i" * 5000
            resp.release()
        assert script.connections == 1


async def test_body_until_close_and_interim_responses() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
        await script.request(reader)
        writer.write(b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nX-A: 1\r\n\r\npart one, ")
        await writer.drain()
        await asyncio.sleep(0.02)
        writer.write(b"part two")

    async with scripted(handler) as script, client() as upstream:
        for _ in range(2):
            resp = await send(upstream, script.port)
            assert resp.status == 200
            assert list(resp.header_items()) == [("X-A", "1")]
            assert await read_all(resp) == b"part one, part two"
            resp.release()
        assert script.connections == 2  # read until close: never reused


async def test_head_204_and_304_have_no_body() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
        while True:
            head = await script.request(reader)
            if head.startswith(b"HEAD"):
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
            elif b"/nocontent" in head:
                writer.write(b"HTTP/1.1 204 No Content\r\n\r\n")
            else:
                writer.write(b"HTTP/1.1 304 Not Modified\r\nContent-Length: 7\r\n\r\n")
            await writer.drain()

    async with scripted(handler) as script, client() as upstream:
        resp = await send(upstream, script.port, method="HEAD")
        assert (resp.status, resp.content_length) == (200, 1000)
        assert await asyncio.wait_for(read_all(resp), 1) == b""
        resp.release()
        for path, status in (("/nocontent", 204), ("/cached", 304), ("/nocontent", 204)):
            resp = await send(upstream, script.port, path=path)
            assert resp.status == status
            assert await asyncio.wait_for(read_all(resp), 1) == b""
            resp.release()
        # HEAD's connection is not reused (its announced length is unknowable to the parser);
        # 204 and 304 keep theirs
        assert script.connections == 2


async def test_stale_pooled_connection_is_retried_when_safe() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await script.request(reader)
        writer.write(OK)  # keep-alive, as far as the client can tell
        await writer.drain()
        if n == 1:
            await script.request(reader)  # ... but it closes without answering the next one
            return
        while True:
            await script.request(reader)
            writer.write(OK)
            await writer.drain()

    async with scripted(handler) as script, client() as upstream:
        resp = await send(upstream, script.port)
        assert await read_all(resp) == b"hello"
        resp.release()
        resp = await send(upstream, script.port)  # GET: retried on a new connection
        assert await read_all(resp) == b"hello"
        resp.release()
        assert script.connections == 2


async def test_stale_pooled_connection_with_post_is_a_reset() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await script.request(reader)
        writer.write(OK)
        await writer.drain()
        await script.request(reader)

    async with scripted(handler) as script, client() as upstream:
        resp = await send(upstream, script.port)
        assert await read_all(resp) == b"hello"
        resp.release()
        body = Body(Chunks([b"abc"]), 3, chunked=False)
        await body.buffer(1024)
        with pytest.raises(UpstreamError) as caught:
            await send(upstream, script.port, method="POST", body=body)
        assert caught.value.failure is Failure.RESET
        assert script.connections == 1
        assert script.requests[-1].endswith(b"Content-Length: 3\r\n\r\nabc")


async def test_server_closes_mid_body_is_reset() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
        await script.request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly ten..")
        await writer.drain()

    async with scripted(handler) as script, client() as upstream:
        resp = await send(upstream, script.port)
        assert await resp.read() == b"only ten.."
        with pytest.raises(UpstreamError) as caught:
            await resp.read()
        assert caught.value.failure is Failure.RESET
        resp.close()


async def test_closed_before_response_refused_and_timeouts() -> None:
    async def close_at_once(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int
    ) -> None:
        await reader.readuntil(b"\r\n\r\n")

    async def stall(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
        await writer.drain()
        await asyncio.sleep(5)

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
        await asyncio.sleep(5)

    async with client() as upstream:
        async with scripted(close_at_once) as script:
            with pytest.raises(UpstreamError) as caught:
                await send(upstream, script.port)
            assert caught.value.failure is Failure.RESET
            port = script.port
        with pytest.raises(UpstreamError) as caught:
            await send(upstream, port)  # nothing listens any more
        assert caught.value.failure is Failure.CONNECT
        async with scripted(silent) as script:
            with pytest.raises(UpstreamError) as caught:
                await send(upstream, script.port, timeout=0.2)
            assert caught.value.failure is Failure.TIMEOUT
        async with scripted(stall) as script:
            resp = await send(upstream, script.port, timeout=0.2)
            assert await resp.read() == b"abc"
            with pytest.raises(UpstreamError) as caught:
                await resp.read()
            assert caught.value.failure is Failure.TIMEOUT
            resp.close()


async def test_request_framing() -> None:
    empty = Body(None, None, chunked=False)
    head, stream = request_head("GET", "/a?b=1", [("host", "h")], empty, "x")
    assert (head, stream) == (b"GET /a?b=1 HTTP/1.1\r\nhost: h\r\n\r\n", False)
    head, _ = request_head("DELETE", "/", [("Content-Length", "0")], empty, "web.demo")
    assert head == b"DELETE / HTTP/1.1\r\nHost: web.demo\r\nContent-Length: 0\r\n\r\n"
    head, stream = request_head("POST", "/", [], Body(Chunks([]), None, chunked=True), "h")
    assert head.endswith(b"Transfer-Encoding: chunked\r\n\r\n") and stream
    with pytest.raises(ValueError):
        request_head("GET", "/", [("X", "a\r\nY: b")], empty, "h")
    for method, target in [("GET /admin", "/user/x"), ("GET", "/x?a b"), ("GET", "/x\ty")]:
        with pytest.raises(ValueError):
            request_head(method, target, [], empty, "h")


def echo_app(size: int) -> web.Application:
    async def upload(request: web.Request) -> web.Response:
        total = 0
        while chunk := await request.content.readany():
            total += len(chunk)
        return web.Response(text=f"{total} {request.headers.get('Transfer-Encoding', '-')}")

    async def download(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        resp.content_length = size
        await resp.prepare(request)
        block = b"x" * (1 << 16)
        for _ in range(size // len(block)):
            await resp.write(block)
        return resp

    app = web.Application()
    app.router.add_post("/upload", upload)
    app.router.add_get("/download", download)
    return app


@pytest.mark.slow
async def test_large_streamed_bodies_both_ways() -> None:
    size = 32 << 20
    block = b"y" * (1 << 16)
    async with serve_app(echo_app(size), IP) as port, client() as upstream:
        for length in (size, None):  # with a Content-Length, and chunked
            body = Body(Chunks([block] * (size // len(block))), length, chunked=length is None)
            resp = await send(upstream, port, method="POST", path="/upload", body=body)
            expected = f"{size} {'-' if length else 'chunked'}".encode()
            assert (resp.status, await read_all(resp)) == (200, expected)
            resp.release()
        resp = await send(upstream, port, path="/download")
        assert resp.content_length == size
        total = 0
        while chunk := await resp.read():
            total += len(chunk)
            await asyncio.sleep(0)  # a slow reader: the client pauses reading meanwhile
        assert total == size
        resp.release()
        resp = await send(upstream, port, method="POST", path="/upload")
        assert await read_all(resp) == b"0 -"
        resp.release()
