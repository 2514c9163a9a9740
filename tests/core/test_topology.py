"""build_topology: endpoints and identities, meshed services, grants and validated splits."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from mesh.core.model import Settings, TrafficType
from mesh.core.parse import parse_objects
from mesh.core.topology import Topology, build_topology
from tests.core.builders import (
    app,
    endpoint,
    endpoint_slice,
    http_match,
    pod,
    port_route,
    route_group,
    rule,
    service,
    traffic_split,
    traffic_target,
)


def topo(docs: list[Any], settings: Settings | None = None) -> Topology:
    return build_topology(parse_objects(docs), settings or Settings())


def error_fields(topology: Topology) -> list[tuple[str, str, str]]:
    return sorted((e.ref.kind, e.ref.name, e.field) for e in topology.errors)


def test_endpoints_come_from_slices_by_port_name_and_target_ports_resolve_per_slice() -> None:
    docs = [
        service("web", ports=[("http", 80, "http"), ("admin", 9000, 9001)]),
        endpoint_slice(
            "web", [endpoint("10.0.0.1")], ports=[("http", 8080), ("admin", 9001)], name="s1"
        ),
        endpoint_slice("web", [endpoint("10.0.0.2")], ports=[("http", 8081)], name="s2"),
        endpoint_slice("other", [endpoint("10.0.0.9")], ports=[("http", 8080)], name="s3"),
    ]
    web = topo(docs).services["demo/web"]
    http, admin = web.ports
    assert [(e.ip, e.port) for e in http.endpoints] == [("10.0.0.1", 8080), ("10.0.0.2", 8081)]
    assert [(e.ip, e.port) for e in admin.endpoints] == [("10.0.0.1", 9001)]


def test_only_ready_endpoints_are_used() -> None:
    docs = app("web", ips=["10.0.0.1", "10.0.0.2", "10.0.0.3"], ready=[True, False, True])
    docs[1]["endpoints"][2].pop("conditions")  # missing condition: ready
    endpoints = topo(docs).services["demo/web"].ports[0].endpoints
    assert [e.ip for e in endpoints] == ["10.0.0.1", "10.0.0.3"]


def test_identity_by_target_ref_then_by_pod_ip_and_none_for_shared_ips() -> None:
    docs = [
        service("web"),
        endpoint_slice(
            "web",
            [
                endpoint("10.0.0.1", pod="by-ref"),  # targetRef wins over the IP owner
                endpoint("10.0.0.2"),  # found by pod IP
                endpoint("192.168.0.1"),  # host network: two identities share the IP
                endpoint("10.0.0.9"),  # no pod at all
            ],
        ),
        pod("by-ref", sa="ref-sa", ip="10.9.9.9"),
        pod("ip-owner", sa="ip-sa", ip="10.0.0.1"),
        pod("by-ip", sa="web", ip="10.0.0.2"),
        pod("host-a", sa="agent", ip="192.168.0.1"),
        pod("host-b", sa="logger", ip="192.168.0.1"),
    ]
    topology = topo(docs)
    endpoints = topology.services["demo/web"].ports[0].endpoints
    assert [(e.ip, e.identity) for e in endpoints] == [
        ("10.0.0.1", "demo/ref-sa"),
        ("10.0.0.2", "demo/web"),
        ("10.0.0.9", None),
        ("192.168.0.1", None),
    ]
    assert "192.168.0.1" not in topology.identities
    assert topology.identities["10.0.0.2"] == "demo/web"


@pytest.mark.parametrize(
    ("doc", "settings"),
    [
        (service("ext", type_="ExternalName"), Settings()),
        (service("dns", ns="kube-system"), Settings()),
        (service("kubernetes", ns="default"), Settings()),
        (service("ctl", ns="simmesh"), Settings()),
        (service("ctl", ns="mesh-system"), Settings(mesh_namespace="mesh-system")),
        (service("web", ns="other"), Settings(watch_namespaces=("demo", "kept"))),
        (service("web", ns="demo"), Settings(ignore_namespaces=("demo",))),
    ],
)
def test_ignored_services(doc: dict[str, Any], settings: Settings) -> None:
    assert topo([doc, service("kept", ns="kept")], settings).services.keys() == {"kept/kept"}


def test_annotation_errors_are_attached_to_the_service() -> None:
    topology = topo([service("web", annotations={"simmesh.io/traffic-type": "grpc"})])
    assert "demo/web" in topology.services
    assert error_fields(topology) == [
        ("Service", "web", "metadata.annotations[simmesh.io/traffic-type]")
    ]


# -- grants ------------------------------------------------------------------------------------


def grants_docs(rules: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        route_group("g", [http_match("api", path="/api"), http_match("health", path="/health")]),
        port_route("db", {"name": "pg", "ports": [5432]}),
        port_route("dns", [{"name": "a", "ports": [53]}], kind="UDPRoute"),
        traffic_target("tt", dest="b", sources=["a", "c"], rules=rules),
    ]


def test_rule_without_matches_grants_every_match() -> None:
    topology = topo(grants_docs([rule("HTTPRouteGroup", "g")]))
    assert [(g.route, g.match.name if g.match else None) for g in topology.grants] == [
        ("g", "api"),
        ("g", "health"),
    ]
    grant = topology.grants[0]
    assert (grant.target, grant.destination, grant.sources) == (
        "demo/tt",
        "demo/b",
        ("demo/a", "demo/c"),
    )


def test_rule_with_matches_grants_only_those() -> None:
    topology = topo(grants_docs([rule("HTTPRouteGroup", "g", ["health"])]))
    assert [g.match.name for g in topology.grants if g.match] == ["health"]


def test_port_route_grants_carry_ports() -> None:
    topology = topo(grants_docs([rule("TCPRoute", "db"), rule("UDPRoute", "dns", ["a"])]))
    assert [(g.kind, g.match, g.ports) for g in topology.grants] == [
        ("TCPRoute", None, (5432,)),
        ("UDPRoute", None, (53,)),
    ]


def test_missing_route_or_match_is_an_error_for_that_rule_only() -> None:
    topology = topo(
        grants_docs(
            [
                rule("HTTPRouteGroup", "missing"),
                rule("HTTPRouteGroup", "g", ["nope", "api"]),
                rule("TCPRoute", "nope"),
                rule("UDPRoute", "dns"),
            ]
        )
    )
    assert [(g.kind, g.route) for g in topology.grants] == [
        ("HTTPRouteGroup", "g"),
        ("UDPRoute", "dns"),
    ]
    assert error_fields(topology) == [
        ("TrafficTarget", "tt", "spec.rules[0].name"),
        ("TrafficTarget", "tt", "spec.rules[1].matches[0]"),
        ("TrafficTarget", "tt", "spec.rules[2].name"),
    ]


def test_routes_are_looked_up_in_the_traffic_target_namespace() -> None:
    docs = grants_docs([rule("HTTPRouteGroup", "g")])
    docs[-1]["metadata"]["namespace"] = "elsewhere"
    docs[-1]["spec"]["destination"]["namespace"] = "elsewhere"
    topology = topo(docs)
    assert topology.grants == []
    assert error_fields(topology) == [("TrafficTarget", "tt", "spec.rules[0].name")]


def test_traffic_targets_in_unwatched_namespaces_grant_nothing() -> None:
    docs = grants_docs([rule("HTTPRouteGroup", "g")])
    assert topo(docs, Settings(ignore_namespaces=("demo",))).grants == []


# -- splits ------------------------------------------------------------------------------------


def split_world(*extra: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        *app("root", ips=["10.0.0.1"]),
        *app("v1", ips=["10.0.1.1"]),
        *app("v2", ips=["10.0.2.1"]),
        *extra,
    ]


def test_valid_split() -> None:
    topology = topo(split_world(traffic_split("s", "root", [("v1", 3), ("v2", 1)])))
    split = topology.splits["demo/root"]
    assert (split.name, split.backends, split.matches, split.missing_ports) == (
        "s",
        (("demo/v1", 3), ("demo/v2", 1)),
        (),
        (),
    )
    assert topology.errors == []


def test_split_backend_errors() -> None:
    docs = split_world(
        service("tcp-one", annotations={"simmesh.io/traffic-type": "tcp"}),
        service("other-port", ports=[("http", 81, 8080)]),
        traffic_split("s", "root", [("v1", 1), ("missing", 1), ("tcp-one", 1), ("other-port", 1)]),
    )
    topology = topo(docs)
    split = topology.splits["demo/root"]
    assert split.backends == (("demo/v1", 1), ("demo/other-port", 1))
    assert split.missing_ports == (("demo/other-port", 80),)
    assert error_fields(topology) == [
        ("TrafficSplit", "s", "spec.backends[1].service"),
        ("TrafficSplit", "s", "spec.backends[2].service"),
        ("TrafficSplit", "s", "spec.backends[3].service"),
    ]


def test_split_on_a_missing_root() -> None:
    topology = topo(split_world(traffic_split("s", "nope", [("v1", 1)])))
    assert topology.splits == {}
    assert error_fields(topology) == [("TrafficSplit", "s", "spec.service")]


def test_split_matches_resolve_route_groups() -> None:
    docs = split_world(
        route_group("canary", [http_match("c", headers={"x-canary": "1"})]),
        traffic_split("s", "root", [("v1", 1)], matches=["canary", "missing"]),
    )
    topology = topo(docs)
    assert [m.name for m in topology.splits["demo/root"].matches] == ["c"]
    assert error_fields(topology) == [("TrafficSplit", "s", "spec.matches[1].name")]


def test_split_with_only_unknown_matches_splits_nothing() -> None:
    topology = topo(split_world(traffic_split("s", "root", [("v1", 1)], matches=["missing"])))
    assert topology.splits == {}
    assert ("TrafficSplit", "s", "spec.matches") in error_fields(topology)


def test_nested_split_is_reported() -> None:
    docs = split_world(
        traffic_split("outer", "root", [("v1", 1)]),
        traffic_split("inner", "v1", [("v2", 1)]),
    )
    topology = topo(docs)
    assert set(topology.splits) == {"demo/root", "demo/v1"}
    messages = [e.message for e in topology.errors]
    assert len(messages) == 1
    assert "is itself split by TrafficSplit demo/inner" in messages[0]


def test_tcp_settings_default_applies_to_topology() -> None:
    topology = topo(
        app("db", ips=["10.0.0.1"]), replace(Settings(), default_traffic_type=TrafficType.UDP)
    )
    assert topology.services["demo/db"].options.traffic_type is TrafficType.UDP
