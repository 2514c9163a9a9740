"""Abusive clients and broken upstreams: each gets a clean answer (or is cut off) while a
well-behaved client keeps being served, and the engine's in-flight counts return to zero."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import aiohttp

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
    url,
)

HOST = {"Host": "web.demo.mesh"}


@contextlib.asynccontextmanager
async def bystander(port: int) -> AsyncIterator[list[int]]:
    """A client making a request every 20 ms; collects its statuses."""
    statuses: list[int] = []
    stop = asyncio.Event()

    async def loop() -> None:
        async with session() as client:
            while not stop.is_set():
                async with client.get(url(port, "/ok"), headers=HOST) as resp:
                    statuses.append(resp.status)
                    await resp.read()
                await asyncio.sleep(0.02)

    task = asyncio.create_task(loop())
    try:
        yield statuses
    finally:
        stop.set()
        await task


async def raw(port: int, data: bytes, *, read: bool = True) -> bytes:
    reader, writer = await asyncio.open_connection(LOCAL, port)
    try:
        writer.write(data)
        await writer.drain()
        return await asyncio.wait_for(reader.read(65536), 5) if read else b""
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


def status_of(response: bytes) -> int:
    assert response.startswith(b"HTTP/1."), response[:80]
    return int(response[9:12])


def settled(proxy: Proxy) -> bool:
    return all(count == 0 for count in proxy.state.inflight.values())


@contextlib.asynccontextmanager
async def mesh(**options: object) -> AsyncIterator[tuple[Proxy, int]]:
    http = free_range(1)
    async with backends("127.0.0.2") as targets:
        config = build([service("web"), *endpoints("web", targets)], settings(http=http))
        async with running_proxy(config, **options) as proxy:
            yield proxy, http


async def test_protocol_errors_get_400_431_414() -> None:
    async with mesh() as (proxy, port), bystander(port) as statuses:
        big = b"GET / HTTP/1.1\r\nHost: web.demo.mesh\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n"
        assert status_of(await raw(port, big)) == 431
        many = b"".join(b"X-H%d: v\r\n" % i for i in range(200))
        assert status_of(await raw(port, b"GET / HTTP/1.1\r\nHost: x\r\n" + many + b"\r\n")) == 431
        long_target = b"GET /" + b"p" * 20000 + b" HTTP/1.1\r\nHost: web.demo.mesh\r\n\r\n"
        assert status_of(await raw(port, long_target)) == 414
        assert status_of(await raw(port, b"GET\r\n\r\n")) == 400
        # not HTTP at all (a TLS handshake, a broken HTTP/2 preface): closed, not answered
        assert await raw(port, b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" * 4) == b""
        assert await raw(port, b"INVALID CONNECTION PREFACE\r\n\r\n") == b""
        assert await raw(port, b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n") == b""
        smuggle = (
            b"POST /upload HTTP/1.1\r\nHost: web.demo.mesh\r\nContent-Length: 5\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
        )
        assert status_of(await raw(port, smuggle)) == 400
        await asyncio.sleep(0.1)
        assert metric(proxy, "simmesh_proxy_bad_requests_total", code="431") == 2
    assert statuses and set(statuses) == {200}


async def test_slowloris_is_cut_off() -> None:
    async with mesh(header_timeout=0.5) as (_, port), bystander(port) as statuses:
        reader, writer = await asyncio.open_connection(LOCAL, port)
        silent_reader, silent_writer = await asyncio.open_connection(LOCAL, port)
        started = asyncio.get_running_loop().time()
        writer.write(b"GET / HTTP/1.1\r\nHost: web")
        got = b""
        for _ in range(40):  # trickle a byte every 0.1 s: never completes the headers
            try:
                writer.write(b"x")
                await writer.drain()
            except ConnectionError:
                break
            with contextlib.suppress(TimeoutError):
                got += await asyncio.wait_for(reader.read(1024), 0.1)
            if reader.at_eof():
                break
        elapsed = asyncio.get_running_loop().time() - started
        assert reader.at_eof() and got.startswith(b"HTTP/1.1 408")
        assert elapsed < 2.0
        assert await asyncio.wait_for(silent_reader.read(), 2) == b""  # never said anything
        for w in (writer, silent_writer):
            w.close()
    assert statuses and set(statuses) == {200}


async def test_client_vanishing_mid_body() -> None:
    async with mesh() as (proxy, port), bystander(port) as statuses:
        for _ in range(3):
            head = (
                b"POST /upload HTTP/1.1\r\nHost: web.demo.mesh\r\nContent-Length: 50000000\r\n\r\n"
            )
            await raw(port, head + b"u" * 3_000_000, read=False)
        for _ in range(50):
            if settled(proxy):
                break
            await asyncio.sleep(0.05)
        assert settled(proxy)
        assert metric(proxy, "simmesh_proxy_http_requests_total", code="499") == 3
    assert statuses and set(statuses) == {200}


async def test_client_giving_up_on_a_stalled_upstream() -> None:
    async with mesh() as (proxy, port), bystander(port) as statuses:
        async with session(timeout=aiohttp.ClientTimeout(total=0.3)) as client:
            for _ in range(3):
                try:
                    async with client.get(url(port, "/stall?seconds=20"), headers=HOST):
                        raise AssertionError("the stalled request was answered")
                except TimeoutError:
                    pass
        for _ in range(50):
            if settled(proxy) and proxy.inflight == 0:
                break
            await asyncio.sleep(0.05)
        assert settled(proxy) and proxy.inflight == 0
    assert statuses and set(statuses) == {200}


async def test_upstream_reset_and_truncated_body() -> None:
    async with mesh() as (proxy, port), bystander(port) as statuses:
        async with session() as client:
            async with client.get(url(port, "/reset"), headers=HOST) as resp:
                assert resp.status == 502
                assert resp.headers["X-Simmesh-Reason"] == "upstream-reset"
            async with client.get(url(port, "/reset-mid-body"), headers=HOST) as resp:
                assert resp.status == 200
                try:
                    await resp.read()
                    raise AssertionError("a truncated body was delivered as complete")
                except aiohttp.ClientPayloadError:
                    pass
        assert metric(proxy, "simmesh_proxy_upstream_failures_total", failure="reset") == 2
        assert settled(proxy)
    assert statuses and set(statuses) == {200}


async def test_upstream_stalling_mid_body_times_out() -> None:
    http = free_range(1)
    async with backends("127.0.0.2") as targets:
        docs = [
            service("web", annotations={"simmesh.io/timeout": "300ms"}),
            *endpoints("web", targets),
        ]
        config = build(docs, settings(http=http))
        async with running_proxy(config) as proxy, session() as client:
            async with client.get(url(http, "/stall-body"), headers=HOST) as resp:
                assert resp.status == 200
                try:
                    await resp.read()
                    raise AssertionError("a stalled body was delivered as complete")
                except aiohttp.ClientPayloadError:
                    pass
            assert metric(proxy, "simmesh_proxy_upstream_failures_total", failure="timeout") == 1
            async with client.get(url(http, "/ok"), headers=HOST) as resp:
                assert resp.status == 200
