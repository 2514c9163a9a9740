"""The proxy as an operator runs it: ``python -m mesh.proxy`` in its own process.

Covers the command line, the watched config file, SIGTERM draining with a request in
flight, 200 MB bodies both ways with the proxy's peak RSS bounded, and OpenTelemetry export.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import aiohttp
import pytest

from mesh.core.config import MeshConfig
from tests.proxy.harness import (
    LOCAL,
    backends,
    build,
    endpoints,
    free_port,
    free_range,
    service,
    session,
    settings,
    url,
)

ROOT = Path(__file__).resolve().parents[2]
HOST = {"Host": "web.demo.mesh"}
MB = 1 << 20


@contextlib.asynccontextmanager
async def proxy_process(
    config: MeshConfig, tmp_path: Path, *args: str, env: dict[str, str] | None = None
) -> AsyncIterator[tuple[subprocess.Popen[bytes], int, Path]]:
    path = tmp_path / "mesh.json"
    path.write_text(config.to_json())
    admin = free_port()
    command = [
        sys.executable,
        "-m",
        "mesh.proxy",
        "--config-file",
        str(path),
        "--node",
        "n1",
        "--bind",
        LOCAL,
        "--admin-port",
        str(admin),
        *args,
    ]
    process = subprocess.Popen(
        command,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, **(env or {})},
    )
    try:
        async with session() as client:
            for _ in range(100):
                with contextlib.suppress(aiohttp.ClientError):
                    async with client.get(f"http://{LOCAL}:{admin}/readyz") as resp:
                        if resp.status == 200:
                            break
                assert process.poll() is None, process.stderr.read() if process.stderr else ""
                await asyncio.sleep(0.1)
            else:
                raise AssertionError("the proxy never became ready")
        yield process, admin, path
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate(timeout=10)


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


async def test_cli_file_reload_access_log_and_sigterm_drain(tmp_path: Path) -> None:
    http = free_range(1)
    async with backends("127.0.0.2") as targets:
        config = build([service("web"), *endpoints("web", targets)], settings(http=http))
        renamed = build([service("api"), *endpoints("api", targets)], settings(http=http))
        async with (
            proxy_process(
                config, tmp_path, "--access-log", "--drain-delay", "0.5", "--drain-timeout", "5"
            ) as (
                process,
                admin,
                path,
            ),
            session() as client,
        ):
            async with client.get(url(http, "/one"), headers=HOST) as resp:
                assert resp.status == 200
            path.write_text(renamed.to_json())
            for _ in range(50):
                async with client.get(f"http://{LOCAL}:{admin}/config") as resp:
                    if (await resp.json())["version"] == renamed.version:
                        break
                await asyncio.sleep(0.1)
            else:
                raise AssertionError("the changed file was not applied")
            slow = asyncio.create_task(
                client.get(url(http, "/stall?seconds=1"), headers={"Host": "api.demo.mesh"})
            )
            await asyncio.sleep(0.3)
            process.send_signal(signal.SIGTERM)
            await asyncio.sleep(0.1)
            async with client.get(f"http://{LOCAL}:{admin}/readyz") as ready:
                assert ready.status == 200  # the drain delay: still accepting, still ready
            resp = await slow
            assert resp.status == 200 and await resp.text() == "late"
            resp.release()
            for _ in range(100):
                if process.poll() is not None:
                    break
                await asyncio.sleep(0.05)
            assert process.returncode == 0
            out = process.stdout.read().decode() if process.stdout else ""
    records = [json.loads(line) for line in out.splitlines()]
    assert [(r["path"], r["status"]) for r in records] == [("/one", 200), ("/stall?seconds=1", 200)]


@pytest.mark.slow
async def test_200mb_upload_and_download_with_bounded_rss(tmp_path: Path) -> None:
    http = free_range(1)
    size = 200 * MB
    async with backends("127.0.0.2") as targets:
        config = build([service("web"), *endpoints("web", targets)], settings(http=http))
        async with (
            proxy_process(config, tmp_path) as (process, _, _),
            session(timeout=aiohttp.ClientTimeout(total=120)) as client,
        ):
            baseline = peak_rss_mb(process.pid)
            block = b"u" * MB

            async def upload() -> AsyncIterator[bytes]:
                for _ in range(size // MB):
                    yield block

            headers = {**HOST, "Content-Length": str(size)}
            async with client.post(url(http, "/upload"), data=upload(), headers=headers) as resp:
                assert resp.status == 200
                assert (await resp.json())["received"] == size
            received = 0
            async with client.get(url(http, f"/bytes/{size}"), headers=HOST) as resp:
                assert resp.status == 200
                async for chunk in resp.content.iter_chunked(MB):
                    received += len(chunk)
            assert received == size
            peak = peak_rss_mb(process.pid)
    print(f"proxy peak RSS {baseline:.1f} MB before, {peak:.1f} MB after 2 x 200 MB")
    assert peak - baseline < 40, (baseline, peak)


class _Collector(BaseHTTPRequestHandler):
    bodies: list[tuple[str, bytes]] = []

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", "0"))
        self.bodies.append((self.path, self.rfile.read(length)))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        return None


@contextlib.contextmanager
def collector() -> Iterator[tuple[int, list[tuple[str, bytes]]]]:
    server = ThreadingHTTPServer((LOCAL, 0), _Collector)
    _Collector.bodies = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], _Collector.bodies
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


async def test_opentelemetry_spans_exported_when_configured(tmp_path: Path) -> None:
    # The SDK is a dev dependency: missing, this test must fail (not skip).
    import opentelemetry.exporter.otlp.proto.http.trace_exporter
    import opentelemetry.sdk.trace  # noqa: F401

    http = free_range(1)
    with collector() as (port, bodies):
        env = {
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://{LOCAL}:{port}",
            "OTEL_BSP_SCHEDULE_DELAY": "100",
        }
        async with backends("127.0.0.2") as targets:
            config = build([service("web"), *endpoints("web", targets)], settings(http=http))
            async with proxy_process(config, tmp_path, env=env) as (process, _, _), session() as c:
                incoming = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
                async with c.get(url(http), headers={**HOST, "traceparent": incoming}) as resp:
                    forwarded = (await resp.json())["headers"]["traceparent"]
                process.send_signal(signal.SIGTERM)
                process.wait(10)
    assert forwarded.startswith("00-0af7651916cd43dd8448eb211c80319c-")
    assert bodies and bodies[0][0] == "/v1/traces"
    exported = b"".join(body for _, body in bodies)
    assert bytes.fromhex("0af7651916cd43dd8448eb211c80319c") in exported
    assert b"simmesh-proxy/n1" in exported
