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
