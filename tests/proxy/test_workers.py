"""``--workers N``: several processes serve the same listeners; the admin port adds them up.

Run as an operator runs it (``python -m mesh.proxy --workers 2``): many connections are
spread over both workers, ``/metrics`` counts every request once, ``/readyz`` waits for every
worker, a worker that dies is started again with the current config, SIGTERM stops them all.
The arithmetic (rate limits divided up, metrics added up) is checked directly.
"""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import aiohttp
import msgspec

from mesh.core.policies import CircuitBreaker, CircuitBreakerSpec, CircuitState
from mesh.proxy.metrics import Metrics, render_merged
from mesh.proxy.proxy import share_rate_limits
from tests.proxy.harness import (
    LOCAL,
    backends,
    build,
    endpoints,
    free_range,
    metric_value,
    service,
    session,
    settings,
    url,
)
from tests.proxy.test_process import proxy_process

HOST = {"Host": "web.demo.mesh"}


async def admin_json(client: aiohttp.ClientSession, admin: int) -> dict[str, object]:
    async with client.get(f"http://{LOCAL}:{admin}/config") as resp:
        data: dict[str, object] = await resp.json()
        return data


def pids(summary: dict[str, object]) -> dict[int, int]:
    workers = summary["workers"]
    assert isinstance(workers, list)
    return {w["worker"]: w.get("pid", 0) for w in workers}


async def test_two_workers_share_the_listeners_and_the_admin_port(tmp_path: Path) -> None:
    http = free_range(1)
    async with backends("127.0.0.2") as targets:
        config = build([service("web"), *endpoints("web", targets)], settings(http=http))
        async with proxy_process(config, tmp_path, "--workers", "2") as (process, admin, _):
            statuses = []
            for _ in range(40):  # a connection each: the kernel spreads them over the workers
                async with session(connector=aiohttp.TCPConnector(force_close=True)) as client:
                    for _ in range(3):
                        async with client.get(url(http, "/hello"), headers=HOST) as resp:
                            statuses.append(resp.status)
            assert statuses == [200] * 120
            async with session() as client:
                async with client.get(f"http://{LOCAL}:{admin}/readyz") as resp:
                    assert resp.status == 200
                async with client.get(f"http://{LOCAL}:{admin}/metrics") as resp:
                    text = await resp.text()
                summary = await admin_json(client, admin)
            assert metric_value(text, "simmesh_proxy_http_requests_total", code="200") == 120
            workers = summary["workers"]
            assert isinstance(workers, list) and len(workers) == 2
            assert all(w["version"] == config.version and w["requests"] > 0 for w in workers)
            assert sum(w["requests"] for w in workers) == 120
            children = [w["pid"] for w in workers if w["worker"] != 0]
            process.send_signal(signal.SIGTERM)
            assert await asyncio.to_thread(process.wait, 20) == 0
        for pid in children:
            assert not Path(f"/proc/{pid}").exists() or _zombie(pid)


def _zombie(pid: int) -> bool:
    return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1].startswith("Z")


async def test_a_worker_that_dies_is_started_again_with_the_config(tmp_path: Path) -> None:
    http = free_range(1)
    async with backends("127.0.0.2") as targets:
        config = build([service("web"), *endpoints("web", targets)], settings(http=http))
        async with (
            proxy_process(config, tmp_path, "--workers", "2") as (process, admin, _),
            session() as c,
        ):
            before = pids(await admin_json(c, admin))[1]
            os.kill(before, signal.SIGKILL)
            for _ in range(100):
                summary = await admin_json(c, admin)
                workers = summary["workers"]
                assert isinstance(workers, list)
                restarted, version = workers[1].get("pid"), workers[1].get("version")
                if restarted not in (None, before) and version == config.version:
                    break
                await asyncio.sleep(0.1)
            else:
                raise AssertionError("the worker was not started again")
            async with c.get(f"http://{LOCAL}:{admin}/readyz") as resp:
                assert resp.status == 200
            for _ in range(20):
                async with c.get(url(http, "/again"), headers=HOST) as resp:
                    assert resp.status == 200
            process.send_signal(signal.SIGTERM)
            assert await asyncio.to_thread(process.wait, 20) == 0
        assert not Path(f"/proc/{restarted}").exists() or _zombie(restarted)


def test_rate_limits_are_divided_among_workers() -> None:
    http = free_range(1)
    docs = [
        service(
            "web",
            annotations={"simmesh.io/ratelimit-average": "10", "simmesh.io/ratelimit-burst": "5"},
        ),
        *endpoints("web", [("127.0.0.2", 8080)]),
        service("api"),
        *endpoints("api", [("127.0.0.2", 8081)]),
    ]
    config = build(docs, settings(http=http))
    assert share_rate_limits(config, 1) is config
    shared = share_rate_limits(config, 3)
    limits = {r.service: r.policy.rate_limit for r in shared.routes.values()}
    web = limits["demo/web"]
    assert web is not None and abs(web.average - 10 / 3) < 1e-9 and web.burst == 2
    assert limits["demo/api"] is None
    assert shared.version == config.version
    tiny = share_rate_limits(msgspec.structs.replace(config), 100)
    web = {r.service: r.policy.rate_limit for r in tiny.routes.values()}["demo/web"]
    assert web is not None and web.burst == 1


def test_metrics_of_workers_add_up() -> None:
    spec = CircuitBreakerSpec(expression="ConsecutiveFailures > 1", any_of=())
    closed, tripped = CircuitBreaker(spec), CircuitBreaker(spec)
    tripped.state = CircuitState.OPEN
    tripped.opens = 2
    exports = []
    for breaker, requests in ((closed, 3), (tripped, 4)):
        live = {"version": "v1", "applied_at": 1.0, "breakers": {("demo/web", "e1"): breaker}}
        metrics = Metrics(lambda live=live: live)  # type: ignore[misc]
        for _ in range(requests):
            metrics.request("demo/web", 200, "GET", 0.002)
        metrics.opened("http")
        exports.append(metrics.export(live))
    text = render_merged(exports).decode()
    assert metric_value(text, "simmesh_proxy_http_requests_total", code="200") == 7
    assert metric_value(text, "simmesh_proxy_http_request_duration_seconds_count") == 7
    assert metric_value(text, "simmesh_proxy_active_connections", protocol="http") == 2
    assert metric_value(text, "simmesh_proxy_circuit_state", endpoint="e1") == 1  # open wins
    assert metric_value(text, "simmesh_proxy_config_info", version="v1") == 1
