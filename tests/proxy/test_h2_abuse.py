"""HTTP/2 abuse against the h2c front end, frame by frame (tests/proxy/h2attack.py): rapid
reset (CVE-2023-44487), PING and SETTINGS floods, a client that never reads. Each is bounded:
streams are given back however they end, a connection that overspends a budget gets
GOAWAY(ENHANCE_YOUR_CALM), one that reads nothing is read no more and then cut, one
connection's frames cannot starve the event loop; the idle timeout and bystanders keep
working."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from socket import SO_SNDBUF, SOL_SOCKET

import pytest

from mesh.proxy.h2server import H2ServerProtocol
from mesh.proxy.proxy import Proxy
from tests.proxy.h2attack import (
    ENHANCE_YOUR_CALM,
    RawH2,
    proxy_process,
    rapid_reset,
    request_headers,
    rss_mb,
)
from tests.proxy.harness import metric
from tests.proxy.test_abuse import bystander, mesh, settled

NO_LIMIT = 10**6


def h2_conns(proxy: Proxy, port: int) -> set[H2ServerProtocol]:
    return proxy.listeners.open[(port, "http")].h2_conns  # type: ignore[attr-defined,no-any-return]


async def until(check: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.02)
    return True


def served_nothing(proxy: Proxy, port: int) -> Callable[[], bool]:
    def check() -> bool:
        streams = sum(len(conn.streams) for conn in h2_conns(proxy, port))
        return streams == 0 and proxy.inflight == 0 and settled(proxy)

    return check


async def test_rapid_reset_gives_every_stream_back_and_the_idle_timeout_still_closes() -> None:
    """HEADERS and RST_STREAM of 500 streams in one write: each stream's task is cancelled
    before it ever runs, and what it held is given back all the same."""
    async with mesh(keepalive_timeout=1.0, h2_reset_burst=NO_LIMIT) as (proxy, port):
        async with RawH2.connect(port) as client:
            pairs = []
            for _ in range(500):
                stream_id = client.stream()
                pairs.append(
                    client.headers(stream_id, request_headers("/ok")) + client.rst(stream_id)
                )
            await client.send(b"".join(pairs))
            assert await until(lambda: len(h2_conns(proxy, port)) == 1)
            assert await until(served_nothing(proxy, port))
            # no stream left: the keep-alive timeout closes the connection (GOAWAY NO_ERROR)
            assert await client.until(lambda: client.received.closed, 10.0)
            goaway = client.received.goaway
            assert goaway is not None and goaway.error_code == 0
        assert metric(proxy, "simmesh_proxy_client_timeouts_total", phase="h2c-idle") == 1
        assert metric(proxy, "simmesh_proxy_h2_abusive_connections_total", budget="resets") == 0


async def test_rapid_reset_beyond_the_budget_gets_goaway_enhance_your_calm(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="simmesh.proxy")
    async with mesh() as (proxy, port), bystander(port) as statuses:
        sent, received = await rapid_reset(port, 20_000)
        goaway = received.goaway
        assert goaway is not None and goaway.error_code == ENHANCE_YOUR_CALM
        assert goaway.last_stream_id < 2 * 2000  # the default budget: a burst of 200
        assert sent < 20_000 and received.closed
        assert await until(lambda: not h2_conns(proxy, port))
        assert await until(served_nothing(proxy, port))
        assert metric(proxy, "simmesh_proxy_h2_abusive_connections_total", budget="resets") == 1
        assert any("overspent its resets budget" in r.getMessage() for r in caplog.records)
    assert statuses and set(statuses) == {200}


@pytest.mark.slow
async def test_rapid_reset_leaves_the_proxy_process_memory_bounded() -> None:
    """The issue's attack on ``python -m mesh.proxy``, budget off: 30,000 reset streams on one
    connection took it from 48 MB to about 140 MB RSS; the streams are given back now."""
    args = ("--h2-reset-burst", str(NO_LIMIT), "--h2-reset-rate", str(NO_LIMIT))
    async with proxy_process(*args) as (process, port, _):
        before = rss_mb(process.pid)
        sent, received = await rapid_reset(port, 30_000)
        assert sent == 30_000 and received.goaway is None
        grown = rss_mb(process.pid, "VmHWM") - before
    assert grown < 25, f"RSS grew by {grown:.0f} MB"


async def test_ping_and_settings_floods_get_goaway_enhance_your_calm() -> None:
    async with mesh(h2_control_burst=50, h2_control_rate=1) as (proxy, port):
        for frame in (RawH2.ping(), RawH2.settings()):
            async with RawH2.connect(port) as client:
                await client.send(frame * 200)
                assert await client.until(lambda: client.received.closed, 10.0)
                goaway = client.received.goaway
                assert goaway is not None and goaway.error_code == ENHANCE_YOUR_CALM
        assert metric(proxy, "simmesh_proxy_h2_abusive_connections_total", budget="control") == 2


async def test_pings_after_answers_are_free() -> None:
    """gRPC clients ping as they receive data (BDP estimation): a PING that follows a
    response costs nothing of the control budget; PINGs on an idle connection do."""
    async with (
        mesh(h2_control_burst=5, h2_control_rate=1) as (_, port),
        RawH2.connect(port) as client,
    ):
        for _ in range(30):
            stream_id = client.stream()
            await client.send(client.headers(stream_id, request_headers("/ok")))
            assert await client.until(lambda s=stream_id: client.response_status(s) == "200")
            await client.send(client.ping())
        assert client.received.goaway is None
        await client.send(client.ping() * 30)
        assert await client.until(lambda: client.received.goaway is not None)
        goaway = client.received.goaway
        assert goaway is not None and goaway.error_code == ENHANCE_YOUR_CALM


async def test_a_client_that_reads_nothing_is_read_no_more_and_then_cut() -> None:
    """PINGs from a client that never reads their ACKs: once the proxy cannot write to it, it
    stops reading from it (what it queues stays small), and after ``--write-timeout`` the
    connection is cut."""
    options = {"h2_control_burst": NO_LIMIT, "h2_control_rate": NO_LIMIT}
    async with mesh(write_timeout=1.0, header_timeout=30.0, **options) as (proxy, port):
        async with RawH2.connect(port, read=False, rcvbuf=4096) as client:
            assert await until(lambda: len(h2_conns(proxy, port)) == 1)
            (conn,) = h2_conns(proxy, port)
            transport = conn.transport
            assert transport is not None
            # a slow network: the kernel does not hide megabytes of unread answers
            transport.get_extra_info("socket").setsockopt(SOL_SOCKET, SO_SNDBUF, 4096)
            queued = [0]
            for _ in range(50):
                client.writer.write(client.ping() * 1000)
                with contextlib.suppress(TimeoutError, ConnectionError):
                    await asyncio.wait_for(client.writer.drain(), 0.2)
                queued.append(transport.get_write_buffer_size())
            assert await until(lambda: not transport.is_reading() or conn.closed)
            assert max(queued) < 1 << 20, f"the proxy queued {max(queued)} bytes of answers"
            assert await until(lambda: not h2_conns(proxy, port))
        assert metric(proxy, "simmesh_proxy_client_timeouts_total", phase="response") == 1


async def test_one_connections_frames_do_not_starve_the_event_loop() -> None:
    """30,000 PINGs in one write (budget off): h2 spends about 30 us on each, so fed whole, one
    read of them holds the loop for most of the time they take; fed 32 frames at a time, the
    loop turns every few milliseconds."""
    async with mesh(h2_control_burst=NO_LIMIT, h2_control_rate=NO_LIMIT) as (_, port):
        async with RawH2.connect(port, read=False) as client:
            loop = asyncio.get_running_loop()
            gaps: list[float] = []
            done = asyncio.Event()

            async def ticks() -> None:
                last = loop.time()
                while not done.is_set():
                    await asyncio.sleep(0)
                    now = loop.time()
                    gaps.append(now - last)
                    last = now

            async def acks(expected: int) -> None:
                ack = b"\x00\x00\x08\x06\x01"  # a PING frame's head, ACK flag
                got, tail = 0, b""
                while got < expected:
                    data = await client.reader.read(1 << 16)
                    assert data, "the proxy closed the connection"
                    got += (tail + data).count(ack)  # (an ACK may span two reads)
                    tail = (tail + data)[-(len(ack) - 1) :]
                done.set()

            ticker = asyncio.create_task(ticks())
            started = loop.time()
            client.writer.write(client.ping() * 30_000)
            await asyncio.wait_for(acks(30_000), 120)
            took = loop.time() - started
            await ticker
        assert max(gaps) < took / 4, f"the loop stalled {max(gaps):.3f} s of {took:.3f} s"
