"""Controller benchmark against a real kube-apiserver: 1,000 and 10,000 Services with 10
endpoints each. Measures the controller's RSS, its full rebuild time, and the propagation
latency of a change (object written -> every node proxy has applied the new config) over 100
changes, with two real node proxies long-polling the controller.

    python -m loadtests.bench_controller --out BENCHMARKS.md

"Applied" is when a proxy, having compiled and swapped in the new config, asks the controller
for the next one with that version (the controller records it per node: /api/v1/nodes).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from loadtests.report import machine, write_section
from tests.k8s import apiserver as harness

ROOT = Path(__file__).resolve().parents[1]
NAMESPACES = 10


def get(url: str, timeout: float = 10.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return json.loads(response.read())


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def populate(cluster: harness.Cluster, services: int) -> float:
    start = time.perf_counter()
    for i in range(NAMESPACES):
        try:
            cluster.create("/api/v1/namespaces", {"metadata": {"name": f"b{i}"}})
        except harness.ApiError as exc:
            if exc.status != 409:
                raise

    def one(i: int) -> None:
        ns, name = f"b{i % NAMESPACES}", f"svc{i}"
        cluster.create(
            f"/api/v1/namespaces/{ns}/services",
            {
                "metadata": {"name": name},
                "spec": {
                    "ports": [{"name": "http", "port": 80, "targetPort": 8080}],
                    "selector": {"app": name},
                },
            },
        )
        cluster.create(
            f"/apis/discovery.k8s.io/v1/namespaces/{ns}/endpointslices",
            {
                "metadata": {"name": f"{name}-x", "labels": {"kubernetes.io/service-name": name}},
                "addressType": "IPv4",
                "ports": [{"name": "http", "port": 8080}],
                "endpoints": [
                    {
                        "addresses": [
                            f"10.{100 + (i * 10 + j) // 65536}.{(i * 10 + j) // 256 % 256}."
                            f"{(i * 10 + j) % 256}"
                        ],
                        "conditions": {"ready": True},
                        "nodeName": f"node{j % 2}",
                    }
                    for j in range(10)
                ],
            },
        )

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        for done, _ in enumerate(pool.map(one, range(services)), start=1):
            if done % 1000 == 0:
                print(f"  created {done:,}/{services:,} services", file=sys.stderr)
    return time.perf_counter() - start


def wait(check: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = check()
        except OSError:
            value = None
        if value:
            return value
        time.sleep(0.01)
    raise TimeoutError(what)


def measure(cluster: harness.Cluster, services: int, changes: int, workdir: Path) -> dict[str, Any]:
    print(f"populating {services:,} services ...", file=sys.stderr)
    populate_s = populate(cluster, services)
    port = harness.free_port()
    url = f"http://127.0.0.1:{port}"
    procs: list[subprocess.Popen[bytes]] = []
    logs = []
    try:
        log = (workdir / f"controller-{services}.log").open("wb")
        logs.append(log)
        started = time.perf_counter()
        controller = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "mesh.cli",
                "controller",
                "--kubeconfig",
                cluster.kubeconfig,
                "--listen",
                f"127.0.0.1:{port}",
                "--namespace",
                f"mesh-{services}",
                *[a for i in range(NAMESPACES) for a in ("--watch-namespace", f"b{i}")],
            ],
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        procs.append(controller)

        def full() -> dict[str, Any] | None:
            view = get(f"{url}/api/v1/topology")
            return view if view.get("ready") and len(view["services"]) >= services else None

        view = wait(full, 600, "first full config")
        first_config_s = time.perf_counter() - started
        full_build_s = view["buildSeconds"]  # the first build: nothing to reuse
        for n in range(2):
            log = (workdir / f"proxy{n}-{services}.log").open("wb")
            logs.append(log)
            procs.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "mesh.cli",
                        "proxy",
                        "--controller",
                        url,
                        "--node",
                        f"node{n}",
                        "--bind",
                        f"127.0.1.{n + 1}",
                        "--admin-port",
                        "0",
                    ],
                    cwd=ROOT,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )

        def synced(version: str | None = None) -> str | None:
            nodes = get(f"{url}/api/v1/nodes")
            current = nodes["version"]
            ok = len(nodes["nodes"]) == 2 and all(n["version"] == current for n in nodes["nodes"])
            return current if ok and current != version else None

        wait(synced, 300, "proxies synced")
        time.sleep(1)
        latencies = []
        for k in range(changes):
            before = get(f"{url}/api/v1/nodes")["version"]
            ns, name = f"b{k % NAMESPACES}", f"svc{k}"
            t0 = time.perf_counter()
            cluster.merge_patch(
                f"/api/v1/namespaces/{ns}/services/{name}",
                {"metadata": {"annotations": {"simmesh.io/retry-attempts": str(k % 3 + 1)}}},
            )
            wait(lambda b=before: synced(b), 120, f"change {k} propagated")
            latencies.append(time.perf_counter() - t0)
            if (k + 1) % 20 == 0:
                print(
                    f"  {services:,} services: {k + 1}/{changes} changes, "
                    f"last {latencies[-1] * 1000:.0f} ms",
                    file=sys.stderr,
                )
        rebuild_s = get(f"{url}/api/v1/topology")["buildSeconds"]  # after the last change
        with urllib.request.urlopen(f"{url}/metrics", timeout=10) as response:
            metrics = response.read().decode()
        answers = {
            kind: sum(
                float(line.rsplit(" ", 1)[1])
                for line in metrics.splitlines()
                if line.startswith(f'simmesh_controller_config_delta_polls_total{{answer="{kind}"')
            )
            for kind in ("delta", "full")
        }
        return {
            "services": services,
            "populate_s": populate_s,
            "first_config_s": first_config_s,
            "full_build_s": full_build_s,
            "rebuild_s": rebuild_s,
            "controller_rss_mb": rss_mb(controller.pid),
            "proxy_rss_mb": max(rss_mb(p.pid) for p in procs[1:]),
            "p50_ms": statistics.median(latencies) * 1000,
            "p99_ms": sorted(latencies)[max(0, int(len(latencies) * 0.99) - 1)] * 1000,
            "max_ms": max(latencies) * 1000,
            "delta_answers": answers["delta"],
            "full_answers_to_delta_polls": answers["full"],
        }
    except TimeoutError:
        for path in sorted(workdir.glob(f"*-{services}.log")):
            tail = path.read_text(errors="replace").splitlines()[-25:]
            print(f"--- {path.name}\n" + "\n".join(tail), file=sys.stderr)
        raise
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
        for log in logs:
            log.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--sizes", default="1000,10000")
    parser.add_argument("--changes", type=int, default=100)
    args = parser.parse_args(argv)
    rows = []
    binaries = harness.find_binaries(("etcd", "kube-apiserver"))
    for size in [int(s) for s in args.sizes.split(",")]:
        with tempfile.TemporaryDirectory() as tmp:
            cluster = harness.Cluster(Path(tmp) / "k8s", binaries=binaries)
            cluster.start()
            try:
                rows.append(measure(cluster, size, args.changes, Path(tmp)))
            finally:
                cluster.stop()
        print(json.dumps(rows[-1]), file=sys.stderr)
    lines = [
        "## Controller: rebuild, memory and propagation against a real kube-apiserver",
        "",
        "Command: `make bench` (runs `python -m loadtests.bench_controller --out BENCHMARKS.md`).",
        f"Machine: {machine()}; kube-apiserver and etcd from `make k8s-bins` on loopback.",
        "",
        "Each Service has an EndpointSlice with 10 ready endpoints. Two real node proxies",
        "long-poll the controller. Propagation: a Service annotation patched -> both proxies",
        f"have applied the new config; {args.changes} changes, one after another. Full build:",
        "the controller's first config (nothing to reuse); rebuild after a change: the last",
        "change's (the Services whose inputs did not change are reused, mesh.core.topology",
        "TopologyCache and mesh.core.config ConfigCache; proxies check and compile what changed;",
        "a proxy polling with a version the controller still holds gets a delta answer).",
        "",
        "| Services | first config after start (s) | full build (s) | rebuild after a change (s) "
        "| controller RSS (MB) | proxy RSS (MB) | propagation p50 (ms) | p99 (ms) | targets |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        verdicts = []
        if r["services"] == 1000:
            verdicts.append(f"p99 <= 1 s: {'met' if r['p99_ms'] <= 1000 else 'missed'}")
        if r["services"] == 10000:
            verdicts.append(f"p99 <= 1 s: {'met' if r['p99_ms'] <= 1000 else 'missed'}")
            verdicts.append(
                f"full build <= 0.5 s: {'met' if r['full_build_s'] <= 0.5 else 'missed'}"
            )
        verdicts.append(f"RSS <= 500 MB: {'met' if r['controller_rss_mb'] <= 500 else 'missed'}")
        lines.append(
            f"| {r['services']:,} | {r['first_config_s']:.1f} | {r['full_build_s']:.2f} | "
            f"{r['rebuild_s']:.2f} | {r['controller_rss_mb']:.0f} | {r['proxy_rss_mb']:.0f} | "
            f"{r['p50_ms']:.0f} | {r['p99_ms']:.0f} | {'; '.join(verdicts)} |"
        )
    text = "\n".join(lines)
    print(text)
    if args.out:
        write_section(args.out, "controller", text)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
