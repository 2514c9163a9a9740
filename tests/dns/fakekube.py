"""An in-memory API server for the mesh.dns unit tests: objects by path, JSON merge patch,
resourceVersion preconditions (409), label selectors, ClusterIPs for Services, and a hook to
play a concurrent writer. The real one is exercised in tests/k8s/test_dns*.py."""

from __future__ import annotations

import copy
import itertools
from collections.abc import Callable
from typing import Any

from mesh.dns.kube import Json, KubeError, KubeUnreachable

PLURAL_PREFIXES = ("/api/v1/", "/apis/")


def merge(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge(out.get(key), value)
    return out


class FakeKube:
    server = "https://fake:6443"

    def __init__(self, *, version: str = "v1.37.2") -> None:
        self.objects: dict[str, Json] = {}
        self.version = version
        self.writes: list[tuple[str, str]] = []
        self.before_patch: Callable[[str], None] | None = None
        self.unreachable = False
        self.texts: dict[str, tuple[int, str]] = {}  # get_text answers by path (pod proxies)
        self.text_paths: list[str] = []
        self._rv = itertools.count(1)
        self._ips = itertools.count(10)

    # ---- helpers for tests
    def put(self, collection: str, obj: Json) -> Json:
        obj = copy.deepcopy(obj)
        meta = obj.setdefault("metadata", {})
        namespace = _namespace_of(collection)
        if namespace:
            meta["namespace"] = namespace
        meta["resourceVersion"] = str(next(self._rv))
        if collection.endswith("/services"):
            obj.setdefault("spec", {}).setdefault("clusterIP", f"10.96.0.{next(self._ips)}")
        self.objects[f"{collection}/{meta['name']}"] = obj
        return copy.deepcopy(obj)

    def _check(self) -> None:
        if self.unreachable:
            raise KubeUnreachable("GET https://fake:6443: connection refused")

    # ---- the Kube protocol
    async def get(self, path: str) -> Json | None:
        self._check()
        if path == "/version":
            return {"gitVersion": self.version}
        obj = self.objects.get(path)
        return copy.deepcopy(obj) if obj is not None else None

    async def list(self, path: str, *, label_selector: str | None = None) -> list[Json]:
        self._check()
        wanted = dict(p.split("=", 1) for p in label_selector.split(",")) if label_selector else {}
        return [
            copy.deepcopy(obj)
            for key, obj in sorted(self.objects.items())
            if key.rpartition("/")[0] == path
            and (obj["metadata"].get("labels") or {}).items() >= wanted.items()
        ]

    async def create(self, path: str, body: Json) -> Json:
        self._check()
        if f"{path}/{body['metadata']['name']}" in self.objects:
            raise KubeError("POST", path, 409, {"message": "already exists"})
        self.writes.append(("POST", path))
        return self.put(path, body)

    async def merge_patch(self, path: str, body: Json) -> Json:
        self._check()
        if self.before_patch is not None:
            hook, self.before_patch = self.before_patch, None
            hook(path)
        current = self.objects.get(path)
        if current is None:
            raise KubeError("PATCH", path, 404, {"message": "not found"})
        wanted_rv = (body.get("metadata") or {}).get("resourceVersion")
        if wanted_rv is not None and wanted_rv != current["metadata"]["resourceVersion"]:
            raise KubeError("PATCH", path, 409, {"message": "the object has been modified"})
        merged = merge(current, body)
        if merged != current:
            merged["metadata"]["resourceVersion"] = str(next(self._rv))
        self.objects[path] = merged
        self.writes.append(("PATCH", path))
        return copy.deepcopy(merged)

    async def delete(self, path: str) -> bool:
        self._check()
        self.writes.append(("DELETE", path))
        return self.objects.pop(path, None) is not None

    async def get_text(self, path: str) -> tuple[int, str]:
        self._check()
        self.text_paths.append(path)
        if path in self.texts:
            return self.texts[path]
        return 503, '{"kind": "Status", "message": "no endpoints available for service"}'


def _namespace_of(collection: str) -> str:
    parts = collection.split("/")
    return parts[parts.index("namespaces") + 1] if "namespaces" in parts[:-1] else ""
