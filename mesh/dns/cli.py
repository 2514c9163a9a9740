"""Arguments and exit codes of ``simmesh prepare``, ``simmesh cleanup`` and ``simmesh check``.

``mesh/cli.py`` wires each pair into a subcommand: ``add_<name>_arguments(parser)`` adds the
options, ``run_<name>(args)`` runs it and returns the exit code. ``python -m mesh.dns.cli`` runs
them standalone. Exit codes follow the simmesh CLI: 0 done (or every check passed), 1 a check
failed, 2 an error (printed as ``simmesh <command>: error: ...``, naming the object and what was
expected). The work itself is in :mod:`mesh.dns.apply` and :mod:`mesh.dns.check`.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Coroutine, Sequence
from datetime import UTC, datetime
from typing import Any

from mesh import argtypes
from mesh.dns import apply, check
from mesh.dns.corefile import CorefileError, DnsSettings
from mesh.dns.kube import ApiKube, KubeError, KubeUnreachable, connect
from mesh.dns.kubedns import DEFAULT_IMAGE

EXIT_OK, EXIT_FAILED, EXIT_ERROR = 0, 1, 2
ERRORS = (apply.DnsError, CorefileError, KubeError, KubeUnreachable)
WAIT_PAUSE = 2.0  # seconds between two tries of check --wait


class UsageError(Exception):
    """A bad option value."""


# --------------------------------------------------------------------------- arguments


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--kubeconfig",
        metavar="PATH",
        help="kubeconfig file, or 'in-cluster' (default: $KUBECONFIG, ~/.kube/config, or the "
        "in-cluster service account)",
    )
    parser.add_argument("--context", help="kubeconfig context (default: the current one)")
    parser.add_argument(
        "--namespace", default="simmesh", help="the mesh namespace (default: simmesh)"
    )
    parser.add_argument("--zone", default="mesh", help="DNS zone of mesh names (default: mesh)")
    parser.add_argument(
        "--cluster-domain", default="cluster.local", help="cluster domain (default: cluster.local)"
    )
    parser.add_argument(
        "--timeout",
        type=argtypes.seconds(high=3600.0),
        default=30.0,
        metavar="SECONDS",
        help="per API request",
    )


def add_prepare_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser)
    parser.add_argument(
        "--coredns-image",
        default=DEFAULT_IMAGE,
        metavar="IMAGE",
        help=f"image of the mesh-owned CoreDNS on kube-dns clusters (default: {DEFAULT_IMAGE})",
    )


def add_cleanup_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser)


def add_check_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser)
    parser.add_argument(
        "--controller",
        metavar="URL",
        help="the controller's API, e.g. http://127.0.0.1:9000 (default: through the API "
        "server's proxy to Service <namespace>/simmesh-controller:9000)",
    )
    parser.add_argument(
        "--proxy",
        action="append",
        default=None,
        metavar="URL",
        help="a node proxy's admin port to read its certificates from, e.g. "
        "http://127.0.0.1:9901 (repeatable; default: every proxy pod through the API server's "
        "pod proxy, when one has a tunnel port)",
    )
    parser.add_argument(
        "--wait",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="check again every 2 s until every row passes or SECONDS have gone by (each try "
        "that fails says which rows on stderr); the last table is printed (default: 0, once)",
    )


# --------------------------------------------------------------------------- commands


def run_prepare(args: argparse.Namespace) -> int:
    return _run("prepare", _prepare(args))


def run_cleanup(args: argparse.Namespace) -> int:
    return _run("cleanup", _cleanup(args))


def run_check(args: argparse.Namespace) -> int:
    return _run("check", _check(args))


async def _prepare(args: argparse.Namespace) -> int:
    settings = _settings(args)
    kube = await _connect(args)
    try:
        await apply.prepare(kube, settings, now=_now(), report=_say, image=args.coredns_image)
    finally:
        await kube.close()
    return EXIT_OK


async def _cleanup(args: argparse.Namespace) -> int:
    settings = _settings(args)
    kube = await _connect(args)
    try:
        await apply.cleanup(kube, mesh_namespace=settings.mesh_namespace, now=_now(), report=_say)
    finally:
        await kube.close()
    return EXIT_OK


async def _check(args: argparse.Namespace) -> int:
    _require_url(args.controller)
    for url in args.proxy or ():
        _require_url(url, "--proxy")
    if not 0 <= args.wait <= 3600:
        raise UsageError(f"--wait {args.wait:g}: expected 0 to 3600 seconds")
    loop = asyncio.get_running_loop()
    until = loop.time() + args.wait
    while True:
        rows = await _check_once(args)
        failed = [row for row in rows if not row.ok]
        left = until - loop.time()
        if not failed or left <= 0:
            break
        names = ", ".join(f"{row.name} ({row.detail[:80]})" for row in failed)
        print(f"simmesh check: not yet: {names}; {left:.0f} s left", file=sys.stderr, flush=True)
        await asyncio.sleep(min(WAIT_PAUSE, left))
    sys.stdout.write(check.render(rows))
    return EXIT_OK if not failed else EXIT_FAILED


async def _check_once(args: argparse.Namespace) -> list[check.Row]:
    settings = _settings(args)
    kube: ApiKube | None = None
    problem = ""
    try:
        kube = await _connect(args)
    except KubeUnreachable as exc:
        problem = str(exc)
    try:
        proxies: list[check.ProxyAdmin] | None = None
        if args.proxy:
            proxies = [check.HttpProxy(url) for url in args.proxy]
        rows = await check.run_checks(
            kube, _controller(args, kube), settings, kube_problem=problem, proxies=proxies
        )
    finally:
        if kube is not None:
            await kube.close()
    return rows


def _controller(args: argparse.Namespace, kube: ApiKube | None) -> check.Controller | None:
    if args.controller:
        return check.HttpController(args.controller)
    return check.ProxiedController(kube, args.namespace) if kube is not None else None


# --------------------------------------------------------------------------- helpers


def _run(command: str, work: Coroutine[Any, Any, int]) -> int:
    try:
        return asyncio.run(work)
    except (*ERRORS, UsageError) as exc:
        print(f"simmesh {command}: error: {exc}", file=sys.stderr)
        return EXIT_ERROR


def _settings(args: argparse.Namespace) -> DnsSettings:
    return DnsSettings(
        zone=args.zone, mesh_namespace=args.namespace, cluster_domain=args.cluster_domain
    )


async def _connect(args: argparse.Namespace) -> ApiKube:
    return await connect(args.kubeconfig, context=args.context, timeout=args.timeout)


def _require_url(url: str | None, flag: str = "--controller") -> None:
    if url is None:
        return
    example = "http://127.0.0.1:9901" if flag == "--proxy" else "http://127.0.0.1:9000"
    try:
        argtypes.http_url(url)
    except argparse.ArgumentTypeError:
        raise UsageError(f"{flag} {url!r}: expected a URL such as {example}") from None


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _say(line: str) -> None:
    print(line, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m mesh.dns.cli prepare|cleanup|check [options]``."""
    parser = argtypes.Parser(prog="simmesh", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    for name, add in (
        ("prepare", add_prepare_arguments),
        ("cleanup", add_cleanup_arguments),
        ("check", add_check_arguments),
    ):
        add(commands.add_parser(name))
    args = parser.parse_args(argv)
    runner = {"prepare": run_prepare, "cleanup": run_cleanup, "check": run_check}
    return runner[args.command](args)


if __name__ == "__main__":
    raise SystemExit(main())
