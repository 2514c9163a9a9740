"""The controller under hostile input: anchor bombs and deep nesting in the manifests
directory (a clear per-file error, previous objects kept, the event loop never blocked),
watchers that die (unready, with the reason), and the config API's ``?node=`` (validated,
expiring, capped, and tied to the proxy token when there is one)."""

from __future__ import annotations

import asyncio
import logging
import shutil
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from mesh.controller.api import make_app
from mesh.controller.controller import Controller
from mesh.controller.files import FileProvider
from mesh.manifests import read_settings

ROOT = Path(__file__).resolve().parents[2]
BOMB = "\n".join(
    [
        'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]',
        *(
            f"{x}: &{x} [{', '.join(['*' + p] * 9)}]"
            for p, x in zip("abcdefgh", "bcdefghi", strict=True)
        ),
    ]
)


def quickstart(tmp_path: Path) -> Path:
    target = tmp_path / "mesh"
    shutil.copytree(ROOT / "scenarios" / "quickstart", target)
    return target


def run(body: Callable[[], Awaitable[Any]]) -> Any:
    return asyncio.run(body())


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (BOMB, "anchor bomb"),
        ("a: " + "[" * 5000 + "]" * 5000, "nested deeper than 100 levels"),
        ("&a [*a]", "cycle"),
        ("kind: Service\nspec: {x: .nan}\n", "NaN"),
    ],
    ids=["anchor-bomb", "deep", "cycle", "nan"],
)
def test_hostile_files_are_refused_fast_and_the_loop_keeps_answering(
    tmp_path: Path, text: str, message: str
) -> None:
    directory = quickstart(tmp_path)

    async def body() -> None:
        controller = Controller(read_settings(directory), debounce=0.01)
        provider = FileProvider(controller, directory, interval=0.02)
        provider.scan()
        before = await controller.rebuild()
        tasks = [asyncio.create_task(provider.run()), asyncio.create_task(controller.run())]
        for task in tasks:
            controller.supervise(task, task.get_name())
        async with TestClient(TestServer(make_app(controller))) as client:
            started = time.monotonic()
            (directory / "evil.yaml").write_text(text)
            lags = []
            while "evil.yaml" not in str(provider.problems) and time.monotonic() - started < 10:
                tick = time.monotonic()
                await asyncio.sleep(0.01)
                lags.append(time.monotonic() - tick)
                assert (await client.get("/readyz")).status == 200
            assert time.monotonic() - started < 5  # refused fast, not after 20 s
            assert max(lags) < 1.0  # the event loop never stalled on the file
            problem = next(v for k, v in provider.problems.items() if k.name == "evil.yaml")
            assert "evil.yaml" in problem and message in problem, problem
            assert "\n" not in problem
            await asyncio.sleep(0.1)
            assert controller.current is not None
            assert controller.current.config.version == before.config.version
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    run(body)


def test_a_watcher_that_dies_makes_the_controller_unready(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    directory = quickstart(tmp_path)
    caplog.set_level(logging.ERROR, logger="simmesh.controller")

    async def body() -> None:
        controller = Controller(read_settings(directory))
        provider = FileProvider(controller, directory, interval=0.02)
        provider.scan()
        await controller.rebuild()

        def broken() -> Any:
            raise RecursionError("maximum recursion depth exceeded")

        async with TestClient(TestServer(make_app(controller))) as client:
            assert (await client.get("/readyz")).status == 200
            provider.collect = broken  # type: ignore[method-assign]
            task = asyncio.create_task(provider.run(), name="file provider")
            controller.supervise(task, "file provider")
            await asyncio.gather(task, return_exceptions=True)
            await asyncio.sleep(0)
            answer = await client.get("/readyz")
            assert answer.status == 503
            assert "file provider stopped: RecursionError" in await answer.text()
        assert any("file provider stopped" in r.getMessage() for r in caplog.records)

    run(body)


def test_node_names_are_checked_expire_and_are_capped(tmp_path: Path) -> None:
    directory = quickstart(tmp_path)

    async def body() -> None:
        controller = Controller(read_settings(directory), node_ttl=0.3, max_nodes=3)
        FileProvider(controller, directory).scan()
        version = (await controller.rebuild()).config.version
        async with TestClient(TestServer(make_app(controller))) as client:

            async def poll(node: str, **extra: str) -> int:
                params = {"node": node, "version": "0" * 16, "wait": "0", **extra}
                return (await client.get("/api/v1/config", params=params)).status

            for bad in ("", "UPPER", "a" * 254, "a/b", "-x", "x" * 64 + ".y", "a b", "é"):
                if bad:
                    assert await poll(bad) == 400, bad
            assert await poll("node-a", wait="nan") == 400
            assert await poll("node-a", version="x" * 65) == 400
            for name in ("node-a", "node-b", "node-c", "node-d"):
                assert await poll(name) == 200  # served; the fourth is not recorded
            nodes = (await (await client.get("/api/v1/nodes")).json())["nodes"]
            assert [n["node"] for n in nodes] == ["node-a", "node-b", "node-c"]
            await asyncio.sleep(0.5)
            assert await poll("node-d", version=version) == 304
            nodes = (await (await client.get("/api/v1/nodes")).json())["nodes"]
            assert [n["node"] for n in nodes] == ["node-d"]  # the others stopped polling

    run(body)


def test_with_a_token_only_proxies_holding_it_mark_nodes(tmp_path: Path) -> None:
    directory = quickstart(tmp_path)

    async def body() -> None:
        controller = Controller(read_settings(directory))
        FileProvider(controller, directory).scan()
        await controller.rebuild()
        app = make_app(controller, token="s3cret-token")
        async with TestClient(TestServer(app)) as client:
            params = {"node": "node-a", "version": "abc", "wait": "0"}
            assert (await client.get("/api/v1/config", params=params)).status == 401
            wrong = {"Authorization": "Bearer nope"}
            assert (await client.get("/api/v1/config", params=params, headers=wrong)).status == 401
            for token in ("s3cret-tokén", "\u00e9" * 12, "s3cret-token\u200b"):
                odd = {"Authorization": f"Bearer {token}"}  # non-ASCII: 401, not a 500
                answer = await client.get("/api/v1/config", params=params, headers=odd)
                assert answer.status == 401
            right = {"Authorization": "Bearer s3cret-token"}
            assert (await client.get("/api/v1/config", params=params, headers=right)).status == 200
            assert (await client.get("/api/v1/config", params={"wait": "0"})).status == 200
            nodes = (await (await client.get("/api/v1/nodes")).json())["nodes"]
            assert [n["node"] for n in nodes] == ["node-a"]

    run(body)
