"""A sweep on Dask workers that run as pods on the kind cluster (deploy/dask/dask.yaml, the
sweep image of ``make image-sim``), driven from this machine through ``kubectl port-forward``,
as deploy/dask/README.md tells users to: 2 parameters x 3 values x 5 seeds. The numbers must
be the bytes a serial run here gives, and both worker pods must have run some of them.

Independent of the simmesh deployment (no mesh fixture); everything it creates is in the
namespace simmesh-dask, deleted at the end.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.cluster import kube as k
from tests.cluster.conftest import ROOT, _missing, kind_binary, record

NAMESPACE = "simmesh-dask"
SCENARIO = """
name: dask-sweep
duration: 20
seed: 11
nodes: [node-a, node-b]
workloads:
  demo/web: {replicas: 2, latency: 0.02, errorRate: 0.01}
traffic:
  - {name: t, from: demo/client, to: "http://web.demo.mesh/", rate: 40}
slos:
  - {name: ok, successRate: 0.97}
  - {name: fast, latency: {p99: 0.3}}
"""
AXES = ["traffic[0].rate=20,40,80", "workloads.demo/web.errorRate=0,0.02,0.05"]
SEEDS = 5


@pytest.fixture(scope="module")
def sim_image() -> str:
    name = os.environ.get("SIMMESH_SIM_IMAGE", "simmesh/simmesh-sim:dev")
    if subprocess.run(["docker", "image", "inspect", name], capture_output=True).returncode:
        _missing(f"no image {name} (make image-sim)")
    return name


def _manifests(image: str) -> list[dict[str, Any]]:
    docs = [
        d for d in yaml.safe_load_all((ROOT / "deploy" / "dask" / "dask.yaml").read_text()) if d
    ]
    for doc in docs:
        if doc["kind"] != "Deployment":
            continue
        for container in doc["spec"]["template"]["spec"]["containers"]:
            assert container["image"] == "simmesh/simmesh-sim:dev"  # the manifest names it
            container["image"] = image
            # the kind nodes share this machine's two cores with everything else: the workers
            # run on what is free rather than each reserving a core
            container["resources"]["requests"] = {"cpu": "100m", "memory": "256Mi"}
    return docs


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def scheduler(kube: k.Kube, sim_image: str) -> Iterator[str]:
    """The Dask cluster on kind, its scheduler forwarded to a local port: tcp://127.0.0.1:P."""
    start = time.monotonic()
    kind = kind_binary()
    cluster = os.environ.get("SIMMESH_CLUSTER", "simmesh")
    subprocess.run(
        [kind, "load", "docker-image", sim_image, "--name", cluster],
        capture_output=True,
        check=True,
        timeout=300,
    )
    docs = _manifests(sim_image)
    kube.apply(docs)
    forward: subprocess.Popen[str] | None = None
    try:
        for name in ("dask-scheduler", "dask-worker"):
            kube.run(
                "rollout",
                "status",
                "-n",
                NAMESPACE,
                f"deployment/{name}",
                "--timeout=180s",
                timeout=200,
            )
        port = _free_port()
        forward = subprocess.Popen(
            [
                str(kube.kubectl),
                "--kubeconfig",
                str(kube.kubeconfig),
                "-n",
                NAMESPACE,
                "port-forward",
                "svc/dask-scheduler",
                f"{port}:8786",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError as exc:
                if forward.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError("kubectl port-forward did not come up") from exc
                time.sleep(0.2)
        record("dask on kind: load, apply, ready, forward", time.monotonic() - start)
        yield f"tcp://127.0.0.1:{port}"
    finally:
        if forward is not None:
            forward.terminate()
            _, errors = forward.communicate(timeout=10)  # closes the pipe
            if errors.strip():
                print(f"kubectl port-forward said: {errors.strip()[-500:]}")
        kube.run(
            "delete",
            "namespace",
            NAMESPACE,
            "--ignore-not-found",
            "--wait=true",
            "--timeout=120s",
            timeout=150,
        )


def _sweep(directory: Path, out: Path, *extra: str) -> dict[str, Any]:
    args = ["sim", str(directory), "--sweep", AXES[0], "--sweep", AXES[1], "--seeds", str(SEEDS)]
    done = subprocess.run(
        [sys.executable, "-m", "mesh.cli", *args, *extra, "--out", str(out)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=900,
    )
    # exit 1: some points break an SLO (the 5% error points do), which is the sweep's verdict
    assert done.returncode == 1, f"exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    assert f"{3 * 3 * SEEDS}/{3 * 3 * SEEDS} runs" in done.stderr, done.stderr
    result: dict[str, Any] = json.loads((out / "sweep.json").read_text())
    return result


def _worker_transitions(address: str) -> dict[str, int]:
    """Task transitions each worker pod has made so far (through the scheduler: the workers'
    pod IPs are not reachable from here)."""
    import distributed

    with distributed.Client(address, timeout=10, set_as_default=False) as client:
        client.wait_for_workers(2, timeout=120)  # a worker pod is Ready before it registers
        counts = client.run(lambda dask_worker: dask_worker.state.transition_counter)
    return {str(w): int(n) for w, n in counts.items()}


# The image's Python is Debian's 3.11.2, this machine's another 3.11: Dask warns on any
# difference, and the run itself shows whether it matters.
@pytest.mark.filterwarnings("ignore::distributed.versions.VersionMismatchWarning")
def test_a_sweep_runs_on_dask_worker_pods(scheduler: str, tmp_path: Path) -> None:
    directory = tmp_path / "scenario"
    directory.mkdir()
    (directory / "scenario.yaml").write_text(SCENARIO)
    before = _worker_transitions(scheduler)
    assert len(before) == 2, f"expected the manifest's two workers, got {sorted(before)}"
    assert all(w.startswith("tcp://10.244.") for w in before), before  # pod IPs on kind

    start = time.monotonic()
    on_kind = _sweep(directory, tmp_path / "kind", "--scheduler", scheduler)
    record("dask on kind: 2 x 3 x 3 x 5 seeds = 45 runs", time.monotonic() - start)
    after = _worker_transitions(scheduler)
    assert all(after[w] > before[w] for w in before), (before, after)  # both pods ran some

    local = _sweep(directory, tmp_path / "local", "--workers", "1")
    assert on_kind == local  # the same numbers, wherever they ran
    points = on_kind["points"]
    assert len(points) == 9 and all(len(p["runs"]) == SEEDS for p in points)
    assert points[0]["values"] == {"traffic[0].rate": "20", "workloads.demo/web.errorRate": "0"}
    assert points[0]["successRate"]["mean"] == 1.0  # no errors at all
    assert any(p["slos"][0]["passes"] < SEEDS for p in points)  # 5% errors fail a 97% SLO
