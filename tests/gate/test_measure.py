"""What the gate simulates against: the controller's documents (mesh/controller/store.py) and
the proxies' latest window with traffic (mesh/gate/measure.py)."""

from __future__ import annotations

import asyncio

import pytest

from mesh.controller.store import Store
from mesh.gate.measure import Measurer
from mesh.snapshot import exposition
from mesh.snapshot.cluster import ProxyPod
from tests.snapshot import world

PODS = (ProxyPod("proxy-a", "node-a", "10.0.0.1"), ProxyPod("proxy-b", "node-b", "10.0.0.2"))


def test_the_store_keeps_documents_stripped_and_in_step() -> None:
    store = Store()
    docs = world.objects()
    store.put(docs[0])
    assert store.documents is None  # only when asked
    store.keep_documents()
    for doc in docs:
        store.put(doc)
    assert len(store.documents or {}) == len(docs)
    web = (store.documents or {})[("Service", "shop", "web")]
    assert web["metadata"] == {"name": "web", "namespace": "shop"}
    store.delete(docs[0])
    assert ("Service", "shop", "web") not in (store.documents or {})
    store.replace_kind(["Pod"], [])
    assert not any(k[0] == "Pod" for k in store.documents or {})
    store.put({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "x"}})
    assert not any(k[0] == "Deployment" for k in store.documents or {})


async def test_windows_are_differences_and_the_latest_with_traffic_stays() -> None:
    texts, _ = world.metrics(30)
    scrapes = {pod.name: [world.empty_metrics(), texts[pod.node], texts[pod.node]] for pod in PODS}

    async def lister() -> tuple[ProxyPod, ...]:
        return PODS

    async def scraper(pod: ProxyPod) -> exposition.Table | None:
        return exposition.parse(scrapes[pod.name].pop(0))

    measurer = Measurer(lister, scraper, interval=60)
    assert await measurer.tick() is None
    busy = await measurer.tick()
    assert busy is not None and measurer.latest == busy
    assert busy.requests == measurer.latest.requests > 30 * world.WEB_RATE
    assert set(busy.per_node) == {"node-a", "node-b"}
    quiet = await measurer.tick()  # nothing moved: a window without traffic
    assert quiet is not None and quiet.requests == 0
    assert measurer.last is quiet  # the gate simulates both together: the busy one counts
    assert measurer.latest is not None and measurer.latest.requests == busy.requests
    assert measurer.latest.seconds == pytest.approx(busy.seconds + quiet.seconds)


async def test_windows_older_than_the_history_are_left_out() -> None:
    texts, _ = world.metrics(30)
    busy = {pod.name: texts[pod.node] for pod in PODS}
    scrapes = iter([{p.name: world.empty_metrics() for p in PODS}, busy, busy, busy])

    async def lister() -> tuple[ProxyPod, ...]:
        return PODS

    current: dict[str, str] = {}

    async def scraper(pod: ProxyPod) -> exposition.Table | None:
        return exposition.parse(current[pod.name])

    measurer = Measurer(lister, scraper, interval=0.01, history=0.01)
    for _ in range(4):
        current.update(next(scrapes))
        await measurer.tick()
        await asyncio.sleep(0.05)
    assert len(measurer.windows) == 1  # only the last: older ones fell out of the history
    assert measurer.latest is not None and measurer.latest.requests > 0  # the last with traffic
