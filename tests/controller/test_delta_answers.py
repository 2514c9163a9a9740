"""Delta answers on loopback: the controller's API (mesh.controller.api) answers a poll with
``delta=1`` from a version it still holds with a ConfigDelta, the proxy's config client
(mesh.proxy.sources.ControllerSource) applies it and ends with the controller's full config,
byte for byte; a delta it cannot verify makes it fetch the full config (counted); a version
the controller no longer holds, or a poll without ``delta``, gets the full config."""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
from aiohttp.test_utils import TestClient, TestServer

from mesh.controller.api import make_app
from mesh.controller.controller import Controller
from mesh.core import schema
from mesh.core.config import ConfigParts
from mesh.core.model import Settings
from mesh.proxy.sources import ControllerSource
from tests.core.builders import app, service

RETRY = "simmesh.io/retry-attempts"


class Applied:
    def __init__(self) -> None:
        self.configs: list[schema.MeshConfig] = []
        self.deltas: list[str] = []

    async def apply(self, config: schema.MeshConfig) -> bool:
        self.configs.append(config)
        return True


async def until(check: Any, timeout: float = 10.0) -> None:
    for _ in range(int(timeout / 0.01)):
        if check():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not met in time")


def services(count: int) -> list[dict[str, Any]]:
    return [
        doc
        for i in range(count)
        for doc in app(f"s{i}", ips=[f"10.1.{i}.1", f"10.1.{i}.2"], cluster_ip=f"10.96.0.{i + 1}")
    ]


def test_a_proxy_follows_changes_by_deltas_and_ends_with_the_full_config() -> None:
    async def follow() -> None:
        controller = Controller(Settings(), history=3)
        for doc in services(20):
            controller.store.put(doc)
        await controller.rebuild()
        async with TestClient(TestServer(make_app(controller))) as client:
            applied = Applied()
            source = ControllerSource(
                str(client.make_url("")).rstrip("/"),
                "node-a",
                applied.apply,
                on_delta=applied.deltas.append,
            )
            task = asyncio.create_task(source.run())

            def synced() -> bool:
                current = controller.current
                return current is not None and source.version == current.config.version

            try:
                await until(synced)
                changes = [
                    lambda: controller.store.put(service("s1", annotations={RETRY: "2"})),
                    lambda: controller.store.delete(service("s2")),  # a Service removed
                    lambda: [controller.store.put(d) for d in app("n", ips=["10.2.0.1"])],
                    lambda: controller.store.put(service("s3", ip="10.96.0.99")),  # Hosts
                    lambda: [
                        controller.store.put(d)
                        for d in app("s4", ips=["10.1.4.1", "10.1.4.9"], cluster_ip="10.96.0.5")
                    ],  # a changed cluster
                ]
                for change in changes:
                    change()
                    await controller.rebuild()
                    await until(synced)
                    current = controller.current
                    assert current is not None
                    assert schema.encode(applied.configs[-1]) == current.body
                assert applied.deltas == ["applied"] * len(changes)

                # a delta whose result is not its version: the same poll again, whole
                base = controller.current
                assert base is not None and base.parts is not None
                controller.store.put(service("s5", annotations={RETRY: "3"}))
                new = await controller.rebuild()
                assert new.parts is not None
                wrong = msgspec.structs.replace(new.parts.config, clusters={})  # a bad base
                controller._history[base.config.version] = ConfigParts(
                    msgspec.structs.replace(wrong, version=base.config.version),
                    new.parts.routes,
                    {},
                )
                controller._deltas.clear()
                await until(synced)
                assert applied.deltas[-1] == "fallback"
                assert schema.encode(applied.configs[-1]) == new.body

                # a poll from a version no longer held: the full config
                full = await client.get(
                    "/api/v1/config", params={"version": "0123456789abcdef", "delta": "1"}
                )
                assert full.content_type == "application/json"
                assert await full.read() == new.body
                # and without delta=1 (an older proxy): the full config
                old = await client.get("/api/v1/config", params={"version": base.config.version})
                assert old.content_type == "application/json"
                assert await old.read() == new.body
                delta = await client.get(
                    "/api/v1/config", params={"version": base.config.version, "delta": "1"}
                )
                assert delta.content_type == schema.DELTA_CONTENT_TYPE
                assert delta.headers["ETag"] == f'"{new.config.version}"'
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)

    asyncio.run(follow())


def test_history_is_bounded() -> None:
    async def body() -> None:
        controller = Controller(Settings(), history=2)
        for doc in services(3):
            controller.store.put(doc)
        versions = [(await controller.rebuild()).config.version]
        for attempts in ("1", "2", "3"):
            controller.store.put(service("s0", annotations={RETRY: attempts}))
            versions.append((await controller.rebuild()).config.version)
        assert list(controller._history) == versions[-2:]
        assert controller.delta(versions[0]) is None  # too old: a full answer
        assert controller.delta(versions[-2]) is not None
        assert controller.delta(versions[-1]) is None  # the current one: nothing to send

    asyncio.run(body())
