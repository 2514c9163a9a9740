"""Delta answers end to end: a real controller on a real kube-apiserver, a real node proxy
(``simmesh proxy``) and the proxy's config client in this process follow a sequence of
changes by deltas (docs/proxy.md, "Delta answers"), and end with exactly the controller's
full config: the proxy at its version, having verified each delta's result by its digest,
and the client's config byte for byte the full answer."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from mesh.core import schema
from mesh.proxy.sources import ControllerSource
from tests.k8s import apiserver as harness
from tests.k8s.test_controller_k8s import ControllerProcess, http_json, namespace, wait_for

pytestmark = pytest.mark.k8s
ROOT = Path(__file__).resolve().parents[2]
NS = "delta-k8s"
PROXY_IP = "127.0.77.1"


def add_service(cluster: harness.Cluster, i: int, endpoints: int = 2) -> None:
    name = f"svc{i}"
    cluster.create(
        f"/api/v1/namespaces/{NS}/services",
        {
            "metadata": {"name": name},
            "spec": {
                "ports": [{"name": "http", "port": 80, "targetPort": 8080}],
                "selector": {"app": name},
            },
        },
    )
    cluster.create(
        f"/apis/discovery.k8s.io/v1/namespaces/{NS}/endpointslices",
        {
            "metadata": {"name": f"{name}-x", "labels": {"kubernetes.io/service-name": name}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080}],
            "endpoints": [
                {"addresses": [f"10.30.{i}.{j + 1}"], "conditions": {"ready": True}}
                for j in range(endpoints)
            ],
        },
    )


class Follower:
    """The proxy's config client (ControllerSource) on a loop of its own, in a thread."""

    def __init__(self, url: str) -> None:
        self.configs: list[schema.MeshConfig] = []
        self.deltas: list[str] = []
        self.loop = asyncio.new_event_loop()
        self.source = ControllerSource(url, "", self._apply, on_delta=self.deltas.append)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.task: asyncio.Task[None] | None = None

    async def _apply(self, config: schema.MeshConfig) -> bool:
        self.configs.append(config)
        return True

    def _run(self) -> None:
        self.task = self.loop.create_task(self.source.run())
        try:
            self.loop.run_until_complete(self.task)
        except asyncio.CancelledError:
            pass
        finally:
            self.loop.close()

    def start(self) -> Follower:
        self.thread.start()
        return self

    def stop(self) -> None:
        if self.task is not None:
            self.loop.call_soon_threadsafe(self.task.cancel)
        self.thread.join(10)


def metric(text: str, name: str) -> float:
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(name) and not line.startswith("#")
    )


def test_proxies_follow_changes_by_deltas(apiserver: harness.Cluster, tmp_path: Path) -> None:
    namespace(apiserver, NS)
    for i in range(30):
        add_service(apiserver, i)
    ctl = ControllerProcess(apiserver, "mesh-delta", [NS], tmp_path / "controller.log").start()
    admin = harness.free_port(PROXY_IP)
    log = (tmp_path / "proxy.log").open("wb")
    proxy = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mesh.cli",
            "proxy",
            "--controller",
            ctl.url,
            "--node",
            "node-a",
            "--bind",
            PROXY_IP,
            "--admin-port",
            str(admin),
        ],
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    follower = Follower(ctl.url).start()

    def synced() -> str | None:
        nodes = http_json(f"{ctl.url}/api/v1/nodes")
        current = nodes["version"]
        proxies = [n for n in nodes["nodes"] if n["node"] == "node-a"]
        held = follower.configs[-1].version if follower.configs else None
        ok = proxies and proxies[0]["version"] == current and held == current
        return current if ok else None

    try:
        wait_for(synced, 60, "the proxy and the client hold the first config")
        changes: list[tuple[str, Any]] = [
            (
                "an annotation",
                lambda: apiserver.merge_patch(
                    f"/api/v1/namespaces/{NS}/services/svc1",
                    {"metadata": {"annotations": {"simmesh.io/retry-attempts": "2"}}},
                ),
            ),
            (
                "endpoints",
                lambda: apiserver.merge_patch(
                    f"/apis/discovery.k8s.io/v1/namespaces/{NS}/endpointslices/svc2-x",
                    {"endpoints": [{"addresses": ["10.30.2.7"], "conditions": {"ready": True}}]},
                ),
            ),
            (
                "a Service removed",
                lambda: apiserver.delete(f"/api/v1/namespaces/{NS}/services/svc3"),
            ),
            ("a Service added", lambda: add_service(apiserver, 40, endpoints=3)),
            (
                "traffic type",
                lambda: apiserver.merge_patch(
                    f"/api/v1/namespaces/{NS}/services/svc4",
                    {"metadata": {"annotations": {"simmesh.io/traffic-type": "tcp"}}},
                ),
            ),
        ]
        version = synced()

        def newer(than: str | None) -> str | None:
            now = synced()
            return now if now is not None and now != than else None

        for what, change in changes:
            change()
            version = wait_for(lambda v=version: newer(v), 30, f"{what} followed")
        with urllib.request.urlopen(f"{ctl.url}/api/v1/config", timeout=10) as answer:
            full = answer.read()
        assert schema.encode(follower.configs[-1]) == full
        assert follower.configs[-1].version == version
        assert follower.deltas == ["applied"] * len(changes)
        with urllib.request.urlopen(f"http://{PROXY_IP}:{admin}/metrics", timeout=10) as answer:
            text = answer.read().decode()
        assert metric(text, 'simmesh_proxy_config_deltas_total{result="applied"}') == len(changes)
        assert metric(text, 'simmesh_proxy_config_deltas_total{result="fallback"}') == 0
        with urllib.request.urlopen(f"{ctl.url}/metrics", timeout=10) as answer:
            text = answer.read().decode()
        assert metric(
            text, 'simmesh_controller_config_delta_polls_total{answer="delta"}'
        ) >= 2 * len(changes)
    finally:
        follower.stop()
        proxy.terminate()
        try:
            proxy.wait(10)
        except subprocess.TimeoutExpired:
            proxy.kill()
        log.close()
        ctl.stop()
