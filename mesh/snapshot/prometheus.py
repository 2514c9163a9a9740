"""The window from a Prometheus server instead of scraping the proxies (``--prometheus URL``).

For each series a snapshot reads, one instant query ``increase(NAME[WINDOWs])`` at the time the
command runs (the Prometheus HTTP API, ``/api/v1/query``): the window that just ended, with
Prometheus's own handling of counter resets and its extrapolation to the window's edges. Each
result series is put back on the node of the proxy it was scraped from: the target's ``node``
(or ``kubernetes_node``) label when the scrape configuration adds one, else its pod
(``pod``/``kubernetes_pod_name``), else its ``instance`` address, matched against the proxy
pods the API server lists. The target's other labels (job, instance, ...) are dropped, so the
tables are those a direct scrape gives (mesh/snapshot/exposition.py).
"""

from __future__ import annotations

import math
from typing import Any

import aiohttp

from mesh.snapshot.cluster import ProxyPod, SnapshotError
from mesh.snapshot.exposition import Table, labels_of

SERIES = (
    "simmesh_proxy_calls_total",
    "simmesh_proxy_http_paths_total",
    "simmesh_proxy_backend_errors_total",
    "simmesh_proxy_backend_response_seconds_bucket",
    "simmesh_proxy_backend_response_seconds_sum",
    "simmesh_proxy_backend_response_seconds_count",
    "simmesh_proxy_http_request_duration_seconds_bucket",
    "simmesh_proxy_http_request_duration_seconds_sum",
    "simmesh_proxy_http_request_duration_seconds_count",
    "simmesh_proxy_upstream_response_seconds_sum",
    "simmesh_proxy_upstream_response_seconds_count",
)
OWN_LABELS = frozenset(["service", "protocol", "source", "code", "method", "path", "backend", "le"])
TIMEOUT = 30.0


def query(name: str, seconds: float) -> str:
    return f"increase({name}[{max(1, round(seconds))}s])"


def node_of(labels: dict[str, str], proxies: tuple[ProxyPod, ...]) -> str | None:
    """The node of the proxy a series was scraped from, as far as its labels tell."""
    for key in ("node", "kubernetes_node", "kubernetes_pod_node_name"):
        if labels.get(key):
            return labels[key]
    by_name = {p.name: p.node for p in proxies}
    for key in ("pod", "kubernetes_pod_name", "pod_name"):
        if labels.get(key) in by_name:
            return by_name[labels[key]]
    instance = labels.get("instance", "")
    host = instance.rsplit(":", 1)[0].strip("[]") if instance else ""
    by_ip = {p.ip: p.node for p in proxies}
    return by_ip.get(host)


def tables(
    results: dict[str, list[dict[str, Any]]], proxies: tuple[ProxyPod, ...]
) -> tuple[dict[str, Table], list[str]]:
    """Per node, the series of ``results`` (sample name -> the query's vector)."""
    out: dict[str, Table] = {}
    unplaced = 0
    fallback = sorted({p.node for p in proxies})[0] if proxies else "unknown"
    for name, vector in results.items():
        for item in vector:
            labels = {str(k): str(v) for k, v in (item.get("metric") or {}).items()}
            try:
                value = float(item["value"][1])
            except (KeyError, IndexError, TypeError, ValueError):
                continue
            if not math.isfinite(value) or value <= 0:
                continue
            node = node_of(labels, proxies)
            if node is None:
                unplaced += 1
                node = fallback
            key = labels_of({k: v for k, v in labels.items() if k in OWN_LABELS})
            rows = out.setdefault(node, {}).setdefault(name, {})
            rows[key] = rows.get(key, 0.0) + value
    warnings = []
    if unplaced:
        warnings.append(
            f"{unplaced} series name no proxy pod (no node, pod or instance label of one): "
            f"counted on node {fallback}"
        )
    return out, warnings


async def measure(
    url: str, seconds: float, proxies: tuple[ProxyPod, ...]
) -> tuple[dict[str, Table], list[str]]:
    """The last ``seconds`` per node, from the Prometheus at ``url``."""
    results: dict[str, list[dict[str, Any]]] = {}
    endpoint = url.rstrip("/") + "/api/v1/query"
    timeout = aiohttp.ClientTimeout(total=TIMEOUT)
    try:
        async with aiohttp.ClientSession(timeout=timeout) as session:
            for name in SERIES:
                async with session.get(endpoint, params={"query": query(name, seconds)}) as resp:
                    text = await resp.text()
                    try:
                        body = await resp.json(content_type=None)
                    except ValueError:
                        body = None
                if resp.status != 200 or not isinstance(body, dict):
                    detail = body.get("error") if isinstance(body, dict) else text[:160]
                    raise SnapshotError(
                        f"--prometheus {url}: {query(name, seconds)}: HTTP {resp.status}: "
                        f"{' '.join(str(detail).split())}"
                    )
                data = body.get("data") or {}
                if body.get("status") != "success" or data.get("resultType") != "vector":
                    raise SnapshotError(f"--prometheus {url}: {query(name, seconds)}: no vector")
                results[name] = list(data.get("result") or [])
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise SnapshotError(f"--prometheus {url}: cannot query it: {reason}") from None
    return tables(results, proxies)
