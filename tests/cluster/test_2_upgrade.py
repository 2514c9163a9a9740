"""Upgrades lose nothing: a ``rollout restart`` of the proxy DaemonSet, one of the controller,
and a ``helm upgrade`` to a new image tag, each while pods on both workers call each other
through the mesh (HTTP, 2 at a time in batches of 300, across nodes) and hold a long-lived TCP
flow each way. Every request must succeed and no flow may be cut.

What makes it so (docs/install.md, "Upgrades"): the proxy DaemonSet surges (a new proxy is
ready on a node before the old one is told to stop), and a proxy told to stop keeps accepting
for ``proxy.drainDelaySeconds`` (until kube-proxy has moved the node's traffic to the new
one), answers with ``Connection: close`` meanwhile, then stops accepting and lets requests and
TCP flows finish within its grace period. The controller rolls the same way; the proxies keep
serving their last config whatever it does.

The numbers (requests, failures, rollout duration, how long the old proxies drained) are
printed and written to out/cluster/times.json before anything is asserted.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.cluster import kube as k
from tests.cluster.conftest import MESH_NS, NS_A, NS_B, Workloads, _script, node_names, record
from tests.cluster.rollout import HeldFlow, Load, PodWatch

pytestmark = pytest.mark.timeout(600)
B_HTTP = f"http://b.{NS_B}.mesh:{k.HTTP_PORT}/echo"
A_HTTP = f"http://a.{NS_A}.mesh:{k.HTTP_PORT}/echo"
B_TCP = f"tcp://b-tcp.{NS_B}.mesh:{k.TCP_PORT}"
A_TCP = f"tcp://a-tcp.{NS_A}.mesh:{k.TCP_PORT}"
PROXIES = "app.kubernetes.io/name=simmesh-proxy"
CONTROLLER = "app.kubernetes.io/name=simmesh-controller"
HOLD = 20.0  # seconds a TCP flow stays open: past the old proxies' SIGTERM on both nodes
LONGEST_ROUND_TRIP_MS = 1500.0  # a held flow's slowest echo: a stall, not a busy machine


@pytest.fixture(scope="module")
def grants(workloads: Workloads) -> Iterator[None]:
    """a -> b and b -> a (the session's mesh runs in ACL mode); removed afterwards."""
    docs = k.grant(NS_B, "up-a-to-b", destination="b", source=(NS_A, "a"))
    docs += k.grant(NS_A, "up-b-to-a", destination="a", source=(NS_B, "b"))
    workloads.kube.apply(docs)
    for app, url in ((workloads.a, B_HTTP), (workloads.b_v1, A_HTTP)):
        k.wait_for(
            f"{url} allowed",
            lambda app=app, url=url: app.call(url, timeout=5)["results"][0]["status"] == 200,
            interval=0.2,
        )
    yield
    workloads.kube.delete(docs)


def settled(kube: k.Kube, workers: tuple[str, str]) -> None:
    """One ready proxy per worker and one controller, nothing terminating."""

    def ready() -> bool:
        pods = kube.json("get", "pods", "-n", MESH_NS)["items"]
        if any(p["metadata"].get("deletionTimestamp") for p in pods):
            return False
        proxies = [
            p
            for p in pods
            if p["metadata"]["labels"].get("app.kubernetes.io/name") == "simmesh-proxy"
        ]
        return sorted(p["spec"]["nodeName"] for p in proxies) == sorted(workers) and all(
            c["ready"] for p in pods for c in p["status"].get("containerStatuses", [])
        )

    k.wait_for("one ready proxy per worker, nothing terminating", ready, timeout=180)


def under_load(
    workloads: Workloads,
    what: str,
    roll: Callable[[], None],
    selector: str,
    *,
    hold: float = HOLD,
) -> dict[str, Any]:
    """Run ``roll`` (which returns when the rollout is complete) under load, with a TCP flow
    held open ``hold`` seconds each way; wait until the old pods of ``selector`` are gone and
    the flows ended; record and return the numbers (nothing is asserted here)."""
    kube, a, b = workloads.kube, workloads.a, workloads.b_v1
    settled(kube, workloads.workers)
    old = set(kube.pod_names(MESH_NS, selector))
    with PodWatch(kube, MESH_NS, selector) as pods, Load([(a, B_HTTP), (b, A_HTTP)]) as load:
        flows = [HeldFlow(a, B_TCP, hold).start(), HeldFlow(b, A_TCP, hold).start()]
        time.sleep(2)  # flows open, batches running
        start = time.monotonic()
        roll()
        rolled = time.monotonic() - start
        results = [flow.wait() for flow in flows]
        k.wait_for(f"the old {selector} pods to be gone", lambda: pods.drained(old))
        time.sleep(2)  # and traffic on the new pods alone for a moment
    drains = {name: round(pods.drain_seconds(name), 1) for name in sorted(old)}
    # the old proxy each flow went through (its caller's node's), if it was told to stop
    # while the flow ran: how much longer it stayed for the flow
    held = {}
    for flow in flows:
        node = workloads.nodes[flow.app.pod]
        for name in old:
            if not name.startswith("simmesh-proxy-"):
                continue  # (flows go through proxies only)
            told = pods.terminating.get(name)
            if pods.nodes.get(name) == node and told is not None and told < flow.ended:
                held[name] = {"flow ran on": round(flow.ended - told, 1), "drain": drains[name]}
    outcome = {
        "requests": load.requests,
        "failures": dict(load.failures),
        "rollout": rolled,
        "drains": drains,
        "held": held,
        "flows": [{k_: v for k_, v in r.items() if k_ != "reply"} for r in results],
        "report": load.report(),
    }
    record(f"{what}: rollout duration", rolled)
    record(f"{what}: requests (count)", load.requests)
    record(f"{what}: failed requests (count)", sum(load.failures.values()))
    record(f"{what}: longest drain of an old pod", max(drains.values()))
    if held:
        record(
            f"{what}: TCP flow kept by its stopping proxy",
            max(h["flow ran on"] for h in held.values()),
        )
    print(f"\n{what}: {outcome}")
    return outcome


def check_no_loss(outcome: dict[str, Any], *, hold: float = HOLD) -> None:
    assert outcome["requests"] >= 1200, outcome["report"]
    assert outcome["failures"] == {}, outcome["report"]
    for flow in outcome["flows"]:
        assert flow.get("error") is None, flow
        # a line every 0.5 s on a fixed schedule, each echoed: none missing, none held up
        # for long (the count alone would also fall with the round trips of a busy machine)
        assert flow["echoes"] >= int(hold / 0.5) - 1, flow
        assert flow["longestRoundTripMs"] <= LONGEST_ROUND_TRIP_MS, flow


def rollout(kube: k.Kube, kind: str) -> Callable[[], None]:
    def roll() -> None:
        kube.run("rollout", "restart", "-n", MESH_NS, kind)
        kube.run("rollout", "status", "-n", MESH_NS, kind, "--timeout=180s", timeout=200)

    return roll


def test_proxy_rollout_restart_loses_no_request_and_no_flow(
    kube: k.Kube, workloads: Workloads, grants: None
) -> None:
    outcome = under_load(
        workloads, "proxy rollout restart", rollout(kube, "daemonset/simmesh-proxy"), PROXIES
    )
    check_no_loss(outcome)
    # a proxy told to stop while a flow ran through it kept it to its end (not cut)
    assert outcome["held"], outcome


def test_controller_rollout_restart_loses_no_request(
    kube: k.Kube, workloads: Workloads, grants: None
) -> None:
    base = f"/api/v1/namespaces/{MESH_NS}/services/simmesh-controller:9000/proxy/api/v1/config"
    before = kube.raw("GET", base)["version"]
    outcome = under_load(
        workloads,
        "controller rollout restart",
        rollout(kube, "deployment/simmesh-controller"),
        CONTROLLER,
    )
    check_no_loss(outcome)
    assert kube.raw("GET", base)["version"] == before
    simmesh = str(Path(sys.executable).parent / "simmesh")
    done = subprocess.run(
        [
            simmesh,
            "check",
            "--kubeconfig",
            str(kube.kubeconfig),
            "--namespace",
            MESH_NS,
            "--wait",
            "60",
        ],
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def _containerd_ref(image: str) -> str:
    """The name containerd knows a Docker image by (as tools/kind/deploy.sh spells it)."""
    head = image.split("/", 1)[0]
    if "." in head or ":" in head or head == "localhost":
        return image
    return f"docker.io/{image}" if "/" in image else f"docker.io/library/{image}"


def tag_everywhere(kube: k.Kube, image: str, new: str) -> None:
    """``new`` names the same image in Docker and in every node's containerd: what ``kind
    load`` of a second tag leaves there, without copying 200 MB into each node again."""
    subprocess.run(["docker", "tag", image, new], check=True, timeout=30)
    for node in node_names(kube):
        subprocess.run(
            [
                "docker",
                "exec",
                node,
                "ctr",
                "-n",
                "k8s.io",
                "images",
                "tag",
                "--force",
                _containerd_ref(image),
                _containerd_ref(new),
            ],
            check=True,
            capture_output=True,
            timeout=30,
        )


def test_helm_upgrade_to_a_new_image_tag_loses_no_request(
    kube: k.Kube, workloads: Workloads, grants: None, image: str
) -> None:
    new = image.rsplit(":", 1)[0] + ":upgrade"
    tag_everywhere(kube, image, new)

    def upgrade() -> None:
        # helm upgrade --wait, simmesh prepare (a no-op), until simmesh check passes
        _script("deploy.sh", new, "--set", "acl=true")

    try:
        # controller and proxies roll: flows long enough to span the proxies' turn
        outcome = under_load(
            workloads,
            "helm upgrade (new image tag)",
            upgrade,
            "app.kubernetes.io/part-of=simmesh",
            hold=2 * HOLD,
        )
    finally:
        # (the nodes keep the tag until the cluster goes; Docker's is removed: only a name)
        subprocess.run(["docker", "rmi", new], capture_output=True, timeout=30)
    check_no_loss(outcome, hold=2 * HOLD)
    assert outcome["held"], outcome
    images = {
        c["image"]
        for p in kube.pods(MESH_NS, "app.kubernetes.io/part-of=simmesh")
        for c in p["spec"]["containers"]
    }
    assert images == {new}
