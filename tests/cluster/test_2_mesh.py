"""Traffic through the mesh on real pods: ACL, HTTP/TCP/UDP across namespaces and nodes, splits,
a lost proxy pod, a restarted controller.

Calls are made by the test app from inside its pod (``/call``), to ``<svc>.<ns>.mesh`` names:
cluster DNS (prepared by ``simmesh prepare``) sends them to the shadow Service and so to the
caller's own node proxy. The mesh runs in ACL mode: nothing is allowed until a TrafficTarget
grants it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.cluster import kube as k
from tests.cluster.conftest import MESH_NS, NS_A, NS_B, Workloads, record

pytestmark = pytest.mark.timeout(600)
B_HTTP = f"http://b.{NS_B}.mesh:{k.HTTP_PORT}/echo"
A_HTTP = f"http://a.{NS_A}.mesh:{k.HTTP_PORT}/echo"


def status_of(app: k.App, url: str) -> tuple[int | None, str | None]:
    result = app.call(url, timeout=5)["results"][0]
    return result["status"], result["reason"] or result["error"]


def flip(app: k.App, url: str, wanted: int) -> float:
    """Seconds until a call from ``app`` to ``url`` answers ``wanted`` (polled)."""
    start = time.monotonic()
    k.wait_for(f"{url} -> {wanted}", lambda: status_of(app, url)[0] == wanted, interval=0.2)
    return time.monotonic() - start


@pytest.fixture(scope="module")
def grants(workloads: Workloads) -> Iterator[list[dict[str, Any]]]:
    """a -> b and b -> a over HTTP, TCP and UDP (removed afterwards)."""
    docs = k.grant(NS_B, "a-to-b", destination="b", source=(NS_A, "a"))
    docs += k.grant(NS_A, "b-to-a", destination="a", source=(NS_B, "b"))
    workloads.kube.apply(docs)
    flip(workloads.a, B_HTTP, 200)
    flip(workloads.b_v1, A_HTTP, 200)
    yield docs
    workloads.kube.delete(docs)


def test_acl_traffic_target_flips_deny_to_allow_and_back(workloads: Workloads) -> None:
    # first in the module: the `grants` of the later tests do not exist yet
    kube, a = workloads.kube, workloads.a
    url = f"http://b-v1.{NS_B}.mesh:{k.HTTP_PORT}/echo"
    status, reason = status_of(a, url)
    assert status == 403 and reason, (status, reason)  # denied by the proxy, with a reason
    docs = k.grant(NS_B, "flip", destination="b", source=(NS_A, "a"))
    kube.apply(docs)
    record("ACL propagation: TrafficTarget created -> allowed", flip(a, url, 200))
    target = docs[-1]
    kube.run("delete", "traffictarget", "-n", NS_B, target["metadata"]["name"])
    record("ACL propagation: TrafficTarget deleted -> denied", flip(a, url, 403))
    kube.delete(docs)


def test_http_tcp_udp_across_namespaces_and_nodes(workloads: Workloads, grants: Any) -> None:
    a, b = workloads.a, workloads.b_v1
    b_pods = {workloads.b_v1.pod, workloads.b_v2.pod}
    for scheme, port in (("tcp", k.TCP_PORT), ("udp", k.UDP_PORT)):
        answer = a.call(f"{scheme}://b-{scheme}.{NS_B}.mesh:{port}", count=4)
        assert answer["summary"]["count"] == 4 and not answer["summary"]["errors"], answer
        assert (
            set(answer["summary"]["pods"]) <= b_pods
            and sum(answer["summary"]["pods"].values()) == 4
        ), answer
        back = b.call(f"{scheme}://a-{scheme}.{NS_A}.mesh:{port}", count=2)
        assert back["summary"]["pods"] == {a.pod: 2}, back
    answer = a.call(B_HTTP, count=4)
    assert answer["summary"]["statuses"] == {"200": 4}, answer
    back = b.call(A_HTTP, count=2)
    assert back["summary"]["pods"] == {a.pod: 2}, back


def test_requests_leave_through_the_callers_own_node_proxy(
    kube: k.Kube, workloads: Workloads, grants: Any
) -> None:
    a, b = workloads.a, workloads.b_v1
    proxies = {
        p["spec"]["nodeName"]: p["status"]["podIP"]
        for p in kube.pods(MESH_NS, "app.kubernetes.io/name=simmesh-proxy")
    }
    b.reset()
    a.call(f"http://b-v1.{NS_B}.mesh:{k.HTTP_PORT}/echo", count=3)
    sources = {c["source"] for c in b.calls()}
    assert sources == {proxies[workloads.nodes[a.pod]]}, (sources, proxies)


def binomial_ok(k_: int, n: int, p: float) -> bool:
    """Within 4 standard deviations (a false alarm about once in 16,000 runs)."""
    return abs(k_ - n * p) <= 4 * math.sqrt(n * p * (1 - p))


def test_traffic_split_shares_within_a_binomial_bound(workloads: Workloads, grants: Any) -> None:
    kube, a, v1, v2 = workloads.kube, workloads.a, workloads.b_v1, workloads.b_v2
    n, weights = 200, {"b-v1": 70, "b-v2": 30}
    doc = k.split(NS_B, "b-split", "b", weights)
    try:
        # to see when the 70/30 split is in force, first pin everything on v2
        kube.apply([k.split(NS_B, "b-split", "b", {"b-v1": 0, "b-v2": 1})])
        k.wait_for(
            "split 0/1 in force",
            lambda: a.call(B_HTTP, count=10)["summary"]["pods"] == {v2.pod: 10},
        )
        kube.apply([doc])
        start = time.monotonic()
        k.wait_for(
            "split 70/30 in force",
            lambda: v1.pod in a.call(B_HTTP, count=10)["summary"]["pods"],
            interval=0.2,
        )
        record("split propagation: weights changed -> v1 served again", time.monotonic() - start)
        v1.reset()
        v2.reset()
        answer = a.call(B_HTTP, count=n, concurrency=4)
        assert answer["summary"]["statuses"] == {"200": n}, answer["summary"]
        got = answer["summary"]["pods"]
        received = {v1.pod: len(v1.calls()), v2.pod: len(v2.calls())}
        assert received == got, (received, got)  # each backend got exactly what was sent
        assert sum(received.values()) == n  # no retries, no probes in the counts
        assert binomial_ok(received[v1.pod], n, 0.7), received
    finally:
        kube.delete([doc])


def test_a_deleted_proxy_pod_comes_back_and_serves(
    kube: k.Kube, workloads: Workloads, grants: Any
) -> None:
    a = workloads.a
    node = workloads.nodes[a.pod]
    (old,) = [
        p["metadata"]["name"]
        for p in kube.pods(MESH_NS, "app.kubernetes.io/name=simmesh-proxy")
        if p["spec"]["nodeName"] == node
    ]
    start = time.monotonic()
    kube.run("delete", "pod", "-n", MESH_NS, old, "--wait=false")

    def replaced_and_serving() -> bool:
        pods = [
            p
            for p in kube.pods(MESH_NS, "app.kubernetes.io/name=simmesh-proxy")
            if p["spec"]["nodeName"] == node and p["metadata"]["name"] != old
        ]
        ready = pods and all(
            c["ready"] for c in pods[0]["status"].get("containerStatuses", [{"ready": False}])
        )
        return bool(ready) and status_of(a, B_HTTP)[0] == 200

    k.wait_for("a new proxy pod serving on the node", replaced_and_serving, timeout=180)
    record("proxy pod deleted -> new pod serves again", time.monotonic() - start)
    assert a.call(B_HTTP, count=5)["summary"]["statuses"] == {"200": 5}
    # the old pod drains for a while; the next tests want one proxy per node again
    kube.run("wait", "--for=delete", f"pod/{old}", "-n", MESH_NS, "--timeout=90s", timeout=100)


def config_diff(old: dict[str, Any], new: dict[str, Any]) -> str:
    """Which parts of two MeshConfigs differ, for the failure message."""
    parts = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if a == b:
            continue
        if isinstance(a, dict) and isinstance(b, dict):
            inner = sorted(k_ for k_ in set(a) | set(b) if a.get(k_) != b.get(k_))
            parts.append(f"{key}: {[(k_, a.get(k_), b.get(k_)) for k_ in inner[:3]]}")
        else:
            parts.append(f"{key}: {str(a)[:300]} -> {str(b)[:300]}")
    return "; ".join(parts)


def test_controller_restart_loses_no_configuration(
    kube: k.Kube, workloads: Workloads, grants: Any
) -> None:
    a = workloads.a
    base = f"/api/v1/namespaces/{MESH_NS}/services/simmesh-controller:9000/proxy/api/v1/config"

    def config() -> dict[str, Any]:
        data: dict[str, Any] = kube.raw("GET", base)
        return data

    def shadows() -> dict[str, Any]:
        items = kube.json("get", "services", "-n", MESH_NS, "-l", "simmesh.io/shadow")["items"]
        return {s["metadata"]["name"]: s["spec"]["ports"] for s in items}

    def settled() -> dict[str, Any] | None:
        first = config()
        time.sleep(2)
        return first if config() == first else None

    before = k.wait_for("a settled config", settled, timeout=60)
    shadows_before = shadows()
    assert shadows_before, "no shadow Services"
    deployment = "deployment/simmesh-controller"
    kube.run("scale", "-n", MESH_NS, deployment, "--replicas=0")
    k.wait_for(
        "no controller pod",
        lambda: not kube.pods(MESH_NS, "app.kubernetes.io/name=simmesh-controller"),
    )
    # the proxies keep serving their last config while there is no controller
    served = a.call(B_HTTP, count=5)["summary"]["statuses"]
    start = time.monotonic()
    kube.run("scale", "-n", MESH_NS, deployment, "--replicas=1")
    kube.run("rollout", "status", "-n", MESH_NS, deployment, "--timeout=180s")

    during: dict[str, int] = {}  # calls made while the new controller starts

    def same() -> bool:
        for status, n in a.call(B_HTTP, count=5)["summary"]["statuses"].items():
            during[status] = during.get(status, 0) + n
        now = config()
        if now != before:
            raise ValueError(config_diff(before, now))
        return True

    k.wait_for("the new controller's config to equal the old one", same, timeout=120)
    record("controller started again -> same config served", time.monotonic() - start)
    assert served == {"200": 5}
    assert list(during) == ["200"], during  # no partial config reached a proxy
    assert shadows() == shadows_before
    assert a.call(B_HTTP, count=3)["summary"]["statuses"] == {"200": 3}
    udp = a.call(f"udp://b-udp.{NS_B}.mesh:{k.UDP_PORT}", count=2)
    assert not udp["summary"]["errors"], udp
