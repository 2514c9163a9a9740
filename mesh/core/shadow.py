"""Shadow Services: one per meshed Service, in the mesh namespace, selecting the node proxies.

Clients resolve ``svc.ns.<zone>``; DNS rewrites it to the shadow Service, whose ClusterIP sends
the traffic to the proxy on the client's own node (``internalTrafficPolicy: Local``) on the port
the MeshConfig assigned: the shared HTTP listener of that port's position, or the service's own
TCP/UDP listener.

Names are deterministic: ``<name>-6d61657368-<namespace>`` (the hex separator is Maesh's, so a
CoreDNS regex can reverse it). A name longer than 63 characters is truncated with a hash suffix;
it stays unique and valid, but the DNS regex cannot map it, which is reported on the Service.

The controller is stateless: TCP and UDP listener assignments are read back from the shadows
that exist (:func:`assignments_from_shadows`), so a restart changes nothing for clients.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from typing import Any

from mesh.core.schema import MeshConfig, Route

SEPARATOR = "6d61657368"
MANAGED_BY = {"app.kubernetes.io/managed-by": "simmesh"}
SHADOW_LABEL = "simmesh.io/shadow"
SOURCE_ANNOTATION = "simmesh.io/shadow-of"
PROXY_SELECTOR = {"app.kubernetes.io/name": "simmesh-proxy"}
MAX_NAME = 63


def shadow_name(namespace: str, name: str) -> str:
    plain = f"{name}-{SEPARATOR}-{namespace}"
    if len(plain) <= MAX_NAME:
        return plain
    digest = hashlib.sha256(f"{namespace}/{name}".encode()).hexdigest()[:10]
    return f"{plain[: MAX_NAME - len(digest) - 1].rstrip('-')}-{digest}"


def reversible(namespace: str, name: str) -> bool:
    """Whether the DNS rewrite regex maps ``name.namespace.<zone>`` to the shadow name."""
    return len(f"{name}-{SEPARATOR}-{namespace}") <= MAX_NAME


def shadow_services(
    config: MeshConfig, *, mesh_namespace: str, proxy_selector: Mapping[str, str] | None = None
) -> dict[str, dict[str, Any]]:
    """The shadow Service manifests for a MeshConfig, by shadow name (deterministic order)."""
    by_service: dict[str, list[Route]] = {}
    for route in config.routes.values():
        if route.listener is None:
            continue
        by_service.setdefault(route.service, []).append(route)
    out: dict[str, dict[str, Any]] = {}
    for key in sorted(by_service):
        namespace, _, name = key.partition("/")
        shadow = shadow_name(namespace, name)
        ports = [
            {
                "name": f"{r.protocol}-{r.port}",
                "port": r.port,
                "targetPort": r.listener,
                "protocol": "UDP" if r.protocol == "udp" else "TCP",
            }
            for r in sorted(by_service[key], key=lambda r: r.port)
        ]
        out[shadow] = {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {
                "name": shadow,
                "namespace": mesh_namespace,
                "labels": {**MANAGED_BY, SHADOW_LABEL: "true"},
                "annotations": {SOURCE_ANNOTATION: key},
            },
            "spec": {
                "type": "ClusterIP",
                "selector": dict(proxy_selector or PROXY_SELECTOR),
                "internalTrafficPolicy": "Local",
                "ports": ports,
            },
        }
    return out


def assignments_from_shadows(shadows: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    """``protocol:ns/name:port`` -> listener, from existing shadow Services (any malformed
    entry is skipped: the port is then simply assigned again)."""
    out: dict[str, int] = {}
    for shadow in shadows:
        meta = shadow.get("metadata") or {}
        source = (meta.get("annotations") or {}).get(SOURCE_ANNOTATION)
        if not isinstance(source, str) or "/" not in source:
            continue
        for port in (shadow.get("spec") or {}).get("ports") or []:
            protocol = str(port.get("name", "")).split("-", 1)[0]
            number, target = port.get("port"), port.get("targetPort")
            if protocol in ("tcp", "udp") and isinstance(number, int) and isinstance(target, int):
                out[f"{protocol}:{source}:{number}"] = target
    return out
