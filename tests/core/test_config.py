"""build_config: host tables, HTTP listeners, stable TCP/UDP port assignment, determinism."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace

import pytest

from mesh.core.config import API_VERSION, MeshConfig, assign_ports, config_version
from mesh.core.model import PortRange, Settings
from mesh.core.routing import Router
from tests.core.builders import app, compile_docs, errors_of, service, wire


def test_host_table_forms() -> None:
    config = compile_docs(app("web", ips=["10.0.0.1"], cluster_ip="10.96.0.7"))
    assert wire(config)["hosts"] == {
        "5000": {
            "web.demo.mesh": "demo/web:80",
            "web.demo.mesh:80": "demo/web:80",
            "web.demo.svc.cluster.local": "demo/web:80",
            "web.demo.svc.cluster.local:80": "demo/web:80",
            "10.96.0.7": "demo/web:80",
            "10.96.0.7:80": "demo/web:80",
        }
    }


def test_host_table_uses_zone_and_cluster_domain_and_skips_a_missing_cluster_ip() -> None:
    settings = Settings(zone="corp", cluster_domain="k8s.example")
    config = compile_docs(app("web", ips=["10.0.0.1"]), settings)
    assert sorted(wire(config)["hosts"]["5000"]) == [
        "web.demo.corp",
        "web.demo.corp:80",
        "web.demo.svc.k8s.example",
        "web.demo.svc.k8s.example:80",
    ]


@pytest.mark.parametrize(
    "host",
    [
        "web.demo.mesh",
        "web.demo.mesh:80",
        "web.demo.svc.cluster.local",
        "web.demo.svc.cluster.local:80",
        "10.96.0.7",
        "10.96.0.7:80",
        "WEB.Demo.MESH",
        "web.demo.mesh.",
        "web.demo.svc.cluster.local.:80",
        "Web.Demo.Svc.Cluster.Local.",
    ],
)
def test_router_resolves_every_host_form(host: str) -> None:
    router = Router(compile_docs(app("web", ips=["10.0.0.1"], cluster_ip="10.96.0.7")))
    route = router.route_http(5000, host)
    assert route is not None and route.key == "demo/web:80"


@pytest.mark.parametrize("host", ["web.demo.mesh:81", "web.other.mesh", "10.96.0.8", "web", ""])
def test_router_unknown_hosts(host: str) -> None:
    router = Router(compile_docs(app("web", ips=["10.0.0.1"], cluster_ip="10.96.0.7")))
    assert router.route_http(5000, host) is None


def test_http_listener_i_serves_the_ith_port_of_every_service() -> None:
    ports = [("a", 80, 8080), ("b", 81, 8081), ("c", 9000, 9000)]
    docs = [*app("web", ips=["10.0.0.1"], ports=ports), *app("api", ips=["10.0.0.2"])]
    config = compile_docs(docs)
    assert wire(config)["listeners"] == [
        {"port": 5000, "protocol": "http"},
        {"port": 5001, "protocol": "http"},
        {"port": 5002, "protocol": "http"},
    ]
    hosts = wire(config)["hosts"]
    assert hosts["5000"]["web.demo.mesh:80"] == "demo/web:80"
    assert hosts["5000"]["api.demo.mesh"] == "demo/api:80"
    assert hosts["5001"]["web.demo.mesh:81"] == "demo/web:81"
    assert hosts["5002"]["web.demo.mesh:9000"] == "demo/web:9000"
    assert "api.demo.mesh" not in hosts["5001"]
    assert [wire(config)["routes"][f"demo/web:{p}"]["listener"] for p in (80, 81, 9000)] == [
        5000,
        5001,
        5002,
    ]


def test_http_ports_beyond_the_pool_are_an_error() -> None:
    ports = [("a", 80, 80), ("b", 81, 81), ("c", 82, 82)]
    settings = Settings(http_ports=PortRange(5000, 2))
    config = compile_docs(app("web", ips=["10.0.0.1"], ports=ports), settings)
    assert sorted(wire(config)["routes"]) == ["demo/web:80", "demo/web:81"]
    assert [(e["name"], e["field"]) for e in errors_of(config)] == [("web", "spec.ports[2]")]


# -- TCP / UDP listeners -----------------------------------------------------------------------


def tcp(name: str, *ports: int) -> dict[str, object]:
    return service(
        name,
        ports=[(f"p{p}", p, p) for p in ports],
        annotations={"simmesh.io/traffic-type": "tcp"},
    )


def udp(name: str, port: int) -> dict[str, object]:
    return service(
        name, ports=[("dns", port, port)], annotations={"simmesh.io/traffic-type": "udp"}
    )


def flows(config: MeshConfig) -> dict[str, int]:
    return config.port_assignments()


def test_tcp_and_udp_listeners_take_the_lowest_free_ports() -> None:
    config = compile_docs([tcp("b", 5432, 5433), tcp("a", 6379), udp("dns", 53)])
    assert flows(config) == {
        "tcp:demo/a:6379": 10000,
        "tcp:demo/b:5432": 10001,
        "tcp:demo/b:5433": 10002,
        "udp:demo/dns:53": 15000,
    }
    assert wire(config)["routes"]["demo/b:5433"]["listener"] == 10002
    assert {"port": 15000, "protocol": "udp", "route": "demo/dns:53"} in wire(config)["listeners"]
    assert wire(config)["hosts"] == {}


def test_unchanged_services_keep_their_ports_when_others_are_added() -> None:
    first = compile_docs([tcp("m", 1), tcp("x", 2)])
    assert flows(first) == {"tcp:demo/m:1": 10000, "tcp:demo/x:2": 10001}
    # "a" sorts before both: without the previous assignment it would take 10000.
    second = compile_docs([tcp("a", 3), tcp("m", 1), tcp("x", 2)], previous=flows(first))
    assert flows(second) == {"tcp:demo/m:1": 10000, "tcp:demo/x:2": 10001, "tcp:demo/a:3": 10002}
    fresh = compile_docs([tcp("a", 3), tcp("m", 1), tcp("x", 2)])
    assert fresh.port_assignments()["tcp:demo/a:3"] == 10000


def test_unchanged_services_keep_their_ports_when_others_are_removed() -> None:
    first = compile_docs([tcp("a", 1), tcp("b", 2), tcp("c", 3), udp("u", 53), udp("v", 54)])
    second = compile_docs([tcp("c", 3), udp("v", 54)], previous=flows(first))
    assert flows(second) == {"tcp:demo/c:3": 10002, "udp:demo/v:54": 15001}
    third = compile_docs([tcp("c", 3), tcp("d", 4), udp("v", 54)], previous=flows(second))
    assert flows(third) == {"tcp:demo/c:3": 10002, "tcp:demo/d:4": 10000, "udp:demo/v:54": 15001}


def test_previous_ports_outside_the_pool_or_taken_twice_are_reassigned() -> None:
    previous = {"tcp:demo/a:1": 99, "tcp:demo/b:2": 10001, "tcp:demo/c:3": 10001}
    config = compile_docs([tcp("a", 1), tcp("b", 2), tcp("c", 3)], previous=previous)
    assert flows(config) == {"tcp:demo/a:1": 10000, "tcp:demo/b:2": 10001, "tcp:demo/c:3": 10002}


def test_tcp_pool_overflow_is_an_error_on_the_service() -> None:
    settings = Settings(tcp_ports=PortRange(10000, 2))
    config = compile_docs(
        [tcp("a", 1), tcp("b", 2), tcp("c", 3), *app("web", ips=["10.0.0.1"])], settings
    )
    assert flows(config) == {"tcp:demo/a:1": 10000, "tcp:demo/b:2": 10001}
    assert "demo/c:3" not in wire(config)["routes"]
    assert "demo/web:80" in wire(config)["routes"]
    [error] = errors_of(config)
    assert (error["kind"], error["namespace"], error["name"], error["field"]) == (
        "Service",
        "demo",
        "c",
        "spec.ports",
    )
    assert "10000..10001" in error["message"] and "port 3" in error["message"]


def test_overflow_respects_the_previous_assignment() -> None:
    settings = Settings(udp_ports=PortRange(15000, 1))
    config = compile_docs([udp("a", 1), udp("b", 2)], settings, previous={"udp:demo/b:2": 15000})
    assert flows(config) == {"udp:demo/b:2": 15000}
    assert [e["name"] for e in errors_of(config)] == ["a"]


def test_assign_ports_directly() -> None:
    assigned, overflow = assign_ports(
        ["ns/a:1", "ns/b:1", "ns/c:1"], PortRange(7, 2), {"tcp:ns/c:1": 7}, "tcp"
    )
    assert (assigned, overflow) == ({"ns/c:1": 7, "ns/a:1": 8}, ["ns/b:1"])


# -- the document ------------------------------------------------------------------------------


def test_same_topology_gives_identical_bytes_and_version() -> None:
    docs = [*app("web", ips=["10.0.0.2", "10.0.0.1"]), tcp("db", 5432)]
    first, second = compile_docs(docs), compile_docs(list(reversed(docs)))
    assert first.to_json() == second.to_json()
    assert first.version == second.version
    changed = compile_docs([*docs, tcp("db2", 1)])
    assert changed.version != first.version


def test_json_round_trip() -> None:
    config = compile_docs(app("web", ips=["10.0.0.1"]))
    assert wire(MeshConfig.from_json(config.to_json())) == wire(config)
    assert MeshConfig.from_json(config.to_json(indent=None)) == config
    with pytest.raises(ValueError, match="apiVersion"):
        MeshConfig.from_json(config.to_json().replace(API_VERSION, "v1"))


def test_identities_and_access_only_in_acl_mode() -> None:
    docs = app("web", ips=["10.0.0.1"])
    plain = compile_docs(docs)
    acl = compile_docs(docs, replace(Settings(), acl=True))
    assert wire(plain)["identities"] == {}
    assert "access" not in wire(plain)["clusters"]["demo/web:80"]
    assert wire(acl)["identities"] == {"10.0.0.1": "demo/web"}
    assert wire(acl)["clusters"]["demo/web:80"]["access"] == []
    assert wire(acl)["settings"]["acl"] is True


def test_compact_json_and_version_are_those_of_the_data() -> None:
    config = compile_docs([*app("web", ips=["10.0.0.1"]), tcp("db", 5432)])
    compact = json.dumps(wire(config), sort_keys=True, separators=(",", ":"))
    assert config.to_json(indent=None) == compact
    assert config.version == config_version(config)
    assert MeshConfig.from_json(compact).to_json(indent=None) == compact
    unversioned = json.loads(compact)
    unversioned["version"] = ""  # the digest of the document with an empty version
    body = json.dumps(unversioned, sort_keys=True, separators=(",", ":")).encode()
    assert config.version == hashlib.sha256(body).hexdigest()[:16]


def test_ipv6_cluster_ips_are_routed_with_bracketed_host_headers() -> None:
    from mesh.core.config import build_config
    from mesh.core.model import Settings
    from mesh.core.parse import parse_objects
    from mesh.core.routing import Router
    from mesh.core.topology import build_topology

    state = parse_objects(
        [
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": "v6", "namespace": "ns"},
                "spec": {"clusterIP": "fd00::1", "ports": [{"port": 80}]},
            }
        ]
    )
    router = Router(build_config(build_topology(state, Settings()), Settings()))
    for host in ("[fd00::1]:80", "[fd00::1]", "fd00::1"):
        route = router.route_http(5000, host)
        assert route is not None and route.service == "ns/v6", host
    assert router.route_http(5000, "[fd00::1]:81") is None
