"""The node authorizer: a node proxy gets an identity only for a live pod on its own node."""

from __future__ import annotations

from mesh.identity.authorize import LivePod, NodeRequest, Verdict, authorize

WEB_A = LivePod("shop", "web-1", "uid-1", "web", "node-a", "Running")
WEB_B = LivePod("shop", "web-2", "uid-2", "web", "node-b", "Running")
DB_B = LivePod("shop", "db-1", "uid-3", "db", "node-b", "Pending")


def test_a_pod_on_the_node_gets_its_identity() -> None:
    decision = authorize(NodeRequest("node-a", "shop", "web"), [WEB_A, WEB_B])
    assert decision.allowed and decision.pod == "shop/web-1"
    assert authorize(NodeRequest("node-b", "shop", "db"), [DB_B]).allowed  # Pending counts


def test_no_pod_on_the_node_is_refused() -> None:
    decision = authorize(NodeRequest("node-c", "shop", "web"), [WEB_A, WEB_B])
    assert decision.verdict is Verdict.NO_POD_ON_NODE
    assert "node-c" in decision.reason and "node-a, node-b" in decision.reason


def test_a_pod_on_another_node_is_refused() -> None:
    decision = authorize(NodeRequest("node-a", "shop", "db"), [WEB_A, DB_B])
    assert not decision.allowed and decision.verdict is Verdict.NO_POD_ON_NODE
    assert "it has pods on node-b" in decision.reason


def test_same_account_name_in_another_namespace_grants_nothing() -> None:
    other = LivePod("other", "web-9", "uid-9", "web", "node-a", "Running")
    assert not authorize(NodeRequest("node-a", "shop", "web"), [other]).allowed


def test_a_stale_pod_uid_is_refused() -> None:
    assert authorize(NodeRequest("node-a", "shop", "web", pod_uid="uid-1"), [WEB_A]).allowed
    recreated = LivePod("shop", "web-1", "uid-1b", "web", "node-a", "Running")
    decision = authorize(NodeRequest("node-a", "shop", "web", pod_uid="uid-1"), [recreated])
    assert decision.verdict is Verdict.STALE_POD and "uid-1" in decision.reason
    # a UID of the account's pod on another node is stale for this node too
    decision = authorize(NodeRequest("node-a", "shop", "web", pod_uid="uid-2"), [WEB_A, WEB_B])
    assert decision.verdict is Verdict.STALE_POD


def test_a_pod_that_is_gone_or_finished_grants_nothing() -> None:
    assert not authorize(NodeRequest("node-a", "shop", "web"), []).allowed
    for phase in ("Succeeded", "Failed", "Unknown"):
        done = LivePod("shop", "web-1", "uid-1", "web", "node-a", phase)
        assert not authorize(NodeRequest("node-a", "shop", "web"), [done]).allowed


def test_unscheduled_and_host_network_pods_grant_nothing() -> None:
    unscheduled = LivePod("shop", "web-1", "uid-1", "web", None, "Pending")
    host = LivePod("shop", "web-1", "uid-1", "web", "node-a", "Running", host_network=True)
    assert not authorize(NodeRequest("node-a", "shop", "web"), [unscheduled, host]).allowed


def test_the_config_lists_each_node_s_identities_by_the_same_rule() -> None:
    """settings.mtls.nodes in the MeshConfig (what proxies ask for) uses the authorizer's
    notion of a live pod: what a proxy asks for, it gets."""
    from mesh.core.model import MtlsMode, Pod, Settings
    from mesh.core.topology import node_identities

    pods = [
        Pod("shop", "web-1", "web", ("10.0.0.1",), "node-a", "Running"),
        Pod("shop", "web-2", "web", ("10.0.0.2",), "node-b", "Running"),
        Pod("shop", "db-1", "db", (), "node-b", "Pending"),
        Pod("shop", "old", "batch", (), "node-a", "Succeeded"),
        Pod("shop", "host", "agent", ("192.168.0.1",), "node-a", "Running", host_network=True),
        Pod("kube-system", "dns", "coredns", ("10.0.0.9",), "node-a", "Running"),
    ]
    settings = Settings(mtls=MtlsMode.PERMISSIVE)
    assert node_identities(pods, settings) == {
        "node-a": ["shop/web"],
        "node-b": ["shop/db", "shop/web"],
    }
    for pod in pods:
        live = LivePod(
            pod.namespace, pod.name, "u", pod.service_account, pod.node, pod.phase, pod.host_network
        )
        assert live.live == pod.holds_identity
