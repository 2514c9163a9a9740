"""What a snapshot reads from a live cluster, through the API server only.

The objects the mesh reads (mesh/snapshot/objects.py: every namespace the mesh watches, Secrets
never), the mesh settings (the ``simmesh-settings`` ConfigMap's mesh.yaml) and the node
proxies' ``/metrics``, scraped through the API server's pod proxy subresource
(``/api/v1/namespaces/NS/pods/NAME:9901/proxy/metrics``), so no port-forward and no route to
the pod network is needed: what a kubeconfig that may ``get pods/proxy`` in the mesh namespace
can do. Every failure is a :class:`SnapshotError` with one line naming what is missing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from mesh.core.errors import InvalidObject
from mesh.core.model import Settings
from mesh.core.parse import parse_settings
from mesh.dns.kube import ApiKube, KubeError, KubeUnreachable
from mesh.documents import DocumentError, load_yaml
from mesh.snapshot.exposition import ExpositionError, Table, parse
from mesh.snapshot.objects import KINDS, strip

PROXY_SELECTOR = "app.kubernetes.io/name=simmesh-proxy"
SETTINGS_CONFIGMAP = "simmesh-settings"
ADMIN_PORT = 9901


class SnapshotError(Exception):
    """The snapshot cannot be taken (exit code 2); the message is one line."""


@dataclass(frozen=True)
class ProxyPod:
    name: str
    node: str
    ip: str


@dataclass(frozen=True)
class Mesh:
    settings: Settings
    settings_text: str  # mesh.yaml as the ConfigMap holds it
    proxies: tuple[ProxyPod, ...]


async def installed(kube: ApiKube, namespace: str) -> Mesh:
    """The mesh in ``namespace``: its settings and running proxies, or a SnapshotError."""
    try:
        if await kube.get(f"/api/v1/namespaces/{namespace}") is None:
            raise SnapshotError(
                f"no namespace {namespace}: simmesh is not installed there (--namespace)"
            )
        config = await kube.get(f"/api/v1/namespaces/{namespace}/configmaps/{SETTINGS_CONFIGMAP}")
        if config is None:
            raise SnapshotError(
                f"no ConfigMap {namespace}/{SETTINGS_CONFIGMAP}: simmesh is not installed in "
                f"{namespace} (helm install simmesh charts/simmesh -n {namespace})"
            )
        text = str((config.get("data") or {}).get("mesh.yaml") or "")
        settings = _settings(text, namespace)
        proxies = await proxy_pods(kube, namespace)
    except KubeUnreachable as exc:
        raise SnapshotError(f"cannot reach the API server: {exc}") from None
    except KubeError as exc:
        raise SnapshotError(str(exc)) from None
    if not proxies:
        raise SnapshotError(
            f"no running simmesh proxy in {namespace} ({PROXY_SELECTOR}): nothing to measure"
        )
    return Mesh(settings, text, proxies)


def _settings(text: str, namespace: str) -> Settings:
    where = f"ConfigMap {namespace}/{SETTINGS_CONFIGMAP}: mesh.yaml"
    try:
        return parse_settings(load_yaml(text, name=where) or {})
    except DocumentError as exc:
        raise SnapshotError(str(exc)) from None
    except InvalidObject as exc:
        raise SnapshotError(f"{where}: {exc.field}: {exc.message}") from None


async def proxy_pods(kube: ApiKube, namespace: str) -> tuple[ProxyPod, ...]:
    """The running proxy pods (a terminating one still counts: it still serves)."""
    items = await kube.list(f"/api/v1/namespaces/{namespace}/pods", label_selector=PROXY_SELECTOR)
    out = []
    for pod in items:
        status, spec = pod.get("status") or {}, pod.get("spec") or {}
        if status.get("phase") == "Running" and status.get("podIP") and spec.get("nodeName"):
            out.append(ProxyPod(pod["metadata"]["name"], spec["nodeName"], status["podIP"]))
    return tuple(sorted(out, key=lambda p: p.name))


async def scrape(kube: ApiKube, namespace: str, pod: ProxyPod) -> Table | None:
    """One proxy's metrics through the API server's pod proxy (None when it does not answer)."""
    path = f"/api/v1/namespaces/{namespace}/pods/{pod.name}:{ADMIN_PORT}/proxy/metrics"
    try:
        status, text = await kube.get_text(path)
    except KubeUnreachable as exc:
        raise SnapshotError(f"cannot reach the API server: {exc}") from None
    if status == 403:
        raise SnapshotError(
            f"GET {path}: forbidden: the kubeconfig may not get pods/proxy in {namespace}"
        )
    if status != 200:
        return None
    try:
        return parse(text)
    except ExpositionError:
        return None


async def scrape_all(
    kube: ApiKube, namespace: str, pods: tuple[ProxyPod, ...]
) -> dict[ProxyPod, Table]:
    tables = await asyncio.gather(*(scrape(kube, namespace, p) for p in pods))
    return {p: t for p, t in zip(pods, tables, strict=True) if t is not None}


async def read_objects(kube: ApiKube, settings: Settings) -> tuple[list[dict[str, Any]], list[str]]:
    """Every object of the kinds the mesh reads in the namespaces it watches, stripped; and
    warnings (a kind whose CRD is not installed)."""
    docs: list[dict[str, Any]] = []
    warnings = []
    for kind in KINDS:
        try:
            status, body = await kube.request("GET", kind.path())
        except KubeUnreachable as exc:
            raise SnapshotError(f"cannot reach the API server: {exc}") from None
        if status == 404:
            warnings.append(f"no {kind.kind} objects: {kind.api_version} is not served")
            continue
        if not 200 <= status < 300 or not isinstance(body, Mapping):
            raise SnapshotError(str(KubeError("GET", kind.path(), status, body)))
        for item in body.get("items") or []:
            item.setdefault("kind", kind.kind)
            item.setdefault("apiVersion", kind.api_version)
            namespace = (item.get("metadata") or {}).get("namespace") or ""
            if settings.watches(namespace):
                docs.append(strip(item))
    return docs, warnings
