"""parse: every kind and every SMI version the core reads, one object at a time."""

from __future__ import annotations

from typing import Any

import pytest

from mesh.core.errors import InvalidObject, ObjectRef
from mesh.core.model import (
    HTTPMatch,
    Identity,
    PortMatch,
    PortRange,
    ServicePort,
    Settings,
    SplitBackend,
    TrafficRule,
    TrafficType,
)
from mesh.core.parse import (
    ClusterState,
    object_ref,
    parse_objects,
    parse_quantity_milli,
    parse_settings,
    settings_doc,
)
from tests.core.builders import (
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


def parse_one(doc: Any) -> Any:
    state = parse_objects([doc])
    assert state.errors == [], state.errors
    values = [
        *state.services.values(),
        *state.endpoint_slices.values(),
        *state.pods.values(),
        *state.nodes.values(),
        *state.traffic_targets.values(),
        *state.http_route_groups.values(),
        *state.tcp_routes.values(),
        *state.udp_routes.values(),
        *state.traffic_splits.values(),
    ]
    assert len(values) == 1
    return values[0]


def parse_error(doc: Any) -> tuple[str, str]:
    state = parse_objects([doc])
    assert len(state.errors) == 1, state.errors
    return state.errors[0].field, state.errors[0].message


# -- Kubernetes objects ------------------------------------------------------------------------


def test_service_fields() -> None:
    doc = service(
        "web",
        ports=[("http", 80, 8080), ("admin", 81, "admin"), ("grpc", 82, "9000")],
        ip="10.96.0.1",
        annotations={"simmesh.io/scheme": "h2c"},
    )
    parsed = parse_one(doc)
    assert parsed.key == "demo/web"
    assert parsed.type == "ClusterIP"
    assert parsed.cluster_ip == "10.96.0.1"
    assert parsed.ports == (
        ServicePort("http", 80, 8080, "TCP"),
        ServicePort("admin", 81, "admin", "TCP"),
        ServicePort("grpc", 82, 9000, "TCP"),
    )
    assert parsed.annotations == (("simmesh.io/scheme", "h2c"),)
    assert parsed.selector == (("app", "web"),)


def test_service_defaults_namespace_target_port_and_headless() -> None:
    doc = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "web"},
        "spec": {"clusterIP": "None", "ports": [{"port": 80, "protocol": "UDP"}]},
    }
    parsed = parse_one(doc)
    assert parsed.namespace == "default"
    assert parsed.cluster_ip is None
    assert parsed.ports == (ServicePort("", 80, 80, "UDP"),)


def test_endpoint_slice_fields() -> None:
    doc = endpoint_slice(
        "web",
        [
            endpoint("10.0.0.1", pod="web-0", node="n1"),
            endpoint("10.0.0.2", ready=False),
            endpoint("10.0.0.3", ready=None),
        ],
        ports=[("http", 8080)],
    )
    parsed = parse_one(doc)
    assert parsed.service == "web"
    assert [p.port for p in parsed.ports] == [8080]
    assert [(e.addresses, e.ready, e.node, e.pod) for e in parsed.endpoints] == [
        (("10.0.0.1",), True, "n1", "web-0"),
        (("10.0.0.2",), False, None, None),
        (("10.0.0.3",), True, None, None),  # a missing condition counts as ready
    ]


def test_endpoint_slice_fqdn_endpoints_are_dropped() -> None:
    doc = endpoint_slice("web", [endpoint("db.example.com")])
    doc["addressType"] = "FQDN"
    assert parse_one(doc).endpoints == ()


def test_pod_fields() -> None:
    doc = pod("web-0", sa="web", ip="10.0.0.1", node="n1")
    doc["status"]["podIPs"] = [{"ip": "10.0.0.1"}, {"ip": "fd00::1"}]
    parsed = parse_one(doc)
    assert (parsed.service_account, parsed.ips, parsed.node) == (
        "web",
        ("10.0.0.1", "fd00::1"),
        "n1",
    )
    bare = parse_one(
        {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": "x"}}
    )
    assert (bare.service_account, bare.ips) == ("default", ())


@pytest.mark.parametrize(
    ("field", "value", "path"),
    [
        ("podIP", "09.244.2.22", "status.podIP"),  # leading zero: ipaddress refuses it
        ("podIP", "10.0.0", "status.podIP"),
        ("podIPs", [{"ip": "10.0.0.1"}, {"ip": "fd00::g"}], "status.podIPs[1].ip"),
    ],
)
def test_pod_ips_must_be_addresses(field: str, value: Any, path: str) -> None:
    """Found by make fuzz: a pod IP the parser took and the config schema refused (the
    controller would have published a config no proxy accepts)."""
    doc = pod("web-0", sa="web", ip="10.0.0.1", node="n1")
    doc["status"][field] = value
    field_seen, message = parse_error(doc)
    assert field_seen == path and "expected an IP address" in message


def _set(doc: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    *parents, last = path.split(".")
    node: Any = doc
    for key in parents:
        node = node[int(key)] if key.isdigit() else node.setdefault(key, {})
    node[int(last) if last.isdigit() else last] = value
    return doc


@pytest.mark.parametrize(
    ("doc", "field", "value", "path", "expected"),
    [
        # found by make fuzz in CI: a namespace holding '/' went into an identity
        # ('<namespace>/<account>') that the config schema refused
        (
            pod("p", sa="web", ip="10.0.0.1"),
            "metadata.namespace",
            'mon"\n simmesh.io/c',
            None,
            "DNS-1123 label",
        ),
        (pod("p", sa="web", ip="10.0.0.1"), "metadata.namespace", "Apps", None, "DNS-1123 label"),
        (pod("p", sa="web", ip="10.0.0.1"), "metadata.namespace", "a.b", None, "DNS-1123 label"),
        (pod("p", sa="web", ip="10.0.0.1"), "metadata.namespace", "x" * 64, None, "DNS-1123 label"),
        (
            pod("p", sa="web", ip="10.0.0.1"),
            "spec.serviceAccountName",
            "a/b",
            None,
            "DNS-1123 name",
        ),
        (pod("p", sa="web", ip="10.0.0.1"), "spec.nodeName", "node a", None, "DNS-1123 name"),
        (service("web"), "metadata.namespace", "-x", None, "DNS-1123 label"),
        (service("web"), "metadata.name", "web.v1", None, "DNS-1035 label"),
        (service("web"), "metadata.name", "1web", None, "DNS-1035 label"),
        (
            traffic_target(
                "t", dest="web", sources=["client"], rules=[rule("HTTPRouteGroup", "g")]
            ),
            "spec.sources.0.namespace",
            "team/x",
            "spec.sources[0].namespace",
            "DNS-1123 label",
        ),
        (
            endpoint_slice("web", [endpoint("10.0.0.1")]),
            "metadata.labels.kubernetes.io/service-name",
            "web/x",
            "metadata.labels[kubernetes.io/service-name]",
            "DNS-1123 name",
        ),
    ],
)
def test_names_and_namespaces_are_dns(
    doc: dict[str, Any], field: str, value: Any, path: str | None, expected: str
) -> None:
    """Namespaces are DNS-1123 labels and names DNS-1123 names, as the apiserver has them; the
    proxy's config joins them with '/' and '.', so a value holding either is an object error."""
    if field.startswith("metadata.labels."):
        doc["metadata"].setdefault("labels", {})[field.removeprefix("metadata.labels.")] = value
    else:
        _set(doc, field, value)
    field_seen, message = parse_error(doc)
    assert field_seen == (path or field)
    assert f"expected a {expected}" in message


def test_settings_namespaces_and_zones_are_dns() -> None:
    assert parse_settings({"zone": "mesh.", "clusterDomain": "cluster.local"}).zone == "mesh"
    for doc, path in [
        ({"meshNamespace": "Simmesh"}, "meshNamespace"),
        ({"watchNamespaces": ["a", "b/c"]}, "watchNamespaces[1]"),
        ({"accessAdminNamespaces": [""]}, "accessAdminNamespaces[0]"),
        ({"zone": "me sh"}, "zone"),
        ({"clusterDomain": "cluster..local"}, "clusterDomain"),
    ]:
        with pytest.raises(InvalidObject) as raised:
            parse_settings(doc)
        assert raised.value.field == path, (doc, raised.value)


def test_node_has_no_namespace() -> None:
    doc = {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": "n1"},
        "status": {"addresses": [{"type": "InternalIP", "address": "192.168.0.1"}]},
    }
    assert parse_one(doc).addresses == ("192.168.0.1",)
    state = parse_objects([doc])
    assert list(state.nodes) == ["n1"]
    assert object_ref({**doc, "spec": 1}) == ObjectRef("Node", "", "n1")


def test_unknown_kinds_are_ignored_without_error() -> None:
    state = parse_objects(
        [{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}, "data": 1}]
    )
    assert state == ClusterState()


@pytest.mark.parametrize(
    ("kind", "version"),
    [
        ("Service", "v2"),
        ("TrafficTarget", "access.smi-spec.io/v1alpha4"),
        ("UDPRoute", "specs.smi-spec.io/v1alpha3"),
        ("TrafficSplit", "split.smi-spec.io/v1beta1"),
        ("HTTPRouteGroup", None),
    ],
)
def test_unsupported_api_version_is_an_error(kind: str, version: str | None) -> None:
    field, message = parse_error({"apiVersion": version, "kind": kind, "metadata": {"name": "x"}})
    assert field == "apiVersion"
    assert "expected one of" in message


# -- TrafficTarget -----------------------------------------------------------------------------


def test_traffic_target_v1alpha1_has_top_level_destination_sources_specs() -> None:
    doc = {
        "apiVersion": "access.smi-spec.io/v1alpha1",
        "kind": "TrafficTarget",
        "metadata": {"name": "tt", "namespace": "demo"},
        "destination": {"kind": "ServiceAccount", "name": "b", "port": "8080"},
        "sources": [{"kind": "ServiceAccount", "name": "a", "namespace": "other"}],
        "specs": [{"kind": "HTTPRouteGroup", "name": "routes", "matches": ["api"]}],
    }
    parsed = parse_one(doc)
    assert parsed.destination == Identity("demo", "b")
    assert parsed.sources == (Identity("other", "a"),)
    assert parsed.rules == (TrafficRule("HTTPRouteGroup", "routes", ("api",)),)


def test_traffic_target_v1alpha1_ignores_a_spec_key() -> None:
    doc = traffic_target(
        "tt", dest="b", sources=["a"], rules=[rule("TCPRoute", "r")], version="v1alpha1"
    )
    doc["spec"] = {"rules": "ignored in v1alpha1"}
    assert parse_one(doc).rules == (TrafficRule("TCPRoute", "r", None),)


def test_traffic_target_v1alpha2_destination_port_is_dropped() -> None:
    doc = traffic_target(
        "tt", dest="b", sources=["a"], rules=[rule("TCPRoute", "r")], version="v1alpha2"
    )
    doc["spec"]["destination"]["port"] = 8080
    parsed = parse_one(doc)
    assert parsed.destination == Identity("demo", "b")


@pytest.mark.parametrize("version", ["v1alpha1", "v1alpha2", "v1alpha3"])
def test_traffic_target_every_version(version: str) -> None:
    doc = traffic_target(
        "tt",
        dest="b",
        sources=["a", "c"],
        rules=[rule("HTTPRouteGroup", "g", ["m1", "m2"]), rule("UDPRoute", "u")],
        version=version,
    )
    doc_ns_less = traffic_target(
        "tt2", dest="b", sources=["a"], rules=[rule("TCPRoute", "t")], version=version
    )
    body = doc_ns_less if version == "v1alpha1" else doc_ns_less["spec"]
    body["destination"].pop("namespace")
    body["sources"][0].pop("namespace")
    state = parse_objects([doc, doc_ns_less])
    assert state.errors == []
    parsed = state.traffic_targets["demo/tt"]
    assert parsed.sources == (Identity("demo", "a"), Identity("demo", "c"))
    assert parsed.rules == (
        TrafficRule("HTTPRouteGroup", "g", ("m1", "m2")),
        TrafficRule("UDPRoute", "u", None),
    )
    defaulted = state.traffic_targets["demo/tt2"]
    assert (defaulted.destination, defaulted.sources) == (
        Identity("demo", "b"),
        (Identity("demo", "a"),),
    )


# -- HTTPRouteGroup ----------------------------------------------------------------------------


@pytest.mark.parametrize("version", ["v1alpha1", "v1alpha2", "v1alpha3", "v1alpha4"])
def test_http_route_group_every_version(version: str) -> None:
    doc = route_group(
        "g",
        [
            http_match("api", path="/api", methods=["get", "POST"]),
            http_match("all", methods=["GET", "*"]),
            http_match("any"),
        ],
        version=version,
    )
    parsed = parse_one(doc)
    assert parsed.matches == (
        HTTPMatch("api", "/api", frozenset({"GET", "POST"}), ()),
        HTTPMatch("all", None, None, ()),
        HTTPMatch("any", None, None, ()),
    )


def test_headers_as_list_of_maps_and_as_map_normalise_the_same() -> None:
    as_list = route_group(
        "g", [http_match("m", headers=[{"User-Agent": ".*Firefox.*"}, {"x-env": "prod"}])]
    )
    as_map = route_group(
        "g", [http_match("m", headers={"x-env": "prod", "User-Agent": ".*Firefox.*"})]
    )
    first = parse_one(as_list).matches[0].headers
    second = parse_one(as_map).matches[0].headers
    assert sorted(first) == sorted(second) == [("user-agent", ".*Firefox.*"), ("x-env", "prod")]


# -- TCPRoute / UDPRoute -----------------------------------------------------------------------


@pytest.mark.parametrize("version", ["v1alpha1", "v1alpha2", "v1alpha3", "v1alpha4"])
def test_tcp_route_matches_as_object(version: str) -> None:
    parsed = parse_one(port_route("r", {"name": "db", "ports": [5432, 5433]}, version=version))
    assert parsed.kind == "TCPRoute"
    assert parsed.matches == (PortMatch("db", (5432, 5433)),)


def test_tcp_route_matches_as_list() -> None:
    parsed = parse_one(port_route("r", [{"name": "a", "ports": [1]}, {"name": "b", "ports": []}]))
    assert parsed.matches == (PortMatch("a", (1,)), PortMatch("b", ()))


def test_tcp_route_without_matches_is_every_port() -> None:
    parsed = parse_one(port_route("r", None, version="v1alpha1"))
    assert parsed.matches == (PortMatch("", ()),)


def test_udp_route_v1alpha4() -> None:
    parsed = parse_one(port_route("u", {"name": "dns", "ports": [53]}, kind="UDPRoute"))
    assert (parsed.kind, parsed.matches) == ("UDPRoute", (PortMatch("dns", (53,)),))
    state = parse_objects([port_route("u", None, kind="UDPRoute")])
    assert list(state.udp_routes) == ["demo/u"]
    assert not state.tcp_routes


# -- TrafficSplit ------------------------------------------------------------------------------


def test_traffic_split_v1alpha1_quantities() -> None:
    doc = traffic_split(
        "s",
        "root",
        [("a", 1), ("b", "500m"), ("c", "1.5"), ("d", "0"), ("e", 0.25)],
        version="v1alpha1",
    )
    parsed = parse_one(doc)
    assert parsed.backends == (
        SplitBackend("a", 1000),
        SplitBackend("b", 500),
        SplitBackend("c", 1500),
        SplitBackend("d", 0),
        SplitBackend("e", 250),
    )


@pytest.mark.parametrize("version", ["v1alpha2", "v1alpha3", "v1alpha4"])
def test_traffic_split_integer_weights(version: str) -> None:
    doc = traffic_split("s", "root", [("a", 90), ("b", 10), ("c", 0)], version=version)
    parsed = parse_one(doc)
    assert (parsed.service, parsed.backends) == (
        "root",
        (SplitBackend("a", 90), SplitBackend("b", 10), SplitBackend("c", 0)),
    )


@pytest.mark.parametrize("version", ["v1alpha3", "v1alpha4"])
def test_traffic_split_matches(version: str) -> None:
    doc = traffic_split("s", "root", [("a", 1)], version=version, matches=["canary-users"])
    assert parse_one(doc).matches == (("HTTPRouteGroup", "canary-users"),)


def test_v1alpha2_weight_must_be_an_integer() -> None:
    field, message = parse_error(traffic_split("s", "root", [("a", "500m")], version="v1alpha2"))
    assert field == "spec.backends[0].weight"
    assert "integer" in message


@pytest.mark.parametrize(
    ("value", "milli"),
    [
        (1, 1000),
        (0, 0),
        ("1", 1000),
        ("500m", 500),
        ("1500m", 1500),
        ("0.5", 500),
        ("2k", 2_000_000),
        ("1Ki", 1_024_000),
        (0.001, 1),
    ],
)
def test_quantity_milli(value: Any, milli: int) -> None:
    assert parse_quantity_milli(value, "w") == milli


@pytest.mark.parametrize("value", [-1, "-1", "1x", "", None, True, [1], "m", -0.5])
def test_quantity_milli_rejects(value: Any) -> None:
    with pytest.raises(InvalidObject) as info:
        parse_quantity_milli(value, "spec.backends[0].weight")
    assert info.value.field == "spec.backends[0].weight"


# -- settings ----------------------------------------------------------------------------------


def test_settings_defaults() -> None:
    settings = parse_settings({})
    assert (settings.zone, settings.cluster_domain, settings.mesh_namespace) == (
        "mesh",
        "cluster.local",
        "simmesh",
    )
    assert settings.default_traffic_type is TrafficType.HTTP
    assert settings.acl is False
    assert settings.http_ports == PortRange(5000, 10)
    assert settings.tcp_ports == PortRange(10000, 1000)
    assert settings.udp_ports == PortRange(15000, 1000)


def test_settings_every_key() -> None:
    settings = parse_settings(
        {
            "zone": "corp.",
            "clusterDomain": "k8s.local",
            "meshNamespace": "mesh-system",
            "defaultTrafficType": "tcp",
            "acl": True,
            "watchNamespaces": ["a", "b"],
            "ignoreNamespaces": ["c"],
            "httpPorts": {"start": 6000, "size": 3},
            "tcpPorts": {"start": 20000},
            "udpPorts": {"size": 5},
        }
    )
    assert settings.zone == "corp"
    assert settings.cluster_domain == "k8s.local"
    assert settings.default_traffic_type is TrafficType.TCP
    assert settings.acl is True
    assert settings.watch_namespaces == ("a", "b")
    assert settings.http_ports == PortRange(6000, 3)
    assert settings.tcp_ports == PortRange(20000, 1000)
    assert settings.udp_ports == PortRange(15000, 5)
    assert not settings.watches("c") and settings.watches("a") and not settings.watches("z")


def _setting_keys() -> set[str]:
    """The keys parse_settings knows, as its refusal of an unknown key lists them (so a key
    added there is seen here without this test naming it)."""
    with pytest.raises(InvalidObject) as info:
        parse_settings({"no-such-setting": 1})
    listed = str(info.value).rpartition("expected one of ")[2]
    return {key.strip() for key in listed.split(",")}


# every setting at a value other than its default, as mesh.yaml writes it
_NON_DEFAULT: dict[str, Any] = {
    "zone": "corp",
    "clusterDomain": "k8s.local",
    "meshNamespace": "mesh-system",
    "defaultTrafficType": "udp",
    "acl": True,
    "watchNamespaces": ["a", "b"],
    "ignoreNamespaces": ["c"],
    "accessAdminNamespaces": ["admins"],
    "httpPorts": {"start": 6000, "size": 3},
    "tcpPorts": {"start": 20000, "size": 7},
    "udpPorts": {"start": 30000, "size": 5},
    "capture": True,
    "capturePorts": {"start": 14000, "size": 9},
    "mtls": "strict",
    "trustDomain": "example.org",
}


def test_settings_doc_writes_every_setting_parse_settings_reads() -> None:
    """A setting parse_settings reads but settings_doc forgets reads back as its default (mtls
    and trustDomain did: a snapshot or a gate scenario of an mTLS cluster had mTLS off)."""
    known = _setting_keys()
    assert "mtls" in known and "zone" in known  # the refusal still lists the keys
    assert set(settings_doc(Settings())) == known
    assert set(_NON_DEFAULT) == known, "give the new setting a non-default value here"
    defaults = settings_doc(Settings())
    assert [k for k in known if defaults[k] == _NON_DEFAULT[k]] == []
    assert settings_doc(parse_settings(_NON_DEFAULT)) == _NON_DEFAULT
    assert settings_doc(parse_settings(defaults)) == defaults
    for key, value in _NON_DEFAULT.items():  # each key on its own, the others default
        assert settings_doc(parse_settings({key: value})) == {**defaults, key: value}


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ({"aclx": True}, "aclx"),
        ({"defaultTrafficType": "grpc"}, "defaultTrafficType"),
        ({"acl": "yes"}, "acl"),
        ({"httpPorts": {"start": 0}}, "httpPorts.start"),
        ({"tcpPorts": {"size": 0}}, "tcpPorts.size"),
        ({"watchNamespaces": "a"}, "watchNamespaces"),
        ([], ""),
        ({False: "tM"}, "False"),  # `no: tM`: YAML's bare no is a boolean key (found fuzzing)
        ({1: "x"}, "1"),
    ],
)
def test_settings_errors(raw: Any, field: str) -> None:
    with pytest.raises(InvalidObject) as info:
        parse_settings(raw)
    assert info.value.field == field


# -- objects written in v1alpha1, read back through the storage version ------------------------
# The CRDs serve every version with conversion None: a controller watching the storage version
# gets a v1alpha1 object under the newer apiVersion, in the layout it was written in (found by
# the conformance suite on the kind cluster: these were errors, and granted or split nothing).


def test_traffic_target_written_as_v1alpha1_read_as_v1alpha3() -> None:
    doc = traffic_target(
        "tt",
        dest="b",
        sources=["a"],
        rules=[rule("HTTPRouteGroup", "g", ["all"])],
        version="v1alpha1",
    )
    doc["apiVersion"] = "access.smi-spec.io/v1alpha3"
    parsed = parse_one(doc)
    assert parsed.destination == Identity("demo", "b")
    assert parsed.rules == (TrafficRule("HTTPRouteGroup", "g", ("all",)),)


def test_http_route_group_written_as_v1alpha1_read_as_v1alpha4() -> None:
    doc = route_group("g", [http_match("v1", path="/v1$", methods=["GET"])], version="v1alpha1")
    doc["apiVersion"] = "specs.smi-spec.io/v1alpha4"
    assert parse_one(doc).matches == (HTTPMatch("v1", "/v1$", frozenset({"GET"}), ()),)


def test_traffic_split_written_as_v1alpha1_read_as_v1alpha4_keeps_quantities() -> None:
    doc = traffic_split("s", "root", [("a", 1), ("b", "500m"), ("c", "0")], version="v1alpha1")
    doc["apiVersion"] = "split.smi-spec.io/v1alpha4"
    assert parse_one(doc).backends == (
        SplitBackend("a", 1000),
        SplitBackend("b", 500),
        SplitBackend("c", 0),
    )


def test_a_newer_object_with_a_spec_is_not_read_as_v1alpha1() -> None:
    doc = traffic_target("tt", dest="b", sources=["a"], rules=[rule("TCPRoute", "r")])
    doc["destination"] = {"kind": "ServiceAccount", "name": "other"}  # stray top-level field
    assert parse_one(doc).destination == Identity("demo", "b")


def test_keys_that_yaml_reads_as_booleans_or_numbers_are_errors_or_strings() -> None:
    """A bare ``on``/``no`` or a number as a key (labels, header matches) is read as its text,
    as the interpreted parser always did; compiled, a loop over ``Mapping[str, Any]`` raised
    TypeError on it instead (the manifest fuzzer found it in mesh.yaml)."""
    docs = [
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "web", "namespace": "demo", "annotations": {True: "x"}},
            "spec": {"ports": [{"port": 80}], "selector": {7: "y"}},
        },
        {
            "apiVersion": "specs.smi-spec.io/v1alpha4",
            "kind": "HTTPRouteGroup",
            "metadata": {"name": "g", "namespace": "demo"},
            "spec": {"matches": [{"name": "m", "headers": [{1: "a.*", False: "b"}]}]},
        },
    ]
    state = parse_objects(docs)
    assert not state.errors, state.errors
    service = state.services["demo/web"]
    assert service.annotations == (("True", "x"),) and service.selector == (("7", "y"),)
    group = state.http_route_groups["demo/g"]
    assert dict(group.matches[0].headers) == {"1": "a.*", "false": "b"}
