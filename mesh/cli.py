"""The ``simmesh`` command.

Subcommands are thin: they read input, call the core (or start a driver) and print. Exit codes:
0 success, 1 a check or SLO failed, 2 bad input (with a message naming what is wrong). A bad
input is answered with one line on stderr, ``simmesh[ <command>]: error: ...``, and no traceback:
argparse's own errors too (:class:`Parser` leaves out the usage text), and option values are
checked by the types in :mod:`mesh.argtypes` before anything starts.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import SplitResult, urlsplit

import yaml

from mesh.argtypes import Parser
from mesh.core.config import MeshConfig, build_config
from mesh.core.explain import explain_flow, explain_http, explain_identity
from mesh.core.routing import Router
from mesh.core.schema import Problem
from mesh.core.topology import build_topology
from mesh.documents import DocumentError, one_line
from mesh.manifests import ManifestError, load_state, read_settings


class UsageError(Exception):
    """Bad input from the user: printed as ``simmesh: error: ...`` with exit code 2."""


def compile_dir(directory: Path, *, acl: bool | None, strict: bool = True) -> MeshConfig:
    settings = read_settings(directory, acl=acl)
    state, problems = load_state(directory)
    if problems and strict:
        raise UsageError("; ".join(problems))
    for problem in problems:
        print(f"warning: {problem}", file=sys.stderr)
    return build_config(build_topology(state, settings), settings)


def _acl_flag(args: argparse.Namespace) -> bool | None:
    return True if args.acl else None


def cmd_compile(args: argparse.Namespace) -> int:
    config = compile_dir(Path(args.dir), acl=_acl_flag(args))
    for error in config.errors:
        print(f"warning: {_error_text(error)}", file=sys.stderr)
    if args.output == "yaml":
        sys.stdout.write(yaml.safe_dump(json.loads(config.to_json()), sort_keys=True))
    else:
        sys.stdout.write(config.to_json())
    return 0


def _error_text(error: Problem) -> str:
    where = f"{error.namespace}/{error.name}" if error.namespace else error.name
    field = f": {error.field}" if error.field else ""
    return f"{error.kind} {where}{field}: {error.message}"


def _parse_headers(values: Sequence[str]) -> list[tuple[str, str]]:
    headers: list[tuple[str, str]] = []
    for value in values:
        name, sep, text = value.partition(":")
        if not sep or not name.strip():
            raise UsageError(f"-H {value!r}: expected 'Name: value'")
        headers.append((name.strip(), text.strip()))
    return headers


def _host_port(text: str, flag: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isascii() or not port.isdigit() or len(port) > 5:
        raise UsageError(f"{flag} {one_line(text, 80)!r}: expected HOST:PORT")
    if not 0 < int(port) < 65536:
        raise UsageError(f"{flag} {one_line(text, 80)!r}: expected HOST:PORT with a port 1..65535")
    return host, int(port)


def _url(text: str) -> tuple[SplitResult, str, int]:
    expected = f"--url {one_line(text, 80)!r}: expected http://HOST[:PORT]/PATH"
    try:
        parts = urlsplit(text)
        number = parts.port
    except ValueError as exc:
        raise UsageError(f"{expected} ({exc})") from None
    if parts.scheme not in ("http", "https") or not parts.hostname or number == 0:
        raise UsageError(expected)
    if any(c.isspace() or ord(c) < 32 for c in text):
        raise UsageError(f"{expected} (no spaces or control characters)")
    return parts, parts.hostname, number or (443 if parts.scheme == "https" else 80)


def cmd_explain(args: argparse.Namespace) -> int:
    source = args.source
    if source is not None and (source.count("/") != 1 or "" in source.split("/")):
        raise UsageError(f"--from {one_line(source, 80)!r}: expected NAMESPACE/SERVICEACCOUNT")
    source_ip = None
    if args.from_ip is not None:
        try:
            source_ip = str(ipaddress.ip_address(args.from_ip))
        except ValueError:
            raise UsageError(
                f"--from-ip {one_line(args.from_ip, 80)!r}: expected a pod's IP address"
            ) from None
    headers = _parse_headers(args.header)
    if args.url:
        target = _url(args.url)
    else:
        protocol = "tcp" if args.tcp else "udp"
        flow = _host_port(args.tcp or args.udp, f"--{protocol}")
    config = compile_dir(Path(args.dir), acl=_acl_flag(args))  # after the arguments: fail fast
    router = Router(config)
    if source_ip is not None:
        source = router.source_identity(source_ip)  # as the proxy sees the caller
    if args.url:
        parts, host, port = target
        path = parts.path or "/"
        if parts.query:
            path += "?" + parts.query
        result = explain_http(
            router,
            host=host,
            port=port,
            method=args.method.upper(),
            path=path,
            headers=headers,
            source=source,
        )
    else:
        host, port = flow
        result = explain_flow(router, host=host, port=port, protocol=protocol, source=source)
    if result is None:
        target = args.url or args.tcp or args.udp
        raise UsageError(f"no meshed service answers to {target} (see `simmesh compile`)")
    result["identity"] = explain_identity(
        router, source, endpoint=result.get("endpoint"), source_ip=source_ip
    )
    result["errors"] = [_error_text(e) for e in config.errors]
    if args.output == "json":
        print(json.dumps(result, indent=2, sort_keys=True))
    else:
        print(_explain_text(result))
    return 0


def _explain_text(result: dict[str, Any]) -> str:
    lines = []
    verdict = "ALLOWED" if result["allowed"] else f"DENIED ({result['status']})"
    if result["reasonCode"] == "redirect":
        verdict = f"REDIRECTED ({result['status']})"
    lines.append(f"{verdict}: {result['reason']}")
    route = result["route"]
    lines.append(
        f"  route:    {route['service']} port {route['port']} ({route['protocol']}, "
        f"mesh listener {route['listener']})"
    )
    sent = result["request"]
    if sent.get("target") is not None and sent["target"] != sent["path"]:
        lines.append(f"  path:     {sent['target']} (as sent: {sent['path']})")
    identity = result.get("identity")
    if identity is not None:
        lines.append(f"  identity: {_identity_text(identity)}")
    if result["rule"]:
        lines.append(f"  rule:     {result['rule']}")
    if result.get("split"):
        lines.append(f"  split:    {result['split']}")
    gamma = result.get("gamma")
    if gamma is not None:
        lines += _gamma_text(gamma)
    for backend in result["backends"]:
        mark = "ok" if backend["allowed"] else f"denied: {backend['reason']}"
        lines.append(f"  backend:  {backend['service']} weight {backend['weight']} ({mark})")
    if result.get("endpoint"):
        endpoint = result["endpoint"]
        lines.append(
            f"  endpoint: {endpoint['ip']}:{endpoint['port']} (identity "
            f"{endpoint['identity'] or 'unknown'}, node {endpoint['node'] or 'unknown'})"
        )
    for name, value in sorted(result["policy"].items()):
        if value is not None:
            lines.append(f"  {name + ':':<9} {json.dumps(value, sort_keys=True)}")
    for error in result["errors"]:
        lines.append(f"  warning:  {error}")
    return "\n".join(lines)


def _identity_text(identity: dict[str, Any]) -> str:
    """Who the request is authorised as, and by what (mTLS mode, certificate or address)."""
    by = {
        "certificate": "client certificate",
        "source-ip": "source IP",
        "none": "no identity",
    }[identity["by"]]
    return f"[{by}, mTLS {identity['mode']}] {identity['detail']}"


def _gamma_text(gamma: dict[str, Any]) -> list[str]:
    lines = [f"  routes:   {gamma['table']}"]
    if gamma.get("rule") is not None:
        name = f" ({gamma['rule']['name']})" if gamma["rule"]["name"] else ""
        lines.append(
            f"  matched:  {gamma['route']} rule {gamma['rule']['index']}{name}: {gamma['match']}"
        )
        lines += [f"  filter:   {text}" for text in gamma["filters"]]
    if gamma.get("location"):
        lines.append(f"  location: {gamma['location']}")
    if gamma.get("backend"):
        lines.append(f"  chosen:   {gamma['backend']}")
    return lines


class _Version(argparse.Action):
    """``simmesh --version``: which build runs is found out only when asked."""

    def __call__(self, parser: argparse.ArgumentParser, *_: object) -> None:
        from mesh import __version__
        from mesh.build import describe

        print(f"simmesh {__version__}, {describe()}")
        parser.exit()


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    parser = Parser(
        prog="simmesh", description="simmesh: a sidecar-free, simulation-first service mesh"
    )
    parser.add_argument(
        "--version", action=_Version, nargs=0, help="the version, and whether it is compiled"
    )
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)

    p = sub.add_parser("compile", help="print the MeshConfig for a manifests directory")
    p.add_argument("dir")
    p.add_argument("-o", "--output", choices=("json", "yaml"), default="json")
    p.add_argument("--acl", action="store_true", help="ACL mode (overrides mesh.yaml)")
    p.set_defaults(func=cmd_compile)

    p = sub.add_parser("explain", help="explain how one request or flow is routed or denied")
    p.add_argument("dir")
    caller = p.add_mutually_exclusive_group()
    caller.add_argument(
        "--from",
        dest="source",
        metavar="NAMESPACE/SERVICEACCOUNT",
        help="the caller's identity (its pods' ServiceAccount)",
    )
    caller.add_argument(
        "--from-ip",
        metavar="IP",
        help="the caller's pod IP: its identity and node as the proxy finds them in the config",
    )
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--url", help="http://HOST[:PORT]/PATH")
    target.add_argument("--tcp", metavar="HOST:PORT")
    target.add_argument("--udp", metavar="HOST:PORT")
    p.add_argument("-X", "--method", default="GET")
    p.add_argument("-H", "--header", action="append", default=[], metavar="'Name: value'")
    p.add_argument("--acl", action="store_true", help="ACL mode (overrides mesh.yaml)")
    p.add_argument("-o", "--output", choices=("text", "json"), default="text")
    p.set_defaults(func=cmd_explain)

    chosen = next((a for a in argv if not a.startswith("-")), None) if argv else None
    for name, (module, add, run, text) in LAZY.items():
        p = sub.add_parser(name, help=text)
        if name == chosen:
            _wire(p, module, add, run)
    return parser


# Subcommands whose drivers are imported only when used, so `simmesh compile` stays fast.
LAZY: dict[str, tuple[str, str, str, str]] = {
    "sim": (
        "sim.cli",
        "add_arguments",
        "run",
        "simulate a scenario: SLO verdicts, results.json, plots, report.html",
    ),
    "whatif": (
        "sim.whatif_cli",
        "add_arguments",
        "run",
        "simulate a scenario before and after a change over seeds: would it break an SLO?",
    ),
    "snapshot": (
        "mesh.snapshot.cli",
        "add_arguments",
        "run",
        "a scenario directory from the live mesh: its objects, traffic and latencies measured",
    ),
    "up": (
        "mesh.local.up",
        "add_arguments",
        "run",
        "run a scenario's mesh for real on this machine (controller, proxies, test apps, Locust)",
    ),
    "verify": (
        "mesh.local.verify",
        "add_arguments",
        "run",
        "simulate a scenario and run it for real under Locust: both side by side",
    ),
    "proxy": ("mesh.proxy.app", "add_arguments", "run", "run a node proxy"),
    "capture": (
        "mesh.proxy.capture",
        "add_arguments",
        "run",
        "run a node's GAMMA capture agent: ClusterIP traffic of route parents to the proxy (nft)",
    ),
    "controller": (
        "mesh.gate.controller",
        "add_arguments",
        "run",
        "run the controller (Kubernetes or a manifests directory), with the admission gate",
    ),
    "prepare": (
        "mesh.dns.cli",
        "add_prepare_arguments",
        "run_prepare",
        "teach the cluster DNS the mesh zone (CoreDNS, AKS, kube-dns)",
    ),
    "cleanup": (
        "mesh.dns.cli",
        "add_cleanup_arguments",
        "run_cleanup",
        "undo prepare exactly and delete the shadow Services",
    ),
    "check": (
        "mesh.dns.cli",
        "add_check_arguments",
        "run_check",
        "preflight: API server, CRDs, DNS, controller, proxies",
    ),
    "testapp": (
        "mesh.testapp.main",
        "add_arguments",
        "run",
        "a workload for tests and demos: HTTP echo and /call, TCP and UDP echo",
    ),
}


# Packages of the optional extras (pyproject.toml), for a one-line error when one is missing.
EXTRAS = {
    "simpy": "sim",
    "matplotlib": "sim",
    "numpy": "sim",
    "dask": "sim",
    "distributed": "sim",
    "opentelemetry": "tracing",
    "locust": "load",
    "gevent": "load",
    "geventhttpclient": "load",
}


def _missing_extra(exc: ModuleNotFoundError) -> str:
    """The one-line error for a package of an extra that is not installed; re-raise others."""
    package = (exc.name or "").split(".")[0]
    if package not in EXTRAS:
        raise exc
    return f"needs the Python package {package}: pip install 'simmesh[{EXTRAS[package]}]'"


def _wire(parser: argparse.ArgumentParser, module: str, add: str, run: str) -> None:
    import importlib

    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as exc:
        print(f"{parser.prog}: error: {_missing_extra(exc)}", file=sys.stderr)
        raise SystemExit(2) from None
    getattr(mod, add)(parser)
    parser.set_defaults(func=getattr(mod, run))


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except (UsageError, ManifestError, DocumentError) as exc:
        print(f"simmesh: error: {one_line(exc, 1000)}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as exc:
        print(f"simmesh {args.command}: error: {_missing_extra(exc)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
