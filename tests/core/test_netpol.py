"""mesh.core.netpol: the NetworkPolicies that leave the node proxies the only way in."""

from __future__ import annotations

import copy
from typing import Any

from mesh.core.model import Settings
from mesh.core.netpol import POLICY_LABEL, SOURCE_ANNOTATION, differs, network_policies
from mesh.core.parse import parse_objects
from mesh.core.topology import Topology, build_topology
from tests.core.builders import service

OWNER = {
    "apiVersion": "rbac.authorization.k8s.io/v1",
    "kind": "ClusterRole",
    "name": "simmesh-controller",
    "uid": "0d4c8a1e-0000-4000-8000-000000000001",
}


def topo(docs: list[dict[str, Any]], settings: Settings | None = None) -> Topology:
    return build_topology(parse_objects(docs), settings or Settings())


def no_selector(name: str, ns: str = "demo") -> dict[str, Any]:
    doc = service(name, ns=ns)
    del doc["spec"]["selector"]
    return doc


def test_one_policy_per_meshed_service_with_a_selector_admitting_only_the_proxies() -> None:
    web = service("web")
    web["spec"]["selector"] = {"app": "web", "tier": "front"}
    docs = [
        web,
        service("db", ns="data", annotations={"simmesh.io/traffic-type": "tcp"}),
        no_selector("external"),  # hand-written EndpointSlices: nothing to select
        service("dns", ns="kube-system"),  # never meshed
        service("ignored", ns="private"),
        service("ext", type_="ExternalName"),
    ]
    settings = Settings(ignore_namespaces=("private",))
    policies = network_policies(topo(docs, settings), proxy_namespace="mesh", owner=OWNER)
    assert list(policies) == [("data", "simmesh-db"), ("demo", "simmesh-web")]
    web_policy = policies[("demo", "simmesh-web")]
    assert web_policy["metadata"] == {
        "name": "simmesh-web",
        "namespace": "demo",
        "labels": {"app.kubernetes.io/managed-by": "simmesh", POLICY_LABEL: "true"},
        "annotations": {SOURCE_ANNOTATION: "web"},
        "ownerReferences": [OWNER],
    }
    assert web_policy["spec"] == {
        "podSelector": {"matchLabels": {"app": "web", "tier": "front"}},
        "policyTypes": ["Ingress"],
        # one peer: both selectors in it, so a pod must be a proxy AND in the mesh namespace
        "ingress": [
            {
                "from": [
                    {
                        "namespaceSelector": {
                            "matchLabels": {"kubernetes.io/metadata.name": "mesh"}
                        },
                        "podSelector": {"matchLabels": {"app.kubernetes.io/name": "simmesh-proxy"}},
                    }
                ]
            }
        ],
    }


def test_without_an_owner_there_is_no_owner_reference_and_labels_can_be_chosen() -> None:
    policies = network_policies(
        topo([service("web")]), proxy_namespace="mesh", proxy_labels={"app": "my-proxy"}
    )
    (policy,) = policies.values()
    assert "ownerReferences" not in policy["metadata"]
    peer = policy["spec"]["ingress"][0]["from"][0]
    assert peer["podSelector"] == {"matchLabels": {"app": "my-proxy"}}


def _as_stored(policy: dict[str, Any]) -> dict[str, Any]:
    """The policy as the API server returns it: defaults filled in, server fields added."""
    stored = copy.deepcopy(policy)
    stored["metadata"].update(resourceVersion="12", uid="u", generation=1)
    stored["metadata"]["labels"]["added-by-someone"] = "x"
    stored["spec"]["ingress"][0]["from"][0]["ipBlock"] = None
    return stored


def test_a_stored_policy_differs_only_when_what_it_enforces_changed() -> None:
    (desired,) = network_policies(topo([service("web")]), proxy_namespace="mesh").values()
    assert not differs(_as_stored(desired), desired)

    widened = _as_stored(desired)
    widened["spec"]["ingress"][0]["from"].append({"namespaceSelector": {}})  # anyone
    assert differs(widened, desired)

    other_pods = _as_stored(desired)
    other_pods["spec"]["podSelector"]["matchLabels"] = {"app": "other"}
    assert differs(other_pods, desired)

    narrowed = _as_stored(desired)
    narrowed["spec"]["podSelector"]["matchExpressions"] = [{"key": "x", "operator": "Exists"}]
    assert differs(narrowed, desired)

    ported = _as_stored(desired)
    ported["spec"]["ingress"][0]["ports"] = [{"port": 80}]
    assert differs(ported, desired)

    egress_too = _as_stored(desired)
    egress_too["spec"]["policyTypes"] = ["Ingress", "Egress"]
    assert differs(egress_too, desired)

    unlabelled = _as_stored(desired)
    del unlabelled["metadata"]["labels"][POLICY_LABEL]
    assert differs(unlabelled, desired)

    moved = _as_stored(desired)
    moved["metadata"]["annotations"][SOURCE_ANNOTATION] = "api"
    assert differs(moved, desired)
