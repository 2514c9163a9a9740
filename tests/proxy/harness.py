"""Building blocks for loopback tests: ports, manifests -> MeshConfig, backends, a proxy.

Configs are built the way the controller builds them: manifest dicts -> ``parse_objects`` ->
``build_topology`` -> ``build_config``, with Settings whose port ranges point at free ports and
endpoints on 127.0.0.x addresses.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import struct
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import replace
from typing import Any, cast

import aiohttp
from aiohttp import web

from mesh.core.config import MeshConfig, build_config
from mesh.core.model import PortRange, Settings
from mesh.core.parse import parse_objects
from mesh.core.topology import build_topology
from mesh.proxy.proxy import Options, Proxy

LOCAL = "127.0.0.1"


# -- ports ------------------------------------------------------------------------------------


def _bindable(port: int, host: str = LOCAL) -> bool:
    for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
        with socket.socket(socket.AF_INET, kind) as sock:
            try:
                sock.bind((host, port))
            except OSError:
                return False
    return True


def free_range(size: int, *, low: int = 20000, high: int = 60000) -> int:
    """The first port of ``size`` consecutive ports free for TCP and UDP on 127.0.0.1."""
    rng = random.Random()
    for _ in range(200):
        start = rng.randrange(low, high - size)
        if all(_bindable(p) for p in range(start, start + size)):
            return start
    raise RuntimeError("no free port range")


def free_port() -> int:
    return free_range(1)


# -- manifests --------------------------------------------------------------------------------


def service(
    name: str,
    *,
    namespace: str = "demo",
    ports: Iterable[tuple[str, int]] = (("http", 80),),
    annotations: dict[str, str] | None = None,
    cluster_ip: str | None = None,
    protocol: str = "TCP",
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "ports": [{"name": n, "port": p, "targetPort": n, "protocol": protocol} for n, p in ports],
        "selector": {"app": name},
    }
    if cluster_ip:
        spec["clusterIP"] = cluster_ip
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": namespace, "annotations": annotations or {}},
        "spec": spec,
    }


def endpoints(
    service_name: str,
    targets: Iterable[tuple[str, int]],
    *,
    namespace: str = "demo",
    port_name: str = "http",
    pods: Iterable[str | None] | None = None,
    protocol: str = "TCP",
) -> list[dict[str, Any]]:
    """One EndpointSlice per target (a slice has one port for all its endpoints)."""
    targets = list(targets)
    pod_names = list(pods) if pods is not None else [None] * len(targets)
    out = []
    for i, ((ip, port), pod) in enumerate(zip(targets, pod_names, strict=True)):
        endpoint: dict[str, Any] = {"addresses": [ip], "conditions": {"ready": True}}
        if pod:
            endpoint["targetRef"] = {"kind": "Pod", "name": pod}
        out.append(
            {
                "apiVersion": "discovery.k8s.io/v1",
                "kind": "EndpointSlice",
                "metadata": {
                    "name": f"{service_name}-{port_name}-{i}",
                    "namespace": namespace,
                    "labels": {"kubernetes.io/service-name": service_name},
                },
                "addressType": "IPv4",
                "ports": [{"name": port_name, "port": port, "protocol": protocol}],
                "endpoints": [endpoint],
            }
        )
    return out


def pod(name: str, ip: str, account: str, *, namespace: str = "demo") -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"serviceAccountName": account, "nodeName": "node-a"},
        "status": {"podIP": ip},
    }


def settings(
    *,
    http: int,
    tcp: int | None = None,
    udp: int | None = None,
    acl: bool = False,
    http_size: int = 1,
    flow_size: int = 4,
) -> Settings:
    base = Settings(acl=acl, http_ports=PortRange(http, http_size))
    if tcp is not None:
        base = replace(base, tcp_ports=PortRange(tcp, flow_size))
    if udp is not None:
        base = replace(base, udp_ports=PortRange(udp, flow_size))
    return base


def build(docs: Iterable[dict[str, Any]], config_settings: Settings) -> MeshConfig:
    state = parse_objects(list(docs))
    config = build_config(build_topology(state, config_settings), config_settings)
    assert not config.errors, config.errors
    return config


# -- servers ----------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def serve_app(app: web.Application, host: str) -> AsyncIterator[int]:
    """An aiohttp application on ``host`` and a free port, stopped on exit."""
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, host, 0)
    await site.start()
    try:
        yield int(runner.addresses[0][1])
    finally:
        await runner.cleanup()


def backend_app(name: str) -> web.Application:
    """A test workload: echoes what it received, streams, uploads, fails and stalls on demand."""

    async def echo(request: web.Request) -> web.Response:
        body = await request.read()
        return web.json_response(
            {
                "backend": name,
                "method": request.method,
                "path": request.path_qs,
                "headers": {k: v for k, v in request.headers.items()},
                "peer": request.remote,
                "body": len(body),
            },
            headers={"X-Backend": name},
        )

    async def download(request: web.Request) -> web.StreamResponse:
        total = int(request.match_info["size"])
        chunk = b"x" * 65536
        resp = web.StreamResponse(headers={"Content-Length": str(total)})
        await resp.prepare(request)
        left = 0 if request.method == "HEAD" else total
        while left > 0:
            part = chunk[: min(left, len(chunk))]
            await resp.write(part)
            left -= len(part)
        return resp

    async def chunked(request: web.Request) -> web.StreamResponse:
        """``size`` bytes without a Content-Length (sent chunked, or until close to 1.0)."""
        resp = web.StreamResponse()
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        left = int(request.match_info["size"])
        while left > 0:
            part = min(left, 10000)
            await resp.write(b"k" * part)
            left -= part
        return resp

    async def upload(request: web.Request) -> web.Response:
        size = 0
        while chunk := await request.content.readany():
            size += len(chunk)
        return web.json_response({"backend": name, "received": size})

    async def status(request: web.Request) -> web.Response:
        code = int(request.match_info["code"])
        headers = {"X-Backend": name}
        if "reason" in request.query:  # a workload posing as a proxy (the mTLS tests)
            headers["X-Simmesh-Reason"] = request.query["reason"]
        return web.Response(status=code, text=f"{name} says {code}", headers=headers)

    async def stall(request: web.Request) -> web.Response:
        await asyncio.sleep(float(request.query.get("seconds", "30")))
        return web.Response(text="late")

    async def stall_body(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Length": "1000000"})
        await resp.prepare(request)
        await resp.write(b"y" * 1000)
        await asyncio.sleep(30)
        return resp

    async def reset(request: web.Request) -> web.Response:
        transport = request.transport
        assert transport is not None
        sock = transport.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        transport.abort()
        await asyncio.sleep(0.1)
        return web.Response(text="unreachable")

    async def reset_mid_body(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Length": "1000000"})
        await resp.prepare(request)
        await resp.write(b"z" * 100000)
        transport = request.transport
        assert transport is not None
        transport.abort()
        return resp

    async def websocket(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for msg in ws:
            if msg.type == aiohttp.WSMsgType.TEXT:
                await ws.send_str(f"{name}:{msg.data}")
            elif msg.type == aiohttp.WSMsgType.BINARY:
                await ws.send_bytes(msg.data)
        return ws

    app = web.Application(client_max_size=1 << 30)
    app.router.add_route("*", "/bytes/{size}", download)
    app.router.add_route("*", "/upload", upload)
    app.router.add_get("/chunked/{size}", chunked)
    app.router.add_route("*", "/status/{code}", status)
    app.router.add_get("/stall", stall)
    app.router.add_get("/stall-body", stall_body)
    app.router.add_get("/reset", reset)
    app.router.add_get("/reset-mid-body", reset_mid_body)
    app.router.add_get("/ws", websocket)
    app.router.add_route("*", "/{tail:.*}", echo)
    return app


@contextlib.asynccontextmanager
async def backends(*hosts: str, name: str = "b") -> AsyncIterator[list[tuple[str, int]]]:
    """Backends named ``<name><i>`` on the given loopback addresses."""
    async with contextlib.AsyncExitStack() as stack:
        targets = []
        for i, host in enumerate(hosts):
            port = await stack.enter_async_context(serve_app(backend_app(f"{name}{i}"), host))
            targets.append((host, port))
        yield targets


@contextlib.asynccontextmanager
async def running_proxy(config: MeshConfig | None = None, **overrides: Any) -> AsyncIterator[Proxy]:
    """A proxy on 127.0.0.1 (admin on a free port), applied ``config``, stopped on exit."""
    fields: dict[str, Any] = {"node": "node-a", "bind": LOCAL, "admin_port": 0}
    fields.update(overrides)
    stream = fields.pop("access_stream", None)
    proxy = Proxy(Options(**fields), access_stream=stream)
    await proxy.start()
    try:
        if config is not None:
            await proxy.apply(config)
        yield proxy
    finally:
        await proxy.drain(0.5)
        await proxy.close()


async def until(check: Callable[[], object], seconds: float = 3.0) -> bool:
    """Whether ``check()`` turned true within ``seconds`` (polled every 50 ms)."""
    for _ in range(int(seconds / 0.05)):
        if check():
            return True
        await asyncio.sleep(0.05)
    return bool(check())


def url(port: int, path: str = "/") -> str:
    return f"http://{LOCAL}:{port}{path}"


def session(**kwargs: Any) -> aiohttp.ClientSession:
    kwargs.setdefault("timeout", aiohttp.ClientTimeout(total=30))
    return aiohttp.ClientSession(auto_decompress=False, **kwargs)


def metric(proxy: Proxy, name: str, **labels: str) -> float:
    """A sample's value from the proxy's registry (0.0 when absent)."""
    return metric_value(proxy.metrics.render().decode(), name, **labels)


def metric_value(text: str, name: str, **labels: str) -> float:
    """A sample's value in a Prometheus exposition (0.0 when absent)."""
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return 0.0


# -- HTTP/2 ----------------------------------------------------------------------------------


class H2Backend(asyncio.Protocol):
    """A minimal h2c server: JSON echo, and ``/grpc`` answering with gRPC-style trailers."""

    def __init__(self, name: str) -> None:
        import h2.config
        import h2.connection

        config = h2.config.H2Configuration(client_side=False, header_encoding="utf-8")
        self.conn = h2.connection.H2Connection(config=config)
        self.name = name
        self.transport: asyncio.Transport | None = None
        self.requests: dict[int, tuple[dict[str, str], bytearray]] = {}

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.conn.initiate_connection()
        self.transport.write(self.conn.data_to_send())

    def data_received(self, data: bytes) -> None:
        import h2.events

        for event in self.conn.receive_data(data):
            if isinstance(event, h2.events.RequestReceived):
                headers = cast(list[tuple[str, str]], event.headers)  # header_encoding is set
                self.requests[event.stream_id] = (dict(headers), bytearray())
            elif isinstance(event, h2.events.DataReceived):
                self.requests[event.stream_id][1].extend(event.data)
                self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, h2.events.StreamEnded):
                self._respond(event.stream_id)
        assert self.transport is not None
        self.transport.write(self.conn.data_to_send())

    def _respond(self, stream_id: int) -> None:
        import json

        headers, body = self.requests.pop(stream_id)
        if headers[":path"].startswith("/grpc"):
            self.conn.send_headers(
                stream_id, [(":status", "200"), ("content-type", "application/grpc")]
            )
            self.conn.send_data(stream_id, bytes(body))
            trailers = [("grpc-status", "0"), ("grpc-message", f"{self.name} ok")]
            self.conn.send_headers(stream_id, trailers, end_stream=True)
            return
        payload = json.dumps(
            {
                "backend": self.name,
                "method": headers[":method"],
                "path": headers[":path"],
                "authority": headers.get(":authority"),
                "headers": {k: v for k, v in headers.items() if not k.startswith(":")},
                "body": len(body),
            }
        ).encode()
        response = [(":status", "200"), ("content-type", "application/json")]
        response.append(("content-length", str(len(payload))))
        self.conn.send_headers(stream_id, response)
        self.conn.send_data(stream_id, payload, end_stream=True)


@contextlib.asynccontextmanager
async def h2_backend(host: str, name: str = "h2") -> AsyncIterator[tuple[str, int]]:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: H2Backend(name), host, 0)
    try:
        yield host, int(server.sockets[0].getsockname()[1])
    finally:
        server.close()
        await server.wait_closed()


async def grpc_call(
    client: Any, port: int, authority: str, path: str = "/grpc.testing.TestService/UnaryCall"
) -> tuple[int, dict[str, str]]:
    """One unary gRPC-style call over ``client`` (an H2Upstream: its connection is reused):
    (status, trailers)."""
    from mesh.proxy.body import Body
    from mesh.proxy.upstream import UpstreamRequest

    resp = await client.send(
        UpstreamRequest(
            scheme="h2c",
            ip=LOCAL,
            port=port,
            method="POST",
            authority=authority,
            path=path,
            headers=[("content-type", "application/grpc"), ("te", "trailers")],
            body=Body(BytesReader(b"\x00\x00\x00\x00\x00"), 5, chunked=False),
            timeout=5.0,
            server_name=None,
        )
    )
    while await resp.read():
        pass
    answer = resp.status, dict(resp.trailers() or [])
    resp.release()
    return answer


class BytesReader:
    def __init__(self, data: bytes, chunk: int = 16384) -> None:
        self._data = memoryview(data)
        self._chunk = chunk

    async def readany(self) -> bytes:
        part, self._data = self._data[: self._chunk], self._data[self._chunk :]
        return bytes(part)


# -- SMI --------------------------------------------------------------------------------------


def traffic_target(
    name: str,
    *,
    destination: str,
    sources: Iterable[str],
    rules: list[dict[str, Any]],
    namespace: str = "demo",
) -> dict[str, Any]:
    return {
        "apiVersion": "access.smi-spec.io/v1alpha3",
        "kind": "TrafficTarget",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "destination": {"kind": "ServiceAccount", "name": destination},
            "sources": [{"kind": "ServiceAccount", "name": s} for s in sources],
            "rules": rules,
        },
    }


def port_route(kind: str, name: str, *, namespace: str = "demo") -> dict[str, Any]:
    """A TCPRoute or UDPRoute matching every port."""
    return {
        "apiVersion": "specs.smi-spec.io/v1alpha4",
        "kind": kind,
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"matches": {"ports": []}},
    }


def route_group(
    name: str, matches: list[dict[str, Any]], *, namespace: str = "demo"
) -> dict[str, Any]:
    return {
        "apiVersion": "specs.smi-spec.io/v1alpha4",
        "kind": "HTTPRouteGroup",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"matches": matches},
    }


# -- TCP and UDP workloads ----------------------------------------------------------------------


class TcpWorkload(asyncio.Protocol):
    """Echoes every byte; on EOF writes a summary line and closes (tests half-close); a read
    that starts with RESET resets the connection (RST)."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.count = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.count += len(data)
        assert self.transport is not None
        if data.startswith(b"RESET"):
            sock = self.transport.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.transport.abort()
            return
        if not data.startswith(b"BULK"):
            self.transport.write(data)

    def eof_received(self) -> bool:
        assert self.transport is not None
        self.transport.write(b"total %d\n" % self.count)
        self.transport.close()
        return True


class UdpWorkload(asyncio.DatagramProtocol):
    def __init__(self, name: str) -> None:
        self.name = name.encode()
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        assert self.transport is not None
        self.transport.sendto(self.name + b":" + data, addr)


@contextlib.asynccontextmanager
async def tcp_workload(host: str) -> AsyncIterator[tuple[str, int]]:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(TcpWorkload, host, 0)
    try:
        yield host, int(server.sockets[0].getsockname()[1])
    finally:
        server.close()
        await server.wait_closed()


@contextlib.asynccontextmanager
async def udp_workload(host: str, name: str = "u0") -> AsyncIterator[tuple[str, int]]:
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(
        lambda: UdpWorkload(name), local_addr=(host, 0)
    )
    try:
        yield host, int(transport.get_extra_info("sockname")[1])
    finally:
        transport.close()


class UdpClient(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.received: asyncio.Queue[bytes] = asyncio.Queue()

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        self.received.put_nowait(data)


@contextlib.asynccontextmanager
async def udp_client(
    port: int, *, local: str = LOCAL
) -> AsyncIterator[tuple[asyncio.DatagramTransport, UdpClient]]:
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.create_datagram_endpoint(
        UdpClient, local_addr=(local, 0), remote_addr=(LOCAL, port)
    )
    try:
        yield transport, protocol
    finally:
        transport.close()
