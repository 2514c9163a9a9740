"""CPU per 1,000 requests across nodes: plaintext simmesh against mTLS tunnels (issue 17).

``python -m tests.proxy.bench_mtls [--rate 1000] [--seconds 3]`` runs, one after the other,
three set-ups of tests/proxy/mtlsnet.py (two proxies as nodes, a backend on node-b) in a
child process, and drives them from this process at a fixed rate over 16 keep-alive
connections:

- ``direct``: the client calls the backend itself (what the backend and the idle proxies cost);
- ``plaintext``: mTLS off: client -> proxy A -> the pod on node-b (one proxy hop, as before);
- ``mtls``: strict: client -> proxy A -> mTLS tunnel -> proxy B -> the pod (two proxy hops).

The child's CPU time (user + system, from /proc) over the run, less ``direct``'s, is what the
proxies spent; it prints CPU seconds per 1,000 requests and the ratio mTLS / plaintext. Not a
timed test: one run on a shared machine is noisy; run it a few times (``--runs N`` prints
each run and the medians).

``--protocol tcp-flows``: each request is a TCP flow of its own to the TCP service ``db``
(connect, 64 bytes echoed, half-close, the pod's summary line, close): through the tunnel,
a flow on a pooled stream connection. ``--protocol tcp-echo``: 64 bytes echoed per request
on 16 long-lived TCP flows.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp

from mesh.core.model import MtlsMode

MODES = ("direct", "plaintext", "mtls")
PROTOCOLS = ("http", "tcp-flows", "tcp-echo")
_PAYLOAD = b"x" * 64


async def _serve(mode: str, protocol: str) -> None:
    from tests.proxy.mtlsnet import FAR_IP, two_nodes

    mtls = MtlsMode.OFF if mode in ("direct", "plaintext") else MtlsMode.STRICT
    tcp = protocol != "http"
    with tempfile.TemporaryDirectory() as tmp:
        async with two_nodes(Path(tmp), flows=tcp) as net:
            if mtls is MtlsMode.OFF:
                import msgspec

                from mesh.core.config import config_version

                off = msgspec.structs.replace(
                    net.config,
                    settings=msgspec.structs.replace(net.config.settings, mtls=None),
                    version="",
                )
                off = msgspec.structs.replace(off, version=config_version(off))
                await net.a.apply(off)
                await net.b.apply(off)
            if tcp:
                direct = mode == "direct"
                port = net.extra["db"] if direct else net.listener("db")
                target = f"{FAR_IP if direct else '127.0.0.1'}:{port}"
            elif mode == "direct":
                target = f"http://{FAR_IP}:{net.far}/"
            else:
                target = net.url("far.demo.mesh")
            print(f"ready {target}", flush=True)
            await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
            from tests.proxy.harness import metric

            served = metric(
                net.b, "simmesh_proxy_http_requests_total", service="demo/far", code="200"
            )
            handshakes = metric(net.a, "simmesh_proxy_tunnel_handshakes_total", side="client")
            print(
                f"{mode}: node-b's proxy served {served:.0f} HTTP requests; "
                f"{handshakes:.0f} tunnel handshakes",
                file=sys.stderr,
            )


def _cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _paced(one: Callable[[], Awaitable[None]], rate: int, seconds: float) -> None:
    """``one()`` started ``rate`` times a second for ``seconds`` (an open loop), awaited."""
    start = time.monotonic()
    tasks = []
    for i in range(int(rate * seconds)):
        delay = start + i / rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one()))
    await asyncio.gather(*tasks)


async def _drive(target: str, rate: int, seconds: float) -> tuple[int, int]:
    """``rate`` requests/s for ``seconds`` over 16 connections; (ok, failed)."""
    connector = aiohttp.TCPConnector(limit=16, local_addr=("127.0.1.1", 0))
    ok = failed = 0
    async with aiohttp.ClientSession(connector=connector) as http:

        async def one() -> None:
            nonlocal ok, failed
            try:
                async with http.get(target, headers={"Host": "far.demo.mesh"}) as resp:
                    await resp.read()
                    ok += resp.status == 200
                    failed += resp.status != 200
            except aiohttp.ClientError:
                failed += 1

        await _paced(one, rate, seconds)
    return ok, failed


async def _flow(host: str, port: int) -> bool:
    """One short TCP flow: 64 bytes echoed, half-close, the summary, closed."""
    reader, writer = await asyncio.open_connection(host, port, local_addr=("127.0.1.1", 0))
    try:
        writer.write(_PAYLOAD)
        echoed = await reader.readexactly(len(_PAYLOAD))
        writer.write_eof()
        summary = await reader.read()
        return echoed == _PAYLOAD and summary == b"total 64\n"
    finally:
        writer.close()


async def _drive_tcp(target: str, rate: int, seconds: float, protocol: str) -> tuple[int, int]:
    host, _, port_text = target.rpartition(":")
    port = int(port_text)
    ok = failed = 0
    conns: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = asyncio.Queue()
    if protocol == "tcp-echo":
        for _ in range(16):
            conns.put_nowait(await asyncio.open_connection(host, port, local_addr=("127.0.1.1", 0)))

    async def one() -> None:
        nonlocal ok, failed
        try:
            if protocol == "tcp-flows":
                good = await _flow(host, port)
            else:
                reader, writer = await conns.get()
                writer.write(_PAYLOAD)
                good = await reader.readexactly(len(_PAYLOAD)) == _PAYLOAD
                conns.put_nowait((reader, writer))
        except (OSError, asyncio.IncompleteReadError):
            good = False
        ok += good
        failed += not good

    await _paced(one, rate, seconds)
    while not conns.empty():
        conns.get_nowait()[1].close()
    return ok, failed


async def _measure(
    mode: str, rate: int, seconds: float, protocol: str = "http"
) -> tuple[float, int, int]:
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.proxy.bench_mtls",
        "--protocol",
        protocol,
        "--serve",
        mode,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    assert child.stdout is not None and child.stdin is not None
    line = (await child.stdout.readline()).decode().split()
    target = line[1]

    async def drive(rate: int, seconds: float) -> tuple[int, int]:
        if protocol == "http":
            return await _drive(target, rate, seconds)
        return await _drive_tcp(target, rate, seconds, protocol)

    await drive(50, 1.0)  # warm up: pools, handshakes
    before = _cpu(child.pid)
    ok, failed = await drive(rate, seconds)
    used = _cpu(child.pid) - before
    child.stdin.close()
    await child.wait()
    return used, ok, failed


async def _main(rate: int, seconds: float, protocol: str, runs: int) -> None:
    plains, tlss = [], []
    for run in range(runs):
        results = {}
        for mode in MODES:
            used, ok, failed = await _measure(mode, rate, seconds, protocol)
            results[mode] = used / max(ok, 1) * 1000
            print(f"run {run + 1} {protocol} {mode:10} {ok} ok {failed} failed, CPU {used:.3f} s")
        plain = results["plaintext"] - results["direct"]
        tls = results["mtls"] - results["direct"]
        plains.append(plain)
        tlss.append(tls)
        print(
            f"run {run + 1}: proxies' CPU per 1,000 {protocol} requests at {rate}/s: "
            f"plaintext {plain:.3f} s, mTLS {tls:.3f} s ({tls / plain:.2f}x)"
        )
    plain, tls = statistics.median(plains), statistics.median(tlss)
    print(f"median of {runs}: plaintext {plain:.3f} s, mTLS {tls:.3f} s per 1,000 {protocol}")
    print(f"mTLS / plaintext: {tls / plain:.2f}x ({(tls / plain - 1) * 100:+.0f}%)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--protocol", choices=PROTOCOLS, default="http")
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--serve", choices=MODES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        asyncio.run(_serve(args.serve, args.protocol))
    else:
        asyncio.run(_main(args.rate, args.seconds, args.protocol, args.runs))


if __name__ == "__main__":
    main()
