"""kube-dns stubDomains edits (restored exactly) and the mesh-owned CoreDNS objects."""

from __future__ import annotations

import json

import pytest

from mesh.core.shadow import MANAGED_BY
from mesh.dns import corefile as cf
from mesh.dns import kubedns as kd

IP = "10.96.0.53"
HAND_WRITTEN = '{ "acme.local" : ["1.2.3.4"] }\n'
GKE = kd.ConfigMapParts(
    {"stubDomains": HAND_WRITTEN, "upstreamNameservers": '["8.8.8.8"]'},
    {"addonmanager.kubernetes.io/mode": "EnsureExists"},
)
WITHOUT_STUBS = kd.ConfigMapParts({"upstreamNameservers": '["8.8.8.8"]'}, {})
EMPTY_OBJECT = kd.ConfigMapParts({"stubDomains": "{}"}, {})
SHAPES = pytest.mark.parametrize(
    "original", [GKE, WITHOUT_STUBS, EMPTY_OBJECT, kd.ConfigMapParts()], ids=str
)


def prepared(parts: kd.ConfigMapParts | None, ip: str = IP) -> kd.ConfigMapParts:
    return kd.prepare_kubedns(parts, zone="mesh", server_ip=ip)


def stubs(parts: kd.ConfigMapParts) -> dict[str, list[str]]:
    return dict(json.loads(parts.data["stubDomains"]))


@SHAPES
def test_prepare_delegates_the_zone_and_keeps_the_rest(original: kd.ConfigMapParts) -> None:
    after = prepared(original)
    assert stubs(after)["mesh"] == [IP]
    assert {k: v for k, v in stubs(after).items() if k != "mesh"} == (
        json.loads(original.data["stubDomains"]) if "stubDomains" in original.data else {}
    )
    assert {k: v for k, v in after.data.items() if k != "stubDomains"} == {
        k: v for k, v in original.data.items() if k != "stubDomains"
    }
    assert kd.kubedns_state(after, zone="mesh", server_ip=IP) is cf.BlockState.CURRENT


@SHAPES
def test_cleanup_restores_exactly(original: kd.ConfigMapParts) -> None:
    assert kd.cleanup_kubedns(prepared(original)) == original


@SHAPES
def test_prepare_twice_equals_once(original: kd.ConfigMapParts) -> None:
    once = prepared(original)
    assert prepared(once) == once


def test_a_new_service_ip_replaces_the_old_one() -> None:
    moved = prepared(prepared(GKE), ip="10.96.0.99")
    assert stubs(moved)["mesh"] == ["10.96.0.99"]
    assert kd.kubedns_state(moved, zone="mesh", server_ip=IP) is cf.BlockState.STALE
    assert kd.cleanup_kubedns(moved) == GKE


def test_a_missing_configmap_is_created_and_deleted_again() -> None:
    created = prepared(None)
    assert stubs(created) == {"mesh": [IP]}
    assert json.loads(created.annotations[kd.ORIGINAL_ANNOTATION])["created"] is True
    assert kd.cleanup_kubedns(created) is None
    assert prepared(created) == created


def test_a_created_configmap_someone_added_to_is_kept() -> None:
    created = prepared(None)
    grown = kd.ConfigMapParts({**created.data, "upstreamNameservers": "[]"}, created.annotations)
    assert kd.cleanup_kubedns(grown) == kd.ConfigMapParts({"upstreamNameservers": "[]"}, {})


def test_edits_after_prepare_are_kept_by_cleanup() -> None:
    after = prepared(GKE)
    edited_value = json.dumps({**stubs(after), "corp.local": ["10.1.1.1"]})
    edited = kd.ConfigMapParts({**after.data, "stubDomains": edited_value}, after.annotations)
    restored = kd.cleanup_kubedns(edited)
    assert restored is not None
    assert stubs(restored) == {"acme.local": ["1.2.3.4"], "corp.local": ["10.1.1.1"]}
    assert kd.ORIGINAL_ANNOTATION not in restored.annotations


def test_the_mesh_zone_removed_by_hand_leaves_their_text_alone() -> None:
    after = prepared(GKE)
    by_hand = '{"acme.local": ["1.2.3.4"], "x.local": ["9.9.9.9"]}'
    edited = kd.ConfigMapParts({**after.data, "stubDomains": by_hand}, after.annotations)
    restored = kd.cleanup_kubedns(edited)
    assert restored is not None and restored.data["stubDomains"] == by_hand


def test_cleanup_without_prepare_is_a_no_op() -> None:
    assert kd.cleanup_kubedns(GKE) == GKE
    assert kd.kubedns_state(GKE, zone="mesh", server_ip=IP) is cf.BlockState.ABSENT
    assert kd.kubedns_state(None, zone="mesh", server_ip=IP) is cf.BlockState.ABSENT


def test_someone_elses_mesh_zone_is_refused() -> None:
    theirs = kd.ConfigMapParts({"stubDomains": '{"mesh": ["10.0.0.1"]}'}, {})
    with pytest.raises(kd.KubeDnsError, match=r"zone 'mesh' is already delegated"):
        prepared(theirs)


@pytest.mark.parametrize("value", ["{not json", '["a"]', '{"a": "1.2.3.4"}'])
def test_bad_stub_domains_are_reported_with_the_field(value: str) -> None:
    with pytest.raises(kd.KubeDnsError, match=r"^data\.stubDomains: expected"):
        prepared(kd.ConfigMapParts({"stubDomains": value}, {}))


def test_a_mangled_annotation_is_reported() -> None:
    mangled = kd.ConfigMapParts({}, {kd.ORIGINAL_ANNOTATION: "{"})
    with pytest.raises(kd.KubeDnsError, match=kd.ORIGINAL_ANNOTATION):
        kd.cleanup_kubedns(mangled)


def test_delegated_to() -> None:
    assert kd.delegated_to(prepared(GKE), "mesh") == [IP]
    assert kd.delegated_to(None, "mesh") == []
    assert kd.delegated_to(kd.ConfigMapParts({"stubDomains": "{"}, {}), "mesh") == []


# --------------------------------------------------------------------------- mesh CoreDNS


def test_mesh_coredns_objects() -> None:
    settings = cf.DnsSettings(mesh_namespace="meshns")
    objects = kd.mesh_coredns_manifests(settings, image="coredns:test", replicas=3)
    kinds = [o["kind"] for o in objects]
    assert kinds == [
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "ConfigMap",
        "Service",
        "Deployment",
    ]
    by_kind = {o["kind"]: o for o in objects}
    for obj in objects:
        assert obj["metadata"]["labels"].items() >= MANAGED_BY.items()
        assert obj["metadata"].get("namespace", "meshns") == "meshns"
    dep, svc = by_kind["Deployment"], by_kind["Service"]
    template = dep["spec"]["template"]
    assert svc["spec"]["selector"].items() <= template["metadata"]["labels"].items()
    assert dep["spec"]["selector"]["matchLabels"] == svc["spec"]["selector"]
    assert template["spec"]["containers"][0]["image"] == "coredns:test"
    assert template["spec"]["dnsPolicy"] == "Default"
    assert dep["spec"]["replicas"] == 3
    assert by_kind["ClusterRole"]["metadata"]["name"] == "simmesh-coredns-meshns"
    assert by_kind["ClusterRoleBinding"]["subjects"][0]["namespace"] == "meshns"


def test_mesh_corefile_is_the_zone_block_with_health_and_ready() -> None:
    settings = cf.DnsSettings(mesh_namespace="meshns")
    corefile = kd.mesh_corefile(settings)
    assert corefile.startswith("mesh:53 {\n    errors\n    health :8080\n    ready :8181\n")
    name_rule, answer_rule = cf.rewrite_rules(settings)
    assert name_rule in corefile and answer_rule in corefile
    data = kd.mesh_coredns_manifests(settings)[3]["data"]
    assert data == {"Corefile": corefile}
