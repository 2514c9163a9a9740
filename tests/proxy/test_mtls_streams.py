"""TCP flows and h2c/gRPC requests through the mTLS tunnel between node proxies (issue 17
part 2), on loopback with real sockets and real certificates (tests/proxy/mtlsnet.py).

The client pod (node-a) calls services whose pod is on node-b: ``db`` (TCP echo that answers
``total N`` after the client's half-close) and ``grpc`` (h2c, answering ``/grpc`` with gRPC
trailers). node-a's proxy tunnels to node-b's, which authorises the identity the client
certificate proves and delivers to its own pod.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from pathlib import Path
from typing import Any

import h2.config
import h2.connection
import h2.events
import msgspec

from mesh.core.model import MtlsMode
from mesh.proxy.streams import DATA, EOF, HEADER, frame
from tests.proxy.harness import free_port, metric, port_route, service, traffic_target, until
from tests.proxy.mtlsnet import (
    CLIENT_IP,
    FAR_IP,
    NEAR_IP,
    Net,
    _slice,
    stream_open,
    two_nodes,
)

BULK = 3_000_000


def _cluster(net: Net, name: str) -> str:
    return next(key for key in net.config.clusters if key.startswith(f"demo/{name}:"))


async def _flow(
    net: Net, service: str = "db", *, source: str = CLIENT_IP, proxy: str = "127.0.0.1"
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection(proxy, net.listener(service), local_addr=(source, 0))


async def _echo_and_half_close(net: Net, service: str = "db") -> bytes:
    """ping, a large write, then a half-close: the pod's summary line after it (the pod
    echoes what is not in the read that starts with BULK, so that much comes back first)."""
    reader, writer = await _flow(net, service)
    try:
        writer.write(b"ping")
        assert await asyncio.wait_for(reader.readexactly(4), 5) == b"ping"
        writer.write(b"BULK" + b"b" * BULK)
        writer.write_eof()  # done sending, still reading
        rest = await asyncio.wait_for(reader.read(), 20)
        echoed, _, summary = rest.rpartition(b"total ")
        assert echoed.strip(b"b") == b""
        return b"total " + summary
    finally:
        writer.close()


def _tcp_grant(source: str) -> list[dict[str, Any]]:
    return [
        port_route("TCPRoute", "db-ports"),
        traffic_target(
            f"{source}-to-db",
            destination="server",
            sources=[source],
            rules=[{"kind": "TCPRoute", "name": "db-ports"}],
        ),
    ]


async def _closed(reader: asyncio.StreamReader) -> bytes:
    with contextlib.suppress(ConnectionError):
        return await asyncio.wait_for(reader.read(), 5)
    return b""


# -- TCP ---------------------------------------------------------------------------------------


async def test_a_tcp_flow_to_another_node_goes_through_the_tunnel_half_close_and_all(
    tmp_path: Path,
) -> None:
    async with two_nodes(tmp_path, flows=True, tap=True) as net:
        rest = await _echo_and_half_close(net)
        assert rest == b"total %d\n" % (4 + 4 + BULK)
        tap = net.extra["taps"][0]
        assert tap.seen[:1] == b"\x16"  # a TLS handshake record
        assert b"ping" not in tap.seen and b"bbbbbbbb" not in tap.seen
        assert len(tap.seen) > BULK  # it did carry the flow
        assert metric(net.a, "simmesh_proxy_tunnel_handshakes_total", side="client") == 1
        assert metric(net.b, "simmesh_proxy_tunnel_handshakes_total", side="server") == 1
        # node-b learnt the caller from the certificate, and ended the flow cleanly
        calls = {"service": "demo/db", "protocol": "tcp", "source": "demo/client", "code": "200"}
        assert await until(lambda: metric(net.b, "simmesh_proxy_calls_total", **calls) == 1)
        assert metric(net.b, "simmesh_proxy_bytes_total", protocol="tcp", direction="rx") == (
            4 + 4 + BULK
        )
        assert await until(
            lambda: metric(net.b, "simmesh_proxy_active_connections", protocol="tcp") == 0
        )
        # the next flow reuses the pooled tunnel connection: no new handshake
        assert await _echo_and_half_close(net) == b"total %d\n" % (4 + 4 + BULK)
        assert metric(net.a, "simmesh_proxy_tunnel_handshakes_total", side="client") == 1
        assert await until(lambda: metric(net.b, "simmesh_proxy_calls_total", **calls) == 2)
        # a flow to a pod of the same node stays on the node
        assert await _echo_and_half_close(net, "neardb") == b"total %d\n" % (4 + 4 + BULK)
        assert metric(net.b, "simmesh_proxy_tunnel_handshakes_total", side="server") == 1
        assert all(v == 0 for v in net.a.state.inflight.values())
        assert all(v == 0 for v in net.b.state.inflight.values())


async def test_concurrent_tcp_flows_each_get_a_tunnel_connection(tmp_path: Path) -> None:
    async with two_nodes(tmp_path, flows=True) as net:
        results = await asyncio.gather(*(_echo_and_half_close(net) for _ in range(4)))
        assert results == [b"total %d\n" % (4 + 4 + BULK)] * 4
        assert metric(net.a, "simmesh_proxy_tunnel_handshakes_total", side="client") == 4
        # then all four are pooled: four more flows open none
        results = await asyncio.gather(*(_echo_and_half_close(net) for _ in range(4)))
        assert metric(net.a, "simmesh_proxy_tunnel_handshakes_total", side="client") == 4


async def test_more_long_lived_flows_than_handshakes_at_once_all_connect(tmp_path: Path) -> None:
    """At most four handshakes per pool key at once: twelve flows that stay open still each
    get a connection (a waiting flow dials when a handshake ends), none waits for a flow to
    end."""
    async with two_nodes(tmp_path, flows=True) as net:
        flows = await asyncio.gather(*(_flow(net) for _ in range(12)))
        for i, (_, writer) in enumerate(flows):
            writer.write(b"%04d" % i)
        for i, (reader, _) in enumerate(flows):
            assert await asyncio.wait_for(reader.readexactly(4), 5) == b"%04d" % i
        assert metric(net.a, "simmesh_proxy_tunnel_handshakes_total", side="client") == 12
        for _, writer in flows:
            writer.close()


async def test_the_pods_reset_reaches_the_client_and_the_tunnel_is_not_reused(
    tmp_path: Path,
) -> None:
    """The pod resets the flow (RST): node-b aborts the tunnel connection, node-a resets the
    client without the pod's summary line, and the next flow opens a new tunnel."""
    async with two_nodes(tmp_path, flows=True) as net:
        reader, writer = await _flow(net)
        writer.write(b"ping")
        assert await asyncio.wait_for(reader.readexactly(4), 5) == b"ping"
        writer.write(b"RESET")
        assert await _closed(reader) == b""
        writer.close()
        assert await _echo_and_half_close(net) == b"total %d\n" % (4 + 4 + BULK)
        assert metric(net.a, "simmesh_proxy_tunnel_handshakes_total", side="client") == 2


async def test_a_draining_destination_closes_idle_stream_tunnels_and_waits_for_busy_ones(
    tmp_path: Path,
) -> None:
    async with two_nodes(tmp_path, flows=True) as net:
        reader, writer = await _flow(net)  # one busy
        writer.write(b"ping")
        assert await asyncio.wait_for(reader.readexactly(4), 5) == b"ping"
        assert await _echo_and_half_close(net) == b"total %d\n" % (4 + 4 + BULK)  # one idle
        assert net.b.tunnel is not None and len(net.b.tunnel.streams) == 2
        draining = asyncio.create_task(net.b.drain(timeout=5, delay=0))
        assert await until(lambda: len(net.b.tunnel.streams) == 1)  # the idle one closed
        assert not draining.done()  # the busy flow goes on
        writer.write(b"pong")
        assert await asyncio.wait_for(reader.readexactly(4), 5) == b"pong"
        writer.write_eof()
        assert (await asyncio.wait_for(reader.read(), 5)).endswith(b"total 8\n")
        writer.close()
        assert await asyncio.wait_for(draining, 5)  # drained once the flow ended


async def test_tcp_acl_on_the_certificate_identity(tmp_path: Path) -> None:
    """ACL mode: demo/client is granted the TCP port, demo/intruder is not. node-b judges the
    identity of the client certificate, whatever node-a decided."""
    async with two_nodes(tmp_path, flows=True, acl=True, objects=_tcp_grant("client")) as net:
        assert await _echo_and_half_close(net) == b"total %d\n" % (4 + 4 + BULK)
        target, cluster = f"{FAR_IP}:{net.extra['db']}", _cluster(net, "db")
        granted = net.authority.client_context("demo/client")
        reply, reader, writer = await stream_open(
            net.tunnel_b, granted, target=target, cluster=cluster
        )
        assert reply == "200 connected"
        writer.write(frame(DATA, b"hello") + frame(EOF))
        kind, length = HEADER.unpack(await reader.readexactly(5))
        payload = await reader.readexactly(length)
        assert kind == DATA and payload.startswith(b"hello")  # (the summary may follow)
        writer.close()
        intruder = net.authority.client_context("demo/intruder")
        reply, _, writer = await stream_open(net.tunnel_b, intruder, target=target, cluster=cluster)
        writer.close()
        assert reply.startswith("403 not-granted"), reply
        assert (
            metric(net.b, "simmesh_proxy_denied_total", protocol="tcp", reason="not-granted") == 1
        )
        # through the proxies, a caller without a grant is refused at the source already
        async with two_nodes(tmp_path, flows=True, acl=True, objects=_tcp_grant("other")) as net2:
            reader, writer = await _flow(net2)
            assert await _closed(reader) == b""
            writer.close()


async def test_a_stream_tunnel_delivers_only_to_the_nodes_own_pods(tmp_path: Path) -> None:
    async with two_nodes(tmp_path, flows=True) as net:
        context = net.authority.client_context("demo/client")
        for target, cluster, expected in (
            (f"{NEAR_IP}:{net.extra['neardb']}", _cluster(net, "neardb"), "403 not-local-target"),
            ("127.0.9.9:80", _cluster(net, "db"), "404 unknown-target"),
            ("not-an-address", _cluster(net, "db"), "400 bad-request"),
        ):
            reply, _, writer = await stream_open(
                net.tunnel_b, context, target=target, cluster=cluster
            )
            writer.close()
            assert reply.startswith(expected), (target, reply)


async def test_a_pod_that_cannot_be_reached_fails_the_flow_at_the_source(tmp_path: Path) -> None:
    """node-b cannot connect to the pod: it replies 502 and node-a counts a connect failure
    and closes the client (as for a plaintext connect that fails)."""
    dead = free_port()
    objects = [
        service("dead", ports=[("pg", 5432)], annotations={"simmesh.io/traffic-type": "tcp"}),
        _slice("dead", FAR_IP, dead, "far", "node-b", "pg"),
    ]
    async with two_nodes(tmp_path, flows=True, objects=objects) as net:
        reader, writer = await _flow(net, "dead")
        assert await _closed(reader) == b""
        writer.close()
        assert metric(net.a, "simmesh_proxy_upstream_failures_total", failure="connect") >= 1
        assert metric(net.b, "simmesh_proxy_upstream_failures_total", failure="connect") >= 1
        context = net.authority.client_context("demo/client")
        reply, _, writer = await stream_open(
            net.tunnel_b, context, target=f"{FAR_IP}:{dead}", cluster=_cluster(net, "dead")
        )
        writer.close()
        assert reply.startswith("502 upstream-connect-failed"), reply


async def test_strict_mode_refuses_plaintext_tcp_both_ways(tmp_path: Path) -> None:
    """Strict: node-a holds no certificate for the caller, so the flow is refused rather than
    sent to node-b in the clear (permissive sends it and counts it); and a plaintext flow at
    node-b's own listener from a pod of node-a is refused (permissive: judged by address and
    counted)."""
    for mode in (MtlsMode.STRICT, MtlsMode.PERMISSIVE):
        async with two_nodes(tmp_path, mode=mode, flows=True, held_a={}) as net:
            reader, writer = await _flow(net)
            writer.write(b"ping")
            got = await _closed(reader) if mode is MtlsMode.STRICT else await reader.readexactly(4)
            writer.close()
            sent = metric(net.a, "simmesh_proxy_plaintext_requests_total", direction="sent")
            if mode is MtlsMode.STRICT:
                assert got == b"" and sent == 0
                assert (
                    metric(net.a, "simmesh_proxy_upstream_failures_total", failure="connect") >= 1
                )
            else:
                assert got == b"ping" and sent == 1
            reader, writer = await _flow(net, proxy="127.0.0.2")  # node-b's listener
            writer.write(b"ping")
            got = await _closed(reader) if mode is MtlsMode.STRICT else await reader.readexactly(4)
            writer.close()
            received = metric(net.b, "simmesh_proxy_plaintext_requests_total", direction="received")
            assert received == 1
            if mode is MtlsMode.STRICT:
                assert got == b""
                denied = {"protocol": "tcp", "reason": "plaintext-refused"}
                assert metric(net.b, "simmesh_proxy_denied_total", **denied) == 1
            else:
                assert got == b"ping"


async def test_a_tcp_flow_through_a_tunnel_is_revoked_with_its_grant(tmp_path: Path) -> None:
    """node-b gets a config without the grant: it ends the flow it delivers for the
    certificate's identity (node-a, still on the old config, would not)."""
    async with two_nodes(tmp_path, flows=True, acl=True, objects=_tcp_grant("client")) as net:
        reader, writer = await _flow(net)
        writer.write(b"ping")
        assert await asyncio.wait_for(reader.readexactly(4), 5) == b"ping"
        assert net.b.tunnel is not None and len(net.b.tunnel.streams) == 1
        clusters = {
            key: msgspec.structs.replace(cluster, access=[])
            for key, cluster in net.config.clusters.items()
        }
        revoked = msgspec.structs.replace(net.config, clusters=clusters, version="revoked")
        assert await net.b.apply(revoked)
        assert await _closed(reader) == b""
        writer.close()
        revoked_flows = metric(
            net.b, "simmesh_proxy_revoked_flows_total", service="demo/db", protocol="tcp"
        )
        assert revoked_flows == 1


# -- h2c and gRPC ------------------------------------------------------------------------------


async def _h2(
    port: int,
    requests: list[tuple[str, bytes]],
    *,
    host: str = "grpc.demo.mesh",
    source: str = CLIENT_IP,
) -> list[tuple[dict[str, str], bytes, dict[str, str]]]:
    """h2c requests (path, body) on one connection from ``source``, concurrently: each one's
    response headers, body and trailers."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
    conn = h2.connection.H2Connection(
        h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
    )
    conn.initiate_connection()
    ids = []
    for path, body in requests:
        stream = conn.get_next_available_stream_id()
        ids.append(stream)
        headers = [(":method", "POST"), (":scheme", "http"), (":authority", host)]
        headers += [(":path", path), ("content-type", "application/grpc"), ("te", "trailers")]
        conn.send_headers(stream, headers, end_stream=not body)
        for at in range(0, len(body), 16384):  # within the connection's first window
            conn.send_data(stream, body[at : at + 16384])
        if body:
            conn.end_stream(stream)
    writer.write(conn.data_to_send())
    results: dict[int, list[Any]] = {i: [{}, bytearray(), {}] for i in ids}
    open_ = set(ids)
    try:
        while open_:
            data = await asyncio.wait_for(reader.read(65536), 10)
            assert data, "the proxy closed the connection"
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.ResponseReceived):
                    results[event.stream_id][0] = dict(event.headers)
                elif isinstance(event, h2.events.DataReceived):
                    results[event.stream_id][1].extend(event.data)
                    conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                elif isinstance(event, h2.events.TrailersReceived):
                    results[event.stream_id][2] = dict(event.headers)
                elif isinstance(event, h2.events.StreamEnded | h2.events.StreamReset):
                    open_.discard(event.stream_id)
            writer.write(conn.data_to_send())
    finally:
        writer.close()
    return [(h, bytes(b), t) for h, b, t in (results[i] for i in ids)]


async def test_grpc_through_the_tunnel_keeps_trailers_per_stream(tmp_path: Path) -> None:
    async with two_nodes(tmp_path, flows=True, tap=True) as net:
        bodies = [
            b"\x00\x00\x00\x00\x05hello",
            b"x" * 16_000,
            b"\x00bye",
        ]  # (the backend echoes in one frame)
        results = await _h2(net.http, [("/grpc/Echo", body) for body in bodies])
        for (headers, body, trailers), sent in zip(results, bodies, strict=True):
            assert headers[":status"] == "200"
            assert body == sent  # per stream, not mixed up
            assert trailers == {"grpc-status": "0", "grpc-message": "grpc0 ok"}
        tap = net.extra["taps"][0]
        assert tap.seen[:1] == b"\x16" and b"/grpc/Echo" not in tap.seen
        assert b"hello" not in tap.seen
        assert metric(net.a, "simmesh_proxy_tunnel_handshakes_total", side="client") == 1
        calls = {"service": "demo/grpc", "source": "demo/client", "code": "200"}
        assert metric(net.b, "simmesh_proxy_calls_total", protocol="http", **calls) == 3
        # more requests: the same pooled HTTP/2 tunnel connection
        await _h2(net.http, [("/grpc/Echo", b"again")])
        assert metric(net.a, "simmesh_proxy_tunnel_handshakes_total", side="client") == 1


async def test_an_http1_client_reaches_an_h2c_pod_through_the_tunnel(tmp_path: Path) -> None:
    """The pod sees the request without the tunnel's lines; it names the caller's address."""
    import aiohttp

    from tests.proxy.harness import session

    async with two_nodes(tmp_path, flows=True) as net:
        connector = aiohttp.TCPConnector(local_addr=(CLIENT_IP, 0))
        async with (
            session(connector=connector) as http,
            http.get(net.url("grpc", "/h2?x=1"), headers={"Host": "grpc.demo.mesh"}) as resp,
        ):
            assert resp.status == 200
            echoed = await resp.json()
        assert echoed["backend"] == "grpc0" and echoed["path"] == "/h2?x=1"
        assert "simmesh-target" not in echoed["headers"]
        assert "simmesh-cluster" not in echoed["headers"]
        assert CLIENT_IP in echoed["headers"]["x-forwarded-for"]
        assert metric(net.b, "simmesh_proxy_tunnel_handshakes_total", side="server") == 1


async def test_an_h2c_pod_the_destination_cannot_reach_is_a_connect_failure_at_the_source(
    tmp_path: Path,
) -> None:
    """node-b answers 502 upstream-connect-failed: node-a records a connect failure (which
    its retry rules may retry elsewhere) rather than relaying a pod's answer. (No request
    body: one that went out already makes the failure a reset, by the core's rules.)"""
    objects = [
        service("deadgrpc", annotations={"simmesh.io/scheme": "h2c"}),
        _slice("deadgrpc", FAR_IP, free_port(), "far", "node-b"),
    ]
    async with two_nodes(tmp_path, flows=True, objects=objects) as net:
        [(headers, _, _)] = await _h2(net.http, [("/grpc/Echo", b"")], host="deadgrpc.demo.mesh")
        assert headers[":status"] == "502"
        assert headers["x-simmesh-reason"] == "upstream-connect-failed"
        assert metric(net.a, "simmesh_proxy_upstream_failures_total", failure="connect") >= 1


async def test_h2c_through_the_tunnel_is_authorised_on_the_certificate(tmp_path: Path) -> None:
    """ACL mode: a grant for demo/client lets its h2c requests through node-b; a rogue proxy
    holding demo/intruder's certificate, speaking HTTP/2 at the tunnel port, gets 403."""
    from tests.proxy.mtlsnet import grant

    objects = grant("client")
    async with two_nodes(tmp_path, flows=True, acl=True, objects=objects) as net:
        [(headers, _, trailers)] = await _h2(net.http, [("/grpc/Echo", b"hi")])
        assert headers[":status"] == "200" and trailers["grpc-status"] == "0"
        intruder = net.authority.client_context("demo/intruder")
        status = await _rogue_h2(net, intruder)
        assert status == "403"
        granted = net.authority.client_context("demo/client")
        assert await _rogue_h2(net, granted) == "200"


async def _rogue_h2(net: Net, context: ssl.SSLContext) -> str:
    from mesh.proxy.mtls import ALPN_H2, sni_name

    context.set_alpn_protocols([ALPN_H2])
    reader, writer = await asyncio.open_connection(
        "127.0.0.2", net.tunnel_b, ssl=context, server_hostname=sni_name("demo/server")
    )
    conn = h2.connection.H2Connection(
        h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
    )
    conn.initiate_connection()
    headers = [(":method", "GET"), (":scheme", "http"), (":authority", "grpc.demo.mesh")]
    headers += [(":path", "/x"), ("simmesh-target", f"{FAR_IP}:{net.extra['grpc']}")]
    headers += [("simmesh-cluster", _cluster(net, "grpc"))]
    conn.send_headers(1, headers, end_stream=True)
    writer.write(conn.data_to_send())
    try:
        while True:
            data = await asyncio.wait_for(reader.read(65536), 5)
            assert data
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.ResponseReceived):
                    return dict(event.headers)[":status"]
            writer.write(conn.data_to_send())
    finally:
        writer.close()


# -- WebSocket ---------------------------------------------------------------------------------


async def test_a_websocket_to_another_node_goes_through_the_tunnel(tmp_path: Path) -> None:
    """The upgrade goes on a tunnel connection of its own to node-b's proxy, which authorises
    the certificate's identity, upgrades with the pod and relays the frames."""
    import aiohttp

    from tests.proxy.harness import session
    from tests.proxy.mtlsnet import grant

    async with two_nodes(tmp_path, acl=True, objects=grant("client"), tap=True) as net:
        connector = aiohttp.TCPConnector(local_addr=(CLIENT_IP, 0))
        async with (
            session(connector=connector) as http,
            http.ws_connect(net.url("far", "/ws"), headers={"Host": "far.demo.mesh"}) as ws,
        ):
            for text in ("hello", "x" * 100_000):
                await ws.send_str(text)
                assert (await ws.receive(timeout=5)).data == f"far0:{text}"
            assert metric(net.a, "simmesh_proxy_tunnels_open", side="client") == 1
        tap = net.extra["taps"][0]
        # markers long enough not to turn up in 100 KB of ciphertext by chance ("/ws" alone did,
        # about once in 170 runs): the upgrade request's line and the first message
        assert tap.seen[:1] == b"\x16" and b"hello" not in tap.seen
        assert b"GET /ws HTTP/1.1" not in tap.seen and b"Upgrade: websocket" not in tap.seen
        assert metric(net.a, "simmesh_proxy_tunnel_handshakes_total", side="client") == 1
        assert await until(lambda: metric(net.a, "simmesh_proxy_tunnels_open", side="client") == 0)
        # node-b authorised and counted the caller of the certificate
        calls = {"service": "demo/far", "source": "demo/client", "code": "101"}
        assert await until(
            lambda: metric(net.b, "simmesh_proxy_calls_total", protocol="http", **calls) == 1
        )


async def test_strict_mode_never_upgrades_across_nodes_in_the_clear(tmp_path: Path) -> None:
    import aiohttp

    from tests.proxy.harness import session

    for mode, expected in ((MtlsMode.STRICT, 502), (MtlsMode.PERMISSIVE, 101)):
        async with two_nodes(tmp_path, mode=mode, held_a={}) as net:
            connector = aiohttp.TCPConnector(local_addr=(CLIENT_IP, 0))
            async with session(connector=connector) as http:
                try:
                    async with http.ws_connect(
                        net.url("far", "/ws"), headers={"Host": "far.demo.mesh"}
                    ) as ws:
                        await ws.send_str("hi")
                        assert (await ws.receive(timeout=5)).data == "far0:hi"
                        status = 101
                except aiohttp.WSServerHandshakeError as exc:
                    status = exc.status
            assert status == expected, mode
            sent = metric(net.a, "simmesh_proxy_plaintext_requests_total", direction="sent")
            assert sent == (1 if mode is MtlsMode.PERMISSIVE else 0)


# -- UDP ---------------------------------------------------------------------------------------


async def test_udp_sessions_to_another_node_go_through_the_tunnel(tmp_path: Path) -> None:
    """Each client address is a session; its datagrams cross in frames of one tunnel
    connection, boundaries kept (a large one too), and come back. (Not an empty one: Python
    3.11's asyncio sends none, on any path.)"""
    from tests.proxy.harness import udp_client

    async with two_nodes(tmp_path, flows=True, tap=True) as net:
        port = net.listener("dns", "udp")
        async with udp_client(port, local=CLIENT_IP) as (client, inbox):
            sent = [b"datagram-one", b"x" * 60_000, b"datagram-two"]
            for data in sent:
                client.sendto(data)
            got = [await asyncio.wait_for(inbox.received.get(), 5) for _ in sent]
            assert got == [b"u0:" + data for data in sent]
        tap = net.extra["taps"][0]
        assert tap.seen[:1] == b"\x16" and b"datagram-one" not in tap.seen
        assert b"xxxxxxxx" not in tap.seen
        assert metric(net.a, "simmesh_proxy_tunnel_handshakes_total", side="client") == 1
        calls = {"service": "demo/dns", "protocol": "udp", "source": "demo/client"}
        assert metric(net.a, "simmesh_proxy_calls_total", code="200", **calls) == 1
        assert metric(net.b, "simmesh_proxy_active_connections", protocol="udp") == 1


async def test_udp_through_the_tunnel_is_authorised_on_the_certificate(tmp_path: Path) -> None:
    objects = [
        port_route("UDPRoute", "dns-ports"),
        traffic_target(
            "client-to-dns",
            destination="server",
            sources=["client"],
            rules=[{"kind": "UDPRoute", "name": "dns-ports"}],
        ),
    ]
    async with two_nodes(tmp_path, flows=True, acl=True, objects=objects) as net:
        target, cluster = f"{FAR_IP}:{net.extra['dns']}", _cluster(net, "dns")
        for identity, expected in (("demo/intruder", "403 not-granted"), ("demo/client", "200")):
            context = net.authority.client_context(identity)
            reply, reader, writer = await stream_open(
                net.tunnel_b, context, target=target, cluster=cluster, udp=True
            )
            assert reply.startswith(expected), (identity, reply)
            if expected == "200":
                writer.write(frame(DATA, b"ping"))
                kind, length = HEADER.unpack(await reader.readexactly(5))
                assert (kind, await reader.readexactly(length)) == (DATA, b"u0:ping")
            writer.close()
        # a UDP OPEN to a TCP service, a TCP OPEN to an HTTP service: refused
        context = net.authority.client_context("demo/client")
        reply, _, writer = await stream_open(
            net.tunnel_b,
            context,
            target=f"{FAR_IP}:{net.extra['db']}",
            cluster=_cluster(net, "db"),
            udp=True,
        )
        writer.close()
        assert reply.startswith("400"), reply
        reply, _, writer = await stream_open(
            net.tunnel_b, context, target=f"{FAR_IP}:{net.far}", cluster=_cluster(net, "far")
        )
        writer.close()
        assert reply.startswith("400"), reply


async def test_strict_mode_never_sends_udp_across_nodes_in_the_clear(tmp_path: Path) -> None:
    from tests.proxy.harness import udp_client

    for mode in (MtlsMode.STRICT, MtlsMode.PERMISSIVE):
        async with two_nodes(tmp_path, mode=mode, flows=True, held_a={}) as net:
            port = net.listener("dns", "udp")
            async with udp_client(port, local=CLIENT_IP) as (client, inbox):
                client.sendto(b"ping")
                if mode is MtlsMode.STRICT:
                    await asyncio.sleep(0.3)
                    assert inbox.received.empty()
                else:
                    assert await asyncio.wait_for(inbox.received.get(), 5) == b"u0:ping"
            sent = metric(net.a, "simmesh_proxy_plaintext_requests_total", direction="sent")
            assert sent == (0 if mode is MtlsMode.STRICT else 1), mode
