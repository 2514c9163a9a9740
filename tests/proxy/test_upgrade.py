"""Only WebSocket upgrades switch a connection to a tunnel, over real sockets.

Issue 19: the proxy forwarded any ``Upgrade`` token; a backend that answered 101 to it turned
the connection into a tunnel, and ``GET /admin`` sent through it reached the backend without
the proxy reading it, past a grant for ``/public`` only. Now an upgrade to anything but
``websocket`` is served as a plain request (its Upgrade header dropped, its body read) and the
requests after it are read and decided one by one; a 101 is only taken for a WebSocket
upgrade the proxy sent, and only when it names ``websocket``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.proxy.harness import (
    backends,
    build,
    endpoints,
    free_range,
    pod,
    route_group,
    running_proxy,
    service,
    settings,
    traffic_target,
)

CLIENT = "127.0.0.5"
HOST = "web.demo.mesh"


class SwitchingBackend(asyncio.Protocol):
    """HTTP/1.1 keep-alive that answers 101 to any request with an ``Upgrade`` header (naming
    ``answer_upgrade``, or what was asked; with ``always``, to every request) and then reads
    HTTP on, as a careless backend would. Records every request: (method, path, lower-cased
    headers, body)."""

    seen: list[tuple[str, str, dict[str, str], bytes]]
    answer_upgrade: str | None = None
    always = False

    def __init__(self) -> None:
        self.buffer = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while (request := self._take()) is not None:
            self._answer(*request)

    def _take(self) -> tuple[str, str, dict[str, str], bytes] | None:
        head, sep, rest = self.buffer.partition(b"\r\n\r\n")
        if not sep:
            return None
        line, *fields = head.decode("latin-1").split("\r\n")
        method, path, _ = line.split(" ")
        headers = {n.strip().lower(): v.strip() for n, v in (f.split(":", 1) for f in fields)}
        if headers.get("transfer-encoding") == "chunked":
            chunks = dechunk(rest)
            if chunks is None:
                return None
            body, self.buffer = chunks
        else:
            size = int(headers.get("content-length", "0"))
            if len(rest) < size:
                return None
            body, self.buffer = rest[:size], rest[size:]
        return method, path, headers, body

    def _answer(self, method: str, path: str, headers: dict[str, str], body: bytes) -> None:
        self.seen.append((method, path, headers, body))
        assert self.transport is not None
        if "upgrade" in headers or self.always:
            upgrade = self.answer_upgrade or headers["upgrade"]
            self.transport.write(
                b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\n"
                b"Upgrade: %b\r\n\r\n" % upgrade.encode()
            )
            return
        payload = json.dumps({"path": path, "body": len(body)}).encode()
        self.transport.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%b" % (len(payload), payload)
        )


def dechunk(data: bytes) -> tuple[bytes, bytes] | None:
    """(body, what follows) of a complete chunked body at the start of ``data``."""
    body = b""
    while True:
        line, sep, data = data.partition(b"\r\n")
        if not sep:
            return None
        size = int(line, 16)
        if size == 0:
            return (body, data[2:]) if data.startswith(b"\r\n") else None
        if len(data) < size + 2:
            return None
        body, data = body + data[:size], data[size + 2 :]


@contextlib.asynccontextmanager
async def mesh(
    answer_upgrade: str | None = None, *, always: bool = False
) -> AsyncIterator[tuple[int, list[Any]]]:
    """ACL mode: CLIENT may call ``/public`` on web (the switching backend), nothing else."""
    seen: list[tuple[str, str, dict[str, str], bytes]] = []

    def backend() -> SwitchingBackend:
        protocol = SwitchingBackend()
        protocol.seen = seen
        protocol.answer_upgrade = answer_upgrade
        protocol.always = always
        return protocol

    loop = asyncio.get_running_loop()
    server = await loop.create_server(backend, "127.0.0.2", 0)
    port = server.sockets[0].getsockname()[1]
    http = free_range(1)
    docs = [
        service("web"),
        *endpoints("web", [("127.0.0.2", port)], pods=["web-0"]),
        pod("web-0", "127.0.0.2", "web"),
        pod("client-0", CLIENT, "client"),
        route_group("public", [{"name": "public", "pathRegex": "/public", "methods": ["*"]}]),
        traffic_target(
            "client-to-web",
            destination="web",
            sources=["client"],
            rules=[{"kind": "HTTPRouteGroup", "name": "public"}],
        ),
    ]
    try:
        async with running_proxy(build(docs, settings(http=http, acl=True))):
            yield http, seen
    finally:
        server.close()
        await server.wait_closed()


async def answers(reader: asyncio.StreamReader, count: int) -> list[tuple[int, bytes]]:
    """``count`` HTTP/1.1 answers with a Content-Length (or 101s): (status, body). After a
    101 the switching backend goes on answering in HTTP, so what came through is read too."""
    out = []
    async with asyncio.timeout(5):
        for _ in range(count):
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head[9:12])
            if status == 101:
                out.append((status, b""))
                continue
            length = next(
                int(line.split(b":", 1)[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            )
            out.append((status, await reader.readexactly(length)))
    return out


async def exchange(port: int, data: bytes, count: int) -> list[tuple[int, bytes]]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(CLIENT, 0))
    try:
        writer.write(data)
        return await answers(reader, count)
    finally:
        writer.close()


UPGRADE = b"Connection: Upgrade\r\nUpgrade: %b\r\n"
ADMIN = b"GET /admin HTTP/1.1\r\nHost: web.demo.mesh\r\n\r\n"


@pytest.mark.parametrize("token", [b"foo", b"h2c", b"websockets", b"tls/1.3"])
async def test_an_upgrade_to_anything_but_websocket_is_a_plain_request(token: bytes) -> None:
    async with mesh() as (port, seen):
        first = b"GET /public HTTP/1.1\r\nHost: web.demo.mesh\r\n" + UPGRADE % token + b"\r\n"
        (public, admin) = await exchange(port, first + ADMIN, 2)
        assert [path for _, path, _, _ in seen] == ["/public"]  # /admin never reached it
        assert public[0] == 200 and json.loads(public[1])["path"] == "/public"
        assert admin[0] == 403  # read and decided by the proxy, not tunnelled
        assert "upgrade" not in seen[0][2]  # hop-by-hop: not forwarded


@pytest.mark.parametrize(
    "framing",
    [b"Content-Length: 21\r\n\r\n", b"Transfer-Encoding: chunked\r\n\r\n15\r\n"],
    ids=["content-length", "chunked"],
)
async def test_the_body_of_an_ignored_upgrade_is_read_as_its_body(framing: bytes) -> None:
    body = b"GET /admin HTTP/1.1\r\n"  # 21 bytes of body that look like a request
    end = b"\r\n0\r\n\r\n" if b"chunked" in framing else b""
    request = b"POST /public HTTP/1.1\r\nHost: web.demo.mesh\r\n" + UPGRADE % b"foo" + framing
    async with mesh() as (port, seen):
        (public, admin) = await exchange(port, request + body + end + ADMIN, 2)
        assert public[0] == 200 and json.loads(public[1]) == {"path": "/public", "body": 21}
        assert admin[0] == 403
        assert [(path, got) for _, path, _, got in seen] == [("/public", body)]


async def test_a_websocket_upgrade_is_still_tunnelled() -> None:
    async with mesh() as (port, seen):
        request = b"GET /public HTTP/1.1\r\nHost: web.demo.mesh\r\n" + UPGRADE % b"WebSocket"
        (switched,) = await exchange(port, request + b"\r\n", 1)
        assert switched[0] == 101
        assert seen[0][2]["upgrade"] == "websocket"


async def test_a_101_that_names_another_protocol_is_a_502() -> None:
    async with mesh(answer_upgrade="foo") as (port, _):
        request = b"GET /public HTTP/1.1\r\nHost: web.demo.mesh\r\n" + UPGRADE % b"websocket"
        (answer,) = await exchange(port, request + b"\r\n", 1)
        assert answer[0] == 502
        assert b"101 without Upgrade: websocket" in answer[1]


async def test_a_101_to_a_plain_request_is_a_502_and_nothing_is_tunnelled() -> None:
    async with mesh(answer_upgrade="websocket", always=True) as (port, seen):
        request = b"GET /public HTTP/1.1\r\nHost: web.demo.mesh\r\n" + UPGRADE % b"foo"
        (answer, admin) = await exchange(port, request + b"\r\n" + ADMIN, 2)
        assert answer[0] == 502
        assert admin[0] == 403
        assert [path for _, path, _, _ in seen] == ["/public"]


async def test_aiohttp_websocket_through_the_proxy() -> None:
    import aiohttp

    http = free_range(1)
    async with backends("127.0.0.2") as targets:
        config = build([service("web"), *endpoints("web", targets)], settings(http=http))
        async with running_proxy(config), aiohttp.ClientSession() as client:
            headers = {"Host": HOST}
            async with client.ws_connect(f"http://127.0.0.1:{http}/ws", headers=headers) as ws:
                await ws.send_str("hi")
                assert (await ws.receive(timeout=5)).data == "b0:hi"
