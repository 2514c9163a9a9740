"""h2c clients cannot multiply the proxy's upstream sockets or hold them, over real sockets.

Issue 19: each h2c stream holds an upstream HTTP/1.1 connection, and the proxy offered 1,000
streams per connection while ``--max-connections`` counted only downstream connections, so two
h2c connections ran a proxy with ``ulimit -n 1100`` out of descriptors and other clients got
silent 502s. Now the proxy offers ``--max-concurrent-streams`` (100) streams, refuses (counts,
logs) a client that opens more, counts upstream connections against a limit derived from
RLIMIT_NOFILE, and resets a stream whose client opens no flow-control window for
``--write-timeout``, releasing its upstream. The descriptor test runs the proxy as a process
with a lowered RLIMIT_NOFILE.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import resource
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.settings
import pytest
from aiohttp import web

from mesh.proxy.proxy import Proxy
from tests.proxy.harness import (
    LOCAL,
    backends,
    build,
    endpoints,
    free_port,
    free_range,
    metric,
    running_proxy,
    serve_app,
    service,
    settings,
)

ROOT = Path(__file__).resolve().parents[2]
HOST = "web.demo.mesh"


def request_headers(path: str) -> list[tuple[str, str]]:
    return [(":method", "GET"), (":scheme", "http"), (":authority", HOST), (":path", path)]


class H2Load:
    """A raw h2c client: opens up to ``count`` streams to ``path``, as many at once as the
    server's SETTINGS_MAX_CONCURRENT_STREAMS allows (``polite``) or all at once; records
    the answers and resets."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        config = h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
        self.conn = h2.connection.H2Connection(config)
        self.statuses: Counter[str] = Counter()
        self.resets = 0
        self.reset_codes: Counter[int] = Counter()
        self.settings: dict[int, int] = {}
        self.terminated = False

    @classmethod
    async def open(cls, port: int, *, source: str = LOCAL, window: int | None = None) -> H2Load:
        load = cls(*await asyncio.open_connection(LOCAL, port, local_addr=(source, 0)))
        load.conn.initiate_connection()
        if window is not None:  # the stream window this client offers
            load.conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: window})
        load.flush()
        return load

    def flush(self) -> None:
        with contextlib.suppress(ConnectionError):
            self.writer.write(self.conn.data_to_send())

    async def read(self) -> bool:
        """One read's events handled; False when the connection closed."""
        with contextlib.suppress(ConnectionError):
            data = await self.reader.read(65536)
            if data:
                for event in self.conn.receive_data(data):
                    self._event(event)
                self.flush()
                return True
        return False

    def _event(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.RemoteSettingsChanged):
            self.settings.update({k: v.new_value for k, v in event.changed_settings.items()})
        elif isinstance(event, h2.events.ResponseReceived):
            self.statuses[dict(event.headers)[":status"]] += 1
        elif isinstance(event, h2.events.StreamReset):
            self.resets += 1
            self.reset_codes[int(event.error_code or 0)] += 1
        elif isinstance(event, h2.events.ConnectionTerminated):
            self.terminated = True

    def open_streams(self, path: str, count: int, *, polite: bool = True) -> int:
        opened = 0
        while opened < count:
            limit = self.conn.remote_settings.max_concurrent_streams
            if polite and self.conn.open_outbound_streams >= limit:
                break
            stream_id = self.conn.get_next_available_stream_id()
            self.conn.send_headers(stream_id, request_headers(path), end_stream=True)
            opened += 1
        self.flush()
        return opened

    async def run(self, path: str, count: int) -> None:
        """Keep up to the allowed number of streams open until ``count`` were opened."""
        while not self.settings:
            if not await self.read():
                return
        left = count
        while left > 0 or self.conn.open_outbound_streams:
            left -= self.open_streams(path, left)
            if not await self.read():
                return

    def close(self) -> None:
        self.writer.close()


@contextlib.asynccontextmanager
async def mesh(**options: object) -> AsyncIterator[tuple[Proxy, int]]:
    http = free_range(1)
    async with backends("127.0.0.2") as targets:
        config = build([service("web"), *endpoints("web", targets)], settings(http=http))
        async with running_proxy(config, **options) as proxy:
            yield proxy, http


async def test_the_proxy_offers_100_streams_and_refuses_a_client_that_opens_more(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="simmesh.proxy")
    async with mesh() as (_, port):
        load = await H2Load.open(port)
        async with asyncio.timeout(5):
            while not load.settings:
                assert await load.read()
        load.close()
        assert load.settings[h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS] == 100
    async with mesh(max_concurrent_streams=5) as (proxy, port):
        # One stream over the limit, sent before the SETTINGS were read: refused, safe to
        # retry (REFUSED_STREAM), and the connection goes on serving the five others.
        load = await H2Load.open(port)
        load.open_streams("/stall?seconds=0.2", 6, polite=False)
        async with asyncio.timeout(5):
            while sum(load.statuses.values()) < 5 or not load.resets:
                assert await load.read()
        assert load.reset_codes == {h2.errors.ErrorCodes.REFUSED_STREAM: 1}
        assert load.statuses == {"200": 5} and not load.terminated
        assert metric(proxy, "simmesh_proxy_streams_refused_total", reason="max-concurrent-streams")
        lines = [r for r in caplog.records if "h2c stream refused" in r.getMessage()]
        assert len(lines) == 1
        load.close()
        # Past twice the advertised limit at once: a connection error (GOAWAY).
        load = await H2Load.open(port)
        load.open_streams("/stall?seconds=5", 11, polite=False)
        async with asyncio.timeout(5):
            while await load.read():
                pass
        load.close()
        assert load.terminated
        async with asyncio.timeout(5):
            while proxy.inflight:
                await asyncio.sleep(0.02)


async def test_a_stream_whose_client_opens_no_window_is_reset_and_frees_its_upstream() -> None:
    async with mesh(write_timeout=0.5) as (proxy, port):
        load = await H2Load.open(port, window=0)  # no stream may receive a byte of DATA
        while not load.settings:
            assert await asyncio.wait_for(load.read(), 5)
        assert load.open_streams("/bytes/1000000", 3) == 3

        async def nudge() -> None:
            """A byte of connection window now and then: wakes every waiting stream."""
            while True:
                await asyncio.sleep(0.1)
                load.conn.increment_flow_control_window(1)
                load.flush()

        nudger = asyncio.create_task(nudge())
        try:
            async with asyncio.timeout(10):
                while load.resets < 3:
                    assert await load.read()
        finally:
            nudger.cancel()
        assert not load.terminated  # the connection stays; only the streams are reset
        assert metric(proxy, "simmesh_proxy_client_timeouts_total", phase="response") == 3
        async with asyncio.timeout(5):
            while proxy.inflight or proxy.upstreams.open:
                await asyncio.sleep(0.02)  # the upstreams are closed, not kept for the stream
        assert all(n == 0 for n in proxy.state.inflight.values())
        load.close()


# -- descriptors ------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def slow_backend() -> AsyncIterator[tuple[tuple[str, int], dict[str, int]]]:
    """``/slow`` answers after 3 s, ``/health`` at once; counts concurrent slow requests."""
    seen = {"now": 0, "peak": 0}

    async def slow(request: web.Request) -> web.Response:
        seen["now"] += 1
        seen["peak"] = max(seen["peak"], seen["now"])
        try:
            await asyncio.sleep(3)
        finally:
            seen["now"] -= 1
        return web.Response(text="slow")

    async def health(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/slow", slow)
    app.router.add_get("/health", health)
    async with serve_app(app, "127.0.0.2") as port:
        yield ("127.0.0.2", port), seen


@contextlib.asynccontextmanager
async def proxy_process(
    config_json: str, tmp_path: Path, *, nofile: int
) -> AsyncIterator[subprocess.Popen[bytes]]:
    """``python -m mesh.proxy`` with RLIMIT_NOFILE lowered to ``nofile``, stopped on exit."""
    path = tmp_path / "mesh.json"
    path.write_text(config_json)
    admin = free_port()
    command = [sys.executable, "-m", "mesh.proxy", "--config-file", str(path), "--node", "n1"]
    command += ["--bind", LOCAL, "--admin-port", str(admin), "--log-level", "warning"]

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

    process = subprocess.Popen(
        command, cwd=ROOT, stderr=subprocess.PIPE, preexec_fn=limit, env=dict(os.environ)
    )
    try:
        async with aiohttp.ClientSession() as client:
            async with asyncio.timeout(30):
                while True:
                    assert process.poll() is None, process.stderr.read() if process.stderr else ""
                    with contextlib.suppress(aiohttp.ClientError):
                        async with client.get(f"http://{LOCAL}:{admin}/readyz") as resp:
                            if resp.status == 200:
                                break
                    await asyncio.sleep(0.1)
        yield process
    finally:
        process.kill()
        process.communicate(timeout=10)


async def health_checks(port: int, count: int) -> Counter[str]:
    """``count`` requests for /health from another source, one after another."""
    outcomes: Counter[str] = Counter()
    connector = aiohttp.TCPConnector(local_addr=("127.0.0.7", 0))
    timeout = aiohttp.ClientTimeout(total=8)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as client:
        for _ in range(count):
            try:
                async with client.get(
                    f"http://{LOCAL}:{port}/health", headers={"Host": HOST}
                ) as resp:
                    await resp.read()
                    outcomes[str(resp.status)] += 1
            except (aiohttp.ClientError, TimeoutError) as exc:
                outcomes[type(exc).__name__] += 1
    return outcomes


async def test_two_h2c_connections_cannot_starve_other_clients_of_descriptors(
    tmp_path: Path,
) -> None:
    http = free_range(1)
    async with slow_backend() as (target, seen):
        config = build([service("web"), *endpoints("web", [target])], settings(http=http))
        async with proxy_process(config.to_json(), tmp_path, nofile=640):
            loads = [await H2Load.open(http) for _ in range(2)]
            runs = [asyncio.create_task(load.run("/slow", 400)) for load in loads]
            try:
                async with asyncio.timeout(15):
                    while seen["now"] < 150:  # the slow requests are in
                        await asyncio.sleep(0.05)
                health = await health_checks(http, 20)
            finally:
                for load in loads:
                    load.close()
                for run in runs:
                    run.cancel()
                await asyncio.gather(*runs, return_exceptions=True)
        assert health == Counter({"200": 20}), health
        assert all(load.statuses.keys() <= {"200"} for load in loads), [
            load.statuses for load in loads
        ]
        assert seen["peak"] <= 200  # 100 streams per connection
