"""GAMMA route status decided by the core: Accepted and ResolvedRefs per Service parentRef
(mesh.core.status.route_statuses), and the merge into a route's status.parents
(merge_parents): other controllers' entries kept, lastTransitionTime kept while a condition
holds, observedGeneration, stale decisions never written."""

from __future__ import annotations

from typing import Any

from mesh.core.model import Settings
from mesh.core.parse import parse_objects
from mesh.core.status import (
    CONTROLLER_NAME,
    RouteStatus,
    merge_parents,
    route_statuses,
)
from mesh.core.topology import build_topology
from tests.core.builders import (
    app,
    backend_ref,
    grpc_route,
    http_route,
    parent,
    service,
)

NS = "demo"


def statuses(*docs: dict[str, Any]) -> dict[tuple[str, str, str], RouteStatus]:
    base = [
        *app("web", ips=["10.0.0.1"], ports=(("http", 80, 8080), ("grpc", 9000, 9000))),
        *app("web-v2", ips=["10.0.2.1"]),
        *app("remote", ns="other", ips=["10.0.3.1"]),
    ]
    state = parse_objects([*base, *docs])
    assert not [e for e in state.errors if e.ref.kind in ("HTTPRoute", "GRPCRoute")]
    return route_statuses(build_topology(state, Settings()))


def conditions(status: RouteStatus, index: int = 0) -> dict[str, tuple[bool, str]]:
    return {c.type: (c.status, c.reason) for c in status.parents[index].conditions}


def only(found: dict[tuple[str, str, str], RouteStatus], name: str) -> RouteStatus:
    return next(s for (_, _, n), s in found.items() if n == name)


def to(*backends: dict[str, Any]) -> dict[str, Any]:
    return {"backendRefs": list(backends)}


def test_a_valid_route_is_accepted_with_resolved_refs() -> None:
    found = statuses(http_route("r", [parent("web", port=80)], [to(backend_ref("web-v2"))]))
    status = found[("HTTPRoute", NS, "r")]
    assert conditions(status) == {
        "Accepted": (True, "Accepted"),
        "ResolvedRefs": (True, "ResolvedRefs"),
    }
    assert "port 80" in status.parents[0].conditions[0].message


def test_generation_is_read_from_the_route() -> None:
    doc = http_route("r", [parent("web")], [to(backend_ref("web-v2"))])
    doc["metadata"]["generation"] = 7
    assert statuses(doc)[("HTTPRoute", NS, "r")].generation == 7


def test_a_missing_parent_service_is_no_matching_parent() -> None:
    status = only(statuses(http_route("r", [parent("nope")], [to(backend_ref("web"))])), "r")
    assert conditions(status)["Accepted"] == (False, "NoMatchingParent")
    assert "nope" in status.parents[0].conditions[0].message


def test_a_missing_parent_port_or_section_is_no_matching_parent() -> None:
    found = statuses(
        http_route("port", [parent("web", port=81)], [to(backend_ref("web"))]),
        http_route("section", [parent("web", section="nope")], [to(backend_ref("web"))]),
    )
    assert conditions(only(found, "port"))["Accepted"] == (False, "NoMatchingParent")
    assert conditions(only(found, "section"))["Accepted"] == (False, "NoMatchingParent")


def test_a_tcp_or_headless_parent_is_an_unsupported_value() -> None:
    tcp = service("db", annotations={"simmesh.io/traffic-type": "tcp"})
    headless = service("hl", ip="None")
    found = statuses(
        tcp,
        headless,
        http_route("to-tcp", [parent("db")], [to(backend_ref("web"))]),
        http_route("to-headless", [parent("hl")], [to(backend_ref("web"))]),
    )
    assert conditions(only(found, "to-tcp"))["Accepted"] == (False, "UnsupportedValue")
    assert conditions(only(found, "to-headless"))["Accepted"] == (False, "UnsupportedValue")


def test_each_parent_has_its_own_entry() -> None:
    found = statuses(
        http_route("r", [parent("web", port=80), parent("nope")], [to(backend_ref("web-v2"))])
    )
    status = only(found, "r")
    assert [p.parent.name for p in status.parents] == ["web", "nope"]
    assert conditions(status, 0)["Accepted"] == (True, "Accepted")
    assert conditions(status, 1)["Accepted"] == (False, "NoMatchingParent")


def test_a_missing_backend_is_backend_not_found_and_still_accepted() -> None:
    found = statuses(
        http_route("svc", [parent("web")], [to(backend_ref("nope"))]),
        http_route("port", [parent("web")], [to(backend_ref("web-v2", 81))]),
    )
    for name in ("svc", "port"):
        status = only(found, name)
        assert conditions(status) == {
            "Accepted": (True, "Accepted"),
            "ResolvedRefs": (False, "BackendNotFound"),
        }
    assert "nope" in only(found, "svc").parents[0].conditions[1].message


def test_a_backend_of_another_kind_is_invalid_kind() -> None:
    ref = backend_ref("bucket", group="storage.example.com", kind="Bucket")
    status = only(statuses(http_route("r", [parent("web")], [to(ref)])), "r")
    assert conditions(status)["ResolvedRefs"] == (False, "InvalidKind")


def test_a_tcp_backend_is_an_unsupported_protocol() -> None:
    db = service("db", annotations={"simmesh.io/traffic-type": "tcp"})
    status = only(statuses(db, http_route("r", [parent("web")], [to(backend_ref("db"))])), "r")
    assert conditions(status)["ResolvedRefs"] == (False, "UnsupportedProtocol")


def test_an_unresolved_mirror_counts_against_resolved_refs() -> None:
    mirror = {
        "type": "RequestMirror",
        "requestMirror": {"backendRef": {"name": "gone", "port": 80}},
    }
    rule = {"filters": [mirror], "backendRefs": [backend_ref("web-v2")]}
    status = only(statuses(http_route("r", [parent("web")], [rule])), "r")
    assert conditions(status)["ResolvedRefs"] == (False, "BackendNotFound")


def test_a_backend_in_another_namespace_resolves() -> None:
    """Mesh routes need no ReferenceGrant (GEP-1294): never RefNotPermitted."""
    status = only(
        statuses(http_route("r", [parent("web")], [to(backend_ref("remote", ns="other"))])), "r"
    )
    assert conditions(status)["ResolvedRefs"] == (True, "ResolvedRefs")


def test_the_http_route_loses_a_conflict_with_a_grpc_route() -> None:
    found = statuses(
        http_route("h", [parent("web", port=9000)], [to(backend_ref("web-v2"))]),
        grpc_route("g", [parent("web", port=9000)], [to(backend_ref("web", 9000))]),
    )
    assert conditions(found[("HTTPRoute", NS, "h")])["Accepted"] == (False, "Conflicted")
    assert conditions(found[("GRPCRoute", NS, "g")])["Accepted"] == (True, "Accepted")


def test_losing_on_some_ports_only_is_still_accepted() -> None:
    found = statuses(
        http_route("h", [parent("web")], [to(backend_ref("web-v2"))]),  # every port
        grpc_route("g", [parent("web", port=9000)], [to(backend_ref("web", 9000))]),
    )
    accepted = found[("HTTPRoute", NS, "h")].parents[0].conditions[0]
    assert (accepted.status, accepted.reason) == (True, "Accepted")
    assert "not used on port 9000" in accepted.message


def test_a_consumer_route_is_accepted() -> None:
    found = statuses(
        http_route("c", [parent("web", ns=NS)], [to(backend_ref("web-v2", ns=NS))], ns="other")
    )
    assert conditions(found[("HTTPRoute", "other", "c")])["Accepted"] == (True, "Accepted")


def test_routes_without_a_service_parent_get_no_status() -> None:
    gateway_parent = {"name": "gw"}  # a Gateway (the default kind): not the mesh's
    assert statuses(http_route("north", [gateway_parent], [to(backend_ref("web"))])) == {}


def rejected_statuses(*docs: dict[str, Any]) -> dict[tuple[str, str, str], RouteStatus]:
    state = parse_objects([*app("web", ips=["10.0.0.1"]), *docs])
    return route_statuses(build_topology(state, Settings()))


def test_a_route_rejected_as_a_whole_says_why_on_each_service_parent() -> None:
    rule = {"matches": [{"path": {"type": "RegularExpression", "value": "/(a)\\1"}}]}
    doc = http_route("bad", [parent("web", port=80), parent("nope")], [rule])
    doc["metadata"]["generation"] = 3
    state = parse_objects([*app("web", ips=["10.0.0.1"]), doc])
    assert [e.ref.name for e in state.errors] == ["bad"]  # the error is still reported
    status = route_statuses(build_topology(state, Settings()))[("HTTPRoute", NS, "bad")]
    assert status.generation == 3
    assert [p.parent.name for p in status.parents] == ["web", "nope"]
    for entry in status.parents:
        (condition,) = entry.conditions  # no ResolvedRefs: nothing was resolved
        assert (condition.type, condition.status, condition.reason) == (
            "Accepted",
            False,
            "UnsupportedValue",
        )
        assert condition.message.startswith("spec.rules[0].matches[0].path.value: ")
        assert "RE2" in condition.message and condition.message.endswith("the route is not used")


def test_a_rejected_route_without_readable_service_parents_gets_no_status() -> None:
    bad = {"matches": [{"path": {"type": "RegularExpression", "value": "/(a)\\1"}}]}
    gateway_only = http_route("north", [{"name": "gw"}], [bad])
    broken_parent = http_route("parentless", [{"kind": "Service", "group": "", "name": "NO"}], [])
    assert rejected_statuses(gateway_only, broken_parent) == {}


def test_a_rejected_route_in_an_unwatched_namespace_gets_no_status() -> None:
    bad = {"matches": [{"path": {"type": "RegularExpression", "value": "/(a)\\1"}}]}
    state = parse_objects(
        [*app("web", ips=["10.0.0.1"]), http_route("bad", [parent("web")], [bad])]
    )
    settings = Settings(ignore_namespaces=(NS,))
    assert route_statuses(build_topology(state, settings)) == {}


# -- merging into status.parents ----------------------------------------------------------------

NOW = "2026-01-02T03:04:05Z"
LATER = "2026-01-02T04:00:00Z"


def status_of(*docs: dict[str, Any]) -> RouteStatus:
    return next(iter(statuses(*docs).values()))


VALID = http_route("r", [parent("web", port=80)], [to(backend_ref("web-v2"))])
BROKEN = http_route("r", [parent("web", port=80)], [to(backend_ref("nope"))])
OTHER = {
    "parentRef": {"name": "gw", "group": "gateway.networking.k8s.io", "kind": "Gateway"},
    "controllerName": "example.net/gateway-controller",
    "conditions": [{"type": "Accepted", "status": "True", "reason": "Accepted"}],
}


def merge(current: list[dict[str, Any]], status: RouteStatus | None, now: str = NOW) -> Any:
    return merge_parents(current, status, controller_name=CONTROLLER_NAME, now=now)


def test_a_first_write_keeps_other_controllers_entries() -> None:
    parents = merge([OTHER], status_of(VALID))
    assert parents[0] == OTHER
    ours = parents[1]
    assert ours["controllerName"] == CONTROLLER_NAME
    assert ours["parentRef"] == {"group": "", "kind": "Service", "name": "web", "port": 80}
    assert [(c["type"], c["status"], c["lastTransitionTime"]) for c in ours["conditions"]] == [
        ("Accepted", "True", NOW),
        ("ResolvedRefs", "True", NOW),
    ]


def test_nothing_to_write_when_nothing_changed() -> None:
    parents = merge([OTHER], status_of(VALID))
    assert merge(parents, status_of(VALID), LATER) is None


def test_a_transition_changes_only_that_conditions_time() -> None:
    before = merge([], status_of(VALID))
    after = merge(before, status_of(BROKEN), LATER)
    accepted, resolved = after[0]["conditions"]
    assert accepted["lastTransitionTime"] == NOW and accepted["status"] == "True"
    assert resolved["lastTransitionTime"] == LATER and resolved["reason"] == "BackendNotFound"


def test_a_new_generation_is_written_though_the_conditions_hold() -> None:
    doc = http_route("r", [parent("web", port=80)], [to(backend_ref("web-v2"))])
    doc["metadata"]["generation"] = 1
    before = merge([], status_of(doc))
    doc["metadata"]["generation"] = 2
    after = merge(before, status_of(doc), LATER)
    assert [c["observedGeneration"] for c in after[0]["conditions"]] == [2, 2]
    assert [c["lastTransitionTime"] for c in after[0]["conditions"]] == [NOW, NOW]


def test_a_decision_from_an_older_generation_is_not_written() -> None:
    doc = http_route("r", [parent("web", port=80)], [to(backend_ref("web-v2"))])
    doc["metadata"]["generation"] = 5
    newer = merge([], status_of(doc))
    doc["metadata"]["generation"] = 4
    assert merge(newer, status_of(BROKEN | {"metadata": doc["metadata"]})) is None


def test_our_entries_go_when_the_route_has_no_service_parent_any_more() -> None:
    parents = merge([OTHER], status_of(VALID))
    assert merge(parents, None) == [OTHER]
    assert merge([OTHER], None) is None


def test_an_entry_for_a_parent_no_longer_named_goes_and_others_keep_their_place() -> None:
    two = http_route("r", [parent("web", port=80), parent("web-v2")], [to(backend_ref("web"))])
    parents = merge([], status_of(two))
    parents.insert(1, OTHER)
    after = merge(parents, status_of(VALID), LATER)
    assert [p["parentRef"]["name"] for p in after] == ["web", "gw"]


def test_nothing_is_kept_of_other_rejected_objects() -> None:
    from mesh.core.errors import InvalidObject
    from mesh.core.parse import rejected_value

    error = InvalidObject("spec", "bad")
    route = http_route("r", [parent("web")], [])
    assert rejected_value(route, error) is not None
    for doc in (
        {**route, "kind": ["HTTPRoute"]},  # unhashable kinds are not looked up
        {**route, "kind": {"a": 1}},
        {**route, "apiVersion": "split.smi-spec.io/v1alpha4"},
        {**route, "kind": "TrafficSplit"},
        ["not", "a", "mapping"],
        None,
    ):
        assert rejected_value(doc, error) is None
