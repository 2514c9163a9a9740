"""Router and Engine: one request or flow in, one decision out, with the state kept between."""

from __future__ import annotations

import random
from typing import Any

from mesh.core.model import Settings
from mesh.core.policies import Outcome
from mesh.core.request import parse_request
from mesh.core.routing import Engine, EngineState, Reason, Router
from tests.core.builders import (
    Client,
    app,
    backend_of,
    compile_docs,
    counts,
    http_match,
    port_route,
    route_group,
    rule,
    traffic_split,
    traffic_target,
)

ACL = Settings(acl=True)
IPS = ["10.0.0.1", "10.0.0.2", "10.0.0.3"]


def test_unknown_listener_and_host_are_404() -> None:
    client = Client(compile_docs(app("web", ips=IPS)))
    no_listener = client.http("web.demo.mesh", listener=5009)
    no_host = client.http("nope.demo.mesh")
    assert (no_listener.reason, no_listener.status) == (Reason.UNKNOWN_LISTENER, 404)
    assert (no_host.reason, no_host.status) == (Reason.UNKNOWN_HOST, 404)
    assert no_host.endpoint is None and not no_host.allowed
    flow = client.flow(10000)
    assert (flow.reason, flow.status) == (Reason.UNKNOWN_LISTENER, 404)


def test_default_mode_round_robin_over_ready_endpoints() -> None:
    client = Client(compile_docs(app("web", ips=IPS, ready=[True, False, True])))
    decisions = [client.http("web.demo.mesh", source=None) for _ in range(4)]
    assert all(d.allowed and d.status is None for d in decisions)
    assert [d.endpoint.ip for d in decisions if d.endpoint] == ["10.0.0.1", "10.0.0.3"] * 2
    assert decisions[0].route is not None and decisions[0].route.key == "demo/web:80"


def test_least_request_avoids_the_loaded_endpoint() -> None:
    docs = app("web", ips=IPS, annotations={"simmesh.io/load-balancer": "least-request"})
    client = Client(compile_docs(docs), seed=3)
    client.engine.state.inflight["10.0.0.1:8080"] = 100
    picked = counts(
        d.endpoint.ip for d in (client.http("web.demo.mesh") for _ in range(60)) if d.endpoint
    )
    assert "10.0.0.1" not in picked
    assert set(picked) == {"10.0.0.2", "10.0.0.3"}


def test_finish_decrements_in_flight_counts() -> None:
    client = Client(compile_docs(app("web", ips=IPS[:1])))
    decision = client.http("web.demo.mesh")
    assert decision.endpoint is not None
    assert client.engine.state.inflight == {"10.0.0.1:8080": 1}
    client.engine.finish(decision, decision.endpoint, Outcome(200), 0.0)
    assert client.engine.state.inflight == {"10.0.0.1:8080": 0}


def test_no_ready_endpoint_is_503() -> None:
    client = Client(compile_docs(app("web", ips=IPS[:1], ready=[False])))
    decision = client.http("web.demo.mesh")
    assert (decision.reason, decision.status, decision.endpoint) == (Reason.NO_ENDPOINTS, 503, None)


def test_rate_limit_is_429_with_retry_after() -> None:
    docs = app(
        "web",
        ips=IPS,
        annotations={"simmesh.io/ratelimit-average": "2", "simmesh.io/ratelimit-burst": "2"},
    )
    client = Client(compile_docs(docs))
    first, second, third = (client.http("web.demo.mesh", now=0.0) for _ in range(3))
    assert first.allowed and second.allowed
    assert (third.reason, third.status, third.retry_after) == (Reason.RATE_LIMITED, 429, 0.5)
    assert client.http("web.demo.mesh", now=0.5).allowed


def test_circuit_breakers_eject_endpoints_then_503_then_probe() -> None:
    docs = app(
        "web",
        ips=IPS[:2],
        annotations={
            "simmesh.io/circuit-breaker": "ConsecutiveFailures() >= 2",
            "simmesh.io/circuit-breaker-open-duration": "5s",
        },
    )
    client = Client(compile_docs(docs))
    engine = client.engine

    def request_and_fail(now: float, outcome: Outcome) -> Any:
        decision = client.http("web.demo.mesh", now=now)
        if decision.endpoint is not None:
            engine.finish(decision, decision.endpoint, outcome, now)
        return decision

    ips = [request_and_fail(0.1 * i, Outcome(500)).endpoint.ip for i in range(4)]
    assert ips == ["10.0.0.1", "10.0.0.2", "10.0.0.1", "10.0.0.2"]  # both breakers now open
    blocked = client.http("web.demo.mesh", now=1.0)
    assert (blocked.reason, blocked.status) == (Reason.CIRCUIT_OPEN, 503)
    probe = client.http("web.demo.mesh", now=5.25)  # 10.0.0.1 opened at 0.2, .2 at 0.3
    assert probe.endpoint is not None and probe.endpoint.ip == "10.0.0.1"
    assert client.http("web.demo.mesh", now=5.25).status == 503  # one probe at a time
    engine.finish(probe, probe.endpoint, Outcome(200), 5.26)
    after = [client.http("web.demo.mesh", now=5.27).endpoint for _ in range(2)]
    assert [e.ip for e in after if e] == ["10.0.0.1", "10.0.0.1"]


def test_tcp_and_udp_flows() -> None:
    docs = [
        *app(
            "db",
            ips=IPS[:2],
            ports=[("pg", 5432, 5432)],
            annotations={"simmesh.io/traffic-type": "tcp"},
        ),
        *app(
            "dns",
            ips=IPS[2:],
            ports=[("dns", 53, 5353)],
            annotations={"simmesh.io/traffic-type": "udp"},
        ),
    ]
    client = Client(compile_docs(docs))
    tcp = [client.flow(client.listener_of("demo/db:5432")) for _ in range(3)]
    assert [d.endpoint.ip for d in tcp if d.endpoint] == ["10.0.0.1", "10.0.0.2", "10.0.0.1"]
    udp = client.flow(client.listener_of("demo/dns:53"))
    assert udp.endpoint is not None and (udp.endpoint.ip, udp.endpoint.port) == ("10.0.0.3", 5353)


# -- ACL ------------------------------------------------------------------------------------------


def acl_docs() -> list[dict[str, Any]]:
    return [
        *app("client", ips=["10.1.0.1"]),
        *app("web", ips=IPS[:2]),
        route_group(
            "web-routes",
            [http_match("api", path="/api", methods=["GET"], headers={"x-user": "[a-z]+"})],
        ),
        traffic_target(
            "client-web",
            dest="web",
            sources=["client"],
            rules=[rule("HTTPRouteGroup", "web-routes")],
        ),
    ]


def test_acl_verdicts() -> None:
    client = Client(compile_docs(acl_docs(), ACL))
    good = {"x-user": "ann"}
    allowed = client.http("web.demo.mesh", "/api/v1?q=1", headers=good, source="demo/client")
    assert allowed.allowed and allowed.endpoint is not None
    assert allowed.rule == "TrafficTarget demo/client-web (HTTPRouteGroup web-routes match 'api')"
    checks = {
        "no identity": client.http("web.demo.mesh", "/api", headers=good, source=None),
        "not granted": client.http("web.demo.mesh", "/api", headers=good, source="demo/web"),
        "path": client.http("web.demo.mesh", "/x/api", headers=good, source="demo/client"),
        "method": client.http(
            "web.demo.mesh", "/api", method="POST", headers=good, source="demo/client"
        ),
        "header": client.http(
            "web.demo.mesh", "/api", headers={"x-user": "Ann"}, source="demo/client"
        ),
    }
    assert {k: (d.reason.value, d.status, d.endpoint) for k, d in checks.items()} == {
        "no identity": ("no-source-identity", 403, None),
        "not granted": ("not-granted", 403, None),
        "path": ("no-matching-route", 403, None),
        "method": ("no-matching-route", 403, None),
        "header": ("no-matching-route", 403, None),
    }
    assert "demo/web" in checks["not granted"].detail


def test_acl_source_identity_comes_from_the_pod_ip() -> None:
    router = Router(compile_docs(acl_docs(), ACL))
    assert router.source_identity("10.1.0.1") == "demo/client"
    assert router.source_identity("10.9.9.9") is None


def test_acl_without_endpoints_is_503_not_403() -> None:
    docs = [*app("web", ips=IPS[:1], ready=[False])]
    decision = Client(compile_docs(docs, ACL)).http("web.demo.mesh", source="demo/client")
    assert (decision.reason, decision.status) == (Reason.NO_ENDPOINTS, 503)


def test_acl_only_granted_endpoints_are_candidates() -> None:
    docs = [
        *app("client", ips=["10.1.0.1"]),
        *app("web", ips=IPS[:2]),
        *app("web-old", sa="legacy", ips=IPS[2:]),
        port_route("any", {"name": "all", "ports": []}),
        traffic_target("tt", dest="web", sources=["client"], rules=[rule("TCPRoute", "any")]),
    ]
    web_slice = docs[4]
    assert web_slice["metadata"]["name"] == "web-slice"
    # the Service "web" also selects a pod of another identity
    web_slice["endpoints"].append(
        {"addresses": [IPS[2]], "targetRef": {"kind": "Pod", "name": "web-old-0"}}
    )
    client = Client(compile_docs(docs, ACL))
    decisions = [client.http("web.demo.mesh", source="demo/client") for _ in range(4)]
    assert {d.endpoint.ip for d in decisions if d.endpoint} == set(IPS[:2])
    assert {e.ip for e in decisions[0].candidates} == set(IPS[:2])


# -- splits ---------------------------------------------------------------------------------------


def split_docs(*extra: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        *app("root", ips=["10.0.0.1"]),
        *app("v1", ips=["10.0.1.1"], ports=[("http", 80, 8081)]),
        *app("v2", ips=["10.0.2.1"], ports=[("http", 80, 9090)]),
        *extra,
    ]


def test_split_maps_the_root_port_to_each_backend_target_port() -> None:
    client = Client(compile_docs(split_docs(traffic_split("s", "root", [("v1", 1), ("v2", 1)]))))
    decisions = [client.http("root.demo.mesh:80") for _ in range(4)]
    got = [(backend_of(d), d.endpoint.port) for d in decisions if d.endpoint]
    assert got == [("demo/v1", 8081), ("demo/v2", 9090)] * 2
    assert all(d.route is not None and d.route.service == "demo/root" for d in decisions)


def test_split_backends_are_rate_limited_by_the_root() -> None:
    docs = split_docs(traffic_split("s", "root", [("v1", 1), ("v2", 1)]))
    docs[0]["metadata"]["annotations"] = {
        "simmesh.io/ratelimit-average": "1",
        "simmesh.io/ratelimit-burst": "2",
    }
    client = Client(compile_docs(docs))
    assert [client.http("root.demo.mesh").status for _ in range(3)] == [None, None, 429]


def test_split_state_survives_a_config_reload() -> None:
    docs = split_docs(traffic_split("s", "root", [("v1", 1), ("v2", 1)]))
    state = EngineState()
    config = compile_docs(docs)
    first = Engine(Router(config), state)
    second = Engine(Router(compile_docs(docs)), state)
    kwargs: dict[str, Any] = {
        "listener": 5000,
        "request": parse_request("GET", "/", [], authority="root.demo.mesh"),
        "source": None,
        "now": 0.0,
        "rng": random.Random(0),
    }
    picks = [backend_of(first.decide_http(**kwargs)), backend_of(second.decide_http(**kwargs))]
    assert picks == ["demo/v1", "demo/v2"]


def test_tcp_split_flows() -> None:
    tcp = {"simmesh.io/traffic-type": "tcp"}
    docs = [
        *app("db", ips=["10.0.0.1"], ports=[("pg", 5432, 5432)], annotations=tcp),
        *app("db-a", ips=["10.0.1.1"], ports=[("pg", 5432, 6000)], annotations=tcp),
        *app("db-b", ips=["10.0.2.1"], ports=[("pg", 5432, 7000)], annotations=tcp),
        traffic_split("s", "db", [("db-a", 2), ("db-b", 1)]),
    ]
    client = Client(compile_docs(docs))
    listener = client.listener_of("demo/db:5432")
    got = [client.flow(listener).endpoint for _ in range(6)]
    assert [e.port for e in got if e] == [6000, 7000, 6000] * 2


def test_acl_with_split_checks_the_chosen_backend() -> None:
    docs = split_docs(
        *app("client", ips=["10.9.0.1"]),
        port_route("any", None),
        traffic_target("tt", dest="v1", sources=["client"], rules=[rule("TCPRoute", "any")]),
        traffic_split("s", "root", [("v1", 1), ("v2", 1)]),
    )
    client = Client(compile_docs(docs, ACL))
    decisions = [client.http("root.demo.mesh", source="demo/client") for _ in range(4)]
    assert [(backend_of(d), d.status) for d in decisions] == [
        ("demo/v1", None),
        ("demo/v2", 403),
    ] * 2
