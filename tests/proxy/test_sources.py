"""Config sources: a watched file, and the controller's long-poll API (with outages)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path

import yaml
from aiohttp import web

from mesh.core.config import MeshConfig
from mesh.proxy.sources import ControllerSource, FileSource
from tests.proxy.harness import (
    backends,
    build,
    endpoints,
    free_port,
    free_range,
    running_proxy,
    serve_app,
    service,
    session,
    settings,
    url,
)


async def wait_for(check, timeout: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    for _ in range(int(timeout / 0.05)):
        if check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("condition not met in time")


def two_configs(targets: list[tuple[str, int]], http: int) -> tuple[MeshConfig, MeshConfig]:
    first = build([service("web"), *endpoints("web", targets)], settings(http=http))
    second = build(
        [service("web"), *endpoints("web", targets), service("api"), *endpoints("api", targets)],
        settings(http=http),
    )
    return first, second


async def test_file_source_applies_changes_and_keeps_last_good(tmp_path: Path) -> None:
    http = free_range(1)
    path = tmp_path / "mesh.json"
    async with backends("127.0.0.2") as targets, running_proxy() as proxy:
        first, second = two_configs(targets, http)
        path.write_text(first.to_json())
        source = FileSource(str(path), proxy.apply, interval=0.05, status=proxy.source)
        task = asyncio.create_task(source.run())
        try:
            await wait_for(lambda: proxy.snapshot is not None)
            assert proxy.snapshot is not None and proxy.snapshot.version == first.version
            path.write_text(second.to_json())
            await wait_for(lambda: proxy.snapshot.version == second.version)  # type: ignore[union-attr]
            path.write_text("{not json")
            await wait_for(lambda: proxy.source.get("error") is not None)
            assert proxy.snapshot.version == second.version
            async with (
                session() as client,
                client.get(url(http), headers={"Host": "api.demo.mesh"}) as resp,
            ):
                assert resp.status == 200
            path.write_text(yaml.safe_dump(json.loads(first.to_json())))
            path.rename(tmp_path / "mesh.yaml")
            yaml_source = FileSource(str(tmp_path / "mesh.yaml"), proxy.apply)
            await yaml_source.poll()
            assert proxy.snapshot.version == first.version
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


class FakeController:
    """``GET /api/v1/config``: 200 + ETag for a new version, else 304 after a short hold."""

    def __init__(self, config: MeshConfig) -> None:
        self.config = config
        self.changed = asyncio.Event()
        self.requests: list[dict[str, str]] = []

    def publish(self, config: MeshConfig) -> None:
        self.config = config
        self.changed.set()
        self.changed = asyncio.Event()

    async def handle(self, request: web.Request) -> web.Response:
        self.requests.append(
            {**request.query, "if-none-match": request.headers.get("If-None-Match", "")}
        )
        if request.query.get("version") == self.config.version:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), 0.3)
            if request.query.get("version") == self.config.version:
                return web.Response(status=304)
        return web.Response(
            text=self.config.to_json(),
            content_type="application/json",
            headers={"ETag": f'"{self.config.version}"'},
        )

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/api/v1/config", self.handle)
        return app


@contextlib.asynccontextmanager
async def controller_on(fake: FakeController, port: int) -> AsyncIterator[None]:
    runner = web.AppRunner(fake.app(), access_log=None, shutdown_timeout=0.2)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port, reuse_address=True)
    await site.start()
    try:
        yield
    finally:
        await runner.cleanup()


async def test_controller_long_poll_with_outage() -> None:
    http, port = free_range(1), free_port()
    async with backends("127.0.0.2") as targets, running_proxy() as proxy:
        first, second = two_configs(targets, http)
        third = build([service("web3"), *endpoints("web3", targets)], settings(http=http))
        fake = FakeController(first)
        source = ControllerSource(
            f"http://127.0.0.1:{port}",
            "node-a",
            proxy.apply,
            status=proxy.source,
            backoff_base=0.05,
            backoff_cap=0.3,
        )
        task = asyncio.create_task(source.run())
        try:
            async with controller_on(fake, port):
                await wait_for(lambda: proxy.snapshot is not None)
                assert proxy.snapshot.version == first.version  # type: ignore[union-attr]
                await asyncio.sleep(0.4)  # at least one 304 round
                fake.publish(second)
                await wait_for(lambda: proxy.snapshot.version == second.version)  # type: ignore[union-attr]
            assert fake.requests[0] == {"node": "node-a", "if-none-match": ""}
            assert {  # asks for a delta: this controller does not know of them (full answers)
                "node": "node-a",
                "version": first.version,
                "delta": "1",
                "if-none-match": f'"{first.version}"',
            } in fake.requests
            await wait_for(lambda: proxy.source.get("error") is not None)
            async with (
                session() as client,
                client.get(url(http), headers={"Host": "api.demo.mesh"}) as resp,
            ):
                assert resp.status == 200  # still serving the last config
            fake.publish(third)
            async with controller_on(fake, port):
                await wait_for(lambda: proxy.snapshot.version == third.version)  # type: ignore[union-attr]
            assert proxy.ready
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


async def test_serve_app_helper_stops() -> None:
    async with serve_app(web.Application(), "127.0.0.1") as port:
        assert port > 0
