"""The ``simmesh testapp`` command: options, start, stop.

``add_arguments(parser)`` and ``run(args)`` are wired by mesh.cli. ``TestApp`` starts the HTTP
API and the optional TCP and UDP echo ports (port 0 means off; ``TestApp.ports`` gives the
ports actually bound), serves until SIGTERM or SIGINT, then reports not ready, lets in-flight
requests finish for up to ``--drain-timeout`` and exits 0. Bad options exit 2 with one line.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import random
import signal
import socket
import sys
import time
from dataclasses import dataclass

from aiohttp import web

from mesh.testapp.api import HttpApp
from mesh.testapp.behaviour import Behaviour, BehaviourError, parse_latency
from mesh.testapp.echo import TcpEcho, UdpEcho
from mesh.testapp.record import Identity, Recorder

__all__ = ["Options", "TestApp", "add_arguments", "run"]

log = logging.getLogger("simmesh.testapp")


@dataclass(frozen=True, slots=True)
class Options:
    identity: Identity
    behaviour: Behaviour
    bind: str = "0.0.0.0"
    http_port: int = 8080
    tcp_port: int | None = None  # None: off; 0: any free port
    udp_port: int | None = None
    seed: int | None = None
    drain_timeout: float = 5.0
    listen_at: float | None = None  # wall-clock time to start listening (None: at once)


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number, got {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port 0..65535, got {text!r}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    env = os.environ.get
    parser.add_argument("--name", default=env("POD_NAME") or socket.gethostname())
    parser.add_argument("--namespace", default=env("POD_NAMESPACE", ""))
    parser.add_argument("--node", default=env("NODE_NAME", ""))
    parser.add_argument("--bind", default="0.0.0.0", metavar="ADDRESS")
    parser.add_argument("--http-port", type=_port, default=8080, metavar="PORT")
    parser.add_argument("--tcp-port", type=_port, default=0, metavar="PORT", help="0: off")
    parser.add_argument("--udp-port", type=_port, default=0, metavar="PORT", help="0: off")
    parser.add_argument(
        "--latency",
        default="0",
        metavar="SPEC",
        help='seconds, or a JSON distribution such as {"dist": "exponential", "mean": 0.01}',
    )
    parser.add_argument("--error-rate", type=float, default=0.0, metavar="P")
    parser.add_argument("--error-status", type=int, default=500, metavar="STATUS")
    parser.add_argument(
        "--capacity", type=int, default=None, metavar="N", help="requests served at once"
    )
    parser.add_argument(
        "--contention",
        type=float,
        default=0.0,
        metavar="K",
        help="each request already in service makes a new one K times its latency slower",
    )
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--drain-timeout", type=float, default=5.0, metavar="SECONDS")
    parser.add_argument(
        "--listen-at",
        type=float,
        metavar="EPOCH",
        help="start listening at this wall-clock time (a pod that comes back on time)",
    )
    parser.add_argument(
        "--log-level", default="info", choices=("debug", "info", "warning", "error")
    )


def options_from(args: argparse.Namespace) -> Options:
    """Options from parsed arguments; BehaviourError names a bad value."""
    behaviour = Behaviour(
        latency=parse_latency(args.latency),
        error_rate=args.error_rate,
        error_status=args.error_status,
        capacity=args.capacity,
        contention=args.contention,
    )
    if not args.name:
        raise BehaviourError("name: must not be empty")
    return Options(
        identity=Identity(args.name, args.namespace, args.node),
        behaviour=behaviour,
        bind=args.bind,
        http_port=args.http_port,
        tcp_port=args.tcp_port or None,
        udp_port=args.udp_port or None,
        seed=args.seed,
        drain_timeout=args.drain_timeout,
        listen_at=args.listen_at,
    )


class TestApp:
    """The HTTP API and echo ports of one test app; ``start()`` binds, ``close()`` stops."""

    __test__ = False  # not a pytest test class

    def __init__(self, options: Options) -> None:
        self.options = options
        self.recorder = Recorder()
        rng = random.Random(options.seed)
        self.http = HttpApp(options.identity, self.recorder, options.behaviour, rng)
        self.tcp = TcpEcho(options.identity, self.recorder, self.http.serve)
        self.udp = UdpEcho(options.identity, self.recorder)
        self.runner = web.AppRunner(self.http.app, access_log=None, handle_signals=False)
        self.ports: dict[str, int] = {}

    async def start(self) -> None:
        opts = self.options
        await self.runner.setup()
        site = web.TCPSite(self.runner, opts.bind, opts.http_port, reuse_address=True)
        await site.start()
        self.ports["http"] = int(self.runner.addresses[0][1])
        if opts.tcp_port is not None:
            self.ports["tcp"] = await self.tcp.start(opts.bind, opts.tcp_port)
        if opts.udp_port is not None:
            self.ports["udp"] = await self.udp.start(opts.bind, opts.udp_port)

    async def close(self) -> None:
        self.http.stopping = True
        await self.udp.close()
        await self.tcp.close()
        await self.runner.shutdown()
        await self.runner.cleanup()


async def serve(options: Options) -> int:
    app = TestApp(options)
    if options.listen_at is not None:
        await asyncio.sleep(max(0.0, options.listen_at - time.time()))
    await app.start()
    ports = ", ".join(f"{name} {port}" for name, port in app.ports.items())
    log.info("simmesh testapp %s on %s (%s)", options.identity.name, options.bind, ports)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    app.http.stopping = True
    try:
        async with asyncio.timeout(options.drain_timeout):
            while app.http.gate.busy or app.http.gate.queued:
                await asyncio.sleep(0.05)
    except TimeoutError:
        log.warning("drain timeout: %d requests still in flight", app.http.gate.busy)
    await app.close()
    log.info("stopped")
    return 0


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=args.log_level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        options = options_from(args)
    except BehaviourError as exc:
        print(f"simmesh testapp: error: {exc}", file=sys.stderr)
        return 2
    try:
        return asyncio.run(serve(options))
    except OSError as exc:
        print(f"simmesh testapp: error: cannot listen on {options.bind}: {exc}", file=sys.stderr)
        return 1
