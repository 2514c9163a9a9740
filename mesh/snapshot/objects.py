"""The objects of a snapshot, as the mesh reads them and nothing more.

A live object carries what the API server keeps about it (``status``, ``managedFields``,
``resourceVersion``, ``uid``, timestamps, the ``kubectl`` last-applied copy). A snapshot keeps
what the core parses (mesh/core/parse.py) and what a reader needs to recognise the object:
name, namespace, labels, annotations, the spec. Pods shrink the most: their identity
(ServiceAccount), node, phase and addresses, never their containers (whose environment may hold
anything). Secrets are never read at all. The controller keeps its documents the same way
when the admission gate is on (mesh/controller/store.py).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"


@dataclass(frozen=True)
class Kind:
    kind: str
    api_version: str  # the version listed (the one the controller watches)
    plural: str

    def path(self) -> str:
        """The cluster-wide list path."""
        if self.api_version == "v1":
            return f"/api/v1/{self.plural}"
        return f"/apis/{self.api_version}/{self.plural}"


# What the controller watches (mesh/controller/kube.py), in the order a snapshot writes them.
KINDS = (
    Kind("Service", "v1", "services"),
    Kind("EndpointSlice", "discovery.k8s.io/v1", "endpointslices"),
    Kind("Pod", "v1", "pods"),
    Kind("TrafficTarget", "access.smi-spec.io/v1alpha3", "traffictargets"),
    Kind("HTTPRouteGroup", "specs.smi-spec.io/v1alpha4", "httproutegroups"),
    Kind("TCPRoute", "specs.smi-spec.io/v1alpha4", "tcproutes"),
    Kind("UDPRoute", "specs.smi-spec.io/v1alpha4", "udproutes"),
    Kind("TrafficSplit", "split.smi-spec.io/v1alpha4", "trafficsplits"),
)
SMI_KINDS = frozenset(k.kind for k in KINDS[3:])


def _metadata(meta: Any) -> dict[str, Any]:
    meta = meta if isinstance(meta, Mapping) else {}
    out: dict[str, Any] = {}
    for key in ("name", "namespace"):
        if isinstance(meta.get(key), str):
            out[key] = meta[key]
    labels = meta.get("labels")
    if isinstance(labels, Mapping) and labels:
        out["labels"] = dict(labels)
    annotations = meta.get("annotations")
    if isinstance(annotations, Mapping):
        kept = {k: v for k, v in annotations.items() if k != LAST_APPLIED}
        if kept:
            out["annotations"] = kept
    return out


def _pod(doc: Mapping[str, Any]) -> dict[str, Any]:
    spec = doc.get("spec") if isinstance(doc.get("spec"), Mapping) else {}
    status = doc.get("status") if isinstance(doc.get("status"), Mapping) else {}
    assert isinstance(spec, Mapping) and isinstance(status, Mapping)
    meta = _metadata(doc.get("metadata"))
    meta.pop("annotations", None)  # nothing of the mesh's, and often large
    return {
        "apiVersion": doc.get("apiVersion", "v1"),
        "kind": "Pod",
        "metadata": meta,
        "spec": {
            k: spec[k] for k in ("serviceAccountName", "nodeName", "hostNetwork") if k in spec
        },
        "status": {
            k: copy.deepcopy(status[k]) for k in ("phase", "podIP", "podIPs") if k in status
        },
    }


def _slice(doc: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {
        "apiVersion": doc.get("apiVersion"),
        "kind": "EndpointSlice",
        "metadata": _metadata(doc.get("metadata")),
        "addressType": doc.get("addressType", "IPv4"),
    }
    for key in ("ports", "endpoints"):
        if key in doc:
            out[key] = copy.deepcopy(doc[key])
    return out


def strip(doc: Mapping[str, Any]) -> dict[str, Any]:
    """``doc`` without what the API server adds: metadata reduced to name, namespace, labels
    and annotations (less kubectl's copy); no status (a Pod keeps its phase and addresses);
    Pods reduced to their identity, node and addresses."""
    kind = doc.get("kind")
    if kind == "Pod":
        return _pod(doc)
    if kind == "EndpointSlice":
        return _slice(doc)
    out: dict[str, Any] = {"apiVersion": doc.get("apiVersion"), "kind": kind}
    out["metadata"] = _metadata(doc.get("metadata"))
    for key, value in doc.items():
        if key not in ("apiVersion", "kind", "metadata", "status"):
            out[key] = copy.deepcopy(value)
    return out


def key(doc: Mapping[str, Any]) -> tuple[str, str, str]:
    """(kind, namespace, name): the order a snapshot writes objects in."""
    meta = doc.get("metadata") if isinstance(doc.get("metadata"), Mapping) else {}
    assert isinstance(meta, Mapping)
    return (str(doc.get("kind")), str(meta.get("namespace") or ""), str(meta.get("name") or ""))
