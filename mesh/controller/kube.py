"""The Kubernetes provider: list+watch into the store, shadow Services and Events out.

One task per resource (Services, EndpointSlices, Pods, each SMI kind at its served version, and
Gateway API's HTTPRoute and GRPCRoute) runs list -> watch from the list's resourceVersion -> on
``410 Gone`` relist -> on any failure (an error answer included) reconnect with exponential
backoff. HTTPRoute and GRPCRoute are optional: while their CRDs are not installed the API server
answers 404 (403 when an older ClusterRole lacks them), which reads as none of them (the config
is built without them) and is listed again every ``CRD_RECHECK`` seconds, so installing Gateway
API later needs no restart. The controller builds no config until every kind was listed once.
Responses are read raw (``_preload_content=False``), so the store holds exactly the JSON the API
server sent, as the manifests directory holds YAML.

With mTLS or GAMMA capture on, one more task lists and watches the node proxies' own pods (the
proxies' ServiceAccount's namespace, narrowed by their label), stored as kind ``ProxyPod``
beside the workloads' Pods, never among them: their tunnel addresses (``settings.mtls.proxies``,
chosen by mesh.core.topology.tunnel_addresses) and pod IPs (``settings.capture.proxies``, where
the capture agents redirect to) change the config like any other object.

Publishing a config reconciles the shadow Services (create, patch, delete) and turns new
per-object errors into Kubernetes Events on the offending objects.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

import aiohttp
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from mesh.controller.controller import Controller
from mesh.core.config import MeshConfig
from mesh.core.errors import ObjectError, ObjectRef
from mesh.core.model import PROXY_NAME, PROXY_NAME_LABEL, MtlsMode, Settings
from mesh.core.shadow import (
    SHADOW_LABEL,
    assignments_from_shadows,
    reversible,
    shadow_services,
)
from mesh.core.topology import Topology

log = logging.getLogger("simmesh.controller.kube")
COMPONENT = "simmesh-controller"
MAX_EVENTS_PER_BUILD = 200
SHADOW_CONCURRENCY = 16  # API requests in flight while reconciling shadow Services


@dataclass(frozen=True)
class Resource:
    kind: str
    api_version: str
    lister: Callable[..., Awaitable[Any]]
    namespaced: bool = True
    optional: bool = False  # its CRD may not be installed: a 404 reads as none of them
    # stored as this kind, whatever the namespace (ProxyPod: the proxies' namespace is never
    # a watched one, and its pods are not the mesh's workloads)
    own_kind: bool = False


CRD_RECHECK = 30.0  # seconds between lists of an optional kind whose CRD is not installed
PROXY_SELECTOR = f"{PROXY_NAME_LABEL}={PROXY_NAME}"  # narrows the list; the core decides


class Observer(Protocol):
    """Sees the watched objects as they arrive, beside the store (the route status writer
    keeps the routes' current status from them)."""

    def listed(self, kind: str, docs: list[dict[str, Any]]) -> None: ...

    def observe(self, kind: str, event: str, doc: dict[str, Any]) -> None: ...


def resources(api: client.ApiClient, settings: Settings | None = None) -> list[Resource]:
    core = client.CoreV1Api(api)
    discovery = client.DiscoveryV1Api(api)
    custom = client.CustomObjectsApi(api)

    def crd(group: str, version: str, plural: str) -> Callable[..., Awaitable[Any]]:
        def call(**kwargs: Any) -> Awaitable[Any]:
            return custom.list_cluster_custom_object(group, version, plural, **kwargs)

        return call

    extra: list[Resource] = []
    if settings is not None and (settings.mtls is not MtlsMode.OFF or settings.capture):
        # the node proxies' own pods: their tunnel addresses (settings.mtls.proxies) and
        # their IPs (settings.capture.proxies)
        namespace, _ = settings.proxy_account

        def proxy_pods(**kwargs: Any) -> Awaitable[Any]:
            return core.list_namespaced_pod(namespace, label_selector=PROXY_SELECTOR, **kwargs)

        extra.append(Resource("ProxyPod", "v1", proxy_pods, own_kind=True))
    return [
        Resource("Service", "v1", core.list_service_for_all_namespaces),
        Resource(
            "EndpointSlice", "discovery.k8s.io/v1", discovery.list_endpoint_slice_for_all_namespaces
        ),
        Resource("Pod", "v1", core.list_pod_for_all_namespaces),
        Resource(
            "TrafficTarget",
            "access.smi-spec.io/v1alpha3",
            crd("access.smi-spec.io", "v1alpha3", "traffictargets"),
        ),
        Resource(
            "HTTPRouteGroup",
            "specs.smi-spec.io/v1alpha4",
            crd("specs.smi-spec.io", "v1alpha4", "httproutegroups"),
        ),
        Resource(
            "TCPRoute",
            "specs.smi-spec.io/v1alpha4",
            crd("specs.smi-spec.io", "v1alpha4", "tcproutes"),
        ),
        Resource(
            "UDPRoute",
            "specs.smi-spec.io/v1alpha4",
            crd("specs.smi-spec.io", "v1alpha4", "udproutes"),
        ),
        Resource(
            "TrafficSplit",
            "split.smi-spec.io/v1alpha4",
            crd("split.smi-spec.io", "v1alpha4", "trafficsplits"),
        ),
        # Gateway API for mesh (GAMMA): only when Gateway API's CRDs are installed
        Resource(
            "HTTPRoute",
            "gateway.networking.k8s.io/v1",
            crd("gateway.networking.k8s.io", "v1", "httproutes"),
            optional=True,
        ),
        Resource(
            "GRPCRoute",
            "gateway.networking.k8s.io/v1",
            crd("gateway.networking.k8s.io", "v1", "grpcroutes"),
            optional=True,
        ),
        *extra,
    ]


def _body(document: dict[str, Any]) -> Any:
    """A request body as a plain dict: the client serialises dicts as they are, though its
    signatures name the model classes (V1Service, ...), which this module never builds."""
    return document


class Gone(Exception):
    """The watch's resourceVersion is too old (410): relist."""


WATCH_TYPES = ("ADDED", "MODIFIED", "DELETED")


async def _ok(response: Any, what: str) -> None:
    """Raise ApiException for a non-2xx answer. Raw responses (``_preload_content=False``) are
    not checked by the client: an error Status read as a list or a watch event would empty a
    kind in the store or put an object without a name in it (seen when RBAC lagged at start)."""
    if 200 <= response.status <= 299:
        return
    try:
        body = json.loads(await response.read())
        message = body.get("message") if isinstance(body, dict) else None
    except ValueError:
        message = None
    finally:
        response.release()
    raise ApiException(status=response.status, reason=f"{what}: {message or 'no message'}")


class KubeProvider:
    def __init__(
        self, api: client.ApiClient, controller: Controller, *, backoff_max: float = 30.0
    ) -> None:
        self.api = api
        self.controller = controller
        self.settings = controller.settings
        self.backoff_max = backoff_max
        self.synced: set[str] = set()
        self.absent: set[str] = set()  # optional kinds whose CRD is not installed
        self.crd_recheck = CRD_RECHECK
        self.watch_restarts = 0
        self.relists = 0
        self.events = EventReporter(api, controller)
        self.observers: list[Observer] = []

    def _keep(self, doc: dict[str, Any], resource: Resource) -> bool:
        if resource.own_kind:
            doc["kind"] = resource.kind  # a Pod read as ProxyPod (namespaced list: kept)
            return True
        namespace = (doc.get("metadata") or {}).get("namespace") or ""
        return self.settings.watches(namespace)

    async def run(self) -> None:
        watched = resources(self.api, self.settings)
        self.controller.pending_sync.update(r.kind for r in watched)  # no config before all
        tasks = [asyncio.create_task(self._loop(r), name=f"watch-{r.kind}") for r in watched]
        try:
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()

    async def _loop(self, resource: Resource) -> None:
        backoff = 0.2
        version: str | None = None
        while True:
            try:
                if version is None:
                    version = await self._list(resource)
                    self.relists += 1
                version = await self._watch(resource, version)
                backoff = 0.2
            except Gone:
                log.info("%s watch expired (410 Gone): relisting", resource.kind)
                version = None
            except asyncio.CancelledError:
                raise
            except ApiException as exc:
                if exc.status == 410:
                    version = None
                    continue
                if exc.status in (403, 404) and resource.optional:
                    version = None
                    await self._absent(resource, forbidden=exc.status == 403)
                    continue
                log.warning(
                    "%s: API error %s; retrying in %.1fs", resource.kind, exc.status, backoff
                )
                await asyncio.sleep(backoff * (0.5 + random.random()))
                backoff = min(self.backoff_max, backoff * 2)
            except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
                self.watch_restarts += 1
                log.warning(
                    "%s: %s; reconnecting in %.1fs", resource.kind, type(exc).__name__, backoff
                )
                await asyncio.sleep(backoff * (0.5 + random.random()))
                backoff = min(self.backoff_max, backoff * 2)

    async def _absent(self, resource: Resource, *, forbidden: bool) -> None:
        """An optional kind whose CRD is not installed (404), or that the controller may not
        read (403: an older ClusterRole): there are none of them, the config is built without
        them (an optional kind never holds the mesh back), and the list is tried again every
        CRD_RECHECK s."""
        if resource.kind not in self.absent:
            if forbidden:
                log.warning(
                    "%s: the controller may not list %s (its ClusterRole lacks it): read as "
                    "none; listing again every %gs",
                    resource.kind,
                    resource.api_version,
                    self.crd_recheck,
                )
            else:
                log.info(
                    "%s: not served by the API server (%s not installed); listing again every %gs",
                    resource.kind,
                    resource.api_version,
                    self.crd_recheck,
                )
            self.absent.add(resource.kind)
        self.controller.store.replace_kind([resource.kind], [])
        for observer in self.observers:
            observer.listed(resource.kind, [])
        self.synced.add(resource.kind)
        self.controller.pending_sync.discard(resource.kind)
        self.controller.poke()
        await asyncio.sleep(self.crd_recheck)

    async def _list(self, resource: Resource) -> str:
        response = await resource.lister(_preload_content=False)
        await _ok(response, f"list {resource.kind}")
        data = json.loads(await response.read())
        docs = []
        for item in data.get("items") or []:
            item.setdefault("kind", resource.kind)
            item.setdefault("apiVersion", resource.api_version)
            if self._keep(item, resource):
                docs.append(item)
        self.controller.store.replace_kind([resource.kind], docs)
        for observer in self.observers:
            observer.listed(resource.kind, docs)
        if resource.kind in self.absent:
            log.info("%s: served now; listed and watched", resource.kind)
            self.absent.discard(resource.kind)
        self.synced.add(resource.kind)
        self.controller.pending_sync.discard(resource.kind)
        self.controller.poke()
        return str((data.get("metadata") or {}).get("resourceVersion") or "")

    async def _watch(self, resource: Resource, version: str) -> str:
        response = await resource.lister(
            watch=True,
            resource_version=version,
            allow_watch_bookmarks=True,
            timeout_seconds=240,
            _preload_content=False,
        )
        await _ok(response, f"watch {resource.kind}")
        store = self.controller.store
        try:
            async for line in response.content:
                if not line.strip():
                    continue
                event = json.loads(line)
                kind, obj = event.get("type"), event.get("object") or {}
                if kind == "ERROR":
                    if obj.get("code") == 410:
                        raise Gone()
                    raise ValueError(f"watch error: {obj.get('message')}")
                version = str((obj.get("metadata") or {}).get("resourceVersion") or version)
                if kind == "BOOKMARK":
                    continue
                if kind not in WATCH_TYPES:
                    raise ValueError(f"watch: not an event: {line[:200]!r}")
                obj.setdefault("kind", resource.kind)
                obj.setdefault("apiVersion", resource.api_version)
                if not self._keep(obj, resource):
                    continue
                if kind == "DELETED":
                    store.delete(obj)
                else:
                    store.put(obj)
                for observer in self.observers:
                    observer.observe(resource.kind, kind, obj)
                self.controller.poke()
        finally:
            response.release()
        return version

    # -- shadow Services ------------------------------------------------------------------

    async def existing_shadows(self) -> list[dict[str, Any]]:
        core = client.CoreV1Api(self.api)
        # Unparsed (_preload_content=False): the raw aiohttp response, not a V1ServiceList.
        response: Any = await core.list_namespaced_service(
            self.settings.mesh_namespace,
            label_selector=f"{SHADOW_LABEL}=true",
            _preload_content=False,
        )
        return list(json.loads(await response.read()).get("items") or [])

    async def load_port_assignments(self) -> None:
        """Stateless restarts: TCP/UDP listeners as the existing shadows say."""
        try:
            shadows = await self.existing_shadows()
        except ApiException as exc:
            if exc.status != 404:
                raise
            shadows = []
        self.controller.previous_ports = assignments_from_shadows(shadows)
        log.info(
            "read %d port assignments from %d shadow Services",
            len(self.controller.previous_ports),
            len(shadows),
        )

    async def ensure_namespace(self) -> None:
        """Create the mesh namespace when it is missing (a Helm install already made it, and
        then the controller needs no right to create namespaces)."""
        core = client.CoreV1Api(self.api)
        name = self.settings.mesh_namespace
        try:
            await core.read_namespace(name)
            return
        except ApiException as exc:
            if exc.status != 404:
                raise
        try:
            await core.create_namespace(_body({"metadata": {"name": name}}))
        except ApiException as exc:
            if exc.status != 409:
                raise

    async def reconcile_shadows(self, config: MeshConfig, topology: Topology) -> None:
        del topology
        core = client.CoreV1Api(self.api)
        namespace = self.settings.mesh_namespace
        desired = shadow_services(config, mesh_namespace=namespace)
        existing = {s["metadata"]["name"]: s for s in await self.existing_shadows()}
        limit = asyncio.Semaphore(SHADOW_CONCURRENCY)

        async def apply(name: str, shadow: dict[str, Any]) -> None:
            async with limit:
                await self._apply_shadow(core, namespace, name, shadow, existing.get(name))

        await asyncio.gather(*(apply(n, s) for n, s in desired.items()))
        stale = existing.keys() - desired.keys()

        async def delete(name: str) -> None:
            async with limit:
                try:
                    await core.delete_namespaced_service(name, namespace)
                except ApiException as exc:
                    if exc.status != 404:
                        log.warning("shadow %s: delete failed: %s", name, exc.reason)

        await asyncio.gather(*(delete(n) for n in sorted(stale)))

    async def _apply_shadow(
        self,
        core: client.CoreV1Api,
        namespace: str,
        name: str,
        shadow: dict[str, Any],
        current: dict[str, Any] | None,
    ) -> None:
        if current is None:
            try:
                await core.create_namespaced_service(namespace, _body(shadow))
            except ApiException as exc:
                if exc.status != 409:
                    log.warning("shadow %s: create failed: %s", name, exc.reason)
        elif _differs(current, shadow):
            patch = {
                "metadata": {
                    "labels": shadow["metadata"]["labels"],
                    "annotations": shadow["metadata"]["annotations"],
                },
                "spec": {
                    k: shadow["spec"][k] for k in ("selector", "ports", "internalTrafficPolicy")
                },
            }
            try:
                await core.patch_namespaced_service(name, namespace, patch)
            except ApiException as exc:
                log.warning("shadow %s: patch failed: %s", name, exc.reason)

    # -- Events -----------------------------------------------------------------------------

    async def report_errors(self, config: MeshConfig, topology: Topology) -> None:
        del config
        errors = list(topology.errors)
        for key in topology.services:
            namespace, _, name = key.partition("/")
            if not reversible(namespace, name):
                errors.append(
                    ObjectError(
                        ObjectRef("Service", namespace, name),
                        "metadata.name",
                        f"{name}.{namespace} is too long for the mesh zone's DNS rewrite; its "
                        "shadow Service gets a hashed name and is reachable by that name only",
                    )
                )
        await self.events.report(errors)


def _differs(current: dict[str, Any], desired: dict[str, Any]) -> bool:
    spec = current.get("spec") or {}
    ports = [
        {k: p.get(k) for k in ("name", "port", "targetPort", "protocol")}
        for p in spec.get("ports") or []
    ]
    meta = current.get("metadata") or {}
    return (
        ports != desired["spec"]["ports"]
        or spec.get("selector") != desired["spec"]["selector"]
        or spec.get("internalTrafficPolicy") != "Local"
        or (meta.get("annotations") or {}).get("simmesh.io/shadow-of")
        != desired["metadata"]["annotations"]["simmesh.io/shadow-of"]
    )


class EventReporter:
    """Kubernetes Events for per-object errors: one per new (object, field, message)."""

    def __init__(self, api: client.ApiClient, controller: Controller) -> None:
        self.api = api
        self.controller = controller
        self.reported: set[ObjectError] = set()

    async def report(self, errors: list[ObjectError]) -> None:
        current = set(errors)
        self.reported &= current
        core = client.CoreV1Api(self.api)
        sent = 0
        for error in sorted(current - self.reported):
            if sent >= MAX_EVENTS_PER_BUILD:
                log.warning(
                    "more than %d new object errors; the rest are only in the topology API",
                    MAX_EVENTS_PER_BUILD,
                )
                break
            try:
                await core.create_namespaced_event(
                    error.ref.namespace or "default", _body(self.event(error))
                )
                sent += 1
            except ApiException as exc:
                log.warning("event for %s: %s", error.ref, exc.reason)
            self.reported.add(error)

    def event(self, error: ObjectError) -> dict[str, Any]:
        ref = error.ref
        entry = self.controller.store.entries.get((ref.kind, ref.namespace, ref.name))
        api_version = entry.api_version if entry is not None else ""
        uid = entry.uid if entry is not None else None
        digest = hashlib.sha256(str(error).encode()).hexdigest()[:10]
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        return {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {
                "name": f"{ref.name[:200]}.{digest}",
                "namespace": ref.namespace or "default",
                "labels": {"app.kubernetes.io/managed-by": "simmesh"},
            },
            "involvedObject": {
                "kind": ref.kind,
                "namespace": ref.namespace or None,
                "name": ref.name,
                "apiVersion": api_version,
                "uid": uid,
            },
            "reason": "InvalidObject",
            "message": f"{error.field}: {error.message}" if error.field else error.message,
            "type": "Warning",
            "source": {"component": COMPONENT},
            "reportingComponent": COMPONENT,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
