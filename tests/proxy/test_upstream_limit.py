"""The upstream connection limit (``--max-upstream-connections``), over real sockets.

Every upstream socket the proxy opens (pooled HTTP/1.1, h2c, WebSocket, TCP) holds a slot; a
request that cannot get one within ``--connect-timeout`` is a 503 with a reason, counted and
logged, never a silent 502 and never blamed on the endpoint; an idle pooled connection is
closed to make room before anyone waits. Waits are bounded; timeouts are short options.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

import pytest

from mesh.proxy.proxy import Proxy
from mesh.proxy.resources import RESERVED_FDS, UpstreamGate, UpstreamLimit, fd_budget
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
    tcp_workload,
    url,
)

HOST = {"Host": "web.demo.mesh"}


@contextlib.asynccontextmanager
async def mesh(**options: object) -> AsyncIterator[tuple[Proxy, int]]:
    http = free_range(1)
    async with backends("127.0.0.2", "127.0.0.3") as targets:
        docs = [service("web"), *endpoints("web", targets[:1])]
        docs += [service("other"), *endpoints("other", targets[1:])]
        async with running_proxy(build(docs, settings(http=http)), **options) as proxy:
            yield proxy, http


async def until(check: object, seconds: float = 5.0) -> None:
    """Poll ``check()`` until true; fails after ``seconds``."""
    assert callable(check)
    async with asyncio.timeout(seconds):
        while not check():
            await asyncio.sleep(0.02)


async def test_a_request_over_the_upstream_limit_is_a_503_with_a_reason(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="simmesh.proxy")
    async with (
        mesh(max_upstream_connections=2, connect_timeout=0.3) as (proxy, port),
        session() as client,
    ):
        stalled = [
            asyncio.create_task(client.get(url(port, "/stall?seconds=2"), headers=HOST))
            for _ in range(2)
        ]
        await until(lambda: proxy.upstreams.open == 2)
        async with client.get(url(port, "/ok"), headers=HOST) as resp:
            text = await resp.text()
            assert resp.status == 503, text
            assert resp.headers["X-Simmesh-Reason"] == "upstream-connection-limit"
            assert "--max-upstream-connections 2" in text
        for task in stalled:
            async with await task as resp:
                assert resp.status == 200
        async with client.get(url(port, "/ok"), headers=HOST) as resp:
            assert resp.status == 200  # a pooled connection serves it
        assert metric(proxy, "simmesh_proxy_upstream_limited_total", service="demo/web") == 1
        assert metric(proxy, "simmesh_proxy_upstream_failures_total", failure="connect") == 0
        assert metric(proxy, "simmesh_proxy_http_requests_total", code="503") == 1
        lines = [r for r in caplog.records if "upstream connection limit" in r.getMessage()]
        assert len(lines) == 1
        assert all(n == 0 for n in proxy.state.inflight.values())
        assert proxy.upstreams.open <= 2


async def test_an_idle_pooled_connection_makes_room_for_another_endpoint() -> None:
    async with mesh(max_upstream_connections=1, connect_timeout=0.3) as (proxy, port):
        async with session() as client:
            for host in ("web.demo.mesh", "other.demo.mesh", "web.demo.mesh"):
                async with client.get(url(port, "/ok"), headers={"Host": host}) as resp:
                    assert resp.status == 200, await resp.text()
                    await resp.read()
        assert metric(proxy, "simmesh_proxy_upstream_limited_total", service="demo/other") == 0
        assert proxy.upstreams.open <= 1


async def test_a_waiting_request_gets_the_slot_a_closing_connection_frees() -> None:
    async with (
        mesh(max_upstream_connections=1, connect_timeout=5) as (proxy, port),
        session() as client,
    ):
        first = asyncio.create_task(client.get(url(port, "/stall?seconds=0.5"), headers=HOST))
        await until(lambda: proxy.upstreams.open == 1)
        other = {"Host": "other.demo.mesh"}
        async with client.get(url(port, "/ok"), headers=other) as resp:
            assert resp.status == 200  # waited for the stalled request's connection
        async with await first as resp:
            assert resp.status == 200


async def test_a_tcp_flow_over_the_upstream_limit_is_closed_and_counted() -> None:
    http, tcp = free_range(1), free_range(4)
    async with tcp_workload("127.0.0.2") as target:
        docs = [
            service("db", ports=[("pg", 5432)], annotations={"simmesh.io/traffic-type": "tcp"}),
            *endpoints("db", [target], port_name="pg"),
        ]
        config = build(docs, settings(http=http, tcp=tcp))
        async with running_proxy(config, max_upstream_connections=1, connect_timeout=0.3) as p:
            reader, writer = await asyncio.open_connection(LOCAL, tcp)
            writer.write(b"ping")
            assert await asyncio.wait_for(reader.readexactly(4), 5) == b"ping"
            second, other = await asyncio.open_connection(LOCAL, tcp)
            assert await asyncio.wait_for(second.read(), 5) == b""  # closed: no slot
            other.close()
            assert metric(p, "simmesh_proxy_upstream_limited_total", protocol="tcp") == 1
            assert metric(p, "simmesh_proxy_upstream_failures_total", failure="connect") == 0
            writer.close()
            await until(lambda: p.upstreams.open == 0)
            assert all(n == 0 for n in p.state.inflight.values())


# -- the pieces ---------------------------------------------------------------------------------


def test_the_budget_leaves_the_upstream_what_max_connections_leaves() -> None:
    roomy = fd_budget(nofile=65536, max_connections=10000, max_upstream=None)
    assert (roomy.downstream, roomy.upstream) == (10000, 65536 - RESERVED_FDS - 10000)
    tight = fd_budget(nofile=1100, max_connections=10000, max_upstream=None)
    spare = 1100 - RESERVED_FDS
    assert (tight.downstream, tight.upstream) == (spare - spare // 2, spare // 2)
    assert not tight.overcommitted
    given = fd_budget(nofile=1100, max_connections=10000, max_upstream=50)
    assert (given.downstream, given.upstream, given.overcommitted) == (10000, 50, True)


async def test_the_gate_hands_slots_over_in_order_and_refuses_after_its_wait() -> None:
    gate = UpstreamGate(1, wait=0.2)
    first = await gate.acquire()
    second = asyncio.create_task(gate.acquire())
    third = asyncio.create_task(gate.acquire())
    await asyncio.sleep(0.05)
    first.release()
    slot = await second
    with pytest.raises(UpstreamLimit):
        await third
    assert gate.open == 1 and gate.refused == 1
    slot.release()
    slot.release()  # idempotent
    assert gate.open == 0
