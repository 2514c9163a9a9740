"""The admin port (health, readiness, metrics, config), the access log and draining."""

from __future__ import annotations

import asyncio
import io
import json

from prometheus_client.parser import text_string_to_metric_families

from mesh import __version__
from mesh.build import describe
from tests.proxy.harness import (
    LOCAL,
    backends,
    build,
    endpoints,
    free_range,
    running_proxy,
    service,
    session,
    settings,
    url,
)

HOST = {"Host": "web.demo.mesh"}


async def test_health_readiness_and_config() -> None:
    http = free_range(1)
    async with backends("127.0.0.2") as targets:
        config = build([service("web"), *endpoints("web", targets)], settings(http=http))
        async with running_proxy() as proxy, session() as client:
            admin = f"http://{LOCAL}:{proxy.admin_port}"
            async with client.get(f"{admin}/healthz") as resp:
                assert resp.status == 200
            async with client.get(f"{admin}/readyz") as resp:
                assert resp.status == 503
            await proxy.apply(config)
            async with client.get(f"{admin}/readyz") as resp:
                assert resp.status == 200
            async with client.get(f"{admin}/config") as resp:
                summary = await resp.json()
            assert summary["version"] == config.version
            assert summary["listeners"] == [{"port": http, "protocol": "http", "open": True}]
            assert summary["services"] == 1 and summary["endpoints"] == 1


async def test_metrics_cover_requests_connections_and_policies() -> None:
    http = free_range(1)
    async with backends("127.0.0.2") as targets:
        annotations = {
            "simmesh.io/ratelimit-average": "1",
            "simmesh.io/ratelimit-burst": "5",
            "simmesh.io/circuit-breaker": "ConsecutiveFailures() >= 50",
            "simmesh.io/retry-attempts": "1",
        }
        config = build(
            [service("web", annotations=annotations), *endpoints("web", targets)],
            settings(http=http),
        )
        async with running_proxy(config) as proxy, session() as client:
            for path in ("/a", "/status/503", "/b"):
                async with client.post(url(http, path), data=b"x" * 10, headers=HOST) as resp:
                    await resp.read()
            for _ in range(5):
                async with client.get(url(http), headers=HOST) as resp:
                    await resp.read()
            async with client.get(url(http), headers={"Host": "nope.demo.mesh"}) as resp:
                await resp.read()
            async with client.get(f"http://{LOCAL}:{proxy.admin_port}/metrics") as resp:
                assert resp.headers["Content-Type"].startswith("text/plain")
                text = await resp.text()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    names = {name for name, _ in samples}
    for name in (
        "simmesh_proxy_http_requests_total",
        "simmesh_proxy_http_request_duration_seconds_bucket",
        "simmesh_proxy_upstream_response_seconds_count",
        "simmesh_proxy_active_connections",
        "simmesh_proxy_bytes_total",
        "simmesh_proxy_rate_limited_total",
        "simmesh_proxy_denied_total",
        "simmesh_proxy_circuit_state",
        "simmesh_proxy_config_info",
        "simmesh_proxy_config_reloads_total",
    ):
        assert name in names, name
    key = (
        "simmesh_proxy_http_requests_total",
        (("code", "200"), ("method", "POST"), ("service", "demo/web")),
    )
    assert samples[key] == 2
    (info,) = [labels for name, labels in samples if name == "simmesh_proxy_build_info"]
    assert dict(info) == {"version": __version__, "build": describe()}
    assert (
        samples[
            (
                "simmesh_proxy_http_requests_total",
                (("code", "503"), ("method", "POST"), ("service", "demo/web")),
            )
        ]
        == 1
    )
    assert (
        samples[
            ("simmesh_proxy_rate_limited_total", (("protocol", "http"), ("service", "demo/web")))
        ]
        >= 1
    )
    assert (
        samples[
            (
                "simmesh_proxy_denied_total",
                (("protocol", "http"), ("reason", "unknown-host"), ("service", "-")),
            )
        ]
        == 1
    )
    assert samples[("simmesh_proxy_config_info", (("version", config.version),))] == 1
    assert (
        samples[
            (
                "simmesh_proxy_bytes_total",
                (("direction", "rx"), ("protocol", "http"), ("service", "demo/web")),
            )
        ]
        == 30
    )


async def test_access_log_lines_are_json() -> None:
    http = free_range(1)
    stream = io.StringIO()
    async with backends("127.0.0.2") as targets:
        config = build([service("web"), *endpoints("web", targets)], settings(http=http))
        async with running_proxy(config, access_log=True, access_stream=stream), session() as c:
            async with c.get(url(http, "/logged?q=1"), headers=HOST) as resp:
                await resp.read()
            async with c.get(url(http), headers={"Host": "nope.demo.mesh"}) as resp:
                await resp.read()
    records = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [r["status"] for r in records] == [200, 404]
    first = records[0]
    assert first["path"] == "/logged?q=1" and first["service"] == "demo/web"
    assert first["endpoint"] == f"{targets[0][0]}:{targets[0][1]}"
    assert len(first["trace_id"]) == 32 and first["config"] == config.version
    assert records[1]["reason"] == "unknown-host"


async def test_drain_finishes_inflight_and_refuses_new() -> None:
    http = free_range(1)
    async with backends("127.0.0.2") as targets:
        config = build([service("web"), *endpoints("web", targets)], settings(http=http))
        async with running_proxy(config) as proxy, session() as client:
            slow = asyncio.create_task(client.get(url(http, "/stall?seconds=0.5"), headers=HOST))
            await asyncio.sleep(0.2)
            drained = asyncio.create_task(proxy.drain(5.0))
            await asyncio.sleep(0.05)
            assert not proxy.ready
            try:
                await asyncio.open_connection(LOCAL, http)
                raise AssertionError("a draining proxy accepted a connection")
            except ConnectionRefusedError:
                pass
            resp = await slow
            assert resp.status == 200 and resp.headers.get("Connection") == "close"
            resp.release()
            assert await drained is True
