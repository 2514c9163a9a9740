"""Fuzz target: the HTTP front end, request bytes over a real socket.

A proxy (short timeouts) and a small backend run on an event loop in a background thread, on
loopback; a TrafficSplit on the service matches every request against regexes that backtrack
catastrophically on Python's ``re`` (issue 19), so a fuzzed path or header that would stall a
backtracking engine is a finding. Each input is sent on a new connection to the proxy's HTTP
listener (inputs of even length are followed by a half-close, others wait for the proxy's
timeouts, so complete requests are forwarded too), and the answer is read until the proxy
closes. The proxy must answer every input within seconds with nothing or with HTTP/1.x
responses (an h2c client gets HTTP/2 frames), never log an unhandled error (a traceback from a
handler or a callback is a finding: the logging handler below fails the input), and its
engine's in-flight counts must return to zero. The instrumented code is the proxy's and the
core's Python (httptools' C parser, llhttp, is not instrumented, but what it hands us is).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import sys
import threading
import time
from typing import Any

import atheris

with atheris.instrument_imports(include=["mesh"]):
    from mesh.proxy.proxy import Options, Proxy
    from tests.proxy.harness import build, endpoints, free_range, route_group, service, settings

from aiohttp import web

PROXY_TIMEOUT = 0.1  # header, body, keep-alive, write and upstream timeouts of the proxy
# Catastrophic on a backtracking engine: /r/ + 28 a + ! took 8.6 s (seeds redos-path, -header)
EVIL_MATCHES: list[dict[str, Any]] = [
    {"name": "path", "pathRegex": "/r/(a+)+$"},
    {"name": "header", "pathRegex": "/", "headers": [{"x-r": "(a|aa)+$"}]},
]
READ_LIMIT = 1 << 20


class Failures(logging.Handler):
    """Records errors logged by the proxy, aiohttp and asyncio (unhandled exceptions)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(self.format(record))


FAILURES = Failures()
for name in ("simmesh", "aiohttp", "asyncio"):
    logging.getLogger(name).addHandler(FAILURES)


async def answer(request: web.BaseRequest) -> web.Response:
    try:
        body = await request.read()
    except ConnectionResetError:
        # the proxy gave up on a client whose body stalled and closed this connection, as it
        # should: not a finding (aiohttp would log it as an error of this handler)
        return web.Response(status=400)
    return web.Response(text=f"{request.method} {request.path_qs} {len(body)}\n")


class Mesh:
    """The proxy and its backend, on a loop in another thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.port = free_range(1)
        self.proxy: Proxy | None = None
        threading.Thread(target=self._run, daemon=True).start()
        if not self.ready.wait(30):
            raise RuntimeError("the proxy did not start")

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self._start())
        self.ready.set()
        self.loop.run_forever()

    async def _start(self) -> None:
        server = web.Server(answer)
        backend = await self.loop.create_server(server, "127.0.0.2", 0)
        target = ("127.0.0.2", int(backend.sockets[0].getsockname()[1]))
        docs = [
            service("web"),
            *endpoints("web", [target]),
            service("web-v2"),
            *endpoints("web-v2", [target]),
            # every request goes through the split's regexes (issue 19: they must stay linear)
            route_group("evil", EVIL_MATCHES),
            {
                "apiVersion": "split.smi-spec.io/v1alpha4",
                "kind": "TrafficSplit",
                "metadata": {"name": "web", "namespace": "demo"},
                "spec": {
                    "service": "web",
                    "backends": [{"service": "web-v2", "weight": 1}],
                    "matches": [{"kind": "HTTPRouteGroup", "name": "evil"}],
                },
            },
        ]
        options = Options(
            node="fuzz",
            bind="127.0.0.1",
            admin_port=None,
            header_timeout=PROXY_TIMEOUT,
            keepalive_timeout=PROXY_TIMEOUT,
            body_timeout=PROXY_TIMEOUT,
            write_timeout=PROXY_TIMEOUT,  # (an h2c client that opens no window)
            upstream_timeout=PROXY_TIMEOUT,
            max_connections=64,
        )
        self.proxy = Proxy(options)
        await self.proxy.apply(build(docs, settings(http=self.port)))

    def settled(self) -> bool:
        proxy = self.proxy
        assert proxy is not None
        return proxy.inflight == 0 and all(n == 0 for n in proxy.state.inflight.values())


MESH = Mesh()


def exchange(data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", MESH.port), timeout=5) as sock:
        try:
            sock.sendall(data)
            if len(data) % 2 == 0:
                sock.shutdown(socket.SHUT_WR)
        except OSError:
            return b""  # the proxy closed first (it may, on garbage)
        received = b""
        deadline = time.monotonic() + 5
        while len(received) < READ_LIMIT:
            if time.monotonic() > deadline:
                raise AssertionError(f"no close within 5 s; got {received[:200]!r}")
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            except TimeoutError:
                raise AssertionError(f"proxy hung; got {received[:200]!r}") from None
            if not chunk:
                break
            received += chunk
        return received


def test_one_input(data: bytes) -> None:
    received = exchange(data)
    http1 = received.startswith((b"HTTP/1.1 ", b"HTTP/1.0 "))
    if received and not http1 and not data.startswith(b"PRI * "):
        raise AssertionError(f"not an HTTP/1.x answer: {received[:200]!r}")
    if http1 and not received[9:12].isdigit():
        raise AssertionError(f"bad status line: {received[:200]!r}")
    for _ in range(100):
        if MESH.settled():
            break
        time.sleep(0.01)
    else:
        raise AssertionError("in-flight counts did not return to zero")
    if FAILURES.records:
        raise AssertionError("logged errors:\n" + "\n".join(FAILURES.records[:3]))


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
