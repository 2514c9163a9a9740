"""The Kubernetes provider reads the node proxies' own pods with mTLS on (kind ProxyPod in the
store): only from the proxies' namespace, narrowed by their label, never as workloads; with mTLS
off it does not read them at all. (The decision of which pods count is the core's:
tests/core/test_tunnel_addresses.py; the whole path on a real API server:
tests/k8s/test_controller_k8s.py::test_proxy_tunnel_addresses_follow_the_proxy_pods.)"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from kubernetes_asyncio import client

from mesh.controller.controller import Controller
from mesh.controller.kube import KubeProvider, resources
from mesh.core.model import MtlsMode, Settings
from tests.controller.test_kube_errors import FakeResponse
from tests.core.test_tunnel_addresses import proxy

PERMISSIVE = Settings(mtls=MtlsMode.PERMISSIVE)


def as_api(doc: dict[str, Any]) -> dict[str, Any]:
    """The pod as the API server sends it (kind Pod), with a resourceVersion."""
    out = {**doc, "kind": "Pod", "metadata": {**doc["metadata"], "resourceVersion": "7"}}
    return out


def test_the_proxy_pods_are_read_only_with_mtls_or_capture_on() -> None:
    async def kinds(settings: Settings) -> list[str]:
        api = client.ApiClient()
        try:
            return [r.kind for r in resources(api, settings)]
        finally:
            await api.close()

    assert "ProxyPod" not in asyncio.run(kinds(Settings()))
    on = asyncio.run(kinds(PERMISSIVE))
    assert on.count("ProxyPod") == 1 and on.count("Pod") == 1
    assert "ProxyPod" in asyncio.run(kinds(Settings(mtls=MtlsMode.STRICT)))
    assert asyncio.run(kinds(Settings(capture=True))).count("ProxyPod") == 1  # GAMMA capture


def test_they_are_listed_in_the_proxies_namespace_by_their_label(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[tuple[str, dict[str, Any]]] = []

    async def list_namespaced_pod(self: Any, namespace: str, **kwargs: Any) -> FakeResponse:
        calls.append((namespace, kwargs))
        return FakeResponse(200, [{"items": [], "metadata": {"resourceVersion": "1"}}])

    monkeypatch.setattr(client.CoreV1Api, "list_namespaced_pod", list_namespaced_pod)
    settings = Settings(mtls=MtlsMode.STRICT, proxy_service_account="mesh-sys/node-proxy")

    async def body() -> None:
        api = client.ApiClient()
        try:
            resource = next(r for r in resources(api, settings) if r.kind == "ProxyPod")
            kube = KubeProvider(api, Controller(settings))
            await kube._list(resource)
        finally:
            await api.close()

    asyncio.run(body())
    assert calls == [
        (
            "mesh-sys",
            {"label_selector": "app.kubernetes.io/name=simmesh-proxy", "_preload_content": False},
        )
    ]


def test_a_proxy_pod_is_stored_as_proxypod_and_a_mesh_namespace_pod_is_no_workload() -> None:
    pod = as_api(proxy("simmesh-proxy-x1", node="node-a", ip="10.0.0.1"))
    answers = [
        FakeResponse(200, [{"items": [pod], "metadata": {"resourceVersion": "8"}}]),  # ProxyPod
        FakeResponse(200, [{"items": [pod], "metadata": {"resourceVersion": "8"}}]),  # Pod
    ]

    async def lister(**kwargs: Any) -> FakeResponse:
        return answers.pop(0)

    async def body() -> Controller:
        api = client.ApiClient()
        try:
            controller = Controller(PERMISSIVE)
            kube = KubeProvider(api, controller)
            by_kind = {r.kind: r for r in resources(api, PERMISSIVE)}
            for kind in ("ProxyPod", "Pod"):
                resource = by_kind[kind]
                await kube._list(type(resource)(**{**resource.__dict__, "lister": lister}))
            await controller.rebuild()
            return controller
        finally:
            await api.close()

    controller = asyncio.run(body())
    # the same pod listed as a workload Pod is dropped (the mesh namespace is never watched)
    assert set(controller.store.entries) == {("ProxyPod", "simmesh", "simmesh-proxy-x1")}
    assert controller.current is not None
    mtls = controller.current.config.settings.mtls
    assert mtls is not None and mtls.proxies == {"node-a": "10.0.0.1:15008"}
    assert controller.current.config.identities == {}  # a proxy is nobody's caller


def test_watch_events_add_change_and_remove_an_address() -> None:
    first = as_api(proxy("simmesh-proxy-x1", node="node-a", ip="10.0.0.1"))
    unready = as_api(proxy("simmesh-proxy-x1", node="node-a", ip="10.0.0.1", ready=False))
    unready["metadata"]["resourceVersion"] = "9"
    events = [
        [{"type": "ADDED", "object": first}],
        [{"type": "MODIFIED", "object": unready}],
        [{"type": "MODIFIED", "object": first}, {"type": "DELETED", "object": first}],
    ]

    async def body() -> list[dict[str, str]]:
        api = client.ApiClient()
        seen: list[dict[str, str]] = []
        try:
            controller = Controller(PERMISSIVE)
            kube = KubeProvider(api, controller)
            resource = next(r for r in resources(api, PERMISSIVE) if r.kind == "ProxyPod")
            for batch in events:

                async def lister(batch: Any = batch, **kwargs: Any) -> FakeResponse:
                    return FakeResponse(200, batch)

                await kube._watch(type(resource)(**{**resource.__dict__, "lister": lister}), "1")
                await controller.rebuild()
                assert controller.current is not None
                mtls = controller.current.config.settings.mtls
                assert mtls is not None
                seen.append(dict(mtls.proxies))
        finally:
            await api.close()
        return seen

    assert asyncio.run(body()) == [{"node-a": "10.0.0.1:15008"}, {}, {}]
