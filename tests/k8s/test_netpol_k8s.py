"""``controller --network-policies`` against a real kube-apiserver: one NetworkPolicy per meshed
Service, owned by the ClusterRole, kept in step with the Services' selectors, put back when
deleted by hand, deleted with its Service, deleted when the flag is off, and by ``simmesh
cleanup``. (That the policies are enforced is shown on kind: tests/cluster/test_3_strict.py.)"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.k8s import apiserver as harness
from tests.k8s.test_controller_k8s import ControllerProcess, namespace, service, wait_for
from tests.k8s.test_dns_prepare import cleanup

pytestmark = pytest.mark.k8s
NS, OTHER, MESH = "np-a", "np-b", "np-mesh"
OWNER = "np-owner"
POLICIES = "/apis/networking.k8s.io/v1/namespaces/{ns}/networkpolicies"
SELECTOR = "?labelSelector=simmesh.io/network-policy%3Dtrue"


@pytest.fixture
def controllers(
    apiserver: harness.Cluster, tmp_path: Path
) -> Iterator[Callable[..., ControllerProcess]]:
    started: list[ControllerProcess] = []

    def start(*extra: str) -> ControllerProcess:
        log = tmp_path / "controller.log"
        started.append(ControllerProcess(apiserver, MESH, [NS], log, extra).start())
        return started[-1]

    yield start
    for proc in started:
        proc.stop()


def policies(cluster: harness.Cluster, ns: str) -> dict[str, Any]:
    items = cluster.get(POLICIES.format(ns=ns) + SELECTOR)["items"]
    return {p["metadata"]["name"]: p for p in items}


def _role(cluster: harness.Cluster) -> dict[str, Any]:
    path = "/apis/rbac.authorization.k8s.io/v1/clusterroles"
    try:
        return cluster.get(f"{path}/{OWNER}")  # type: ignore[no-any-return]
    except harness.ApiError as exc:
        if exc.status != 404:
            raise
    return cluster.create(path, {"metadata": {"name": OWNER}, "rules": []})  # type: ignore[no-any-return]


def test_policies_follow_the_meshed_services(
    apiserver: harness.Cluster, controllers: Callable[..., ControllerProcess]
) -> None:
    for ns in (NS, OTHER, MESH):
        namespace(apiserver, ns)
    role = _role(apiserver)
    service(apiserver, NS, "web")
    service(apiserver, NS, "db", 5432, annotations={"simmesh.io/traffic-type": "tcp"})
    apiserver.create(  # no selector: nothing to select, no policy
        f"/api/v1/namespaces/{NS}/services",
        {"metadata": {"name": "manual"}, "spec": {"ports": [{"port": 80}]}},
    )
    service(apiserver, OTHER, "unwatched")
    # someone else's policy in the namespace: never touched
    theirs = {
        "metadata": {"name": "theirs"},
        "spec": {"podSelector": {}, "policyTypes": ["Ingress"]},
    }
    apiserver.create(POLICIES.format(ns=NS), theirs)
    # and one of theirs named like the mesh's for a Service: never replaced, the others go on
    taken = {"metadata": {"name": "simmesh-taken"}, "spec": theirs["spec"]}
    apiserver.create(POLICIES.format(ns=NS), taken)
    service(apiserver, NS, "taken")
    extra = (
        "--network-policies",
        "--network-policy-owner",
        OWNER,
        "--network-policy-resync",
        "0.5",
    )
    ctl = controllers(*extra)

    got = wait_for(
        lambda: (p := policies(apiserver, NS)) and set(p) == {"simmesh-web", "simmesh-db"} and p,
        what="a policy for web and one for db",
    )
    web = got["simmesh-web"]
    assert web["metadata"]["ownerReferences"] == [
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "name": OWNER,
            "uid": role["metadata"]["uid"],
        }
    ]
    assert web["spec"]["podSelector"] == {"matchLabels": {"app": "web"}}
    assert web["spec"]["policyTypes"] == ["Ingress"]
    assert web["spec"]["ingress"] == [
        {
            "from": [
                {
                    "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": MESH}},
                    "podSelector": {"matchLabels": {"app.kubernetes.io/name": "simmesh-proxy"}},
                }
            ]
        }
    ]
    assert policies(apiserver, OTHER) == {}
    kept = apiserver.get(POLICIES.format(ns=NS) + "/simmesh-taken")
    assert kept["spec"] == taken["spec"] and "labels" not in kept["metadata"], kept

    # A selector change alone (no change of the config) moves the policy to the new pods.
    apiserver.merge_patch(
        f"/api/v1/namespaces/{NS}/services/web", {"spec": {"selector": {"app": "web2"}}}
    )
    wait_for(
        lambda: (
            policies(apiserver, NS)["simmesh-web"]["spec"]["podSelector"]
            == {"matchLabels": {"app": "web2"}}
        ),
        what="the web policy follows the new selector",
    )

    # Deleted or widened by hand: put back by the resync.
    apiserver.delete(POLICIES.format(ns=NS) + "/simmesh-db")
    wait_for(lambda: "simmesh-db" in policies(apiserver, NS), what="db's policy back")
    apiserver.merge_patch(
        POLICIES.format(ns=NS) + "/simmesh-web",
        {"spec": {"ingress": [{"from": [{"namespaceSelector": {}}]}]}},
    )
    wait_for(
        lambda: policies(apiserver, NS)["simmesh-web"]["spec"]["ingress"] == web["spec"]["ingress"],
        what="web's policy narrowed again",
    )

    # The Service goes: its policy goes.
    apiserver.delete(f"/api/v1/namespaces/{NS}/services/db")
    wait_for(lambda: set(policies(apiserver, NS)) == {"simmesh-web"}, what="db's policy deleted")
    assert apiserver.get(POLICIES.format(ns=NS) + "/theirs")["spec"] == theirs["spec"]

    # Restarted without the flag: the policies an earlier run wrote are deleted.
    ctl.stop()
    controllers()
    wait_for(lambda: policies(apiserver, NS) == {}, what="every policy of the mesh deleted")
    assert apiserver.get(POLICIES.format(ns=NS) + "/theirs")["metadata"]["name"] == "theirs"
    assert apiserver.get(POLICIES.format(ns=NS) + "/simmesh-taken")["spec"] == taken["spec"]
    apiserver.delete(POLICIES.format(ns=NS) + "/theirs")
    apiserver.delete(POLICIES.format(ns=NS) + "/simmesh-taken")


def test_cleanup_deletes_the_mesh_policies_in_every_namespace(
    clean_dns: harness.Cluster, dns_mesh_namespace: str, capsys: pytest.CaptureFixture[str]
) -> None:
    labels = {"simmesh.io/network-policy": "true", "app.kubernetes.io/managed-by": "simmesh"}
    spec = {"podSelector": {"matchLabels": {"app": "x"}}, "policyTypes": ["Ingress"]}
    for ns in ("np-c1", "np-c2"):
        namespace(clean_dns, ns)
        mesh_policy = {"metadata": {"name": "simmesh-x", "labels": labels}, "spec": spec}
        clean_dns.create(POLICIES.format(ns=ns), mesh_policy)
    clean_dns.create(POLICIES.format(ns="np-c1"), {"metadata": {"name": "mine"}, "spec": spec})
    capsys.readouterr()
    assert cleanup(clean_dns, "--namespace", dns_mesh_namespace) == 0
    assert "NetworkPolicies (simmesh.io/network-policy): 2 deleted" in capsys.readouterr().out
    assert policies(clean_dns, "np-c1") == policies(clean_dns, "np-c2") == {}
    assert clean_dns.get(POLICIES.format(ns="np-c1") + "/mine")["metadata"]["name"] == "mine"
    clean_dns.delete(POLICIES.format(ns="np-c1") + "/mine")
