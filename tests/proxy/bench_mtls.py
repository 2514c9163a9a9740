"""CPU per 1,000 requests across nodes: plaintext simmesh, mTLS tunnels and HAProxy (issue 17).

``python -m tests.proxy.bench_mtls [--rate 1000] [--seconds 3] [--runs 3]`` runs, one after
the other, these set-ups and drives each from this process at a fixed rate over 16 keep-alive
connections, timing each request (p50 and p99 as the client sees them):

- ``direct``: the client calls the backend itself (what the backend and the idle proxies cost);
- ``plaintext``: mTLS off: client -> proxy A -> the pod on node-b (one proxy hop, as before);
- ``mtls``: strict: client -> proxy A -> mTLS -> proxy B -> the pod (two proxy hops; access
  control is off, so proxy A opens pipes that proxy B splices: mesh.proxy.pipe);
- ``tunnel``: the same with ``--no-tunnel-pipes``: every request on a tunnel connection,
  parsed, decided and forwarded again by proxy B;
- ``haproxy`` (HTTP only): client -> one HAProxy (nbthread 1, http mode, keep-alive to the
  backend, as loadtests/bench_proxy.py runs it) -> the pod;
- ``haproxy-mtls`` (HTTP only): client -> HAProxy A on 127.0.0.1 -> TLS 1.3 with A's client
  certificate, B's certificate verified against the CA and its name against the SNI
  (``verify required``, ``sni``) -> HAProxy B on 127.0.0.2 (a TLS 1.3 frontend that requires
  the client's certificate and verifies it against the CA, ``verify required``) -> the pod.
  A pools its connections to B and shares them among client connections (``http-reuse
  always``); nbthread 1 each. The certificates are the kind simmesh uses (ECDSA P-256
  X.509-SVIDs signed by mesh.identity.ca with a URI SAN), B's with the SNI name added as a
  DNS SAN: HAProxy checks a server's name there, simmesh checks the SPIFFE ID instead.

The simmesh set-ups (tests/proxy/mtlsnet.py: two proxies as nodes) run in a child process on
uvloop as ``simmesh proxy`` does (``--loop asyncio``: asyncio's own loop); the pod's backend
runs in a process of its own for HTTP (so the child's CPU is the proxies' alone). The CPU
(user + system, from /proc) over the measured window is the child's less ``direct``'s (the
idle proxies) for simmesh, and the sum of the HAProxy processes' for HAProxy. It prints each
run and the medians: CPU seconds per 1,000 requests, p50/p99 and the added p99 (a set-up's
p99 less ``direct``'s), mTLS / plaintext for each proxy and simmesh / HAProxy for plaintext
and for mTLS (issue 17's target: the mTLS ratio no higher than the plaintext one). Not a
timed test: a shared machine is noisy; ``--runs N`` prints each run (with the load average)
and the medians.

``--protocol tcp-flows``: each request is a TCP flow of its own to the TCP service ``db``
(connect, 64 bytes echoed, half-close, the pod's summary line, close): through the tunnel,
a flow on a pooled stream connection. ``--protocol tcp-echo``: 64 bytes echoed per request
on 16 long-lived TCP flows. (simmesh set-ups only.)

``--protocol handshakes``: new mutually authenticated TLS 1.3 connections (full handshakes,
no resumption; handshake, then close_notify) at ``--rate`` a second for ``--seconds`` against
simmesh's tunnel port (proxy B, as mtlsnet's ``tunnel_request`` connects: a client
certificate from the same CA, SNI ``sni_name("demo/server")``) and against HAProxy B's TLS
frontend: the server process's CPU per handshake, its idle CPU subtracted (handshakes per
second per core = 1 / that). Then memory per tunnel: the server's RSS before and with
``--tunnels`` (1,000) idle connections open (handshake done, no request), per connection.

``--protocol churn`` (simmesh only; ``make bench`` runs it for 600 s): for ``--seconds``,
requests at ``--rate`` a second through proxy A, each on a client connection of its own
(``Connection: close``), and, one request in 25, a pipe opened straight at proxy B's tunnel
port instead: a full handshake, the target line, one request, closed. The child's resident
memory (both proxies) every 5 s, and whether it grew: the median of the last minute against
that of 30-90 s (``--plot FILE``: memory over time, PNG).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import ssl
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from mesh.core.model import MtlsMode
from mesh.identity import ca
from mesh.identity.spiffe import spiffe_id
from mesh.proxy.mtls import sni_name
from tests.proxy.mtlsnet import Authority

SIMMESH = ("direct", "plaintext", "tunnel", "mtls")  # run by a child: --serve
HAPROXY = ("haproxy", "haproxy-mtls", "haproxy-mtls-tcp")  # HTTP only
MODES = (*SIMMESH, *HAPROXY)
PROTOCOLS = ("http", "tcp-flows", "tcp-echo", "handshakes", "churn")
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
    tcp = protocol.startswith("tcp-")
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
            if protocol == "handshakes":  # node-b's tunnel port, and what a client needs
                cert, key = net.authority.issue("demo/client")
                target = f"127.0.0.2:{net.tunnel_b} {net.authority.roots} {cert} {key}"
            elif protocol == "churn":  # and the URL, and what a pipe names
                cert, key = net.authority.issue("demo/client")
                cluster = next(k for k in net.config.clusters if k.startswith("demo/far"))
                target = (
                    f"{net.url('far.demo.mesh')} 127.0.0.2:{net.tunnel_b} "
                    f"{net.authority.roots} {cert} {key} {cluster} {FAR_IP}:{net.far}"
                )
            elif tcp:
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
            if protocol == "handshakes":
                accepted = metric(net.b, "simmesh_proxy_tunnel_handshakes_total", side="server")
                print(f"{mode}: node-b's proxy accepted {accepted:.0f} tunnels", file=sys.stderr)
                return
            pipes = metric(net.b, "simmesh_proxy_tunnel_pipes_total", mode="spliced")
            print(
                f"{mode}: node-b's proxy served {served:.0f} HTTP requests itself and spliced "
                f"{pipes:.0f} pipes; {handshakes:.0f} tunnel handshakes",
                file=sys.stderr,
            )


def _cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _rss(pid: int) -> float:
    """Resident memory in MB (VmRSS)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _pct(values: list[float], q: float) -> float:
    """The ``q`` quantile (0-1) of ``values``, nearest rank (0.0 for none)."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


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


Result = tuple[int, int, list[float]]  # ok, failed, each request's latency in ms


async def _drive(target: str, rate: int, seconds: float) -> Result:
    """``rate`` requests/s for ``seconds`` over 16 connections; (ok, failed, latencies)."""
    connector = aiohttp.TCPConnector(limit=16, local_addr=("127.0.1.1", 0))
    ok = failed = 0
    latencies: list[float] = []
    async with aiohttp.ClientSession(connector=connector) as http:

        async def one() -> None:
            nonlocal ok, failed
            start = time.perf_counter()
            try:
                async with http.get(target, headers={"Host": "far.demo.mesh"}) as resp:
                    await resp.read()
                    ok += resp.status == 200
                    failed += resp.status != 200
            except aiohttp.ClientError:
                failed += 1
            latencies.append((time.perf_counter() - start) * 1000)

        await _paced(one, rate, seconds)
    return ok, failed, latencies


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


async def _drive_tcp(target: str, rate: int, seconds: float, protocol: str) -> Result:
    host, _, port_text = target.rpartition(":")
    port = int(port_text)
    ok = failed = 0
    latencies: list[float] = []
    conns: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = asyncio.Queue()
    if protocol == "tcp-echo":
        for _ in range(16):
            conns.put_nowait(await asyncio.open_connection(host, port, local_addr=("127.0.1.1", 0)))

    async def one() -> None:
        nonlocal ok, failed
        start = time.perf_counter()
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
        latencies.append((time.perf_counter() - start) * 1000)
        ok += good
        failed += not good

    await _paced(one, rate, seconds)
    while not conns.empty():
        conns.get_nowait()[1].close()
    return ok, failed, latencies


# -- HAProxy: the same jobs ---------------------------------------------------------------------

_HAPROXY_GLOBAL = """global
    nbthread 1
    maxconn 4000
defaults
    mode http
    option http-keep-alive
    timeout connect 5s
    timeout client 60s
    timeout server 60s
"""
# TLS 1.3 only, as the simmesh tunnels; ECDSA P-256 certificates from the same kind of CA
_TLS13 = "ssl-min-ver TLSv1.3"


def _with_dns(certificate: x509.Certificate, key: ca.PrivateKey, dns: str) -> x509.Certificate:
    """``certificate`` signed again with ``dns`` added to its URI SAN: HAProxy checks the
    server's name against the SNI it sent (DNS SANs and CN only; simmesh checks the SPIFFE
    ID in the URI SAN instead)."""
    builder = (
        x509.CertificateBuilder()
        .subject_name(certificate.subject)
        .issuer_name(certificate.issuer)
        .public_key(certificate.public_key())
        .serial_number(certificate.serial_number)
        .not_valid_before(certificate.not_valid_before_utc)
        .not_valid_after(certificate.not_valid_after_utc)
    )
    for extension in certificate.extensions:
        value = extension.value
        if isinstance(value, x509.SubjectAlternativeName):
            value = x509.SubjectAlternativeName([*value, x509.DNSName(dns)])
        builder = builder.add_extension(value, extension.critical)
    return builder.sign(key, hashes.SHA256())


def _haproxy_pem(authority: Authority, identity: str, *, dns: str | None = None) -> Path:
    """A workload certificate for ``identity`` (mesh.identity.ca, as the controller signs
    them) and its key in one PEM file, as HAProxy's ``crt`` wants them."""
    key = ca.new_key()
    request = ca.check_csr(
        ca.make_csr(key, spiffe_id(authority.trust_domain, identity)),
        trust_domain=authority.trust_domain,
    )
    certificate = ca.sign(authority.signer, request, now=datetime.now(UTC))
    if dns is not None:
        certificate = _with_dns(certificate, authority.signer.key, dns)
    path = authority.directory / f"haproxy-{identity.replace('/', '_')}.pem"
    path.write_bytes(ca.cert_pem(certificate) + ca.key_pem(key))
    path.chmod(0o600)
    return path


def _haproxy_configs(
    tmp: Path, authority: Authority, mode: str, far_port: int, http: int, tunnel: int
) -> list[tuple[Path, str, int]]:
    """The config of each HAProxy of ``mode``: ``haproxy``, one in front of the pod;
    ``haproxy-mtls``, A (the client's node) -> TLS 1.3 with A's client certificate, B's
    certificate verified against the CA and checked against the SNI -> B (on 127.0.0.2,
    client certificates required and verified against the CA) -> the pod; A's connections
    to B pooled and shared among client connections (``http-reuse always``);
    ``haproxy-mtls-tcp``, the same with B in ``mode tcp``: it relays each of A's connections
    to the pod without parsing, as simmesh's proxy B splices a pipe."""
    from tests.proxy.mtlsnet import FAR_IP

    pod = f"backend pod\n    server pod {FAR_IP}:{far_port}\n"
    if mode == "haproxy":
        front = f"frontend web\n    bind 127.0.0.1:{http}\n    default_backend pod\n"
        configs = [(_HAPROXY_GLOBAL + front + pod, "127.0.0.1", http)]
    else:
        sni = sni_name("demo/server")
        client = _haproxy_pem(authority, "demo/client")
        server = _haproxy_pem(authority, "demo/server", dns=sni)
        roots = authority.roots
        a = (
            f"frontend web\n    bind 127.0.0.1:{http}\n    default_backend nodeb\n"
            "backend nodeb\n    http-reuse always\n"
            f"    server b 127.0.0.2:{tunnel} ssl verify required ca-file {roots} crt {client} "
            f"sni str({sni}) {_TLS13}\n"
        )
        configs = [
            (
                _haproxy_b(
                    roots, server, tunnel, f"{FAR_IP}:{far_port}", tcp=mode.endswith("-tcp")
                ),
                "127.0.0.2",
                tunnel,
            ),
            (_HAPROXY_GLOBAL + a, "127.0.0.1", http),
        ]
    out = []
    for i, (text, host, port) in enumerate(configs):
        path = tmp / f"haproxy-{i}.cfg"
        path.write_text(text)
        out.append((path, host, port))
    return out


def _haproxy_b(roots: Path, pem: Path, port: int, pod: str, *, tcp: bool = False) -> str:
    """HAProxy B: a TLS 1.3 frontend on 127.0.0.2 that requires a client certificate and
    verifies it against the CA, in front of ``pod`` (``tcp``: relaying bytes, no parsing)."""
    stats = f"global\n    stats socket {roots.parent / 'haproxy-b.sock'}\n"
    mode = "    mode tcp\n" if tcp else ""
    return _HAPROXY_GLOBAL.replace("global\n", stats, 1) + (
        f"frontend tunnel\n{mode}    bind 127.0.0.2:{port} ssl crt {pem} ca-file {roots} "
        f"verify required {_TLS13}\n    default_backend pod\n"
        f"backend pod\n{mode}    server pod {pod}\n"
    )


async def _tls_accepted(directory: Path) -> str:
    """What HAProxy B's stats socket (in ``directory``) says of the TLS connections it
    accepted, as simmesh's child prints its tunnel handshakes."""
    reader, writer = await asyncio.open_unix_connection(str(directory / "haproxy-b.sock"))
    writer.write(b"show info\n")
    info = dict(
        line.split(": ", 1) for line in (await reader.read()).decode().splitlines() if ": " in line
    )
    writer.close()
    return (
        f"HAProxy B accepted {info.get('CumSslConns', '?')} TLS connections "
        f"({info.get('SslFrontendSessionReuse_pct', '?')}% resumed)"
    )


async def _wait_port(host: str, port: int, process: asyncio.subprocess.Process) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and process.returncode is None:
        with contextlib.suppress(OSError):
            _, writer = await asyncio.open_connection(host, port)
            writer.close()
            return
        await asyncio.sleep(0.05)
    raise RuntimeError(f"haproxy did not listen on {host}:{port}")


async def _haproxies(
    stack: contextlib.AsyncExitStack, tmp: Path, mode: str, far_port: int, tunnel: int
) -> tuple[str, list[int]]:
    """HAProxy processes for ``mode`` (stopped with ``stack``): the client's URL, their pids."""
    from tests.proxy.harness import free_port

    binary = shutil.which("haproxy") or "/usr/sbin/haproxy"
    http = free_port()
    authority = Authority(tmp)
    pids = []
    for config, host, port in _haproxy_configs(tmp, authority, mode, far_port, http, tunnel):
        process = await asyncio.create_subprocess_exec(binary, "-f", str(config), "-db")
        stack.push_async_callback(_stop, process)
        await _wait_port(host, port, process)
        pids.append(process.pid)
    return f"http://127.0.0.1:{http}/", pids


async def _stop(process: asyncio.subprocess.Process) -> None:
    if process.returncode is None:
        process.terminate()
    await process.wait()


async def _measure(
    mode: str, rate: int, seconds: float, protocol: str = "http"
) -> tuple[float, int, int, list[float]]:
    """The proxies' CPU seconds over a run of ``mode``, ok, failed, latencies (ms)."""
    async with contextlib.AsyncExitStack() as stack:
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
            stack.push_async_callback(_close, backend)
            assert backend.stdout is not None
            far = ["--far-port", (await backend.stdout.readline()).decode().strip()]
        if mode in HAPROXY:
            from tests.proxy.harness import free_port

            tmp = Path(stack.enter_context(tempfile.TemporaryDirectory()))
            target, pids = await _haproxies(stack, tmp, mode, int(far[1]), free_port())
        else:
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
            stack.push_async_callback(_close, child)
            assert child.stdout is not None
            target = (await child.stdout.readline()).decode().split()[1]
            pids = [child.pid]

        async def drive(rate: int, seconds: float) -> Result:
            if protocol == "http":
                return await _drive(target, rate, seconds)
            return await _drive_tcp(target, rate, seconds, protocol)

        await drive(rate, 1.0)  # warm up at the rate: the pools grow (handshakes) first
        before = sum(_cpu(pid) for pid in pids)
        ok, failed, latencies = await drive(rate, seconds)
        used = sum(_cpu(pid) for pid in pids) - before
        if mode.startswith("haproxy-mtls"):
            print(f"{mode}: {await _tls_accepted(tmp)}", file=sys.stderr)
    return used, ok, failed, latencies


async def _close(process: asyncio.subprocess.Process) -> None:
    """A child that serves until its stdin closes."""
    if process.stdin is not None:
        process.stdin.close()
    await process.wait()


def _ms(latencies: list[float]) -> tuple[float, float]:
    return _pct(latencies, 0.50), _pct(latencies, 0.99)


async def _main(rate: int, seconds: float, protocol: str, runs: int) -> None:
    modes = MODES if protocol == "http" else SIMMESH
    cpu: dict[str, list[float]] = {mode: [] for mode in modes}  # s per 1,000, proxies' own
    p50: dict[str, list[float]] = {mode: [] for mode in modes}
    p99: dict[str, list[float]] = {mode: [] for mode in modes}
    idle: list[float] = []  # direct's: the idle proxies' (and near backend's) CPU per 1,000
    for run in range(runs):
        print(f"run {run + 1}: load average {' '.join(_load())}", flush=True)
        results = {}
        for mode in modes:
            used, ok, failed, latencies = await _measure(mode, rate, seconds, protocol)
            results[mode] = used / max(ok, 1) * 1000
            q50, q99 = _ms(latencies)
            p50[mode].append(q50)
            p99[mode].append(q99)
            print(
                f"run {run + 1} {protocol} {mode:12} {ok} ok {failed} failed, CPU {used:.3f} s, "
                f"p50 {q50:.2f} ms, p99 {q99:.2f} ms",
                flush=True,
            )
        idle.append(results["direct"])
        for mode in modes:  # simmesh's child also holds idle proxies: direct's CPU is theirs
            cpu[mode].append(results[mode] - (results["direct"] if mode in SIMMESH else 0.0))
        plain, tls, tunnel = (cpu[mode][-1] for mode in ("plaintext", "mtls", "tunnel"))
        print(
            f"run {run + 1}: proxies' CPU per 1,000 {protocol} requests at {rate}/s: "
            f"plaintext {plain:.3f} s, mTLS {tls:.3f} s ({tls / plain:.2f}x), "
            f"mTLS without pipes {tunnel:.3f} s ({tunnel / plain:.2f}x)"
        )
        if protocol == "http":
            hplain, htls = cpu["haproxy"][-1], cpu["haproxy-mtls"][-1]
            print(
                f"run {run + 1}: HAProxy plaintext {hplain:.3f} s, HAProxy mTLS {htls:.3f} s "
                f"({htls / hplain:.2f}x); simmesh / HAProxy: plaintext {plain / hplain:.2f}x, "
                f"mTLS {tls / htls:.2f}x"
            )
    med = {mode: statistics.median(values) for mode, values in cpu.items()}
    plain, tls, tunnel = med["plaintext"], med["mtls"], med["tunnel"]
    print(
        f"median of {runs}: plaintext {plain:.3f} s, mTLS {tls:.3f} s, mTLS without pipes "
        f"{tunnel:.3f} s per 1,000 {protocol}"
    )
    print(f"mTLS / plaintext: {tls / plain:.2f}x ({(tls / plain - 1) * 100:+.0f}%)")
    print(f"mTLS without pipes / plaintext: {tunnel / plain:.2f}x")
    direct99 = statistics.median(p99["direct"])
    print(f"\nmedians of {runs} runs, {rate} {protocol} requests/s for {seconds:g} s:")
    print("| set-up | CPU s / 1,000 | runs | p50 ms | p99 ms | added p99 ms |")
    print("|---|---:|---|---:|---:|---:|")
    for mode in modes:
        runs_text = ", ".join(f"{value:.3f}" for value in cpu[mode])
        q99 = statistics.median(p99[mode])
        added = "" if mode == "direct" else f"{q99 - direct99:+.2f}"
        shown = "" if mode == "direct" else f"{med[mode]:.3f}"
        if mode == "direct":
            runs_text = "idle proxies: " + ", ".join(f"{value:.3f}" for value in idle)
        print(
            f"| {mode} | {shown} | {runs_text} | {statistics.median(p50[mode]):.2f} "
            f"| {q99:.2f} | {added} |"
        )
    if protocol == "http":
        hplain, htls = med["haproxy"], med["haproxy-mtls"]

        def per_run(top: str, bottom: str) -> str:
            return ", ".join(f"{t / b:.2f}x" for t, b in zip(cpu[top], cpu[bottom], strict=True))

        rows = [
            ("simmesh / HAProxy, plaintext", plain / hplain, per_run("plaintext", "haproxy")),
            ("simmesh / HAProxy, mTLS", tls / htls, per_run("mtls", "haproxy-mtls")),
            # HAProxy B relays bytes, as simmesh's proxy B splices a pipe
            (
                "simmesh / HAProxy with B in tcp mode, mTLS",
                tls / med["haproxy-mtls-tcp"],
                per_run("mtls", "haproxy-mtls-tcp"),
            ),
            # HAProxy B parses every request, as simmesh's proxy B does without pipes
            (
                "simmesh without pipes / HAProxy, mTLS",
                tunnel / htls,
                per_run("tunnel", "haproxy-mtls"),
            ),
            ("mTLS / plaintext, simmesh", tls / plain, per_run("mtls", "plaintext")),
            ("mTLS / plaintext, HAProxy", htls / hplain, per_run("haproxy-mtls", "haproxy")),
        ]
        print("\n| ratio (CPU per 1,000) | of the medians | per run |")
        print("|---|---:|---|")
        for name, value, each in rows:
            print(f"| {name} | {value:.2f}x | {each} |")
        met = "met" if tls / htls <= plain / hplain else "not met"
        print(
            f"target simmesh-mTLS / HAProxy-mTLS <= simmesh-plaintext / HAProxy-plaintext: "
            f"{tls / htls:.2f}x vs {plain / hplain:.2f}x: {met}"
        )
        htcp = med["haproxy-mtls-tcp"]
        met = "met" if tls / htcp <= plain / hplain else "not met"
        ratio = f"{tls / htcp:.2f}x vs {plain / hplain:.2f}x"
        print(f"the same with HAProxy B in tcp mode: {ratio}: {met}")


def _load() -> list[str]:
    return Path("/proc/loadavg").read_text().split()[:3]


# -- handshakes per second and memory per tunnel ------------------------------------------------


def _tls_client(roots: str, cert: str, key: str) -> ssl.SSLContext:
    """A source proxy's context (as mtlsnet's Authority.client_context): TLS 1.3, the
    server's chain verified, no session resumption (each connection a full handshake)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.load_verify_locations(cafile=roots)
    context.load_cert_chain(cert, key)
    return context


_SOURCES = ("127.0.0.1", "127.0.8.1", "127.0.8.2", "127.0.8.3")  # under per-source limits


async def _handshakes(
    host: str, port: int, context: ssl.SSLContext, rate: int, seconds: float
) -> Result:
    """New mutually authenticated TLS connections at ``rate``/s: handshake, close_notify."""
    sni = sni_name("demo/server")
    ok = failed = 0
    latencies: list[float] = []

    async def one() -> None:
        nonlocal ok, failed
        start = time.perf_counter()
        try:
            _, writer = await asyncio.wait_for(
                asyncio.open_connection(host, port, ssl=context, server_hostname=sni), 10
            )
        except (OSError, ssl.SSLError, TimeoutError):
            failed += 1
            return
        latencies.append((time.perf_counter() - start) * 1000)
        ok += 1
        writer.close()
        with contextlib.suppress(OSError, ssl.SSLError, TimeoutError):
            await asyncio.wait_for(writer.wait_closed(), 5)

    await _paced(one, rate, seconds)
    return ok, failed, latencies


async def _tunnels(
    host: str, port: int, context: ssl.SSLContext, count: int
) -> tuple[list[asyncio.StreamWriter], list[asyncio.StreamReader]]:
    """``count`` connections opened (handshake done) and left idle, at most 16 at a time."""
    sni = sni_name("demo/server")
    gate = asyncio.Semaphore(16)
    writers: list[asyncio.StreamWriter] = []
    readers: list[asyncio.StreamReader] = []

    async def one(i: int) -> None:
        async with gate:
            with contextlib.suppress(OSError, ssl.SSLError):
                reader, writer = await asyncio.open_connection(
                    host,
                    port,
                    ssl=context,
                    server_hostname=sni,
                    local_addr=(_SOURCES[i % len(_SOURCES)], 0),
                )
                writers.append(writer)
                readers.append(reader)

    await asyncio.gather(*(one(i) for i in range(count)))
    return writers, readers


async def _handshake_run(
    server: str, rate: int, seconds: float, count: int
) -> tuple[float, int, int, list[float], float, float, int]:
    """Against ``server`` (simmesh: node-b's tunnel port; haproxy: HAProxy B's TLS
    frontend): the server's CPU seconds per handshake (its idle CPU subtracted), ok,
    failed, latencies; its RSS (MB) before and with ``count`` idle connections, and how
    many of those were still open when it was read."""
    async with contextlib.AsyncExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        if server == "simmesh":
            child = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "tests.proxy.bench_mtls",
                "--protocol",
                "handshakes",
                "--serve",
                "mtls",
                "--loop",
                _LOOP[0],
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
            )
            stack.push_async_callback(_close, child)
            assert child.stdout is not None
            _, address, roots, cert, key = (await child.stdout.readline()).decode().split()
            host, _, port_text = address.rpartition(":")
            port, pid = int(port_text), child.pid
        else:
            from tests.proxy.harness import free_port
            from tests.proxy.mtlsnet import FAR_IP

            port = free_port()
            host = "127.0.0.2"
            authority = Authority(tmp)
            server_pem = _haproxy_pem(authority, "demo/server", dns=sni_name("demo/server"))
            config = tmp / "haproxy-b.cfg"
            config.write_text(_haproxy_b(authority.roots, server_pem, port, f"{FAR_IP}:9"))
            binary = shutil.which("haproxy") or "/usr/sbin/haproxy"
            process = await asyncio.create_subprocess_exec(binary, "-f", str(config), "-db")
            stack.push_async_callback(_stop, process)
            await _wait_port(host, port, process)
            roots = str(authority.roots)
            cert, key = (str(path) for path in authority.issue("demo/client"))
            pid = process.pid
        context = _tls_client(roots, cert, key)
        await _handshakes(host, port, context, 20, 1.0)  # warm up
        idle_start, start = _cpu(pid), time.monotonic()
        await asyncio.sleep(2.0)
        idle = (_cpu(pid) - idle_start) / (time.monotonic() - start)
        before, start = _cpu(pid), time.monotonic()
        ok, failed, latencies = await _handshakes(host, port, context, rate, seconds)
        used = _cpu(pid) - before - idle * (time.monotonic() - start)
        await asyncio.sleep(1.0)
        rss_before = _rss(pid)
        writers, readers = await _tunnels(host, port, context, count)
        await asyncio.sleep(1.0)
        rss_after = _rss(pid)
        still = sum(not reader.at_eof() for reader in readers)
        if server == "haproxy":
            print(f"{server}: {await _tls_accepted(tmp)}", file=sys.stderr)
        for writer in writers:
            writer.close()
        await asyncio.sleep(0.5)
    return used / max(ok, 1), ok, failed, latencies, rss_before, rss_after, still


async def _handshakes_main(rate: int, seconds: float, runs: int, count: int) -> None:
    per: dict[str, list[float]] = {"simmesh": [], "haproxy": []}
    kb: dict[str, list[float]] = {"simmesh": [], "haproxy": []}
    p99: dict[str, list[float]] = {"simmesh": [], "haproxy": []}
    for run in range(runs):
        print(f"run {run + 1}: load average {' '.join(_load())}", flush=True)
        for server in per:
            cost, ok, failed, latencies, before, after, still = await _handshake_run(
                server, rate, seconds, count
            )
            q50, q99 = _ms(latencies)
            per[server].append(cost)
            p99[server].append(q99)
            kb[server].append((after - before) * 1024 / max(still, 1))
            print(
                f"run {run + 1} handshakes {server:8} {ok} ok {failed} failed at {rate}/s: "
                f"server CPU {cost * 1000:.3f} ms per handshake ({1 / cost:.0f}/s per core), "
                f"p50 {q50:.2f} ms, p99 {q99:.2f} ms; RSS {before:.1f} MB, {after:.1f} MB with "
                f"{still} of {count} idle connections open: {kb[server][-1]:.1f} KB each",
                flush=True,
            )
    print(f"\nmedians of {runs} runs, {rate} handshakes/s for {seconds:g} s:")
    print("| server | CPU ms / handshake | handshakes/s per core | p99 ms | KB per idle tunnel |")
    print("|---|---:|---:|---:|---:|")
    for server in per:
        cost = statistics.median(per[server])
        print(
            f"| {server} | {cost * 1000:.3f} | {1 / cost:.0f} | "
            f"{statistics.median(p99[server]):.2f} | {statistics.median(kb[server]):.1f} |"
        )
    ratio = statistics.median(per["simmesh"]) / statistics.median(per["haproxy"])
    print(f"simmesh / HAProxy, CPU per handshake: {ratio:.2f}x")


# -- memory under connection churn --------------------------------------------------------------


async def _churn_pipe(
    host: str, port: int, context: ssl.SSLContext, cluster: str, target: str
) -> bool:
    """One pipe straight at proxy B: handshake, target line, one request, closed."""
    sni = sni_name("demo/server")
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(host, port, ssl=context, server_hostname=sni), 10
        )
    except (OSError, ssl.SSLError, TimeoutError):
        return False
    try:
        writer.write(f"{cluster} {target}\r\n".encode())
        answer = await asyncio.wait_for(reader.readline(), 10)
        writer.write(b"GET / HTTP/1.1\r\nHost: far.demo.mesh\r\nConnection: close\r\n\r\n")
        data = await asyncio.wait_for(reader.read(), 10)
        return answer == b"+\r\n" and data.startswith(b"HTTP/1.1 200")
    except (OSError, ssl.SSLError, TimeoutError, asyncio.IncompleteReadError):
        return False
    finally:
        writer.close()


async def _churn_main(rate: int, seconds: float, plot: str | None) -> None:
    backend = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.proxy.bench_mtls",
        "--backend",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    assert backend.stdout is not None
    far = (await backend.stdout.readline()).decode().strip()
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.proxy.bench_mtls",
        "--protocol",
        "churn",
        "--serve",
        "mtls",
        "--loop",
        _LOOP[0],
        "--far-port",
        far,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    assert child.stdout is not None
    _, url, tunnel, roots, cert, key, cluster, target = (
        (await child.stdout.readline()).decode().split()
    )
    host, _, port_text = tunnel.rpartition(":")
    context = _tls_client(roots, cert, key)
    context.set_alpn_protocols(["simmesh-pipe/1"])
    counts = {"requests": 0, "failed": 0, "pipes": 0, "pipes failed": 0}
    samples: list[tuple[float, float]] = []
    tasks: set[asyncio.Task[None]] = set()
    connector = aiohttp.TCPConnector(force_close=True, limit=0, local_addr=("127.0.1.1", 0))
    print(f"churn: load average {' '.join(_load())}", flush=True)
    async with aiohttp.ClientSession(connector=connector) as http:

        async def request() -> None:
            try:
                async with http.get(url, headers={"Host": "far.demo.mesh"}) as resp:
                    await resp.read()
                    good = resp.status == 200
            except aiohttp.ClientError:
                good = False
            counts["requests" if good else "failed"] += 1

        async def pipe() -> None:
            good = await _churn_pipe(host, int(port_text), context, cluster, target)
            counts["pipes" if good else "pipes failed"] += 1

        start = time.monotonic()
        i = 0
        next_sample = start
        while (now := time.monotonic()) < start + seconds:
            if now >= next_sample:
                samples.append((now - start, _rss(child.pid)))
                next_sample += 5.0
                if len(samples) % 12 == 1:
                    print(
                        f"  {now - start:5.0f} s: RSS {samples[-1][1]:.1f} MB, {counts}", flush=True
                    )
            delay = start + i / rate - now
            if delay > 0:
                await asyncio.sleep(delay)
            task = asyncio.create_task(pipe() if i % 25 == 24 else request())
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            i += 1
        await asyncio.gather(*tasks)
    samples.append((time.monotonic() - start, _rss(child.pid)))
    for process in (child, backend):
        await _close(process)
    first = [rss for at, rss in samples if 30.0 <= at < 90.0]
    last = [rss for at, rss in samples if at >= samples[-1][0] - 60.0]
    early = statistics.median(first) if first else 0.0
    late = statistics.median(last) if last else 0.0
    print(
        f"churn for {seconds:g} s at {rate}/s: {counts}; RSS (both proxies) median "
        f"{early:.1f} MB in 30-90 s, {late:.1f} MB in the last minute: {late - early:+.1f} MB"
    )
    if plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        figure, axes = plt.subplots(figsize=(8, 3.5))
        axes.plot([at for at, _ in samples], [rss for _, rss in samples], marker=".")
        axes.set_xlabel("seconds")
        axes.set_ylabel("RSS of both proxies, MB")
        axes.set_title(f"mTLS under connection churn: {rate}/s, a new pipe in 25")
        axes.set_ylim(bottom=0)
        figure.tight_layout()
        Path(plot).parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(plot)
        print(f"wrote {plot}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--protocol", choices=PROTOCOLS, default="http")
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument(
        "--tunnels",
        type=int,
        default=1000,
        help="--protocol handshakes: idle connections held open to read memory per tunnel",
    )
    parser.add_argument(
        "--loop",
        choices=("uvloop", "asyncio"),
        default="uvloop",
        help="the proxies' event loop (uvloop: as `simmesh proxy` runs them)",
    )
    parser.add_argument("--plot", help="--protocol churn: memory over time, a PNG file")
    parser.add_argument("--serve", choices=SIMMESH, help=argparse.SUPPRESS)
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
    elif args.protocol == "handshakes":
        _LOOP[0] = args.loop
        asyncio.run(_handshakes_main(args.rate, args.seconds, args.runs, args.tunnels))
    elif args.protocol == "churn":
        _LOOP[0] = args.loop
        asyncio.run(_churn_main(args.rate, args.seconds, args.plot))
    else:
        _LOOP[0] = args.loop
        asyncio.run(_main(args.rate, args.seconds, args.protocol, args.runs))


if __name__ == "__main__":
    main()
