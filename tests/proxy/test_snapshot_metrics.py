"""The metrics `simmesh snapshot` reads: calls per caller identity, the path mix and per-backend
response times, each bounded in cardinality (mesh/proxy/metrics.py, docs/proxy.md)."""

from __future__ import annotations

import asyncio

import aiohttp

from mesh.proxy.metrics import (
    FINE_BUCKETS,
    MAX_CALLERS,
    MAX_PATHS,
    MAX_ROWS,
    Metrics,
    render_merged,
)
from tests.proxy.harness import (
    LOCAL,
    backends,
    build,
    endpoints,
    free_range,
    metric,
    metric_value,
    pod,
    port_route,
    route_group,
    running_proxy,
    service,
    session,
    settings,
    tcp_workload,
    traffic_target,
    url,
)

CALLER = "127.0.0.5"


async def test_calls_carry_the_callers_identity_path_mix_and_backend_times() -> None:
    http, tcp = free_range(1), free_range(4)
    async with backends("127.0.0.2") as targets, tcp_workload("127.0.0.3") as db:
        docs = [
            service("web"),
            *endpoints("web", targets, pods=["web-0"]),
            pod("web-0", targets[0][0], "web"),
            service("db", ports=[("pg", 5432)], annotations={"simmesh.io/traffic-type": "tcp"}),
            *endpoints("db", [db], port_name="pg", pods=["db-0"]),
            pod("db-0", db[0], "db"),
            pod("client", CALLER, "frontend"),
            route_group("all", [{"name": "all", "pathRegex": ".*", "methods": ["*"]}]),
            port_route("TCPRoute", "pg"),
            traffic_target(
                "to-web",
                destination="web",
                sources=["frontend"],
                rules=[{"kind": "HTTPRouteGroup", "name": "all"}],
            ),
            traffic_target(
                "to-db",
                destination="db",
                sources=["frontend"],
                rules=[{"kind": "TCPRoute", "name": "pg"}],
            ),
        ]
        # ACL mode: only then does the config carry the pods' identities
        config = build(docs, settings(http=http, tcp=tcp, acl=True))
        async with running_proxy(config) as proxy:
            connector = aiohttp.TCPConnector(local_addr=(CALLER, 0))
            async with session(connector=connector) as client:
                for path in ("/a?x=1", "/a?x=2", "/status/503"):
                    async with client.get(url(http, path), headers={"Host": "web.demo.mesh"}) as r:
                        await r.read()
            # from 127.0.0.1: no pod, no identity: denied
            async with (
                session() as client,
                client.get(url(http, "/b"), headers={"Host": "web.demo.mesh"}) as r,
            ):
                await r.read()
            reader, writer = await asyncio.open_connection(LOCAL, tcp, local_addr=(CALLER, 0))
            writer.write(b"ping")
            await asyncio.wait_for(reader.readexactly(4), 5)
            writer.close()
            for _ in range(40):
                if metric(proxy, "simmesh_proxy_calls_total", protocol="tcp"):
                    break
                await asyncio.sleep(0.05)
            text = proxy.metrics.render().decode()

    def calls(**labels: str) -> float:
        return metric_value(text, "simmesh_proxy_calls_total", **labels)

    assert calls(service="demo/web", source="demo/frontend", code="200") == 2
    assert calls(service="demo/web", source="demo/frontend", code="503") == 1
    assert calls(service="demo/web", source="unknown", code="403") == 1
    assert calls(service="demo/db", protocol="tcp", source="demo/frontend", code="200") == 1
    paths = "simmesh_proxy_http_paths_total"
    assert metric_value(text, paths, service="demo/web", method="GET", path="/a") == 2
    assert metric_value(text, paths, service="demo/web", method="GET", path="/b") == 1
    backend = "simmesh_proxy_backend_response_seconds_count"
    assert metric_value(text, backend, backend="demo/web") == 3  # not the denied one
    assert metric_value(text, backend, backend="demo/db") == 1  # the flow, when it ended
    assert metric_value(text, "simmesh_proxy_backend_errors_total", backend="demo/web") == 1
    # the fine buckets are there, so a snapshot reads percentiles closely
    assert f'le="{FINE_BUCKETS[3]}"' in text


def test_callers_and_paths_are_bounded_per_service() -> None:
    metrics = Metrics(lambda: {})
    for i in range(MAX_CALLERS + 10):
        metrics.request("demo/web", 200, "GET", 0.01, source=f"ns/sa-{i}", path=f"/item/{i}")
    callers = {labels[2] for labels in metrics.counters["calls"]}
    assert len(callers) == MAX_CALLERS + 1 and "other" in callers
    assert metrics.counters["calls"][("demo/web", "http", "other", "200")] == 10
    paths = {labels[2] for labels in metrics.counters["paths"]}
    assert len(paths) == MAX_PATHS + 1 and "other" in paths
    # another service has a budget of its own
    metrics.request("demo/api", 200, "GET", 0.01, source="ns/sa-99", path="/x")
    assert metrics.counters["calls"][("demo/api", "http", "ns/sa-99", "200")] == 1


def test_workers_merge_the_fine_histograms() -> None:
    a, b = Metrics(lambda: {}), Metrics(lambda: {})
    a.attempt("demo/web", 0.004, backend="demo/web-v1", status=200)
    b.attempt("demo/web", 0.2, backend="demo/web-v1", status=500)
    text = render_merged(
        [m.export({"breakers": {}, "udp_sessions": 0, "upstream_connections": 0}) for m in (a, b)]
    ).decode()
    count = "simmesh_proxy_backend_response_seconds_count"
    assert metric_value(text, count, backend="demo/web-v1") == 2
    bucket = "simmesh_proxy_backend_response_seconds_bucket"
    assert metric_value(text, bucket, backend="demo/web-v1", le="0.005") == 1
    assert metric_value(text, "simmesh_proxy_backend_errors_total", backend="demo/web-v1") == 1


def test_rows_fold_into_the_same_tables_and_stay_bounded() -> None:
    """Requests add to raw rows between scrapes: folded at any time, the tables are what
    counting each request would give, and a flood of distinct labels holds at most MAX_ROWS
    rows before it is folded (into the bounded labels)."""
    metrics = Metrics(lambda: {})
    for i in range(3 * MAX_ROWS):
        metrics.http("demo/web", 200, "GET", 0.003, None, f"/flood/{i}", 10, 1000)
        assert len(metrics._served) <= MAX_ROWS
        if i == 100:
            assert metrics.counters["requests"][("demo/web", "200", "GET")] == 101  # a scrape
    metrics.http("demo/web", 503, "BREW", 0.2, "ns/sa", None, 0, 0)
    requests = metrics.counters["requests"]
    assert requests[("demo/web", "200", "GET")] == 3 * MAX_ROWS
    assert requests[("demo/web", "503", "OTHER")] == 1
    assert metrics.counters["bytes"][("demo/web", "http", "tx")] == 3 * MAX_ROWS * 1000
    assert metrics.counters["bytes"][("demo/web", "http", "rx")] == 3 * MAX_ROWS * 10
    paths = metrics.counters["paths"]
    assert len(paths) == MAX_PATHS + 1
    assert paths[("demo/web", "GET", "other")] == 3 * MAX_ROWS - MAX_PATHS
    duration = metrics.histograms["duration"][("demo/web",)]
    assert sum(duration.counts) == 3 * MAX_ROWS + 1
    assert abs(duration.sum - (3 * MAX_ROWS * 0.003 + 0.2)) < 1e-6
    assert not metrics._served  # everything folded


def test_a_histogram_files_each_value_where_bisect_left_does() -> None:
    """Prometheus buckets are upper bounds (le): a value equal to a bound counts in it."""
    import bisect

    from mesh.proxy.metrics import BUCKETS, Histogram

    for bounds in (BUCKETS, FINE_BUCKETS):
        values = [
            0.0,
            1e-9,
            100.0,
            *bounds,
            *(b * 0.999 for b in bounds),
            *(b * 1.001 for b in bounds),
        ]
        for value in values:
            histogram = Histogram(bounds)
            histogram.observe(value)
            assert histogram.counts.index(1) == bisect.bisect_left(bounds, value), value
