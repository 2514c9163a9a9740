"""Last: undeploy (simmesh cleanup, helm uninstall) leaves the cluster as it was."""

from __future__ import annotations

import pytest

from tests.cluster import kube as k
from tests.cluster.conftest import MESH_NS, NS_B, Mesh, Workloads, _coredns, _script

pytestmark = pytest.mark.timeout(300)


def test_undeploy_restores_coredns_byte_for_byte(
    kube: k.Kube, mesh: Mesh, workloads: Workloads
) -> None:
    assert _coredns(kube) != mesh.coredns_before  # prepared: the mesh zone is there
    _script("undeploy.sh")
    mesh.undeployed = True
    assert _coredns(kube) == mesh.coredns_before
    assert kube.run("get", "namespace", MESH_NS, check=False).returncode != 0
    assert kube.json("get", "services", "-A", "-l", "simmesh.io/shadow")["items"] == []
    kube.run("rollout", "status", "-n", "kube-system", "deployment/coredns", "--timeout=120s")
    # the mesh names are gone; plain cluster names still resolve and serve
    a = workloads.a
    gone = k.wait_for(
        "mesh names to stop resolving",
        lambda: (
            (r := a.call(f"http://b.{NS_B}.mesh:{k.HTTP_PORT}/")["results"][0])["error"] == "dns"
            and r
        ),
    )
    assert gone["status"] is None
    plain = a.call(f"http://b.{NS_B}.svc.cluster.local:{k.HTTP_PORT}/echo", count=3)
    assert plain["summary"]["statuses"] == {"200": 3}, plain
