"""GAMMA capture listeners through the real proxy, on loopback sockets (issue 16).

A capture listener stands for one Service port (the node agent DNATs that Service's
ClusterIP:port to it): what arrives there is routed as a request to that Service port, over
HTTP/1.1 and h2c, whatever its Host or :authority says (MeshFrontendHostname sends another
Service's name on purpose). Routes attached but no rule matching: 404; no route for the caller:
plain forwarding to the Service. The caller's namespace comes from its source IP, as on the
shared listeners. The listeners open and close with the config.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import pytest

from mesh.core.model import PortRange
from mesh.core.schema import MeshConfig
from mesh.proxy.proxy import Proxy
from mesh.proxy.upstream_h2 import H2Upstream
from tests.proxy.harness import (
    LOCAL,
    backends,
    build,
    endpoints,
    free_range,
    grpc_call,
    h2_backend,
    running_proxy,
    service,
    settings,
)
from tests.proxy.test_gamma import CALLERS, PROTOCOLS, consumer_route, echoed, fetch, ref, route

SET_HEADER = {
    "type": "ResponseHeaderModifier",
    "responseHeaderModifier": {"set": [{"name": "X-Header-Set", "value": "set"}]},
}


def capture_port(config: MeshConfig, key: str) -> int:
    capture = config.settings.capture
    assert capture is not None
    return next(c.port for c in capture.listeners if c.route == key)


class Mesh:
    def __init__(self, http: int, objects: list[dict[str, Any]]) -> None:
        self.http = http
        self.objects = objects
        self.settings = replace(
            settings(http=http), capture=True, capture_ports=PortRange(free_range(4), 4)
        )

    def config(self, *docs: dict[str, Any]) -> MeshConfig:
        return build([*self.objects, *docs], self.settings)


@contextlib.asynccontextmanager
async def mesh(*docs: dict[str, Any]) -> AsyncIterator[tuple[Mesh, MeshConfig, Proxy]]:
    """Backends web (b0), web-v1 (b1), web-v2 (b2), each with a ClusterIP, and a proxy with
    capture on and ``docs`` (routes, pods) applied."""
    async with backends("127.0.0.2", "127.0.0.3", "127.0.0.4") as (web_, v1, v2):
        objects: list[dict[str, Any]] = []
        for i, (name, target) in enumerate((("web", web_), ("web-v1", v1), ("web-v2", v2))):
            objects += [service(name, cluster_ip=f"10.96.0.{10 + i}"), *endpoints(name, [target])]
        world = Mesh(free_range(1), objects)
        config = world.config(*docs)
        async with running_proxy(config) as proxy:
            yield world, config, proxy


@pytest.mark.parametrize("proto", PROTOCOLS)
async def test_a_capture_listener_routes_by_its_service_not_by_host(proto: str) -> None:
    rules = [
        {
            "matches": [{"path": {"type": "Exact", "value": "/v2"}}],
            "filters": [SET_HEADER],
            "backendRefs": [ref("web-v2")],
        }
    ]
    async with mesh(route(rules, port=80)) as (world, config, _):
        port = capture_port(config, "demo/web:80")
        for host in ("web", "web-v1", "web-v1.demo.svc.cluster.local", "10.96.0.11:80"):
            status, headers, body = await fetch(proto, port, "/v2", host=host)
            assert status == 200, (host, body)
            assert echoed((status, headers, body))["backend"] == "b2", host
            assert headers.get("x-header-set") == "set", host
            missing = await fetch(proto, port, "/other", host=host)
            assert missing[0] == 404, host  # a route, no matching rule
        # the shared listener still routes by Host: web-v1 has no route there
        status, headers, body = await fetch(proto, world.http, "/v2", host="web-v1.demo.mesh")
        assert echoed((status, headers, body))["backend"] == "b1"
        assert "x-header-set" not in headers


async def test_a_consumer_route_applies_to_its_namespace_only_on_the_capture_listener() -> None:
    consumer = consumer_route(filters=[SET_HEADER])
    async with mesh(consumer, *CALLERS) as (_, config, _proxy):
        port = capture_port(config, "demo/web:80")
        status, headers, body = await fetch("http1", port, host="web.demo", local="127.0.0.7")
        assert echoed((status, headers, body))["backend"] == "b2"
        assert headers.get("x-header-set") == "set"
        for local in ("127.0.0.8", LOCAL):  # another namespace, no identity: the Service itself
            status, headers, body = await fetch("http1", port, host="web.demo", local=local)
            assert echoed((status, headers, body))["backend"] == "b0"
            assert "x-header-set" not in headers


async def test_capture_listeners_open_and_close_with_the_config() -> None:
    rules = [{"backendRefs": [ref("web-v2")]}]
    async with mesh(route(rules, port=80)) as (world, config, proxy):
        port = capture_port(config, "demo/web:80")
        assert (port, "http") in proxy.listeners.open
        assert echoed(await fetch("http1", port, host="x"))["backend"] == "b2"
        await proxy.apply(world.config())  # the route is gone: so is its capture listener
        assert (port, "http") not in proxy.listeners.open
        with pytest.raises(OSError):
            await fetch("http1", port, host="x")


async def test_a_grpc_route_on_a_capture_listener_chooses_per_stream_over_one_connection() -> None:
    """MeshGRPCRouteWeight through capture: `grpc://echo:7070` sends :authority `echo:7070`
    (a short name the shared listeners could not route), all calls on one h2c connection."""
    grpc_route = {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "GRPCRoute",
        "metadata": {"name": "g", "namespace": "demo"},
        "spec": {
            "parentRefs": [{"group": "", "kind": "Service", "name": "echo", "port": 7070}],
            "rules": [{"backendRefs": [ref("one", 1), ref("two", 1)]}],
        },
    }
    async with h2_backend("127.0.0.2", "one") as first, h2_backend("127.0.0.3", "two") as second:
        docs = [service("echo", ports=[("grpc", 7070)], cluster_ip="10.96.0.20")]
        docs += [*endpoints("echo", [first], port_name="grpc")]
        for name, target in (("one", first), ("two", second)):
            docs += [service(name, cluster_ip=None), *endpoints(name, [target])]
        world = Mesh(free_range(1), docs)
        config = world.config(grpc_route)
        port = capture_port(config, "demo/echo:7070")
        async with running_proxy(config):
            client = H2Upstream(connect_timeout=2.0)
            try:
                messages = []
                for _ in range(4):  # one h2c connection, a choice per stream
                    status, trailers = await grpc_call(client, port, "echo:7070")
                    assert status == 200
                    messages.append(trailers["grpc-message"])
                assert sorted(messages) == ["one ok", "one ok", "two ok", "two ok"]
            finally:
                await client.close()
