"""``simmesh capture``: the node's GAMMA capture agent (issue 16), a thin driver.

It gets the MeshConfig as a proxy does (long-polling the controller, or a watched file), and
applies what :func:`mesh.core.capture.render_nft` makes of it for its node: DNAT rules in the
node's network namespace sending TCP from local pods to each captured ClusterIP:port to the
node proxy pod's capture listener. Each change is one ``nft -f`` transaction that deletes and
re-adds the agent's own tables (``ip simmesh``, ``ip6 simmesh``), so the node never holds half
a ruleset and nothing else of the node's is touched. A config that cannot be read, or rules
``nft`` refuses, leave the last good rules in place (one log line; the source retries). SIGTERM
or SIGINT removes the tables and exits.

It runs on the host network with ``NET_ADMIN`` (the chart's optional DaemonSet). It polls
without naming its node, so the controller does not take it for the node's proxy.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
from typing import Any

from mesh.core.capture import remove_nft, render_nft
from mesh.core.schema import MeshConfig
from mesh.proxy.sources import ControllerSource, FileSource

log = logging.getLogger("simmesh.capture")


class NftError(RuntimeError):
    pass


async def nft_apply(ruleset: str, nft: str = "nft") -> None:
    """Run ``nft -f -`` on ``ruleset`` (one transaction); NftError with nft's message."""
    try:
        proc = await asyncio.create_subprocess_exec(
            nft,
            "-f",
            "-",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
    except OSError as exc:
        raise NftError(f"cannot run {nft}: {exc.strerror or exc}") from None
    _, err = await proc.communicate(ruleset.encode())
    if proc.returncode != 0:
        message = " ".join(err.decode(errors="replace").split())[:500]
        raise NftError(f"{nft} -f refused the ruleset (exit {proc.returncode}): {message}")


class Agent:
    def __init__(self, node: str, *, nft: str = "nft") -> None:
        self.node = node
        self.nft = nft
        self.applied: str | None = None  # the ruleset in place
        self.version = ""

    async def apply(self, config: MeshConfig) -> bool:
        """Apply ``config``'s rules for this node, unless they are the ones in place."""
        ruleset = render_nft(config.settings.capture, self.node)
        if ruleset != self.applied:
            await nft_apply(ruleset, self.nft)  # NftError: the source logs it and retries
            self.applied = ruleset
            captured = ruleset.count(" dnat to ")
            log.info(
                "config %s: %d captured Service ports on %s", config.version, captured, self.node
            )
        self.version = config.version
        return True

    async def remove(self) -> None:
        await nft_apply(remove_nft(), self.nft)
        self.applied = None
        log.info("removed the capture rules of %s", self.node)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--controller", metavar="URL", help="the controller's config API")
    source.add_argument("--config", metavar="FILE", help="a MeshConfig file (JSON or YAML)")
    parser.add_argument(
        "--node",
        default=os.environ.get("NODE_NAME", ""),
        help="this node's name (default $NODE_NAME, the downward API's spec.nodeName)",
    )
    parser.add_argument("--nft", default="nft", help="the nft program (default nft)")
    parser.add_argument(
        "--log-level", default="info", choices=("debug", "info", "warning", "error")
    )


async def serve(args: argparse.Namespace) -> int:
    agent = Agent(args.node, nft=args.nft)
    source: Any
    if args.controller:
        source = ControllerSource(args.controller, "", agent.apply)  # no node: not a proxy
    else:
        source = FileSource(args.config, agent.apply)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    task = asyncio.create_task(source.run())
    stopping = asyncio.create_task(stop.wait())
    await asyncio.wait({task, stopping}, return_when=asyncio.FIRST_COMPLETED)
    task.cancel()
    stopping.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    try:
        await agent.remove()
    except NftError as exc:
        log.error("%s", exc)
        return 1
    return 0


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if not args.node:
        print("simmesh capture: error: --node (or $NODE_NAME) is required", file=sys.stderr)
        return 2
    return asyncio.run(serve(args))
