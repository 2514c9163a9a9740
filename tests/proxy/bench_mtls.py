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
timed test: one run on a shared machine is noisy; run it a few times.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

from mesh.core.model import MtlsMode

MODES = ("direct", "plaintext", "mtls")


async def _serve(mode: str) -> None:
    from tests.proxy.mtlsnet import FAR_IP, two_nodes

    mtls = MtlsMode.OFF if mode in ("direct", "plaintext") else MtlsMode.STRICT
    with tempfile.TemporaryDirectory() as tmp:
        async with two_nodes(Path(tmp)) as net:
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
            target = f"http://{FAR_IP}:{net.far}/" if mode == "direct" else net.url("far.demo.mesh")
            print(f"ready {target}", flush=True)
            await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
            from tests.proxy.harness import metric

            served = metric(
                net.b, "simmesh_proxy_http_requests_total", service="demo/far", code="200"
            )
            print(f"{mode}: node-b's proxy served {served:.0f} requests", file=sys.stderr)


def _cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


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

        total = int(rate * seconds)
        start = time.monotonic()
        tasks = []
        for i in range(total):
            delay = start + i / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one()))
        await asyncio.gather(*tasks)
    return ok, failed


async def _measure(mode: str, rate: int, seconds: float) -> tuple[float, int, int]:
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.proxy.bench_mtls",
        "--serve",
        mode,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    assert child.stdout is not None and child.stdin is not None
    line = (await child.stdout.readline()).decode().split()
    target = line[1]
    await _drive(target, 50, 1.0)  # warm up: pools, handshakes
    before = _cpu(child.pid)
    ok, failed = await _drive(target, rate, seconds)
    used = _cpu(child.pid) - before
    child.stdin.close()
    await child.wait()
    return used, ok, failed


async def _main(rate: int, seconds: float) -> None:
    results = {}
    for mode in MODES:
        used, ok, failed = await _measure(mode, rate, seconds)
        results[mode] = used / max(ok, 1) * 1000
        print(f"{mode:10} {ok} ok {failed} failed, child CPU {used:.3f} s")
    plain = results["plaintext"] - results["direct"]
    tls = results["mtls"] - results["direct"]
    print(f"proxies' CPU per 1,000 requests at {rate}/s: plaintext {plain:.3f} s, mTLS {tls:.3f} s")
    print(f"mTLS / plaintext: {tls / plain:.2f}x ({(tls / plain - 1) * 100:+.0f}%)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--serve", choices=MODES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        asyncio.run(_serve(args.serve))
    else:
        asyncio.run(_main(args.rate, args.seconds))


if __name__ == "__main__":
    main()
