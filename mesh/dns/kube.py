"""The only Kubernetes I/O of mesh.dns: a few JSON requests by path, over kubernetes_asyncio.

Why a path-based client rather than the typed API classes: prepare, cleanup and check touch a
handful of objects of different kinds, and they need the exact strings the API server stores (a
Corefile is restored byte for byte). Raw JSON in and out (``_preload_content=False``) gives
that, and the :class:`Kube` protocol lets unit tests swap in an in-memory fake.

Requests never raise on an HTTP status: :meth:`ApiKube.request` returns it, and the helpers
turn unexpected ones into :class:`KubeError` naming the method, the path and the server's
message. A connection failure is :class:`KubeUnreachable`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Protocol

import aiohttp
from kubernetes_asyncio import client, config

Json = dict[str, Any]
MERGE_PATCH = "application/merge-patch+json"


class KubeError(Exception):
    """An unexpected answer from the API server."""

    def __init__(self, method: str, path: str, status: int, body: Any) -> None:
        self.status = status
        message = body.get("message") if isinstance(body, dict) else body
        super().__init__(f"{method} {path}: HTTP {status}: {message}")


class KubeUnreachable(Exception):
    """The API server could not be reached (or the kubeconfig could not be loaded)."""


class Kube(Protocol):
    """What prepare, cleanup and check need from the API server."""

    @property
    def server(self) -> str: ...

    async def get(self, path: str) -> Json | None: ...

    async def list(self, path: str, *, label_selector: str | None = None) -> list[Json]: ...

    async def create(self, path: str, body: Json) -> Json: ...

    async def merge_patch(self, path: str, body: Json) -> Json: ...

    async def delete(self, path: str) -> bool: ...

    async def get_text(self, path: str) -> tuple[int, str]: ...


# --------------------------------------------------------------------------- paths


def namespaced(api: str, plural: str, namespace: str, name: str = "") -> str:
    """Path of a namespaced collection or object; api is "v1" or "group/version"."""
    prefix = "/api/v1" if api == "v1" else f"/apis/{api}"
    path = f"{prefix}/namespaces/{namespace}/{plural}"
    return f"{path}/{name}" if name else path


def cluster_scoped(api: str, plural: str, name: str = "") -> str:
    prefix = "/api/v1" if api == "v1" else f"/apis/{api}"
    return f"{prefix}/{plural}/{name}" if name else f"{prefix}/{plural}"


def configmap(namespace: str, name: str) -> str:
    return namespaced("v1", "configmaps", namespace, name)


def deployment(namespace: str, name: str = "") -> str:
    return namespaced("apps/v1", "deployments", namespace, name)


def service(namespace: str, name: str = "") -> str:
    return namespaced("v1", "services", namespace, name)


_PLURALS = {
    "ServiceAccount": "serviceaccounts",
    "ConfigMap": "configmaps",
    "Service": "services",
    "Deployment": "deployments",
    "ClusterRole": "clusterroles",
    "ClusterRoleBinding": "clusterrolebindings",
    "Namespace": "namespaces",
}


def collection_of(manifest: Json) -> str:
    """The collection a manifest is created in (kinds of :data:`_PLURALS` only)."""
    plural = _PLURALS[manifest["kind"]]
    namespace = manifest["metadata"].get("namespace")
    if namespace:
        return namespaced(manifest["apiVersion"], plural, namespace)
    return cluster_scoped(manifest["apiVersion"], plural)


def path_of(manifest: Json) -> str:
    return f"{collection_of(manifest)}/{manifest['metadata']['name']}"


def describe(manifest: Json) -> str:
    """``Kind namespace/name`` (or ``Kind name``) for messages."""
    meta = manifest["metadata"]
    where = f"{meta['namespace']}/{meta['name']}" if meta.get("namespace") else meta["name"]
    return f"{manifest['kind']} {where}"


# --------------------------------------------------------------------------- the real client


class ApiKube:
    """:class:`Kube` over a kubernetes_asyncio ApiClient."""

    def __init__(self, api: client.ApiClient, *, timeout: float = 30.0) -> None:
        self.api = api
        self.timeout = timeout

    @property
    def server(self) -> str:
        return str(self.api.configuration.host)

    async def close(self) -> None:
        await self.api.close()

    async def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        content_type: str = "application/json",
        query: dict[str, str] | None = None,
    ) -> tuple[int, Any]:
        """One request; (status, decoded JSON or text). Raises only KubeUnreachable."""
        status, text = await self._call(method, path, body, content_type, query)
        try:
            return status, json.loads(text) if text else None
        except ValueError:
            return status, text

    async def _call(
        self,
        method: str,
        path: str,
        body: Any,
        content_type: str,
        query: dict[str, str] | None,
    ) -> tuple[int, str]:
        headers = {"Accept": "application/json", "Content-Type": content_type}
        try:
            response = await self.api.call_api(
                path,
                method,
                query_params=list((query or {}).items()),
                header_params=headers,
                body=body,
                auth_settings=["BearerToken"],
                _preload_content=False,
                _request_timeout=self.timeout,
            )
            try:
                return response.status, (await response.read()).decode(errors="replace")
            finally:
                response.release()
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise KubeUnreachable(f"{method} {self.server}{path}: {_reason(exc)}") from exc

    async def _expect(self, method: str, path: str, body: Any = None, **kw: Any) -> Any:
        status, out = await self.request(method, path, body, **kw)
        if not 200 <= status < 300:
            raise KubeError(method, path, status, out)
        return out

    async def get(self, path: str) -> Json | None:
        status, out = await self.request("GET", path)
        if status == 404:
            return None
        if not 200 <= status < 300:
            raise KubeError("GET", path, status, out)
        return dict(out)

    async def list(self, path: str, *, label_selector: str | None = None) -> list[Json]:
        query = {"labelSelector": label_selector} if label_selector else None
        out = await self._expect("GET", path, query=query)
        return list(out.get("items") or [])

    async def create(self, path: str, body: Json) -> Json:
        return dict(await self._expect("POST", path, body))

    async def merge_patch(self, path: str, body: Json) -> Json:
        return dict(await self._expect("PATCH", path, body, content_type=MERGE_PATCH))

    async def delete(self, path: str) -> bool:
        """True when deleted, False when it was not there."""
        status, out = await self.request("DELETE", path)
        if status == 404:
            return False
        if not 200 <= status < 300:
            raise KubeError("DELETE", path, status, out)
        return True

    async def get_text(self, path: str) -> tuple[int, str]:
        return await self._call("GET", path, None, "application/json", None)


def _reason(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


# --------------------------------------------------------------------------- connecting


async def connect(
    kubeconfig: str | None = None, *, context: str | None = None, timeout: float = 30.0
) -> ApiKube:
    """An ApiKube from ``kubeconfig`` ("in-cluster" for the pod's service account), else
    $KUBECONFIG, else ~/.kube/config, else the in-cluster configuration."""
    configuration = client.Configuration()
    source = kubeconfig_source(kubeconfig)
    if source == kubeconfig != "in-cluster" and not Path(source).expanduser().is_file():
        raise KubeUnreachable(f"kubeconfig {source}: no such file")
    try:
        if source == "in-cluster":
            config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
        else:
            await config.load_kube_config(
                config_file=source,
                context=context,
                client_configuration=configuration,
                persist_config=False,
            )
    except (config.ConfigException, OSError, ValueError, KeyError, TypeError) as exc:
        raise KubeUnreachable(f"kubeconfig {source}: {_reason(exc)}") from exc
    return ApiKube(client.ApiClient(configuration), timeout=timeout)


def kubeconfig_source(explicit: str | None) -> str:
    """Which configuration :func:`connect` loads; raises KubeUnreachable when there is none."""
    if explicit:
        return explicit
    env = os.environ.get("KUBECONFIG", "")
    if any(Path(part).expanduser().is_file() for part in env.split(os.pathsep) if part):
        return env
    default = Path("~/.kube/config").expanduser()
    if default.is_file():
        return str(default)
    if os.environ.get("KUBERNETES_SERVICE_HOST"):
        return "in-cluster"
    raise KubeUnreachable(
        "no Kubernetes configuration: pass --kubeconfig, set $KUBECONFIG, create "
        "~/.kube/config, or run inside a cluster"
    )
