"""The HTTP/1.1 front end over raw sockets: what clients other than a well-behaved library do.

Pipelining, HTTP/1.0, absolute-form targets, chunked responses, keep-alive and its timeout, a
client that half-closes after its request (it still gets the answer), a client that closes
while its request is pending (the upstream attempt is abandoned at once), and a client that
stops reading its response (cut after ``--write-timeout``, counted).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import AsyncIterator

from mesh.proxy.proxy import Proxy
from tests.proxy.harness import (
    LOCAL,
    backends,
    build,
    endpoints,
    free_range,
    metric,
    running_proxy,
    service,
    session,
    settings,
    until,
    url,
)

GET = b"GET %b HTTP/1.1\r\nHost: web.demo.mesh\r\n\r\n"
HOST = {"Host": "web.demo.mesh"}


@contextlib.asynccontextmanager
async def mesh(**options: object) -> AsyncIterator[tuple[Proxy, int]]:
    http = free_range(1)
    async with backends("127.0.0.2") as targets:
        config = build([service("web"), *endpoints("web", targets)], settings(http=http))
        async with running_proxy(config, **options) as proxy:
            yield proxy, http


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    """One response (1xx answers skipped): status, headers (lower-case names), body."""
    while True:
        head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
        lines = head.split("\r\n")
        status = int(lines[0].split(" ")[1])
        headers = {}
        for line in lines[1:]:
            if line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        if not 100 <= status < 200:
            break
    if "content-length" in headers:
        body = await reader.readexactly(int(headers["content-length"]))
    elif headers.get("transfer-encoding") == "chunked":
        body = b""
        while size := int((await reader.readline()).strip(), 16):
            body += await reader.readexactly(size)
            await reader.readline()
        await reader.readline()
    else:
        body = await reader.read()
    return status, headers, body


def settled(proxy: Proxy) -> bool:
    return proxy.inflight == 0 and all(n == 0 for n in proxy.state.inflight.values())


async def test_pipelined_requests_are_answered_in_order() -> None:
    async with mesh() as (_, port):
        reader, writer = await asyncio.open_connection(LOCAL, port)
        paths = [b"/first", b"/stall?seconds=0.2", b"/third", b"/status/404"]
        writer.write(b"".join(GET % p for p in paths))
        got = [await read_response(reader) for _ in paths]
        writer.close()
    assert json.loads(got[0][2])["path"] == "/first"
    assert got[1][2] == b"late"
    assert json.loads(got[2][2])["path"] == "/third"
    assert got[3][0] == 404


async def test_http10_without_keepalive_is_closed_and_not_chunked() -> None:
    async with mesh() as (_, port):
        reader, writer = await asyncio.open_connection(LOCAL, port)
        writer.write(b"GET /chunked/25000 HTTP/1.0\r\nHost: web.demo.mesh\r\n\r\n")
        status, headers, body = await asyncio.wait_for(read_response(reader), 5)
        assert status == 200 and "transfer-encoding" not in headers
        assert body == b"k" * 25000  # read until the proxy closed
        writer.close()
        reader, writer = await asyncio.open_connection(LOCAL, port)
        ask = b"GET /a HTTP/1.0\r\nHost: web.demo.mesh\r\nConnection: keep-alive\r\n\r\n"
        writer.write(ask)
        status, headers, _ = await read_response(reader)
        assert status == 200 and headers.get("connection") == "keep-alive"
        writer.write(ask)
        assert (await read_response(reader))[0] == 200  # the same connection again
        writer.close()


async def test_chunked_upstream_response_is_relayed_chunked() -> None:
    async with mesh() as (_, port):
        reader, writer = await asyncio.open_connection(LOCAL, port)
        writer.write(GET % b"/chunked/300000")
        status, headers, body = await read_response(reader)
        assert status == 200 and headers["transfer-encoding"] == "chunked"
        assert body == b"k" * 300000
        writer.write(GET % b"/after")  # the connection is still usable
        assert (await read_response(reader))[0] == 200
        writer.close()


async def test_absolute_form_target_routes_by_its_authority() -> None:
    async with mesh() as (_, port):
        reader, writer = await asyncio.open_connection(LOCAL, port)
        writer.write(b"GET http://web.demo.mesh/abs?q=1 HTTP/1.1\r\nHost: other.demo.mesh\r\n\r\n")
        status, _, body = await read_response(reader)
        writer.close()
    assert status == 200
    seen = json.loads(body)
    assert seen["path"] == "/abs?q=1" and seen["headers"]["Host"] == "web.demo.mesh"


async def test_idle_keepalive_connection_is_closed() -> None:
    async with mesh(keepalive_timeout=0.3) as (proxy, port):
        reader, writer = await asyncio.open_connection(LOCAL, port)
        writer.write(GET % b"/one")
        assert (await read_response(reader))[0] == 200
        assert await asyncio.wait_for(reader.read(), 3) == b""  # closed, nothing said
        writer.close()
        assert await until(lambda: proxy.listeners.active() == 0)


async def test_half_closed_client_gets_its_answer() -> None:
    async with mesh() as (proxy, port):
        for path in (b"/quick", b"/stall?seconds=0.5"):  # the slow one is probed with a 1xx
            reader, writer = await asyncio.open_connection(LOCAL, port)
            writer.write(GET % path)
            writer.write_eof()
            status, _, body = await asyncio.wait_for(read_response(reader), 5)
            assert status == 200, body
            assert await asyncio.wait_for(reader.read(), 5) == b""  # then closed
            writer.close()
        assert await until(lambda: settled(proxy))
        assert metric(proxy, "simmesh_proxy_http_requests_total", code="200") == 2


async def test_client_closing_while_its_request_waits_is_let_go_at_once() -> None:
    async with mesh() as (proxy, port):
        for _ in range(3):
            with socket.create_connection((LOCAL, port)) as sock:
                sock.sendall(GET % b"/stall?seconds=20")
                await asyncio.sleep(0.05)
            # closed: a FIN, as a half-close would send; the proxy must find out which
        assert await until(lambda: settled(proxy), 3)
        assert metric(proxy, "simmesh_proxy_http_requests_total", code="499") == 3


async def test_client_that_stops_reading_is_cut_after_the_write_timeout() -> None:
    async with mesh(write_timeout=0.5) as (proxy, port):
        big = socket.create_connection((LOCAL, port))
        small = socket.create_connection((LOCAL, port))
        try:
            big.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            big.sendall(GET % b"/bytes/200000000")  # then never reads
            small.setblocking(False)
            pipelined = memoryview((GET % b"/ok") * 100000)  # as much as fits, never read
            with contextlib.suppress(BlockingIOError):
                while pipelined:
                    pipelined = pipelined[small.send(pipelined) :]
            timeouts = "simmesh_proxy_client_timeouts_total"
            assert await until(lambda: metric(proxy, timeouts, phase="response") >= 2, 8)
            assert metric(proxy, timeouts, phase="response") == 2
            assert await until(lambda: settled(proxy) and proxy.listeners.active() == 0)
        finally:
            big.close()
            small.close()
        async with session() as client, client.get(url(port, "/ok"), headers=HOST) as resp:
            assert resp.status == 200  # everyone else is served


async def test_upgrade_request_bytes_sent_early_reach_the_tunnel() -> None:
    async with mesh() as (_, port):
        reader, writer = await asyncio.open_connection(LOCAL, port)
        key = "dGhlIHNhbXBsZSBub25jZQ=="
        head = (
            "GET /ws HTTP/1.1\r\nHost: web.demo.mesh\r\nConnection: Upgrade\r\n"
            f"Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {key}\r\n\r\n"
        ).encode()
        mask = b"\x01\x02\x03\x04"
        frame = b"\x81\x85" + mask + bytes(c ^ mask[i % 4] for i, c in enumerate(b"early"))
        writer.write(head + frame)  # a text frame in the same write as the upgrade
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 101 ")
        reply = await asyncio.wait_for(reader.readexactly(2), 5)
        length = reply[1] & 0x7F
        text = await reader.readexactly(length)
        assert text == b"b0:early"
        writer.close()
