"""The controller fed by a manifests directory, and its API, on loopback."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient, TestServer

from mesh.cli import compile_dir
from mesh.controller.api import make_app
from mesh.controller.controller import Controller
from mesh.controller.files import FileProvider
from mesh.manifests import read_settings
from tests.core.builders import wire

ROOT = Path(__file__).resolve().parents[2]


def quickstart(tmp_path: Path) -> Path:
    target = tmp_path / "mesh"
    shutil.copytree(ROOT / "scenarios" / "quickstart", target)
    return target


def run(body: Callable[[], Awaitable[Any]]) -> Any:
    return asyncio.run(body())


def test_file_provider_publishes_what_compile_prints(tmp_path: Path) -> None:
    directory = quickstart(tmp_path)

    async def body() -> None:
        controller = Controller(read_settings(directory))
        FileProvider(controller, directory).scan()
        published = await controller.rebuild()
        expected = compile_dir(directory, acl=None)
        assert published.config.to_json() == expected.to_json()
        assert published.config.version == expected.version

    run(body)


def test_edits_rebuild_and_wake_long_polls(tmp_path: Path) -> None:
    directory = quickstart(tmp_path)

    async def body() -> None:
        controller = Controller(read_settings(directory), debounce=0.01)
        provider = FileProvider(controller, directory, interval=0.02)
        tasks = [asyncio.create_task(provider.run()), asyncio.create_task(controller.run())]
        async with TestClient(TestServer(make_app(controller))) as client:
            first = await client.get("/api/v1/config", params={"wait": "5"})
            assert first.status == 200
            etag = first.headers["ETag"]
            version = (await first.json())["version"]
            assert etag == f'"{version}"'

            waiting = asyncio.create_task(
                client.get(
                    "/api/v1/config",
                    params={"wait": "10", "node": "node-a"},
                    headers={"If-None-Match": etag},
                )
            )
            await asyncio.sleep(0.2)
            assert not waiting.done()  # nothing changed yet: the poll waits
            smi = directory / "smi.yaml"
            smi.write_text(smi.read_text().replace("weight: 90", "weight: 50"))
            answer = await asyncio.wait_for(waiting, 10)
            assert answer.status == 200
            new = await answer.json()
            assert new["version"] != version
            split = new["routes"]["demo/backend:80"]["split"]
            assert [b["weight"] for b in split["backends"]] == [50, 10]

            nodes = await (await client.get("/api/v1/nodes")).json()
            assert nodes["nodes"][0]["node"] == "node-a"
            assert nodes["nodes"][0]["version"] == version  # what it had applied when it asked
            assert nodes["nodes"][0]["current"] is False

            unchanged = await client.get(
                "/api/v1/config", params={"version": new["version"], "wait": "0.2"}
            )
            assert unchanged.status == 304
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    run(body)


def test_invalid_yaml_keeps_the_previous_objects(tmp_path: Path) -> None:
    directory = quickstart(tmp_path)

    async def body() -> None:
        controller = Controller(read_settings(directory))
        provider = FileProvider(controller, directory)
        provider.scan()
        before = await controller.rebuild()
        (directory / "smi.yaml").write_text("kind: [unclosed\n")
        assert provider.scan() is False
        assert "smi.yaml" in next(iter(provider.problems.values()))
        after = await controller.rebuild()
        assert after.config.version == before.config.version
        (directory / "smi.yaml").unlink()
        assert provider.scan() is True
        gone = await controller.rebuild()
        assert wire(gone.config)["routes"]["demo/backend:80"]["split"] is None

    run(body)


def test_bursts_of_changes_are_debounced(tmp_path: Path) -> None:
    directory = quickstart(tmp_path)

    async def body() -> None:
        controller = Controller(read_settings(directory), debounce=0.05, max_delay=1.0)
        provider = FileProvider(controller, directory)
        provider.scan()
        task = asyncio.create_task(controller.run())
        await asyncio.sleep(0.3)
        assert controller.rebuilds == 1
        for i in range(30):
            doc = {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": f"burst{i}", "namespace": "demo"},
                "spec": {"ports": [{"port": 80}]},
            }
            controller.store.put(doc)
            controller.poke()
            await asyncio.sleep(0.005)
        await asyncio.sleep(0.5)
        assert controller.rebuilds <= 4  # one or two, not thirty
        assert "demo/burst29:80" in wire(controller.current.config)["routes"]  # type: ignore[union-attr]
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    run(body)


def test_readyz_waits_for_the_first_build(tmp_path: Path) -> None:
    directory = quickstart(tmp_path)

    async def body() -> None:
        controller = Controller(read_settings(directory))
        async with TestClient(TestServer(make_app(controller))) as client:
            assert (await client.get("/readyz")).status == 503
            assert (await client.get("/api/v1/config", params={"wait": "0.1"})).status == 503
            FileProvider(controller, directory).scan()
            await controller.rebuild()
            assert (await client.get("/readyz")).status == 200
            metrics = await (await client.get("/metrics")).text()
            assert "simmesh_controller_rebuilds_total 1.0" in metrics
            assert "simmesh_controller_services 5.0" in metrics
            topology = await (await client.get("/api/v1/topology")).json()
            assert topology["objects"]["TrafficSplit"] == 1

    run(body)


def test_slow_publish_hooks_never_delay_the_next_config(tmp_path: Path) -> None:
    """Shadow Services and Events are written by hooks; a slow API server must not hold up
    propagation, and the hooks always catch up with the latest config."""
    directory = quickstart(tmp_path)

    async def body() -> None:
        controller = Controller(read_settings(directory), debounce=0.01)
        seen: list[str] = []

        async def slow_hook(config: Any, topology: Any) -> None:
            await asyncio.sleep(0.5)
            seen.append(config.version)

        controller.hooks.append(slow_hook)
        FileProvider(controller, directory).scan()
        first = await controller.rebuild()
        controller.store.put(
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": "late", "namespace": "demo"},
                "spec": {"ports": [{"port": 80}]},
            }
        )
        started = asyncio.get_running_loop().time()
        second = await controller.rebuild()
        assert asyncio.get_running_loop().time() - started < 0.4  # not behind the hook
        assert second.config.version != first.config.version
        await controller.hooks_idle()
        assert seen[-1] == second.config.version
        assert len(seen) <= 2

    run(body)


def test_a_stopping_controller_writes_nothing_and_sends_its_proxies_elsewhere(
    tmp_path: Path,
) -> None:
    """SIGTERM (``part``, then ``close`` after ``--drain-delay``): the controller that replaces
    this one keeps the shadow Services, so no hook runs any more; the API still answers, with
    ``Connection: close`` (a proxy's next poll goes to the new controller), and a waiting
    long-poll is answered only at ``close``."""
    directory = quickstart(tmp_path)

    async def body() -> None:
        controller = Controller(read_settings(directory), debounce=0.01)
        seen: list[str] = []

        async def hook(config: Any, topology: Any) -> None:
            seen.append(config.version)

        controller.hooks.append(hook)
        FileProvider(controller, directory).scan()
        first = await controller.rebuild()
        await controller.hooks_idle()
        assert seen == [first.config.version]
        async with TestClient(TestServer(make_app(controller))) as client:
            etag = f'"{first.config.version}"'
            waiting = asyncio.create_task(
                client.get("/api/v1/config", params={"wait": "10"}, headers={"If-None-Match": etag})
            )
            await asyncio.sleep(0.1)
            controller.part()
            controller.store.put(
                {
                    "apiVersion": "v1",
                    "kind": "Service",
                    "metadata": {"name": "late", "namespace": "demo"},
                    "spec": {"ports": [{"port": 80}]},
                }
            )
            second = await controller.rebuild()  # still built and served...
            await controller.hooks_idle()
            assert seen == [first.config.version]  # ...but not written to the cluster
            answer = await asyncio.wait_for(waiting, 5)
            assert answer.status == 200 and answer.headers["Connection"] == "close"
            assert (await answer.json())["version"] == second.config.version
            etag = f'"{second.config.version}"'
            waiting = asyncio.create_task(
                client.get("/api/v1/config", params={"wait": "10"}, headers={"If-None-Match": etag})
            )
            await asyncio.sleep(0.2)
            assert not waiting.done()  # a poll during the delay waits as usual
            await controller.close()
            answer = await asyncio.wait_for(waiting, 5)
            assert answer.status == 304 and answer.headers["Connection"] == "close"

    run(body)
