"""GAMMA capture in the core (issue 16, mesh/core/capture.py): which Service ports are captured
at their ClusterIP, on which proxy listener (stable across rebuilds and controller restarts),
how a capture listener routes (by the Service port it stands for, never by Host), and the
nftables ruleset a node's agent applies."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from mesh.core import schema
from mesh.core.capture import assign_capture_ports, home_port, render_nft
from mesh.core.errors import InvalidObject
from mesh.core.model import PortRange, Settings
from mesh.core.parse import parse_settings, settings_doc
from mesh.core.routing import Reason
from mesh.core.schema import ConfigError, MeshConfig
from tests.core.builders import (
    Client,
    app,
    backend_of,
    backend_ref,
    compile_docs,
    error_texts,
    exact,
    http_route,
    parent,
    pod,
    service,
    wire,
)
from tests.core.test_tunnel_addresses import proxy

CAPTURE = Settings(capture=True)


def base() -> list[dict[str, Any]]:
    return [
        *app(
            "web",
            ips=["10.0.0.1"],
            ports=(("http", 80, 8080), ("alt", 8080, 8080)),
            cluster_ip="10.96.0.10",
        ),
        *app("web-v2", ips=["10.0.2.1"], cluster_ip="10.96.0.12"),
        *app("plain", ips=["10.0.3.1"], cluster_ip="10.96.0.13"),
        *app("noip", ips=["10.0.4.1"]),  # a hand-written Service without a ClusterIP
        pod("client", sa="client", ip="10.0.9.1"),
        pod("client", sa="client", ip="10.0.9.2", ns="caller"),
        proxy("simmesh-proxy-a", node="node-a", ip="10.244.1.5"),
        proxy("simmesh-proxy-b", node="node-b", ip="10.244.2.5"),
    ]


def header_route(name: str, parents: list[dict[str, Any]], *, ns: str = "demo") -> dict[str, Any]:
    """A route that answers /v2 from web-v2 and sets a response header, nothing else."""
    return http_route(
        name,
        parents,
        [
            {
                "matches": [exact("/v2")],
                "backendRefs": [backend_ref("web-v2", ns="demo")],
                "filters": [
                    {
                        "type": "ResponseHeaderModifier",
                        "responseHeaderModifier": {"set": [{"name": "x-route", "value": name}]},
                    }
                ],
            }
        ],
        ns=ns,
    )


def captured(config: MeshConfig) -> dict[str, tuple[str, int, int]]:
    capture = config.settings.capture
    assert capture is not None
    return {c.route: (c.ip, c.service_port, c.port) for c in capture.listeners}


def listener(config: MeshConfig, route: str) -> int:
    return captured(config)[route][2]


# -- what is captured ---------------------------------------------------------------------------


def test_capture_off_changes_nothing() -> None:
    docs = [*base(), header_route("r", [parent("web")])]
    off = compile_docs(docs)
    assert off.settings.capture is None and "capture" not in wire(off)["settings"]
    assert not Client(off).router.captured


def test_the_ports_of_a_gamma_parent_with_a_cluster_ip_are_captured_and_nothing_else() -> None:
    config = compile_docs(
        [
            *base(),
            header_route("r", [parent("web", port=80)]),
            header_route("n", [parent("noip")]),
        ],
        CAPTURE,
    )
    found = captured(config)
    # web:80 only (the parentRef's port), not web:8080, not plain (no route), not noip
    assert set(found) == {"demo/web:80"}
    ip, port, number = found["demo/web:80"]
    assert (ip, port) == ("10.96.0.10", 80)
    assert 12000 <= number < 13000
    assert config.settings.capture is not None
    assert config.settings.capture.proxies == {"node-a": "10.244.1.5", "node-b": "10.244.2.5"}


def test_a_parent_without_a_port_is_captured_on_every_port() -> None:
    config = compile_docs([*base(), header_route("r", [parent("web")])], CAPTURE)
    assert set(captured(config)) == {"demo/web:80", "demo/web:8080"}
    assert len({c[2] for c in captured(config).values()}) == 2


def test_a_consumer_route_captures_its_parent_too() -> None:
    route = header_route("mine", [parent("web", ns="demo", port=80)], ns="caller")
    assert set(captured(compile_docs([*base(), route], CAPTURE))) == {"demo/web:80"}


def test_a_headless_parent_is_not_captured() -> None:
    docs = [*base(), service("hl", ip="None"), header_route("r", [parent("hl")])]
    config = compile_docs(docs, CAPTURE)
    assert captured(config) == {}
    assert any("hl" in e for e in error_texts(config))  # the route's own error, as before


def test_capture_on_without_routes_publishes_the_proxies_only() -> None:
    config = compile_docs(base(), CAPTURE)
    assert config.settings.capture == schema.Capture(
        listeners=[], proxies={"node-a": "10.244.1.5", "node-b": "10.244.2.5"}
    )


def test_a_proxy_that_is_not_ready_is_not_published() -> None:
    docs = [*base(), proxy("simmesh-proxy-c", node="node-c", ip="10.244.3.5", ready=False)]
    capture = compile_docs(docs, CAPTURE).settings.capture
    assert capture is not None and "node-c" not in capture.proxies


# -- routing on a capture listener ----------------------------------------------------------


def world(*docs: dict[str, Any]) -> tuple[Client, MeshConfig]:
    config = schema.decode(compile_docs([*base(), *docs], CAPTURE).to_json().encode())
    return Client(config), config


def test_a_capture_listener_routes_by_its_service_whatever_the_host() -> None:
    client, config = world(header_route("r", [parent("web", port=80)]))
    port = listener(config, "demo/web:80")
    assert (port, "http") in client.router.listeners
    for host in ("web", "web-v2", "plain.demo.svc.cluster.local", "10.0.0.1:8080", "x"):
        d = client.http(host, "/v2", listener=port)
        assert d.allowed and backend_of(d) == "demo/web-v2", host
        assert d.matched is not None and d.matched.route == "demo/r"
        miss = client.http(host, "/other", listener=port)  # a route, no rule: 404
        assert miss.reason is Reason.NO_MATCHING_RULE and miss.status == 404


def test_a_capture_listener_without_a_route_for_the_caller_forwards_to_the_service() -> None:
    client, config = world(header_route("mine", [parent("web", ns="demo", port=80)], ns="caller"))
    port = listener(config, "demo/web:80")
    theirs = client.http("web", "/v2", listener=port, source="caller/client")
    assert theirs.matched is not None and backend_of(theirs) == "demo/web-v2"
    others = client.http("web", "/v2", listener=port, source="demo/client")
    assert others.allowed and others.matched is None and backend_of(others) == "demo/web"


def test_the_shared_listeners_still_route_by_host() -> None:
    client, _ = world(header_route("r", [parent("web", port=80)]))
    assert backend_of(client.http("plain.demo.mesh", "/v2")) == "demo/plain"
    assert client.http("nobody.demo.mesh").reason is Reason.UNKNOWN_HOST


# -- stable listener ports ----------------------------------------------------------------------


def test_ports_stay_when_other_services_come_and_go() -> None:
    one = compile_docs([*base(), header_route("r", [parent("web", port=80)])], CAPTURE)
    docs = [
        *base(),
        header_route("r", [parent("web", port=80)]),
        header_route("p", [parent("plain")]),
    ]
    two = compile_docs(docs, CAPTURE, one.port_assignments())
    assert listener(two, "demo/web:80") == listener(one, "demo/web:80")
    three = compile_docs(
        [*base(), header_route("p", [parent("plain")])], CAPTURE, two.port_assignments()
    )
    assert listener(three, "demo/plain:80") == listener(two, "demo/plain:80")
    # a restarted controller (no previous config) finds the same home ports
    assert captured(compile_docs(docs, CAPTURE)) == captured(two)


def test_assignment_keeps_previous_ports_then_takes_home_ports() -> None:
    pool = PortRange(100, 4)
    keys = ["a/x:80", "a/y:80", "a/z:80"]
    fresh, overflow = assign_capture_ports(keys, pool, {})
    assert overflow == [] and len(set(fresh.values())) == 3
    assert set(fresh.values()) <= set(pool.ports())
    assert assign_capture_ports(list(reversed(keys)), pool, {})[0] == fresh
    moved = {"capture:a/y:80": 103 if fresh["a/y:80"] != 103 else 100}
    kept, _ = assign_capture_ports(keys, pool, moved)
    assert kept["a/y:80"] == moved["capture:a/y:80"]
    outside, _ = assign_capture_ports(keys, pool, {"capture:a/x:80": 99})  # not in range
    assert outside["a/x:80"] in pool.ports()
    assert home_port("a/x:80", pool) == home_port("a/x:80", pool) in pool.ports()


def test_a_full_range_is_an_error_on_the_service_not_a_crash() -> None:
    settings = Settings(capture=True, capture_ports=PortRange(12000, 1))
    config = compile_docs([*base(), header_route("r", [parent("web")])], settings)
    assert set(captured(config)) == {"demo/web:80"}
    assert [e for e in error_texts(config) if "capture" in e] == [
        "Service demo/web: spec.ports: no free capture listener left in 12000..12000 for port "
        "8080: its ClusterIP traffic is not captured, so its GAMMA routes do not apply to it; "
        "raise the capturePorts size"
    ]
    client = Client(config)  # the rest works: web:80 is captured, 8080 routes by Host
    assert client.http("web", "/v2", listener=12000).matched is not None


# -- the document -------------------------------------------------------------------------------


def test_the_document_round_trips_and_is_checked() -> None:
    config = compile_docs([*base(), header_route("r", [parent("web", port=80)])], CAPTURE)
    assert schema.decode(config.to_json()) == config
    doc = wire(config)
    doc["settings"]["capture"]["listeners"][0]["port"] = 5000  # the shared HTTP listener's
    with pytest.raises(ConfigError, match=r"settings.capture.listeners\[0\].port: port 5000"):
        schema.convert(doc)
    doc = wire(config)
    doc["settings"]["capture"]["listeners"][0]["route"] = "demo/nope:80"
    with pytest.raises(ConfigError, match=r"listeners\[0\].route: no route"):
        schema.convert(doc)
    doc = wire(config)
    doc["settings"]["capture"]["proxies"]["node-a"] = "not-an-ip"
    with pytest.raises(ConfigError, match=r"settings.capture.proxies\[node-a\]"):
        schema.convert(doc)


def test_settings_round_trip_and_overlaps_are_refused() -> None:
    settings = parse_settings({"capture": True, "capturePorts": {"start": 20000, "size": 50}})
    assert settings.capture and settings.capture_ports == PortRange(20000, 50)
    assert parse_settings(settings_doc(settings)) == settings
    assert parse_settings({}).capture is False
    with pytest.raises(InvalidObject, match=r"capturePorts: 10500\.\.10509 overlaps tcpPorts"):
        parse_settings({"capturePorts": {"start": 10500, "size": 10}})
    with pytest.raises(InvalidObject, match="capture"):
        parse_settings({"capture": "yes please"})


# -- the nftables ruleset -----------------------------------------------------------------------


def capture_doc(**changes: Any) -> schema.Capture:
    doc = schema.Capture(
        listeners=[
            schema.CaptureListener(
                port=12007, route="demo/web:80", ip="10.96.0.10", service_port=80
            ),
            schema.CaptureListener(
                port=12001, route="demo/web:8080", ip="10.96.0.10", service_port=8080
            ),
        ],
        proxies={"node-a": "10.244.1.5"},
    )
    return msgspec.structs.replace(doc, **changes)


DELETES = "table ip simmesh\ndelete table ip simmesh\ntable ip6 simmesh\ndelete table ip6 simmesh\n"


def test_the_ruleset_redirects_each_captured_port_to_the_node_proxy() -> None:
    text = render_nft(capture_doc(), "node-a")
    assert text == (
        DELETES + "table ip simmesh {\n"
        "\tchain capture {\n"
        "\t\ttype nat hook prerouting priority dstnat - 10; policy accept;\n"
        "\t\tip saddr 10.244.1.5 return\n"
        '\t\tip daddr 10.96.0.10 tcp dport 80 dnat to 10.244.1.5:12007 comment "demo/web:80"\n'
        '\t\tip daddr 10.96.0.10 tcp dport 8080 dnat to 10.244.1.5:12001 comment "demo/web:8080"\n'
        "\t}\n"
        "}\n"
    )


def test_no_capture_or_no_proxy_on_the_node_removes_the_rules() -> None:
    assert render_nft(None, "node-a") == DELETES
    assert render_nft(capture_doc(), "node-b") == DELETES


def test_ipv6_proxies_get_an_ip6_table_and_other_families_are_left_out() -> None:
    doc = capture_doc(proxies={"node-a": "fd00::5"})
    doc = msgspec.structs.replace(
        doc,
        listeners=[
            *doc.listeners,
            schema.CaptureListener(
                port=12002, route="demo/v6:80", ip="fd00:96::1", service_port=80
            ),
        ],
    )
    text = render_nft(doc, "node-a")
    assert "table ip6 simmesh {" in text and "ip6 saddr fd00::5 return" in text
    assert "ip6 daddr fd00:96::1 tcp dport 80 dnat to [fd00::5]:12002" in text
    assert "# not captured: demo/web:80 at 10.96.0.10 (not ip6)" in text
    assert "ip daddr 10.96.0.10" not in text
