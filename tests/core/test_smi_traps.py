"""One test per trap listed in shared/SMI.md, plus the Layer5 conformance cases it names."""

from __future__ import annotations

from typing import Any

import pytest

from mesh.core.model import Settings
from mesh.core.routing import Reason
from tests.core.builders import (
    Client,
    app,
    backend_of,
    compile_docs,
    counts,
    endpoint,
    endpoint_slice,
    error_texts,
    errors_of,
    http_match,
    port_route,
    route_group,
    rule,
    service,
    traffic_split,
    traffic_target,
    wire,
)

ACL = Settings(acl=True)


def acl_world(*smi: dict[str, Any]) -> list[dict[str, Any]]:
    """Pods a (10.1.0.1) and c (10.3.0.1) call Service b (port 80 -> 8080, pod 10.2.0.1)."""
    return [
        *app("a", ips=["10.1.0.1"]),
        *app("b", ips=["10.2.0.1"]),
        *app("c", ips=["10.3.0.1"]),
        *smi,
    ]


def grant_http(*matches: dict[str, Any], sources: tuple[str, ...] = ("a",)) -> list[dict[str, Any]]:
    return [
        route_group("b-routes", list(matches)),
        traffic_target(
            "to-b", dest="b", sources=list(sources), rules=[rule("HTTPRouteGroup", "b-routes")]
        ),
    ]


def status(
    client: Client, path: str = "/", method: str = "GET", source: str = "demo/a", **kw: Any
) -> int | None:
    return client.http("b.demo.mesh", path, method=method, source=source, **kw).status


# -- HTTPRouteGroup -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "allowed"),
    [
        ("/metrics", True),
        ("/metrics/x", True),
        ("/metricsX", True),
        ("/metrics?a=b", True),
        ("/x/metrics", False),
        ("/", False),
        ("/metric", False),
        ("/echo?next=/metrics", False),
    ],
)
def test_path_regex_is_anchored_at_the_start_only_and_ignores_the_query(
    path: str, allowed: bool
) -> None:
    client = Client(compile_docs(acl_world(*grant_http(http_match("m", path="/metrics"))), ACL))
    assert status(client, path) == (None if allowed else 403)


def test_methods_star_means_every_method() -> None:
    client = Client(
        compile_docs(acl_world(*grant_http(http_match("m", path="/", methods=["GET", "*"]))), ACL)
    )
    for method in ["GET", "HEAD", "PUT", "POST", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"]:
        assert status(client, "/x", method) is None, method


def test_conformance_spec_case() -> None:
    metrics = Client(
        compile_docs(acl_world(*grant_http(http_match("m", path="/metrics", methods=["*"]))), ACL)
    )
    assert status(metrics, "/metrics") is None
    assert status(metrics, "/echo") == 403
    echo = Client(
        compile_docs(acl_world(*grant_http(http_match("m", path=".*", methods=["GET"]))), ACL)
    )
    assert status(echo, "/echo") is None
    assert status(echo, "/echo", "POST") == 403


def test_headers_are_and_within_a_match_and_matches_are_or() -> None:
    both = http_match("both", headers=[{"x-a": "1"}, {"x-b": "2"}])
    other = http_match("other", headers={"x-c": "3"})
    client = Client(compile_docs(acl_world(*grant_http(both, other)), ACL))
    cases = {
        "a and b": {"x-a": "1", "x-b": "2"},
        "a only": {"x-a": "1"},
        "b only": {"x-b": "2"},
        "c only": {"x-c": "3"},
        "a and c": {"x-a": "1", "x-c": "3"},
        "none": {},
        "whole value": {"x-a": "11", "x-b": "2"},  # regexes match the whole header value
    }
    got = {name: status(client, headers=headers) for name, headers in cases.items()}
    assert got == {
        "a and b": None,
        "a only": 403,
        "b only": 403,
        "c only": None,
        "a and c": None,
        "none": 403,
        "whole value": 403,
    }


# -- TrafficTarget --------------------------------------------------------------------------------


def test_traffic_target_without_rules_grants_nothing() -> None:
    tt = traffic_target("no-rules", dest="b", sources=["a"], rules=[])
    config = compile_docs(acl_world(tt), ACL)
    assert [(e["name"], e["field"]) for e in errors_of(config)] == [("no-rules", "spec.rules")]
    assert status(Client(config)) == 403
    assert status(Client(config), source="demo/c") == 403


def test_overlapping_routes_for_different_sources_do_not_shadow_each_other() -> None:
    docs = acl_world(
        route_group("api", [http_match("api", path="/api", methods=["GET"])]),
        route_group("admin", [http_match("admin", path="/api/admin", methods=["POST"])]),
        traffic_target("a-to-b", dest="b", sources=["a"], rules=[rule("HTTPRouteGroup", "api")]),
        traffic_target("c-to-b", dest="b", sources=["c"], rules=[rule("HTTPRouteGroup", "admin")]),
    )
    client = Client(compile_docs(docs, ACL))
    got = {
        (source, method): status(client, "/api/admin/x", method, f"demo/{source}")
        for source in ("a", "c")
        for method in ("GET", "POST")
    }
    assert got == {("a", "GET"): None, ("a", "POST"): 403, ("c", "GET"): 403, ("c", "POST"): None}


def test_unknown_rule_kind_is_an_error_on_that_traffic_target_only() -> None:
    bad = traffic_target("bad", dest="b", sources=["c"], rules=[rule("GRPCRoute", "x")])
    good = traffic_target("good", dest="b", sources=["a"], rules=[rule("TCPRoute", "all")])
    config = compile_docs(acl_world(port_route("all", None), bad, good), ACL)
    assert [(e["kind"], e["name"], e["field"]) for e in errors_of(config)] == [
        ("TrafficTarget", "bad", "spec.rules[0].kind")
    ]
    assert "GRPCRoute" in errors_of(config)[0]["message"]
    client = Client(config)
    assert (status(client), status(client, source="demo/c")) == (None, 403)


def test_conformance_access_case_tcp_route_with_no_ports_admits_http() -> None:
    base = acl_world()
    assert status(Client(compile_docs(base, ACL))) == 403  # no TrafficTarget: denied
    smi = [
        port_route("all-ports", {"name": "all", "ports": []}),
        traffic_target("b-from-a", dest="b", sources=["a"], rules=[rule("TCPRoute", "all-ports")]),
    ]
    client = Client(compile_docs([*base, *smi], ACL))
    decisions = [
        client.http("b.demo.mesh", "/echo", method=m, source="demo/a") for m in ("GET", "POST")
    ]
    assert [d.status for d in decisions] == [None, None]
    assert [d.endpoint.ip for d in decisions if d.endpoint] == ["10.2.0.1"] * 2
    assert status(client, source="demo/c") == 403
    assert status(Client(compile_docs(base, ACL))) == 403  # both deleted: denied again


def test_v1alpha2_destination_port_is_dropped() -> None:
    tt = traffic_target(
        "tt", dest="b", sources=["a"], rules=[rule("TCPRoute", "all")], version="v1alpha2"
    )
    tt["spec"]["destination"]["port"] = 9999
    config = compile_docs(acl_world(port_route("all", None), tt), ACL)
    assert errors_of(config) == []
    assert status(Client(config)) is None  # not restricted to the (nonexistent) port 9999


@pytest.mark.parametrize(
    ("ports", "allowed"), [([8080], True), ([80], False), ([80, 8080], True), ([], True)]
)
def test_tcp_route_ports_are_target_ports(ports: list[int], allowed: bool) -> None:
    """Service port 80 -> targetPort 8080: the TCPRoute names what the pod listens on."""
    smi = [
        port_route("r", {"name": "m", "ports": ports}),
        traffic_target("tt", dest="b", sources=["a"], rules=[rule("TCPRoute", "r")]),
    ]
    tcp_b = app(
        "b",
        ips=["10.2.0.1"],
        ports=[("pg", 5432, 15432)],
        annotations={"simmesh.io/traffic-type": "tcp"},
    )
    http_client = Client(compile_docs(acl_world(*smi), ACL))
    assert status(http_client) == (None if allowed else 403)
    tcp_ports = [15432 if p == 8080 else 5432 for p in ports]
    smi[0] = port_route("r", {"name": "m", "ports": tcp_ports})
    tcp_client = Client(compile_docs([*app("a", ips=["10.1.0.1"]), *tcp_b, *smi], ACL))
    flow = tcp_client.flow(tcp_client.listener_of("demo/b:5432"), source="demo/a")
    assert flow.status == (None if allowed else 403)


# -- TrafficSplit ---------------------------------------------------------------------------------


def split_world(*extra: dict[str, Any]) -> list[dict[str, Any]]:
    """Root Service "svc" selects the pods of "b" and "c"; "b" and "c" also have their own."""
    return [
        *app("b", ips=["10.2.0.1"]),
        *app("c", ips=["10.3.0.1"]),
        service("svc"),
        endpoint_slice("svc", [endpoint("10.2.0.1", pod="b-0"), endpoint("10.3.0.1", pod="c-0")]),
        *extra,
    ]


def calls(client: Client, n: int = 50, **kw: Any) -> dict[str, int]:
    """Who answered ``n`` calls to the root: the identity of the endpoint reached."""
    out = [client.http("svc.demo.mesh", **kw).endpoint for _ in range(n)]
    return counts(str(e.identity).split("/")[1] for e in out if e is not None)


@pytest.mark.parametrize(
    ("weights", "expected"),
    [((1, 0), {"b": 50}), ((0, 1), {"c": 50}), ((1, 1), {"b": 25, "c": 25})],
)
def test_conformance_split_exact_counts(weights: tuple[int, int], expected: dict[str, int]) -> None:
    split = traffic_split("s", "svc", [("b", weights[0]), ("c", weights[1])])
    assert calls(Client(compile_docs(split_world(split)))) == expected


def test_conformance_split_without_a_split_reaches_both() -> None:
    got = calls(Client(compile_docs(split_world())))
    assert got["b"] > 0 and got["c"] > 0


@pytest.mark.parametrize("first", ["b", "c"])
def test_conformance_split_75_25(first: str) -> None:
    other = "c" if first == "b" else "b"
    split = traffic_split("s", "svc", [(first, 75), (other, 25)])
    got = calls(Client(compile_docs(split_world(split))))
    assert got[first] > got[other] > 0


def test_v1alpha1_quantity_weights_are_not_inverted() -> None:
    split = traffic_split("s", "svc", [("b", 1), ("c", "500m")], version="v1alpha1")
    assert calls(Client(compile_docs(split_world(split))), n=30) == {"b": 20, "c": 10}
    split = traffic_split("s", "svc", [("b", "100m"), ("c", "300m")], version="v1alpha1")
    assert calls(Client(compile_docs(split_world(split))), n=40) == {"b": 10, "c": 30}


def test_weight_zero_gets_nothing() -> None:
    split = traffic_split("s", "svc", [("b", 0), ("c", 3), ("svc", 0)])
    assert calls(Client(compile_docs(split_world(split))), n=10) == {"c": 10}


def test_all_zero_weights_is_an_error_and_traffic_goes_to_the_root() -> None:
    split = traffic_split("s", "svc", [("b", 0), ("c", 0)])
    config = compile_docs(split_world(split))
    assert [(e["name"], e["field"]) for e in errors_of(config)] == [("s", "spec.backends")]
    assert "goes to the root Service" in errors_of(config)[0]["message"]
    assert wire(config)["routes"]["demo/svc:80"]["split"] is None
    decisions = [Client(config).http("svc.demo.mesh") for _ in range(1)]
    assert decisions[0].status is None
    assert calls(Client(config), n=4) == {"b": 2, "c": 2}  # the root's own endpoints


def test_backend_without_the_root_port_is_excluded_on_that_port() -> None:
    two_ports = [("http", 80, 8080), ("admin", 81, 8081)]
    docs = [
        *app("b", ips=["10.2.0.1"], ports=two_ports),
        *app("c", ips=["10.3.0.1"]),
        *app("svc", ips=["10.0.0.1"], ports=two_ports),
        traffic_split("s", "svc", [("b", 1), ("c", 1)]),
    ]
    config = compile_docs(docs)
    assert [(e["name"], e["field"]) for e in errors_of(config)] == [
        ("s", "spec.backends[1].service")
    ]
    assert "has no port 81" in errors_of(config)[0]["message"]
    client = Client(config)
    on_80 = [backend_of(client.http("svc.demo.mesh:80")) for _ in range(4)]
    on_81 = [backend_of(client.http("svc.demo.mesh:81", listener=5001)) for _ in range(4)]
    assert counts(on_80) == {"demo/b": 2, "demo/c": 2}
    assert counts(on_81) == {"demo/b": 4}


def test_split_cycles_are_reported_and_not_followed() -> None:
    docs = split_world(
        traffic_split("b-split", "b", [("c", 1)]),
        traffic_split("c-split", "c", [("b", 1)]),
    )
    config = compile_docs(docs)
    texts = error_texts(config)
    assert len(texts) == 2
    assert all("forms a cycle with" in t for t in texts)
    assert {t.split(":")[0] for t in texts} == {
        "TrafficSplit demo/b-split",
        "TrafficSplit demo/c-split",
    }
    client = Client(config)
    reached = client.http("b.demo.mesh").endpoint
    assert reached is not None and reached.identity == "demo/c"  # one hop: c's own endpoints


@pytest.mark.parametrize("reverse", [False, True])
def test_several_splits_on_one_root_pick_the_first_by_name(reverse: bool) -> None:
    splits = [
        traffic_split("zeta", "svc", [("c", 1)]),
        traffic_split("alpha", "svc", [("b", 1)]),
    ]
    config = compile_docs(split_world(*(reversed(splits) if reverse else splits)))
    assert wire(config)["routes"]["demo/svc:80"]["split"]["name"] == "demo/alpha"
    assert [(e["name"], e["field"]) for e in errors_of(config)] == [("zeta", "spec.service")]
    assert "already split by TrafficSplit demo/alpha" in errors_of(config)[0]["message"]
    assert calls(Client(config), n=5) == {"b": 5}


@pytest.mark.parametrize(
    "broken",
    [
        [("c", 0)],  # no positive weight
        [("missing", 1)],  # no usable backend
    ],
)
def test_an_unusable_first_split_still_holds_its_root(broken: list[tuple[str, int]]) -> None:
    """First by name wins even when it is unusable: its traffic goes to the root Service and the
    later split carries an error; a split breaking never silently hands its root to another."""
    config = compile_docs(
        split_world(traffic_split("alpha", "svc", broken), traffic_split("zeta", "svc", [("b", 1)]))
    )
    assert wire(config)["routes"]["demo/svc:80"].get("split") is None
    errors = {(e["name"], e["field"]): e["message"] for e in errors_of(config)}
    assert "already split by TrafficSplit demo/alpha" in errors[("zeta", "spec.service")]
    assert any(name == "alpha" for name, _ in errors)
    assert set(calls(Client(config), n=10)) == {"b", "c"}  # the root's endpoints, not zeta's b


def test_split_matches_split_only_the_requests_they_select() -> None:
    docs = split_world(
        route_group(
            "canary",
            [http_match("beta-users", headers={"x-beta": "yes"}), http_match("v2", path="/v2")],
        ),
        traffic_split("s", "svc", [("c", 1)], matches=["canary"]),
    )
    client = Client(compile_docs(docs))
    assert calls(client, n=6, headers={"x-beta": "yes"}) == {"c": 6}
    assert calls(client, n=6, path="/v2/items?x=1") == {"c": 6}
    assert calls(client, n=6, headers={"x-beta": "no"}) == {"b": 3, "c": 3}  # the root's endpoints
    assert calls(client, n=6, path="/v1/v2") == {"b": 3, "c": 3}


def test_backends_accept_the_root_host() -> None:
    """Requests to the root's mesh name reach the backend: the route stays the root's."""
    split = traffic_split("s", "svc", [("c", 1)])
    decision = Client(compile_docs(split_world(split))).http("svc.demo.mesh")
    assert decision.route is not None and decision.route.service == "demo/svc"
    assert backend_of(decision) == "demo/c"
    assert decision.reason is Reason.ALLOWED
