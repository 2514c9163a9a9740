"""Manifests: the test app workloads of a case, and SMI objects as users write them.

SMI builders write the served versions (access v1alpha3, specs v1alpha4, split v1alpha4) in
the fields' right places; the version cases write the older layouts by hand. Namespaces are the
placeholders ``"$A"``/``"$B"`` and TCPRoute/UDPRoute ports ``"$port:<svc>"``, filled in by
``substitute`` when a case runs (see model.py).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from conformance.model import HTTP_PORT, TCP_PORT, UDP_PORT, App, Svc

__all__ = [
    "backend",
    "grpc_route",
    "http_route",
    "http_route_group",
    "namespace",
    "parent",
    "substitute",
    "tcp_route",
    "traffic_split",
    "traffic_target",
    "udp_route",
    "workload",
]

ACCESS = "access.smi-spec.io/v1alpha3"
SPECS = "specs.smi-spec.io/v1alpha4"
SPLIT = "split.smi-spec.io/v1alpha4"
GATEWAY = "gateway.networking.k8s.io/v1"
SUITE_LABEL = "smi-conformance/suite"
APP_LABEL = "smi-conformance/app"
Doc = dict[str, Any]


def meta(name: str, ns: str = "$A") -> dict[str, str]:
    return {"name": name, "namespace": ns}


# --------------------------------------------------------------------------- SMI objects


def account(name: str, ns: str = "$A") -> dict[str, str]:
    return {"kind": "ServiceAccount", "name": name, "namespace": ns}


def traffic_target(
    name: str,
    *,
    destination: str,
    sources: Sequence[str | tuple[str, str]],
    rules: Sequence[Mapping[str, Any]],
    ns: str = "$A",
) -> Doc:
    """A v1alpha3 TrafficTarget; a source is an account in ``ns`` or (namespace, account)."""
    spec: Doc = {
        "destination": account(destination, ns),
        "sources": [
            account(*reversed(s)) if isinstance(s, tuple) else account(s, ns) for s in sources
        ],
    }
    if rules:
        spec["rules"] = list(rules)
    return {"apiVersion": ACCESS, "kind": "TrafficTarget", "metadata": meta(name, ns), "spec": spec}


def rule(kind: str, name: str, matches: Sequence[str] | None = None) -> Doc:
    """A TrafficTarget rule; without ``matches`` it grants every match of the route."""
    out: Doc = {"kind": kind, "name": name}
    if matches is not None:
        out["matches"] = list(matches)
    return out


def http_route_group(name: str, *matches: Mapping[str, Any], ns: str = "$A") -> Doc:
    return {
        "apiVersion": SPECS,
        "kind": "HTTPRouteGroup",
        "metadata": meta(name, ns),
        "spec": {"matches": [dict(m) for m in matches]},
    }


def tcp_route(name: str, ports: Sequence[int | str] = (), ns: str = "$A") -> Doc:
    spec = {"matches": {"name": "ports", "ports": list(ports)}}
    return {"apiVersion": SPECS, "kind": "TCPRoute", "metadata": meta(name, ns), "spec": spec}


def udp_route(name: str, ports: Sequence[int | str] = (), ns: str = "$A") -> Doc:
    spec = {"matches": {"name": "ports", "ports": list(ports)}}
    return {"apiVersion": SPECS, "kind": "UDPRoute", "metadata": meta(name, ns), "spec": spec}


def traffic_split(
    name: str,
    root: str,
    weights: Mapping[str, int | str],
    *,
    matches: Sequence[str] = (),
    ns: str = "$A",
    version: str = "",
) -> Doc:
    """The served version, or ``version`` (``v1alpha1``: weights are quantity strings)."""
    api_version = f"split.smi-spec.io/{version}" if version else SPLIT
    spec: Doc = {
        "service": root,
        "backends": [{"service": svc, "weight": w} for svc, w in weights.items()],
    }
    if matches:
        spec["matches"] = [{"kind": "HTTPRouteGroup", "name": m} for m in matches]
    return {
        "apiVersion": api_version,
        "kind": "TrafficSplit",
        "metadata": meta(name, ns),
        "spec": spec,
    }


def grant_all(destination: str, source: str | tuple[str, str], name: str = "") -> list[Doc]:
    """Every HTTP path and method, every TCP and UDP port: for cases about something else."""
    name = name or f"all-{destination}"
    return [
        http_route_group(f"{name}-http", {"name": "all", "pathRegex": ".*", "methods": ["*"]}),
        tcp_route(f"{name}-tcp"),
        udp_route(f"{name}-udp"),
        traffic_target(
            name,
            destination=destination,
            sources=[source],
            rules=[
                rule("HTTPRouteGroup", f"{name}-http"),
                rule("TCPRoute", f"{name}-tcp"),
                rule("UDPRoute", f"{name}-udp"),
            ],
        ),
    ]


# --------------------------------------------------------------------------- Gateway API (GAMMA)


def parent(service: str, *, ns: str | None = None, port: int | None = None) -> Doc:
    """A parentRef naming a Service (GEP-1294); ``ns`` for a consumer route's parent."""
    out: Doc = {"group": "", "kind": "Service", "name": service}
    if ns is not None:
        out["namespace"] = ns
    if port is not None:
        out["port"] = port
    return out


def backend(service: str, *, port: int = HTTP_PORT, weight: int | None = None, **kw: Any) -> Doc:
    out: Doc = {"name": service, "port": port, **kw}
    if weight is not None:
        out["weight"] = weight
    return out


def http_route(
    name: str,
    parents: Sequence[Mapping[str, Any]],
    *rules: Mapping[str, Any],
    ns: str = "$A",
) -> Doc:
    """A ``gateway.networking.k8s.io/v1`` HTTPRoute; a rule is written as the API has it."""
    return {
        "apiVersion": GATEWAY,
        "kind": "HTTPRoute",
        "metadata": meta(name, ns),
        "spec": {"parentRefs": [dict(p) for p in parents], "rules": [dict(r) for r in rules]},
    }


def grpc_route(name: str, parents: Sequence[Mapping[str, Any]], *rules: Mapping[str, Any]) -> Doc:
    doc = http_route(name, parents, *rules)
    doc["kind"] = "GRPCRoute"
    return doc


# --------------------------------------------------------------------------- workloads


def namespace(name: str, run: str) -> Doc:
    labels = {SUITE_LABEL: "true", "smi-conformance/run": run}
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}}


def workload(app: App, ns: str, *, image: str, pull_policy: str) -> list[Doc]:
    """The ServiceAccount and a one-pod Deployment of the test app."""
    labels = {"app": app.name, APP_LABEL: app.name, **app.labels}
    env = [
        {"name": var, "valueFrom": {"fieldRef": {"fieldPath": path}}}
        for var, path in (
            ("POD_NAME", "metadata.name"),
            ("POD_NAMESPACE", "metadata.namespace"),
            ("NODE_NAME", "spec.nodeName"),
        )
    ]
    container = {
        "name": "testapp",
        "image": image,
        "imagePullPolicy": pull_policy,
        "args": [
            "testapp",
            *("--http-port", str(HTTP_PORT), "--tcp-port", str(TCP_PORT)),
            *("--udp-port", str(UDP_PORT), "--drain-timeout", "1"),
        ],
        "env": env,
        "ports": [
            {"name": "http", "containerPort": HTTP_PORT},
            {"name": "tcp", "containerPort": TCP_PORT},
            {"name": "udp", "containerPort": UDP_PORT, "protocol": "UDP"},
        ],
        "readinessProbe": {"httpGet": {"path": "/readyz", "port": HTTP_PORT}, "periodSeconds": 1},
        "resources": {"requests": {"cpu": "10m", "memory": "40Mi"}},
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        },
    }
    pod = {
        "serviceAccountName": app.service_account,
        "terminationGracePeriodSeconds": 2,
        "securityContext": {"runAsNonRoot": True, "runAsUser": 65532},
        "containers": [container],
    }
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta(app.service_account, ns)},
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": meta(app.name, ns),
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": {APP_LABEL: app.name}},
                "template": {"metadata": {"labels": labels}, "spec": pod},
            },
        },
    ]


def service(svc: Svc, ns: str, annotations: Mapping[str, str]) -> Doc:
    port = {
        "name": svc.protocol,
        "port": svc.port,
        "targetPort": svc.target,
        "protocol": "UDP" if svc.protocol == "udp" else "TCP",
    }
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {**meta(svc.name, ns), "annotations": dict(annotations)},
        "spec": {"selector": dict(svc.selector), "ports": [port]},
    }


# --------------------------------------------------------------------------- placeholders


def substitute(doc: Any, fill: Callable[[str], Any]) -> Any:
    """A copy of ``doc`` with every string starting with ``$`` replaced by ``fill(string)``."""
    if isinstance(doc, Mapping):
        return {k: substitute(v, fill) for k, v in doc.items()}
    if isinstance(doc, list | tuple):
        return [substitute(v, fill) for v in doc]
    if isinstance(doc, str) and doc.startswith("$"):
        return fill(doc)
    return doc


def identity(doc: Mapping[str, Any]) -> tuple[str, str, str | None, str]:
    meta_ = doc["metadata"]
    return doc["apiVersion"], doc["kind"], meta_.get("namespace"), meta_["name"]


def unique(docs: Iterable[Doc]) -> list[Doc]:
    seen: dict[tuple[str, str, str | None, str], Doc] = {}
    for doc in docs:
        seen[identity(doc)] = doc
    return list(seen.values())
