"""Malformed objects, table-driven: each becomes one ObjectError naming the object and the field,
and the rest of the config is built as usual (a valid Service alongside still routes)."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from mesh.core.errors import ObjectError
from mesh.core.model import Settings
from mesh.core.parse import parse_objects
from tests.core.builders import (
    Client,
    app,
    compile_docs,
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
    wire,
)


def edit(doc: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """A copy of ``doc`` with the value at a dotted path (list indexes as numbers) replaced;
    ``...`` as the value deletes the key."""
    out = copy.deepcopy(doc)
    parts = path.split(".")
    target: Any = out
    for part in parts[:-1]:
        target = target[int(part)] if isinstance(target, list) else target[part]
    last = parts[-1]
    if value is ...:
        del target[last]
    elif isinstance(target, list):
        target[int(last)] = value
    else:
        target[last] = value
    return out


SVC = service("bad", ports=[("http", 80, 8080)])
SLICE = endpoint_slice("bad", [endpoint("10.5.0.1", pod="p")], name="bad")
POD = pod("bad", sa="sa", ip="10.5.0.1")
NODE = {
    "apiVersion": "v1",
    "kind": "Node",
    "metadata": {"name": "bad"},
    "status": {"addresses": [{"address": "1.2.3.4"}]},
}
TT = traffic_target("bad", dest="b", sources=["a"], rules=[rule("HTTPRouteGroup", "g", ["m"])])
TT1 = traffic_target(
    "bad", dest="b", sources=["a"], rules=[rule("TCPRoute", "t")], version="v1alpha1"
)
HRG = route_group("bad", [http_match("m", path="/api", methods=["GET"], headers={"x-a": "1"})])
HRG1 = route_group("bad", [http_match("m")], version="v1alpha1")
TCP = port_route("bad", {"name": "m", "ports": [5432]})
UDP = port_route("bad", {"name": "m", "ports": [53]}, kind="UDPRoute")
TS = traffic_split("bad", "root", [("v1", 1)], matches=["g"])
TS1 = traffic_split("bad", "root", [("v1", 1)], version="v1alpha1")

# (case id, object, expected (kind, namespace, name), field path substring)
CASES: list[tuple[str, Any, tuple[str, str, str], str]] = [
    (
        "svc-no-name",
        edit(SVC, "metadata.name", ...),
        ("Service", "demo", "<unnamed>"),
        "metadata.name",
    ),
    (
        "svc-bad-name",
        edit(SVC, "metadata.name", "Bad_Name"),
        ("Service", "demo", "Bad_Name"),
        "metadata.name",
    ),
    ("svc-type", edit(SVC, "spec.type", "Magic"), ("Service", "demo", "bad"), "spec.type"),
    (
        "svc-port-zero",
        edit(SVC, "spec.ports.0.port", 0),
        ("Service", "demo", "bad"),
        "spec.ports[0].port",
    ),
    (
        "svc-port-string",
        edit(SVC, "spec.ports.0.port", "80"),
        ("Service", "demo", "bad"),
        "spec.ports[0].port",
    ),
    (
        "svc-target-big",
        edit(SVC, "spec.ports.0.targetPort", 70000),
        ("Service", "demo", "bad"),
        "spec.ports[0].targetPort",
    ),
    (
        "svc-target-zero-text",
        edit(SVC, "spec.ports.0.targetPort", "0"),
        ("Service", "demo", "bad"),
        "spec.ports[0].targetPort",
    ),
    (
        "svc-target-float",
        edit(SVC, "spec.ports.0.targetPort", 80.5),
        ("Service", "demo", "bad"),
        "spec.ports[0].targetPort",
    ),
    (
        "svc-protocol",
        edit(SVC, "spec.ports.0.protocol", "HTTP"),
        ("Service", "demo", "bad"),
        "spec.ports[0].protocol",
    ),
    (
        "svc-dup-ports",
        edit(SVC, "spec.ports", [{"port": 80}, {"port": 80, "name": "x"}]),
        ("Service", "demo", "bad"),
        "spec.ports",
    ),
    (
        "svc-ports-map",
        edit(SVC, "spec.ports", {"port": 80}),
        ("Service", "demo", "bad"),
        "spec.ports",
    ),
    (
        "svc-annotation-int",
        edit(SVC, "metadata.annotations", {"simmesh.io/retry-attempts": 3}),
        ("Service", "demo", "bad"),
        "metadata.annotations.simmesh.io/retry-attempts",
    ),
    ("svc-spec-list", edit(SVC, "spec", [1]), ("Service", "demo", "bad"), "spec"),
    (
        "svc-metadata-text",
        edit(SVC, "metadata", "bad"),
        ("Service", "default", "<unnamed>"),
        "metadata",
    ),
    (
        "svc-namespace-int",
        edit(SVC, "metadata.namespace", 7),
        ("Service", "default", "bad"),
        "metadata.namespace",
    ),
    (
        "slice-no-label",
        edit(SLICE, "metadata.labels", {}),
        ("EndpointSlice", "demo", "bad"),
        "metadata.labels[kubernetes.io/service-name]",
    ),
    (
        "slice-address-type",
        edit(SLICE, "addressType", "IPX"),
        ("EndpointSlice", "demo", "bad"),
        "addressType",
    ),
    (
        "slice-no-addresses",
        edit(SLICE, "endpoints.0.addresses", []),
        ("EndpointSlice", "demo", "bad"),
        "endpoints[0].addresses",
    ),
    (
        "slice-ready-text",
        edit(SLICE, "endpoints.0.conditions.ready", "yes"),
        ("EndpointSlice", "demo", "bad"),
        "endpoints[0].conditions.ready",
    ),
    (
        "slice-port-big",
        edit(SLICE, "ports.0.port", 99999),
        ("EndpointSlice", "demo", "bad"),
        "ports[0].port",
    ),
    (
        "slice-target-ref-name",
        edit(SLICE, "endpoints.0.targetRef.name", 5),
        ("EndpointSlice", "demo", "bad"),
        "endpoints[0].targetRef.name",
    ),
    (
        "pod-sa-int",
        edit(POD, "spec.serviceAccountName", 5),
        ("Pod", "demo", "bad"),
        "spec.serviceAccountName",
    ),
    (
        "pod-ips-text",
        edit(POD, "status.podIPs", ["10.0.0.1"]),
        ("Pod", "demo", "bad"),
        "status.podIPs[0]",
    ),
    (
        "node-address",
        edit(NODE, "status.addresses.0", {"type": "InternalIP"}),
        ("Node", "", "bad"),
        "status.addresses[0].address",
    ),
    (
        "tt-no-destination",
        edit(TT, "spec.destination", ...),
        ("TrafficTarget", "demo", "bad"),
        "spec.destination",
    ),
    (
        "tt-no-sources",
        edit(TT, "spec.sources", []),
        ("TrafficTarget", "demo", "bad"),
        "spec.sources",
    ),
    (
        "tt-source-kind",
        edit(TT, "spec.sources.0.kind", "Group"),
        ("TrafficTarget", "demo", "bad"),
        "spec.sources[0].kind",
    ),
    (
        "tt-dest-no-name",
        edit(TT, "spec.destination.name", ...),
        ("TrafficTarget", "demo", "bad"),
        "spec.destination.name",
    ),
    (
        "tt-rule-no-kind",
        edit(TT, "spec.rules.0.kind", ...),
        ("TrafficTarget", "demo", "bad"),
        "spec.rules[0].kind",
    ),
    (
        "tt-rule-kind",
        edit(TT, "spec.rules.0.kind", "HTTPRoute"),
        ("TrafficTarget", "demo", "bad"),
        "spec.rules[0].kind",
    ),
    (
        "tt-rule-matches-text",
        edit(TT, "spec.rules.0.matches", "m"),
        ("TrafficTarget", "demo", "bad"),
        "spec.rules[0].matches",
    ),
    (
        "tt-rule-match-int",
        edit(TT, "spec.rules.0.matches", [1]),
        ("TrafficTarget", "demo", "bad"),
        "spec.rules[0].matches[0]",
    ),
    ("tt-no-rules", edit(TT, "spec.rules", ...), ("TrafficTarget", "demo", "bad"), "spec.rules"),
    ("tt1-no-specs", edit(TT1, "specs", ...), ("TrafficTarget", "demo", "bad"), "specs"),
    (
        "tt1-spec-kind",
        edit(TT1, "specs.0.kind", "Nope"),
        ("TrafficTarget", "demo", "bad"),
        "specs[0].kind",
    ),
    (
        "hrg-regex",
        edit(HRG, "spec.matches.0.pathRegex", "(unclosed"),
        ("HTTPRouteGroup", "demo", "bad"),
        "spec.matches[0].pathRegex",
    ),
    (
        "hrg-regex-overflow",
        edit(HRG, "spec.matches.0.pathRegex", "a{4294967296}"),
        ("HTTPRouteGroup", "demo", "bad"),
        "spec.matches[0].pathRegex",
    ),
    (
        "hrg-regex-deep",
        edit(HRG, "spec.matches.0.pathRegex", "(" * 1200 + ")" * 1199),
        ("HTTPRouteGroup", "demo", "bad"),
        "spec.matches[0].pathRegex",
    ),
    (
        "hrg-method",
        edit(HRG, "spec.matches.0.methods", ["FETCH"]),
        ("HTTPRouteGroup", "demo", "bad"),
        "spec.matches[0].methods[0]",
    ),
    (
        "hrg-methods-text",
        edit(HRG, "spec.matches.0.methods", "GET"),
        ("HTTPRouteGroup", "demo", "bad"),
        "spec.matches[0].methods",
    ),
    (
        "hrg-header-map-int",
        edit(HRG, "spec.matches.0.headers", {"x-a": 1}),
        ("HTTPRouteGroup", "demo", "bad"),
        "spec.matches[0].headers.x-a",
    ),
    (
        "hrg-header-list-regex",
        edit(HRG, "spec.matches.0.headers", [{"x-a": "["}]),
        ("HTTPRouteGroup", "demo", "bad"),
        "spec.matches[0].headers[0].x-a",
    ),
    (
        "hrg-header-list-text",
        edit(HRG, "spec.matches.0.headers", ["x-a"]),
        ("HTTPRouteGroup", "demo", "bad"),
        "spec.matches[0].headers[0]",
    ),
    (
        "hrg-match-no-name",
        edit(HRG, "spec.matches.0.name", ...),
        ("HTTPRouteGroup", "demo", "bad"),
        "spec.matches[0].name",
    ),
    (
        "hrg-dup-names",
        edit(HRG, "spec.matches", [{"name": "m"}, {"name": "m"}]),
        ("HTTPRouteGroup", "demo", "bad"),
        "spec.matches",
    ),
    (
        "hrg1-matches-map",
        edit(HRG1, "matches", {"name": "m"}),
        ("HTTPRouteGroup", "demo", "bad"),
        "matches",
    ),
    (
        "tcp-port-text",
        edit(TCP, "spec.matches.ports", ["any"]),
        ("TCPRoute", "demo", "bad"),
        "spec.matches.ports[0]",
    ),
    (
        "tcp-port-bool",
        edit(TCP, "spec.matches.ports", [True]),
        ("TCPRoute", "demo", "bad"),
        "spec.matches.ports[0]",
    ),
    (
        "tcp-matches-list-text",
        edit(TCP, "spec.matches", ["m"]),
        ("TCPRoute", "demo", "bad"),
        "spec.matches[0]",
    ),
    (
        "tcp-ports-map",
        edit(TCP, "spec.matches", [{"name": "m", "ports": {"a": 1}}]),
        ("TCPRoute", "demo", "bad"),
        "spec.matches[0].ports",
    ),
    (
        "udp-version",
        edit(UDP, "apiVersion", "specs.smi-spec.io/v1alpha2"),
        ("UDPRoute", "demo", "bad"),
        "apiVersion",
    ),
    (
        "udp-port-big",
        edit(UDP, "spec.matches.ports", [65536]),
        ("UDPRoute", "demo", "bad"),
        "spec.matches.ports[0]",
    ),
    (
        "ts-no-backends",
        edit(TS, "spec.backends", []),
        ("TrafficSplit", "demo", "bad"),
        "spec.backends",
    ),
    (
        "ts-negative",
        edit(TS, "spec.backends.0.weight", -1),
        ("TrafficSplit", "demo", "bad"),
        "spec.backends[0].weight",
    ),
    (
        "ts-weight-missing",
        edit(TS, "spec.backends.0.weight", ...),
        ("TrafficSplit", "demo", "bad"),
        "spec.backends[0].weight",
    ),
    (
        "ts-dup-backend",
        edit(TS, "spec.backends", [{"service": "v1", "weight": 1}] * 2),
        ("TrafficSplit", "demo", "bad"),
        "spec.backends",
    ),
    (
        "ts-backend-no-service",
        edit(TS, "spec.backends.0.service", ...),
        ("TrafficSplit", "demo", "bad"),
        "spec.backends[0].service",
    ),
    ("ts-no-root", edit(TS, "spec.service", ...), ("TrafficSplit", "demo", "bad"), "spec.service"),
    (
        "ts-match-kind",
        edit(TS, "spec.matches.0.kind", "TCPRoute"),
        ("TrafficSplit", "demo", "bad"),
        "spec.matches[0].kind",
    ),
    (
        "ts1-weight-text",
        edit(TS1, "spec.backends.0.weight", "lots"),
        ("TrafficSplit", "demo", "bad"),
        "spec.backends[0].weight",
    ),
    (
        "ts1-weight-inf",
        edit(TS1, "spec.backends.0.weight", float("inf")),
        ("TrafficSplit", "demo", "bad"),
        "spec.backends[0].weight",
    ),
    (
        "ts1-weight-nan",
        edit(TS1, "spec.backends.0.weight", float("nan")),
        ("TrafficSplit", "demo", "bad"),
        "spec.backends[0].weight",
    ),
    ("not-an-object", "just text", ("<unknown>", "", "<not an object>"), ""),
]


ODD_VALUES = [
    "",
    "*",
    "m",
    "1",
    "8080",
    "500m",
    "0",
    "-1",
    "\u00b2",
    "(",
    "a{99999999999}",
    "http",
    "None",
    "TCP",
    "UDP",
    "FQDN",
    "ServiceAccount",
    "HTTPRouteGroup",
    "TCPRoute",
    "v1",
    "x.y",
    0,
    -1,
    65536,
    2**64,
    True,
    1.5,
    float("nan"),
    float("inf"),
    [],
    {},
    [None],
    [{}],
    {"name": 1},
]
BASES = [SVC, SLICE, POD, NODE, TT, TT1, HRG, HRG1, TCP, UDP, TS, TS1]


def field_paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix] if prefix else []
    if isinstance(value, dict):
        for key, item in value.items():
            out += field_paths(item, (*prefix, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            out += field_paths(item, (*prefix, index))
    return out


def variants(base: dict[str, Any], path: tuple[Any, ...]) -> list[Any]:
    """``base`` with the value at ``path`` replaced by each odd value, and deleted."""
    out = []
    for value in [*ODD_VALUES, ...]:
        doc = copy.deepcopy(base)
        parent: Any = doc
        for part in path[:-1]:
            parent = parent[part]
        if value is ...:
            if not isinstance(parent, dict):
                continue
            del parent[path[-1]]
        else:
            parent[path[-1]] = copy.deepcopy(value)
        out.append(doc)
    return out


SWEEP = [(base, path) for base in BASES for path in field_paths(base)]


@pytest.mark.parametrize("acl", [False, True])
def test_every_field_of_every_kind_tolerates_odd_values(acl: bool) -> None:
    """Each field of each kind, replaced by each odd value (or deleted): nothing raises, every
    error names an object, and the valid Service beside them still routes."""
    assert len(SWEEP) > 150
    for base, path in SWEEP:
        docs = variants(base, path)
        state = parse_objects(docs)
        for error in state.errors:
            assert error.ref.kind and error.message, error
            assert error.ref.name or error.field == "metadata.name", error  # name: "" stays
        config = compile_docs([*docs, *valid_world()], Settings(acl=acl))
        assert "demo/good:80" in wire(config)["routes"], path
        if not acl:
            decision = Client(config).http("good.demo.mesh")
            assert decision.endpoint is not None and decision.endpoint.ip == "10.9.0.1", path


def valid_world() -> list[dict[str, Any]]:
    return app("good", ips=["10.9.0.1"], cluster_ip="10.96.9.1")


def assert_routes_good(docs: list[Any]) -> list[dict[str, str]]:
    config = compile_docs(docs)
    decision = Client(config).http("good.demo.mesh")
    assert decision.allowed and decision.endpoint is not None and decision.endpoint.ip == "10.9.0.1"
    return list(wire(config)["errors"])


def test_there_are_at_least_30_distinct_cases() -> None:
    assert len({case[0] for case in CASES}) == len(CASES) >= 30


@pytest.mark.parametrize(("doc", "ref", "field"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_malformed_object_is_one_error_and_the_rest_still_routes(
    doc: Any, ref: tuple[str, str, str], field: str
) -> None:
    state = parse_objects([*valid_world(), doc])
    assert len(state.errors) == 1, state.errors
    error: ObjectError = state.errors[0]
    assert (error.ref.kind, error.ref.namespace, error.ref.name) == ref
    assert field in error.field, (field, error.field)
    assert error.field.startswith(field.split("[")[0].split(".")[0])
    assert error.message
    text = str(error)
    assert text.startswith(f"{ref[0]} ") and ref[2] in text
    if field:
        assert f": {error.field}: " in text
    errors = assert_routes_good([*valid_world(), doc])
    assert [(e["kind"], e["namespace"], e["name"]) for e in errors] == [ref]


def test_all_malformed_objects_together() -> None:
    bad_docs = [c[1] for c in CASES]
    errors = assert_routes_good([*bad_docs, *valid_world(), *bad_docs[::-1]])
    # each bad object is reported once (identical errors are merged), none affects another
    alone = [e.to_dict() for e in sorted(set(parse_objects(bad_docs).errors))]
    assert errors == alone
    state = parse_objects([*bad_docs, *valid_world()])
    assert len(state.errors) == len(CASES)
    assert list(state.services) == ["demo/good"]


def test_the_originals_of_the_table_are_valid() -> None:
    docs = [SVC, SLICE, POD, NODE, TT, TT1, HRG, HRG1, TCP, UDP, TS, TS1]
    state = parse_objects(docs)
    assert state.errors == []
    assert (
        len(state.services) + len(state.endpoint_slices) + len(state.pods) + len(state.nodes) == 4
    )
