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

from loadtests.report import machine, write_section
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--hour", type=float, default=3600.0, help="simulated seconds of the long run"
    )
    args = parser.parse_args(argv)
    rate = 1000.0
    with tempfile.TemporaryDirectory() as tmp:
        short = mesh_scenario(Path(tmp), duration=120, rate_total=rate)
        triples = []
        for r in range(args.repeat):
            bare_wall, bare_n = bare_loop(duration=120, rate_total=rate)
            cb_wall, cb_n = bare_callbacks(duration=120, rate_total=rate)
            mesh_wall, mesh_n = mesh_run(short)
            triples.append((bare_n / bare_wall, cb_n / cb_wall, mesh_n / mesh_wall))
            print(
                f"run {r + 1}/{args.repeat}: bare {bare_n / bare_wall:,.0f} req/s, bare with "
                f"callbacks {cb_n / cb_wall:,.0f} req/s, simmesh {mesh_n / mesh_wall:,.0f} req/s",
                file=sys.stderr,
            )
        bare_rate = statistics.median(t[0] for t in triples)
        cb_rate = statistics.median(t[1] for t in triples)
        mesh_rate = statistics.median(t[2] for t in triples)
        ratio = statistics.median(t[2] / t[0] for t in triples)
        cb_ratio = statistics.median(t[2] / t[1] for t in triples)
        long_dir = Path(tmp) / "hour"
        long_dir.mkdir()
        mesh_scenario(long_dir, duration=args.hour, rate_total=rate)
        hour_wall, hour_n = mesh_run(long_dir, progress=True)
    met_rate = "**met**" if mesh_rate >= 100_000 else "**missed**"
    met_ratio = "**met**" if ratio >= 0.5 else "**missed**"
    met_cb = "**met**" if cb_ratio >= 0.5 else "**missed**"
    met_hour = "**met**" if hour_wall < 60 else "**missed**"
    text = "\n".join(
        [
            "## Simulator: simulated requests per wall second",
            "",
            "Command: `make bench` (runs `python -m loadtests.bench_sim --out BENCHMARKS.md`).",
            f"Machine: {machine()}. Medians of {args.repeat} paired runs (bare, then simmesh).",
            "",
            "Scenario: 20 services (every 4th split 90/10 over two versions), 3 replicas each,",
            "lognormal latency (median 10 ms), 0.1% errors, 1 retry, a circuit breaker per",
            "endpoint, 1,000 requests/s in 20 Poisson streams, 120 simulated seconds. The bare",
            "loop has the same arrival and service processes in SimPy and nothing of the mesh.",
            "simmesh runs a request as event callbacks, not as a SimPy process, so the second bare",
            "loop does the same: the ratio against it is the cost of the mesh alone.",
            "",
            "| | requests / wall s | target |",
            "|---|---:|---|",
            f"| bare SimPy loop, a process per request (idiomatic SimPy) | {bare_rate:,.0f} | |",
            f"| bare SimPy loop, a callback per request (simmesh's mechanics) | {cb_rate:,.0f} | |",
            f"| simmesh sim (every request through mesh.core) | {mesh_rate:,.0f} "
            f"| >= 100,000: {met_rate} |",
            f"| ratio simmesh / bare, process per request | {ratio:.2f} | >= 0.50: {met_ratio} |",
            f"| ratio simmesh / bare, same mechanics | {cb_ratio:.2f} | >= 0.50: {met_cb} |",
            "",
            f"One simulated hour ({args.hour:,.0f} s) of the same 20-service mesh at 1,000 "
            f"requests/s: {hour_n:,} requests in **{hour_wall:.1f} s** wall "
            f"(target < 60 s: {met_hour}).",
        ]
    )
    print(text)
    if args.out:
        write_section(args.out, "sim", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
