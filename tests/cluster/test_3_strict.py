"""mTLS on kind, the way a user turns it on: the session's mesh (ACL mode, mTLS off) upgraded by
``helm upgrade`` to ``mtls=permissive`` and then to ``mtls=strict``, each while pods on both
workers call each other through the mesh (test_2_upgrade's load: HTTP both ways across nodes,
a long-lived TCP flow each way). Every request must succeed and no flow may be cut.

Then, in strict mode, certificates of 90 s renewed under the same load. Both before
the NetworkPolicy enforcer is installed: with kube-router on, a held flow's slowest echo took
0.5-2.1 s during the upgrade to permissive in three runs (no request failed; not diagnosed:
perhaps its iptables rewrites on every pod change, docs/install.md); these tests are about
the mesh, not the enforcer.

Then no way around the mesh (issue 17 part 4), with the enforcer on the cluster (conftest's
``netpol_enforcer``): with ``networkPolicies=true`` a's direct call to a b pod's IP, b-v2's
to b-v1's on their own node, and a's call to b's ClusterIP are refused, while the same call
through the mesh (``b.e2e-b.mesh``) is answered. The same direct calls answered before (the
enforcer alone refuses nothing) and answer again once the mesh is back to ``mtls=off``
without the policies (the controller deletes them): the refusal is the policies' doing.

The test apps are driven through the API server's pod proxy (the API server on the
control-plane node calls each pod), which the mesh's policies refuse like any other direct
caller; while they are on, the module admits it with a policy of its own (docs/security.md:
what else needs one). That policy would isolate the pods by itself, so it exists only while
the mesh's do, and the step that turns them on runs without load. The numbers go to
out/cluster/times.json.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from tests.cluster import kube as k
from tests.cluster.conftest import MESH_NS, NS_A, NS_B, Workloads, _script, record
from tests.cluster.rollout import HeldFlow, Load
from tests.cluster.test_2_upgrade import (
    A_HTTP,
    A_TCP,
    B_HTTP,
    B_TCP,
    check_no_loss,
    grants,
    under_load,
)

__all__ = ["grants"]  # a fixture of test_2_upgrade's, used here

pytestmark = pytest.mark.timeout(900)
SETTLE = 60.0  # seconds a policy change may take to be enforced on every node
EVERYTHING = "app.kubernetes.io/part-of=simmesh"
MESH_B = B_HTTP
# seconds: workload certificates renewed every 45 s while the module runs (a held flow must
# stay under the 120 s a kubectl call through the API server may take: tests/cluster/kube.py)
LIFETIME = 90
MTLS = (f"identity.certificateLifetimeSeconds={LIFETIME}",)
PROXIES = "app.kubernetes.io/name=simmesh-proxy"
CONTROLLER = "app.kubernetes.io/name=simmesh-controller"
CLUSTER_IP_B = f"http://b.{NS_B}.svc.cluster.local:{k.HTTP_PORT}/echo"


def _control_plane_ip(kube: k.Kube) -> str:
    for node in kube.json("get", "nodes")["items"]:
        if "node-role.kubernetes.io/control-plane" in node["metadata"].get("labels", {}):
            for address in node["status"]["addresses"]:
                if address["type"] == "InternalIP":
                    return str(address["address"])
    raise AssertionError("no control-plane node with an InternalIP")


def _admit_api_server(kube: k.Kube) -> list[dict[str, Any]]:
    """The tests' own allow policies: the API server's pod proxy reaches the test apps."""
    cidr = f"{_control_plane_ip(kube)}/32"
    return [
        {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": {"name": "test-admits-the-api-server", "namespace": ns},
            "spec": {
                "podSelector": {},
                "policyTypes": ["Ingress"],
                "ingress": [
                    {
                        "from": [{"ipBlock": {"cidr": cidr}}],
                        "ports": [{"protocol": "TCP", "port": k.HTTP_PORT}],
                    }
                ],
            },
        }
        for ns in (NS_A, NS_B)
    ]


def _deploy(image: str, *values: str) -> None:
    """helm upgrade (deploy.sh: --wait, simmesh prepare, until simmesh check passes)."""
    args = ["--set", "acl=true"]
    for value in values:
        args += ["--set", value]
    _script("deploy.sh", image, *args)


def _outcome(app: k.App, url: str) -> str:
    """``200`` or the error class (``timeout``, ``refused``, ...) of one call."""
    result = app.call(url, timeout=2)["results"][0]
    return str(result["status"] if result["status"] is not None else result["error"])


def _direct_urls(workloads: Workloads) -> dict[str, tuple[k.App, str]]:
    """The direct calls: from a (the other worker) and from b-v2 (b-v1's own worker) to
    b-v1's pod IP, and from a to b's ClusterIP."""
    (b_v1,) = [p for p in workloads.kube.pods(NS_B, "app=b,version=v1")]
    pod_url = f"http://{b_v1['status']['podIP']}:{k.HTTP_PORT}/echo"
    return {
        "a -> b-v1 pod IP (across nodes)": (workloads.a, pod_url),
        "b-v2 -> b-v1 pod IP (same node)": (workloads.b_v2, pod_url),
        "a -> b ClusterIP": (workloads.a, CLUSTER_IP_B),
    }


def _all_become(workloads: Workloads, allowed: bool) -> dict[str, str]:
    """Wait until every direct call answers 200 (``allowed``) or fails; the outcomes."""
    last: dict[str, str] = {}

    def settled() -> bool:
        last.update({n: _outcome(app, url) for n, (app, url) in _direct_urls(workloads).items()})
        return all((o == "200") == allowed for o in last.values())

    try:
        k.wait_for(f"direct calls {'answered' if allowed else 'refused'}", settled, timeout=SETTLE)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; last outcomes: {last}") from None
    return dict(last)


def _mesh_policies(kube: k.Kube) -> dict[str, dict[str, Any]]:
    items = kube.json("get", "networkpolicies", "-A", "-l", "simmesh.io/network-policy=true")
    return {f"{p['metadata']['namespace']}/{p['metadata']['name']}": p for p in items["items"]}


@pytest.fixture(scope="module")
def enforced(workloads: Workloads, netpol_enforcer: str) -> str:
    return netpol_enforcer


@pytest.fixture(scope="module")
def restored(kube: k.Kube, image: str) -> Iterator[list[str]]:
    """The session's mesh back to mTLS off without policies (and without the module's own
    policy) after the module, whatever happened; the tests append each step they took."""
    steps: list[str] = []
    yield steps
    if steps and steps[-1] != "off":
        _deploy(image)
    kube.delete(_admit_api_server(kube))


def _certificates(kube: k.Kube, pod: str) -> dict[str, Any]:
    answer: dict[str, Any] = kube.raw(
        "GET", f"/api/v1/namespaces/{MESH_NS}/pods/{pod}:9901/proxy/certificates"
    )
    return answer


def test_upgrade_off_to_permissive_to_strict_loses_no_request(
    kube: k.Kube, workloads: Workloads, grants: None, image: str, restored: list[str]
) -> None:
    # off -> permissive rolls the controller and the proxies (the tunnel port, the token, the
    # certificates' volume); permissive -> strict is a change of the settings: the controller
    # rolls and the proxies apply the new config as they run
    for mode, rolled in (("permissive", EVERYTHING), ("strict", CONTROLLER)):
        restored.append(mode)
        outcome = under_load(
            workloads,
            f"helm upgrade to mtls={mode}",
            lambda mode=mode: _deploy(image, f"mtls={mode}", *MTLS),
            rolled,
            hold=40.0,
        )
        check_no_loss(outcome, hold=40.0)
    settings = kube.json("get", "configmap", "-n", MESH_NS, "simmesh-settings")["data"]
    assert yaml.safe_load(settings["mesh.yaml"])["mtls"] == "strict", settings
    for pod in kube.pod_names(MESH_NS, PROXIES):
        state = _certificates(kube, pod)
        assert state["mtls"] == "strict" and not state["missing"], state
    assert workloads.a.call(MESH_B, count=5)["summary"]["statuses"] == {"200": 5}


def test_certificates_rotate_under_load_losing_nothing(
    kube: k.Kube, workloads: Workloads, grants: None, restored: list[str]
) -> None:
    """Strict mode, certificates of 90 s renewed at half-life: for a bit more than two
    renewals of every certificate, HTTP both ways across nodes (each request through a tunnel
    whose client certificate changes under it) and a TCP flow held through them each way."""
    if restored[-1:] != ["strict"]:
        pytest.fail("the upgrade to strict did not complete (test above)", pytrace=False)
    proxies = kube.pod_names(MESH_NS, PROXIES)
    before = {pod: _certificates(kube, pod) for pod in proxies}
    hold = LIFETIME + 10.0  # every certificate renewed twice (at half-life)
    a, b = workloads.a, workloads.b_v1
    with Load([(a, B_HTTP), (b, A_HTTP)]) as load:
        flows = [HeldFlow(a, B_TCP, hold).start(), HeldFlow(b, A_TCP, hold).start()]
        results = [flow.wait() for flow in flows]
    after = {pod: _certificates(kube, pod) for pod in proxies}
    renewed = {
        pod: after[pod]["manager"]["renewals"] - before[pod]["manager"]["renewals"]
        for pod in proxies
    }
    outcome = {
        "requests": load.requests,
        "failures": dict(load.failures),
        "flows": [{key: v for key, v in r.items() if key != "reply"} for r in results],
        "renewals": renewed,
        "report": load.report(),
    }
    print(f"\nrotation under load: {outcome}")
    record("rotation: requests (count)", load.requests)
    record("rotation: failed requests (count)", sum(load.failures.values()))
    record("rotation: renewals (count)", sum(renewed.values()))
    check_no_loss(outcome, hold=hold)
    for pod in proxies:
        wanted = after[pod]["wanted"]
        assert renewed[pod] >= 2 * len(wanted), (pod, renewed, wanted)
        assert not after[pod]["missing"], after[pod]


def test_direct_calls_answer_under_the_enforcer_alone(
    workloads: Workloads, enforced: str, grants: None
) -> None:
    assert _mesh_policies(workloads.kube) == {}
    outcomes = _all_become(workloads, allowed=True)
    assert set(outcomes.values()) == {"200"}, outcomes


def test_strict_with_policies_refuses_direct_calls_and_answers_through_the_mesh(
    kube: k.Kube, workloads: Workloads, enforced: str, grants: None, image: str, restored: list[str]
) -> None:
    if restored[-1:] != ["strict"]:
        pytest.fail("the upgrade to strict did not complete (test above)", pytrace=False)
    restored.append("strict+policies")
    start = time.monotonic()
    _deploy(image, "mtls=strict", "networkPolicies=true", *MTLS)
    record("strict: helm upgrade with networkPolicies=true", time.monotonic() - start)
    wanted = (f"{NS_B}/simmesh-b", f"{NS_B}/simmesh-b-v1", f"{NS_A}/simmesh-a")
    policies = k.wait_for(
        "the mesh's policies",
        lambda: (p := _mesh_policies(kube)) and all(w in p for w in wanted) and p,
        timeout=60,
    )
    owner = policies[f"{NS_B}/simmesh-b"]["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["name"]) == ("ClusterRole", "simmesh-controller")
    kube.apply(_admit_api_server(kube))  # the test's driver, from here on
    start = time.monotonic()
    outcomes = _all_become(workloads, allowed=False)
    record("strict: direct calls refused after", time.monotonic() - start)
    print(f"\nstrict with the mesh's policies, direct calls: {outcomes}")
    # and the mesh still answers, both ways across nodes (through the tunnels; b -> b is not
    # granted in the session's ACL mode)
    assert workloads.a.call(MESH_B, count=10)["summary"]["statuses"] == {"200": 10}
    assert workloads.b_v2.call(A_HTTP, count=10)["summary"]["statuses"] == {"200": 10}


def test_back_to_off_deletes_the_policies_and_direct_calls_answer_again(
    kube: k.Kube, workloads: Workloads, enforced: str, image: str, restored: list[str]
) -> None:
    restored.append("off")
    _deploy(image)
    k.wait_for("the mesh's policies deleted", lambda: _mesh_policies(kube) == {}, timeout=60)
    kube.delete(_admit_api_server(kube))
    outcomes = _all_become(workloads, allowed=True)
    assert set(outcomes.values()) == {"200"}, outcomes
