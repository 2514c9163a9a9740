"""Calibrate the simulator's profile on this machine (sim/profile.py): what the local mesh costs.

    python -m loadtests.bench_proxy --profile sim/profiles/local.yaml    # about 2 minutes
    python -m loadtests.calibrate --out sim/profiles/local.yaml          # the same

Measures, each on loopback with the project's own commands (fortio for load; CPU from
/proc/PID/stat over steady-state windows; medians of ``--repeat`` runs):

- proxy: CPU seconds per request and per attempt and per response byte of ``simmesh proxy``:
  fortio at a fixed, evenly paced rate through the proxy to fortio's echo server, (a) 64-byte
  answers, (b) the same with one retry on 503 and half the answers 503 (1.5 attempts per
  request), (c) 64 KiB answers; solved for the three costs;
- app: CPU seconds per request of ``simmesh testapp`` (fortio straight to it), its answer's
  size, and its timer (a 10.1 ms asyncio sleep ends after 11 ms: the epoll timeout is in ms);
- client: CPU seconds per request of Locust running the local mesh's own users
  (mesh/local/locustfile.py, open loop) against fortio's server;
- network: half the median round trip of one byte between two processes over loopback;
- wakeup: how late a process that sleeps 2 ms is woken (the machine's CPU contention: run this
  when the machine is as busy as it will be during ``simmesh verify``);
- configDelay: from a manifest change to every proxy applying it (controller file provider,
  two proxies);
- tls: what mutual TLS between node proxies costs (loadtests/calibrate_tls.py); ``--tls``
  measures only that and writes it into the existing profile (``--out``), the rest kept.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from loadtests.bench_proxy import (
    BACKEND_IP,
    ROOT,
    Processes,
    compile_config,
    cpu_seconds,
    fortio_binary,
    fortio_load,
    free_port,
    manifests,
    simmesh_proxy,
    start_fortio_server,
    wait_port,
)
from loadtests.calibrate_tls import tls_costs
from loadtests.report import machine

QPS = 400


def _requests(result: dict[str, Any]) -> int:
    return sum(int(n) for n in result.get("RetCodes", {}).values()) or 1


def cpu_per_request(fortio: str, url: str, pid: int, *, seconds: float, host: str | None) -> float:
    before = cpu_seconds(pid)
    result = fortio_load(
        fortio,
        url,
        qps=QPS,
        connections=4,
        duration=seconds,
        uniform=True,
        host=host,
        allow_errors=True,
    )
    return (cpu_seconds(pid) - before) / _requests(result)


def _retrying(directory: Path, backend_port: int, http: int, tcp: int, sink: int) -> None:
    manifests(directory, services=1, backend_port=backend_port, http=http, tcp=tcp, sink_port=sink)
    objects = json.loads((directory / "objects.json").read_text())
    objects["items"][0]["metadata"]["annotations"] = {"simmesh.io/retry-attempts": "1"}
    (directory / "objects.json").write_text(json.dumps(objects))


def proxy_costs(
    procs: Processes, fortio: str, work: Path, seconds: float, repeat: int
) -> dict[str, float]:
    backend_port, sink = free_port(BACKEND_IP), free_port(BACKEND_IP)
    start_fortio_server(procs, fortio, BACKEND_IP, backend_port)
    wait_port(BACKEND_IP, backend_port)
    http, tcp = free_port(), free_port()
    _retrying(work / "mesh", backend_port, http, tcp, sink)
    compile_config(work / "mesh", work / "mesh.json")
    host = "web.bench.mesh"
    base = f"http://127.0.0.1:{http}/echo"
    samples: dict[str, list[float]] = {"a": [], "b": [], "c": []}
    with simmesh_proxy(procs, work / "mesh.json", http) as proxy:
        fortio_load(fortio, f"{base}?size=64", qps=0, connections=4, duration=2, host=host)
        for _ in range(repeat):
            for key, query in (
                ("a", "size=64"),
                ("b", "size=64&status=503:50"),
                ("c", "size=65536"),
            ):
                samples[key].append(
                    cpu_per_request(
                        fortio, f"{base}?{query}", proxy.pid, seconds=seconds, host=host
                    )
                )
    a, b, c = (statistics.median(samples[k]) for k in "abc")
    attempt = max(0.0, (b - a) / 0.5)
    per_byte = max(0.0, (c - a) / (65536 - 64))
    return {
        "request": max(0.0, a - attempt - 64 * per_byte),
        "attempt": attempt,
        "byte": per_byte,
        "raw": {"plain": a, "retried": b, "64KiB": c},  # type: ignore[dict-item]
    }


def app_costs(procs: Processes, fortio: str, seconds: float, repeat: int) -> dict[str, float]:
    port = free_port("127.0.0.4")
    app = procs.start(
        [
            sys.executable,
            "-m",
            "mesh.cli",
            "testapp",
            "--bind",
            "127.0.0.4",
            "--http-port",
            str(port),
            "--latency",
            "0",
            "--log-level",
            "warning",
        ],
        cwd=ROOT,
    )
    wait_port("127.0.0.4", port, process=app)
    url = f"http://127.0.0.4:{port}/echo"
    fortio_load(fortio, url, qps=0, connections=4, duration=2)
    cost = statistics.median(
        cpu_per_request(fortio, url, app.pid, seconds=seconds, host=None) for _ in range(repeat)
    )
    headers = {
        "Host": "backend.shop.mesh",
        "User-Agent": "python/gevent-http-client-2.6.1",
        "traceparent": f"00-{'0' * 32}-{'1' * 16}-01",
        "X-Forwarded-For": "127.101.0.9",
        "X-Forwarded-Proto": "http",
        "X-Forwarded-Host": "backend.shop.mesh",
    }
    request = urllib.request.Request(url, headers=headers)
    with urllib.request.urlopen(request, timeout=5) as response:
        size = len(response.read())
    procs.stop(app)
    return {"request": cost, "bytes": float(size)}


def client_cost(procs: Processes, fortio: str, work: Path, seconds: float) -> float:
    port = free_port("127.0.0.5")
    start_fortio_server(procs, fortio, "127.0.0.5", port)
    wait_port("127.0.0.5", port)
    stream = {
        "index": 0,
        "name": "calibrate",
        "protocol": "http",
        "source": None,
        "address": "127.0.0.6",
        "node": "n",
        "proxy": "127.0.0.5",
        "port": port,
        "host": "calibrate.mesh",
        "mix": [{"method": "GET", "path": "/echo", "weight": 1, "headers": {}}],
        "rate": float(QPS),
        "users": 0,
        "think": 0.0,
        "start": 0.0,
        "stop": seconds + 4,
    }
    (work / "plan.json").write_text(json.dumps({"seed": 1, "streams": [stream]}))
    t0_file, ready = work / "t0", work / "ready"
    env = {
        **os.environ,
        "SIMMESH_PLAN": str(work / "plan.json"),
        "SIMMESH_T0_FILE": str(t0_file),
        "SIMMESH_READY_FILE": str(ready),
        "SIMMESH_ROWS": str(work / "rows.json"),
    }
    locust = procs.start(
        [
            sys.executable,
            "-m",
            "locust",
            "-f",
            str(ROOT / "mesh/local/locustfile.py"),
            "--headless",
            "-u",
            "1",
            "-r",
            "1",
            "--run-time",
            f"{int(seconds + 30)}s",
            "--only-summary",
            "--loglevel",
            "WARNING",
        ],
        env=env,
        cwd=work,
    )
    deadline = time.monotonic() + 60
    while not ready.exists() and time.monotonic() < deadline and locust.poll() is None:
        time.sleep(0.05)
    t0 = time.time() + 0.5
    t0_file.write_text(repr(t0))
    time.sleep(max(0.0, t0 + 2 - time.time()))
    before = cpu_seconds(locust.pid)
    time.sleep(seconds)
    used = cpu_seconds(locust.pid) - before
    procs.stop(locust)
    return used / (QPS * seconds)


def network_one_way(count: int = 3000) -> float:
    server = socket.socket()
    server.bind(("127.0.0.7", 0))
    server.listen(1)
    port = server.getsockname()[1]
    echo = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import socket,sys\ns=socket.create_connection(('127.0.0.7',"
            f"{port}))\ns.setsockopt(6,1,1)\nwhile (b:=s.recv(1)): s.sendall(b)",
        ]
    )
    conn, _ = server.accept()
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    rtts = []
    for _ in range(count):
        start = time.perf_counter()
        conn.sendall(b"x")
        conn.recv(1)
        rtts.append(time.perf_counter() - start)
    conn.close()
    server.close()
    echo.wait(5)
    return statistics.median(rtts) / 2


WAKE_QUANTILES = (10, 25, 50, 75, 90, 95, 97, 98, 99, 99.5, 99.9)


def wakeups(count: int = 2000, sleep: float = 0.002, work: float = 0.0003) -> dict[float, float]:
    """Quantiles of how late a 2 ms sleep ends, each followed by 0.3 ms of CPU work as a busy
    event loop does (mesh/local/probe.py measures the same during ``simmesh verify``)."""
    late = []
    for _ in range(count):
        start = time.perf_counter()
        time.sleep(sleep)
        woke = time.perf_counter()
        late.append(max(0.0, woke - start - sleep))
        while time.perf_counter() - woke < work:
            pass
    late.sort()
    return {q: round(late[min(len(late) - 1, int(len(late) * q / 100))], 6) for q in WAKE_QUANTILES}


def asyncio_timer() -> float:
    async def overshoot() -> float:
        values = []
        for _ in range(60):
            start = time.perf_counter()
            await asyncio.sleep(0.0101)
            values.append(time.perf_counter() - start - 0.0101)
        return statistics.median(values)

    late = asyncio.run(overshoot())
    return 0.001 if late > 0.0005 else 0.0


def config_delay(procs: Processes, work: Path, changes: int = 10) -> float:
    directory = work / "cfg"
    backend_port = free_port(BACKEND_IP)
    manifests(
        directory,
        services=1,
        backend_port=backend_port,
        http=free_port(),
        tcp=free_port(),
        sink_port=free_port(BACKEND_IP),
    )
    port = free_port()
    controller = procs.start(
        [
            sys.executable,
            "-m",
            "mesh.cli",
            "controller",
            "--manifests",
            str(directory),
            "--listen",
            f"127.0.0.1:{port}",
            "--poll-interval",
            "0.05",
            "--log-level",
            "warning",
        ],
        cwd=ROOT,
    )
    wait_port("127.0.0.1", port, process=controller)
    for i, address in enumerate(("127.0.0.8", "127.0.0.9")):
        procs.start(
            [
                sys.executable,
                "-m",
                "mesh.proxy",
                "--controller",
                f"http://127.0.0.1:{port}",
                "--node",
                f"n{i}",
                "--bind",
                address,
                "--admin-port",
                "0",
                "--log-level",
                "warning",
            ],
            cwd=ROOT,
        )

    def nodes() -> dict[str, Any]:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/nodes", timeout=2) as r:
            return dict(json.loads(r.read()))

    def settled(before: str | None) -> Callable[[], bool]:
        def check() -> bool:
            state = nodes()
            return (
                len(state["nodes"]) == 2
                and all(n["current"] for n in state["nodes"])
                and state["version"] != before
            )

        return check

    _until(settled(None), 30)
    delays = []
    objects = json.loads((directory / "objects.json").read_text())
    for i in range(changes):
        before = nodes()["version"]
        objects["items"][0]["metadata"]["annotations"] = {"simmesh.io/retry-attempts": str(i + 1)}
        start = time.monotonic()
        (directory / "objects.json").write_text(json.dumps(objects))
        _until(settled(before), 10)
        delays.append(time.monotonic() - start)
        time.sleep(0.2)
    return statistics.median(delays)


def _until(check: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except OSError:
            pass
        time.sleep(0.01)
    raise RuntimeError("timed out waiting for the proxies")


def calibrate(*, seconds: float, repeat: int, progress: Callable[[str], None]) -> dict[str, Any]:
    fortio = fortio_binary()
    procs = Processes()
    work = Path(tempfile.mkdtemp(prefix="simmesh-calibrate-"))
    try:
        progress("proxy: CPU per request, per attempt, per byte (fortio)")
        proxy = proxy_costs(procs, fortio, work, seconds, repeat)
        progress("test app: CPU per request")
        app = app_costs(procs, fortio, seconds, repeat)
        progress("Locust: CPU per request")
        client = statistics.median(client_cost(procs, fortio, work, seconds) for _ in range(2))
        progress("network, wake-ups, timers, config propagation")
        network = network_one_way()
        wake = wakeups()
        timer = asyncio_timer()
        delay = config_delay(procs, work)
        progress("mTLS: handshakes, records")
        tls = tls_costs(answer=int(app["bytes"]))
    finally:
        procs.stop_all()
    return {
        "name": "local",
        "measured": f"{time.strftime('%Y-%m-%d')} on {machine()} by loadtests/calibrate.py",
        "proxy": {k: _round(proxy[k]) for k in ("request", "attempt", "byte")},
        "client": {"request": _round(client)},
        "app": {"request": _round(app["request"]), "timer": timer},
        "network": {"local": _round(network), "remote": _round(network)},
        "wakeup": {"dist": "empirical", "percentiles": wake},
        "configDelay": round(delay, 4),
        "responseBytes": int(app["bytes"]),
        "tls": {k: _round(v) for k, v in tls.items()},
        "_raw": proxy["raw"],
    }


def _round(value: float) -> float:
    return float(f"{value:.3g}")


def write_profile(profile: dict[str, Any], path: Path, command: str) -> None:
    raw = profile.pop("_raw", {})
    head = (
        "# The local mesh's costs on this machine, for the simulator (sim/profile.py).\n"
        f"# Written by `{command}`;\n"
        f"# proxy CPU per request: plain {raw.get('plain', 0):.3g} s, with 1.5 attempts "
        f"{raw.get('retried', 0):.3g} s, 64 KiB answers {raw.get('64KiB', 0):.3g} s.\n"
    )
    path.write_text(head + yaml.safe_dump(profile, sort_keys=False))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--out", type=Path, default=ROOT / "sim/profiles/local.yaml")
    parser.add_argument("--seconds", type=float, default=8.0, help="per measurement")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--tls", action="store_true", help="measure only the tls section into the --out profile"
    )
    args = parser.parse_args(argv)
    if args.tls:
        return _tls_only(args.out)
    started = time.monotonic()

    def progress(text: str) -> None:
        print(f"[{time.monotonic() - started:5.0f} s] {text}", file=sys.stderr, flush=True)

    profile = calibrate(seconds=args.seconds, repeat=args.repeat, progress=progress)
    command = "python -m loadtests.calibrate " + " ".join(
        argv if argv is not None else sys.argv[1:]
    )
    write_profile(profile, args.out, command.strip())
    print(args.out.read_text())
    return 0


def _tls_only(out: Path) -> int:
    """Measure the ``tls`` section and write it into the profile ``out`` (its other sections,
    and its comments, kept; the section replaced when there is one)."""
    text = out.read_text()
    raw = yaml.safe_load(text) or {}
    tls = {k: _round(v) for k, v in tls_costs(answer=int(raw.get("responseBytes") or 818)).items()}
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith("tls:")), None)
    if start is not None:
        end = start + 1
        if start > 0 and lines[start - 1].startswith("# tls measured"):
            start -= 1  # its note goes with it
        while end < len(lines) and lines[end].startswith((" ", "#")):
            end += 1
        del lines[start:end]
    note = f"# tls measured {time.strftime('%Y-%m-%d')} by `python -m loadtests.calibrate --tls`"
    lines += [note, yaml.safe_dump({"tls": tls}, sort_keys=False).rstrip()]
    out.write_text("\n".join(lines) + "\n")
    print(out.read_text())
    return 0


if __name__ == "__main__":
    threading.excepthook = lambda args: None  # a stray thread must not hide the result
    sys.exit(main())
