"""The suite's only door to the cluster: the official ``kubernetes`` client, used raw.

Everything goes through the API server the kubeconfig names (``KUBECONFIG``, else
``~/.kube/config``, or ``--kubeconfig``/``--context``): objects are written by server-side
apply (one field manager, so a changed manifest replaces what the suite wrote before), and the
test app in a pod is reached through the API server's pod proxy
(``/api/v1/namespaces/NS/pods/POD:PORT/proxy/PATH``). The runner never opens a connection to a
pod, a Service or a node itself, so it runs from anywhere the API server can be reached.

Only the few resources the suite writes are known (``RESOURCES``); a path for any object is
built from its apiVersion and kind. The client is thread-safe (one urllib3 pool), so the cases
running in parallel share one ``Kube``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import urllib3
from kubernetes import client, config
from kubernetes.config.config_exception import ConfigException

__all__ = ["Kube", "KubeError", "Unreachable", "resource_path"]

FIELD_MANAGER = "smi-conformance"

# kind -> (plural, namespaced); the API group and version come from the object's apiVersion
RESOURCES: dict[str, tuple[str, bool]] = {
    "Namespace": ("namespaces", False),
    "ServiceAccount": ("serviceaccounts", True),
    "Service": ("services", True),
    "ConfigMap": ("configmaps", True),
    "Deployment": ("deployments", True),
    "TrafficTarget": ("traffictargets", True),
    "HTTPRouteGroup": ("httproutegroups", True),
    "TCPRoute": ("tcproutes", True),
    "UDPRoute": ("udproutes", True),
    "TrafficSplit": ("trafficsplits", True),
    "HTTPRoute": ("httproutes", True),
    "GRPCRoute": ("grpcroutes", True),
    "CustomResourceDefinition": ("customresourcedefinitions", False),
}


class KubeError(Exception):
    """The API server refused a request (the message has the verb, path, status and reason)."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


class Unreachable(KubeError):
    """No kubeconfig, or the API server does not answer."""


def resource_path(api_version: str, kind: str, namespace: str | None, name: str = "") -> str:
    """``/api/v1/namespaces/ns/services/name`` or ``/apis/group/version/...`` for a kind."""
    plural, namespaced = RESOURCES[kind]
    base = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
    if namespaced:
        base += f"/namespaces/{namespace}"
    path = f"{base}/{plural}"
    return f"{path}/{name}" if name else path


class Kube:
    """A raw client of one cluster (``kubeconfig``/``context`` as kubectl reads them)."""

    def __init__(self, kubeconfig: str | None = None, context: str | None = None) -> None:
        configuration = client.Configuration()
        try:
            config.load_kube_config(
                config_file=kubeconfig, context=context, client_configuration=configuration
            )
        except (ConfigException, OSError, TypeError, ValueError) as exc:
            where = kubeconfig or "KUBECONFIG or ~/.kube/config"
            raise Unreachable(f"cannot read the kubeconfig ({where}): {exc}") from None
        configuration.connection_pool_maxsize = 64
        configuration.retries = 0
        self.server = str(configuration.host)
        self.api = client.ApiClient(configuration)

    def close(self) -> None:
        self.api.close()

    # ------------------------------------------------------------------ raw requests

    def request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        query: Sequence[tuple[str, str]] = (),
        content_type: str = "application/json",
        timeout: float = 30,
    ) -> tuple[int, bytes]:
        """One request through the API server: its status and body (no exception on 4xx/5xx)."""
        headers = {"Content-Type": content_type, "Accept": "application/json"}
        method, url, headers, body, _ = self.api.param_serialize(
            method,
            path,
            query_params=list(query),
            header_params=headers,
            body=body,
            auth_settings=["BearerToken"],
        )
        try:
            response = self.api.call_api(
                method, url, header_params=headers, body=body, _request_timeout=timeout
            )
            data = response.read()
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise Unreachable(
                f"{method} {path}: the API server {self.server} did not answer: "
                f"{type(exc).__name__}: {exc}"
            ) from None
        return response.status, bytes(data or b"")

    def json(self, method: str, path: str, **kwargs: Any) -> Any:
        """A request whose answer must be 2xx JSON; KubeError otherwise."""
        status, data = self.request(method, path, **kwargs)
        if not 200 <= status < 300:
            raise KubeError(f"{method} {path}: {status} {_message(data)}", status)
        return json.loads(data) if data.strip() else None

    # ------------------------------------------------------------------ objects

    def apply(self, doc: Mapping[str, Any]) -> None:
        """Server-side apply of one object (created, or updated to exactly this manifest)."""
        meta = doc["metadata"]
        path = resource_path(doc["apiVersion"], doc["kind"], meta.get("namespace"), meta["name"])
        self.json(
            "PATCH",
            path,
            body=dict(doc),
            query=[("fieldManager", FIELD_MANAGER), ("force", "true")],
            content_type="application/apply-patch+yaml",
        )

    def delete(self, api_version: str, kind: str, namespace: str | None, name: str) -> bool:
        """Delete one object (background propagation); False when it was not there."""
        path = resource_path(api_version, kind, namespace, name)
        body = {"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": "Background"}
        status, data = self.request("DELETE", path, body=body)
        if status == 404:
            return False
        if not 200 <= status < 300:
            raise KubeError(f"DELETE {path}: {status} {_message(data)}", status)
        return True

    def get(self, api_version: str, kind: str, namespace: str | None, name: str) -> Any | None:
        path = resource_path(api_version, kind, namespace, name)
        status, data = self.request("GET", path)
        if status == 404:
            return None
        if not 200 <= status < 300:
            raise KubeError(f"GET {path}: {status} {_message(data)}", status)
        return json.loads(data)

    def list_objects(
        self, api_version: str, kind: str, namespace: str | None, selector: str = ""
    ) -> list[dict[str, Any]]:
        path = resource_path(api_version, kind, namespace)
        query = [("labelSelector", selector)] if selector else []
        items: list[dict[str, Any]] = self.json("GET", path, query=query)["items"]
        return items

    def pods(self, namespace: str, selector: str) -> list[dict[str, Any]]:
        path = f"/api/v1/namespaces/{namespace}/pods"
        items = self.json("GET", path, query=[("labelSelector", selector)])["items"]
        return [p for p in items if p["metadata"].get("deletionTimestamp") is None]

    # ------------------------------------------------------------------ the pod proxy

    def pod_http(
        self,
        namespace: str,
        pod: str,
        port: int,
        method: str,
        path: str,
        *,
        body: Any = None,
        timeout: float = 60,
    ) -> Any:
        """An HTTP request to a pod's port through the API server's proxy; its JSON answer."""
        proxied = f"/api/v1/namespaces/{namespace}/pods/{pod}:{port}/proxy{path}"
        return self.json(method, proxied, body=body, timeout=timeout)


def _message(data: bytes) -> str:
    try:
        status = json.loads(data)
    except ValueError:
        return data[:300].decode(errors="replace").strip()
    if isinstance(status, dict):
        return str(status.get("message") or status.get("error") or status)[:300]
    return str(status)[:300]
