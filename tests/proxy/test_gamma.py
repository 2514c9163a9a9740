"""GAMMA routes through the real proxy, on loopback sockets, over HTTP/1.1 and h2c clients.

Each filter is checked on the wire: what the backend received (headers, path, Host), what the
client received (status, headers, Location), and that mirrors never delay or fail the main
request. A GRPCRoute is served over h2c end to end, to h2c backends chosen per stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import TCPConnector, web

from mesh.core.model import Settings
from mesh.proxy.body import Body
from mesh.proxy.upstream import UpstreamRequest
from mesh.proxy.upstream_h2 import H2Upstream
from tests.proxy.harness import (
    LOCAL,
    BytesReader,
    backends,
    build,
    endpoints,
    free_range,
    grpc_call,
    h2_backend,
    metric,
    pod,
    running_proxy,
    serve_app,
    service,
    session,
    settings,
    url,
)

HOST = "web.demo.mesh"
PROTOCOLS = ["http1", "h2c"]
Answer = tuple[int, dict[str, str], bytes]


def route(
    rules: list[dict[str, Any]], *, name: str = "r", ns: str = "demo", **parent: Any
) -> dict[str, Any]:
    ref = {"group": "", "kind": "Service", "name": "web", **parent}
    return {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"parentRefs": [ref], "rules": rules},
    }


def ref(name: str, weight: int | None = None, **extra: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"name": name, "port": 80, **extra}
    if weight is not None:
        out["weight"] = weight
    return out


async def fetch(
    proto: str,
    port: int,
    path: str = "/",
    *,
    method: str = "GET",
    headers: dict[str, str] | None = None,
    data: bytes = b"",
    local: str = LOCAL,
    host: str = HOST,
) -> Answer:
    """One request through the proxy: (status, headers lower-cased, body)."""
    if proto == "http1":
        connector_opts: dict[str, Any] = {"local_addr": (local, 0)} if local != LOCAL else {}
        async with (
            session(connector=TCPConnector(**connector_opts)) as client,
            client.request(
                method,
                url(port, path),
                headers={"Host": host, **(headers or {})},
                data=data or None,
                allow_redirects=False,
            ) as resp,
        ):
            return resp.status, {k.lower(): v for k, v in resp.headers.items()}, await resp.read()
    client = H2Upstream(connect_timeout=2.0)
    try:
        resp = await client.send(
            UpstreamRequest(
                scheme="h2c",
                ip=LOCAL,
                port=port,
                method=method,
                authority=host,
                path=path,
                headers=[(k.lower(), v) for k, v in (headers or {}).items()]
                + ([("content-length", str(len(data)))] if data else []),
                body=Body(BytesReader(data) if data else None, len(data), chunked=False),
                timeout=10.0,
                server_name=None,
            )
        )
        chunks = []
        while chunk := await resp.read():
            chunks.append(chunk)
        answer = resp.status, {k.lower(): v for k, v in resp.header_items()}, b"".join(chunks)
        resp.release()
        return answer
    finally:
        await client.close()


def echoed(answer: Answer) -> dict[str, Any]:
    status, _, payload = answer
    assert status == 200, payload
    return dict(json.loads(payload))


@contextlib.asynccontextmanager
async def mesh(
    rules: list[dict[str, Any]], *extra: dict[str, Any], acl: bool = False, **parent: Any
) -> AsyncIterator[tuple[int, Any]]:
    """Backends web (b0), web-v1 (b1), web-v2 (b2) and a proxy with ``rules`` on web."""
    http = free_range(1)
    async with backends("127.0.0.2", "127.0.0.3", "127.0.0.4") as (web_, v1, v2):
        docs = [service("web"), *endpoints("web", [web_])]
        docs += [service("web-v1"), *endpoints("web-v1", [v1])]
        docs += [service("web-v2"), *endpoints("web-v2", [v2])]
        docs += [route(rules, **parent), *extra]
        config = build(docs, settings(http=http, acl=acl))
        async with running_proxy(config) as proxy:
            yield http, proxy


# -- filters ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("proto", PROTOCOLS)
async def test_request_and_response_header_modifiers(proto: str) -> None:
    request_edits = {
        "set": [{"name": "X-Header-Set", "value": "set-overwrites-values"}],
        "add": [{"name": "X-Header-Add", "value": "add-appends-values"}],
        "remove": ["X-Header-Remove"],
    }
    response_edits = {"set": [{"name": "X-Answer", "value": "edited"}], "remove": ["X-Backend"]}
    rules = [
        {
            "filters": [
                {"type": "RequestHeaderModifier", "requestHeaderModifier": request_edits},
                {"type": "ResponseHeaderModifier", "responseHeaderModifier": response_edits},
            ],
            "backendRefs": [ref("web-v1")],
        }
    ]
    async with mesh(rules) as (port, _):
        sent = {
            "x-header-set": "some-other-value",
            "x-header-add": "some-other-value",
            "x-header-remove": "gone",
        }
        answer = await fetch(proto, port, headers=sent)
        seen = {k.lower(): v for k, v in echoed(answer)["headers"].items()}
        assert seen["x-header-set"] == "set-overwrites-values"
        assert seen["x-header-add"] == "some-other-value,add-appends-values"
        assert "x-header-remove" not in seen
        assert answer[1]["x-answer"] == "edited" and "x-backend" not in answer[1]


@pytest.mark.parametrize("proto", PROTOCOLS)
async def test_backend_level_header_modifier(proto: str) -> None:
    edit = {
        "type": "RequestHeaderModifier",
        "requestHeaderModifier": {"set": [{"name": "X-B", "value": "yes"}]},
    }
    async with mesh([{"backendRefs": [ref("web-v1", filters=[edit])]}]) as (port, _):
        seen = {k.lower(): v for k, v in echoed(await fetch(proto, port))["headers"].items()}
        assert seen["x-b"] == "yes"


@pytest.mark.parametrize("proto", PROTOCOLS)
@pytest.mark.parametrize(
    ("redirect", "path", "status", "location"),
    [
        ({"hostname": "example.org"}, "/a?b=1", 302, "http://example.org/a?b=1"),
        ({"scheme": "https", "statusCode": 301}, "/a", 301, "https://web.demo.mesh/a"),
        ({"port": 8083, "statusCode": 308}, "/a", 308, "http://web.demo.mesh:8083/a"),
    ],
)
async def test_redirects_are_answered_by_the_proxy(
    proto: str, redirect: dict[str, Any], path: str, status: int, location: str
) -> None:
    rules = [{"filters": [{"type": "RequestRedirect", "requestRedirect": redirect}]}]
    async with mesh(rules) as (port, proxy):
        got, headers, _ = await fetch(proto, port, path)
        assert (got, headers["location"], headers["x-simmesh-reason"]) == (
            status,
            location,
            "redirect",
        )
        assert metric(proxy, "simmesh_proxy_denied_total") == 0


@pytest.mark.parametrize("proto", PROTOCOLS)
async def test_url_rewrite_sends_the_new_path_and_host(proto: str) -> None:
    rewrite = {
        "hostname": "rewritten.example",
        "path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/"},
    }
    rules = [
        {
            "matches": [{"path": {"type": "PathPrefix", "value": "/strip"}}],
            "filters": [{"type": "URLRewrite", "urlRewrite": rewrite}],
            "backendRefs": [ref("web-v1")],
        }
    ]
    async with mesh(rules) as (port, _):
        seen = echoed(await fetch(proto, port, "/strip/one/two?q=1"))
        headers = {k.lower(): v for k, v in seen["headers"].items()}
        assert seen["path"] == "/one/two?q=1"
        assert headers["host"] == "rewritten.example"
        assert headers["x-forwarded-host"] == HOST


@pytest.mark.parametrize("proto", PROTOCOLS)
async def test_no_matching_rule_is_404_and_no_backend_is_500(proto: str) -> None:
    rules = [
        {"matches": [{"path": {"type": "Exact", "value": "/ok"}}], "backendRefs": [ref("web-v1")]},
        {"matches": [{"path": {"type": "Exact", "value": "/none"}}]},
    ]
    async with mesh(rules) as (port, _):
        assert echoed(await fetch(proto, port, "/ok"))["backend"] == "b1"
        status, headers, _ = await fetch(proto, port, "/else")
        assert (status, headers["x-simmesh-reason"]) == (404, "no-matching-rule")
        status, headers, _ = await fetch(proto, port, "/none")
        assert (status, headers["x-simmesh-reason"]) == (500, "no-backend")


async def test_weights_choose_per_request() -> None:
    async with mesh([{"backendRefs": [ref("web-v1", 3), ref("web-v2", 1), ref("web", 0)]}]) as (
        port,
        _,
    ):
        seen = [echoed(await fetch("http1", port))["backend"] for _ in range(20)]
        assert {b: seen.count(b) for b in set(seen)} == {"b1": 15, "b2": 5}


@pytest.mark.parametrize("proto", PROTOCOLS)
async def test_a_rule_timeout_answers_504(proto: str) -> None:
    rules = [
        {"backendRefs": [ref("web-v1")], "timeouts": {"request": "2s", "backendRequest": "300ms"}}
    ]
    async with mesh(rules) as (port, _):
        started = time.monotonic()
        status, _, _ = await fetch(proto, port, "/stall?seconds=5")
        assert status == 504 and time.monotonic() - started < 2.0


# -- mirrors -------------------------------------------------------------------------------------


def recorder(seen: list[tuple[str, int]], *, delay: float = 0.0) -> web.Application:
    async def record(request: web.Request) -> web.Response:
        body = await request.read()
        seen.append((request.path_qs, len(body)))
        if delay:
            await asyncio.sleep(delay)
        return web.Response(text="mirror")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", record)
    return app


@pytest.mark.parametrize("proto", PROTOCOLS)
async def test_a_mirror_gets_a_copy_that_never_delays_the_request(proto: str) -> None:
    seen: list[tuple[str, int]] = []
    http = free_range(1)
    mirror = {"type": "RequestMirror", "requestMirror": {"backendRef": ref("shadow")}}
    async with (
        backends("127.0.0.2") as targets,
        serve_app(recorder(seen, delay=3.0), "127.0.0.6") as mirror_port,
    ):
        docs = [service("web"), *endpoints("web", targets)]
        docs += [service("shadow"), *endpoints("shadow", [("127.0.0.6", mirror_port)])]
        docs.append(route([{"filters": [mirror], "backendRefs": [ref("web")]}]))
        async with running_proxy(build(docs, settings(http=http))):
            started = time.monotonic()
            seen_main = echoed(await fetch(proto, http, "/m?x=1", method="POST", data=b"12345"))
            assert seen_main["body"] == 5 and time.monotonic() - started < 2.0
            for _ in range(100):
                if seen:
                    break
                await asyncio.sleep(0.02)
            assert seen == [("/m?x=1", 5)]


async def test_a_broken_mirror_never_fails_the_request_and_is_counted() -> None:
    http = free_range(1)
    closed = free_range(1)  # nothing listens there: every copy's connect is refused
    mirror = {"type": "RequestMirror", "requestMirror": {"backendRef": ref("shadow")}}
    async with backends("127.0.0.2") as targets:
        docs = [service("web"), *endpoints("web", targets)]
        docs += [service("shadow"), *endpoints("shadow", [(LOCAL, closed)])]
        docs.append(route([{"filters": [mirror], "backendRefs": [ref("web")]}]))
        async with running_proxy(build(docs, settings(http=http))) as proxy:
            for _ in range(3):
                assert echoed(await fetch("http1", http))["backend"] == "b0"
            for _ in range(100):
                if metric(proxy, "simmesh_proxy_mirrors_total", result="failed") >= 3:
                    break
                await asyncio.sleep(0.05)
            assert (
                metric(proxy, "simmesh_proxy_mirrors_total", service="demo/web", result="failed")
                == 3
            )


async def test_mirrors_in_flight_are_bounded() -> None:
    seen: list[tuple[str, int]] = []
    http = free_range(1)
    mirror = {"type": "RequestMirror", "requestMirror": {"backendRef": ref("shadow")}}
    async with (
        backends("127.0.0.2") as targets,
        serve_app(recorder(seen, delay=2.0), "127.0.0.6") as mirror_port,
    ):
        docs = [service("web"), *endpoints("web", targets)]
        docs += [service("shadow"), *endpoints("shadow", [("127.0.0.6", mirror_port)])]
        docs.append(route([{"filters": [mirror], "backendRefs": [ref("web")]}]))
        async with running_proxy(build(docs, settings(http=http)), max_mirrors=2) as proxy:
            for _ in range(5):
                assert echoed(await fetch("http1", http))["backend"] == "b0"
            assert metric(proxy, "simmesh_proxy_mirrors_total", result="dropped") == 3


# -- consumers -------------------------------------------------------------------------------


def consumer_route(**rule: Any) -> dict[str, Any]:
    """A consumer route of namespace caller on demo/web, sending to web-v2."""
    rules = [{"backendRefs": [ref("web-v2", namespace="demo")], **rule}]
    return route(rules, name="mine", ns="caller", namespace="demo")


# a caller in the consumer route's namespace (127.0.0.7), one in the Service's (127.0.0.8)
CALLERS = [
    pod("client", "127.0.0.7", "client", namespace="caller"),
    pod("local", "127.0.0.8", "local"),
]


async def test_a_consumer_route_governs_its_namespaces_callers_only() -> None:
    consumer = consumer_route()
    async with mesh([{"backendRefs": [ref("web-v1")]}], consumer, *CALLERS) as (port, _):
        assert echoed(await fetch("http1", port, local="127.0.0.7"))["backend"] == "b2"
        assert echoed(await fetch("http1", port, local="127.0.0.8"))["backend"] == "b1"
        assert echoed(await fetch("http1", port))["backend"] == "b1"  # no identity: producer


# -- GRPCRoute over h2c --------------------------------------------------------------------------


async def test_grpc_route_over_h2c_to_h2c_backends_per_stream() -> None:
    http = free_range(1)
    async with h2_backend("127.0.0.2", "one") as first, h2_backend("127.0.0.3", "two") as second:
        docs = [service("echo"), service("echo-v1"), service("echo-v2")]
        docs += [*endpoints("echo-v1", [first]), *endpoints("echo-v2", [second])]
        docs.append(
            {
                "apiVersion": "gateway.networking.k8s.io/v1",
                "kind": "GRPCRoute",
                "metadata": {"name": "g", "namespace": "demo"},
                "spec": {
                    "parentRefs": [{"group": "", "kind": "Service", "name": "echo", "port": 80}],
                    "rules": [
                        {
                            "matches": [{"method": {"service": "grpc.testing.TestService"}}],
                            "filters": [
                                {
                                    "type": "RequestHeaderModifier",
                                    "requestHeaderModifier": {
                                        "set": [{"name": "x-mesh", "value": "1"}]
                                    },
                                }
                            ],
                            "backendRefs": [
                                ref("echo-v1", 1),
                                ref("echo-v2", 1),
                                ref("echo-v3", 0),
                            ],
                        }
                    ],
                },
            }
        )
        config = build_allowing(docs, settings(http=http))
        async with running_proxy(config):
            client = H2Upstream(connect_timeout=2.0)
            try:
                answers = []
                for _ in range(4):  # one h2c connection, a choice per stream
                    answers.append(await grpc_call(client, http, "echo.demo.mesh"))
                assert [status for status, _ in answers] == [200] * 4
                messages = sorted(trailers["grpc-message"] for _, trailers in answers)
                assert messages == ["one ok", "one ok", "two ok", "two ok"]
                status, _ = await grpc_call(client, http, "echo.demo.mesh", "/other.Service/Call")
                assert status == 404  # gRPC clients read it as UNIMPLEMENTED
            finally:
                await client.close()


def build_allowing(docs: list[dict[str, Any]], config_settings: Settings) -> Any:
    """A config whose only errors are the ones the test means (a weight-0 missing backend)."""
    from mesh.core.config import build_config
    from mesh.core.parse import parse_objects
    from mesh.core.topology import build_topology

    config = build_config(build_topology(parse_objects(docs), config_settings), config_settings)
    assert [e.message.split(";")[0] for e in config.errors] == [
        "Service demo/echo-v3 not found or not meshed"
    ]
    return config
