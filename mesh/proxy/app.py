"""The ``simmesh proxy`` command.

``add_arguments(parser)`` and ``run(args)`` are what ``mesh.cli`` wires as a subcommand;
``main(argv)`` runs it standalone (``python -m mesh.proxy``). ``run`` starts the proxy and its
config source on uvloop when installed (else asyncio's loop), waits for SIGTERM or SIGINT,
then drains: stop accepting, let in-flight requests and connections finish up to
``--drain-timeout``, exit 0.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import signal
import sys
from collections.abc import Sequence
from typing import Any

from mesh.core.config import MeshConfig
from mesh.proxy.addresses import AddressMap
from mesh.proxy.proxy import Options, Proxy
from mesh.proxy.sources import ControllerSource, FileSource

log = logging.getLogger("simmesh.proxy")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--config-file", metavar="FILE", help="MeshConfig JSON (watched)")
    source.add_argument("--controller", metavar="URL", help="controller base URL (long-poll)")
    parser.add_argument("--node", required=True, help="this proxy's node name")
    parser.add_argument("--bind", default="0.0.0.0", metavar="ADDRESS", help="listen address")
    parser.add_argument(
        "--admin-port",
        type=int,
        default=9901,
        metavar="PORT",
        help="health, readiness, /metrics and /config (0: any free port)",
    )
    parser.add_argument("--access-log", action="store_true", help="JSON access log on stdout")
    tuning = parser.add_argument_group("tuning")
    tuning.add_argument("--drain-timeout", type=float, default=15.0, metavar="SECONDS")
    tuning.add_argument("--connect-timeout", type=float, default=5.0, metavar="SECONDS")
    tuning.add_argument(
        "--header-timeout",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="close clients whose request headers take longer (408)",
    )
    tuning.add_argument("--keepalive-timeout", type=float, default=60.0, metavar="SECONDS")
    tuning.add_argument("--udp-idle-timeout", type=float, default=30.0, metavar="SECONDS")
    tuning.add_argument(
        "--buffer-limit",
        type=int,
        default=64 * 1024,
        metavar="BYTES",
        help="request bodies up to this size are buffered so they can be retried",
    )
    tuning.add_argument("--max-header-size", type=int, default=8190, metavar="BYTES")
    tuning.add_argument(
        "--upstream-ca",
        metavar="FILE",
        help="verify https upstreams against this CA (default: not verified)",
    )
    tuning.add_argument(
        "--log-level", default="info", choices=("debug", "info", "warning", "error")
    )
    tuning.add_argument("--no-uvloop", action="store_true", help="use asyncio's own event loop")
    parser.add_argument(
        "--address-map",
        action="append",
        default=[],
        metavar="CLUSTER_CIDR=LOCAL_CIDR",
        help="reach a pod network through local addresses (local clusters and tests)",
    )


def options_from(args: argparse.Namespace) -> Options:
    return Options(
        node=args.node,
        bind=args.bind,
        admin_port=args.admin_port,
        access_log=args.access_log,
        header_timeout=args.header_timeout,
        keepalive_timeout=args.keepalive_timeout,
        connect_timeout=args.connect_timeout,
        drain_timeout=args.drain_timeout,
        udp_idle_timeout=args.udp_idle_timeout,
        buffer_limit=args.buffer_limit,
        max_header_size=args.max_header_size,
        upstream_ca=args.upstream_ca,
        address_map=AddressMap.parse(args.address_map),
    )


def settle_memory() -> None:
    """Move what a config leaves alive (router, engine, modules) out of the cyclic GC's reach.

    Garbage from the previous config is collected first; afterwards the collector only scans
    what requests allocate, so its pauses stay short however large the config is. Young
    collections are also made rarer: request objects are short-lived and freed by reference
    counting, so frequent generation-0 scans mostly cost latency.
    """
    gc.unfreeze()
    gc.collect()
    gc.freeze()
    gc.set_threshold(10_000, 20, 100)


async def serve(args: argparse.Namespace) -> int:
    proxy = Proxy(options_from(args))
    await proxy.start()

    async def apply(config: MeshConfig) -> bool:
        changed = await proxy.apply(config)
        if changed:
            settle_memory()
        return changed

    def errors() -> None:
        proxy.metrics.count("config_errors")

    source: Any
    if args.config_file:
        source = FileSource(args.config_file, apply, status=proxy.source, on_error=errors)
    else:
        source = ControllerSource(
            args.controller, args.node, apply, status=proxy.source, on_error=errors
        )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log.info("simmesh proxy for node %s; admin on %s:%s", args.node, args.bind, proxy.admin_port)
    task = asyncio.create_task(source.run())
    try:
        await stop.wait()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        log.info("draining (up to %.1fs)", args.drain_timeout)
        await proxy.drain()
        await proxy.close()
    log.info("stopped")
    return 0


def _runner(no_uvloop: bool) -> asyncio.Runner:
    if not no_uvloop:
        try:
            import uvloop
        except ImportError:
            pass
        else:
            return asyncio.Runner(loop_factory=uvloop.new_event_loop)
    return asyncio.Runner()


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=args.log_level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        AddressMap.parse(args.address_map)
    except ValueError as exc:
        print(f"simmesh: error: {exc}", file=sys.stderr)
        return 2
    with _runner(args.no_uvloop) as runner:
        return runner.run(serve(args))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="simmesh proxy", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))
