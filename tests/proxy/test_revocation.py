"""Revoking a grant ends the flows it admitted: TCP connections, UDP sessions and WebSocket
tunnels are judged again by the core when a config is applied, and the ones it no longer
admits end at once, while flows still granted (and flows in default mode) go on."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp

from mesh.core.config import MeshConfig
from tests.proxy.harness import (
    LOCAL,
    backends,
    build,
    endpoints,
    free_range,
    metric,
    pod,
    port_route,
    route_group,
    running_proxy,
    service,
    settings,
    tcp_workload,
    traffic_target,
    udp_client,
    udp_workload,
)

CLIENT, KEEPER = "127.0.0.5", "127.0.0.7"
BOUND = 1.0  # seconds from applying the revoking config to the flow's end (measured: ms)


def world(
    tcp: tuple[str, int], udp: tuple[str, int], web: tuple[str, int], *, client: bool, ws: str
) -> list[dict[str, Any]]:
    """db (TCP), dns (UDP) and web (HTTP, WebSocket at /ws) granted to keeper always and to
    client when ``client``; web's route match is ``ws`` (a pathRegex)."""
    docs: list[dict[str, Any]] = [
        service("db", ports=[("pg", 5432)], annotations={"simmesh.io/traffic-type": "tcp"}),
        *endpoints("db", [tcp], port_name="pg", pods=["db-0"]),
        service(
            "dns",
            ports=[("dns", 53)],
            annotations={"simmesh.io/traffic-type": "udp"},
            protocol="UDP",
        ),
        *endpoints("dns", [udp], port_name="dns", pods=["dns-0"], protocol="UDP"),
        service("web"),
        *endpoints("web", [web], pods=["web-0"]),
        pod("db-0", tcp[0], "db"),
        pod("dns-0", udp[0], "dns"),
        pod("web-0", web[0], "web"),
        pod("client-0", CLIENT, "client"),
        pod("keeper-0", KEEPER, "keeper"),
        port_route("TCPRoute", "all-tcp"),
        port_route("UDPRoute", "all-udp"),
        route_group("web-routes", [{"name": "ws", "pathRegex": ws}]),
    ]
    sources = ["keeper", "client"] if client else ["keeper"]
    for name, rule in [
        ("db", {"kind": "TCPRoute", "name": "all-tcp"}),
        ("dns", {"kind": "UDPRoute", "name": "all-udp"}),
        ("web", {"kind": "HTTPRouteGroup", "name": "web-routes"}),
    ]:
        docs.append(traffic_target(f"to-{name}", destination=name, sources=sources, rules=[rule]))
    return docs


@contextlib.asynccontextmanager
async def workloads() -> AsyncIterator[tuple[tuple[str, int], ...]]:
    async with (
        tcp_workload("127.0.0.2") as tcp,
        udp_workload("127.0.0.3") as udp,
        backends("127.0.0.4") as web,
    ):
        yield tcp, udp, web[0]


async def tcp_flow(port: int, source: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection(LOCAL, port, local_addr=(source, 0))
    writer.write(b"ping")
    assert await asyncio.wait_for(reader.readexactly(4), 5) == b"ping"
    return reader, writer


async def ended(reader: asyncio.StreamReader) -> float:
    """Seconds until the flow ends (EOF or reset)."""
    start = time.monotonic()
    with contextlib.suppress(ConnectionError):
        assert await asyncio.wait_for(reader.read(), BOUND) == b""
    return time.monotonic() - start


async def test_revoking_a_tcp_grant_ends_the_flows_it_admitted() -> None:
    http, tcp, udp = free_range(1), free_range(4), free_range(4)
    conf = settings(http=http, tcp=tcp, udp=udp, acl=True)
    async with workloads() as (t, u, w), running_proxy() as proxy:
        await proxy.apply(build(world(t, u, w, client=True, ws="/ws"), conf))
        revoked_reader, revoked_writer = await tcp_flow(tcp, CLIENT)
        kept_reader, kept_writer = await tcp_flow(tcp, KEEPER)
        # A reload that changes nothing about the grant ends nothing.
        await proxy.apply(build(world(t, u, w, client=True, ws="/w"), conf))
        kept_writer.write(b"pong")
        assert await asyncio.wait_for(kept_reader.readexactly(4), 5) == b"pong"
        await proxy.apply(build(world(t, u, w, client=False, ws="/w"), conf))
        assert await ended(revoked_reader) < BOUND
        kept_writer.write(b"more")
        assert await asyncio.wait_for(kept_reader.readexactly(4), 5) == b"more"
        assert metric(proxy, "simmesh_proxy_revoked_flows_total", protocol="tcp") == 1
        # And a new connection from the revoked source is refused.
        reader, writer = await asyncio.open_connection(LOCAL, tcp, local_addr=(CLIENT, 0))
        assert await ended(reader) < BOUND
        for w_ in (revoked_writer, kept_writer, writer):
            w_.close()


async def udp_exchange(client: Any, transport: Any, payload: bytes) -> bytes | None:
    transport.sendto(payload)
    try:
        return bytes(await asyncio.wait_for(client.received.get(), 0.5))
    except TimeoutError:
        return None


async def test_revoking_a_udp_grant_ends_its_sessions() -> None:
    http, tcp, udp = free_range(1), free_range(4), free_range(4)
    conf = settings(http=http, tcp=tcp, udp=udp, acl=True)
    async with (
        workloads() as (t, u, w),
        running_proxy(build(world(t, u, w, client=True, ws="/ws"), conf)) as proxy,
        udp_client(udp, local=CLIENT) as (revoked_tx, revoked),
        udp_client(udp, local=KEEPER) as (kept_tx, kept),
    ):
        assert await udp_exchange(revoked, revoked_tx, b"a") == b"u0:a"
        assert await udp_exchange(kept, kept_tx, b"b") == b"u0:b"
        await proxy.apply(build(world(t, u, w, client=False, ws="/ws"), conf))
        assert metric(proxy, "simmesh_proxy_revoked_flows_total", protocol="udp") == 1
        assert await udp_exchange(revoked, revoked_tx, b"c") is None
        assert await udp_exchange(kept, kept_tx, b"d") == b"u0:d"
        assert metric(proxy, "simmesh_proxy_udp_sessions") == 1


async def ws_connect(client: aiohttp.ClientSession, port: int) -> Any:
    url = f"http://{LOCAL}:{port}/ws"
    ws = await client.ws_connect(url, headers={"Host": "web.demo.mesh"})
    await ws.send_str("hello")
    assert (await asyncio.wait_for(ws.receive(), 5)).data == "b0:hello"
    return ws


async def ws_closed(ws: Any) -> float:
    start = time.monotonic()
    msg = await asyncio.wait_for(ws.receive(), BOUND)
    assert msg.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR, aiohttp.WSMsgType.CLOSE)
    return time.monotonic() - start


def client_from(source: str) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=(source, 0)))


async def test_revoking_a_grant_or_changing_its_route_match_ends_websocket_tunnels() -> None:
    http, tcp, udp = free_range(1), free_range(4), free_range(4)
    conf = settings(http=http, tcp=tcp, udp=udp, acl=True)

    def config(*, client: bool, ws: str) -> MeshConfig:
        return build(world(t, u, w, client=client, ws=ws), conf)

    async with (
        workloads() as (t, u, w),
        running_proxy(config(client=True, ws="/ws")) as proxy,
        client_from(CLIENT) as revoked_client,
        client_from(KEEPER) as kept_client,
    ):
        revoked = await ws_connect(revoked_client, http)
        kept = await ws_connect(kept_client, http)
        await proxy.apply(config(client=False, ws="/ws"))
        assert await ws_closed(revoked) < BOUND
        await kept.send_str("still")
        assert (await asyncio.wait_for(kept.receive(), 5)).data == "b0:still"
        # The route match the tunnel was admitted by no longer admits its path.
        await proxy.apply(config(client=False, ws="/other"))
        assert await ws_closed(kept) < BOUND
        assert metric(proxy, "simmesh_proxy_revoked_flows_total", protocol="websocket") == 2


async def test_default_mode_reloads_end_no_flow_until_acl_is_turned_on() -> None:
    http, tcp, udp = free_range(1), free_range(4), free_range(4)
    plain = settings(http=http, tcp=tcp, udp=udp)
    async with workloads() as (t, u, w), running_proxy() as proxy:
        await proxy.apply(build(world(t, u, w, client=True, ws="/ws"), plain))
        reader, writer = await tcp_flow(tcp, CLIENT)
        await proxy.apply(build(world(t, u, w, client=False, ws="/x"), plain))
        writer.write(b"pong")
        assert await asyncio.wait_for(reader.readexactly(4), 5) == b"pong"
        assert metric(proxy, "simmesh_proxy_revoked_flows_total", protocol="tcp") == 0
        # Turning ACL mode on judges the flows that default mode admitted.
        acl = settings(http=http, tcp=tcp, udp=udp, acl=True)
        await proxy.apply(build(world(t, u, w, client=False, ws="/x"), acl))
        assert await ended(reader) < BOUND
        writer.close()
