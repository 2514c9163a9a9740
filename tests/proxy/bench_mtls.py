"""CPU per 1,000 requests across nodes: plaintext simmesh against mTLS tunnels (issue 17).

``python -m tests.proxy.bench_mtls [--rate 1000] [--seconds 3]`` runs, one after the other,
three set-ups of tests/proxy/mtlsnet.py (two proxies as nodes, a backend on node-b) in a
child process, and drives them from this process at a fixed rate over 16 keep-alive
connections:

- ``direct``: the client calls the backend itself (what the backend and the idle proxies cost);
- ``plaintext``: mTLS off: client -> proxy A -> the pod on node-b (one proxy hop, as before);
- ``mtls``: strict: client -> proxy A -> mTLS -> proxy B -> the pod (two proxy hops; access
  control is off, so proxy A opens pipes that proxy B splices: mesh.proxy.pipe);
- ``tunnel``: the same with ``--no-tunnel-pipes``: every request on a tunnel connection,
  parsed, decided and forwarded again by proxy B.

The pod's backend runs in a process of its own for HTTP (so the child's CPU is the proxies'
alone, with nothing to subtract); the proxies run on uvloop as ``simmesh proxy`` does
(``--loop asyncio``: asyncio's own loop).

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

MODES = ("direct", "plaintext", "tunnel", "mtls")
PROTOCOLS = ("http", "tcp-flows", "tcp-echo")
_PAYLOAD = b"x" * 64
_LOOP = ["uvloop"]  # the serving children's event loop (--loop)


async def _backend() -> None:
    """The far pod's HTTP backend, in a process of its own: its port, then serve until stdin
    closes."""
    from tests.proxy.harness import backend_app, serve_app
    from tests.proxy.mtlsnet import FAR_IP

    async with serve_app(backend_app("far0"), FAR_IP) as port:
        print(port, flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)


async def _serve(mode: str, protocol: str, far_port: int | None) -> None:
    from tests.proxy.mtlsnet import FAR_IP, two_nodes

    mtls = MtlsMode.OFF if mode in ("direct", "plaintext") else MtlsMode.STRICT
    tcp = protocol != "http"
    with tempfile.TemporaryDirectory() as tmp:
        pipes = mode != "tunnel"
        async with two_nodes(Path(tmp), flows=tcp, far_port=far_port, pipes=pipes) as net:
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
            pipes = metric(net.b, "simmesh_proxy_tunnel_pipes_total", mode="spliced")
            print(
                f"{mode}: node-b's proxy served {served:.0f} HTTP requests itself and spliced "
                f"{pipes:.0f} pipes; {handshakes:.0f} tunnel handshakes",
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
    backend: asyncio.subprocess.Process | None = None
    far: list[str] = []
    if protocol == "http":  # the pod's backend in a process of its own: not measured
        backend = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tests.proxy.bench_mtls",
            "--backend",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        assert backend.stdout is not None
        far = ["--far-port", (await backend.stdout.readline()).decode().strip()]
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.proxy.bench_mtls",
        "--protocol",
        protocol,
        "--serve",
        mode,
        "--loop",
        _LOOP[0],
        *far,
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

    await drive(rate, 1.0)  # warm up at the rate: the pools grow (handshakes) before the window
    before = _cpu(child.pid)
    ok, failed = await drive(rate, seconds)
    used = _cpu(child.pid) - before
    child.stdin.close()
    await child.wait()
    if backend is not None and backend.stdin is not None:
        backend.stdin.close()
        await backend.wait()
    return used, ok, failed


async def _main(rate: int, seconds: float, protocol: str, runs: int) -> None:
    plains: list[float] = []
    tunnels: list[float] = []
    tlss: list[float] = []
    for run in range(runs):
        results = {}
        for mode in MODES:
            used, ok, failed = await _measure(mode, rate, seconds, protocol)
            results[mode] = used / max(ok, 1) * 1000
            print(f"run {run + 1} {protocol} {mode:10} {ok} ok {failed} failed, CPU {used:.3f} s")
        plain = results["plaintext"] - results["direct"]
        tunnel = results["tunnel"] - results["direct"]
        tls = results["mtls"] - results["direct"]
        plains.append(plain)
        tunnels.append(tunnel)
        tlss.append(tls)
        print(
            f"run {run + 1}: proxies' CPU per 1,000 {protocol} requests at {rate}/s: "
            f"plaintext {plain:.3f} s, mTLS {tls:.3f} s ({tls / plain:.2f}x), "
            f"mTLS without pipes {tunnel:.3f} s ({tunnel / plain:.2f}x)"
        )
    plain, tls = statistics.median(plains), statistics.median(tlss)
    tunnel = statistics.median(tunnels)
    print(
        f"median of {runs}: plaintext {plain:.3f} s, mTLS {tls:.3f} s, mTLS without pipes "
        f"{tunnel:.3f} s per 1,000 {protocol}"
    )
    print(f"mTLS / plaintext: {tls / plain:.2f}x ({(tls / plain - 1) * 100:+.0f}%)")
    print(f"mTLS without pipes / plaintext: {tunnel / plain:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--protocol", choices=PROTOCOLS, default="http")
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument(
        "--loop",
        choices=("uvloop", "asyncio"),
        default="uvloop",
        help="the proxies' event loop (uvloop: as `simmesh proxy` runs them)",
    )
    parser.add_argument("--serve", choices=MODES, help=argparse.SUPPRESS)
    parser.add_argument("--far-port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--backend", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.backend:
        asyncio.run(_backend())
    elif args.serve:
        factory = None
        if args.loop == "uvloop":
            import uvloop

            factory = uvloop.new_event_loop
        with asyncio.Runner(loop_factory=factory) as runner:
            runner.run(_serve(args.serve, args.protocol, args.far_port))
    else:
        _LOOP[0] = args.loop
        asyncio.run(_main(args.rate, args.seconds, args.protocol, args.runs))


if __name__ == "__main__":
    main()
