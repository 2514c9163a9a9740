"""Bounded resources, over real sockets: every connection state times out (h2c preface, idle
h2c connection, slow request bodies on HTTP/1.1 and h2c, slow upstream headers), the
connection limit turns new connections away with one log line and a metric, and oversized
upstream response heads are a 502 that relays nothing. Timeouts are made short through the
proxy's options; the assertions leave generous margins (the machine is shared)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

import h2.config
import h2.connection
import h2.events
import pytest

from mesh.proxy.h2common import PREFACE
from mesh.proxy.proxy import Proxy
from tests.proxy.harness import (
    LOCAL,
    H2Backend,
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

HOST = {"Host": "web.demo.mesh"}


@contextlib.asynccontextmanager
async def mesh(
    annotations: dict[str, str] | None = None, **options: object
) -> AsyncIterator[tuple[Proxy, int]]:
    http = free_range(1)
    async with backends("127.0.0.2") as targets:
        docs = [service("web", annotations=annotations), *endpoints("web", targets)]
        async with running_proxy(build(docs, settings(http=http)), **options) as proxy:
            yield proxy, http


async def closed_within(reader: asyncio.StreamReader, seconds: float) -> bytes:
    """Everything the proxy sends until it closes; fails if it stays open ``seconds``."""
    data = b""
    async with asyncio.timeout(seconds):
        while chunk := await reader.read(65536):
            data += chunk
    return data


class H2Client:
    """A raw h2c prior-knowledge client on one socket, to misbehave with."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.conn = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
        )
        self.conn.initiate_connection()
        self.flush()

    @classmethod
    async def open(cls, port: int) -> H2Client:
        return cls(*await asyncio.open_connection(LOCAL, port))

    def flush(self) -> None:
        self.writer.write(self.conn.data_to_send())

    async def events(self, seconds: float) -> list[h2.events.Event]:
        """Events until the connection closes (or ``seconds`` pass: then a TimeoutError)."""
        out: list[h2.events.Event] = []
        async with asyncio.timeout(seconds):
            with contextlib.suppress(ConnectionResetError):  # closed while we were writing
                while data := await self.reader.read(65536):
                    out += self.conn.receive_data(data)
                    self.flush()
        return out

    def close(self) -> None:
        self.writer.close()


# -- timeouts ---------------------------------------------------------------------------------


async def test_h2c_preface_only_is_closed() -> None:
    async with mesh(header_timeout=0.3) as (proxy, port):
        reader, writer = await asyncio.open_connection(LOCAL, port)
        writer.write(PREFACE)  # the preface, then nothing: no SETTINGS, no request
        started = asyncio.get_running_loop().time()
        await closed_within(reader, 5)
        assert asyncio.get_running_loop().time() - started < 3
        writer.close()
        assert metric(proxy, "simmesh_proxy_client_timeouts_total", phase="h2c-preface") == 1
        assert await until(lambda: proxy.listeners.active() == 0)  # it saw our close


async def test_half_a_preface_is_closed() -> None:
    async with mesh(header_timeout=0.3) as (proxy, port):
        reader, writer = await asyncio.open_connection(LOCAL, port)
        writer.write(PREFACE[:10])
        await closed_within(reader, 5)
        writer.close()
        assert metric(proxy, "simmesh_proxy_client_timeouts_total", phase="h2c-preface") == 1


async def test_idle_h2c_connection_is_closed_even_while_pinging() -> None:
    async with mesh(header_timeout=5, keepalive_timeout=0.6) as (proxy, port):
        client = await H2Client.open(port)
        client.conn.send_headers(
            1,
            [
                (":method", "GET"),
                (":scheme", "http"),
                (":authority", "web.demo.mesh"),
                (":path", "/ok"),
            ],
            end_stream=True,
        )
        client.flush()
        started = asyncio.get_running_loop().time()

        async def ping() -> None:
            for _ in range(40):
                await asyncio.sleep(0.1)
                with contextlib.suppress(Exception):
                    client.conn.ping(b"12345678")
                    client.flush()

        pinger = asyncio.create_task(ping())
        events = await client.events(5)
        pinger.cancel()
        client.close()
        elapsed = asyncio.get_running_loop().time() - started
        answered = [e for e in events if isinstance(e, h2.events.ResponseReceived)]
        assert dict(answered[0].headers)[":status"] == "200"
        assert any(isinstance(e, h2.events.ConnectionTerminated) for e in events)  # GOAWAY
        assert 0.5 < elapsed < 4
        assert metric(proxy, "simmesh_proxy_client_timeouts_total", phase="h2c-idle") == 1


async def test_slow_small_body_gets_408() -> None:
    async with mesh(body_timeout=0.3) as (proxy, port):
        reader, writer = await asyncio.open_connection(LOCAL, port)
        head = b"POST /echo HTTP/1.1\r\nHost: web.demo.mesh\r\nContent-Length: 100\r\n\r\n"
        writer.write(head + b"x" * 10)  # buffered for retries: 10 of 100 bytes, then nothing
        answer = await closed_within(reader, 5)
        writer.close()
        assert answer.startswith(b"HTTP/1.1 408"), answer[:80]
        assert b"request-body-timeout" in answer
        assert metric(proxy, "simmesh_proxy_client_timeouts_total", phase="body") == 1
        assert all(n == 0 for n in proxy.state.inflight.values())


async def test_slow_streamed_body_gets_408_and_frees_the_upstream() -> None:
    async with mesh(body_timeout=0.3) as (proxy, port):
        reader, writer = await asyncio.open_connection(LOCAL, port)
        head = b"POST /upload HTTP/1.1\r\nHost: web.demo.mesh\r\nContent-Length: 10000000\r\n\r\n"
        writer.write(head + b"u" * 300_000)  # streamed upstream, then it stalls
        answer = await closed_within(reader, 5)
        writer.close()
        assert answer.startswith(b"HTTP/1.1 408"), answer[:80]
        assert metric(proxy, "simmesh_proxy_client_timeouts_total", phase="body") == 1
        assert metric(proxy, "simmesh_proxy_bad_requests_total", code="408") == 1
        assert all(n == 0 for n in proxy.state.inflight.values())
        async with session() as client, client.get(url(port, "/ok"), headers=HOST) as resp:
            assert resp.status == 200


async def test_slow_h2c_body_gets_408_on_its_stream() -> None:
    async with mesh(body_timeout=0.3, keepalive_timeout=0.5) as (proxy, port):
        client = await H2Client.open(port)
        client.conn.send_headers(
            1,
            [
                (":method", "POST"),
                (":scheme", "http"),
                (":authority", "web.demo.mesh"),
                (":path", "/upload"),
                ("content-length", "1000"),
            ],
        )
        client.conn.send_data(1, b"x" * 10)  # and never the rest
        client.flush()
        events = await client.events(5)
        client.close()
        answered = [e for e in events if isinstance(e, h2.events.ResponseReceived)]
        assert dict(answered[0].headers)[":status"] == "408"
        assert metric(proxy, "simmesh_proxy_client_timeouts_total", phase="body") == 1


async def test_default_upstream_timeout_applies_when_the_service_sets_none() -> None:
    async with mesh(upstream_timeout=0.3) as (proxy, port), session() as client:
        started = asyncio.get_running_loop().time()
        async with client.get(url(port, "/stall?seconds=20"), headers=HOST) as resp:
            assert resp.status == 504
            assert resp.headers["X-Simmesh-Reason"] == "upstream-timeout"
        assert asyncio.get_running_loop().time() - started < 5
        assert metric(proxy, "simmesh_proxy_upstream_failures_total", failure="timeout") >= 1


async def test_the_services_own_timeout_wins() -> None:
    annotations = {"simmesh.io/timeout": "3s"}
    async with (
        mesh(annotations, upstream_timeout=0.1) as (_, port),
        session() as client,
        client.get(url(port, "/stall?seconds=0.5"), headers=HOST) as resp,
    ):
        assert resp.status == 200


# -- upstream response heads ------------------------------------------------------------------


@contextlib.asynccontextmanager
async def raw_backend(head: bytes) -> AsyncIterator[tuple[str, int]]:
    """A backend answering every request with ``head`` (and a small body)."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            await reader.readuntil(b"\r\n\r\n")
            writer.write(head + b"Content-Length: 2\r\n\r\nok")
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.3", 0)
    try:
        yield "127.0.0.3", int(server.sockets[0].getsockname()[1])
    finally:
        server.close()


@pytest.mark.parametrize(
    "head",
    [
        b"HTTP/1.1 200 OK\r\n" + b"".join(b"X-H%d: v\r\n" % i for i in range(150)),
        b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * 200_000 + b"\r\n",
        b"HTTP/1.1 200 OK\r\n" + b"".join(b"X-%d: %s\r\n" % (i, b"b" * 900) for i in range(90)),
    ],
    ids=["count", "one-huge-header", "total-size"],
)
async def test_oversized_upstream_heads_are_502_and_not_relayed(head: bytes) -> None:
    http = free_range(1)
    async with raw_backend(head) as target:
        docs = [service("web"), *endpoints("web", [target])]
        async with running_proxy(build(docs, settings(http=http))) as proxy, session() as client:
            async with client.get(url(http, "/"), headers=HOST) as resp:
                assert resp.status == 502
                assert resp.headers["X-Simmesh-Reason"] == "upstream-reset"
                assert "X-H1" not in resp.headers and "X-Big" not in resp.headers
                text = await resp.text()
                assert "response headers" in text, text
            assert metric(proxy, "simmesh_proxy_upstream_failures_total", failure="reset") >= 1


class ManyHeaders(H2Backend):
    """An h2c backend answering with 150 headers."""

    def _respond(self, stream_id: int) -> None:
        self.requests.pop(stream_id)
        extra = [(f"x-h{i}", "v") for i in range(150)]
        self.conn.send_headers(stream_id, [(":status", "200"), *extra], end_stream=True)


async def test_h2c_upstream_with_too_many_headers_is_502() -> None:
    http = free_range(1)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: ManyHeaders("many"), "127.0.0.2", 0)
    target = ("127.0.0.2", int(server.sockets[0].getsockname()[1]))
    docs = [service("web", annotations={"simmesh.io/scheme": "h2c"}), *endpoints("web", [target])]
    try:
        async with (
            running_proxy(build(docs, settings(http=http))),
            session() as client,
            client.get(url(http, "/"), headers=HOST) as resp,
        ):
            assert resp.status == 502
            assert "x-h1" not in resp.headers
            assert "response headers" in await resp.text()
    finally:
        server.close()


# -- the connection limit ---------------------------------------------------------------------


async def test_connection_limit_refuses_with_one_log_line_and_a_metric(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="simmesh.proxy")
    async with mesh(max_connections=3, header_timeout=10) as (proxy, port):
        held = [await asyncio.open_connection(LOCAL, port) for _ in range(3)]
        await asyncio.sleep(0.1)
        refused = 0
        for _ in range(5):
            reader, writer = await asyncio.open_connection(LOCAL, port)
            with contextlib.suppress(ConnectionError):
                writer.write(b"GET /ok HTTP/1.1\r\nHost: web.demo.mesh\r\n\r\n")
                if await closed_within(reader, 5) == b"":
                    refused += 1
            writer.close()
        assert refused == 5
        assert metric(proxy, "simmesh_proxy_connections_refused_total", protocol="http") == 5
        lines = [r for r in caplog.records if "connection limit reached" in r.getMessage()]
        assert len(lines) == 1
        for _, writer in held:
            writer.close()
        await asyncio.sleep(0.2)
        async with session() as client, client.get(url(port, "/ok"), headers=HOST) as resp:
            assert resp.status == 200  # room again


# -- what fuzzing found -----------------------------------------------------------------------


async def test_http09_and_http2_request_lines_get_505() -> None:
    async with mesh() as (proxy, port):
        for request in (b"GET /\r\n\r\n", b"GET / HTTP/2.0\r\nHost: web.demo.mesh\r\n\r\n"):
            reader, writer = await asyncio.open_connection(LOCAL, port)
            writer.write(request)
            answer = await closed_within(reader, 5)
            writer.close()
            assert answer.startswith(b"HTTP/1.1 505 "), answer[:80]
        assert metric(proxy, "simmesh_proxy_bad_requests_total", code="505") == 2


async def test_upgrade_with_non_utf8_header_bytes_is_relayed_and_settles() -> None:
    async with mesh() as (proxy, port):
        reader, writer = await asyncio.open_connection(LOCAL, port)
        writer.write(
            b"GET /echo HTTP/1.1\r\nHost: web.demo.mesh\r\nConnection: Upgrade, close\r\n"
            b"Upgrade: w\xd8ebsocket\r\n\r\n"
        )
        answer = await closed_within(reader, 5)
        writer.close()
        assert answer.startswith(b"HTTP/1.1 200 "), answer[:80]  # not WebSocket: a plain GET
        assert all(n == 0 for n in proxy.state.inflight.values())
