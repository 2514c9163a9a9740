"""The controller against a real kube-apiserver: objects in -> config out, shadow Services,
Events for malformed objects, stateless restarts, and recovery from an API server restart."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.k8s import apiserver as harness

pytestmark = pytest.mark.k8s
ROOT = Path(__file__).resolve().parents[2]


def http_json(url: str, timeout: float = 5.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return json.loads(response.read())


def wait_for(check: Callable[[], Any], timeout: float = 20.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except (urllib.error.URLError, OSError, harness.ApiError, KeyError) as exc:
            last = exc
        else:
            if last:
                return last
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}; last: {last!r}")


class ControllerProcess:
    def __init__(
        self,
        cluster: harness.Cluster,
        mesh_ns: str,
        watch: list[str],
        log: Path,
        extra: tuple[str, ...] = (),
    ) -> None:
        self.cluster = cluster
        self.extra = extra
        self.mesh_ns = mesh_ns
        self.watch = watch
        self.log = log
        self.port = harness.free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> ControllerProcess:
        argv = [
            sys.executable,
            "-m",
            "mesh.cli",
            "controller",
            "--kubeconfig",
            self.cluster.kubeconfig,
            "--listen",
            f"127.0.0.1:{self.port}",
            "--namespace",
            self.mesh_ns,
            "--debounce",
            "0.02",
        ]
        for ns in self.watch:
            argv += ["--watch-namespace", ns]
        argv += self.extra
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                argv, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, env={**os.environ}
            )
        wait_for(self._ready, what="controller ready")
        return self

    def _ready(self) -> bool:
        assert self.proc is not None and self.proc.poll() is None, self.log.read_text()[-3000:]
        try:
            with urllib.request.urlopen(f"{self.url}/readyz", timeout=2) as r:
                return r.status == 200
        except urllib.error.HTTPError:
            return False

    def config(self) -> dict[str, Any]:
        return http_json(f"{self.url}/api/v1/config")  # type: ignore[no-any-return]

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def run_controller(
    apiserver: harness.Cluster, tmp_path: Path
) -> Iterator[Callable[..., ControllerProcess]]:
    started: list[ControllerProcess] = []

    def start(mesh_ns: str, watch: list[str], extra: tuple[str, ...] = ()) -> ControllerProcess:
        log = tmp_path / "controller.log"
        proc = ControllerProcess(apiserver, mesh_ns, watch, log, extra).start()
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.stop()


def namespace(cluster: harness.Cluster, name: str) -> None:
    try:
        cluster.create("/api/v1/namespaces", {"metadata": {"name": name}})
    except harness.ApiError as exc:
        if exc.status != 409:
            raise


def service(
    cluster: harness.Cluster,
    ns: str,
    name: str,
    port: int = 80,
    *,
    annotations: dict[str, str] | None = None,
) -> dict[str, Any]:
    return cluster.create(
        f"/api/v1/namespaces/{ns}/services",
        {  # type: ignore[no-any-return]
            "metadata": {"name": name, "annotations": annotations or {}},
            "spec": {
                "ports": [{"name": "p", "port": port, "targetPort": 8080}],
                "selector": {"app": name},
            },
        },
    )


def workload(cluster: harness.Cluster, ns: str, name: str, ip: str, account: str) -> None:
    if not _exists(cluster, f"/api/v1/namespaces/{ns}/serviceaccounts/{account}"):
        cluster.create(f"/api/v1/namespaces/{ns}/serviceaccounts", {"metadata": {"name": account}})
    pod = f"{name}-0"
    cluster.create(
        f"/api/v1/namespaces/{ns}/pods",
        {
            "metadata": {"name": pod, "labels": {"app": name}},
            "spec": {
                "serviceAccountName": account,
                "nodeName": "node-a",
                "containers": [{"name": "c", "image": "example.invalid/app"}],
            },
        },
    )
    cluster.merge_patch(
        f"/api/v1/namespaces/{ns}/pods/{pod}/status",
        {"status": {"podIP": ip, "podIPs": [{"ip": ip}], "phase": "Running"}},
    )
    cluster.create(
        f"/apis/discovery.k8s.io/v1/namespaces/{ns}/endpointslices",
        {
            "metadata": {"name": f"{name}-x", "labels": {"kubernetes.io/service-name": name}},
            "addressType": "IPv4",
            "ports": [{"name": "p", "port": 8080, "protocol": "TCP"}],
            "endpoints": [
                {
                    "addresses": [ip],
                    "conditions": {"ready": True},
                    "nodeName": "node-a",
                    "targetRef": {"kind": "Pod", "name": pod, "namespace": ns},
                }
            ],
        },
    )


def shadows_of(cluster: harness.Cluster, mesh_ns: str, count: int) -> list[Any] | None:
    """The shadow Services in ``mesh_ns`` once there are exactly ``count`` of them."""
    path = f"/api/v1/namespaces/{mesh_ns}/services?labelSelector=simmesh.io/shadow%3Dtrue"
    items: list[Any] = cluster.get(path)["items"]
    return items if len(items) == count else None


def _exists(cluster: harness.Cluster, path: str) -> bool:
    try:
        cluster.get(path)
    except harness.ApiError as exc:
        if exc.status == 404:
            return False
        raise
    return True


def test_objects_in_config_out(apiserver: harness.Cluster, run_controller: Any) -> None:
    namespace(apiserver, "ctl-a")
    ctl = run_controller("mesh-a", ["ctl-a"])
    web = service(apiserver, "ctl-a", "web")
    workload(apiserver, "ctl-a", "web", "10.250.0.10", "web")
    service(apiserver, "ctl-a", "db", 5432, annotations={"simmesh.io/traffic-type": "tcp"})
    apiserver.create(
        "/apis/split.smi-spec.io/v1alpha4/namespaces/ctl-a/trafficsplits",
        {
            "apiVersion": "split.smi-spec.io/v1alpha4",
            "kind": "TrafficSplit",
            "metadata": {"name": "web-split"},
            "spec": {"service": "web", "backends": [{"service": "web", "weight": 1}]},
        },
    )

    def ready() -> dict[str, Any] | None:
        config = ctl.config()
        route = config["routes"].get("ctl-a/web:80")
        cluster = config["clusters"].get("ctl-a/web:80")
        if (
            route
            and route["split"]
            and cluster
            and cluster["endpoints"]
            and "ctl-a/db:5432" in config["routes"]
        ):
            return config
        return None

    config = wait_for(ready, what="web, its split and db in the config")
    hosts = config["hosts"]["5000"]
    assert hosts["web.ctl-a.mesh"] == "ctl-a/web:80"
    assert hosts[web["spec"]["clusterIP"]] == "ctl-a/web:80"
    assert config["clusters"]["ctl-a/web:80"]["endpoints"] == [
        {"ip": "10.250.0.10", "port": 8080, "node": "node-a", "identity": "ctl-a/web"}
    ]
    db_listener = config["routes"]["ctl-a/db:5432"]["listener"]
    assert 10000 <= db_listener < 11000

    shadows = wait_for(lambda: shadows_of(apiserver, "mesh-a", 2), what="two shadow Services")
    by_name = {s["metadata"]["name"]: s for s in shadows}
    web_shadow = by_name["web-6d61657368-ctl-a"]["spec"]
    assert web_shadow["internalTrafficPolicy"] == "Local"
    assert web_shadow["ports"][0]["targetPort"] == 5000
    assert by_name["db-6d61657368-ctl-a"]["spec"]["ports"][0]["targetPort"] == db_listener

    # Deleting the Service removes its route and its shadow.
    apiserver.delete("/api/v1/namespaces/ctl-a/services/db")
    wait_for(lambda: "ctl-a/db:5432" not in ctl.config()["routes"], what="db gone")
    wait_for(
        lambda: not _exists(apiserver, "/api/v1/namespaces/mesh-a/services/db-6d61657368-ctl-a"),
        what="db shadow deleted",
    )

    topology = http_json(f"{ctl.url}/api/v1/topology")
    assert "ctl-a/web" in topology["services"]
    assert topology["splits"]["ctl-a/web"]["name"] == "ctl-a/web-split"


def test_malformed_objects_become_events_and_leave_others_intact(
    apiserver: harness.Cluster, run_controller: Any
) -> None:
    namespace(apiserver, "ctl-b")
    ctl = run_controller("mesh-b", ["ctl-b"])
    service(apiserver, "ctl-b", "api")
    apiserver.create(
        "/apis/specs.smi-spec.io/v1alpha4/namespaces/ctl-b/httproutegroups",
        {
            "apiVersion": "specs.smi-spec.io/v1alpha4",
            "kind": "HTTPRouteGroup",
            "metadata": {"name": "broken"},
            "spec": {"matches": [{"name": "m", "pathRegex": "/api/(unclosed"}]},
        },
    )
    apiserver.create(
        "/apis/split.smi-spec.io/v1alpha4/namespaces/ctl-b/trafficsplits",
        {
            "apiVersion": "split.smi-spec.io/v1alpha4",
            "kind": "TrafficSplit",
            "metadata": {"name": "to-nowhere"},
            "spec": {"service": "api", "backends": [{"service": "missing", "weight": 1}]},
        },
    )

    def errors() -> list[dict[str, Any]] | None:
        found = ctl.config()["errors"]
        names = {e["name"] for e in found}
        return found if {"broken", "to-nowhere"} <= names else None

    found = wait_for(errors, what="both errors in the config")
    broken = next(e for e in found if e["name"] == "broken")
    assert broken["kind"] == "HTTPRouteGroup"
    assert broken["field"] == "spec.matches[0].pathRegex"
    assert "ctl-b/api:80" in ctl.config()["routes"]  # the valid Service is unaffected

    def events() -> list[dict[str, Any]] | None:
        # the split has two errors (its backend, then no usable backend), each its own Event,
        # written one after the other: wait for the one this test reads, not just any two
        items = apiserver.get("/api/v1/namespaces/ctl-b/events")["items"]
        mine = [e for e in items if e.get("source", {}).get("component") == "simmesh-controller"]
        named = {e["involvedObject"]["name"] for e in mine}
        missing = any("ctl-b/missing" in e["message"] for e in mine)
        return mine if {"broken", "to-nowhere"} <= named and missing else None

    mine = wait_for(events, what="the HTTPRouteGroup's Event and the split's backend Event")
    by_object = {e["involvedObject"]["name"]: e for e in mine}
    assert by_object["broken"]["involvedObject"]["kind"] == "HTTPRouteGroup"
    assert by_object["broken"]["type"] == "Warning"
    assert "spec.matches[0].pathRegex" in by_object["broken"]["message"]
    (backend,) = [e for e in mine if "ctl-b/missing" in e["message"]]
    assert backend["involvedObject"]["kind"] == "TrafficSplit", backend


def test_restart_keeps_config_and_port_assignments(
    apiserver: harness.Cluster, run_controller: Any
) -> None:
    namespace(apiserver, "ctl-c")
    first = run_controller("mesh-c", ["ctl-c"])
    for name in ("s1", "s2", "s3"):
        service(apiserver, "ctl-c", name, 7000, annotations={"simmesh.io/traffic-type": "tcp"})
        wait_for(lambda n=name: f"ctl-c/{n}:7000" in first.config()["routes"], what=name)
    config = first.config()
    ports = {k: v["listener"] for k, v in config["routes"].items()}
    assert sorted(ports.values()) == [10000, 10001, 10002]
    wait_for(lambda: shadows_of(apiserver, "mesh-c", 3), what="three shadows")
    first.stop()

    # Unchanged cluster: a new controller publishes byte-identical config.
    second = run_controller("mesh-c", ["ctl-c"])
    assert second.config() == config
    second.stop()

    # s1 deleted while no controller runs: s2 and s3 keep their ports (read from the shadows),
    # a new service takes the freed port.
    apiserver.delete("/api/v1/namespaces/ctl-c/services/s1")
    service(apiserver, "ctl-c", "s4", 7000, annotations={"simmesh.io/traffic-type": "tcp"})
    third = run_controller("mesh-c", ["ctl-c"])
    routes = wait_for(
        lambda: third.config()["routes"] if "ctl-c/s4:7000" in third.config()["routes"] else None,
        what="s4",
    )
    assert routes["ctl-c/s2:7000"]["listener"] == ports["ctl-c/s2:7000"]
    assert routes["ctl-c/s3:7000"]["listener"] == ports["ctl-c/s3:7000"]
    assert routes["ctl-c/s4:7000"]["listener"] == ports["ctl-c/s1:7000"]
    assert "ctl-c/s1:7000" not in routes


def test_controller_recovers_after_apiserver_restart(
    apiserver: harness.Cluster, run_controller: Any
) -> None:
    namespace(apiserver, "ctl-d")
    ctl = run_controller("mesh-d", ["ctl-d"])
    service(apiserver, "ctl-d", "before")
    wait_for(lambda: "ctl-d/before:80" in ctl.config()["routes"], what="before")
    version = ctl.config()["version"]
    apiserver.restart()
    # The controller keeps serving its last config while the API server is away...
    assert ctl.config()["version"] == version
    # ...and picks up changes made after it came back.
    service(apiserver, "ctl-d", "after")
    wait_for(lambda: "ctl-d/after:80" in ctl.config()["routes"], timeout=60, what="after")


def proxy_pod(
    cluster: harness.Cluster,
    ns: str,
    name: str,
    node: str,
    ip: str,
    *,
    account: str = "simmesh-proxy",
    ready: bool = True,
) -> str:
    """A node proxy's pod as the chart's DaemonSet makes it (label, ServiceAccount, a port
    named tunnel), scheduled on ``node``, Running with ``ip`` and Ready as told (no kubelet
    runs here: the test writes the status)."""
    if not _exists(cluster, f"/api/v1/namespaces/{ns}/serviceaccounts/{account}"):
        cluster.create(f"/api/v1/namespaces/{ns}/serviceaccounts", {"metadata": {"name": account}})
    path = f"/api/v1/namespaces/{ns}/pods"
    cluster.create(
        path,
        {
            "metadata": {"name": name, "labels": {"app.kubernetes.io/name": "simmesh-proxy"}},
            "spec": {
                "serviceAccountName": account,
                "nodeName": node,
                "containers": [
                    {
                        "name": "proxy",
                        "image": "example.invalid/simmesh",
                        "ports": [{"name": "tunnel", "containerPort": 15008}],
                    }
                ],
            },
        },
    )
    set_ready(cluster, f"{path}/{name}", ip, ready)
    return f"{path}/{name}"


def set_ready(cluster: harness.Cluster, path: str, ip: str, ready: bool) -> None:
    condition = {"type": "Ready", "status": "True" if ready else "False"}
    cluster.merge_patch(
        f"{path}/status",
        {
            "status": {
                "phase": "Running",
                "podIP": ip,
                "podIPs": [{"ip": ip}],
                "conditions": [condition],
            }
        },
    )


def test_proxy_tunnel_addresses_follow_the_proxy_pods(
    apiserver: harness.Cluster, run_controller: Any
) -> None:
    """With mTLS on, the controller publishes each node's Ready proxy pod (the mesh namespace,
    the proxies' ServiceAccount and label) as ``settings.mtls.proxies``, and follows it as the
    pods are created, become unready, surge, terminate and go; look-alikes are never taken."""
    mesh, app = "mesh-t", "ctl-t"
    namespace(apiserver, mesh)
    namespace(apiserver, app)
    ctl = run_controller(mesh, [app], ("--mtls", "permissive"))

    def proxies() -> dict[str, str]:
        mtls = ctl.config()["settings"].get("mtls") or {}
        assert mtls.get("mode") == "permissive"
        return mtls.get("proxies") or {}  # type: ignore[no-any-return]

    def becomes(expected: dict[str, str], what: str) -> None:
        wait_for(lambda: proxies() == expected, what=f"{what}: {expected}")

    assert proxies() == {}
    a1 = proxy_pod(apiserver, mesh, "simmesh-proxy-a1", "node-a", "10.244.1.5")
    proxy_pod(apiserver, mesh, "simmesh-proxy-b1", "node-b", "10.244.2.5", ready=False)
    becomes({"node-a": "10.244.1.5:15008"}, "node-a's ready proxy, not node-b's unready one")
    set_ready(apiserver, f"/api/v1/namespaces/{mesh}/pods/simmesh-proxy-b1", "10.244.2.5", True)
    becomes({"node-a": "10.244.1.5:15008", "node-b": "10.244.2.5:15008"}, "node-b ready")

    # look-alikes: labelled like a proxy in an app namespace (even with an account of the same
    # name), or in the mesh namespace under another account; Ready, on node-a
    proxy_pod(apiserver, app, "simmesh-proxy-zz", "node-a", "10.244.1.66")
    proxy_pod(apiserver, mesh, "simmesh-proxy-zz", "node-a", "10.244.1.67", account="default")
    version = ctl.config()["version"]
    sentinel = proxy_pod(apiserver, mesh, "simmesh-proxy-c1", "node-c", "10.244.3.5")
    becomes(
        {"node-a": "10.244.1.5:15008", "node-b": "10.244.2.5:15008", "node-c": "10.244.3.5:15008"},
        "node-c (after the look-alikes: their events came first)",
    )
    assert ctl.config()["version"] != version
    identities = ctl.config()["identities"]
    assert identities["10.244.1.66"] == "ctl-t/simmesh-proxy"  # a workload, not a proxy
    assert "10.244.1.5" not in identities  # and a proxy is no workload
    apiserver.delete(sentinel, query={"gracePeriodSeconds": "0"})  # gone at once: DELETED

    # a rolling update surges on node-a: the old proxy serves until it is told to stop, then
    # the new one (Ready) takes over; the old one, terminating (no kubelet: it stays so), is
    # taken back only while no other proxy on its node is ready
    a2 = proxy_pod(apiserver, mesh, "simmesh-proxy-a2", "node-a", "10.244.1.9", ready=False)
    becomes({"node-a": "10.244.1.5:15008", "node-b": "10.244.2.5:15008"}, "node-c gone")
    set_ready(apiserver, a2, "10.244.1.9", True)
    version = ctl.config()["version"]
    apiserver.delete(a1)
    assert apiserver.get(a1)["metadata"].get("deletionTimestamp")
    becomes({"node-a": "10.244.1.9:15008", "node-b": "10.244.2.5:15008"}, "the new proxy")
    assert ctl.config()["version"] != version
    set_ready(apiserver, a2, "10.244.1.9", False)  # the new one fails its probe
    becomes({"node-a": "10.244.1.5:15008", "node-b": "10.244.2.5:15008"}, "terminating but ready")
    apiserver.delete(a1, query={"gracePeriodSeconds": "0"})
    becomes({"node-b": "10.244.2.5:15008"}, "no ready proxy on node-a")


def _route_crd(kind: str, plural: str) -> dict[str, Any]:
    """A minimal CRD for a Gateway API route kind (the schema is not the point here)."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{plural}.gateway.networking.k8s.io",
            # a *.k8s.io group: the API server asks for the approval Gateway API's CRDs carry
            "annotations": {
                "api-approved.kubernetes.io": "https://github.com/kubernetes-sigs/gateway-api/pull/3328"
            },
        },
        "spec": {
            "group": "gateway.networking.k8s.io",
            "scope": "Namespaced",
            "names": {"kind": kind, "plural": plural, "listKind": f"{kind}List"},
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "x-kubernetes-preserve-unknown-fields": True,
                        }
                    },
                }
            ],
        },
    }


def test_gamma_routes_are_read_once_their_crds_are_installed(
    apiserver: harness.Cluster, run_controller: Any
) -> None:
    """Every test above ran without Gateway API's CRDs (the list is a 404 and the controller
    builds its config all the same); with them, an HTTPRoute on a Service is in the config.
    (Last in this file: the CRDs stay installed for the rest of the session.)"""
    apiserver.install_crds(
        [_route_crd("HTTPRoute", "httproutes"), _route_crd("GRPCRoute", "grpcroutes")]
    )
    namespace(apiserver, "ctl-g")
    service(apiserver, "ctl-g", "web")
    service(apiserver, "ctl-g", "web-v2")
    apiserver.create(
        "/apis/gateway.networking.k8s.io/v1/namespaces/ctl-g/httproutes",
        {
            "apiVersion": "gateway.networking.k8s.io/v1",
            "kind": "HTTPRoute",
            "metadata": {"name": "canary"},
            "spec": {
                "parentRefs": [{"group": "", "kind": "Service", "name": "web", "port": 80}],
                "rules": [{"backendRefs": [{"name": "web-v2", "port": 80}]}],
            },
        },
    )
    ctl = run_controller("mesh-g", ["ctl-g"])

    def attached() -> dict[str, Any] | None:
        gamma = ctl.config()["routes"].get("ctl-g/web:80", {}).get("gamma")
        return gamma if isinstance(gamma, dict) else None

    gamma = wait_for(attached, what="the HTTPRoute in the config")
    assert gamma["producer"]["routes"] == ["ctl-g/canary"]
    topology = http_json(f"{ctl.url}/api/v1/topology")
    assert topology["routes"] == {"ctl-g/web:80": {"producer": ["HTTPRoute ctl-g/canary"]}}
    apiserver.delete("/apis/gateway.networking.k8s.io/v1/namespaces/ctl-g/httproutes/canary")
    wait_for(lambda: "gamma" not in ctl.config()["routes"]["ctl-g/web:80"], what="route gone")
