"""TCP relay (half-close, refused upstreams, denials) and UDP sessions (idle timeout)."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import socket

from tests.proxy.harness import (
    LOCAL,
    build,
    endpoints,
    free_port,
    free_range,
    metric,
    pod,
    port_route,
    running_proxy,
    service,
    settings,
    tcp_workload,
    traffic_target,
    udp_client,
    udp_workload,
)


async def open_from(
    port: int, local: str = LOCAL
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection(LOCAL, port, local_addr=(local, 0))


async def test_tcp_relay_keeps_half_close() -> None:
    http, tcp = free_range(1), free_range(4)
    async with tcp_workload("127.0.0.2") as target:
        docs = [
            service("db", ports=[("pg", 5432)], annotations={"simmesh.io/traffic-type": "tcp"}),
            *endpoints("db", [target], port_name="pg"),
        ]
        config = build(docs, settings(http=http, tcp=tcp))
        async with running_proxy(config) as proxy:
            reader, writer = await open_from(tcp)
            writer.write(b"ping")
            assert await asyncio.wait_for(reader.readexactly(4), 5) == b"ping"
            writer.write(b"BULK" + b"b" * 2_000_000)
            writer.write_eof()  # half-close: we are done sending, still reading
            rest = await asyncio.wait_for(reader.read(), 10)
            assert rest.endswith(b"total %d\n" % (4 + 4 + 2_000_000))
            writer.close()
            for _ in range(40):
                if metric(proxy, "simmesh_proxy_active_connections", protocol="tcp") == 0:
                    break
                await asyncio.sleep(0.05)
            assert metric(proxy, "simmesh_proxy_active_connections", protocol="tcp") == 0
            assert metric(proxy, "simmesh_proxy_bytes_total", protocol="tcp", direction="rx") == (
                2_000_008
            )
            assert all(v == 0 for v in proxy.state.inflight.values())


async def test_tcp_refused_upstream_closes_the_client() -> None:
    http, tcp = free_range(1), free_range(4)
    docs = [
        service("db", ports=[("pg", 5432)], annotations={"simmesh.io/traffic-type": "tcp"}),
        *endpoints("db", [("127.0.0.2", free_port())], port_name="pg"),
    ]
    config = build(docs, settings(http=http, tcp=tcp))
    async with running_proxy(config) as proxy:
        reader, writer = await open_from(tcp)
        assert await asyncio.wait_for(reader.read(), 5) == b""
        writer.close()
        await asyncio.sleep(0.05)
        assert metric(proxy, "simmesh_proxy_upstream_failures_total", failure="connect") == 1


async def test_tcp_access_log_names_the_client_port() -> None:
    http, tcp = free_range(1), free_range(4)
    stream = io.StringIO()
    async with tcp_workload("127.0.0.2") as target:
        docs = [
            service("db", ports=[("pg", 5432)], annotations={"simmesh.io/traffic-type": "tcp"}),
            *endpoints("db", [target], port_name="pg"),
        ]
        config = build(docs, settings(http=http, tcp=tcp))
        async with running_proxy(config, access_log=True, access_stream=stream):
            reader, writer = await open_from(tcp)
            port = writer.get_extra_info("sockname")[1]
            writer.write(b"ping")
            assert await asyncio.wait_for(reader.readexactly(4), 5) == b"ping"
            writer.close()
            await asyncio.sleep(0.1)
    (record,) = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert (record["kind"], record["client"], record["client_port"]) == ("tcp", LOCAL, port)
    assert record["service"] == "demo/db"


def acl_docs(kind: str, target: tuple[str, int]) -> list[dict]:  # type: ignore[type-arg]
    route = "TCPRoute" if kind == "tcp" else "UDPRoute"
    return [
        service(
            "db",
            ports=[("pg", 5432)],
            annotations={"simmesh.io/traffic-type": kind},
            protocol="TCP" if kind == "tcp" else "UDP",
        ),
        *endpoints(
            "db",
            [target],
            port_name="pg",
            pods=["db-0"],
            protocol="TCP" if kind == "tcp" else "UDP",
        ),
        pod("db-0", target[0], "db"),
        pod("client-0", "127.0.0.5", "client"),
        pod("intruder-0", "127.0.0.6", "intruder"),
        port_route(route, "db-ports"),
        traffic_target(
            "client-to-db",
            destination="db",
            sources=["client"],
            rules=[{"kind": route, "name": "db-ports"}],
        ),
    ]


async def test_tcp_acl_admits_granted_source_and_closes_others() -> None:
    http, tcp = free_range(1), free_range(4)
    async with tcp_workload("127.0.0.2") as target:
        config = build(acl_docs("tcp", target), settings(http=http, tcp=tcp, acl=True))
        async with running_proxy(config) as proxy:
            reader, writer = await open_from(tcp, "127.0.0.5")
            writer.write(b"hi")
            assert await asyncio.wait_for(reader.readexactly(2), 5) == b"hi"
            writer.close()
            reader, writer = await open_from(tcp, "127.0.0.6")
            with contextlib.suppress(ConnectionError):
                assert await asyncio.wait_for(reader.read(), 5) == b""
            writer.close()
            await asyncio.sleep(0.05)
            assert (
                metric(proxy, "simmesh_proxy_denied_total", protocol="tcp", reason="not-granted")
                == 1
            )


async def test_udp_sessions_relay_and_expire() -> None:
    http, udp = free_range(1), free_range(4)
    async with udp_workload("127.0.0.2", "u0") as target:
        docs = [
            service(
                "dns",
                ports=[("pg", 53)],
                annotations={"simmesh.io/traffic-type": "udp"},
                protocol="UDP",
            ),
            *endpoints("dns", [target], port_name="pg", protocol="UDP"),
        ]
        config = build(docs, settings(http=http, udp=udp))
        async with running_proxy(config, udp_idle_timeout=0.3) as proxy:
            async with udp_client(udp) as (one, inbox_one), udp_client(udp) as (two, inbox_two):
                for i in range(3):
                    one.sendto(b"one%d" % i)
                    two.sendto(b"two%d" % i)
                for i in range(3):
                    assert await asyncio.wait_for(inbox_one.received.get(), 5) == b"u0:one%d" % i
                    assert await asyncio.wait_for(inbox_two.received.get(), 5) == b"u0:two%d" % i
                assert metric(proxy, "simmesh_proxy_udp_sessions") == 2
                await asyncio.sleep(0.8)
                assert metric(proxy, "simmesh_proxy_udp_sessions") == 0
                one.sendto(b"again")
                assert await asyncio.wait_for(inbox_one.received.get(), 5) == b"u0:again"
            assert metric(proxy, "simmesh_proxy_connections_total", protocol="udp") == 3


async def test_udp_acl_drops_denied_sources() -> None:
    http, udp = free_range(1), free_range(4)
    async with udp_workload("127.0.0.2", "u0") as target:
        config = build(acl_docs("udp", target), settings(http=http, udp=udp, acl=True))
        async with running_proxy(config) as proxy:
            async with (
                udp_client(udp, local="127.0.0.5") as (ok, inbox_ok),
                udp_client(udp, local="127.0.0.6") as (bad, inbox_bad),
            ):
                bad.sendto(b"let me in")
                ok.sendto(b"hello")
                assert await asyncio.wait_for(inbox_ok.received.get(), 5) == b"u0:hello"
                await asyncio.sleep(0.1)
                assert inbox_bad.received.empty()
            assert metric(proxy, "simmesh_proxy_denied_total", protocol="udp") == 1


def test_free_ports_are_really_free() -> None:
    start = free_range(3)
    for port in range(start, start + 3):
        with socket.socket() as sock:
            sock.bind((LOCAL, port))
