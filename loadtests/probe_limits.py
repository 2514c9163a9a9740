"""Issue 19's resource probes against a real ``simmesh proxy`` process, before and after.

    python -m loadtests.probe_limits h2c --connections 1            # 1,000 streams to /slow
    python -m loadtests.probe_limits h2c --connections 2 --nofile 1100
    python -m loadtests.probe_limits window --streams 200           # no flow-control window
    python -m loadtests.probe_limits lockout                        # 500 idle connections
    python -m loadtests.probe_limits h2c --checkout /tmp/before     # another source tree

``h2c``: a slow backend (``/slow`` answers after ``--slow`` seconds, ``/health`` at once), the
proxy in front of it (optionally with RLIMIT_NOFILE lowered to ``--nofile``, soft and hard),
and ``--connections`` h2c prior-knowledge connections, each opening ``--streams`` streams to
``/slow`` as fast as the proxy's SETTINGS_MAX_CONCURRENT_STREAMS allows (a polite client; it
keeps that many open). Meanwhile another client (127.0.0.7) makes ``--health`` requests to
``/health``, each on a new connection. Printed: the proxy's open descriptors and RSS (peak
over the run, sampled from /proc every 0.1 s), the health requests' outcomes, and what the
streams got.

``window``: one h2c connection whose client offers no stream window (SETTINGS_INITIAL_WINDOW_SIZE
0) opens ``--streams`` streams (as many as the proxy allows at once) to ``/big`` (10 MB each)
and sends a byte of connection window every second, which wakes every stream waiting for
window. Printed: the proxy's descriptors and RSS every 5 s for ``--hold`` seconds, and the
streams the proxy reset (``--write-timeout`` is 30 s by default).

``lockout``: the proxy in ACL mode with ``--max-connections 500``; ``--sources`` sources
without identity (127.0.0.8, then 127.0.0.20 and on) open 500 connections between them and
make one request on each (403: they have no identity), keeping them open (keep-alive); then a
granted client (127.0.0.9) makes a request. Printed: how many of the 500 the proxy kept, and
what the granted client got.

The project is used as a user would: manifests -> ``simmesh compile`` -> ``python -m
mesh.proxy --config-file``. Everything runs on 127.0.0.0/8 and stops what it starts.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, cast

import aiohttp
import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
from aiohttp import web

from loadtests.bench_proxy import checkout_env, compile_config, free_port, rss_mb

ROOT = Path(__file__).resolve().parents[1]
HOST = "web.probe.mesh"
BACKEND = "127.0.0.2"
HEALTH_SOURCE = "127.0.0.7"
ANONYMOUS = "127.0.0.8"
GRANTED = "127.0.0.9"


# -- the mesh, as a user builds it ---------------------------------------------------------------


def manifests(directory: Path, *, backend_port: int, http: int, acl: bool) -> None:
    docs: list[dict[str, Any]] = [
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "web", "namespace": "probe"},
            "spec": {"ports": [{"name": "http", "port": 80, "targetPort": "http"}]},
        },
        {
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {
                "name": "web-0",
                "namespace": "probe",
                "labels": {"kubernetes.io/service-name": "web"},
            },
            "ports": [{"name": "http", "port": backend_port}],
            "endpoints": [
                {
                    "addresses": [BACKEND],
                    "conditions": {"ready": True},
                    "targetRef": {"kind": "Pod", "name": "web-0"},
                }
            ],
        },
        _pod("web-0", BACKEND, "web"),
        _pod("client-0", GRANTED, "client"),
        {
            "apiVersion": "specs.smi-spec.io/v1alpha4",
            "kind": "HTTPRouteGroup",
            "metadata": {"name": "all", "namespace": "probe"},
            "spec": {"matches": [{"name": "all", "pathRegex": ".*", "methods": ["*"]}]},
        },
        {
            "apiVersion": "access.smi-spec.io/v1alpha3",
            "kind": "TrafficTarget",
            "metadata": {"name": "client-to-web", "namespace": "probe"},
            "spec": {
                "destination": {"kind": "ServiceAccount", "name": "web"},
                "sources": [{"kind": "ServiceAccount", "name": "client"}],
                "rules": [{"kind": "HTTPRouteGroup", "name": "all"}],
            },
        },
    ]
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "objects.json").write_text(json.dumps({"kind": "List", "items": docs}))
    settings = f"httpPorts: {{start: {http}, size: 1}}\nzone: mesh\n"
    (directory / "mesh.yaml").write_text(settings + ("acl: true\n" if acl else ""))


def _pod(name: str, ip: str, account: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "probe"},
        "spec": {"serviceAccountName": account, "nodeName": "probe"},
        "status": {"phase": "Running", "podIP": ip},
    }


@contextlib.asynccontextmanager
async def slow_backend(seconds: float) -> AsyncIterator[int]:
    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(seconds)
        return web.Response(text="slow")

    async def health(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def big(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Length": str(160 * 65536)})
        await response.prepare(request)
        with contextlib.suppress(ConnectionError):  # the proxy reset the stream
            for _ in range(160):
                await response.write(b"x" * 65536)
        return response

    app = web.Application()
    app.router.add_get("/big", big)
    app.router.add_get("/slow", slow)
    app.router.add_get("/health", health)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, BACKEND, 0, backlog=4096)
    await site.start()
    try:
        yield int(runner.addresses[0][1])
    finally:
        await runner.cleanup()


@contextlib.asynccontextmanager
async def proxy_process(
    config: Path, http: int, *, checkout: Path, nofile: int | None, args: list[str]
) -> AsyncIterator[subprocess.Popen[bytes]]:
    """``python -m mesh.proxy`` of ``checkout``, RLIMIT_NOFILE lowered to ``nofile``."""
    admin = free_port()
    command = [sys.executable, "-m", "mesh.proxy", "--config-file", str(config)]
    command += ["--node", "probe", "--bind", "127.0.0.1", "--admin-port", str(admin), *args]
    limit: Callable[[], None] | None = None
    if nofile is not None:

        def limit() -> None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

    process = subprocess.Popen(
        command,
        cwd=checkout,
        env=checkout_env(checkout),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        preexec_fn=limit,
    )
    try:
        async with aiohttp.ClientSession() as client:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                with contextlib.suppress(aiohttp.ClientError):
                    async with client.get(f"http://127.0.0.1:{admin}/readyz") as resp:
                        if resp.status == 200:
                            break
                await asyncio.sleep(0.1)
            else:
                raise RuntimeError("the proxy never became ready")
        yield process
    finally:
        process.terminate()
        try:
            await asyncio.to_thread(process.wait, 10)
        except subprocess.TimeoutExpired:
            process.kill()
            await asyncio.to_thread(process.wait, 5)
        errors = process.stderr.read().decode() if process.stderr else ""
        warnings = [line for line in errors.splitlines() if "WARNING" in line or "ERROR" in line]
        if warnings:
            print(f"proxy log ({len(warnings)} warning/error lines), the first ones:")
            for line in warnings[:6]:
                print("   ", line[:240])


def fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


class Peak:
    """The proxy's open descriptors and RSS, sampled every 0.1 s."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.fds = self.base_fds = fds(pid)
        self.rss = self.base_rss = rss_mb(pid)

    async def run(self) -> None:
        while True:
            with contextlib.suppress(OSError):
                self.fds = max(self.fds, fds(self.pid))
                self.rss = max(self.rss, rss_mb(self.pid))
            await asyncio.sleep(0.1)


# -- h2c ------------------------------------------------------------------------------------------


class H2Load:
    """One h2c connection keeping as many streams to ``path`` open as the server allows;
    with ``window=0`` it offers no stream window and nudges the connection window instead."""

    def __init__(self, window: int | None = None) -> None:
        config = h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
        self.conn = h2.connection.H2Connection(config)
        self.window = window
        self.statuses: Counter[str] = Counter()
        self.events: Counter[str] = Counter()
        self.offered: int | None = None

    async def run(self, port: int, path: str, count: int) -> None:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError as exc:
            self.events[f"connect failed: {exc.strerror}"] += 1
            return
        self.conn.initiate_connection()
        if self.window is not None:
            self.conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: self.window})
            asyncio.get_running_loop().create_task(self._nudge(writer))
        writer.write(self.conn.data_to_send())
        left = count
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    self.events["closed by the proxy"] += 1
                    return
                for event in self.conn.receive_data(data):
                    self._event(event)
                if self.offered is not None:
                    left -= self._open(path, left)
                writer.write(self.conn.data_to_send())
        except (ConnectionError, h2.exceptions.ProtocolError) as exc:
            self.events[type(exc).__name__] += 1
        finally:
            writer.close()

    async def _nudge(self, writer: asyncio.StreamWriter) -> None:
        """A byte of connection window every second (wakes every stream waiting for window)."""
        with contextlib.suppress(ConnectionError, h2.exceptions.H2Error):
            while not writer.is_closing():
                await asyncio.sleep(1)
                self.conn.increment_flow_control_window(1)
                writer.write(self.conn.data_to_send())

    def _event(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.RemoteSettingsChanged):
            self.offered = self.conn.remote_settings.max_concurrent_streams
        elif isinstance(event, h2.events.ResponseReceived):
            headers = cast(list[tuple[str, str]], event.headers)  # header_encoding is set
            self.statuses[dict(headers)[":status"]] += 1
        elif isinstance(event, h2.events.StreamReset):
            self.events["RST_STREAM"] += 1
        elif isinstance(event, h2.events.ConnectionTerminated):
            self.events["GOAWAY"] += 1

    def _open(self, path: str, left: int) -> int:
        opened = 0
        limit = self.conn.remote_settings.max_concurrent_streams
        while opened < left and self.conn.open_outbound_streams < limit:
            stream_id = self.conn.get_next_available_stream_id()
            headers = [(":method", "GET"), (":scheme", "http"), (":authority", HOST)]
            self.conn.send_headers(stream_id, [*headers, (":path", path)], end_stream=True)
            opened += 1
        return opened


async def health(port: int, count: int) -> Counter[str]:
    """``count`` requests for /health from another client, each on a new connection."""
    outcomes: Counter[str] = Counter()
    connector = aiohttp.TCPConnector(local_addr=(HEALTH_SOURCE, 0), force_close=True)
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as client:
        for _ in range(count):
            try:
                async with client.get(
                    f"http://127.0.0.1:{port}/health", headers={"Host": HOST}
                ) as resp:
                    await resp.read()
                    reason = resp.headers.get("X-Simmesh-Reason")
                    outcomes[f"{resp.status}" + (f" {reason}" if reason else "")] += 1
            except (aiohttp.ClientError, TimeoutError) as exc:
                outcomes[type(exc).__name__] += 1
            await asyncio.sleep(0.05)
    return outcomes


async def probe_h2c(options: argparse.Namespace, work: Path) -> None:
    async with slow_backend(options.slow) as backend_port:
        http = free_port()
        manifests(work / "mesh", backend_port=backend_port, http=http, acl=False)
        compile_config(work / "mesh", work / "mesh.json", options.checkout)
        async with proxy_process(
            work / "mesh.json",
            http,
            checkout=options.checkout,
            nofile=options.nofile,
            args=options.proxy_arg,
        ) as process:
            peak = Peak(process.pid)
            sampler = asyncio.create_task(peak.run())
            loads = [H2Load() for _ in range(options.connections)]
            runs = [load.run(http, "/slow", options.streams) for load in loads]
            tasks = [asyncio.create_task(run) for run in runs]
            await asyncio.sleep(options.settle)
            outcomes = await health(http, options.health)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            sampler.cancel()
    print(
        f"h2c: {options.connections} connection(s) x {options.streams} streams to /slow "
        f"({options.slow:g} s), RLIMIT_NOFILE {options.nofile or 'unchanged'}"
    )
    print(f"  streams offered by the proxy: {[load.offered for load in loads]}")
    print(f"  proxy fds: {peak.base_fds} idle -> {peak.fds} peak")
    print(f"  proxy RSS: {peak.base_rss:.1f} MB idle -> {peak.rss:.1f} MB peak")
    print(f"  health requests from {HEALTH_SOURCE}: {dict(outcomes)}")
    for i, load in enumerate(loads):
        print(f"  h2c connection {i}: answers {dict(load.statuses)}, events {dict(load.events)}")


async def probe_window(options: argparse.Namespace, work: Path) -> None:
    async with slow_backend(options.slow) as backend_port:
        http = free_port()
        manifests(work / "mesh", backend_port=backend_port, http=http, acl=False)
        compile_config(work / "mesh", work / "mesh.json", options.checkout)
        async with proxy_process(
            work / "mesh.json",
            http,
            checkout=options.checkout,
            nofile=options.nofile,
            args=options.proxy_arg,
        ) as process:
            print(f"window: 1 h2c connection, {options.streams} streams to /big, no window")
            print(f"  idle: {fds(process.pid)} fds, {rss_mb(process.pid):.1f} MB")
            load = H2Load(window=0)
            task = asyncio.create_task(load.run(http, "/big", options.streams))
            started = time.monotonic()
            for at in range(5, int(options.hold) + 1, 5):
                await asyncio.sleep(started + at - time.monotonic())
                print(
                    f"  {at:3d} s: {fds(process.pid)} fds, {rss_mb(process.pid):.1f} MB, "
                    f"streams offered {load.offered}, reset by the proxy "
                    f"{load.events['RST_STREAM']}"
                )
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


# -- lockout --------------------------------------------------------------------------------------


async def request(
    port: int, source: str, *, keep: bool
) -> tuple[str, tuple[asyncio.StreamReader, asyncio.StreamWriter] | None]:
    """One request on a new connection from ``source``: (status line or what happened, the
    connection when ``keep`` and it stays open)."""
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
        close = "" if keep else "Connection: close\r\n"
        writer.write(f"GET /health HTTP/1.1\r\nHost: {HOST}\r\n{close}\r\n".encode())
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    except (OSError, asyncio.IncompleteReadError, TimeoutError) as exc:
        return type(exc).__name__, None
    status = head.split(b"\r\n", 1)[0].decode()
    lines = head.lower().split(b"\r\n")
    length = next((int(x.split(b":")[1]) for x in lines if x.startswith(b"content-length:")), 0)
    with contextlib.suppress(Exception):
        await asyncio.wait_for(reader.readexactly(length), 5)
    if keep:
        return status, (reader, writer)
    writer.close()
    return status, None


async def probe_lockout(options: argparse.Namespace, work: Path) -> None:
    async with slow_backend(options.slow) as backend_port:
        http = free_port()
        manifests(work / "mesh", backend_port=backend_port, http=http, acl=True)
        compile_config(work / "mesh", work / "mesh.json", options.checkout)
        args = ["--max-connections", "500", *options.proxy_arg]
        async with proxy_process(
            work / "mesh.json", http, checkout=options.checkout, nofile=None, args=args
        ):
            sources = [ANONYMOUS] + [f"127.0.0.{20 + i}" for i in range(options.sources - 1)]
            results = await asyncio.gather(
                *(request(http, sources[i % len(sources)], keep=True) for i in range(500))
            )
            answers = Counter(status for status, _ in results)
            held = [conn for _, conn in results if conn is not None]
            await asyncio.sleep(0.5)
            started = time.monotonic()
            granted, _ = await request(http, GRANTED, keep=False)
            took = time.monotonic() - started
            for _, writer in held:
                writer.close()
    print("lockout: --max-connections 500, ACL mode")
    print(f"  500 connections from {options.sources} source(s) without identity: {dict(answers)}")
    print(f"  kept open: {len(held)}")
    print(f"  then a granted client ({GRANTED}): {granted} in {took * 1000:.0f} ms")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("probe", choices=("h2c", "window", "lockout"))
    parser.add_argument("--checkout", type=Path, default=ROOT, help="simmesh source tree")
    parser.add_argument("--connections", type=int, default=1)
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--slow", type=float, default=10.0, help="seconds /slow takes")
    parser.add_argument("--settle", type=float, default=3.0, help="seconds before /health")
    parser.add_argument("--health", type=int, default=36)
    parser.add_argument("--hold", type=float, default=45.0, help="window: seconds to watch")
    parser.add_argument("--sources", type=int, default=1, help="lockout: anonymous sources")
    parser.add_argument("--nofile", type=int, default=None, help="the proxy's RLIMIT_NOFILE")
    parser.add_argument(
        "--proxy-arg", action="append", default=[], help="an extra proxy option (repeatable)"
    )
    options = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="simmesh-probe-") as tmp:
        probes = {"h2c": probe_h2c, "window": probe_window, "lockout": probe_lockout}
        probe = probes[options.probe]
        asyncio.run(probe(options, Path(tmp)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
