"""``simmesh snapshot --out DIR``: the live mesh as a scenario directory (docs/snapshot.md).

1. The mesh: the namespace (``--namespace``), its ``simmesh-settings`` ConfigMap and running
   proxy pods; none of them is an error (exit 2), as an unreachable API server is.
2. The window (``--window``, default 5m): every proxy's ``/metrics`` scraped through the API
   server at its start and its end and differenced (the command waits that long), or, with
   ``--prometheus URL``, ``increase(...[window])`` over the window that just ended.
3. The objects as they are at the end (mesh/snapshot/cluster.py), stripped.
4. The scenario (mesh/snapshot/model.py) written to ``--out`` and nothing else
   (mesh/snapshot/write.py); with ``--propose-slos FILE`` SLOs from what was observed
   (mesh/snapshot/slos.py). ``simmesh sim DIR`` then predicts the window it came from.

Exit codes: 0 written, 2 bad input or a cluster it cannot read (one line on stderr).
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mesh import argtypes
from mesh.dns.kube import ApiKube, KubeUnreachable, connect
from mesh.snapshot import cluster, model, prometheus, slos, write
from mesh.snapshot.exposition import Table, add, difference

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")  # a scenario's (sim/scenario.py)
MAX_WINDOW = 7 * 86400.0
MAX_DURATION = 300.0  # simulated seconds by default: rates are what a snapshot measures


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, required=True, metavar="DIR", help="new directory")
    parser.add_argument(
        "--kubeconfig",
        metavar="PATH",
        help="kubeconfig file, or 'in-cluster' (default: $KUBECONFIG, ~/.kube/config, or the "
        "in-cluster service account)",
    )
    parser.add_argument("--context", help="kubeconfig context (default: the current one)")
    parser.add_argument("--namespace", type=argtypes.dns_label, default="simmesh")
    parser.add_argument(
        "--window",
        type=argtypes.duration(low=1.0, high=MAX_WINDOW),
        default=300.0,
        metavar="DURATION",
        help="how long traffic is measured: 30s, 5m (default), 1h",
    )
    parser.add_argument(
        "--prometheus",
        type=argtypes.http_url,
        metavar="URL",
        help="read the window that just ended from this Prometheus instead of waiting",
    )
    parser.add_argument(
        "--propose-slos",
        type=Path,
        metavar="FILE",
        help="also write SLOs from what was observed (outside --out), for whatif --slos",
    )
    parser.add_argument(
        "--slo-margin",
        type=argtypes.seconds(high=100.0, zero=True),
        default=0.5,
        metavar="FRACTION",
        help="proposed SLOs: error budget and p99 are the observed ones times 1 + this (0.5)",
    )
    parser.add_argument("--name", help="the scenario's name (default: the --out directory's)")
    parser.add_argument(
        "--duration",
        type=argtypes.seconds(high=MAX_WINDOW),
        metavar="SECONDS",
        help=f"simulated seconds (default: the window, at most {MAX_DURATION:g})",
    )
    parser.add_argument(
        "--timeout",
        type=argtypes.seconds(high=600.0),
        default=15.0,
        metavar="SECONDS",
        help="per API request",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress on stderr")


class UsageError(Exception):
    pass


def run(args: argparse.Namespace) -> int:
    try:
        check(args)
        return asyncio.run(take(args))
    except (UsageError, cluster.SnapshotError, write.OutputError) as exc:
        print(f"simmesh snapshot: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2


def check(args: argparse.Namespace) -> None:
    """What can be checked before the cluster is asked anything."""
    write.check_out(args.out)
    if args.propose_slos is not None:
        slo_path = args.propose_slos.resolve()
        if slo_path == args.out.resolve() or args.out.resolve() in slo_path.parents:
            raise UsageError(
                f"--propose-slos {args.propose_slos}: put it outside --out (every YAML file in "
                "a scenario directory is read as a manifest)"
            )
        if slo_path.is_dir():
            raise UsageError(f"--propose-slos {args.propose_slos}: is a directory")
    if args.name is not None and not NAME.fullmatch(args.name):
        raise UsageError(f"--name {args.name!r}: expected 1-63 letters, digits, '.', '_', '-'")


def _say(args: argparse.Namespace, line: str) -> None:
    if not args.quiet:
        print(line, file=sys.stderr, flush=True)


async def take(args: argparse.Namespace) -> int:
    try:
        kube = await connect(args.kubeconfig, context=args.context, timeout=args.timeout)
    except KubeUnreachable as exc:
        raise cluster.SnapshotError(str(exc)) from None
    try:
        return await _take(args, kube)
    finally:
        await kube.close()


async def _take(args: argparse.Namespace, kube: ApiKube) -> int:
    mesh = await cluster.installed(kube, args.namespace)
    warnings: list[str] = []
    if args.prometheus is not None:
        until = time.time()
        per_node, warnings = await prometheus.measure(args.prometheus, args.window, mesh.proxies)
        seconds, source = args.window, f"Prometheus {args.prometheus}"
    else:
        per_node, seconds, until = await _measure(args, kube, mesh)
        source = f"{len(per_node)} node proxies (their /metrics through the API server)"
    docs, more = await cluster.read_objects(kube, mesh.settings)
    warnings += more
    since = until - seconds
    header = (
        f"Written by simmesh snapshot from {kube.server}, mesh namespace {args.namespace}:\n"
        f"the objects as they were at {_time(until)}, the traffic of the {seconds:.0f} s before "
        f"({_time(since)} - {_time(until)}),\nmeasured from {source}. "
        f"Run it: simmesh sim {args.out}"
    )
    name = args.name or _safe(args.out.resolve().name)
    duration = args.duration if args.duration is not None else min(seconds, MAX_DURATION)
    snap = model.snapshot(
        per_node,
        seconds=seconds,
        docs=docs,
        settings=mesh.settings,
        name=name,
        duration=round(duration, 3),
        description=header.replace("\n", " "),
    )
    warnings += snap.warnings
    if not snap.scenario["traffic"]:
        raise cluster.SnapshotError(
            f"no traffic through the mesh in the {seconds:.0f} s window: nothing to simulate "
            "(nothing written)"
        )
    snap.observed["window"].update(
        {
            "from": _time(since),
            "until": _time(until),
            "fromEpoch": round(since, 3),
            "untilEpoch": round(until, 3),
            "source": source,
            "server": kube.server,
        }
    )
    snap.observed["warnings"] = warnings
    files = write.write(
        args.out,
        scenario=snap.scenario,
        settings_text=mesh.settings_text,
        docs=docs,
        observed=snap.observed,
        header=header,
    )
    print(table(snap.observed))
    print(f"\nwrote {args.out}: {', '.join(f.name for f in files)}")
    if args.propose_slos is not None:
        proposed = slos.propose(snap.observed, margin=args.slo_margin)
        write.write_slos(
            args.propose_slos,
            proposed,
            header=f"SLOs proposed by simmesh snapshot from the window {_time(since)} - "
            f"{_time(until)} (margin {args.slo_margin:g}): read them before they gate anything.",
        )
        print(f"wrote {args.propose_slos}: {len(proposed)} SLOs")
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    return 0


async def _measure(
    args: argparse.Namespace, kube: ApiKube, mesh: cluster.Mesh
) -> tuple[dict[str, Table], float, float]:
    """The window from the proxies themselves: per node, the second scrape less the first."""
    start = time.time()
    before = await cluster.scrape_all(kube, args.namespace, mesh.proxies)
    if not before:
        raise cluster.SnapshotError(
            f"no proxy in {args.namespace} answered on :{cluster.ADMIN_PORT}/metrics"
        )
    _say(
        args,
        f"measuring {args.window:g} s of traffic through {len(before)} proxies, until "
        f"{_time(start + args.window)} ...",
    )
    await asyncio.sleep(max(0.0, start + args.window - time.time()))
    after = await cluster.scrape_all(
        kube, args.namespace, await cluster.proxy_pods(kube, args.namespace)
    )
    until = time.time()
    old = {p.name: t for p, t in before.items()}
    per_node: dict[str, list[Table]] = {}
    for pod, table in after.items():
        per_node.setdefault(pod.node, []).append(difference(old.get(pod.name, {}), table))
    return {node: add(tables) for node, tables in per_node.items()}, until - start, until


def _time(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _safe(text: str) -> str:
    name = re.sub(r"[^A-Za-z0-9._-]", "-", text).lstrip(".-_")[:63]
    return name or "snapshot"


def table(observed: dict[str, Any]) -> str:
    """What was observed, per service."""
    seconds = observed["window"]["seconds"]
    lines = [
        f"{'service':<32} {'protocol':<8} {'requests':>9} {'rate/s':>8} {'success':>8} "
        f"{'p50 ms':>8} {'p99 ms':>8}"
    ]
    for name, entry in observed["services"].items():
        success = entry["successRate"]
        latency = entry["latency"]
        lines.append(
            f"{name:<32} {entry['protocol']:<8} {entry['requests']:>9,.0f} "
            f"{entry['requests'] / seconds:>8.2f} "
            f"{'-' if success is None else f'{success:.2%}':>8} "
            f"{_ms(latency.get('p50')):>8} {_ms(latency.get('p99')):>8}"
        )
    return "\n".join(lines)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:.1f}"
