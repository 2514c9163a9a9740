"""Node proxy benchmark: direct vs simmesh vs HAProxy in front of the same backend, on loopback.

    python -m loadtests.bench_proxy                    # full run (about 5 minutes)
    python -m loadtests.bench_proxy --quick            # short durations, to check it works
    python -m loadtests.bench_proxy --benchmarks BENCHMARKS.md   # also write that section
    python -m loadtests.bench_proxy --profile sim/profiles/local.yaml   # calibrate the simulator
    python -m loadtests.bench_proxy --checkout /tmp/wt-main --json out/bench/before.json
                                 # another checkout's proxy (before/after), results as JSON

Measures, with fortio (``fortio load``) against a fortio echo server answering 1 KB bodies:

- latency at 1,000 requests/s over 16 connections (p50/p90/p99 per hop, and what each proxy
  adds to the direct p50/p90/p99), both with fortio's default pacing, where the 16
  connections fire together, and with ``-uniform`` pacing (requests spread evenly);
- the proxy's CPU seconds per 1,000 requests during that run (utime + stime from
  /proc/PID/stat), which is also its vCPU share per 1,000 requests/s;
- the highest rate over 16 connections (``-qps 0``);
- the proxy's resident memory (VmRSS) with 1 and with 1,000 services configured;
- TCP bulk throughput: 1 GB through simmesh's TCP listener, through HAProxy in TCP mode and
  directly, from a sender to a sink that discards.

Everything runs on 127.0.0.0/8 and stops what it starts. The project is used as a user would:
manifests -> ``simmesh compile`` -> ``python -m mesh.proxy --config-file``. HAProxy runs with
one thread (``nbthread 1``), like the single event loop of simmesh. The machine's cores are
shared by load generator, backend and proxy, so absolute numbers are this machine's; the
ratios are what to compare. Tools: fortio from ``SIMMESH_BIN_DIR`` or ``~/.cache/simmesh/bin``
(installed there with ``go install`` when missing), HAProxy from PATH (``apt-get install -y
haproxy``; its rows are left out, and say so, when it is missing).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from loadtests.builds import interpreted_tree
from loadtests.report import machine, write_section

ROOT = Path(__file__).resolve().parents[1]
FORTIO_VERSIONS = ("latest", "v1.63.0")  # latest first; the pin is known to build here
HOST = "web.bench.mesh"
BACKEND_IP = "127.0.0.2"
INTERPRETED_IP = "127.0.0.3"  # the interpreted proxy binds the same listener ports here
# Issue 12's targets: one simmesh worker against HAProxy with nbthread 1, in the same run.
TARGETS = {
    "cpu_vs_haproxy": 2.0,  # CPU seconds per 1,000 requests at 1,000 requests/s, at most
    "added_p99_ms": 1.5,  # at 1,000 requests/s, fortio's default pacing (issue 18)
    "added_p99_uniform_ms": 0.1,  # the same with -uniform pacing
    "rate_vs_haproxy": 0.6,  # highest rate over 16 connections, at least
    "rss_1000_services_mb": 60.0,
    "tcp_vs_haproxy": 0.70,
}


@dataclass
class Settings:
    duration: float = 30.0
    max_duration: float = 10.0
    qps: int = 1000
    connections: int = 16
    tcp_bytes: int = 1 << 30
    services: int = 1000
    upstream: str = "raw"  # the proxy's http upstream client: raw (httptools) or aiohttp
    haproxy: bool = True
    checkout: Path = ROOT  # the simmesh source tree whose compiler and proxy are measured
    interpreted: bool = True  # also the same proxy from a copy without compiled modules
    relay: bool = True  # also a minimal uvloop byte relay (loadtests/relay.py)


@dataclass
class Run:
    name: str
    qps: float
    p50: float
    p90: float
    p99: float
    errors: int
    cpu_per_1000: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


# -- tools ------------------------------------------------------------------------------------


def fortio_binary() -> str:
    candidates = []
    if os.environ.get("SIMMESH_BIN_DIR"):
        candidates.append(Path(os.environ["SIMMESH_BIN_DIR"]) / "fortio")
    cache = Path.home() / ".cache" / "simmesh" / "bin"
    candidates.append(cache / "fortio")
    for path in candidates:
        if path.exists():
            return str(path)
    found = shutil.which("fortio")
    if found:
        return found
    go = shutil.which("go") or "/usr/local/go/bin/go"
    cache.mkdir(parents=True, exist_ok=True)
    for version in FORTIO_VERSIONS:
        result = subprocess.run(
            [go, "install", f"fortio.org/fortio@{version}"],
            env={**os.environ, "GOBIN": str(cache), "GOFLAGS": "-mod=mod"},
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        if result.returncode == 0 and (cache / "fortio").exists():
            return str(cache / "fortio")
        print(
            f"go install fortio@{version} failed: {result.stderr.strip()[-300:]}", file=sys.stderr
        )
    raise SystemExit("fortio is needed: set SIMMESH_BIN_DIR or install Go")


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def wait_port(
    host: str, port: int, timeout: float = 15.0, process: subprocess.Popen[bytes] | None = None
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            error = process.stderr.read().decode() if process.stderr else ""
            raise RuntimeError(f"{process.args!r} exited: {error[-500:]}")
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {host}:{port}")


class Processes:
    """Every process the benchmark starts, stopped (by pid) on exit."""

    def __init__(self) -> None:
        self.items: list[subprocess.Popen[bytes]] = []

    def start(self, command: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        process = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, **kwargs
        )
        self.items.append(process)
        return process

    def stop(self, process: subprocess.Popen[bytes]) -> None:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)
        if process.stderr is not None:
            process.stderr.close()

    def stop_all(self) -> None:
        for process in reversed(self.items):
            self.stop(process)


def start_fortio_server(procs: Processes, fortio: str, ip: str, port: int) -> None:
    """fortio's echo server on ip:port, HTTP only (its other listeners off)."""
    off = ["-grpc-port", "disabled", "-redirect-port", "disabled"]
    off += ["-tcp-port", "disabled", "-udp-port", "disabled"]
    procs.start([fortio, "server", "-http-port", f"{ip}:{port}", *off])


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


# -- the mesh, as a user builds it ---------------------------------------------------------------


def manifests(
    directory: Path, *, services: int, backend_port: int, http: int, tcp: int, sink_port: int
) -> None:
    docs: list[dict[str, Any]] = []
    for i in range(services):
        name = "web" if i == 0 else f"svc{i}"
        docs.append(
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": name, "namespace": "bench"},
                "spec": {"ports": [{"name": "http", "port": 80, "targetPort": "http"}]},
            }
        )
        docs.append(
            {
                "apiVersion": "discovery.k8s.io/v1",
                "kind": "EndpointSlice",
                "metadata": {
                    "name": f"{name}-0",
                    "namespace": "bench",
                    "labels": {"kubernetes.io/service-name": name},
                },
                "ports": [{"name": "http", "port": backend_port}],
                "endpoints": [{"addresses": [BACKEND_IP], "conditions": {"ready": True}}],
            }
        )
    docs.append(
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {
                "name": "sink",
                "namespace": "bench",
                "annotations": {"simmesh.io/traffic-type": "tcp"},
            },
            "spec": {"ports": [{"name": "raw", "port": 9000, "targetPort": "raw"}]},
        }
    )
    docs.append(
        {
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {
                "name": "sink-0",
                "namespace": "bench",
                "labels": {"kubernetes.io/service-name": "sink"},
            },
            "ports": [{"name": "raw", "port": sink_port}],
            "endpoints": [{"addresses": [BACKEND_IP], "conditions": {"ready": True}}],
        }
    )
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "objects.json").write_text(json.dumps({"kind": "List", "items": docs}))
    (directory / "mesh.yaml").write_text(
        f"httpPorts: {{start: {http}, size: 1}}\ntcpPorts: {{start: {tcp}, size: 1}}\n"
    )


def checkout_env(checkout: Path) -> dict[str, str]:
    """The environment that runs ``checkout``'s simmesh (before an installed one)."""
    return {**os.environ, "PYTHONPATH": str(checkout)}


def compile_config(directory: Path, out: Path, checkout: Path = ROOT) -> None:
    command = [sys.executable, "-m", "mesh.cli", "compile", str(directory), "-o", "json"]
    result = subprocess.run(
        command, cwd=checkout, env=checkout_env(checkout), capture_output=True, check=True
    )
    out.write_bytes(result.stdout)


@contextlib.contextmanager
def simmesh_proxy(
    procs: Processes,
    config: Path,
    http: int,
    settings: Settings | None = None,
    *,
    bind: str = "127.0.0.1",
) -> Iterator[subprocess.Popen[bytes]]:
    settings = settings or Settings()
    admin = free_port()
    command = [
        sys.executable,
        "-m",
        "mesh.proxy",
        "--config-file",
        str(config),
        "--node",
        "bench",
        "--bind",
        bind,
        "--admin-port",
        str(admin),
        "--log-level",
        "warning",
    ]
    env = {**checkout_env(settings.checkout), "SIMMESH_PROXY_UPSTREAM": settings.upstream}
    process = procs.start(command, cwd=settings.checkout, env=env)
    try:
        ready = f"http://{bind}:{admin}/readyz"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), urllib.request.urlopen(ready, timeout=1) as r:
                if r.status == 200:
                    break
            time.sleep(0.1)
        wait_port(bind, http)
        yield process
    finally:
        procs.stop(process)


def haproxy_config(path: Path, *, http: int, tcp: int, backend_port: int, sink_port: int) -> None:
    path.write_text(
        f"""global
    nbthread 1
    maxconn 4000
defaults
    timeout connect 5s
    timeout client 60s
    timeout server 60s
frontend web
    mode http
    option http-keep-alive
    bind 127.0.0.1:{http}
    default_backend web
backend web
    mode http
    server s1 {BACKEND_IP}:{backend_port}
frontend raw
    mode tcp
    bind 127.0.0.1:{tcp}
    default_backend raw
backend raw
    mode tcp
    server s1 {BACKEND_IP}:{sink_port}
"""
    )


# -- measurements -------------------------------------------------------------------------------


def fortio_load(
    fortio: str,
    url: str,
    *,
    qps: int,
    connections: int,
    duration: float,
    uniform: bool = False,
    host: str | None = None,
    allow_errors: bool = False,
) -> dict[str, Any]:
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        command = [
            fortio,
            "load",
            "-quiet",
            "-qps",
            str(qps),
            "-c",
            str(connections),
            "-t",
            f"{duration}s",
            "-p",
            "50,90,99",
            "-json",
            out.name,
        ]
        if uniform:
            command.append("-uniform")
        if allow_errors:  # fortio stops at a first answer that is not 200 otherwise
            command.append("-allow-initial-errors")
        if host:
            command += ["-H", f"Host: {host}"]
        subprocess.run([*command, url], capture_output=True, check=True, timeout=duration + 60)
        return dict(json.loads(Path(out.name).read_text()))


def summarize(name: str, result: dict[str, Any]) -> Run:
    percentiles = {
        p["Percentile"]: p["Value"] * 1000 for p in result["DurationHistogram"]["Percentiles"]
    }
    errors = sum(n for code, n in result.get("RetCodes", {}).items() if code != "200")
    return Run(name, result["ActualQPS"], percentiles[50], percentiles[90], percentiles[99], errors)


def measure(
    fortio: str,
    name: str,
    url: str,
    settings: Settings,
    *,
    qps: int,
    duration: float,
    pid: int | None,
    uniform: bool = False,
    host: str | None = None,
) -> Run:
    before = cpu_seconds(pid) if pid else 0.0
    result = fortio_load(
        fortio,
        url,
        qps=qps,
        connections=settings.connections,
        duration=duration,
        uniform=uniform,
        host=host,
    )
    run = summarize(name, result)
    if pid:
        requests = sum(result.get("RetCodes", {}).values()) or 1
        run.cpu_per_1000 = (cpu_seconds(pid) - before) / requests * 1000
    return run


SINK = """
import socket, sys
server = socket.socket()
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind((sys.argv[1], int(sys.argv[2])))
server.listen(64)
buf = bytearray(1 << 20)
while True:
    conn, _ = server.accept()
    with conn:
        while conn.recv_into(buf):
            pass
        conn.sendall(b"done")
"""


def tcp_bulk(host: str, port: int, size: int) -> float:
    """GB/s for ``size`` bytes sent to the sink through ``host:port`` (until the sink acks)."""
    block = memoryview(bytearray(1 << 20))
    started = time.perf_counter()
    with socket.create_connection((host, port)) as sock:
        sent = 0
        while sent < size:
            sock.sendall(block)
            sent += len(block)
        sock.shutdown(socket.SHUT_WR)
        assert sock.recv(16) == b"done"
    return size / (time.perf_counter() - started) / 1e9


def rss_with_services(
    procs: Processes, work: Path, settings: Settings, backend_port: int, sink_port: int, fortio: str
) -> dict[int, float]:
    out = {}
    for count in (1, settings.services):
        http, tcp = free_port(), free_port()
        directory = work / f"rss-{count}"
        manifests(
            directory,
            services=count,
            backend_port=backend_port,
            http=http,
            tcp=tcp,
            sink_port=sink_port,
        )
        config = work / f"rss-{count}.json"
        compile_config(directory, config, settings.checkout)
        with simmesh_proxy(procs, config, http, settings) as proxy:
            for name in ["web"] + (["svc1", f"svc{count - 1}"] if count > 1 else []):
                fortio_load(
                    fortio,
                    f"http://127.0.0.1:{http}/echo?size=1024",
                    qps=0,
                    connections=4,
                    duration=1,
                    host=f"{name}.bench.mesh",
                )
            out[count] = rss_mb(proxy.pid)
    return out


# -- the run -----------------------------------------------------------------------------------


def run(settings: Settings) -> Results:
    fortio = fortio_binary()
    haproxy = shutil.which("haproxy") if settings.haproxy else None
    procs = Processes()
    work = Path(tempfile.mkdtemp(prefix="simmesh-bench-"))
    try:
        backend_port, sink_port = free_port(BACKEND_IP), free_port(BACKEND_IP)
        http, tcp, h_http, h_tcp = free_port(), free_port(), free_port(), free_port()
        start_fortio_server(procs, fortio, BACKEND_IP, backend_port)
        procs.start([sys.executable, "-c", SINK, BACKEND_IP, str(sink_port)])
        wait_port(BACKEND_IP, backend_port)
        wait_port(BACKEND_IP, sink_port)
        manifests(
            work / "mesh",
            services=1,
            backend_port=backend_port,
            http=http,
            tcp=tcp,
            sink_port=sink_port,
        )
        compile_config(work / "mesh", work / "mesh.json", settings.checkout)
        haproxy_process = None
        if haproxy:
            haproxy_config(
                work / "haproxy.cfg",
                http=h_http,
                tcp=h_tcp,
                backend_port=backend_port,
                sink_port=sink_port,
            )
            haproxy_process = procs.start([haproxy, "-f", str(work / "haproxy.cfg"), "-db"])
            wait_port("127.0.0.1", h_http, process=haproxy_process)
        direct = f"http://{BACKEND_IP}:{backend_port}/echo?size=1024"
        meshed = f"http://127.0.0.1:{http}/echo?size=1024"
        fronted = f"http://127.0.0.1:{h_http}/echo?size=1024"
        latency: list[Run] = []
        uniform: list[Run] = []
        maximum: list[Run] = []
        throughput: dict[str, float] = {}
        with contextlib.ExitStack() as stack:
            proxy = stack.enter_context(simmesh_proxy(procs, work / "mesh.json", http, settings))
            fortio_load(fortio, meshed, qps=0, connections=16, duration=2, host=HOST)  # warm up
            hops = [("direct", direct, None, None), ("simmesh", meshed, proxy.pid, HOST)]
            if settings.interpreted:
                pure = stack.enter_context(interpreted_tree())
                plain = stack.enter_context(
                    simmesh_proxy(
                        procs,
                        work / "mesh.json",
                        http,
                        replace(settings, checkout=pure),
                        bind=INTERPRETED_IP,
                    )
                )
                url = f"http://{INTERPRETED_IP}:{http}/echo?size=1024"
                fortio_load(fortio, url, qps=0, connections=16, duration=2, host=HOST)
                hops.append(("simmesh, interpreted", url, plain.pid, HOST))
            if settings.relay:
                relay_port = free_port()
                target = [BACKEND_IP, str(backend_port)]
                relay_command = [sys.executable, "-m", "loadtests.relay", "127.0.0.1"]
                relay = procs.start([*relay_command, str(relay_port), *target], cwd=ROOT)
                wait_port("127.0.0.1", relay_port, process=relay)
                url = f"http://127.0.0.1:{relay_port}/echo?size=1024"
                hops.append(("uvloop relay", url, relay.pid, None))
            if haproxy_process is not None:
                hops.append(("haproxy", fronted, haproxy_process.pid, None))
            for name, url, pid, host in hops:
                latency.append(
                    measure(
                        fortio,
                        name,
                        url,
                        settings,
                        qps=settings.qps,
                        duration=settings.duration,
                        pid=pid,
                        host=host,
                    )
                )
            for name, url, pid, host in hops:
                uniform.append(
                    measure(
                        fortio,
                        name,
                        url,
                        settings,
                        qps=settings.qps,
                        duration=settings.duration,
                        pid=pid,
                        host=host,
                        uniform=True,
                    )
                )
            for name, url, pid, host in hops:
                maximum.append(
                    measure(
                        fortio,
                        name,
                        url,
                        settings,
                        qps=0,
                        duration=settings.max_duration,
                        pid=pid,
                        host=host,
                    )
                )
            throughput["direct"] = tcp_bulk(BACKEND_IP, sink_port, settings.tcp_bytes)
            throughput["simmesh"] = tcp_bulk("127.0.0.1", tcp, settings.tcp_bytes)
            if haproxy_process is not None:
                throughput["haproxy"] = tcp_bulk("127.0.0.1", h_tcp, settings.tcp_bytes)
        rss = rss_with_services(procs, work, settings, backend_port, sink_port, fortio)
        return latency, uniform, maximum, rss, throughput
    finally:
        procs.stop_all()
        shutil.rmtree(work, ignore_errors=True)


def _latency_table(runs: list[Run]) -> list[str]:
    direct = next(r for r in runs if r.name == "direct")
    lines = [
        "| hop | qps | p50 ms | p90 ms | p99 ms | added p50 | added p90 | added p99 | "
        "errors | proxy CPU s / 1,000 req |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in runs:
        added = (
            ("", "", "")
            if r is direct
            else tuple(
                f"{a - b:+.3f}"
                for a, b in ((r.p50, direct.p50), (r.p90, direct.p90), (r.p99, direct.p99))
            )
        )
        cpu = f"{r.cpu_per_1000:.3f}" if r.cpu_per_1000 is not None else ""
        lines.append(
            f"| {r.name} | {r.qps:.0f} | {r.p50:.3f} | {r.p90:.3f} | {r.p99:.3f} | {added[0]} | "
            f"{added[1]} | {added[2]} | {r.errors} | {cpu} |"
        )
    return lines


def _yes(ok: bool) -> str:
    return "yes" if ok else "no"


Results = tuple[list[Run], list[Run], list[Run], dict[int, float], dict[str, float]]


def find(runs: list[Run], name: str) -> Run | None:
    return next((r for r in runs if r.name == name), None)


def targets(
    settings: Settings,
    latency: list[Run],
    uniform: list[Run],
    maximum: list[Run],
    rss: dict[int, float],
    throughput: dict[str, float],
) -> list[tuple[str, str, str]]:
    """Issue 12's targets: (target, measured, met) rows; ratios are to HAProxy in this run."""
    rows: list[tuple[str, str, str]] = []
    mesh, haproxy = find(latency, "simmesh"), find(latency, "haproxy")
    if mesh and haproxy and mesh.cpu_per_1000 and haproxy.cpu_per_1000:
        ratio = mesh.cpu_per_1000 / haproxy.cpu_per_1000
        rows.append(
            (
                f"CPU per 1,000 requests at {settings.qps} rps <= "
                f"{TARGETS['cpu_vs_haproxy']:g}x HAProxy",
                f"{mesh.cpu_per_1000:.3f} s vs {haproxy.cpu_per_1000:.3f} s: {ratio:.2f}x",
                _yes(ratio <= TARGETS["cpu_vs_haproxy"]),
            )
        )
    for other, label in (("simmesh, interpreted", "interpreted"), ("uvloop relay", "relay")):
        base = find(latency, other)
        if mesh and base and mesh.cpu_per_1000 and base.cpu_per_1000:
            rows.append(
                (
                    f"CPU per 1,000 requests, compiled simmesh against the {label} (no target)",
                    f"{mesh.cpu_per_1000:.3f} s vs {base.cpu_per_1000:.3f} s: "
                    f"{mesh.cpu_per_1000 / base.cpu_per_1000:.2f}x",
                    "-",
                )
            )
    for runs, key, pacing in (
        (latency, "added_p99_ms", "default pacing"),
        (uniform, "added_p99_uniform_ms", "-uniform"),
    ):
        direct, hop = find(runs, "direct"), find(runs, "simmesh")
        if direct and hop:
            added = hop.p99 - direct.p99
            rows.append(
                (
                    f"added p99 at {settings.qps} rps, {pacing} <= {TARGETS[key]:g} ms",
                    f"{added:+.3f} ms",
                    _yes(added <= TARGETS[key]),
                )
            )
    top, htop = find(maximum, "simmesh"), find(maximum, "haproxy")
    if top and htop and htop.qps:
        ratio = top.qps / htop.qps
        rows.append(
            (
                f"top rate over {settings.connections} connections >= "
                f"{TARGETS['rate_vs_haproxy']:g}x HAProxy",
                f"{top.qps:.0f}/s vs {htop.qps:.0f}/s: {ratio:.2f}x",
                _yes(ratio >= TARGETS["rate_vs_haproxy"]),
            )
        )
    big = rss.get(settings.services)
    if big is not None:
        rows.append(
            (
                f"RSS <= {TARGETS['rss_1000_services_mb']:g} MB with {settings.services} services",
                f"{big:.1f} MB",
                _yes(big <= TARGETS["rss_1000_services_mb"]),
            )
        )
    if "haproxy" in throughput and "simmesh" in throughput:
        ratio = throughput["simmesh"] / throughput["haproxy"]
        rows.append(
            (
                f"TCP >= {TARGETS['tcp_vs_haproxy']:.0%} of HAProxy",
                f"{ratio:.0%}",
                _yes(ratio >= TARGETS["tcp_vs_haproxy"]),
            )
        )
    return rows


def report(settings: Settings, command: str, *results: Any) -> str:
    latency, uniform, maximum, rss, throughput = results

    haproxy_note = (
        "with nbthread 1" if find(latency, "haproxy") else "not installed or skipped: rows omitted"
    )
    lines = [
        "## Node proxy (simmesh vs HAProxy)",
        "",
        f"Command: `{command}`  ",
        f"Machine: {machine()}; fortio load + fortio echo server (1 KB bodies); "
        f"HAProxy {haproxy_note}; {settings.connections} connections; "
        f"simmesh's http upstream client: {settings.upstream}.",
        "",
        f"### Latency at {settings.qps} requests/s, fortio's default pacing "
        f"({settings.duration:g} s)",
        "",
        *_latency_table(latency),
        "",
        f"### Latency at {settings.qps} requests/s, `-uniform` pacing ({settings.duration:g} s)",
        "",
        *_latency_table(uniform),
        "",
        f"### Highest rate over {settings.connections} connections ({settings.max_duration:g} s)",
        "",
        "| hop | requests/s | p50 ms | p99 ms | proxy CPU s / 1,000 req |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in maximum:
        cpu = f"{r.cpu_per_1000:.3f}" if r.cpu_per_1000 is not None else ""
        lines.append(f"| {r.name} | {r.qps:.0f} | {r.p50:.3f} | {r.p99:.3f} | {cpu} |")
    gb = settings.tcp_bytes / (1 << 30)
    lines += [
        "",
        "### Memory and TCP",
        "",
        f"- simmesh RSS: {rss.get(1, float('nan')):.1f} MB with 1 service, "
        f"{rss.get(settings.services, float('nan')):.1f} MB with {settings.services} services.",
        f"- TCP bulk ({gb:g} GiB, one connection): "
        + ", ".join(f"{k} {v:.2f} GB/s" for k, v in throughput.items())
        + ".",
        "",
        "### Against the targets",
        "",
        "| target | measured | met |",
        "|---|---|---|",
    ]
    lines += [f"| {t} | {m} | {ok} |" for t, m, ok in targets(settings, *results)]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="short durations, 256 MiB TCP")
    parser.add_argument("--duration", type=float, help="seconds per latency run (default 30)")
    parser.add_argument("--out", default="out/bench/proxy.md", help="markdown file to write")
    parser.add_argument("--benchmarks", help="also replace this section in BENCHMARKS.md")
    parser.add_argument(
        "--upstream",
        choices=("raw", "aiohttp"),
        default="raw",
        help="the proxy's client for http upstreams (SIMMESH_PROXY_UPSTREAM): pooled Protocols "
        "with httptools (default) or aiohttp's ClientSession, to compare the two",
    )
    parser.add_argument("--skip-haproxy", action="store_true", help="leave HAProxy out")
    parser.add_argument(
        "--checkout",
        type=Path,
        default=ROOT,
        help="measure the compiler and proxy of this simmesh source tree (e.g. a git worktree "
        "of main, for before/after in one session); default: this one",
    )
    parser.add_argument("--json", type=Path, help="also write every measurement to this file")
    parser.add_argument(
        "--profile",
        metavar="FILE",
        help="instead: calibrate the simulator's profile on this machine and write it "
        "(loadtests/calibrate.py; sim/profiles/local.yaml is the default profile)",
    )
    args = parser.parse_args(argv)
    if args.profile:
        from loadtests import calibrate

        return calibrate.main(["--out", args.profile])
    settings = Settings()
    if args.quick:
        settings = Settings(duration=5, max_duration=4, tcp_bytes=256 << 20)
    if args.duration:
        settings.duration = args.duration
    settings.upstream = args.upstream
    settings.haproxy = not args.skip_haproxy
    settings.checkout = args.checkout.resolve()
    command = "python -m loadtests.bench_proxy " + shlex.join(
        argv if argv is not None else sys.argv[1:]
    )
    results = run(settings)
    text = report(settings, command.strip(), *results)
    if args.json:
        latency, uniform, maximum, rss, throughput = results
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps(
                {
                    "checkout": str(settings.checkout),
                    "latency": [asdict(r) for r in latency],
                    "uniform": [asdict(r) for r in uniform],
                    "maximum": [asdict(r) for r in maximum],
                    "rss_mb": rss,
                    "tcp_gb_s": throughput,
                    "targets": targets(settings, *results),
                },
                indent=1,
            )
        )
    out = ROOT / args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    if args.benchmarks:
        write_section(ROOT / args.benchmarks, "proxy", text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
