"""Run the Locust mix headless, for a bounded time, through a local simmesh proxy.

    python -m loadtests.run_locust [--duration 20s] [--users 20] [--spawn-rate 10] [--tags read]

Starts two demo backends (127.0.0.2 and 127.0.0.3), compiles a one-service mesh for them with
``simmesh compile``, starts ``python -m mesh.proxy`` on 127.0.0.1, waits for /readyz, runs
``locust --headless`` with ``--csv out/loadtest/simmesh``, saves the proxy's /metrics to
out/loadtest/proxy-metrics.txt, stops everything it started and exits with Locust's code
(non-zero when a request failed).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BACKENDS = ("127.0.0.2", "127.0.0.3")


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def mesh_objects(ports: list[int]) -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = [
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {
                "name": "web",
                "namespace": "demo",
                "annotations": {"simmesh.io/retry-attempts": "1"},
            },
            "spec": {"ports": [{"name": "http", "port": 80, "targetPort": "http"}]},
        }
    ]
    for i, (host, port) in enumerate(zip(BACKENDS, ports, strict=True)):
        docs.append(
            {
                "apiVersion": "discovery.k8s.io/v1",
                "kind": "EndpointSlice",
                "metadata": {
                    "name": f"web-{i}",
                    "namespace": "demo",
                    "labels": {"kubernetes.io/service-name": "web"},
                },
                "ports": [{"name": "http", "port": port}],
                "endpoints": [{"addresses": [host], "conditions": {"ready": True}}],
            }
        )
    return docs


def wait_ready(url: str, process: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"{process.args!r} exited with {process.returncode}")
        with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=1) as resp:
            if resp.status == 200:
                return
        time.sleep(0.1)
    raise SystemExit(f"{url} never answered 200")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--duration", default="20s", help="Locust --run-time (bounded)")
    parser.add_argument("--users", type=int, default=20)
    parser.add_argument("--spawn-rate", type=float, default=10)
    parser.add_argument("--tags", nargs="*", help="only these Locust tags (read, write, health)")
    parser.add_argument("--out", default="out/loadtest", help="directory for the CSV files")
    args = parser.parse_args(argv)
    out = ROOT / args.out
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="simmesh-locust-"))
    started: list[subprocess.Popen[bytes]] = []

    def start(command: list[str]) -> subprocess.Popen[bytes]:
        process = subprocess.Popen(command, cwd=ROOT)
        started.append(process)
        return process

    try:
        ports = [free_port(host) for host in BACKENDS]
        backends = [
            start(
                [
                    sys.executable,
                    "-m",
                    "loadtests.demo_backend",
                    "--host",
                    host,
                    "--port",
                    str(port),
                    "--name",
                    f"demo-{i}",
                ]
            )
            for i, (host, port) in enumerate(zip(BACKENDS, ports, strict=True))
        ]
        http, admin = free_port(), free_port()
        manifests = work / "mesh"
        manifests.mkdir()
        (manifests / "objects.json").write_text(
            json.dumps({"kind": "List", "items": mesh_objects(ports)})
        )
        (manifests / "mesh.yaml").write_text(f"httpPorts: {{start: {http}, size: 1}}\n")
        config = subprocess.run(
            [sys.executable, "-m", "mesh.cli", "compile", str(manifests), "-o", "json"],
            cwd=ROOT,
            capture_output=True,
            check=True,
        ).stdout
        (work / "mesh.json").write_bytes(config)
        proxy = start(
            [
                sys.executable,
                "-m",
                "mesh.proxy",
                "--config-file",
                str(work / "mesh.json"),
                "--node",
                "loadtest",
                "--bind",
                "127.0.0.1",
                "--admin-port",
                str(admin),
                "--log-level",
                "warning",
            ]
        )
        for (host, port), backend in zip(zip(BACKENDS, ports, strict=True), backends, strict=True):
            wait_ready(f"http://{host}:{port}/healthz", backend)
        wait_ready(f"http://127.0.0.1:{admin}/readyz", proxy)
        command = [
            sys.executable,
            "-m",
            "locust",
            "-f",
            str(ROOT / "loadtests" / "locustfile.py"),
            "--headless",
            "--users",
            str(args.users),
            "--spawn-rate",
            str(args.spawn_rate),
            "--run-time",
            args.duration,
            "--host",
            f"http://127.0.0.1:{http}",
            "--csv",
            str(out / "simmesh"),
            "--only-summary",
            "--stop-timeout",
            "5",
        ]
        if args.tags:
            command += ["--tags", *args.tags]
        env = {**os.environ, "SIMMESH_HOST": "web.demo.mesh"}
        code = subprocess.run(command, cwd=ROOT, env=env, timeout=3600).returncode
        with urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=5) as resp:
            (out / "proxy-metrics.txt").write_bytes(resp.read())
        print(f"CSV in {out}/simmesh_*.csv; proxy metrics in {out}/proxy-metrics.txt")
        return code
    finally:
        for process in reversed(started):
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(10)
                except subprocess.TimeoutExpired:
                    process.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
