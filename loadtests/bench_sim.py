"""Simulator benchmark: simulated requests per wall second, against a bare SimPy loop with the
same arrival and service processes, in one run; and one simulated hour of a 20-service mesh at
1,000 requests/s.

    python -m loadtests.bench_sim --out BENCHMARKS.md

The bare loop has what any SimPy model of this traffic needs (Poisson arrivals per stream, one
process per request, a sampled service time) and none of the mesh: no routing decision, split,
access check, balancer, breaker, retry or recording. The ratio is the cost of running every
request through mesh.core.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Generator
from pathlib import Path
from typing import Any

import simpy
import yaml

from loadtests.builds import ROOT, child_result, interpreted_tree, run_child
from loadtests.report import machine, write_section
from mesh.build import compiled_modules
from sim.model import ProgressBar, Simulation
from sim.scenario import load_scenario

SERVICES = 20


def mesh_scenario(directory: Path, *, duration: float, rate_total: float) -> Path:
    """20 services, each with 3 replicas, a retry policy and a circuit breaker; one traffic
    stream per service; every 4th service split 90/10 between two versions."""
    workloads: dict[str, Any] = {}
    traffic = []
    docs = []
    for i in range(SERVICES):
        name = f"svc{i}"
        workloads[f"bench/{name}"] = {
            "replicas": 3,
            "latency": {"dist": "lognormal", "median": 0.010, "sigma": 0.5},
            "errorRate": 0.001,
        }
        docs.append(
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {
                    "name": name,
                    "namespace": "bench",
                    "annotations": {
                        "simmesh.io/retry-attempts": "1",
                        "simmesh.io/circuit-breaker": "ConsecutiveFailures() >= 5",
                    },
                },
                "spec": {"ports": [{"name": "http", "port": 80, "targetPort": 8080}]},
            }
        )
        if i % 4 == 0:
            for v in ("v1", "v2"):
                workloads[f"bench/{name}-{v}"] = workloads[f"bench/{name}"]
            docs.append(
                {
                    "apiVersion": "split.smi-spec.io/v1alpha4",
                    "kind": "TrafficSplit",
                    "metadata": {"name": f"{name}-split", "namespace": "bench"},
                    "spec": {
                        "service": name,
                        "backends": [
                            {"service": f"{name}-v1", "weight": 90},
                            {"service": f"{name}-v2", "weight": 10},
                        ],
                    },
                }
            )
        traffic.append(
            {
                "name": f"to-{name}",
                "from": "bench/client",
                "to": f"http://{name}.bench.mesh/api",
                "rate": rate_total / SERVICES,
            }
        )
    workloads["bench/client"] = {"replicas": 1}
    (directory / "manifests.yaml").write_text(yaml.safe_dump_all(docs))
    (directory / "scenario.yaml").write_text(
        yaml.safe_dump(
            {
                "name": "bench-20-services",
                "duration": duration,
                "seed": 1,
                "nodes": ["node-a", "node-b"],
                "workloads": workloads,
                "traffic": traffic,
            }
        )
    )
    return directory


def bare_loop(*, duration: float, rate_total: float, seed: int = 1) -> tuple[float, int]:
    """Same arrivals and service times as the scenario, no mesh. (wall seconds, requests)."""
    env = simpy.Environment()
    arrivals = random.Random(f"{seed}:arrivals")
    service = random.Random(f"{seed}:service")
    done = 0

    def request() -> Generator[simpy.Event, Any, None]:
        nonlocal done
        yield env.timeout(service.lognormvariate(-4.605, 0.5) + 0.0003)
        done += 1

    def stream(rate: float) -> Generator[simpy.Event, Any, None]:
        while True:
            yield env.timeout(arrivals.expovariate(rate))
            env.process(request())

    for _ in range(SERVICES):
        env.process(stream(rate_total / SERVICES))
    start = time.perf_counter()
    env.run(until=duration)
    return time.perf_counter() - start, done


def bare_callbacks(*, duration: float, rate_total: float, seed: int = 1) -> tuple[float, int]:
    """The same bare model with the mechanics simmesh uses: a request is not a process, its
    completion is a callback on its one timeout. (wall seconds, requests)."""
    env = simpy.Environment()
    arrivals = random.Random(f"{seed}:arrivals")
    service = random.Random(f"{seed}:service")
    done = 0

    def finished(_: simpy.Event) -> None:
        nonlocal done
        done += 1

    def stream(rate: float) -> Generator[simpy.Event, Any, None]:
        while True:
            yield env.timeout(arrivals.expovariate(rate))
            env.timeout(service.lognormvariate(-4.605, 0.5) + 0.0003).callbacks.append(finished)

    for _ in range(SERVICES):
        env.process(stream(rate_total / SERVICES))
    start = time.perf_counter()
    env.run(until=duration)
    return time.perf_counter() - start, done


def mesh_run(directory: Path, *, progress: bool = False) -> tuple[float, int]:
    scenario = load_scenario(directory)
    start = time.perf_counter()
    sim = Simulation(scenario)
    sim.run(ProgressBar("simulated hour", sys.stderr) if progress else None)
    return time.perf_counter() - start, sim.recorder.count


def _child(args: argparse.Namespace) -> int:
    rate = 1000.0
    with tempfile.TemporaryDirectory() as tmp:
        if args.child == "short":
            short = mesh_scenario(Path(tmp), duration=120, rate_total=rate)
            bare_wall, bare_n = bare_loop(duration=120, rate_total=rate)
            cb_wall, cb_n = bare_callbacks(duration=120, rate_total=rate)
            mesh_wall, mesh_n = mesh_run(short)
            measured = {
                "bare": bare_n / bare_wall,
                "callbacks": cb_n / cb_wall,
                "mesh": mesh_n / mesh_wall,
            }
        else:
            mesh_scenario(Path(tmp), duration=args.hour, rate_total=rate)
            wall, count = mesh_run(Path(tmp), progress=True)
            measured = {"wall": wall, "requests": count}
    print(child_result(measured))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--hour", type=float, default=3600.0, help="simulated seconds of the long run"
    )
    parser.add_argument(
        "--hour-builds",
        default="compiled",
        help="the builds that run the long one (compiled,interpreted)",
    )
    parser.add_argument("--child", choices=("short", "hour"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return _child(args)
    runs: dict[str, list[dict[str, Any]]] = {}
    hours: dict[str, dict[str, Any]] = {}
    with interpreted_tree() as pure:
        trees = (
            {"compiled": ROOT, "interpreted": pure} if compiled_modules() else {"interpreted": ROOT}
        )
        for r in range(args.repeat):
            for build, tree in trees.items():
                result = run_child(tree, "loadtests.bench_sim", ["--child", "short"])
                runs.setdefault(build, []).append(result)
                print(
                    f"run {r + 1}/{args.repeat}, {build}: bare {result['bare']:,.0f} req/s, bare "
                    f"with callbacks {result['callbacks']:,.0f} req/s, simmesh "
                    f"{result['mesh']:,.0f} req/s",
                    file=sys.stderr,
                )
        for build in args.hour_builds.split(","):
            if build in trees:
                print(f"one simulated hour, {build} ...", file=sys.stderr)
                hour = ["--child", "hour", "--hour", str(args.hour)]
                hours[build] = run_child(trees[build], "loadtests.bench_sim", hour)
    text = _report(args, runs, hours)
    print(text)
    if args.out:
        write_section(args.out, "sim", text)
    return 0


def _report(
    args: argparse.Namespace, runs: dict[str, list[dict[str, Any]]], hours: dict[str, Any]
) -> str:
    def median(build: str, key: str) -> float:
        return float(statistics.median(float(r[key]) for r in runs[build]))

    def ratio(build: str, key: str) -> float:
        return float(statistics.median(float(r["mesh"]) / r[key] for r in runs[build]))

    builds = list(runs)
    lines = [
        "## Simulator: simulated requests per wall second",
        "",
        "Command: `make bench` (runs `python -m loadtests.bench_sim --out BENCHMARKS.md`).",
        f"Machine: {machine()}. Medians of {args.repeat} runs per build; each run is a child "
        "process (bare loops, then simmesh), alternating between the compiled build "
        f"(`{runs[builds[0]][0]['build']}`) and an interpreted copy of the same sources.",
        "",
        "Scenario: 20 services (every 4th split 90/10 over two versions), 3 replicas each,",
        "lognormal latency (median 10 ms), 0.1% errors, 1 retry, a circuit breaker per",
        "endpoint, 1,000 requests/s in 20 Poisson streams, 120 simulated seconds. The bare",
        "loop has the same arrival and service processes in SimPy and nothing of the mesh.",
        "simmesh runs a request as event callbacks, not as a SimPy process, so the second bare",
        "loop does the same: the ratio against it is the cost of the mesh alone.",
        "",
        "| | " + " | ".join(builds) + " | target (compiled) |",
        "|---|" + "---:|" * len(builds) + "---|",
    ]

    def row(label: str, values: list[str], target: str) -> None:
        lines.append(f"| {label} | " + " | ".join(values) + f" | {target} |")

    def verdict(ok: bool) -> str:
        return "**met**" if ok else "**missed**"

    first = builds[0]
    row(
        "bare SimPy loop, a process per request (idiomatic SimPy)",
        [f"{median(b, 'bare'):,.0f}" for b in builds],
        "",
    )
    row(
        "bare SimPy loop, a callback per request (simmesh's mechanics)",
        [f"{median(b, 'callbacks'):,.0f}" for b in builds],
        "",
    )
    row(
        "simmesh sim (every request through mesh.core), requests/s",
        [f"{median(b, 'mesh'):,.0f}" for b in builds],
        f">= 100,000: {verdict(median(first, 'mesh') >= 100_000)}",
    )
    row(
        "ratio simmesh / bare, process per request",
        [f"{ratio(b, 'bare'):.2f}" for b in builds],
        f">= 0.50: {verdict(ratio(first, 'bare') >= 0.5)}",
    )
    row(
        "ratio simmesh / bare, same mechanics",
        [f"{ratio(b, 'callbacks'):.2f}" for b in builds],
        f">= 0.50: {verdict(ratio(first, 'callbacks') >= 0.5)}",
    )
    lines.append("")
    for build, hour in hours.items():
        lines.append(
            f"One simulated hour ({args.hour:,.0f} s) of the same 20-service mesh at 1,000 "
            f"requests/s, {build}: {hour['requests']:,} requests in **{hour['wall']:.1f} s** "
            f"wall (target < 60 s: {verdict(hour['wall'] < 60)})."
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
