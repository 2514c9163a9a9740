"""End to end on loopback: a real kube-apiserver, the controller, two node proxies and workload
processes. Services, EndpointSlices and Pods (status.podIP set) created in the API server point
at the workloads; requests through the proxies follow SMI changes in ACL mode, and keep being
served while the API server restarts.

The API server refuses loopback addresses in EndpointSlices, so the cluster's pod network is
10.244.0.0/16 and the proxies run with ``--address-map 10.244.0.0/16=127.A.0.0/16``: they dial
10.244.0.10 at 127.A.0.10 and see a client at 127.A.0.20 as pod 10.244.0.20, the local-cluster
harness's stand-in for a pod network. A is drawn per test session (and the proxies listen on
127.A+1.2.x), so two sessions on one machine do not take each other's addresses.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.k8s import apiserver as harness

pytestmark = pytest.mark.k8s
ROOT = Path(__file__).resolve().parents[2]
NS = "e2e"
MESH_NS = "mesh-e2e"
_POD_NET = random.SystemRandom().randrange(2, 254, 2)  # the pod network is 127._POD_NET.0.0/16
PROXIES = {"node-a": f"127.{_POD_NET + 1}.2.1", "node-b": f"127.{_POD_NET + 1}.2.2"}
CLIENT_IP = f"127.{_POD_NET}.0.20"  # pod 10.244.0.20 (ServiceAccount "client")


class Workload:
    """A tiny HTTP server answering with its name (a pod of the mesh)."""

    def __init__(self, name: str, ip: str) -> None:
        me = name

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = json.dumps({"name": me, "host": self.headers.get("Host")}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer((ip, 8080), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def call(proxy_ip: str, host: str, path: str = "/api") -> tuple[int, str]:
    """One request through a node proxy's first HTTP listener, from the client pod's IP."""
    import http.client

    conn = http.client.HTTPConnection(proxy_ip, 5000, timeout=5, source_address=(CLIENT_IP, 0))
    try:
        conn.request("GET", path, headers={"Host": host})
        response = conn.getresponse()
        body = response.read().decode()
        if response.status == 200:
            return 200, json.loads(body)["name"]
        return response.status, response.headers.get("X-Simmesh-Reason", "")
    finally:
        conn.close()


def wait_for(check: Callable[[], Any], timeout: float = 30.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except (OSError, urllib.error.URLError, harness.ApiError) as exc:
            last = exc
        else:
            if last:
                return last
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}; last: {last!r}")


def create(cluster: harness.Cluster, path: str, obj: dict[str, Any]) -> None:
    try:
        cluster.create(path, obj)
    except harness.ApiError as exc:
        if exc.status != 409:
            raise


def pod(cluster: harness.Cluster, name: str, ip: str, account: str, labels: dict[str, str]) -> None:
    create(cluster, f"/api/v1/namespaces/{NS}/serviceaccounts", {"metadata": {"name": account}})
    create(
        cluster,
        f"/api/v1/namespaces/{NS}/pods",
        {
            "metadata": {"name": name, "labels": labels},
            "spec": {
                "serviceAccountName": account,
                "nodeName": "node-a",
                "containers": [{"name": "app", "image": "example.invalid/app"}],
            },
        },
    )
    cluster.merge_patch(
        f"/api/v1/namespaces/{NS}/pods/{name}/status",
        {"status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}},
    )


def service(cluster: harness.Cluster, name: str, pods: list[tuple[str, str]]) -> None:
    create(
        cluster,
        f"/api/v1/namespaces/{NS}/services",
        {
            "metadata": {"name": name},
            "spec": {
                "ports": [{"name": "http", "port": 80, "targetPort": 8080}],
                "selector": {"svc": name},
            },
        },
    )
    create(
        cluster,
        f"/apis/discovery.k8s.io/v1/namespaces/{NS}/endpointslices",
        {
            "metadata": {"name": f"{name}-1", "labels": {"kubernetes.io/service-name": name}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            "endpoints": [
                {
                    "addresses": [ip],
                    "conditions": {"ready": True},
                    "nodeName": "node-a",
                    "targetRef": {"kind": "Pod", "name": pod_name, "namespace": NS},
                }
                for pod_name, ip in pods
            ],
        },
    )


@pytest.fixture
def mesh(apiserver: harness.Cluster, tmp_path: Path) -> Iterator[dict[str, Any]]:
    create(apiserver, "/api/v1/namespaces", {"metadata": {"name": NS}})
    workloads = [
        Workload("web-v1", f"127.{_POD_NET}.0.10"),
        Workload("web-v2", f"127.{_POD_NET}.0.11"),
    ]
    pod(apiserver, "web-v1", "10.244.0.10", "web", {"svc": "web"})
    pod(apiserver, "web-v2", "10.244.0.11", "web", {"svc": "web"})
    pod(apiserver, "client", "10.244.0.20", "client", {"app": "client"})
    service(apiserver, "web", [("web-v1", "10.244.0.10")])
    service(apiserver, "web-v2", [("web-v2", "10.244.0.11")])
    procs: list[subprocess.Popen[bytes]] = []
    port = harness.free_port()
    controller_url = f"http://127.0.0.1:{port}"
    log = (tmp_path / "mesh.log").open("ab")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    procs.append(
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "mesh.cli",
                "controller",
                "--kubeconfig",
                apiserver.kubeconfig,
                "--listen",
                f"127.0.0.1:{port}",
                "--namespace",
                MESH_NS,
                "--watch-namespace",
                NS,
                "--acl",
                "--debounce",
                "0.02",
            ],
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
    )
    for node, ip in PROXIES.items():
        procs.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "mesh.cli",
                    "proxy",
                    "--controller",
                    controller_url,
                    "--node",
                    node,
                    "--bind",
                    ip,
                    "--admin-port",
                    "0",
                    "--drain-timeout",
                    "2",
                    "--address-map",
                    f"10.244.0.0/16=127.{_POD_NET}.0.0/16",
                ],
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
            )
        )

    def synced() -> bool:
        with urllib.request.urlopen(f"{controller_url}/api/v1/nodes", timeout=2) as r:
            nodes = json.loads(r.read())
        return len(nodes["nodes"]) == 2 and all(n["current"] for n in nodes["nodes"])

    try:
        wait_for(synced, 60, "both proxies on the controller's config")
        yield {"controller": controller_url, "log": tmp_path / "mesh.log"}
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log.close()
        for workload in workloads:
            workload.stop()


def expect(status: int, name_or_reason: str, *, node: str = "node-a", timeout: float = 30) -> None:
    wait_for(
        lambda: call(PROXIES[node], "web.e2e.mesh") == (status, name_or_reason),
        timeout,
        f"{status} {name_or_reason} through {node}",
    )


def test_requests_follow_smi_changes(apiserver: harness.Cluster, mesh: dict[str, Any]) -> None:
    # ACL mode, no TrafficTarget: denied with a 403 that names the reason, on both nodes.
    for node in PROXIES:
        expect(403, "not-granted", node=node)

    create(
        apiserver,
        f"/apis/specs.smi-spec.io/v1alpha4/namespaces/{NS}/httproutegroups",
        {
            "apiVersion": "specs.smi-spec.io/v1alpha4",
            "kind": "HTTPRouteGroup",
            "metadata": {"name": "web-api"},
            "spec": {"matches": [{"name": "api", "pathRegex": "/api", "methods": ["GET"]}]},
        },
    )
    create(
        apiserver,
        f"/apis/access.smi-spec.io/v1alpha3/namespaces/{NS}/traffictargets",
        {
            "apiVersion": "access.smi-spec.io/v1alpha3",
            "kind": "TrafficTarget",
            "metadata": {"name": "client-to-web"},
            "spec": {
                "destination": {"kind": "ServiceAccount", "name": "web", "namespace": NS},
                "sources": [{"kind": "ServiceAccount", "name": "client", "namespace": NS}],
                "rules": [{"kind": "HTTPRouteGroup", "name": "web-api"}],
            },
        },
    )
    for node in PROXIES:
        expect(200, "web-v1", node=node)
    assert call(PROXIES["node-a"], "web.e2e.mesh", "/admin") == (403, "no-matching-route")

    # A TrafficSplit moves all of web's traffic to web-v2.
    create(
        apiserver,
        f"/apis/split.smi-spec.io/v1alpha4/namespaces/{NS}/trafficsplits",
        {
            "apiVersion": "split.smi-spec.io/v1alpha4",
            "kind": "TrafficSplit",
            "metadata": {"name": "web-rollout"},
            "spec": {
                "service": "web",
                "backends": [{"service": "web", "weight": 0}, {"service": "web-v2", "weight": 1}],
            },
        },
    )
    expect(200, "web-v2")
    assert {call(PROXIES["node-b"], "web.e2e.mesh")[1] for _ in range(5)} <= {"web-v2"} | {
        "web-v1"
    }  # node-b may still be one config behind for a moment
    expect(200, "web-v2", node="node-b")

    # Revoking the grant denies again.
    apiserver.delete(
        f"/apis/access.smi-spec.io/v1alpha3/namespaces/{NS}/traffictargets/client-to-web"
    )
    for node in PROXIES:
        expect(403, "not-granted", node=node)


def test_proxies_keep_serving_while_the_apiserver_restarts(
    apiserver: harness.Cluster, mesh: dict[str, Any]
) -> None:
    create(
        apiserver,
        f"/apis/specs.smi-spec.io/v1alpha4/namespaces/{NS}/tcproutes",
        {
            "apiVersion": "specs.smi-spec.io/v1alpha4",
            "kind": "TCPRoute",
            "metadata": {"name": "any-port"},
            "spec": {"matches": {"ports": []}},
        },
    )
    create(
        apiserver,
        f"/apis/access.smi-spec.io/v1alpha3/namespaces/{NS}/traffictargets",
        {
            "apiVersion": "access.smi-spec.io/v1alpha3",
            "kind": "TrafficTarget",
            "metadata": {"name": "client-to-web-tcp"},
            "spec": {
                "destination": {"kind": "ServiceAccount", "name": "web", "namespace": NS},
                "sources": [{"kind": "ServiceAccount", "name": "client", "namespace": NS}],
                "rules": [{"kind": "TCPRoute", "name": "any-port"}],
            },
        },
    )
    wait_for(lambda: call(PROXIES["node-a"], "web.e2e.mesh")[0] == 200, 30, "granted")
    failures: list[Any] = []
    stop = threading.Event()

    def load() -> None:
        while not stop.is_set():
            try:
                status, _ = call(PROXIES["node-a"], "web.e2e.mesh")
                if status != 200:
                    failures.append(status)
            except OSError as exc:
                failures.append(exc)
            time.sleep(0.02)

    worker = threading.Thread(target=load)
    worker.start()
    try:
        apiserver.restart()
        time.sleep(1.0)
    finally:
        stop.set()
        worker.join()
    assert failures == []
    # After the restart, changes flow again.
    apiserver.delete(
        f"/apis/access.smi-spec.io/v1alpha3/namespaces/{NS}/traffictargets/client-to-web-tcp"
    )
    expect(403, "not-granted", timeout=60)
