"""A property of the whole data plane in ACL mode: no request or flow from an identity without
a grant ever reaches a backend, over HTTP/1.1, h2c, WebSocket, TCP and UDP; and every granted
one does (so the property is not met by denying everything).

Each example is a generated world: three identities (and one address with no pod), four
services (HTTP, WebSocket, TCP, UDP) and random TrafficTargets with random HTTPRouteGroup
matches. Every source calls every service; backends record who reached them; an oracle
written here from the SMI rules (not the core's code) says who may.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.proxy.harness import (
    LOCAL,
    build,
    endpoints,
    free_range,
    pod,
    port_route,
    route_group,
    running_proxy,
    serve_app,
    service,
    traffic_target,
)
from tests.proxy.harness import settings as mesh_settings
from tests.proxy.test_acl_bypass import h1, h2c

SOURCES = {"s0": "127.0.0.50", "s1": "127.0.0.51", "s2": "127.0.0.52"}
ANONYMOUS = "127.0.0.60"
ADDRESS_OF = {**SOURCES, "anonymous": ANONYMOUS}
PATHS = ["/a", "/a/x", "/b", "/b/y", "/c"]
METHODS = ["GET", "POST", "DELETE"]


@dataclass(frozen=True)
class Match:
    name: str
    path: str | None
    methods: tuple[str, ...] | None
    role: str | None  # header x-role must be exactly this

    def doc(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name}
        if self.path is not None:
            out["pathRegex"] = self.path
        if self.methods is not None:
            out["methods"] = list(self.methods)
        if self.role is not None:
            out["headers"] = [{"x-role": self.role}]
        return out

    def admits(self, method: str, path: str, role: str | None) -> bool:
        if self.methods is not None and "*" not in self.methods and method not in self.methods:
            return False
        if self.path is not None and re.match(self.path, path) is None:
            return False
        return self.role is None or role == self.role


@dataclass(frozen=True)
class World:
    web: dict[str, tuple[str, ...] | None]  # source -> match names granted (None: all)
    matches: tuple[Match, ...]
    ws: frozenset[str]
    tcp: frozenset[str]
    udp: frozenset[str]

    def may(self, service: str, source: str, method: str = "GET", path: str = "/") -> bool:
        if service == "web":
            if source not in self.web:
                return False
            names = self.web[source]
            chosen = [m for m in self.matches if names is None or m.name in names]
            return any(m.admits(method, path, ROLE[source]) for m in chosen)
        return source in {"ws": self.ws, "tcp": self.tcp, "udp": self.udp}[service]


ROLE = {"s0": "admin", "s1": "user", "s2": None, "anonymous": "admin"}

matches_st = st.lists(
    st.builds(
        Match,
        name=st.just(""),
        path=st.sampled_from([None, "/a", "/b/.*", "/c$"]),
        methods=st.sampled_from([None, ("GET",), ("POST", "DELETE"), ("*",)]),
        role=st.sampled_from([None, "admin", "user"]),
    ),
    min_size=1,
    max_size=3,
).map(lambda ms: tuple(Match(f"m{i}", m.path, m.methods, m.role) for i, m in enumerate(ms)))
granted_st = st.frozensets(st.sampled_from(sorted(SOURCES)))


@st.composite
def worlds(draw: st.DrawFn) -> World:
    matches = draw(matches_st)
    names = [m.name for m in matches]
    web = {}
    for source in draw(granted_st):
        subset = draw(st.one_of(st.none(), st.lists(st.sampled_from(names), min_size=1)))
        web[source] = tuple(sorted(set(subset))) if subset is not None else None
    return World(web, matches, draw(granted_st), draw(granted_st), draw(granted_st))


# -- the mesh ---------------------------------------------------------------------------------


class Seen:
    def __init__(self) -> None:
        self.http: list[tuple[str, str, str]] = []  # (source ip, method, path)
        self.ws: list[str] = []
        self.tcp: list[str] = []
        self.udp: list[str] = []


def recording_app(seen: Seen) -> web.Application:
    def source(request: web.Request) -> str:
        return request.headers.get("X-Forwarded-For", "").split(",")[-1].strip()

    async def ws(request: web.Request) -> web.WebSocketResponse:
        seen.ws.append(source(request))
        resp = web.WebSocketResponse()
        await resp.prepare(request)
        await resp.close()
        return resp

    async def anything(request: web.Request) -> web.Response:
        seen.http.append((source(request), request.method, request.path))
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/ws", ws)
    app.router.add_route("*", "/{tail:.*}", anything)
    return app


class Recorder(asyncio.Protocol):
    def __init__(self, seen: list[str]) -> None:
        self.seen = seen

    def data_received(self, data: bytes) -> None:
        self.seen.append(data.decode())


class UdpRecorder(asyncio.DatagramProtocol):
    def __init__(self, seen: list[str]) -> None:
        self.seen = seen

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        self.seen.append(data.decode())


@contextlib.asynccontextmanager
async def backends(seen: Seen) -> AsyncIterator[dict[str, tuple[str, int]]]:
    loop = asyncio.get_running_loop()
    tcp = await loop.create_server(lambda: Recorder(seen.tcp), "127.0.0.2", 0)
    udp, _ = await loop.create_datagram_endpoint(
        lambda: UdpRecorder(seen.udp), local_addr=("127.0.0.3", 0)
    )
    try:
        async with (
            serve_app(recording_app(seen), "127.0.0.4") as http,
            serve_app(recording_app(seen), "127.0.0.6") as ws,
        ):
            yield {
                "tcp": ("127.0.0.2", tcp.sockets[0].getsockname()[1]),
                "udp": ("127.0.0.3", udp.get_extra_info("sockname")[1]),
                "web": ("127.0.0.4", http),
                "ws": ("127.0.0.6", ws),
            }
    finally:
        tcp.close()
        udp.close()


def docs(world: World, targets: dict[str, tuple[str, int]]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = [
        service("web"),
        *endpoints("web", [targets["web"]], pods=["web-0"]),
        service("ws"),
        *endpoints("ws", [targets["ws"]], pods=["ws-0"]),
        service("db", ports=[("pg", 5432)], annotations={"simmesh.io/traffic-type": "tcp"}),
        *endpoints("db", [targets["tcp"]], port_name="pg", pods=["db-0"]),
        service(
            "dns",
            ports=[("dns", 53)],
            annotations={"simmesh.io/traffic-type": "udp"},
            protocol="UDP",
        ),
        *endpoints("dns", [targets["udp"]], port_name="dns", pods=["dns-0"], protocol="UDP"),
        pod("web-0", targets["web"][0], "web"),
        pod("ws-0", targets["ws"][0], "ws"),
        pod("db-0", targets["tcp"][0], "db"),
        pod("dns-0", targets["udp"][0], "dns"),
        *(pod(f"{name}-0", ip, name) for name, ip in SOURCES.items()),
        route_group("web-routes", [m.doc() for m in world.matches]),
        route_group("ws-routes", [{"name": "all"}]),
        port_route("TCPRoute", "all-tcp"),
        port_route("UDPRoute", "all-udp"),
    ]
    for source, names in world.web.items():
        rule: dict[str, Any] = {"kind": "HTTPRouteGroup", "name": "web-routes"}
        if names is not None:
            rule["matches"] = list(names)
        out.append(
            traffic_target(f"web-{source}", destination="web", sources=[source], rules=[rule])
        )
    for name, granted, rule in [
        ("ws", world.ws, {"kind": "HTTPRouteGroup", "name": "ws-routes"}),
        ("db", world.tcp, {"kind": "TCPRoute", "name": "all-tcp"}),
        ("dns", world.udp, {"kind": "UDPRoute", "name": "all-udp"}),
    ]:
        if granted:
            out.append(
                traffic_target(
                    f"to-{name}", destination=name, sources=sorted(granted), rules=[rule]
                )
            )
    return out


# -- calls ------------------------------------------------------------------------------------


async def call_everything(http: int, tcp: int, udp: int) -> list[tuple[str, str, str, str]]:
    """Every source calls every service; returns the HTTP calls made (source, method, path,
    front end)."""
    made = []
    for name, ip in ADDRESS_OF.items():
        for i, (method, path) in enumerate((m, p) for m in METHODS for p in PATHS):
            send = h1 if i % 2 else h2c
            role = ROLE[name]
            headers = [("x-role", role)] if role else []
            await send(http, path, headers, source=ip, method=method)
            made.append((name, method, path, send.__name__))
        with contextlib.suppress(aiohttp.ClientError, ConnectionError, TimeoutError):
            connector = aiohttp.TCPConnector(local_addr=(ip, 0))
            async with aiohttp.ClientSession(connector=connector) as client:
                ws = await client.ws_connect(
                    f"http://{LOCAL}:{http}/ws", headers={"Host": "ws.demo.mesh"}
                )
                await ws.close()
        reader, writer = await asyncio.open_connection(LOCAL, tcp, local_addr=(ip, 0))
        try:
            writer.write(name.encode())
            with contextlib.suppress(ConnectionError, TimeoutError):
                await writer.drain()
                await asyncio.wait_for(reader.read(1), 0.3)
        finally:
            writer.close()
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            asyncio.DatagramProtocol, local_addr=(ip, 0), remote_addr=(LOCAL, udp)
        )
        transport.sendto(name.encode())
        transport.close()
    await asyncio.sleep(0.3)  # let the last flows and datagrams arrive
    return made


async def run(world: World) -> None:
    http, tcp, udp = free_range(1), free_range(4), free_range(4)
    seen = Seen()
    async with backends(seen) as targets:
        config = build(docs(world, targets), mesh_settings(http=http, tcp=tcp, udp=udp, acl=True))
        async with running_proxy(config):
            made = await call_everything(http, tcp, udp)
    name_of = {ip: name for name, ip in ADDRESS_OF.items()}
    reached = sorted((name_of[ip], method, path) for ip, method, path in seen.http)
    expected = sorted(
        (name, method, path)
        for name, method, path, _ in made
        if world.may("web", name, method, path)
    )
    assert reached == expected
    assert sorted(name_of[ip] for ip in seen.ws) == sorted(world.ws)
    assert sorted(seen.tcp) == sorted(world.tcp)
    assert sorted(seen.udp) == sorted(world.udp)


@given(worlds())
@settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    derandomize=True,
)
def test_no_ungranted_request_or_flow_ever_reaches_a_backend(world: World) -> None:
    asyncio.run(run(world))
