"""The Kubernetes provider's list and watch when the API server answers with an error.

Responses are read raw (``_preload_content=False``), which the client does not check. An error
Status (here 403, as when RBAC has not caught up with a fresh install) must be an API error,
retried with backoff, never data: read as a list it would empty the kind in the store; read as
a watch event it put a UDPRoute without a name into the store, an error in every config until
the controller restarted (seen on the kind cluster; tests/cluster caught it).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from kubernetes_asyncio.client.exceptions import ApiException

from mesh.controller.controller import Controller
from mesh.controller.kube import KubeProvider, Resource
from mesh.core.model import Settings

FORBIDDEN = {
    "kind": "Status",
    "apiVersion": "v1",
    "metadata": {},
    "status": "Failure",
    "message": 'udproutes.specs.smi-spec.io is forbidden: User "x" cannot watch resource',
    "reason": "Forbidden",
    "code": 403,
}
ROUTE = {
    "kind": "UDPRoute",
    "apiVersion": "specs.smi-spec.io/v1alpha4",
    "metadata": {"name": "dns", "namespace": "shop", "resourceVersion": "5"},
    "spec": {"matches": {"ports": [53]}},
}


class FakeResponse:
    def __init__(self, status: int, lines: list[dict[str, Any]]) -> None:
        self.status = status
        self.lines = [json.dumps(line).encode() + b"\n" for line in lines]
        self.released = False

    async def read(self) -> bytes:
        return b"".join(self.lines)

    @property
    def content(self) -> AsyncIterator[bytes]:
        async def lines() -> AsyncIterator[bytes]:
            for line in self.lines:
                yield line

        return lines()

    def release(self) -> None:
        self.released = True


def provider(answers: list[FakeResponse]) -> tuple[KubeProvider, Resource]:
    async def lister(**kwargs: Any) -> FakeResponse:
        return answers.pop(0)

    controller = Controller(Settings())
    controller.store.put(ROUTE)
    return KubeProvider(None, controller), Resource("UDPRoute", ROUTE["apiVersion"], lister)  # type: ignore[arg-type]


def test_a_forbidden_list_is_an_api_error_and_keeps_the_store() -> None:
    kube, resource = provider([FakeResponse(403, [FORBIDDEN])])
    with pytest.raises(ApiException) as caught:
        asyncio.run(kube._list(resource))
    assert caught.value.status == 403 and "forbidden" in str(caught.value.reason)
    assert kube.controller.store.counts() == {"UDPRoute": 1}
    assert "UDPRoute" not in kube.synced


def test_a_forbidden_watch_is_an_api_error_and_puts_nothing() -> None:
    response = FakeResponse(403, [FORBIDDEN])
    kube, resource = provider([response])
    with pytest.raises(ApiException):
        asyncio.run(kube._watch(resource, "5"))
    assert response.released
    assert kube.controller.store.counts() == {"UDPRoute": 1}


def test_a_watch_line_that_is_not_an_event_is_refused() -> None:
    kube, resource = provider([FakeResponse(200, [FORBIDDEN])])
    with pytest.raises(ValueError, match="not an event"):
        asyncio.run(kube._watch(resource, "5"))
    assert kube.controller.store.counts() == {"UDPRoute": 1}


def test_events_after_an_error_free_start_still_apply() -> None:
    added = {**ROUTE, "metadata": {**ROUTE["metadata"], "name": "ntp", "resourceVersion": "6"}}
    events = [{"type": "ADDED", "object": added}, {"type": "DELETED", "object": ROUTE}]
    kube, resource = provider([FakeResponse(200, events)])
    assert asyncio.run(kube._watch(resource, "5")) == "5"
    assert set(kube.controller.store.entries) == {("UDPRoute", "shop", "ntp")}


class BlockingWatch(FakeResponse):
    """A watch that stays open with no events until the test ends."""

    def __init__(self) -> None:
        super().__init__(200, [])

    @property
    def content(self) -> AsyncIterator[bytes]:
        async def lines() -> AsyncIterator[bytes]:
            await asyncio.Event().wait()
            yield b""

        return lines()


def test_no_config_is_built_before_every_kind_was_listed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from mesh.controller import kube as kube_module

    service = {
        "kind": "Service",
        "apiVersion": "v1",
        "metadata": {"name": "web", "namespace": "shop", "resourceVersion": "3"},
        "spec": {"ports": [{"port": 80}], "selector": {"app": "web"}},
    }
    slow_list = asyncio.Event()

    def lister(kind: str, items: list[dict[str, Any]], gate: asyncio.Event | None) -> Any:
        async def call(watch: bool = False, **kwargs: Any) -> FakeResponse:
            if watch:
                return BlockingWatch()
            if gate is not None:
                await gate.wait()
            return FakeResponse(200, [{"items": items, "metadata": {"resourceVersion": "9"}}])

        return Resource(kind, "v1", call)

    monkeypatch.setattr(
        kube_module,
        "resources",
        lambda api, settings: [
            lister("Service", [service], None),
            lister("UDPRoute", [], slow_list),
        ],
    )

    async def body() -> None:
        controller = Controller(Settings(), debounce=0.01, max_delay=0.05)
        provider = KubeProvider(None, controller)  # type: ignore[arg-type]
        tasks = [asyncio.create_task(provider.run()), asyncio.create_task(controller.run())]
        try:
            await asyncio.sleep(0.5)
            assert provider.synced == {"Service"}
            assert controller.current is None and not controller.ready  # nothing published
            slow_list.set()
            for _ in range(100):
                if controller.current is not None:
                    break
                await asyncio.sleep(0.02)
            assert controller.current is not None and controller.pending_sync == set()
            assert "shop/web" in controller.current.topology.services
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    asyncio.run(body())


NOT_FOUND = {
    "kind": "Status",
    "apiVersion": "v1",
    "metadata": {},
    "status": "Failure",
    "message": "the server could not find the requested resource",
    "reason": "NotFound",
    "code": 404,
}


def test_an_optional_kind_without_its_crd_reads_as_none_and_is_listed_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """HTTPRoute and GRPCRoute (GAMMA) are watched only when Gateway API's CRDs are installed:
    a 404 on the list does not hold the config back, and once the CRD is there its routes are
    read without a restart."""
    from mesh.controller import kube as kube_module

    service = {
        "kind": "Service",
        "apiVersion": "v1",
        "metadata": {"name": "web", "namespace": "shop", "resourceVersion": "3"},
        "spec": {"ports": [{"port": 80}], "selector": {"app": "web"}},
    }
    route = {
        "kind": "HTTPRoute",
        "apiVersion": "gateway.networking.k8s.io/v1",
        "metadata": {"name": "r", "namespace": "shop", "resourceVersion": "4"},
        "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": "web"}]},
    }
    installed = asyncio.Event()
    lists = {"HTTPRoute": 0}

    async def services(watch: bool = False, **kwargs: Any) -> FakeResponse:
        if watch:
            return BlockingWatch()
        return FakeResponse(200, [{"items": [service], "metadata": {"resourceVersion": "9"}}])

    async def routes(watch: bool = False, **kwargs: Any) -> FakeResponse:
        if watch:
            return BlockingWatch()
        lists["HTTPRoute"] += 1
        if not installed.is_set():
            return FakeResponse(404, [NOT_FOUND])
        return FakeResponse(200, [{"items": [route], "metadata": {"resourceVersion": "9"}}])

    monkeypatch.setattr(
        kube_module,
        "resources",
        lambda api, settings: [
            Resource("Service", "v1", services),
            Resource("HTTPRoute", route["apiVersion"], routes, optional=True),
        ],
    )

    async def body() -> None:
        controller = Controller(Settings(), debounce=0.01, max_delay=0.05)
        provider = KubeProvider(None, controller)  # type: ignore[arg-type]
        provider.crd_recheck = 0.05
        tasks = [asyncio.create_task(provider.run()), asyncio.create_task(controller.run())]
        try:
            for _ in range(100):
                if controller.current is not None:
                    break
                await asyncio.sleep(0.02)
            assert controller.current is not None and provider.absent == {"HTTPRoute"}
            assert not controller.current.topology.routes
            installed.set()
            for _ in range(200):
                if controller.current.topology.routes:
                    break
                await asyncio.sleep(0.02)
            assert ("shop/web", 80) in controller.current.topology.routes
            assert provider.absent == set() and lists["HTTPRoute"] >= 2
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    asyncio.run(body())
