"""A small kubectl wrapper and the test workloads for the end-to-end tests on the kind cluster.

Everything goes through the real kubectl (built with the cluster, same version) and the
cluster's own kubeconfig. The test app is reached only through the API server's pod proxy
(``/api/v1/namespaces/NS/pods/POD:8080/proxy/...``): the runner never talks to a pod directly,
and a ``/call`` is made from inside the pod, with the pod's mesh identity.
"""

from __future__ import annotations

import json
import subprocess
import time
import urllib.parse
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

HTTP_PORT, TCP_PORT, UDP_PORT = 8080, 9000, 9001


class KubeError(AssertionError):
    """kubectl failed; the message has the command and its stderr."""


@dataclass
class Kube:
    kubectl: Path
    kubeconfig: Path

    def run(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [str(self.kubectl), "--kubeconfig", str(self.kubeconfig), *args],
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and done.returncode != 0:
            raise KubeError(f"kubectl {' '.join(args)} -> {done.returncode}: {done.stderr.strip()}")
        return done

    def json(self, *args: str) -> Any:
        return json.loads(self.run(*args, "-o", "json").stdout)

    def apply(self, docs: Iterable[Mapping[str, Any]]) -> None:
        self.run("apply", "-f", "-", input=yaml.safe_dump_all(list(docs)))

    def delete(self, docs: Iterable[Mapping[str, Any]]) -> None:
        text = yaml.safe_dump_all(list(docs))
        self.run("delete", "--ignore-not-found", "--wait=false", "-f", "-", input=text)

    def raw(self, verb: str, path: str, body: Any = None) -> Any:
        """GET/POST/PUT/DELETE through the API server (kubectl get|create|replace|delete --raw)."""
        command = {"GET": "get", "POST": "create", "PUT": "replace", "DELETE": "delete"}[verb]
        args = [command, "--raw", path]
        if body is not None:
            args += ["-f", "-"]
        out = self.run(*args, input=None if body is None else json.dumps(body)).stdout
        return json.loads(out) if out.strip() else None

    def pods(self, namespace: str, selector: str) -> list[dict[str, Any]]:
        items = self.json("get", "pods", "-n", namespace, "-l", selector)["items"]
        return [p for p in items if p["metadata"].get("deletionTimestamp") is None]

    def pod_names(self, namespace: str, selector: str) -> list[str]:
        return sorted(p["metadata"]["name"] for p in self.pods(namespace, selector))

    def workers(self) -> list[str]:
        """The names of the nodes that are not control planes, sorted."""
        return sorted(
            n["metadata"]["name"]
            for n in self.json("get", "nodes")["items"]
            if "node-role.kubernetes.io/control-plane" not in n["metadata"].get("labels", {})
        )


@dataclass(frozen=True)
class App:
    """One test app pod, reached through the API server's pod proxy."""

    kube: Kube
    namespace: str
    pod: str

    def _path(self, path: str) -> str:
        return f"/api/v1/namespaces/{self.namespace}/pods/{self.pod}:{HTTP_PORT}/proxy{path}"

    def call(self, url: str, **params: Any) -> dict[str, Any]:
        """``GET /call`` from this pod: the results and their summary."""
        query = [("url", url)]
        for key, value in params.items():
            values = value if isinstance(value, list) else [value]
            query += [(key, str(v)) for v in values]
        answer: dict[str, Any] = self.kube.raw(
            "GET", self._path("/call?" + urllib.parse.urlencode(query))
        )
        return answer

    def calls(self) -> list[dict[str, Any]]:
        answer = self.kube.raw("GET", self._path("/calls"))
        return list(answer["calls"])

    def reset(self) -> None:
        self.kube.raw("DELETE", self._path("/calls"))


def wait_for(
    what: str, probe: Callable[[], Any], *, timeout: float = 120, interval: float = 0.5
) -> Any:
    """Poll ``probe`` until it returns something truthy; its value, or AssertionError."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = probe()
        except (KubeError, KeyError, ValueError) as exc:
            last = exc
        else:
            if last:
                return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}; last: {last!r}")


# --------------------------------------------------------------------------- manifests


def namespace(name: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}


def service_account(ns: str, name: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": {"name": name, "namespace": ns},
    }


def testapp(
    ns: str, name: str, *, account: str, node: str, labels: Mapping[str, str], image: str
) -> dict[str, Any]:
    """A Deployment of one test app pod pinned to ``node``, HTTP 8080, TCP 9000, UDP 9001."""
    env = [
        {"name": var, "valueFrom": {"fieldRef": {"fieldPath": field}}}
        for var, field in (
            ("POD_NAME", "metadata.name"),
            ("POD_NAMESPACE", "metadata.namespace"),
            ("NODE_NAME", "spec.nodeName"),
        )
    ]
    container = {
        "name": "testapp",
        "image": image,
        "imagePullPolicy": "Never",
        "args": [
            "testapp",
            *("--http-port", str(HTTP_PORT)),
            *("--tcp-port", str(TCP_PORT)),
            *("--udp-port", str(UDP_PORT)),
        ],
        "env": env,
        "ports": [
            {"name": "http", "containerPort": HTTP_PORT},
            {"name": "tcp", "containerPort": TCP_PORT},
            {"name": "udp", "containerPort": UDP_PORT, "protocol": "UDP"},
        ],
        "readinessProbe": {"httpGet": {"path": "/readyz", "port": HTTP_PORT}, "periodSeconds": 2},
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        },
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": dict(labels)},
            "template": {
                "metadata": {"labels": dict(labels)},
                "spec": {
                    "serviceAccountName": account,
                    "nodeSelector": {"kubernetes.io/hostname": node},
                    "terminationGracePeriodSeconds": 5,
                    "securityContext": {"runAsNonRoot": True, "runAsUser": 65532},
                    "containers": [container],
                },
            },
        },
    }


def service(
    ns: str, name: str, selector: Mapping[str, str], *, protocol: str = "http"
) -> dict[str, Any]:
    """A Service for the test app's HTTP, TCP or UDP port (simmesh.io/traffic-type)."""
    port = {"http": HTTP_PORT, "tcp": TCP_PORT, "udp": UDP_PORT}[protocol]
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": name,
            "namespace": ns,
            "annotations": {"simmesh.io/traffic-type": protocol},
        },
        "spec": {
            "selector": dict(selector),
            "ports": [
                {
                    "name": protocol,
                    "port": port,
                    "targetPort": port,
                    "protocol": "UDP" if protocol == "udp" else "TCP",
                }
            ],
        },
    }


def grant(ns: str, name: str, *, destination: str, source: tuple[str, str]) -> list[dict[str, Any]]:
    """Route objects (named after the grant) and a TrafficTarget letting ``source`` (namespace,
    account) reach the destination account over HTTP (any path and method), TCP and UDP."""
    specs = "specs.smi-spec.io/v1alpha4"
    everything = {"matches": [{"name": "all", "pathRegex": ".*", "methods": ["*"]}]}
    http, tcp, udp = f"{name}-http", f"{name}-tcp", f"{name}-udp"
    return [
        {
            "apiVersion": specs,
            "kind": "HTTPRouteGroup",
            "metadata": _meta(ns, http),
            "spec": everything,
        },
        {
            "apiVersion": specs,
            "kind": "TCPRoute",
            "metadata": _meta(ns, tcp),
            "spec": {"matches": {"ports": []}},
        },
        {
            "apiVersion": specs,
            "kind": "UDPRoute",
            "metadata": _meta(ns, udp),
            "spec": {"matches": {"ports": []}},
        },
        {
            "apiVersion": "access.smi-spec.io/v1alpha3",
            "kind": "TrafficTarget",
            "metadata": _meta(ns, name),
            "spec": {
                "destination": {"kind": "ServiceAccount", "name": destination, "namespace": ns},
                "sources": [{"kind": "ServiceAccount", "name": source[1], "namespace": source[0]}],
                "rules": [
                    {"kind": "HTTPRouteGroup", "name": http, "matches": ["all"]},
                    {"kind": "TCPRoute", "name": tcp},
                    {"kind": "UDPRoute", "name": udp},
                ],
            },
        },
    ]


def split(ns: str, name: str, root: str, weights: Mapping[str, int]) -> dict[str, Any]:
    return {
        "apiVersion": "split.smi-spec.io/v1alpha4",
        "kind": "TrafficSplit",
        "metadata": _meta(ns, name),
        "spec": {
            "service": root,
            "backends": [{"service": svc, "weight": w} for svc, w in weights.items()],
        },
    }


def _meta(ns: str, name: str) -> dict[str, str]:
    return {"name": name, "namespace": ns}
