"""A small mesh whose truth is known, and the metrics its proxies would show.

ACL mode, namespace shop: ``frontend`` calls ``web`` (HTTP, two pods on node-a and node-b,
lognormal latency, 2% errors) through the proxy of node-a, and ``web`` opens TCP flows to
``db`` (one pod) through the proxy of node-b. :func:`metrics` draws every request and flow
from these distributions, feeds them to the proxy's own :class:`~mesh.proxy.metrics.Metrics`
and returns each node's exposition text, so a snapshot reads what a proxy would really
render; the draws themselves are the truth a prediction is held against.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Any

from mesh.proxy.metrics import Metrics

NS = "shop"
WEB_RATE, DB_RATE = 40.0, 15.0  # per second
WEB_MEDIAN, WEB_SIGMA, WEB_ERRORS = 0.020, 0.5, 0.02
DB_MEAN = 0.005
OVERHEAD = 0.0015  # what the proxy adds to a request


def service(name: str, port: int, *, tcp: bool = False) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "name": name,
        "namespace": NS,
        "uid": "1234",
        "resourceVersion": "99",
        "managedFields": [{"manager": "kubectl"}],
        "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{...}"},
    }
    if tcp:
        meta["annotations"]["simmesh.io/traffic-type"] = "tcp"
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": meta,
        "spec": {
            "selector": {"app": name},
            "ports": [{"name": "p", "port": port, "targetPort": port, "protocol": "TCP"}],
            "clusterIP": "10.96.0.10",
        },
        "status": {"loadBalancer": {}},
    }


def pod(name: str, ip: str, account: str, node: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": NS, "labels": {"app": name.rsplit("-", 1)[0]}},
        "spec": {
            "serviceAccountName": account,
            "nodeName": node,
            "containers": [{"name": "c", "env": [{"name": "PASSWORD", "value": "hunter2"}]}],
        },
        "status": {"phase": "Running", "podIP": ip, "conditions": [{"type": "Ready"}]},
    }


def endpoint_slice(service: str, port: int, ips: list[tuple[str, str]]) -> dict[str, Any]:
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": f"{service}-abc",
            "namespace": NS,
            "labels": {"kubernetes.io/service-name": service},
            "ownerReferences": [{"kind": "Service", "name": service}],
        },
        "addressType": "IPv4",
        "ports": [{"name": "p", "port": port, "protocol": "TCP"}],
        "endpoints": [
            {"addresses": [ip], "conditions": {"ready": True}, "nodeName": node} for ip, node in ips
        ],
    }


def grant(name: str, source: str, destination: str, rule: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "access.smi-spec.io/v1alpha3",
        "kind": "TrafficTarget",
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "destination": {"kind": "ServiceAccount", "name": destination, "namespace": NS},
            "sources": [{"kind": "ServiceAccount", "name": source, "namespace": NS}],
            "rules": [rule],
        },
    }


def objects() -> list[dict[str, Any]]:
    """The cluster's objects as the API server returns them (noise included)."""
    return [
        service("web", 8080),
        service("db", 5432, tcp=True),
        endpoint_slice("web", 8080, [("10.244.1.10", "node-a"), ("10.244.2.10", "node-b")]),
        endpoint_slice("db", 5432, [("10.244.2.20", "node-b")]),
        pod("web-0", "10.244.1.10", "web", "node-a"),
        pod("web-1", "10.244.2.10", "web", "node-b"),
        pod("db-0", "10.244.2.20", "db", "node-b"),
        pod("frontend-0", "10.244.1.30", "frontend", "node-a"),
        {
            "apiVersion": "specs.smi-spec.io/v1alpha4",
            "kind": "HTTPRouteGroup",
            "metadata": {"name": "all", "namespace": NS},
            "spec": {"matches": [{"name": "all", "pathRegex": ".*", "methods": ["*"]}]},
        },
        {
            "apiVersion": "specs.smi-spec.io/v1alpha4",
            "kind": "TCPRoute",
            "metadata": {"name": "pg", "namespace": NS},
            "spec": {"matches": {"ports": [5432]}},
        },
        grant("frontend-to-web", "frontend", "web", {"kind": "HTTPRouteGroup", "name": "all"}),
        grant("web-to-db", "web", "db", {"kind": "TCPRoute", "name": "pg"}),
    ]


MESH_YAML = "acl: true\nmeshNamespace: simmesh\n"


@dataclass
class Truth:
    """What happened in the window, request by request."""

    web: list[tuple[int, float]] = field(default_factory=list)  # status, seconds (+ overhead)
    db: list[float] = field(default_factory=list)  # flow seconds

    def web_success(self) -> float:
        return sum(1 for s, _ in self.web if s < 400) / len(self.web)

    def web_quantile(self, q: float) -> float:
        ok = sorted(t for s, t in self.web if s < 400)
        return ok[min(len(ok) - 1, int(q * len(ok)))]


def metrics(seconds: float, *, seed: int = 5) -> tuple[dict[str, str], Truth]:
    """Each node's /metrics after ``seconds`` of the world's traffic (counted from zero)."""
    rng = random.Random(seed)
    a, b = Metrics(lambda: {}), Metrics(lambda: {})
    truth = Truth()
    for _ in range(int(WEB_RATE * seconds)):
        latency = WEB_MEDIAN * math.exp(WEB_SIGMA * rng.gauss())
        status = 500 if rng.random() < WEB_ERRORS else 200
        a.attempt(f"{NS}/web", latency, backend=f"{NS}/web", status=status)
        a.request(
            f"{NS}/web",
            status,
            "GET",
            latency + OVERHEAD,
            source=f"{NS}/frontend",
            path=rng.choice(["/api/items", "/api/items", "/health"]),
        )
        truth.web.append((status, latency + OVERHEAD))
    for _ in range(int(DB_RATE * seconds)):
        duration = rng.expovariate(1 / DB_MEAN)
        b.called(f"{NS}/db", "tcp", f"{NS}/web", 200)
        b.served(f"{NS}/db", duration)
        truth.db.append(duration)
    a.called("-", "http", f"{NS}/frontend", 404)  # a host no service answers
    return {"node-a": a.render().decode(), "node-b": b.render().decode()}, truth


def empty_metrics() -> str:
    return Metrics(lambda: {}).render().decode()
