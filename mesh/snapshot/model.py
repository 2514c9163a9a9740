"""A measured window as a scenario: workloads, traffic and what was observed.

Input: the proxies' metrics over the window, per node (mesh/snapshot/exposition.py), the
objects (stripped, mesh/snapshot/objects.py) and the mesh settings. Output: the mapping of
scenario.yaml and the observed numbers (snapshot.json), in the simulator's terms:

- **traffic**: one open-loop source per (caller identity, destination service, protocol, node
  of the proxy that saw it), at the measured rate, with the service's method and path mix
  (``simmesh_proxy_calls_total``, ``simmesh_proxy_http_paths_total``). A caller without an
  identity has no ``from``; callers past the proxies' per-service limit (``other``) and
  requests to hosts no service answers are left out and named in the warnings.
- **workloads**: one per Service with ready endpoints (the real EndpointSlices and Pods are in
  the manifests, so ``replicas`` only says how many there are). Latency: the backend's
  response times (``simmesh_proxy_backend_response_seconds``, TCP: flow durations) as an
  empirical distribution, the percentiles :data:`LEVELS` read from the histogram as
  Prometheus's ``histogram_quantile`` reads them; errorRate: its 5xx per attempt. The simulator
  gives a pod one behaviour, the workload of its Service with the fewest endpoints
  (sim/placement.py), so that Service gets, when it has no measurement of its own, those of
  the Services of its traffic type that share its pods (``b`` measured, ``b-v1`` simulated),
  else those of any that share them. A pod that serves HTTP and TCP behaves for both as its
  own Service's type measured (the HTTP latency, with the test app's ``b`` and ``b-tcp``).
- **proxyLatency**: what the proxies add to a request, on average: the request durations less
  the attempts' response times, per attempt. The machinery is otherwise free (profile
  ``ideal``): the proxies measured what the pods and the network cost.
- **observed**: per service, requests, success rate (2xx and 3xx, as the simulator counts),
  p50 and p99 of the proxies' request durations (HTTP; TCP: flow durations); per backend its
  attempts, error rate, p50 and p99.

What a snapshot cannot see: a workload's capacity and how it slows down under more load (it
is simulated as it behaved at the measured rate), closed-loop clients (simulated as Poisson
arrivals at the same rate), UDP latencies (sessions end after an idle timeout).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from mesh.core.annotations import mesh_annotations
from mesh.core.model import Settings
from mesh.snapshot.exposition import Hist, Table, add, histograms, rows

LEVELS = (1, 5, 10, 25, 50, 75, 90, 95, 99, 99.9)  # percentiles of a workload's latency
UNKNOWN, OTHER = "unknown", "other"
CALLS = "simmesh_proxy_calls_total"
PATHS = "simmesh_proxy_http_paths_total"
BACKEND = "simmesh_proxy_backend_response_seconds"
ERRORS = "simmesh_proxy_backend_errors_total"
DURATION = "simmesh_proxy_http_request_duration_seconds"
UPSTREAM = "simmesh_proxy_upstream_response_seconds"
MAX_PROXY_LATENCY = 0.1


@dataclass
class Flow:
    """What one caller sent to one service through one node's proxy."""

    source: str | None
    service: str
    protocol: str
    node: str
    count: float = 0.0
    codes: dict[str, float] = field(default_factory=dict)


@dataclass
class Snapshot:
    scenario: dict[str, Any]  # scenario.yaml
    observed: dict[str, Any]  # snapshot.json
    warnings: list[str]


def _r(value: float, digits: int = 6) -> float:
    return round(value, digits) + 0.0


def _ok(code: str) -> bool:
    return code.isdigit() and 200 <= int(code) < 400


# --------------------------------------------------------------------------------- traffic


def flows(per_node: Mapping[str, Table]) -> tuple[list[Flow], list[str]]:
    """Every (caller, service, protocol, node) with its count and codes; and what was left out."""
    out: dict[tuple[str | None, str, str, str], Flow] = {}
    left_out: dict[str, float] = {}
    for node, table in sorted(per_node.items()):
        for labels, value in rows(table, CALLS):
            if value <= 0:
                continue
            service, source = labels.get("service", "-"), labels.get("source", UNKNOWN)
            if service == "-":
                left_out["requests to hosts no meshed service answers"] = (
                    left_out.get("requests to hosts no meshed service answers", 0.0) + value
                )
                continue
            if source == OTHER:
                what = f"calls to {service} from callers past the proxies' limit per service"
                left_out[what] = left_out.get(what, 0.0) + value
                continue
            who = None if source == UNKNOWN else source
            protocol = labels.get("protocol", "http")
            key = (who, service, protocol, node)
            flow = out.setdefault(key, Flow(who, service, protocol, node))
            flow.count += value
            code = labels.get("code", "")
            flow.codes[code] = flow.codes.get(code, 0.0) + value
    warnings = [f"left out: {value:.0f} {what}" for what, value in sorted(left_out.items())]
    ordered = sorted(out.values(), key=lambda f: (f.service, f.source or "", f.protocol, f.node))
    return ordered, warnings


def mixes(total: Table) -> dict[str, list[dict[str, Any]]]:
    """Per service, the method and path mix (path ``other`` left out), heaviest first."""
    counts: dict[str, dict[tuple[str, str], float]] = {}
    for labels, value in rows(total, PATHS):
        path = labels.get("path", "/")
        if value <= 0 or path == OTHER or not path.startswith("/"):
            continue
        per = counts.setdefault(labels.get("service", "-"), {})
        pair = (labels.get("method", "GET"), path)
        per[pair] = per.get(pair, 0.0) + value
    out = {}
    for service, per in counts.items():
        items = sorted(per.items(), key=lambda kv: (-kv[1], kv[0]))
        out[service] = [{"method": m, "path": p, "weight": _r(w, 3)} for (m, p), w in items]
    return out


def _service_ports(docs: Sequence[Mapping[str, Any]]) -> dict[str, list[Mapping[str, Any]]]:
    out = {}
    for doc in docs:
        if doc.get("kind") == "Service":
            meta = doc.get("metadata") or {}
            key = f"{meta.get('namespace') or 'default'}/{meta.get('name')}"
            out[key] = list((doc.get("spec") or {}).get("ports") or [])
    return out


def _port(ports: list[Mapping[str, Any]], protocol: str) -> int | None:
    wanted = "UDP" if protocol == "udp" else "TCP"
    for port in ports:
        if str(port.get("protocol") or "TCP") == wanted and isinstance(port.get("port"), int):
            return int(port["port"])
    return None


def traffic(
    found: list[Flow],
    mix: Mapping[str, list[dict[str, Any]]],
    docs: Sequence[Mapping[str, Any]],
    settings: Settings,
    seconds: float,
) -> tuple[list[dict[str, Any]], list[str]]:
    """scenario.yaml's traffic: one open-loop source per flow."""
    ports = _service_ports(docs)
    out, warnings = [], []
    for flow in found:
        namespace, _, name = flow.service.partition("/")
        port = _port(ports.get(flow.service, []), flow.protocol)
        if port is None:
            warnings.append(
                f"left out: {flow.count:.0f} {flow.protocol} calls to {flow.service}, which has "
                "no such port now"
            )
            continue
        item: dict[str, Any] = {"name": f"{flow.source or UNKNOWN} -> {flow.service} "}
        item["name"] += f"({flow.protocol}, {flow.node})"
        if flow.source is not None:
            item["from"] = flow.source
        item["node"] = flow.node
        item["to"] = f"{flow.protocol}://{name}.{namespace}.{settings.zone}:{port}"
        if flow.protocol == "http":
            item["to"] += "/"
        item["rate"] = _r(flow.count / seconds)
        if flow.protocol == "http" and mix.get(flow.service):
            item["mix"] = mix[flow.service]
        out.append(item)
    return out, warnings


# --------------------------------------------------------------------------------- workloads


def traffic_types(docs: Sequence[Mapping[str, Any]], settings: Settings) -> dict[str, str]:
    """Service -> its traffic type (http, tcp or udp), as the mesh reads its annotations."""
    out = {}
    for doc in docs:
        if doc.get("kind") != "Service":
            continue
        meta = doc.get("metadata") or {}
        raw = meta.get("annotations") or {}
        pairs = tuple((str(k), str(v)) for k, v in raw.items()) if isinstance(raw, Mapping) else ()
        found = mesh_annotations(pairs).get("traffic-type")
        kind = found[1] if found is not None else settings.default_traffic_type.value
        out[f"{meta.get('namespace') or 'default'}/{meta.get('name')}"] = kind
    return out


def _ready_ips(docs: Sequence[Mapping[str, Any]]) -> dict[str, set[str]]:
    """Service -> the addresses of its ready endpoints (from the EndpointSlices)."""
    services = set(_service_ports(docs))
    out: dict[str, set[str]] = {}
    for doc in docs:
        if doc.get("kind") != "EndpointSlice":
            continue
        meta = doc.get("metadata") or {}
        owner = (meta.get("labels") or {}).get("kubernetes.io/service-name")
        key = f"{meta.get('namespace') or 'default'}/{owner}"
        if key not in services:
            continue
        for endpoint in doc.get("endpoints") or []:
            if (endpoint.get("conditions") or {}).get("ready") is False:
                continue
            out.setdefault(key, set()).update(str(a) for a in endpoint.get("addresses") or [])
    return out


def latency_spec(hist: Hist) -> dict[str, Any] | None:
    """An empirical distribution (the scenario's format) of a histogram, or None if empty."""
    if hist.count <= 0:
        return None
    points: dict[float, float] = {0: _r(hist.low_edge())}
    for level in LEVELS:
        value = hist.quantile(level / 100)
        assert value is not None
        points[level] = _r(value)
    points[100] = _r(max(hist.high_edge(), points[LEVELS[-1]]))
    last = 0.0
    for level in sorted(points):  # rounding must not make a value smaller than the one before
        last = points[level] = max(last, points[level])
    return {"dist": "empirical", "percentiles": points}


def workloads(
    docs: Sequence[Mapping[str, Any]],
    backends: Mapping[str, Hist],
    errors: Mapping[str, float],
    settings: Settings,
) -> dict[str, dict[str, Any]]:
    """scenario.yaml's workloads: every Service with ready endpoints, behaving as measured."""
    ready = _ready_ips(docs)
    kinds = traffic_types(docs, settings)
    out = {}
    for service, ips in sorted(ready.items()):
        if not ips:
            continue
        hist, failed = backends.get(service, Hist()), errors.get(service, 0.0)
        if hist.count <= 0:  # its pods were measured through the Services that share them
            sharing = [
                other
                for other, other_ips in sorted(ready.items())
                if other != service and ips & other_ips and backends.get(other, Hist()).count
            ]
            alike = [o for o in sharing if kinds.get(o) == kinds.get(service)]
            for other in alike or sharing:
                hist = hist.merged(backends[other])
                failed += errors.get(other, 0.0)
        body: dict[str, Any] = {"replicas": len(ips)}
        spec = latency_spec(hist)
        if spec is not None:
            body["latency"] = spec
            body["errorRate"] = _r(min(1.0, failed / hist.count))
        out[service] = body
    return out


def proxy_latency(total: Table) -> float:
    """What a proxy adds to an attempt on average: request durations less response times."""
    duration = sum(v for _, v in rows(total, f"{DURATION}_sum"))
    upstream = sum(v for _, v in rows(total, f"{UPSTREAM}_sum"))
    attempts = sum(v for _, v in rows(total, f"{UPSTREAM}_count"))
    if attempts <= 0:
        return 0.0
    return _r(min(MAX_PROXY_LATENCY, max(0.0, (duration - upstream) / attempts)))


# --------------------------------------------------------------------------------- observed


def _quantiles(hist: Hist | None) -> dict[str, float | None]:
    if hist is None or hist.count <= 0:
        return {"p50": None, "p99": None}
    return {f"p{p}": _r(v) for p in (50, 99) if (v := hist.quantile(p / 100)) is not None}


def observed(
    found: list[Flow], total: Table, backends: Mapping[str, Hist], errors: Mapping[str, float]
) -> dict[str, Any]:
    durations = histograms(total, DURATION, "service")
    services: dict[str, Any] = {}
    for flow in found:
        entry = services.setdefault(
            flow.service, {"protocol": flow.protocol, "requests": 0.0, "codes": {}}
        )
        entry["requests"] += flow.count
        for code, n in flow.codes.items():
            entry["codes"][code] = entry["codes"].get(code, 0.0) + n
    for name, entry in services.items():
        ok = sum(n for code, n in entry["codes"].items() if _ok(code))
        entry["successRate"] = _r(ok / entry["requests"]) if entry["requests"] else None
        hist = durations.get(name) if entry["protocol"] == "http" else backends.get(name)
        entry["latency"] = _quantiles(hist)
        entry["requests"] = _r(entry["requests"], 3)
        entry["codes"] = {k: _r(v, 3) for k, v in sorted(entry["codes"].items())}
    per_backend = {}
    for name, hist in sorted(backends.items()):
        if hist.count <= 0:
            continue
        per_backend[name] = {
            "attempts": _r(hist.count, 3),
            "errorRate": _r(errors.get(name, 0.0) / hist.count),
            "latency": _quantiles(hist),
        }
    return {"services": dict(sorted(services.items())), "backends": per_backend}


# --------------------------------------------------------------------------------- together


def snapshot(
    per_node: Mapping[str, Table],
    *,
    seconds: float,
    docs: Sequence[Mapping[str, Any]],
    settings: Settings,
    name: str,
    duration: float,
    description: str = "",
) -> Snapshot:
    """The scenario and the observed numbers of one measured window."""
    if not seconds > 0 or not math.isfinite(seconds):
        raise ValueError(f"a window of {seconds!r} seconds")
    total = add(per_node.values())
    found, warnings = flows(per_node)
    backends = histograms(total, BACKEND, "backend")
    errors = {labels.get("backend", ""): v for labels, v in rows(total, ERRORS)}
    sources, skipped = traffic(found, mixes(total), docs, settings, seconds)
    warnings += skipped
    nodes = set(per_node)
    for doc in docs:
        if doc.get("kind") == "Pod" and (doc.get("spec") or {}).get("nodeName"):
            nodes.add(str(doc["spec"]["nodeName"]))
    scenario: dict[str, Any] = {
        "name": name,
        "description": description,
        "duration": duration,
        "seed": 1,
        "nodes": sorted(nodes) or ["node-a"],
        "profile": "ideal",
        "proxyLatency": proxy_latency(total),
        "workloads": workloads(docs, backends, errors, settings),
        "traffic": sources,
    }
    seen = observed(found, total, backends, errors)
    seen["window"] = {"seconds": _r(seconds, 3)}
    seen["proxyLatency"] = scenario["proxyLatency"]
    seen["warnings"] = list(warnings)
    return Snapshot(scenario, seen, warnings)
