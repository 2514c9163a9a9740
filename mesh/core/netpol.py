"""NetworkPolicies that leave the node proxies the only way into meshed pods (issue 17 part 4).

With ``simmesh controller --network-policies`` (chart value ``networkPolicies: true``) the
controller keeps one NetworkPolicy per meshed Service that has a selector: it selects the
Service's pods (``podSelector`` = the Service's ``spec.selector``) for ingress and admits only
the node proxies (the pods labelled ``app.kubernetes.io/name: simmesh-proxy`` in the proxies'
namespace), on every port. Everything else that reaches those pods directly, by pod IP or
through kube-proxy's ClusterIP DNAT, is dropped by the cluster's NetworkPolicy enforcer; a call
through the mesh (``svc.ns.mesh``, the caller's node proxy, then the tunnel or the local hop)
arrives from a proxy pod and is admitted. With ``mtls: strict`` this makes the mesh's
certificate checks the only door: the proxies authorise every caller, and nothing can skip
them.

What the policies do not cover, by design (docs/security.md): egress; Services without a
selector (hand-written EndpointSlices: nothing to select); the kubelet's probes and other
traffic from the pod's own node, which most enforcers admit (kube-router, Calico, Cilium do by
default); and traffic a user admits with a policy of their own (NetworkPolicies add up: an
allow policy for a scraper opens those pods to that scraper).

This module is pure: the policies a topology wants (:func:`network_policies`), and whether one
the cluster holds differs from it (:func:`differs`). The controller lists what exists
(label ``simmesh.io/network-policy``), creates, replaces and deletes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mesh.core.model import PROXY_NAME, PROXY_NAME_LABEL
from mesh.core.topology import Topology

POLICY_LABEL = "simmesh.io/network-policy"
SOURCE_ANNOTATION = "simmesh.io/network-policy-of"
MANAGED_BY = {"app.kubernetes.io/managed-by": "simmesh"}
PREFIX = "simmesh-"
NAMESPACE_LABEL = "kubernetes.io/metadata.name"  # set on every namespace by the API server


def policy_name(service: str) -> str:
    """``simmesh-<service>``: a NetworkPolicy's name is a DNS subdomain (253 characters), so
    every Service name (a DNS label, 63) fits."""
    return f"{PREFIX}{service}"


def network_policies(
    topology: Topology,
    *,
    proxy_namespace: str,
    proxy_labels: Mapping[str, str] | None = None,
    owner: Mapping[str, Any] | None = None,
) -> dict[tuple[str, str], dict[str, Any]]:
    """The NetworkPolicy manifests a topology wants, by (namespace, name), in sorted order.

    ``owner``: an ownerReference (a cluster-scoped object of the release, such as the
    controller's ClusterRole) so that the policies go when the release goes, even when the
    controller is not there to delete them.
    """
    labels = dict(proxy_labels or {PROXY_NAME_LABEL: PROXY_NAME})
    admit = [
        {
            "from": [
                {
                    "namespaceSelector": {"matchLabels": {NAMESPACE_LABEL: proxy_namespace}},
                    "podSelector": {"matchLabels": labels},
                }
            ]
        }
    ]
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for key in sorted(topology.services):
        service = topology.services[key]
        if not service.selector:
            continue  # nothing to select: hand-written EndpointSlices
        metadata: dict[str, Any] = {
            "name": policy_name(service.name),
            "namespace": service.namespace,
            "labels": {**MANAGED_BY, POLICY_LABEL: "true"},
            "annotations": {SOURCE_ANNOTATION: service.name},
        }
        if owner is not None:
            metadata["ownerReferences"] = [dict(owner)]
        out[(service.namespace, metadata["name"])] = {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": metadata,
            "spec": {
                "podSelector": {"matchLabels": dict(service.selector)},
                "policyTypes": ["Ingress"],
                "ingress": admit,
            },
        }
    return out


def differs(current: Mapping[str, Any], desired: Mapping[str, Any]) -> bool:
    """Whether a policy the cluster holds must be patched to ``desired`` (its spec, our label,
    the Service it is for; fields the API server defaults are not compared)."""
    spec = current.get("spec") or {}
    want = desired["spec"]
    meta = current.get("metadata") or {}
    return (
        (spec.get("podSelector") or {}).get("matchLabels") != want["podSelector"]["matchLabels"]
        or bool((spec.get("podSelector") or {}).get("matchExpressions"))
        or list(spec.get("policyTypes") or []) != want["policyTypes"]
        or _ingress(spec.get("ingress")) != want["ingress"]
        or (meta.get("labels") or {}).get(POLICY_LABEL) != "true"
        or (meta.get("annotations") or {}).get(SOURCE_ANNOTATION)
        != desired["metadata"]["annotations"][SOURCE_ANNOTATION]
    )


def _ingress(rules: Any) -> list[dict[str, Any]]:
    """The ingress rules as written by :func:`network_policies` (empty keys dropped)."""
    out: list[dict[str, Any]] = []
    for rule in rules or []:
        peers = []
        for peer in rule.get("from") or []:
            peers.append({k: v for k, v in peer.items() if v})
        kept: dict[str, Any] = {"from": peers}
        if rule.get("ports"):
            kept["ports"] = rule["ports"]
        out.append(kept)
    return out
