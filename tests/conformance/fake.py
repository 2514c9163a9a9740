"""A fake cluster for the runner's tests: namespaces and objects in memory, one ready pod per
Deployment, and the test app's ``/call`` and ``/calls`` answered by a function of the test."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any

from conformance.manifests import APP_LABEL
from conformance.model import Mode


class FakeKube:
    server = "https://fake"

    def __init__(self, answer: Callable[[FakeKube, dict[str, Any]], dict[str, Any]]) -> None:
        self.answer = answer
        self.lock = threading.Lock()
        self.namespaces: set[str] = set()
        self.created: list[str] = []
        self.deleted: list[str] = []
        self.objects: dict[tuple[str, str | None, str], dict[str, Any]] = {}
        self.received: dict[str, int] = {}  # pod -> calls it "received"
        self.changes = 0

    def get(self, api: str, kind: str, ns: str | None, name: str) -> Any:
        if kind == "Namespace":
            return {} if name in self.namespaces else None
        return self.objects.get((kind, ns, name))

    def apply(self, doc: dict[str, Any]) -> None:
        meta = doc["metadata"]
        with self.lock:
            if doc["kind"] == "Namespace":
                self.namespaces.add(meta["name"])
                self.created.append(meta["name"])
            elif doc["kind"] not in ("Deployment", "Service", "ServiceAccount"):
                self.changes += 1
            self.objects[(doc["kind"], meta.get("namespace"), meta["name"])] = doc

    def delete(self, api: str, kind: str, ns: str | None, name: str) -> bool:
        with self.lock:
            if kind == "Namespace":
                self.namespaces.discard(name)
                self.deleted.append(name)
                return True
            self.changes += 1
            return self.objects.pop((kind, ns, name), None) is not None

    def list_objects(self, *args: Any, **kwargs: Any) -> list[dict[str, Any]]:
        return []

    def pods(self, ns: str, selector: str) -> list[dict[str, Any]]:
        return [
            {
                "metadata": {"name": f"{name}-pod", "labels": {APP_LABEL: name}},
                "status": {"containerStatuses": [{"ready": True}]},
            }
            for (kind, n, name) in list(self.objects)
            if kind == "Deployment" and n == ns
        ]

    def pod_http(self, ns: str, pod: str, port: int, method: str, path: str, **kw: Any) -> Any:
        if path == "/call":
            return self.answer(self, kw["body"])
        if method == "DELETE":
            self.received[pod] = 0
            return {"cleared": 0}
        return {"calls": [{"path": "/echo"}] * self.received.get(pod, 0)}


class FakeAdapter:
    name = "fake"

    def preflight(self, kube: Any) -> list[str]:
        return []

    def mode(self, kube: Any) -> Mode:
        return Mode.ACL

    def host(self, service: str, namespace: str) -> str:
        return f"{service}.{namespace}.mesh"

    def service_annotations(self, protocol: str) -> dict[str, str]:
        return {}

    def route_port(self, port: int, target_port: int) -> int:
        return target_port

    def wait_meshed(self, kube: Any, services: Sequence[Any], until: float, stop: Any) -> None:
        return None

    def testapp_image(self, kube: Any) -> tuple[str, str]:
        return "testapp", "Never"


def results(
    n: int,
    *,
    status: int | None = 200,
    pod: str | None = "b-pod",
    error: str | None = None,
    reason: str | None = None,
) -> dict[str, Any]:
    one = {"status": status, "pod": pod, "error": error, "reason": reason}
    return {"results": [dict(one) for _ in range(n)]}
