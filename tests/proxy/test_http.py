"""HTTP/1.1 forwarding through the proxy: headers, tracing and the core's policies."""

from __future__ import annotations

import asyncio

import aiohttp

from mesh.proxy.tracing import parse_traceparent
from tests.proxy.harness import (
    backends,
    build,
    endpoints,
    free_port,
    free_range,
    metric,
    running_proxy,
    service,
    session,
    settings,
    url,
)

HOST = {"Host": "web.demo.mesh"}


async def test_forwards_by_host_and_balances_round_robin() -> None:
    http = free_range(1)
    async with backends("127.0.0.2", "127.0.0.3") as targets:
        docs = [service("web", cluster_ip="10.96.0.7"), *endpoints("web", targets)]
        config = build(docs, settings(http=http))
        async with running_proxy(config), session() as client:
            seen = []
            for host in (
                "web.demo.mesh",
                "WEB.demo.mesh.",
                "web.demo.svc.cluster.local:80",
                "10.96.0.7",
            ):
                async with client.get(url(http, "/a/b?q=1"), headers={"Host": host}) as resp:
                    assert resp.status == 200
                    data = await resp.json()
                    assert data["path"] == "/a/b?q=1"
                    seen.append(data["backend"])
            assert seen == ["b0", "b1", "b0", "b1"]


async def test_unknown_host_is_404_with_reason() -> None:
    http = free_range(1)
    async with backends("127.0.0.2") as targets:
        config = build([service("web"), *endpoints("web", targets)], settings(http=http))
        async with (
            running_proxy(config),
            session() as client,
            client.get(url(http), headers={"Host": "nope.demo.mesh"}) as resp,
        ):
            assert resp.status == 404
            assert resp.headers["X-Simmesh-Reason"] == "unknown-host"
            assert "unknown-host" in await resp.text()


async def test_forwarding_headers_and_hop_by_hop() -> None:
    http = free_range(1)
    async with backends("127.0.0.2") as targets:
        config = build([service("web"), *endpoints("web", targets)], settings(http=http))
        async with running_proxy(config), session() as client:
            headers = {
                **HOST,
                "Connection": "keep-alive, X-Secret",
                "X-Secret": "hop",
                "Keep-Alive": "timeout=5",
                "X-Forwarded-For": "10.1.1.1",
                "X-Forwarded-Proto": "https",
                "X-Custom": "kept",
            }
            async with client.get(url(http, "/echo"), headers=headers) as resp:
                data = await resp.json()
        seen = {k.lower(): v for k, v in data["headers"].items()}
        assert "x-secret" not in seen and "keep-alive" not in seen
        assert seen["x-custom"] == "kept"
        assert seen["x-forwarded-for"] == "10.1.1.1, 127.0.0.1"
        assert seen["x-forwarded-proto"] == "http"
        assert seen["x-forwarded-host"] == "web.demo.mesh"
        assert seen["host"] == "web.demo.mesh"


async def test_traceparent_kept_or_started() -> None:
    http = free_range(1)
    async with backends("127.0.0.2") as targets:
        config = build([service("web"), *endpoints("web", targets)], settings(http=http))
        async with running_proxy(config), session() as client:
            incoming = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
            async with client.get(url(http), headers={**HOST, "traceparent": incoming}) as resp:
                kept = parse_traceparent((await resp.json())["headers"]["traceparent"])
            async with client.get(url(http), headers=HOST) as resp:
                fresh = parse_traceparent((await resp.json())["headers"]["traceparent"])
    assert kept is not None and fresh is not None
    assert kept[0] == "0af7651916cd43dd8448eb211c80319c"
    assert kept[1] != "b7ad6b7169203331"
    assert kept[2] == "01"
    assert fresh[0] != kept[0]


async def test_response_headers_statuses_and_head() -> None:
    http = free_range(1)
    async with backends("127.0.0.2") as targets:
        config = build([service("web"), *endpoints("web", targets)], settings(http=http))
        async with running_proxy(config), session() as client:
            async with client.get(url(http, "/status/418"), headers=HOST) as resp:
                assert resp.status == 418
                assert resp.headers["X-Backend"] == "b0"
            async with client.head(url(http, "/bytes/5000"), headers=HOST) as resp:
                assert resp.status == 200
                assert resp.headers["Content-Length"] == "5000"
                assert await resp.read() == b""
            async with client.get(url(http, "/bytes/300000"), headers=HOST) as resp:
                assert len(await resp.read()) == 300000


async def test_post_bodies_buffered_chunked_and_expect_continue() -> None:
    http = free_range(1)
    async with backends("127.0.0.2") as targets:
        config = build([service("web"), *endpoints("web", targets)], settings(http=http))
        async with running_proxy(config), session() as client:
            async with client.post(url(http, "/upload"), data=b"a" * 1000, headers=HOST) as resp:
                assert (await resp.json())["received"] == 1000

            async def chunks():  # type: ignore[no-untyped-def]
                for _ in range(10):
                    yield b"c" * 10000

            async with client.post(url(http, "/upload"), data=chunks(), headers=HOST) as resp:
                assert (await resp.json())["received"] == 100000
            async with client.put(
                url(http, "/upload"), data=b"e" * 200000, headers=HOST, expect100=True
            ) as resp:
                assert (await resp.json())["received"] == 200000


async def test_upstream_refused_is_502() -> None:
    http = free_range(1)
    dead = free_port()
    config = build([service("web"), *endpoints("web", [("127.0.0.2", dead)])], settings(http=http))
    async with (
        running_proxy(config),
        session() as client,
        client.get(url(http), headers=HOST) as resp,
    ):
        assert resp.status == 502
        assert resp.headers["X-Simmesh-Reason"] == "upstream-connect-failed"


async def test_retry_moves_to_another_endpoint() -> None:
    http = free_range(1)
    dead = free_port()
    async with backends("127.0.0.2") as targets:
        docs = [
            service("web", annotations={"simmesh.io/retry-attempts": "2"}),
            *endpoints("web", [("127.0.0.3", dead), *targets]),
        ]
        config = build(docs, settings(http=http))
        async with running_proxy(config) as proxy, session() as client:
            for _ in range(6):
                async with client.get(url(http), headers=HOST) as resp:
                    assert resp.status == 200
            retries = metric(proxy, "simmesh_proxy_retries_total", service="demo/web")
            failures = metric(proxy, "simmesh_proxy_upstream_failures_total", failure="connect")
    assert retries == failures >= 3.0  # every refused attempt was retried elsewhere


async def test_timeout_is_504() -> None:
    http = free_range(1)
    async with backends("127.0.0.2") as targets:
        docs = [
            service("web", annotations={"simmesh.io/timeout": "200ms"}),
            *endpoints("web", targets),
        ]
        config = build(docs, settings(http=http))
        async with running_proxy(config), session() as client:
            async with client.get(url(http, "/stall?seconds=5"), headers=HOST) as resp:
                assert resp.status == 504
                assert resp.headers["X-Simmesh-Reason"] == "upstream-timeout"
            async with client.get(url(http, "/fast"), headers=HOST) as resp:
                assert resp.status == 200


async def test_rate_limit_is_429_with_retry_after() -> None:
    http = free_range(1)
    async with backends("127.0.0.2") as targets:
        annotations = {"simmesh.io/ratelimit-average": "1", "simmesh.io/ratelimit-burst": "3"}
        docs = [service("web", annotations=annotations), *endpoints("web", targets)]
        config = build(docs, settings(http=http))
        async with running_proxy(config) as proxy, session() as client:
            codes = []
            for _ in range(5):
                async with client.get(url(http), headers=HOST) as resp:
                    codes.append(resp.status)
                    if resp.status == 429:
                        assert resp.headers["X-Simmesh-Reason"] == "rate-limited"
                        assert int(resp.headers["Retry-After"]) >= 1
            limited = metric(proxy, "simmesh_proxy_rate_limited_total", service="demo/web")
    assert codes == [200, 200, 200, 429, 429]
    assert limited == 2.0


async def test_circuit_breaker_opens_then_503() -> None:
    http = free_range(1)
    async with backends("127.0.0.2") as targets:
        annotations = {"simmesh.io/circuit-breaker": "ConsecutiveFailures() >= 2"}
        docs = [service("web", annotations=annotations), *endpoints("web", targets)]
        config = build(docs, settings(http=http))
        async with running_proxy(config) as proxy, session() as client:
            codes = []
            for _ in range(4):
                async with client.get(url(http, "/status/500"), headers=HOST) as resp:
                    codes.append(resp.status)
                    reason = resp.headers.get("X-Simmesh-Reason")
            state = metric(proxy, "simmesh_proxy_circuit_state", service="demo/web")
            opens = metric(proxy, "simmesh_proxy_circuit_opens_total", service="demo/web")
    assert codes == [500, 500, 503, 503]
    assert reason == "circuit-open"
    assert state == 1.0
    assert opens == 1.0


async def test_keepalive_connections_are_pooled() -> None:
    http = free_range(1)
    async with backends("127.0.0.2") as targets:
        config = build([service("web"), *endpoints("web", targets)], settings(http=http))
        async with running_proxy(config), session() as client:
            ports = set()
            for _ in range(20):
                async with client.get(url(http), headers=HOST) as resp:
                    ports.add((await resp.json())["peer"])
            results = await asyncio.gather(
                *(client.get(url(http), headers=HOST) for _ in range(10))
            )
            for resp in results:
                assert resp.status == 200
                resp.release()
    assert ports == {"127.0.0.1"}


async def test_websocket_passes_through() -> None:
    http = free_range(1)
    async with backends("127.0.0.2") as targets:
        config = build([service("web"), *endpoints("web", targets)], settings(http=http))
        async with running_proxy(config), session() as client:
            async with client.ws_connect(url(http, "/ws"), headers=HOST) as ws:
                await ws.send_str("hello")
                assert (await ws.receive(timeout=5)).data == "b0:hello"
                await ws.send_bytes(b"\x00" * 200000)
                message = await ws.receive(timeout=5)
                assert message.type == aiohttp.WSMsgType.BINARY and len(message.data) == 200000
                await ws.close()
            async with client.get(url(http), headers=HOST) as resp:
                assert resp.status == 200
