"""One source cannot lock the others out of the proxy's connections, over real sockets.

Issue 19: 500 keep-alive connections from one source without identity filled
``--max-connections`` and locked a granted client out until they closed. Now each source IP
may hold ``--max-connections-per-source`` connections (HTTP/1.1, h2c, TCP, UDP sessions; a
tenth of ``--max-connections`` by default, at least 100), and in ACL mode sources without
identity share all but ``--reserved-connections`` (a tenth). Refusals are resets, counted by
reason and logged once per 10 s; every place is given back when its connection ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

import pytest

from mesh.proxy.h2common import PREFACE
from mesh.proxy.proxy import Proxy
from tests.proxy.harness import (
    LOCAL,
    backends,
    build,
    endpoints,
    free_range,
    metric,
    pod,
    route_group,
    running_proxy,
    service,
    settings,
    tcp_workload,
    traffic_target,
)

GRANTED = "127.0.0.5"  # a pod's address: a source with an identity
Conn = tuple[asyncio.StreamReader, asyncio.StreamWriter]


@contextlib.asynccontextmanager
async def mesh(**options: object) -> AsyncIterator[tuple[Proxy, int]]:
    """ACL mode: GRANTED may call web; other sources have no identity (403)."""
    http = free_range(1)
    async with backends("127.0.0.2") as targets:
        docs = [
            service("web"),
            *endpoints("web", targets, pods=["web-0"]),
            pod("web-0", "127.0.0.2", "web"),
            pod("client-0", GRANTED, "client"),
            route_group("all", [{"name": "all", "pathRegex": ".*", "methods": ["*"]}]),
            traffic_target(
                "client-to-web",
                destination="web",
                sources=["client"],
                rules=[{"kind": "HTTPRouteGroup", "name": "all"}],
            ),
        ]
        config = build(docs, settings(http=http, acl=True))
        async with running_proxy(config, **options) as proxy:
            yield proxy, http


async def connect(port: int, source: str) -> Conn:
    return await asyncio.open_connection(LOCAL, port, local_addr=(source, 0))


async def get(port: int, source: str) -> bytes:
    """One request from ``source`` on a new connection: the status line, or b"" if reset."""
    reader, writer = await connect(port, source)
    try:
        writer.write(b"GET /ok HTTP/1.1\r\nHost: web.demo.mesh\r\nConnection: close\r\n\r\n")
        return (await asyncio.wait_for(reader.readline(), 5)).strip()
    except ConnectionError:
        return b""
    finally:
        writer.close()


async def held(conns: list[Conn]) -> int:
    """How many of ``conns`` the proxy keeps open (it resets the others at once)."""

    async def open_(reader: asyncio.StreamReader) -> bool:
        try:
            return await asyncio.wait_for(reader.read(1), 0.5) != b""
        except TimeoutError:
            return True  # nothing to read, not closed
        except ConnectionError:
            return False

    return sum(await asyncio.gather(*(open_(reader) for reader, _ in conns)))


def close_all(conns: list[Conn]) -> None:
    for _, writer in conns:
        writer.close()


async def settled(proxy: Proxy) -> None:
    async with asyncio.timeout(5):
        while proxy.ctx.gate.sources or proxy.ctx.gate.count():
            await asyncio.sleep(0.02)
    assert proxy.ctx.gate.unidentified == 0


async def test_500_idle_connections_from_one_source_leave_room_for_another(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="simmesh.proxy")
    async with mesh(max_connections=500, header_timeout=60) as (proxy, port):
        flood = [await connect(port, "127.0.0.8") for _ in range(500)]
        assert await held(flood) == 100  # a tenth of --max-connections, at least 100
        assert await get(port, GRANTED) == b"HTTP/1.1 200 OK"
        assert await get(port, "127.0.0.9") == b"HTTP/1.1 403 Forbidden"  # admitted, denied
        refused = metric(proxy, "simmesh_proxy_connections_refused_total", reason="per-source")
        assert refused == 400
        lines = [r for r in caplog.records if "--max-connections-per-source 100" in r.getMessage()]
        assert len(lines) == 1 and "127.0.0.8" in lines[0].getMessage()
        close_all(flood)
        await settled(proxy)


async def test_sources_without_identity_cannot_take_the_reserved_connections() -> None:
    options = {"max_connections": 20, "max_connections_per_source": 20, "header_timeout": 60}
    async with mesh(**options) as (proxy, port):
        anonymous = [await connect(port, "127.0.0.8") for _ in range(18)]
        assert await held(anonymous) == 18  # all but the 2 reserved (a tenth)
        assert await get(port, "127.0.0.9") == b""  # another source without identity
        assert await get(port, GRANTED) == b"HTTP/1.1 200 OK"  # the reserve is for it
        assert metric(proxy, "simmesh_proxy_connections_refused_total", reason="unidentified")
        close_all(anonymous)
        await settled(proxy)


async def test_the_per_source_limit_counts_h2c_and_tcp_connections_and_frees_them() -> None:
    http, tcp = free_range(1), free_range(4)
    async with backends("127.0.0.2") as targets, tcp_workload("127.0.0.3") as sink:
        docs = [service("web"), *endpoints("web", targets)]
        docs += [
            service("db", ports=[("pg", 5432)], annotations={"simmesh.io/traffic-type": "tcp"}),
            *endpoints("db", [sink], port_name="pg"),
        ]
        config = build(docs, settings(http=http, tcp=tcp))
        async with running_proxy(config, max_connections_per_source=2) as proxy:
            h2c = await connect(http, "127.0.0.8")
            h2c[1].write(PREFACE)
            flow = await connect(tcp, "127.0.0.8")
            flow[1].write(b"ping")
            assert await asyncio.wait_for(flow[0].readexactly(4), 5) == b"ping"
            assert await get(http, "127.0.0.8") == b""  # a third connection: refused
            third = await connect(tcp, "127.0.0.8")
            assert await asyncio.wait_for(third[0].read(), 5) == b""
            assert await get(http, "127.0.0.9") == b"HTTP/1.1 200 OK"
            close_all([h2c, third])
            async with asyncio.timeout(5):
                while proxy.ctx.gate.sources.get("127.0.0.8") != 1:
                    await asyncio.sleep(0.02)
            assert await get(http, "127.0.0.8") == b"HTTP/1.1 200 OK"
            assert metric(proxy, "simmesh_proxy_connections_refused_total", protocol="tcp") == 1
            close_all([flow])
            await settled(proxy)
