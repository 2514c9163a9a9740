"""Who may grant, and who is who: TrafficTargets grant only within their own namespace, and only
running pod-network pods give their IP an identity."""

from __future__ import annotations

from typing import Any

from mesh.core.model import Settings
from mesh.core.parse import parse_objects
from mesh.core.routing import Reason
from tests.core.builders import (
    Client,
    app,
    compile_docs,
    error_texts,
    pod,
    port_route,
    rule,
    traffic_target,
    wire,
)

ACL = Settings(acl=True)


def world(*extra: dict[str, Any]) -> list[dict[str, Any]]:
    """demo/b (pod 10.2.0.1) is called by demo/a (10.1.0.1) and attacker/x (10.9.0.1)."""
    return [
        *app("a", ips=["10.1.0.1"]),
        *app("b", ips=["10.2.0.1"]),
        pod("x-0", sa="x", ip="10.9.0.1", ns="attacker"),
        *extra,
    ]


def grant_b(ns: str, sources: list[dict[str, Any]] | list[str]) -> list[dict[str, Any]]:
    """A TrafficTarget in ``ns`` granting demo/b to ``sources``, with a TCPRoute there."""
    target = traffic_target("to-b", dest="b", sources=[], rules=[rule("TCPRoute", "all")], ns=ns)
    target["spec"]["sources"] = [
        s if isinstance(s, dict) else {"kind": "ServiceAccount", "name": s, "namespace": ns}
        for s in sources
    ]
    target["spec"]["destination"]["namespace"] = "demo"
    return [port_route("all", {"name": "all", "ports": []}, ns=ns), target]


def verdict(config: Any, source_ip: str) -> Reason:
    client = Client(config)
    return client.http("b.demo.mesh", source=client.router.source_identity(source_ip)).reason


# -- who may grant ------------------------------------------------------------------------------


def test_a_traffictarget_in_another_namespace_grants_nothing_and_says_why() -> None:
    config = compile_docs(world(*grant_b("attacker", ["x"])), ACL)
    assert verdict(config, "10.9.0.1") is Reason.NOT_GRANTED
    assert any(
        "TrafficTarget attacker/to-b: spec.destination.namespace: a TrafficTarget may only grant "
        "access to ServiceAccounts of its own namespace (attacker), not demo" in text
        for text in error_texts(config)
    )


def test_the_destinations_namespace_may_grant_sources_of_any_namespace() -> None:
    source = {"kind": "ServiceAccount", "name": "x", "namespace": "attacker"}
    config = compile_docs(world(*grant_b("demo", [source])), ACL)
    assert verdict(config, "10.9.0.1") is Reason.ALLOWED
    assert verdict(config, "10.1.0.1") is Reason.NOT_GRANTED
    assert error_texts(config) == []


def test_an_access_admin_namespace_may_grant_any_namespace() -> None:
    admin = Settings(acl=True, access_admin_namespaces=("attacker",))
    config = compile_docs(world(*grant_b("attacker", ["x"])), admin)
    assert verdict(config, "10.9.0.1") is Reason.ALLOWED


def test_access_admin_namespaces_is_a_setting() -> None:
    from mesh.core.parse import parse_settings

    assert parse_settings({"accessAdminNamespaces": ["platform"]}).access_admin_namespaces == (
        "platform",
    )


# -- who is who ---------------------------------------------------------------------------------


def with_status(doc: dict[str, Any], **fields: Any) -> dict[str, Any]:
    doc = dict(doc)
    doc["status"] = {**doc["status"], **{k: v for k, v in fields.items() if k != "hostNetwork"}}
    if "hostNetwork" in fields:
        doc["spec"] = {**doc["spec"], "hostNetwork": fields["hostNetwork"]}
    return doc


def granted_world(*pods: dict[str, Any]) -> list[dict[str, Any]]:
    return [*app("b", ips=["10.2.0.1"]), *grant_b("demo", ["a"]), *pods]


def test_a_finished_pod_gives_no_identity_and_cannot_shadow_the_running_one() -> None:
    finished = with_status(pod("a-old", sa="a", ip="10.1.0.1"), phase="Succeeded")
    running = pod("other-0", sa="other", ip="10.1.0.1")
    config = compile_docs(granted_world(finished, running), ACL)
    assert wire(config)["identities"]["10.1.0.1"] == "demo/other"
    assert verdict(config, "10.1.0.1") is Reason.NOT_GRANTED
    # The other way round: the finished pod held the granted identity; the IP is not its now.
    stale = with_status(pod("a-old", sa="a", ip="10.1.0.7"), phase="Failed")
    config = compile_docs(granted_world(stale), ACL)
    assert "10.1.0.7" not in wire(config)["identities"]
    assert verdict(config, "10.1.0.7") is Reason.NO_IDENTITY


def test_pending_and_unknown_pods_give_no_identity() -> None:
    for phase in ("Pending", "Unknown"):
        config = compile_docs(
            granted_world(with_status(pod("a-0", sa="a", ip="10.1.0.1"), phase=phase)), ACL
        )
        assert "10.1.0.1" not in wire(config)["identities"], phase


def test_a_host_network_pod_gives_the_node_ip_no_identity() -> None:
    node_ip = "192.168.0.10"
    host = with_status(pod("agent", sa="a", ip=node_ip), hostNetwork=True)
    config = compile_docs(granted_world(host), ACL)
    assert node_ip not in wire(config)["identities"]
    assert verdict(config, node_ip) is Reason.NO_IDENTITY
    assert error_texts(config) == []


def test_two_running_pods_of_different_identities_on_one_ip_are_reported_and_denied() -> None:
    first = pod("a-0", sa="a", ip="10.1.0.1")
    second = pod("c-0", sa="c", ip="10.1.0.1")
    config = compile_docs(granted_world(first, second), ACL)
    assert "10.1.0.1" not in wire(config)["identities"]
    assert verdict(config, "10.1.0.1") is Reason.NO_IDENTITY
    errors = [t for t in error_texts(config) if "claimed by running pods" in t]
    assert len(errors) == 2
    assert errors[0].startswith("Pod demo/a-0: status.podIPs: 10.1.0.1 is claimed")
    assert "Pod demo/a-0 (demo/a), Pod demo/c-0 (demo/c)" in errors[0]


def test_a_running_pod_replacing_a_finished_one_on_its_ip_gets_the_identity() -> None:
    done = with_status(pod("c-old", sa="c", ip="10.1.0.1"), phase="Succeeded")
    config = compile_docs(granted_world(done, pod("a-0", sa="a", ip="10.1.0.1")), ACL)
    assert wire(config)["identities"]["10.1.0.1"] == "demo/a"
    assert verdict(config, "10.1.0.1") is Reason.ALLOWED
    assert error_texts(config) == []


def test_an_endpoint_whose_pod_finished_has_no_identity() -> None:
    docs = [*app("b", ips=["10.2.0.1"])]
    docs = [with_status(d, phase="Failed") if d["kind"] == "Pod" else d for d in docs]
    config = compile_docs(docs, ACL)
    endpoints = wire(config)["clusters"]["demo/b:80"]["endpoints"]
    assert [e["identity"] for e in endpoints] == [None]


def test_a_bad_phase_is_an_error_on_the_pod() -> None:
    doc = with_status(pod("a-0", sa="a", ip="10.1.0.1"), phase="Sleeping")
    state = parse_objects([doc])
    assert [str(e) for e in state.errors] == [
        "Pod demo/a-0: status.phase: expected one of Failed, Pending, Running, Succeeded, "
        "Unknown, got 'Sleeping'"
    ]


# -- judging admitted flows again (revocation on reload) ----------------------------------------


def flow_router(*, granted: bool, acl: bool = True, b_ips: tuple[str, ...] = ("10.2.0.1",)) -> Any:
    docs = [*app("a", ips=["10.1.0.1"]), *app("b", ips=list(b_ips))]
    if granted:
        docs += grant_b("demo", ["a"])
    return Client(compile_docs(docs, Settings(acl=acl))).router


def test_readmits_judges_a_flow_by_its_endpoint_and_current_source() -> None:
    admitted = flow_router(granted=True)
    endpoint = admitted.clusters["demo/b:80"].endpoints[0]
    flow = {"cluster": "demo/b:80", "endpoint": endpoint}
    assert admitted.readmits(**flow, source_ip="10.1.0.1") is True
    assert flow_router(granted=False).readmits(**flow, source_ip="10.1.0.1") is False
    assert admitted.readmits(**flow, source_ip="10.9.9.9") is False  # no identity any more
    assert flow_router(granted=False, acl=False).readmits(**flow, source_ip="10.9.9.9") is True


def test_readmits_leaves_flows_it_cannot_judge_to_end_by_themselves() -> None:
    endpoint = flow_router(granted=True).clusters["demo/b:80"].endpoints[0]
    # Every pod of that identity went away (b is now served by another ServiceAccount's pods):
    # nothing says whether the flow's grant still holds, so it ends with its pod.
    docs = [*app("a", ips=["10.1.0.1"]), *app("b", sa="b2", ips=["10.2.0.9"])]
    moved = Client(compile_docs(docs, ACL)).router
    assert moved.readmits(cluster="demo/b:80", endpoint=endpoint, source_ip="10.1.0.1") is True
    assert moved.readmits(cluster="demo/gone:80", endpoint=endpoint, source_ip="10.1.0.1")
    # While pods of that identity remain, the grant is judged: revoked means ended.
    still = flow_router(granted=False, b_ips=("10.2.0.9",))
    assert still.readmits(cluster="demo/b:80", endpoint=endpoint, source_ip="10.1.0.1") is False
