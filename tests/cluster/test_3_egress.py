"""Traffic stays on this machine: counted on the host and in every node, and provoked.

The offline path guards twice (tools/kind/up.sh, deploy/kind/node/simmesh-node-init): each node
drops what would leave its eth0 for anything but the kind and pod networks (chain
SIMMESH-EGRESS, mangle POSTROUTING), and the host counts and drops what would leave the kind
bridge for another interface (chain SIMMESH-KIND-EGRESS in DOCKER-USER). Up to this test (the
cluster's boot for the host, the whole session for every node: deployment and every test
before) no packet was counted; then a pod tries to reach an address off the machine, its node
drops it, and the host still counts nothing.
"""

from __future__ import annotations

import os

import pytest

from tests.cluster import egress
from tests.cluster import kube as k
from tests.cluster.conftest import Workloads, node_names

pytestmark = pytest.mark.timeout(300)
OFF_MACHINE = "203.0.113.1"  # TEST-NET-3: never a host of this machine or the cluster


def test_nothing_tried_to_leave_and_a_provoked_packet_stays_on_the_node(
    kube: k.Kube, workloads: Workloads, egress_before: dict[str, int] | None
) -> None:
    nodes = node_names(kube)
    now = egress.snapshot(nodes)
    if egress_before is None or now is None:
        if os.environ.get("CI") == "true":
            pytest.fail("no egress guard: CI takes the offline path (make kind-up)", pytrace=False)
        pytest.skip("no egress guard (the offline path of make kind-up sets it up)")
    assert now["host"] == 0  # since the cluster came up
    moved = [node for node in nodes if now[node] != egress_before[node]]
    # nothing since this session started, in any node; else what the count-only rules saw
    assert not moved, (now, egress_before, [egress.describe(node) for node in moved])

    a, node = workloads.a, workloads.nodes[workloads.a.pod]
    tcp = a.call(f"tcp://{OFF_MACHINE}:80", timeout=1)["results"][0]
    udp = a.call(f"udp://{OFF_MACHINE}:53", timeout=1)["results"][0]
    assert (tcp["error"], udp["error"]) == ("timeout", "timeout"), (tcp, udp)
    after = egress.snapshot(nodes)
    assert after is not None
    assert after[node] - now[node] >= 2  # the SYN (and its retries) and the datagram
    assert after["host"] == 0


def test_cluster_dns_does_not_forward_upstream(kube: k.Kube) -> None:
    corefile = kube.json("get", "configmap", "-n", "kube-system", "coredns")["data"]["Corefile"]
    root = corefile.split(".:53 {", 1)[1].split("\n}", 1)[0]
    assert "kubernetes cluster.local" in root
    assert "forward" not in root, root
