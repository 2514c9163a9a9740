"""What mutual TLS costs a node proxy, for the simulator's ``tls`` profile section (sim/profile.py).

    python -m loadtests.calibrate --tls --out sim/profiles/local.yaml   # about 20 s

Measured in this process with the proxies' own TLS settings (TLS 1.3 only, certificates
required on both sides, ECDSA P-256 workload certificates with SPIFFE IDs signed by
mesh.identity's CA, as mesh.proxy.mtls builds its contexts):

- ``connect`` / ``accept``: CPU of one mutual handshake on the client side (the source
  proxy) and on the server side (the destination proxy), stepped through ``ssl`` memory BIOs
  so each side's time is its own (median of batches);
- ``request``: CPU per request and proxy of sealing and opening its records over asyncio's TLS
  transport, less the same exchange in plaintext: a client and a server in this process
  exchange small requests and answers of ``answer`` bytes over loopback on one kept-alive
  connection; both sides' extra CPU, halved (each proxy of a tunnel is one side);
- ``byte``: the same with 64 KiB answers, per extra byte;
- ``relay``: CPU per request that a spliced pipe's destination proxy spends relaying a request
  and its answer, TLS records included (mesh/proxy/pipe.py: two protocols copying bytes, a
  connection each way): a relay process of its own, on uvloop as the proxies run, driven at
  400 requests/s evenly paced as the proxy's own costs are (loadtests/calibrate.py), so each
  read wakes its event loop as it does a proxy's at such rates (median of ``repeat``).
"""

from __future__ import annotations

import asyncio
import os
import ssl
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from mesh.identity import ca
from mesh.identity.spiffe import spiffe_id

TRUST = "cluster.local"
_REQUEST = b"GET /api HTTP/1.1\r\nHost: backend\r\nSimmesh-Target: 10.0.0.1:80\r\n\r\n"


def _contexts(directory: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    now = datetime.now(UTC)
    signer = ca.generate_root(trust_domain=TRUST, now=now)
    roots = directory / "roots.pem"
    roots.write_bytes(ca.cert_pem(signer.certificate))
    contexts = []
    for protocol, identity in (
        (ssl.PROTOCOL_TLS_CLIENT, "demo/client"),
        (ssl.PROTOCOL_TLS_SERVER, "demo/server"),
    ):
        key = ca.new_key()
        csr = ca.check_csr(ca.make_csr(key, spiffe_id(TRUST, identity)), trust_domain=TRUST)
        cert = ca.sign(signer, csr, now=now, lifetime=timedelta(hours=1))
        cert_file, key_file = directory / f"{identity[5:]}.crt", directory / f"{identity[5:]}.key"
        cert_file.write_bytes(ca.cert_pem(cert))
        key_file.write_bytes(ca.key_pem(key))
        context = ssl.SSLContext(protocol)
        context.minimum_version = ssl.TLSVersion.TLSv1_3
        if protocol == ssl.PROTOCOL_TLS_CLIENT:
            context.check_hostname = False
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(cafile=str(roots))
        context.load_cert_chain(str(cert_file), str(key_file))
        contexts.append(context)
    return contexts[0], contexts[1]


def _load_contexts(directory: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """The client's and the server's contexts from the files :func:`_contexts` wrote."""
    contexts = []
    for protocol, name in (
        (ssl.PROTOCOL_TLS_CLIENT, "client"),
        (ssl.PROTOCOL_TLS_SERVER, "server"),
    ):
        context = ssl.SSLContext(protocol)
        context.minimum_version = ssl.TLSVersion.TLSv1_3
        if protocol == ssl.PROTOCOL_TLS_CLIENT:
            context.check_hostname = False
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(cafile=str(directory / "roots.pem"))
        context.load_cert_chain(str(directory / f"{name}.crt"), str(directory / f"{name}.key"))
        contexts.append(context)
    return contexts[0], contexts[1]


def handshake_costs(
    client: ssl.SSLContext, server: ssl.SSLContext, count: int = 200
) -> tuple[float, float]:
    """Median CPU seconds of one mutual handshake: (client side, server side)."""
    clock = time.thread_time
    client_times, server_times = [], []
    for _ in range(count):
        c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
        c = client.wrap_bio(c_in, c_out, server_side=False)
        s = server.wrap_bio(s_in, s_out, server_side=True)
        spent = [0.0, 0.0]
        done = [False, False]
        for _ in range(10):
            for side, obj, out, peer_in in ((0, c, c_out, s_in), (1, s, s_out, c_in)):
                if done[side]:
                    continue
                start = clock()
                try:
                    obj.do_handshake()
                    done[side] = True
                except ssl.SSLWantReadError:
                    pass
                spent[side] += clock() - start
                peer_in.write(out.read())
            if all(done):
                break
        if not all(done):
            raise RuntimeError("the calibration handshake did not complete")
        client_times.append(spent[0])
        server_times.append(spent[1])
    return statistics.median(client_times), statistics.median(server_times)


async def _exchange_cpu(
    client: ssl.SSLContext | None, server: ssl.SSLContext | None, answer: int, count: int
) -> float:
    """Process CPU seconds of ``count`` request/answer exchanges on one connection."""
    body = b"x" * answer
    head = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % answer

    closed = asyncio.get_running_loop().create_future()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                await reader.readuntil(b"\r\n\r\n")
                writer.write(head + body)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()
        finally:
            closed.set_result(None)

    listener = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=server)
    port = listener.sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client)
    size = len(head) + answer
    for _ in range(20):  # warm up
        writer.write(_REQUEST)
        await reader.readexactly(size)
    start = time.process_time()
    for _ in range(count):
        writer.write(_REQUEST)
        await reader.readexactly(size)
    spent = time.process_time() - start
    writer.close()
    await closed
    listener.close()
    return spent


def record_costs(
    client: ssl.SSLContext, server: ssl.SSLContext, *, answer: int, count: int, repeat: int
) -> tuple[float, float]:
    """(per request and proxy, per byte and proxy): TLS exchanges less plaintext ones."""

    def extra(size: int, n: int) -> float:
        runs = []
        for _ in range(repeat):
            tls = asyncio.run(_exchange_cpu(client, server, size, n))
            plain = asyncio.run(_exchange_cpu(None, None, size, n))
            runs.append((tls - plain) / n / 2)  # two sides; each proxy is one of them
        return max(0.0, statistics.median(runs))

    big = 64 * 1024
    small = extra(answer, count)
    large = extra(big, count // 4)
    per_byte = max(0.0, (large - small) / (big - answer))
    return small, per_byte


RELAY_QPS = 400  # requests/s through the relay, evenly paced: as the proxy's own costs


class _Relayed(asyncio.Protocol):
    """One side of a byte relay (as mesh.proxy.pipe's): what it reads, ``peer`` writes."""

    def __init__(self) -> None:
        self.peer: _Relayed | None = None
        self.transport: asyncio.Transport | None = None
        self.early: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        peer = self.peer
        if peer is not None and peer.transport is not None:
            peer.transport.write(data)
        else:
            self.early.append(data)

    def connection_lost(self, exc: Exception | None) -> None:
        peer = self.peer
        if peer is not None and peer.transport is not None:
            peer.transport.close()


async def _serve_relay(directory: Path, target: int) -> None:
    """The relay process: mutual TLS in (the server's certificate, a client's required), a
    plaintext connection per client to ``127.0.0.1:target``; prints its port, serves until
    stdin closes."""
    _, server = _load_contexts(directory)
    loop = asyncio.get_running_loop()
    tasks: set[asyncio.Task[None]] = set()

    def accepted() -> _Relayed:
        down = _Relayed()

        async def connect() -> None:
            _, up = await loop.create_connection(_Relayed, "127.0.0.1", target)
            up.peer, down.peer = down, up
            early, down.early = down.early, []
            for data in early:  # what the client sent before the upstream connected
                down.data_received(data)

        task = loop.create_task(connect())
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        return down

    listener = await loop.create_server(accepted, "127.0.0.1", 0, ssl=server)
    print(listener.sockets[0].getsockname()[1], flush=True)
    await loop.run_in_executor(None, sys.stdin.read)
    listener.close()


async def _relay_cpu(directory: Path, answer: int, seconds: float) -> float:
    """CPU seconds per request of the relay process, driven from here at RELAY_QPS."""
    client, _ = _load_contexts(directory)
    body = b"x" * answer
    head = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % answer

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                await reader.readuntil(b"\r\n\r\n")
                writer.write(head + body)
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    backend = await asyncio.start_server(serve, "127.0.0.1", 0)
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "loadtests.calibrate_tls",
        "--relay",
        str(directory),
        str(backend.sockets[0].getsockname()[1]),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    assert child.stdout is not None and child.stdin is not None
    port = int(await child.stdout.readline())
    size = len(head) + answer
    connections = [await asyncio.open_connection("127.0.0.1", port, ssl=client) for _ in range(4)]
    free: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = asyncio.Queue()
    for pair in connections:
        free.put_nowait(pair)

    async def one() -> None:
        reader, writer = await free.get()
        writer.write(_REQUEST)
        await reader.readexactly(size)
        free.put_nowait((reader, writer))

    async def paced(count: int) -> None:
        start = time.monotonic()
        tasks = []
        for i in range(count):
            delay = start + i / RELAY_QPS - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one()))
        await asyncio.gather(*tasks)

    await paced(RELAY_QPS // 2)  # warm up
    before = _process_cpu(child.pid)
    count = int(RELAY_QPS * seconds)
    await paced(count)
    spent = _process_cpu(child.pid) - before
    for _, writer in connections:
        writer.close()
    child.stdin.close()
    await child.wait()
    backend.close()
    return spent / count


def _process_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _runner() -> asyncio.Runner:
    try:
        import uvloop
    except ImportError:  # asyncio's own loop: a little dearer
        return asyncio.Runner()
    return asyncio.Runner(loop_factory=uvloop.new_event_loop)


def relay_cost(directory: Path, *, answer: int, seconds: float = 4.0, repeat: int = 3) -> float:
    """CPU seconds per request of a spliced pipe's destination proxy, both directions, TLS
    records included: a process of its own accepting mutual TLS and relaying to a plaintext
    server, on uvloop as the proxies run, at :data:`RELAY_QPS` evenly paced (an event loop
    woken for each read, as a proxy is at such rates); median of ``repeat``."""
    runs = []
    for _ in range(repeat):
        with _runner() as runner:
            runs.append(runner.run(_relay_cpu(directory, answer, seconds)))
    return statistics.median(runs)


def tls_costs(*, answer: int = 818, count: int = 4000, repeat: int = 3) -> dict[str, float]:
    """The profile's ``tls`` section, measured on this machine."""
    with tempfile.TemporaryDirectory(prefix="simmesh-calibrate-tls-") as tmp:
        client, server = _contexts(Path(tmp))
        connect, accept = handshake_costs(client, server)
        request, per_byte = record_costs(client, server, answer=answer, count=count, repeat=repeat)
        relay = relay_cost(Path(tmp), answer=answer, repeat=repeat)
    return {
        "connect": connect,
        "accept": accept,
        "request": request,
        "byte": per_byte,
        "relay": relay,
    }


if __name__ == "__main__":  # the relay process of relay_cost
    if len(sys.argv) != 4 or sys.argv[1] != "--relay":
        sys.exit(
            "usage: python -m loadtests.calibrate_tls --relay DIRECTORY PORT (calibrate.py runs it)"
        )
    with _runner() as main_runner:
        main_runner.run(_serve_relay(Path(sys.argv[2]), int(sys.argv[3])))
