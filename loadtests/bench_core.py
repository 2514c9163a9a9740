"""Core benchmark: config compile time for 100, 1,000 and 10,000 Services (10 endpoints each,
with splits and traffic targets) and routing decisions per second on one core.

    python -m loadtests.bench_core --out BENCHMARKS.md

Times are medians of several runs (the machines are noisy). Compile time is measured from
parsed-YAML dicts (what the controller holds) to the MeshConfig JSON bytes.
"""

from __future__ import annotations

import argparse
import gc
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from loadtests import core_loop
from loadtests.builds import ROOT, child_result, interpreted_tree, run_child
from loadtests.core_loop import Inbound
from loadtests.report import machine, write_section
from mesh.build import compiled_modules, is_compiled
from mesh.core.config import MeshConfig, build_config
from mesh.core.model import PortRange, Settings
from mesh.core.parse import parse_objects
from mesh.core.routing import Engine, Router
from mesh.core.topology import build_topology

NS = 10  # namespaces


def cluster_docs(services: int, endpoints: int = 10) -> list[dict[str, Any]]:
    """Services with EndpointSlices and Pods; every 10th service is a split root over the next
    two; every service has a TrafficTarget with an HTTPRouteGroup."""
    docs: list[dict[str, Any]] = []
    for i in range(services):
        ns, name = f"ns{i % NS}", f"svc{i}"
        docs.append(
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": name, "namespace": ns},
                "spec": {
                    "clusterIP": f"10.{96 + i // 65536}.{i // 256 % 256}.{i % 256}",
                    "ports": [{"name": "http", "port": 80, "targetPort": 8080}],
                },
            }
        )
        eps = []
        for j in range(endpoints):
            n = i * endpoints + j
            ip = f"10.{128 + n // 65536}.{n // 256 % 256}.{n % 256}"
            pod = f"{name}-{j}"
            docs.append(
                {
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "metadata": {"name": pod, "namespace": ns},
                    "spec": {"serviceAccountName": name, "nodeName": f"node{n % 20}"},
                    "status": {"podIP": ip},
                }
            )
            eps.append(
                {
                    "addresses": [ip],
                    "conditions": {"ready": True},
                    "nodeName": f"node{n % 20}",
                    "targetRef": {"kind": "Pod", "name": pod},
                }
            )
        docs.append(
            {
                "apiVersion": "discovery.k8s.io/v1",
                "kind": "EndpointSlice",
                "metadata": {
                    "name": f"{name}-x",
                    "namespace": ns,
                    "labels": {"kubernetes.io/service-name": name},
                },
                "addressType": "IPv4",
                "ports": [{"name": "http", "port": 8080}],
                "endpoints": eps,
            }
        )
        docs.append(
            {
                "apiVersion": "specs.smi-spec.io/v1alpha4",
                "kind": "HTTPRouteGroup",
                "metadata": {"name": f"{name}-routes", "namespace": ns},
                "spec": {
                    "matches": [
                        {"name": "api", "pathRegex": "/api", "methods": ["GET", "POST"]},
                        {"name": "health", "pathRegex": "/health"},
                    ]
                },
            }
        )
        src = f"svc{(i + 1) % services}"
        docs.append(
            {
                "apiVersion": "access.smi-spec.io/v1alpha3",
                "kind": "TrafficTarget",
                "metadata": {"name": f"{name}-tt", "namespace": ns},
                "spec": {
                    "destination": {"kind": "ServiceAccount", "name": name, "namespace": ns},
                    "sources": [
                        {
                            "kind": "ServiceAccount",
                            "name": src,
                            "namespace": f"ns{(i + 1) % services % NS}",
                        }
                    ],
                    "rules": [{"kind": "HTTPRouteGroup", "name": f"{name}-routes"}],
                },
            }
        )
        if i % 10 == 0 and i + 20 < services:
            docs.append(
                {
                    "apiVersion": "split.smi-spec.io/v1alpha4",
                    "kind": "TrafficSplit",
                    "metadata": {"name": f"{name}-split", "namespace": ns},
                    "spec": {
                        "service": name,
                        "backends": [
                            {"service": f"svc{i + 10}", "weight": 90},
                            {"service": f"svc{i + 20}", "weight": 10},
                        ],
                    },
                }
            )
    return docs


SETTINGS = Settings(acl=True, tcp_ports=PortRange(10000, 5000), udp_ports=PortRange(20000, 5000))


def compile_once(
    docs: list[dict[str, Any]], *, pause_gc: bool
) -> tuple[float, float, MeshConfig, int]:
    """(parse + rebuild seconds, rebuild-only seconds, config, JSON bytes)."""
    gc.collect()
    if pause_gc:
        gc.disable()
    try:
        start = time.perf_counter()
        state = parse_objects(docs)
        parsed = time.perf_counter()
        config = build_config(build_topology(state, SETTINGS), SETTINGS)
        size = len(config.to_json(indent=None))
        end = time.perf_counter()
    finally:
        gc.enable()
    return end - start, end - parsed, config, size


LISTENER = 5000


def workload(
    config: MeshConfig, hosts: list[str] | None = None
) -> tuple[Engine, list[Inbound], random.Random]:
    """The decision benchmark's engine, its 2,000 requests and its random source: shared with
    loadtests/profile_core.py, which counts the same work in instructions. The requests go to
    the config's first ``.mesh`` hosts in its order (``hosts``: that order, for a config read
    back from JSON, whose tables are in another order)."""
    router = Router(config)
    engine = Engine(router)
    rng = random.Random(1)
    if hosts is None:
        hosts = mesh_hosts(config)
    requests = []
    for k in range(2000):
        host = hosts[k % len(hosts)]
        route = router.route_http(LISTENER, host)
        assert route is not None
        name = route.service.split("/")[1]
        index = int(name[3:])
        source = f"ns{(index + 1) % NS}/svc{index + 1}"
        path = "/api/items" if k % 4 else "/other"
        # The header lines as the proxy's parser hands them over (built once, not per decision)
        items = [("Host", host), ("User-Agent", "bench"), ("Accept", "*/*")]
        requests.append(Inbound("GET" if k % 3 else "POST", path, items, host, source))
    return engine, requests, rng


def mesh_hosts(config: MeshConfig) -> list[str]:
    """The ``.mesh`` names of the decision benchmark's listener, in the config's order."""
    return [h for h in config.hosts[str(LISTENER)] if h.endswith(".mesh")]


def decide_round(engine: Engine, requests: list[Inbound], rng: random.Random) -> int:
    """Every request read in its canonical form (as the proxy does) and decided, by
    loadtests/core_loop.py: compiled with the core when the core is (``make compile``)."""
    return core_loop.decide_round(engine, requests, LISTENER, rng)


def _check_driver() -> None:
    """The loop must be of the build it drives (an interpreted loop driving a compiled core
    measures the interpreter's calls into it)."""
    core = is_compiled("mesh.core.routing")
    if core != is_compiled("loadtests.core_loop"):
        raise SystemExit(
            "loadtests/core_loop.py is "
            + ("not compiled while the core is: run make compile" if core else "compiled")
        )


def decisions_per_second(config: MeshConfig, seconds: float) -> tuple[float, float]:
    _check_driver()
    engine, requests, rng = workload(config)
    done = allowed = 0
    start = time.perf_counter()
    deadline = start + seconds
    while time.perf_counter() < deadline:
        allowed += decide_round(engine, requests, rng)
        done += len(requests)
    elapsed = time.perf_counter() - start
    return done / elapsed, allowed / done


def compile_table(sizes: list[int], repeat: int) -> list[dict[str, Any]]:
    """Per size: medians of parse+build (GC on, GC paused) and build only (GC paused)."""
    rows = []
    for size in sizes:
        docs = cluster_docs(size)
        runs = repeat if size <= 1000 else max(3, repeat // 2)
        results: dict[bool, list[tuple[float, float]]] = {False: [], True: []}
        for r in range(runs):
            for pause in (False, True):
                total, rebuild, _, nbytes = compile_once(docs, pause_gc=pause)
                results[pause].append((total, rebuild))
                print(
                    f"compile {size:>6} services: run {r + 1}/{runs} gc "
                    f"{'paused' if pause else 'on'}: {total:.3f} s",
                    file=sys.stderr,
                )
        rows.append(
            {
                "size": size,
                "gcOn": statistics.median(t for t, _ in results[False]),
                "gcPaused": statistics.median(t for t, _ in results[True]),
                "buildOnly": statistics.median(b for _, b in results[True]),
                "bytes": nbytes,
            }
        )
    return rows


def _child(args: argparse.Namespace) -> int:
    sizes = [int(s) for s in args.sizes.split(",")]
    if args.child == "compile":
        print(child_result({"rows": compile_table(sizes, args.repeat)}))
    else:
        _, _, config, _ = compile_once(cluster_docs(max(sizes)), pause_gc=True)
        rate, allowed = decisions_per_second(config, args.seconds)
        print(child_result({"rate": rate, "allowed": allowed}))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--sizes", default="100,1000,10000")
    parser.add_argument("--rounds", type=int, default=3, help="decision runs per build")
    parser.add_argument("--seconds", type=float, default=2.0, help="of each decision run")
    parser.add_argument("--child", choices=("compile", "decisions"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return _child(args)
    child = ["--sizes", args.sizes, "--repeat", str(args.repeat), "--seconds", str(args.seconds)]
    with interpreted_tree() as pure:
        trees = (
            {"compiled": ROOT, "interpreted": pure} if compiled_modules() else {"interpreted": ROOT}
        )
        compiles = {}
        for build, tree in trees.items():
            print(f"compile times, {build} ...", file=sys.stderr)
            compiles[build] = run_child(
                tree, "loadtests.bench_core", ["--child", "compile", *child]
            )
        rates: dict[str, list[float]] = {build: [] for build in trees}
        allowed = 0.0
        for r in range(args.rounds):
            for build, tree in trees.items():
                result = run_child(tree, "loadtests.bench_core", ["--child", "decisions", *child])
                rates[build].append(result["rate"])
                allowed = result["allowed"]
                print(f"decisions, {build}, run {r + 1}: {result['rate']:,.0f}/s", file=sys.stderr)
    text = _report(args, compiles, rates, allowed)
    print(text)
    if args.out:
        write_section(args.out, "core", text)
    return 0


def _report(
    args: argparse.Namespace,
    compiles: dict[str, dict[str, Any]],
    rates: dict[str, list[float]],
    allowed: float,
) -> str:
    builds = list(compiles)
    lines = [
        "## Core: config compile and routing decisions",
        "",
        "Command: `make bench` (runs `python -m loadtests.bench_core --out BENCHMARKS.md`).",
        f"Machine: {machine()}. Medians of {args.repeat} runs (3 at 10,000). Each build runs in "
        "a child process of the same run: the compiled one (`make compile`: mypyc) as "
        f"`{compiles[builds[0]]['build']}`, and an interpreted copy of the same sources.",
        "",
        "Compile = parse the objects (dicts) + topology + MeshConfig + JSON bytes, ACL mode; each",
        "Service has 10 endpoints (Pods + EndpointSlice), an HTTPRouteGroup and a TrafficTarget;",
        "every 10th Service is split 90/10.",
        "",
        "Parse+build starts from the raw dicts; build alone starts from parsed objects (the",
        "controller parses each object once, when its watch event arrives, and rebuilds from",
        "them). 'GC paused' is how the controller runs a rebuild (collector disabled for its",
        "duration); 'GC on' is Python's default.",
        "",
        "| Services | objects | build | parse+build, GC on (s) | parse+build, GC paused (s) "
        "| build only, GC paused (s) | config JSON (MB) | target < 2 s at 10,000 |",
        "|---:|---:|---|---:|---:|---:|---:|---|",
    ]
    for index in range(len(compiles[builds[0]]["rows"])):
        for build in builds:
            r = compiles[build]["rows"][index]
            size = r["size"]
            verdict = ""
            if size == 10000:
                verdict = "**met**" if r["gcPaused"] < 2 else "**missed**"
            lines.append(
                f"| {size:,} | {size * 14 + size // 10:,} | {build} | {r['gcOn']:.3f} | "
                f"{r['gcPaused']:.3f} | {r['buildOnly']:.3f} | {r['bytes'] / 1e6:.1f} | {verdict} |"
            )
    median = {build: statistics.median(values) for build, values in rates.items()}
    lines += [
        "",
        "Routing decisions (parse_request + Engine.decide_http: Host lookup, split, ACL with "
        f"route matches, endpoint choice) on the {max(int(x) for x in args.sizes.split(',')):,}"
        "-Service config, one core, medians of "
        f"{args.rounds} runs of {args.seconds:g} s per build, alternating "
        f"({allowed:.0%} allowed, the rest denied 403). The loop over the 2,000 requests is "
        "loadtests/core_loop.py, of the same build as the core (compiled with it by `make "
        "compile`, as the proxy's per-request path is); each request's header lines are built "
        "once, as the proxy's HTTP parser hands them over. Until 2026-12-07 the loop was "
        "interpreted Python calling the compiled core and built the header list per decision: "
        "3,240 of the 22,391 instructions per decision were that loop's (loadtests/"
        "profile_core.py).",
        "",
        "| build | decisions/s | runs | target |",
        "|---|---:|---|---|",
    ]
    for build in builds:
        target = ">= 200,000"
        ok = median[build] >= 200_000
        if build == "compiled":
            target = ">= 600,000 and >= 2.5x interpreted"
            ratio = median[build] / median.get("interpreted", median[build])
            ok = median[build] >= 600_000 and ratio >= 2.5
            target += f" ({ratio:.2f}x)"
        runs = ", ".join(f"{r:,.0f}" for r in rates[build])
        verdict = "**met**" if ok else "**missed**"
        lines.append(f"| {build} | **{median[build]:,.0f}** | {runs} | {target}: {verdict} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
