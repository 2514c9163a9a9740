"""Pure edits for clusters that run kube-dns (GKE and older clusters) instead of CoreDNS.

Why: kube-dns cannot rewrite names. It can delegate a zone: ``stubDomains`` in the
``kube-system/kube-dns`` ConfigMap maps a zone to nameserver IPs. So the mesh runs its own small
CoreDNS (``simmesh-coredns`` in the mesh namespace, with the same server block as the CoreDNS
variant) and kube-dns sends the mesh zone to that Service's ClusterIP.

How the edit stays reversible byte for byte: the ``stubDomains`` value is a JSON string the
user may have formatted by hand, and the ConfigMap itself may not exist (GKE creates it lazily).
:func:`prepare_kubedns` records, in the annotation ``simmesh.io/kube-dns-original``, whether the
ConfigMap existed, the original ``stubDomains`` value (or its absence) and the value it wrote.
:func:`cleanup_kubedns` puts the original back when the value is still the one written; when
someone edited it since, it removes only the mesh zone and keeps their edits. A ConfigMap that
prepare created is deleted again (``None``) unless other keys were added to it.

:func:`mesh_coredns_manifests` returns the objects of the mesh-owned CoreDNS. Nothing here
performs I/O.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from mesh.core.shadow import MANAGED_BY
from mesh.dns.corefile import BlockState, CorefileError, DnsSettings, server_block

STUB_KEY = "stubDomains"
ORIGINAL_ANNOTATION = "simmesh.io/kube-dns-original"
MESH_COREDNS = "simmesh-coredns"
DEFAULT_IMAGE = "registry.k8s.io/coredns/coredns:v1.11.3"
HEALTH_PORT = 8080
READY_PORT = 8181


class KubeDnsError(CorefileError):
    """The kube-dns ConfigMap cannot be edited safely (the message names the field)."""


@dataclass(frozen=True, slots=True)
class ConfigMapParts:
    """The parts of a ConfigMap these edits read and write."""

    data: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def of(cls, configmap: Mapping[str, Any]) -> ConfigMapParts:
        meta = configmap.get("metadata") or {}
        return cls(dict(configmap.get("data") or {}), dict(meta.get("annotations") or {}))


# --------------------------------------------------------------------------- stubDomains


def prepare_kubedns(current: ConfigMapParts | None, *, zone: str, server_ip: str) -> ConfigMapParts:
    """The kube-dns ConfigMap with ``zone`` delegated to ``server_ip`` (None: it is missing)."""
    base = cleanup_kubedns(current) if current is not None else None
    data = dict(base.data) if base else {}
    original = data.get(STUB_KEY)
    stubs = _parse_stubs(original)
    if zone in stubs:
        raise KubeDnsError(
            f"data.{STUB_KEY}: zone {zone!r} is already delegated to {stubs[zone]} and not by "
            "simmesh; expected no entry for the mesh zone (choose another --zone)"
        )
    written = json.dumps({**stubs, zone: [server_ip]})
    record = {"created": base is None, STUB_KEY: original, "written": written}
    data[STUB_KEY] = written
    annotations = {**(base.annotations if base else {}), ORIGINAL_ANNOTATION: json.dumps(record)}
    return ConfigMapParts(data, annotations)


def cleanup_kubedns(current: ConfigMapParts) -> ConfigMapParts | None:
    """The ConfigMap as it was before prepare; None when prepare created it and it should go."""
    record = _record(current.annotations)
    if record is None:
        return current
    data = dict(current.data)
    value = data.get(STUB_KEY)
    if value is not None and value == record.get("written"):
        _restore(data, record.get(STUB_KEY))
    elif value is not None:
        _restore(data, _without_zones(value, _zones_written(record), record.get(STUB_KEY)))
    annotations = {k: v for k, v in current.annotations.items() if k != ORIGINAL_ANNOTATION}
    if record.get("created") and not data and not annotations:
        return None
    return ConfigMapParts(data, annotations)


def kubedns_state(current: ConfigMapParts | None, *, zone: str, server_ip: str) -> BlockState:
    """CURRENT when kube-dns delegates the zone to exactly the mesh CoreDNS's ClusterIP."""
    if current is None or _record(current.annotations) is None:
        return BlockState.ABSENT
    try:
        stubs = _parse_stubs(current.data.get(STUB_KEY))
    except KubeDnsError:
        return BlockState.STALE
    return BlockState.CURRENT if stubs.get(zone) == [server_ip] else BlockState.STALE


def delegated_to(current: ConfigMapParts | None, zone: str) -> list[str]:
    """The nameservers kube-dns uses for ``zone`` ([] if none, or the value is not JSON)."""
    try:
        return list(_parse_stubs((current.data if current else {}).get(STUB_KEY)).get(zone, []))
    except KubeDnsError:
        return []


def _restore(data: dict[str, str], value: str | None) -> None:
    if value is None:
        data.pop(STUB_KEY, None)
    else:
        data[STUB_KEY] = value


def _record(annotations: Mapping[str, str]) -> dict[str, Any] | None:
    raw = annotations.get(ORIGINAL_ANNOTATION)
    if raw is None:
        return None
    try:
        record = json.loads(raw)
    except ValueError as exc:
        raise KubeDnsError(
            f"metadata.annotations[{ORIGINAL_ANNOTATION}]: expected the JSON simmesh wrote ({exc})"
        ) from exc
    if not isinstance(record, dict):
        raise KubeDnsError(f"metadata.annotations[{ORIGINAL_ANNOTATION}]: expected an object")
    return record


def _zones_written(record: Mapping[str, Any]) -> set[str]:
    written = _parse_stubs(record.get("written"))
    return set(written) - set(_parse_stubs(record.get(STUB_KEY)))


def _without_zones(value: str, zones: set[str], original: str | None) -> str | None:
    """Someone edited stubDomains after prepare: drop the mesh zone, keep the rest."""
    stubs = _parse_stubs(value)
    if zones.isdisjoint(stubs):
        return value
    kept = {zone: servers for zone, servers in stubs.items() if zone not in zones}
    return None if not kept and original is None else json.dumps(kept)


def _parse_stubs(value: str | None) -> dict[str, list[str]]:
    if value is None or not value.strip():
        return {}
    try:
        stubs = json.loads(value)
    except ValueError as exc:
        raise KubeDnsError(
            f'data.{STUB_KEY}: expected JSON like {{"zone": ["10.0.0.10"]}} ({exc})'
        ) from exc
    if not isinstance(stubs, dict) or not all(isinstance(v, list) for v in stubs.values()):
        raise KubeDnsError(f"data.{STUB_KEY}: expected a JSON object of zone -> [nameserver IPs]")
    return stubs


# --------------------------------------------------------------------------- the mesh CoreDNS


def mesh_corefile(settings: DnsSettings) -> str:
    """The mesh-owned CoreDNS's whole Corefile: the zone's block, with health and ready."""
    extra = (f"health :{HEALTH_PORT}", f"ready :{READY_PORT}")
    return "\n".join(server_block(settings, port="53", extra=extra)) + "\n"


def mesh_coredns_manifests(
    settings: DnsSettings, *, image: str = DEFAULT_IMAGE, replicas: int = 2
) -> list[dict[str, Any]]:
    """ServiceAccount, ClusterRole and binding, ConfigMap, Service and Deployment, in the order
    they should be created."""
    ns = settings.mesh_namespace
    labels = {**MANAGED_BY, "app.kubernetes.io/name": MESH_COREDNS}
    cluster_name = f"{MESH_COREDNS}-{ns}"

    def meta(name: str, namespaced: bool = True) -> dict[str, Any]:
        return {"name": name, **({"namespace": ns} if namespaced else {}), "labels": labels}

    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta(MESH_COREDNS)},
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": meta(cluster_name, namespaced=False),
            "rules": _coredns_rules(),
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": meta(cluster_name, namespaced=False),
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": cluster_name,
            },
            "subjects": [{"kind": "ServiceAccount", "name": MESH_COREDNS, "namespace": ns}],
        },
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": meta(MESH_COREDNS),
            "data": {"Corefile": mesh_corefile(settings)},
        },
        _service(meta(MESH_COREDNS), labels),
        _deployment(meta(MESH_COREDNS), labels, image=image, replicas=replicas),
    ]


def _coredns_rules() -> list[dict[str, Any]]:
    return [
        {
            "apiGroups": [""],
            "resources": ["services", "endpoints", "pods", "namespaces"],
            "verbs": ["list", "watch"],
        },
        {
            "apiGroups": ["discovery.k8s.io"],
            "resources": ["endpointslices"],
            "verbs": ["list", "watch"],
        },
    ]


def _service(meta: dict[str, Any], labels: dict[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": meta,
        "spec": {
            "type": "ClusterIP",
            "selector": {"app.kubernetes.io/name": labels["app.kubernetes.io/name"]},
            "ports": [
                {"name": "dns", "port": 53, "targetPort": 53, "protocol": "UDP"},
                {"name": "dns-tcp", "port": 53, "targetPort": 53, "protocol": "TCP"},
            ],
        },
    }


def _deployment(
    meta: dict[str, Any], labels: dict[str, str], *, image: str, replicas: int
) -> dict[str, Any]:
    selector = {"app.kubernetes.io/name": labels["app.kubernetes.io/name"]}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": meta,
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": selector},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "serviceAccountName": MESH_COREDNS,
                    "dnsPolicy": "Default",  # forward to the node's resolver, not to kube-dns
                    "containers": [_container(image)],
                    "volumes": [
                        {
                            "name": "config",
                            "configMap": {
                                "name": MESH_COREDNS,
                                "items": [{"key": "Corefile", "path": "Corefile"}],
                            },
                        }
                    ],
                },
            },
        },
    }


def _container(image: str) -> dict[str, Any]:
    return {
        "name": "coredns",
        "image": image,
        "args": ["-conf", "/etc/coredns/Corefile"],
        "ports": [
            {"name": "dns", "containerPort": 53, "protocol": "UDP"},
            {"name": "dns-tcp", "containerPort": 53, "protocol": "TCP"},
        ],
        "volumeMounts": [{"name": "config", "mountPath": "/etc/coredns", "readOnly": True}],
        "readinessProbe": {"httpGet": {"path": "/ready", "port": READY_PORT}},
        "livenessProbe": {"httpGet": {"path": "/health", "port": HEALTH_PORT}},
        "resources": {"requests": {"cpu": "50m", "memory": "32Mi"}, "limits": {"memory": "128Mi"}},
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"add": ["NET_BIND_SERVICE"], "drop": ["ALL"]},
        },
    }
