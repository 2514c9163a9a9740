"""Small builders for the Kubernetes and SMI objects the core reads, and for running the core.

Every builder returns a plain dict shaped like a manifest, so tests go through ``parse`` exactly
as the controller and the CLI do. ``compile_docs`` runs parse -> topology -> config; ``Client``
wraps an :class:`~mesh.core.routing.Engine` for transcript-style requests.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from mesh.core.config import MeshConfig, build_config
from mesh.core.model import Settings
from mesh.core.parse import parse_objects
from mesh.core.request import parse_request
from mesh.core.routing import Decision, Engine, Router
from mesh.core.topology import build_topology

NS = "demo"
ACCESS = "access.smi-spec.io/"
SPECS = "specs.smi-spec.io/"
SPLIT = "split.smi-spec.io/"

PortSpec = tuple[str, int, int | str]  # (name, port, targetPort)


def meta(name: str, ns: str | None, **extra: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"name": name}
    if ns is not None:
        out["namespace"] = ns
    out.update(extra)
    return out


def service(
    name: str,
    *,
    ns: str = NS,
    ports: Sequence[PortSpec] = (("http", 80, 8080),),
    ip: str | None = None,
    annotations: Mapping[str, str] | None = None,
    type_: str | None = None,
    protocol: str | None = None,
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "ports": [
            {"name": n, "port": p, "targetPort": t, **({"protocol": protocol} if protocol else {})}
            for n, p, t in ports
        ],
        "selector": {"app": name},
    }
    if ip is not None:
        spec["clusterIP"] = ip
    if type_ is not None:
        spec["type"] = type_
    extra = {"annotations": dict(annotations)} if annotations else {}
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": meta(name, ns, **extra),
        "spec": spec,
    }


def endpoint(
    ip: str, *, pod: str | None = None, ready: bool | None = True, node: str | None = None
) -> dict[str, Any]:
    out: dict[str, Any] = {"addresses": [ip]}
    if ready is not None:
        out["conditions"] = {"ready": ready}
    if pod is not None:
        out["targetRef"] = {"kind": "Pod", "name": pod}
    if node is not None:
        out["nodeName"] = node
    return out


def endpoint_slice(
    svc: str,
    endpoints: Iterable[dict[str, Any]],
    *,
    ns: str = NS,
    ports: Sequence[tuple[str, int]] = (("http", 8080),),
    name: str | None = None,
) -> dict[str, Any]:
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": meta(name or f"{svc}-slice", ns, labels={"kubernetes.io/service-name": svc}),
        "addressType": "IPv4",
        "ports": [{"name": n, "port": p, "protocol": "TCP"} for n, p in ports],
        "endpoints": list(endpoints),
    }


def pod(
    name: str, *, sa: str, ip: str | None, ns: str = NS, node: str | None = None
) -> dict[str, Any]:
    spec: dict[str, Any] = {"serviceAccountName": sa}
    if node is not None:
        spec["nodeName"] = node
    status = {"podIP": ip} if ip is not None else {}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": meta(name, ns),
        "spec": spec,
        "status": status,
    }


def app(
    name: str,
    *,
    sa: str | None = None,
    ips: Sequence[str] = (),
    ns: str = NS,
    ports: Sequence[PortSpec] = (("http", 80, 8080),),
    cluster_ip: str | None = None,
    annotations: Mapping[str, str] | None = None,
    ready: Sequence[bool] | None = None,
) -> list[dict[str, Any]]:
    """A Service, its EndpointSlice and one Pod per IP (ServiceAccount ``sa``, default name)."""
    account = sa or name
    flags = list(ready) if ready is not None else [True] * len(ips)
    pods = [pod(f"{name}-{i}", sa=account, ip=ip, ns=ns) for i, ip in enumerate(ips)]
    slice_ports = [(n, t if isinstance(t, int) else p) for n, p, t in ports]
    eps = [
        endpoint(ip, pod=f"{name}-{i}", ready=flag, node=f"node-{i % 2}")
        for i, (ip, flag) in enumerate(zip(ips, flags, strict=True))
    ]
    return [
        service(name, ns=ns, ports=ports, ip=cluster_ip, annotations=annotations),
        endpoint_slice(name, eps, ns=ns, ports=slice_ports),
        *pods,
    ]


def sa_ref(name: str, ns: str | None = NS) -> dict[str, Any]:
    out: dict[str, Any] = {"kind": "ServiceAccount", "name": name}
    if ns is not None:
        out["namespace"] = ns
    return out


def rule(kind: str, name: str, matches: Sequence[str] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"kind": kind, "name": name}
    if matches is not None:
        out["matches"] = list(matches)
    return out


def traffic_target(
    name: str,
    *,
    dest: str,
    sources: Sequence[str],
    rules: Sequence[dict[str, Any]],
    ns: str = NS,
    version: str = "v1alpha3",
) -> dict[str, Any]:
    body = {
        "destination": sa_ref(dest),
        "sources": [sa_ref(s) for s in sources],
        "rules" if version != "v1alpha1" else "specs": list(rules),
    }
    doc: dict[str, Any] = {
        "apiVersion": ACCESS + version,
        "kind": "TrafficTarget",
        "metadata": meta(name, ns),
    }
    if version == "v1alpha1":
        doc.update(body)
    else:
        doc["spec"] = body
    return doc


def http_match(
    name: str,
    *,
    path: str | None = None,
    methods: Sequence[str] | None = None,
    headers: Any = None,
) -> dict[str, Any]:
    out: dict[str, Any] = {"name": name}
    if path is not None:
        out["pathRegex"] = path
    if methods is not None:
        out["methods"] = list(methods)
    if headers is not None:
        out["headers"] = headers
    return out


def route_group(
    name: str, matches: Sequence[dict[str, Any]], *, ns: str = NS, version: str = "v1alpha4"
) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "apiVersion": SPECS + version,
        "kind": "HTTPRouteGroup",
        "metadata": meta(name, ns),
    }
    if version == "v1alpha1":
        doc["matches"] = list(matches)
    else:
        doc["spec"] = {"matches": list(matches)}
    return doc


def port_route(
    name: str,
    matches: Any = None,
    *,
    kind: str = "TCPRoute",
    ns: str = NS,
    version: str = "v1alpha4",
) -> dict[str, Any]:
    """A TCPRoute/UDPRoute; ``matches`` may be an object, a list of objects or None."""
    doc: dict[str, Any] = {"apiVersion": SPECS + version, "kind": kind, "metadata": meta(name, ns)}
    doc["spec"] = {} if matches is None else {"matches": matches}
    return doc


def traffic_split(
    name: str,
    root: str,
    backends: Sequence[tuple[str, Any]],
    *,
    ns: str = NS,
    version: str = "v1alpha4",
    matches: Sequence[str] | None = None,
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "service": root,
        "backends": [{"service": s, "weight": w} for s, w in backends],
    }
    if matches is not None:
        spec["matches"] = [{"kind": "HTTPRouteGroup", "name": m} for m in matches]
    return {
        "apiVersion": SPLIT + version,
        "kind": "TrafficSplit",
        "metadata": meta(name, ns),
        "spec": spec,
    }


GATEWAY = "gateway.networking.k8s.io/"


def parent(
    name: str, *, ns: str | None = None, port: int | None = None, section: str | None = None
) -> dict[str, Any]:
    """A parentRef to a Service (GAMMA)."""
    out: dict[str, Any] = {"group": "", "kind": "Service", "name": name}
    if ns is not None:
        out["namespace"] = ns
    if port is not None:
        out["port"] = port
    if section is not None:
        out["sectionName"] = section
    return out


def backend_ref(
    name: str,
    port: int | None = 80,
    *,
    weight: int | None = None,
    ns: str | None = None,
    **extra: Any,
) -> dict[str, Any]:
    out: dict[str, Any] = {"name": name, **extra}
    if port is not None:
        out["port"] = port
    if weight is not None:
        out["weight"] = weight
    if ns is not None:
        out["namespace"] = ns
    return out


def http_route(
    name: str,
    parents: Sequence[dict[str, Any]],
    rules: Sequence[dict[str, Any]] | None,
    *,
    ns: str = NS,
    created: str | None = None,
    kind: str = "HTTPRoute",
    version: str = "v1",
) -> dict[str, Any]:
    """An HTTPRoute (or GRPCRoute with ``kind``); ``rules`` None leaves the CRD's default."""
    extra = {"creationTimestamp": created} if created is not None else {}
    spec: dict[str, Any] = {"parentRefs": list(parents)}
    if rules is not None:
        spec["rules"] = list(rules)
    return {
        "apiVersion": GATEWAY + version,
        "kind": kind,
        "metadata": meta(name, ns, **extra),
        "spec": spec,
    }


def grpc_route(
    name: str,
    parents: Sequence[dict[str, Any]],
    rules: Sequence[dict[str, Any]],
    *,
    ns: str = NS,
    created: str | None = None,
) -> dict[str, Any]:
    return http_route(name, parents, rules, ns=ns, created=created, kind="GRPCRoute")


def prefix(value: str, **extra: Any) -> dict[str, Any]:
    """An HTTPRoute match on a PathPrefix (and ``headers``, ``queryParams``, ``method``)."""
    return {"path": {"type": "PathPrefix", "value": value}, **extra}


def exact(value: str, **extra: Any) -> dict[str, Any]:
    return {"path": {"type": "Exact", "value": value}, **extra}


def header(name: str, value: str, kind: str = "Exact") -> dict[str, Any]:
    return {"type": kind, "name": name, "value": value}


# ---------------------------------------------------------------------------------------------
# Running the core


def compile_docs(
    docs: Iterable[Any],
    settings: Settings | None = None,
    previous: Mapping[str, int] | None = None,
) -> MeshConfig:
    settings = settings or Settings()
    return build_config(build_topology(parse_objects(docs), settings), settings, previous)


def wire(config: MeshConfig) -> dict[str, Any]:
    """The config as it goes over the wire (JSON), for assertions on the document's shape."""
    return dict(json.loads(config.to_json()))


def errors_of(config: MeshConfig) -> list[dict[str, str]]:
    return list(wire(config)["errors"])


def error_texts(config: MeshConfig) -> list[str]:
    return [
        f"{e['kind']} {e['namespace']}/{e['name']}: {e['field']}: {e['message']}"
        for e in wire(config)["errors"]
    ]


class Client:
    """One Engine over a config; ``get``/``flow`` make requests at a moving ``now``."""

    def __init__(self, config: MeshConfig, *, seed: int = 0) -> None:
        self.router = Router(config)
        self.engine = Engine(self.router)
        self.rng = random.Random(seed)
        self.now = 0.0

    def http(
        self,
        host: str,
        path: str = "/",
        *,
        method: str = "GET",
        headers: Mapping[str, str] | None = None,
        source: str | None = None,
        listener: int = 5000,
        now: float | None = None,
    ) -> Decision:
        request = parse_request(method, path, list((headers or {}).items()), authority=host)
        return self.engine.decide_http(
            listener=listener,
            request=request,
            source=source,
            now=self.now if now is None else now,
            rng=self.rng,
        )

    def flow(self, listener: int, *, source: str | None = None) -> Decision:
        return self.engine.decide_flow(listener=listener, source=source, now=self.now, rng=self.rng)

    def listener_of(self, route: str) -> int:
        value = self.router.routes[route].listener
        assert value is not None
        return value


def backend_of(decision: Decision) -> str:
    assert decision.cluster is not None
    return decision.cluster.service


def counts(values: Iterable[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for value in values:
        out[value] = out.get(value, 0) + 1
    return out
