"""``simmesh prepare`` and ``simmesh cleanup``: find the cluster's DNS, edit it, restart it.

Why: the mesh is opt-in by DNS name, so the cluster's DNS must answer ``<svc>.<ns>.<zone>``.
Clusters differ (MAESH.md, "GKE without CoreDNS" and AKS), so :func:`detect` looks at what
``kube-system`` holds, in this order:

1. ConfigMap ``coredns-custom`` (AKS, k3s): the block goes in its ``simmesh.server`` key;
2. ConfigMap ``coredns`` with a ``Corefile`` key (kubeadm, EKS, kind, k3s): the marked block is
   appended to the Corefile;
3. Deployment or ConfigMap ``kube-dns`` (GKE): a mesh-owned CoreDNS is deployed in the mesh
   namespace and kube-dns's ``stubDomains`` delegates the zone to its Service IP.

How: every edit is computed by the pure functions of :mod:`mesh.dns.corefile` and
:mod:`mesh.dns.kubedns` and written with the resourceVersion it was computed from (a
concurrent writer makes the write fail with 409 and it is recomputed). Only a real change is
written, and only then are the DNS pods restarted, by setting the pod template annotation
``simmesh.io/restartedAt`` of their Deployment: so running prepare twice equals running it once.
``cleanup`` removes every trace from all three places whatever the detected mode, deletes the
shadow Services and the mesh-owned CoreDNS. Problems raise :class:`DnsError` naming the object
and what was expected.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mesh.core.netpol import POLICY_LABEL
from mesh.core.shadow import MANAGED_BY, SHADOW_LABEL
from mesh.dns import corefile as cf
from mesh.dns import kubedns as kd
from mesh.dns.kube import (
    Json,
    Kube,
    KubeError,
    cluster_scoped,
    collection_of,
    configmap,
    deployment,
    describe,
    namespaced,
    path_of,
    service,
)

KUBE_SYSTEM = "kube-system"
NETWORKING = "networking.k8s.io/v1"
COREDNS = "coredns"
COREDNS_CUSTOM = "coredns-custom"
KUBE_DNS = "kube-dns"
COREFILE_KEY = "Corefile"
RESTART_ANNOTATION = "simmesh.io/restartedAt"
MIN_COREDNS = (1, 3, 0)
ATTEMPTS = 5

Report = Callable[[str], None]
Change = Callable[[kd.ConfigMapParts | None], kd.ConfigMapParts | None]


class DnsError(Exception):
    """prepare, cleanup or check cannot go on; the message names the object and the fix."""


class Mode(enum.Enum):
    COREDNS = "CoreDNS"
    COREDNS_CUSTOM = "CoreDNS (coredns-custom)"
    KUBE_DNS = "kube-dns"


@dataclass(frozen=True, slots=True)
class ClusterDns:
    """What :func:`detect` found: the mode, the ConfigMap edited and the Deployment restarted
    (either may be None: kube-dns's ConfigMap is created when missing, and a DNS that is not a
    Deployment is not restarted)."""

    mode: Mode
    configmap_name: str
    configmap: Json | None
    deployment: Json | None


# --------------------------------------------------------------------------- detection


async def detect(kube: Kube) -> ClusterDns:
    custom = await kube.get(configmap(KUBE_SYSTEM, COREDNS_CUSTOM))
    if custom is not None:
        dep = await coredns_deployment(kube)
        return ClusterDns(Mode.COREDNS_CUSTOM, COREDNS_CUSTOM, custom, dep)
    coredns = await kube.get(configmap(KUBE_SYSTEM, COREDNS))
    if coredns is not None:
        if COREFILE_KEY not in (coredns.get("data") or {}):
            raise DnsError(
                f"ConfigMap {KUBE_SYSTEM}/{COREDNS}: data.{COREFILE_KEY} is missing; expected "
                "the CoreDNS configuration there"
            )
        return ClusterDns(Mode.COREDNS, COREDNS, coredns, await coredns_deployment(kube))
    return await _detect_kube_dns(kube)


async def _detect_kube_dns(kube: Kube) -> ClusterDns:
    dep = await kube.get(deployment(KUBE_SYSTEM, KUBE_DNS))
    cm = await kube.get(configmap(KUBE_SYSTEM, KUBE_DNS))
    if dep is not None and _runs_coredns(dep):
        raise DnsError(
            f"Deployment {KUBE_SYSTEM}/{KUBE_DNS} runs CoreDNS but ConfigMap "
            f"{KUBE_SYSTEM}/{COREDNS} was not found; expected its Corefile there"
        )
    if dep is None and cm is None:
        raise DnsError(
            f"no cluster DNS found in namespace {KUBE_SYSTEM}: expected ConfigMap {COREDNS} "
            f"(with a {COREFILE_KEY} key), ConfigMap {COREDNS_CUSTOM} (AKS) or Deployment "
            f"{KUBE_DNS}"
        )
    return ClusterDns(Mode.KUBE_DNS, KUBE_DNS, cm, dep)


async def coredns_deployment(kube: Kube) -> Json | None:
    """Deployment kube-system/coredns, else the one labelled k8s-app=kube-dns running CoreDNS."""
    dep = await kube.get(deployment(KUBE_SYSTEM, COREDNS))
    if dep is not None:
        return dep
    labelled = await kube.list(deployment(KUBE_SYSTEM), label_selector="k8s-app=kube-dns")
    return next((d for d in labelled if _runs_coredns(d)), None)


def _images(dep: Json) -> list[str]:
    containers = ((dep.get("spec") or {}).get("template") or {}).get("spec", {}).get("containers")
    return [str(c.get("image", "")) for c in containers or []]


def _runs_coredns(dep: Json) -> bool:
    return any("coredns" in image for image in _images(dep))


def coredns_version(dep: Json) -> tuple[int, int, int] | None:
    """The CoreDNS version in the image tag (``...coredns:v1.11.3`` -> (1, 11, 3)), if any."""
    for image in _images(dep):
        tag = image.split("@")[0].rpartition(":")[2] if "coredns" in image else ""
        match = re.match(r"^v?(\d+)\.(\d+)\.(\d+)", tag)
        if match:
            major, minor, patch = (int(g) for g in match.groups())
            return major, minor, patch
    return None


def _require_version(dep: Json | None) -> None:
    version = coredns_version(dep) if dep is not None else None
    if dep is not None and version is not None and version < MIN_COREDNS:
        raise DnsError(
            f"{_dep_name(dep)} runs CoreDNS {'.'.join(map(str, version))}; expected "
            f"{'.'.join(map(str, MIN_COREDNS))} or later (rewrite with answer rules)"
        )


def _dep_name(dep: Json) -> str:
    meta = dep.get("metadata") or {}
    return f"Deployment {meta.get('namespace', KUBE_SYSTEM)}/{meta.get('name')}"


# --------------------------------------------------------------------------- prepare


async def prepare(
    kube: Kube,
    settings: cf.DnsSettings,
    *,
    now: str,
    report: Report,
    image: str = kd.DEFAULT_IMAGE,
) -> ClusterDns:
    """Make the cluster's DNS answer the mesh zone; returns what was found."""
    dns = await detect(kube)
    report(f"cluster DNS: {dns.mode.value} (ConfigMap {KUBE_SYSTEM}/{dns.configmap_name})")
    tell, said = _recording(report)
    if dns.mode is Mode.KUBE_DNS:
        changed = await _prepare_kube_dns(kube, settings, now=now, report=tell, image=image)
    else:
        _require_version(dns.deployment)
        changed = await _prepare_coredns(kube, settings, dns.mode, report=tell)
    if changed:
        await _restart(kube, dns.deployment, now=now, report=tell)
    if not said:
        report("DNS already prepared; nothing changed")
    return dns


async def _prepare_coredns(
    kube: Kube, settings: cf.DnsSettings, mode: Mode, *, report: Report
) -> bool:
    if mode is Mode.COREDNS_CUSTOM:
        changed = await update_configmap(
            kube, KUBE_SYSTEM, COREDNS_CUSTOM, _custom_change(settings)
        )
        changed |= await update_configmap(kube, KUBE_SYSTEM, COREDNS, _corefile_change(None))
        where = f"ConfigMap {KUBE_SYSTEM}/{COREDNS_CUSTOM}: key {cf.CUSTOM_KEY}"
    else:
        changed = await update_configmap(kube, KUBE_SYSTEM, COREDNS, _corefile_change(settings))
        where = f"ConfigMap {KUBE_SYSTEM}/{COREDNS}: server block"
    if changed:
        report(f"{where} for zone {settings.zone} -> namespace {settings.mesh_namespace} written")
    return changed


def _corefile_change(settings: cf.DnsSettings | None) -> Change:
    """Prepare (settings given) or clean up the Corefile key of a ConfigMap."""

    def change(parts: kd.ConfigMapParts | None) -> kd.ConfigMapParts | None:
        if parts is None or COREFILE_KEY not in parts.data:
            return parts
        text = parts.data[COREFILE_KEY]
        new = cf.prepare(text, settings) if settings else cf.cleanup(text)
        return kd.ConfigMapParts({**parts.data, COREFILE_KEY: new}, parts.annotations)

    return change


def _custom_change(settings: cf.DnsSettings | None) -> Change:
    def change(parts: kd.ConfigMapParts | None) -> kd.ConfigMapParts | None:
        if parts is None:
            return None
        data = (
            cf.prepare_custom(parts.data, settings) if settings else cf.cleanup_custom(parts.data)
        )
        return kd.ConfigMapParts(data, parts.annotations)

    return change


async def _prepare_kube_dns(
    kube: Kube, settings: cf.DnsSettings, *, now: str, report: Report, image: str
) -> bool:
    await ensure_namespace(kube, settings.mesh_namespace, report=report)
    outcomes: dict[str, str] = {}
    for manifest in kd.mesh_coredns_manifests(settings, image=image):
        outcomes[manifest["kind"]] = await apply_owned(kube, manifest, report=report)
    if outcomes["ConfigMap"] == "updated":  # a running mesh CoreDNS must load the new Corefile
        mesh_dep = await kube.get(deployment(settings.mesh_namespace, kd.MESH_COREDNS))
        await _restart(kube, mesh_dep, now=now, report=report)
    ip = await mesh_coredns_ip(kube, settings.mesh_namespace)
    zone = settings.zone
    changed = await update_configmap(
        kube, KUBE_SYSTEM, KUBE_DNS, lambda p: kd.prepare_kubedns(p, zone=zone, server_ip=ip)
    )
    if changed:
        report(f"ConfigMap {KUBE_SYSTEM}/{KUBE_DNS}: stubDomains {zone} -> {ip} written")
    return changed


async def mesh_coredns_ip(kube: Kube, namespace: str) -> str:
    svc = await kube.get(service(namespace, kd.MESH_COREDNS))
    ip = ((svc or {}).get("spec") or {}).get("clusterIP")
    if not ip or ip == "None":
        raise DnsError(
            f"Service {namespace}/{kd.MESH_COREDNS}: expected a ClusterIP for kube-dns's "
            f"stubDomains, found {'no Service' if svc is None else repr(ip)}"
        )
    return str(ip)


async def ensure_namespace(kube: Kube, name: str, *, report: Report) -> None:
    if await kube.get(cluster_scoped("v1", "namespaces", name)) is not None:
        return
    body = {"metadata": {"name": name, "labels": dict(MANAGED_BY)}}
    await kube.create(cluster_scoped("v1", "namespaces"), body)
    report(f"Namespace {name}: created")


async def apply_owned(kube: Kube, manifest: Json, *, report: Report) -> str:
    """Create a mesh-owned object, or bring an existing one to the manifest (merge patch).
    Returns "created", "updated" or "unchanged"."""
    try:
        await kube.create(collection_of(manifest), manifest)
        report(f"{describe(manifest)}: created")
        return "created"
    except KubeError as exc:
        if exc.status != 409:
            raise
    current = await kube.get(path_of(manifest))
    if current is not None and contains(current, manifest):
        return "unchanged"
    await kube.merge_patch(path_of(manifest), manifest)
    report(f"{describe(manifest)}: updated")
    return "updated"


def contains(actual: Any, wanted: Any) -> bool:
    """Whether ``actual`` has every field of ``wanted`` (defaults the server added are fine)."""
    if isinstance(wanted, dict):
        return isinstance(actual, dict) and all(
            k in actual and contains(actual[k], v) for k, v in wanted.items()
        )
    if isinstance(wanted, list):
        return (
            isinstance(actual, list)
            and len(actual) == len(wanted)
            and all(contains(a, w) for a, w in zip(actual, wanted, strict=True))
        )
    return bool(actual == wanted)


# --------------------------------------------------------------------------- cleanup


async def cleanup(kube: Kube, *, mesh_namespace: str, now: str, report: Report) -> None:
    """Remove the mesh from the cluster's DNS (all variants), the shadows, the mesh CoreDNS."""
    tell, said = _recording(report)
    await _cleanup(kube, mesh_namespace=mesh_namespace, now=now, report=tell)
    if not said:
        report("nothing to clean up")


async def _cleanup(kube: Kube, *, mesh_namespace: str, now: str, report: Report) -> None:
    coredns_changed = await update_configmap(kube, KUBE_SYSTEM, COREDNS, _corefile_change(None))
    if coredns_changed:
        report(f"ConfigMap {KUBE_SYSTEM}/{COREDNS}: simmesh server block removed")
    custom_changed = await update_configmap(kube, KUBE_SYSTEM, COREDNS_CUSTOM, _custom_change(None))
    if custom_changed:
        report(f"ConfigMap {KUBE_SYSTEM}/{COREDNS_CUSTOM}: key {cf.CUSTOM_KEY} removed")
    if coredns_changed or custom_changed:
        await _restart(kube, await coredns_deployment(kube), now=now, report=report)
    if await update_configmap(kube, KUBE_SYSTEM, KUBE_DNS, _kubedns_cleanup):
        report(f"ConfigMap {KUBE_SYSTEM}/{KUBE_DNS}: restored (deleted if prepare created it)")
        await _restart(
            kube, await kube.get(deployment(KUBE_SYSTEM, KUBE_DNS)), now=now, report=report
        )
    await delete_shadows(kube, mesh_namespace, report=report)
    await delete_network_policies(kube, report=report)
    await delete_mesh_coredns(kube, mesh_namespace, report=report)


def _kubedns_cleanup(parts: kd.ConfigMapParts | None) -> kd.ConfigMapParts | None:
    return kd.cleanup_kubedns(parts) if parts is not None else None


async def delete_shadows(kube: Kube, namespace: str, *, report: Report) -> int:
    shadows = await kube.list(service(namespace), label_selector=f"{SHADOW_LABEL}=true")
    deleted = 0
    for shadow in shadows:
        deleted += await kube.delete(service(namespace, shadow["metadata"]["name"]))
    if shadows:
        report(f"shadow Services in {namespace}: {deleted} deleted")
    return deleted


async def delete_network_policies(kube: Kube, *, report: Report) -> int:
    """The NetworkPolicies ``controller --network-policies`` wrote, in every namespace."""
    policies = await kube.list(
        cluster_scoped(NETWORKING, "networkpolicies"), label_selector=f"{POLICY_LABEL}=true"
    )
    deleted = 0
    for policy in policies:
        meta = policy["metadata"]
        deleted += await kube.delete(
            namespaced(NETWORKING, "networkpolicies", meta["namespace"], meta["name"])
        )
    if policies:
        report(f"NetworkPolicies (simmesh.io/network-policy): {deleted} deleted")
    return deleted


async def delete_mesh_coredns(kube: Kube, namespace: str, *, report: Report) -> None:
    settings = cf.DnsSettings(mesh_namespace=namespace)
    for manifest in reversed(kd.mesh_coredns_manifests(settings)):
        if await kube.delete(path_of(manifest)):
            report(f"{describe(manifest)}: deleted")


# --------------------------------------------------------------------------- shared steps


async def update_configmap(kube: Kube, namespace: str, name: str, change: Change) -> bool:
    """Read, change, write back with the read resourceVersion (recomputed on a conflict).
    ``change`` gets and returns None for a missing ConfigMap. True when something changed."""
    for _ in range(ATTEMPTS):
        current = await kube.get(configmap(namespace, name))
        before = kd.ConfigMapParts.of(current) if current is not None else None
        try:
            after = change(before)
        except cf.CorefileError as exc:
            raise DnsError(f"ConfigMap {namespace}/{name}: {exc}") from exc
        if after == before:
            return False
        try:
            await _write_configmap(kube, namespace, name, current, after)
            return True
        except KubeError as exc:
            if exc.status != 409:
                raise
    raise DnsError(
        f"ConfigMap {namespace}/{name}: changed by another writer {ATTEMPTS} times while simmesh "
        "was editing it; expected it to settle (run the command again)"
    )


async def _write_configmap(
    kube: Kube, namespace: str, name: str, current: Json | None, after: kd.ConfigMapParts | None
) -> None:
    path = configmap(namespace, name)
    if after is None:
        await kube.delete(path)
        return
    if current is None:
        new = {"name": name, "namespace": namespace, "annotations": dict(after.annotations)}
        await kube.create(configmap(namespace, ""), {"metadata": new, "data": dict(after.data)})
        return
    before = kd.ConfigMapParts.of(current)
    meta: Json = {"resourceVersion": current["metadata"]["resourceVersion"]}
    annotations = _merge_patch(before.annotations, after.annotations)
    if annotations:
        meta["annotations"] = annotations
    patch = {"metadata": meta, "data": _merge_patch(before.data, after.data)}
    await kube.merge_patch(path, patch)


def _merge_patch(old: Any, new: Any) -> dict[str, str | None]:
    """The JSON merge patch from one flat string map to another (None deletes a key)."""
    patch: dict[str, str | None] = {k: v for k, v in new.items() if old.get(k) != v}
    patch.update({k: None for k in old if k not in new})
    return patch


def _recording(report: Report) -> tuple[Report, list[str]]:
    """A report that also keeps what it said (to tell "nothing changed" apart)."""
    said: list[str] = []

    def tell(line: str) -> None:
        said.append(line)
        report(line)

    return tell, said


async def _restart(kube: Kube, dep: Json | None, *, now: str, report: Report) -> None:
    if dep is None:
        report(
            "warning: no DNS Deployment found to restart; CoreDNS's reload plugin picks the "
            "change up once the ConfigMap reaches its pods (about a minute)"
        )
        return
    meta = dep["metadata"]
    patch = {"spec": {"template": {"metadata": {"annotations": {RESTART_ANNOTATION: now}}}}}
    await kube.merge_patch(deployment(meta["namespace"], meta["name"]), patch)
    report(f"{_dep_name(dep)}: restarted ({RESTART_ANNOTATION}={now})")
