"""Traffic stays on this machine: counted on the host and in every node, and provoked.

The offline path guards twice (tools/kind/up.sh, deploy/kind/node/simmesh-node-init): each node
drops what would leave its eth0 for anything but the kind and pod networks (chain
SIMMESH-EGRESS, mangle POSTROUTING), and the host counts and drops what would leave the kind
bridge for another interface (chain SIMMESH-KIND-EGRESS in DOCKER-USER). Up to this test (the
cluster's boot, the deployment, every test before) neither counted a packet; then a pod tries
to reach an address off the machine, the node drops it, and the host still counts nothing.
"""

from __future__ import annotations

import os
import re
import subprocess

import pytest

from tests.cluster import kube as k
from tests.cluster.conftest import Workloads

pytestmark = pytest.mark.timeout(300)
OFF_MACHINE = "203.0.113.1"  # TEST-NET-3: never a host of this machine or the cluster


def _dropped(command: list[str]) -> int:
    done = subprocess.run(command, capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{' '.join(command)}: {done.stderr.strip()}", pytrace=False)
        pytest.skip(f"no egress guard (the offline path sets it up): {done.stderr.strip()}")
    rows = [line.split() for line in done.stdout.splitlines() if re.search(r"\bDROP\b", line)]
    assert rows, done.stdout
    return sum(int(row[0]) for row in rows)


def host_dropped() -> int:
    return sum(
        _dropped([tool, "-L", "SIMMESH-KIND-EGRESS", "-v", "-x", "-n"])
        for tool in ("iptables", "ip6tables")
    )


def node_dropped(node: str) -> int:
    return sum(
        _dropped(
            ["docker", "exec", node, tool, "-t", "mangle", "-L", "SIMMESH-EGRESS", "-v", "-x", "-n"]
        )
        for tool in ("iptables", "ip6tables")
    )


def test_nothing_tried_to_leave_and_a_provoked_packet_stays_on_the_node(
    kube: k.Kube, workloads: Workloads
) -> None:
    nodes = [n["metadata"]["name"] for n in kube.json("get", "nodes")["items"]]
    assert host_dropped() == 0
    assert {node: node_dropped(node) for node in nodes} == {node: 0 for node in nodes}

    a, node = workloads.a, workloads.nodes[workloads.a.pod]
    tcp = a.call(f"tcp://{OFF_MACHINE}:80", timeout=1)["results"][0]
    udp = a.call(f"udp://{OFF_MACHINE}:53", timeout=1)["results"][0]
    assert (tcp["error"], udp["error"]) == ("timeout", "timeout"), (tcp, udp)
    assert node_dropped(node) >= 2  # the SYN (and its retries) and the datagram
    assert host_dropped() == 0


def test_cluster_dns_does_not_forward_upstream(kube: k.Kube) -> None:
    corefile = kube.json("get", "configmap", "-n", "kube-system", "coredns")["data"]["Corefile"]
    root = corefile.split(".:53 {", 1)[1].split("\n}", 1)[0]
    assert "kubernetes cluster.local" in root
    assert "forward" not in root, root
