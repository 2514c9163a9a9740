"""GAMMA: HTTPRoute and GRPCRoute with a Service parent, in the core (read, attached, decided).

The cases follow the Gateway API spec (v1.6) and the mesh conformance tests it names
(MeshHTTPRouteMatching, MeshHTTPRouteQueryParamMatching, MeshConsumerRoute, MeshPorts, the
redirect and rewrite tests): what each request gets is decided by the same Engine the proxy and
the simulator run.
"""

from __future__ import annotations

import random
from typing import Any

import pytest

from mesh.core.model import Settings
from mesh.core.request import parse_request
from mesh.core.routing import Decision, Reason, Router
from tests.core.builders import (
    Client,
    app,
    backend_of,
    backend_ref,
    compile_docs,
    counts,
    error_texts,
    exact,
    grpc_route,
    header,
    http_route,
    parent,
    pod,
    prefix,
    route_group,
    rule,
    traffic_split,
    traffic_target,
    wire,
)

HOST = "web.demo.mesh"


def base() -> list[dict[str, Any]]:
    return [
        *app("web", ips=["10.0.0.1"], ports=(("http", 80, 8080), ("alt", 8080, 8080))),
        *app("web-v1", ips=["10.0.1.1", "10.0.1.2"]),
        *app("web-v2", ips=["10.0.2.1"]),
        pod("client", sa="client", ip="10.0.9.1"),
        pod("client", sa="client", ip="10.0.9.2", ns="caller"),
        *app("other", ns="caller", ips=["10.0.3.1"]),
    ]


def world(*docs: dict[str, Any], acl: bool = False) -> Client:
    config = compile_docs([*base(), *docs], Settings(acl=acl))
    return Client(config)


def ask(client: Client, path: str = "/", **kwargs: Any) -> Decision:
    return client.http(HOST, path, **kwargs)


def to(*backends: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"backendRefs": list(backends), **extra}


# -- attaching ----------------------------------------------------------------------------------


def test_no_route_is_plain_forwarding() -> None:
    d = ask(world())
    assert d.allowed and backend_of(d) == "demo/web" and d.matched is None


def test_a_producer_route_decides_for_every_caller() -> None:
    client = world(http_route("r", [parent("web")], [to(backend_ref("web-v2"))]))
    for source in (None, "demo/client", "caller/client"):
        d = ask(client, source=source)
        assert backend_of(d) == "demo/web-v2" and d.matched is not None


def test_routes_attach_to_the_parent_port_or_every_port() -> None:
    """MeshPorts: a parentRef with a port governs that port only; without, every port."""
    client = world(
        http_route("one", [parent("web", port=80)], [to(backend_ref("web-v1"))]),
    )
    assert backend_of(ask(client)) == "demo/web-v1"
    alt = client.http(f"{HOST}:8080", "/", listener=5001)
    assert backend_of(alt) == "demo/web" and alt.matched is None
    every = world(http_route("all", [parent("web")], [to(backend_ref("web-v1"))]))
    assert backend_of(every.http(f"{HOST}:8080", "/", listener=5001)) == "demo/web-v1"


def test_section_name_is_a_port_name() -> None:
    client = world(http_route("r", [parent("web", section="alt")], [to(backend_ref("web-v1"))]))
    assert ask(client).matched is None
    assert backend_of(client.http(f"{HOST}:8080", "/", listener=5001)) == "demo/web-v1"


def test_gateway_parents_are_not_the_mesh() -> None:
    route = http_route("r", [{"name": "gw"}], [to(backend_ref("web-v1"))])
    client = world(route)
    assert ask(client).matched is None
    assert not error_texts(compile_docs([*base(), route]))


def test_consumer_routes_apply_to_their_namespace_only_and_win_there() -> None:
    """MeshConsumerRoute (GEP-1294): a route in another namespace than its parent Service is
    for callers of its own namespace, and replaces the producer routes for them."""
    client = world(
        http_route("producer", [parent("web")], [to(backend_ref("web-v1"))]),
        http_route(
            "consumer",
            [parent("web", ns="demo")],
            [to(backend_ref("web-v2", ns="demo"))],  # no ReferenceGrant needed
            ns="caller",
        ),
    )
    assert backend_of(ask(client, source="caller/client")) == "demo/web-v2"
    assert backend_of(ask(client, source="demo/client")) == "demo/web-v1"
    assert backend_of(ask(client, source=None)) == "demo/web-v1"


def test_consumer_routes_need_the_callers_identities_outside_acl_mode() -> None:
    docs = [
        *base(),
        http_route(
            "c", [parent("web", ns="demo")], [to(backend_ref("web-v2", ns="demo"))], ns="caller"
        ),
    ]
    assert wire(compile_docs(docs))["identities"]["10.0.9.2"] == "caller/client"
    assert wire(compile_docs(base()))["identities"] == {}


def test_a_grpc_route_wins_over_an_http_route_on_the_same_port() -> None:
    """GEP-1294 "Route types": GRPCRoute before HTTPRoute on one Service and port."""
    docs = [
        *base(),
        http_route("h", [parent("web", port=80)], [to(backend_ref("web-v1"))]),
        grpc_route("g", [parent("web", port=80)], [to(backend_ref("web-v2"))]),
    ]
    config = compile_docs(docs)
    client = Client(config)
    d = ask(client, "/pkg.Svc/Call", method="POST")
    assert backend_of(d) == "demo/web-v2" and d.scheme == "h2c"
    assert any(
        "HTTPRoute demo/h: spec.parentRefs[0]: Conflicted: GRPCRoute demo/g" in e
        for e in error_texts(config)
    )


@pytest.mark.parametrize(
    ("parent_ref", "message"),
    [
        (parent("nope"), "Service demo/nope not found or not meshed"),
        (parent("web", port=81), "Service demo/web has no port port 81; not attached"),
        (parent("web", section="x"), "has no port named 'x'"),
    ],
)
def test_parents_that_do_not_resolve_are_errors(parent_ref: dict[str, Any], message: str) -> None:
    config = compile_docs([*base(), http_route("r", [parent_ref], [to(backend_ref("web-v1"))])])
    assert any(
        e.startswith("HTTPRoute demo/r: spec.parentRefs[0]: ") and message in e
        for e in error_texts(config)
    )


def test_headless_and_tcp_services_are_no_parents() -> None:
    headless = app("db", ips=["10.0.4.1"])
    headless[0]["spec"]["clusterIP"] = "None"
    tcp = app("queue", ips=["10.0.5.1"], annotations={"simmesh.io/traffic-type": "tcp"})
    docs = [
        *base(),
        *headless,
        *tcp,
        http_route("a", [parent("db")], [to(backend_ref("web-v1"))]),
        http_route("b", [parent("queue")], [to(backend_ref("web-v1"))]),
    ]
    texts = error_texts(compile_docs(docs))
    assert any("HTTPRoute demo/a" in e and "headless" in e for e in texts)
    assert any("HTTPRoute demo/b" in e and "traffic type tcp" in e for e in texts)


def test_a_split_on_a_routed_port_is_not_used_and_says_so() -> None:
    docs = [
        *base(),
        traffic_split("s", "web", [("web-v1", 1), ("web-v2", 1)]),
        http_route("r", [parent("web", port=80)], [to(backend_ref("web-v2"))]),
    ]
    config = compile_docs(docs)
    client = Client(config)
    assert {backend_of(ask(client)) for _ in range(6)} == {"demo/web-v2"}
    assert wire(config)["routes"]["demo/web:80"].get("split") is None
    assert not any("port 8080 has HTTPRoute" in e for e in error_texts(config))
    assert any(
        "TrafficSplit demo/s: spec.service: Service demo/web port 80 has HTTPRoute demo/r" in e
        for e in error_texts(config)
    )


# -- matching and precedence ---------------------------------------------------------------------

MATCHING = http_route(
    "matching",
    [parent("web")],
    [
        to(backend_ref("web-v1"), matches=[prefix("/"), {"headers": [header("version", "one")]}]),
        to(backend_ref("web-v2"), matches=[prefix("/v2"), {"headers": [header("version", "two")]}]),
    ],
)


@pytest.mark.parametrize(
    ("path", "headers", "expected"),
    [
        ("/", {}, "demo/web-v1"),
        ("/example", {}, "demo/web-v1"),
        ("/", {"Version": "one"}, "demo/web-v1"),
        ("/v2", {}, "demo/web-v2"),
        ("/v2/", {}, "demo/web-v2"),
        ("/v2/example", {}, "demo/web-v2"),
        ("/", {"Version": "two"}, "demo/web-v2"),  # the header count breaks the / tie
        ("/", {"VERSION": "two"}, "demo/web-v2"),
        ("/v2example", {}, "demo/web-v1"),  # prefixes match whole segments
        ("/foo/v2/example", {}, "demo/web-v1"),
    ],
)
def test_mesh_http_route_matching(path: str, headers: dict[str, str], expected: str) -> None:
    assert backend_of(ask(world(MATCHING), path, headers=headers)) == expected


QUERY = http_route(
    "query",
    [parent("web")],
    [
        to(backend_ref("web-v1"), matches=[{"queryParams": [header("animal", "whale")]}]),
        to(backend_ref("web-v2"), matches=[{"queryParams": [header("animal", "dolphin")]}]),
        to(
            backend_ref("web-v1"),
            matches=[{"queryParams": [header("animal", "dolphin"), header("color", "blue")]}],
        ),
        to(
            backend_ref("other", ns="caller"),
            matches=[
                {"queryParams": [header("ANIMAL", "Whale")]},
                {"headers": [header("version", "two")], "queryParams": [header("animal", "whale")]},
            ],
        ),
    ],
)


@pytest.mark.parametrize(
    ("target", "headers", "expected"),
    [
        ("/?animal=whale", {}, "demo/web-v1"),
        ("/?animal=dolphin", {}, "demo/web-v2"),
        ("/?animal=dolphin&color=blue", {}, "demo/web-v1"),
        ("/?animal=whale&extra=1", {}, "demo/web-v1"),
        ("/?ANIMAL=Whale", {}, "caller/other"),
        ("/?animal=whale", {"version": "two"}, "caller/other"),  # more headers beat queries
        ("/?animal=%77hale", {}, "demo/web-v1"),  # values are read percent-decoded
        ("/?animal=whaledolphin", {}, None),
        ("/?animal=dog", {}, None),
        ("/?color=blue", {}, None),
        ("/", {}, None),
    ],
)
def test_query_parameter_matching(
    target: str, headers: dict[str, str], expected: str | None
) -> None:
    d = ask(world(QUERY), target, headers=headers)
    if expected is None:
        assert (d.status, d.reason) == (404, Reason.NO_MATCHING_RULE)
    else:
        assert backend_of(d) == expected


def test_exact_beats_regex_beats_prefix_then_method() -> None:
    client = world(
        http_route(
            "r",
            [parent("web")],
            [
                to(backend_ref("web"), matches=[prefix("/api/v1")]),
                to(
                    backend_ref("web-v1"),
                    matches=[{"path": {"type": "RegularExpression", "value": "/api/v[0-9]+/.*"}}],
                ),
                to(backend_ref("web-v2"), matches=[exact("/api/v1/items")]),
                to(backend_ref("other", ns="caller"), matches=[prefix("/api/v1", method="POST")]),
            ],
        )
    )
    assert backend_of(ask(client, "/api/v1/items")) == "demo/web-v2"
    assert backend_of(ask(client, "/api/v1/x")) == "demo/web-v1"  # regex over the whole path
    assert backend_of(ask(client, "/api/v1", method="POST")) == "caller/other"
    assert backend_of(ask(client, "/api/v1")) == "demo/web"


def test_ties_go_to_the_oldest_route_then_by_name_then_rule_order() -> None:
    def route(name: str, target: str, created: str | None) -> dict[str, Any]:
        return http_route(
            name,
            [parent("web")],
            [to(backend_ref(target), matches=[prefix("/a")])],
            created=created,
        )

    old = world(
        route("b", "web-v1", "2024-01-01T00:00:00Z"), route("a", "web-v2", "2024-06-01T00:00:00Z")
    )
    assert backend_of(ask(old, "/a")) == "demo/web-v1"
    by_name = world(route("b", "web-v1", None), route("a", "web-v2", None))
    assert backend_of(ask(by_name, "/a")) == "demo/web-v2"
    dated = world(route("b", "web-v1", "2024-01-01T00:00:00Z"), route("a", "web-v2", None))
    assert backend_of(ask(dated, "/a")) == "demo/web-v1"  # no timestamp counts as the newest
    rules = world(
        http_route(
            "r",
            [parent("web")],
            [
                to(backend_ref("web-v1"), matches=[prefix("/a")]),
                to(backend_ref("web-v2"), matches=[prefix("/a")]),
            ],
        )
    )
    assert backend_of(ask(rules, "/a")) == "demo/web-v1"


def test_no_matching_rule_is_404_and_the_default_rule_matches_everything() -> None:
    client = world(
        http_route("r", [parent("web")], [to(backend_ref("web-v1"), matches=[exact("/only")])])
    )
    d = ask(client, "/else")
    assert (d.status, d.reason, d.allowed) == (404, Reason.NO_MATCHING_RULE, False)
    defaulted = world(http_route("r", [parent("web")], [to(backend_ref("web-v1"))]))
    assert backend_of(ask(defaulted, "/anything/at/all")) == "demo/web-v1"


def test_headers_may_be_matched_by_regular_expression() -> None:
    client = world(
        http_route(
            "r",
            [parent("web")],
            [
                to(
                    backend_ref("web-v2"),
                    matches=[{"headers": [header("x-user", "(alice|bob)", "RegularExpression")]}],
                ),
                to(backend_ref("web-v1")),
            ],
        )
    )
    assert backend_of(ask(client, headers={"X-User": "bob"})) == "demo/web-v2"
    assert backend_of(ask(client, headers={"X-User": "bobby"})) == "demo/web-v1"


# -- backends and weights ------------------------------------------------------------------------


def test_weights_are_exact_over_a_cycle_and_zero_gets_nothing() -> None:
    client = world(
        http_route(
            "r",
            [parent("web")],
            [
                to(
                    backend_ref("web-v1", weight=70),
                    backend_ref("web-v2", weight=30),
                    backend_ref("web", weight=0),
                )
            ],
        )
    )
    got = counts(backend_of(ask(client)) for _ in range(500))
    assert got == {"demo/web-v1": 350, "demo/web-v2": 150}


def test_invalid_backends_answer_500_for_their_share() -> None:
    config = compile_docs(
        [
            *base(),
            http_route(
                "r",
                [parent("web")],
                [
                    to(
                        backend_ref("web-v1"),
                        backend_ref("missing"),
                        backend_ref("web-v2", None),
                        backend_ref(
                            "x", 80, weight=0, kind="ServiceImport", group="multicluster.x-k8s.io"
                        ),
                    )
                ],
            ),
        ]
    )
    client = Client(config)
    statuses = counts(str(ask(client).status) for _ in range(30))
    assert statuses == {"None": 10, "500": 20}
    texts = error_texts(config)
    assert (
        "HTTPRoute demo/r: spec.rules[0].backendRefs[1]: Service demo/missing not found or not "
        "meshed; its share of requests gets 500" in texts
    )
    assert any("backendRefs[2]: a backendRef to a Service needs a port" in e for e in texts)
    assert any(
        "backendRefs[3]: backends of kind ServiceImport" in e and "it gets no requests" in e
        for e in texts
    )


def test_no_backends_or_zero_weights_is_500_and_grpc_gets_503() -> None:
    client = world(http_route("r", [parent("web")], [to(backend_ref("web-v1", weight=0))]))
    d = ask(client)
    assert (d.status, d.reason) == (500, Reason.NO_BACKEND)
    assert ask(world(http_route("r", [parent("web")], None))).status == 500
    grpc = world(
        grpc_route(
            "g",
            [parent("web")],
            [to(backend_ref("web-v1", weight=70), backend_ref("gone", weight=30))],
        )
    )
    got = counts(str(ask(grpc, "/pkg.S/M", method="POST").status) for _ in range(10))
    assert got == {"None": 7, "503": 3}


def test_grpc_backends_default_to_h2c_unless_the_service_says() -> None:
    docs = [*base(), *app("h1", ips=["10.0.6.1"], annotations={"simmesh.io/scheme": "http"})]
    docs += [*app("h2", ips=["10.0.7.1"])]
    docs[-3]["spec"]["ports"][0]["appProtocol"] = "http"
    grpc = grpc_route(
        "g",
        [parent("web")],
        [
            to(backend_ref("h1"), matches=[{"method": {"service": "a.A"}}]),
            to(backend_ref("h2"), matches=[{"method": {"service": "b.B"}}]),
            to(backend_ref("web-v1"), matches=[{"method": {"service": "c.C"}}]),
        ],
    )
    client = Client(compile_docs([*docs, grpc]))
    assert ask(client, "/a.A/M", method="POST").scheme == "http"  # the annotation
    assert ask(client, "/b.B/M", method="POST").scheme == "http"  # appProtocol
    assert ask(client, "/c.C/M", method="POST").scheme == "h2c"  # the route kind


def test_app_protocol_chooses_a_ports_scheme() -> None:
    docs = app("echo", ips=["10.0.8.1"], ports=(("http", 80, 8080), ("grpc", 7070, 7070)))
    docs[0]["spec"]["ports"][1]["appProtocol"] = "kubernetes.io/h2c"
    clusters = wire(compile_docs(docs))["clusters"]
    assert clusters["demo/echo:80"]["scheme"] == "http"
    assert clusters["demo/echo:7070"]["scheme"] == "h2c"


@pytest.mark.parametrize(
    ("match", "path", "hit"),
    [
        ({"method": {"service": "pkg.Echo", "method": "Say"}}, "/pkg.Echo/Say", True),
        ({"method": {"service": "pkg.Echo", "method": "Say"}}, "/pkg.Echo/Other", False),
        ({"method": {"service": "pkg.Echo"}}, "/pkg.Echo/Anything", True),
        ({"method": {"service": "pkg.Echo"}}, "/pkg.EchoX/Say", False),
        ({"method": {"method": "Say"}}, "/any.Svc/Say", True),
        ({"method": {"method": "Say"}}, "/any.Svc/SayMore", False),
        (
            {"method": {"type": "RegularExpression", "service": "pkg\\..*", "method": "S.*"}},
            "/pkg.X/Say",
            True,
        ),
        ({"method": {"type": "RegularExpression", "service": "pkg\\..*"}}, "/other.X/Say", False),
        ({"headers": [header("x-tenant", "a")]}, "/z.Z/M", False),
    ],
)
def test_grpc_method_matches(match: dict[str, Any], path: str, hit: bool) -> None:
    client = world(grpc_route("g", [parent("web")], [to(backend_ref("web-v1"), matches=[match])]))
    d = ask(client, path, method="POST")
    assert (d.reason is Reason.ALLOWED) == hit, d.detail


def test_grpc_precedence_longest_service_then_method_then_headers() -> None:
    client = world(
        grpc_route(
            "g",
            [parent("web")],
            [
                to(backend_ref("web"), matches=[{"method": {"method": "Say"}}]),
                to(backend_ref("web-v1"), matches=[{"method": {"service": "pkg.Echo"}}]),
                to(
                    backend_ref("web-v2"),
                    matches=[{"method": {"service": "pkg.Echo", "method": "Say"}}],
                ),
            ],
        )
    )
    assert backend_of(ask(client, "/pkg.Echo/Say", method="POST")) == "demo/web-v2"
    assert backend_of(ask(client, "/pkg.Echo/Ping", method="POST")) == "demo/web-v1"
    assert backend_of(ask(client, "/other.X/Say", method="POST")) == "demo/web"


# -- filters -------------------------------------------------------------------------------------


def sent(d: Decision, original: str = "/") -> tuple[str, dict[str, str]]:
    request = d.request
    assert request is not None, d.detail
    return request.target, request.headers


def test_request_header_modifier_set_add_remove() -> None:
    edits = {
        "set": [{"name": "X-Header-Set", "value": "set-overwrites-values"}],
        "add": [{"name": "X-Header-Add", "value": "add-appends-values"}],
        "remove": ["X-Header-Remove"],
    }
    client = world(
        http_route(
            "r",
            [parent("web")],
            [
                to(
                    backend_ref("web-v1"),
                    filters=[{"type": "RequestHeaderModifier", "requestHeaderModifier": edits}],
                )
            ],
        )
    )
    d = ask(
        client,
        headers={
            "x-header-set": "some-other-value",
            "x-header-add": "some-other-value",
            "x-header-remove": "gone",
            "keep": "1",
        },
    )
    _, headers = sent(d)
    assert headers["x-header-set"] == "set-overwrites-values"
    assert headers["x-header-add"] == "some-other-value,add-appends-values"
    assert "x-header-remove" not in headers and headers["keep"] == "1"
    fresh = ask(client)
    assert sent(fresh)[1]["x-header-add"] == "add-appends-values"


def test_backend_level_filters_apply_to_that_backend_only() -> None:
    edit = {
        "type": "RequestHeaderModifier",
        "requestHeaderModifier": {"set": [{"name": "X-B", "value": "v2"}]},
    }
    client = world(
        http_route(
            "r", [parent("web")], [to(backend_ref("web-v1"), backend_ref("web-v2", filters=[edit]))]
        )
    )
    seen = {}
    for _ in range(2):
        d = ask(client)
        seen[backend_of(d)] = (d.request or parse_request("GET", "/", [])).headers.get("x-b")
    assert seen == {"demo/web-v1": None, "demo/web-v2": "v2"}


@pytest.mark.parametrize(
    ("match", "replace", "path", "expected"),
    [
        ("/foo", "/xyz", "/foo/bar", "/xyz/bar"),
        ("/foo", "/xyz/", "/foo/bar", "/xyz/bar"),
        ("/foo/", "/xyz", "/foo/bar", "/xyz/bar"),
        ("/foo", "/xyz", "/foo", "/xyz"),
        ("/foo", "/xyz", "/foo/", "/xyz/"),
        ("/foo", "", "/foo/bar", "/bar"),
        ("/foo", "", "/foo/", "/"),
        ("/foo", "", "/foo", "/"),
        ("/foo", "/", "/foo/", "/"),
        ("/foo", "/", "/foo", "/"),
        ("/prefix", "/", "/prefix/one/two", "/one/two"),
        ("/strip-prefix", "/", "/strip-prefix", "/"),
    ],
)
def test_url_rewrite_replace_prefix_match(
    match: str, replace: str, path: str, expected: str
) -> None:
    rewrite = {
        "type": "URLRewrite",
        "urlRewrite": {"path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": replace}},
    }
    client = world(
        http_route(
            "r",
            [parent("web")],
            [to(backend_ref("web-v1"), matches=[prefix(match)], filters=[rewrite])],
        )
    )
    target, _ = sent(ask(client, path + "?q=1"))
    assert target == expected + "?q=1"


def test_url_rewrite_full_path_and_hostname() -> None:
    rewrite = {
        "type": "URLRewrite",
        "urlRewrite": {
            "hostname": "rewritten.example",
            "path": {"type": "ReplaceFullPath", "replaceFullPath": "/one"},
        },
    }
    client = world(http_route("r", [parent("web")], [to(backend_ref("web-v1"), filters=[rewrite])]))
    d = ask(client, "/a/b")
    request = d.request
    assert request is not None
    assert (request.target, request.host, request.headers["host"]) == (
        "/one",
        "rewritten.example",
        "rewritten.example",
    )
    assert request.forwarded_host == HOST


@pytest.mark.parametrize(
    ("redirect", "path", "location", "status"),
    [
        ({"hostname": "example.org"}, "/a?x=1", "http://example.org/a?x=1", 302),
        ({"hostname": "example.org", "statusCode": 301}, "/a", "http://example.org/a", 301),
        ({"scheme": "https"}, "/a", "https://web.demo.mesh/a", 302),
        ({"scheme": "https", "port": 8443}, "/a", "https://web.demo.mesh:8443/a", 302),
        ({"port": 8083, "hostname": "example.org"}, "/a", "http://example.org:8083/a", 302),
        (
            {"path": {"type": "ReplaceFullPath", "replaceFullPath": "/new"}},
            "/a?q",
            "http://web.demo.mesh/new?q",
            302,
        ),
        (
            {"path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/v2"}},
            "/old/x",
            "http://web.demo.mesh/v2/x",
            302,
        ),
        ({"statusCode": 303}, "/a", "http://web.demo.mesh/a", 303),
        ({"statusCode": 307}, "/a", "http://web.demo.mesh/a", 307),
        ({"statusCode": 308}, "/a", "http://web.demo.mesh/a", 308),
    ],
)
def test_redirects(redirect: dict[str, Any], path: str, location: str, status: int) -> None:
    client = world(
        http_route(
            "r",
            [parent("web")],
            [
                {
                    "matches": [prefix("/old")],
                    "filters": [{"type": "RequestRedirect", "requestRedirect": redirect}],
                }
            ]
            if "path" in redirect and redirect["path"]["type"] == "ReplacePrefixMatch"
            else [{"filters": [{"type": "RequestRedirect", "requestRedirect": redirect}]}],
        )
    )
    d = ask(client, path, headers={})
    assert (d.status, d.reason, d.location) == (status, Reason.REDIRECT, location)
    assert d.endpoint is None and not d.allowed


def test_redirect_keeps_the_service_port_the_client_called() -> None:
    client = world(
        http_route(
            "r",
            [parent("web")],
            [
                {
                    "filters": [
                        {"type": "RequestRedirect", "requestRedirect": {"hostname": "example.org"}}
                    ]
                }
            ],
        )
    )
    d = client.http(f"{HOST}:8080", "/p", listener=5001)
    assert d.location == "http://example.org:8080/p"


def test_response_header_modifier_is_data_for_the_driver() -> None:
    edits = {"set": [{"name": "X-Header-Set", "value": "set"}], "remove": ["server"]}
    client = world(
        http_route(
            "r",
            [parent("web")],
            [
                to(
                    backend_ref("web-v1"),
                    filters=[{"type": "ResponseHeaderModifier", "responseHeaderModifier": edits}],
                )
            ],
        )
    )
    d = ask(client)
    assert len(d.response_edits) == 1
    assert d.response_edits[0].apply([("Server", "x"), ("Content-Type", "t")]) == [
        ("Content-Type", "t"),
        ("X-Header-Set", "set"),
    ]


def test_request_mirror_percent_and_fraction() -> None:
    mirror = {
        "type": "RequestMirror",
        "requestMirror": {"backendRef": backend_ref("web-v2"), "percent": 25},
    }
    client = world(http_route("r", [parent("web")], [to(backend_ref("web-v1"), filters=[mirror])]))
    shots = [ask(client).mirrors for _ in range(400)]
    share = sum(1 for s in shots if s) / len(shots)
    assert 0.18 < share < 0.32
    assert {s[0].cluster.key for s in shots if s} == {"demo/web-v2:80"}
    every = world(
        http_route(
            "r",
            [parent("web")],
            [
                to(
                    backend_ref("web-v1"),
                    filters=[
                        {
                            "type": "RequestMirror",
                            "requestMirror": {"backendRef": backend_ref("web-v2")},
                        }
                    ],
                )
            ],
        )
    )
    assert all(ask(every).mirrors for _ in range(10))
    never = world(
        http_route(
            "r",
            [parent("web")],
            [
                to(
                    backend_ref("web-v1"),
                    filters=[
                        {
                            "type": "RequestMirror",
                            "requestMirror": {
                                "backendRef": backend_ref("web-v2"),
                                "fraction": {"numerator": 0},
                            },
                        }
                    ],
                )
            ],
        )
    )
    assert not any(ask(never).mirrors for _ in range(10))


def test_rule_timeouts_become_the_requests_policy() -> None:
    docs = app(
        "slow",
        ips=["10.0.6.1"],
        annotations={"simmesh.io/timeout": "2s", "simmesh.io/retry-attempts": "2"},
    )
    client = Client(
        compile_docs(
            [
                *base(),
                *docs,
                http_route(
                    "r",
                    [parent("slow")],
                    [
                        to(
                            backend_ref("slow"),
                            matches=[prefix("/a")],
                            timeouts={"request": "10s", "backendRequest": "500ms"},
                        ),
                        to(
                            backend_ref("slow"),
                            matches=[prefix("/b")],
                            timeouts={"request": "0s", "backendRequest": "0s"},
                        ),
                        to(backend_ref("slow"), matches=[prefix("/c")]),
                    ],
                ),
            ]
        )
    )
    a = client.http("slow.demo.mesh", "/a").policy
    assert (a.timeout, a.request_timeout, a.retry is not None) == (0.5, 10.0, True)
    b = client.http("slow.demo.mesh", "/b").policy
    assert (b.timeout, b.request_timeout) == (86400.0 * 365, None)
    c = client.http("slow.demo.mesh", "/c").policy
    assert (c.timeout, c.request_timeout) == (2.0, None)


def test_timeouts_longer_than_a_year_read_as_a_year() -> None:
    """Found by fuzzing: GEP-2257 allows 99999h, the MeshConfig's bound is a year."""
    route = http_route(
        "r", [parent("web")], [to(backend_ref("web-v1"), timeouts={"request": "99999h"})]
    )
    config = compile_docs([*base(), route])
    assert ask(Client(config)).policy.request_timeout == 86400.0 * 365


def test_unsupported_filters_answer_500_and_are_reported() -> None:
    cors = {"type": "CORS", "cors": {"allowOrigins": ["https://x"]}}
    config = compile_docs(
        [*base(), http_route("r", [parent("web")], [to(backend_ref("web-v1"), filters=[cors])])]
    )
    d = Client(config).http(HOST)
    assert (d.status, d.reason) == (500, Reason.UNSUPPORTED_FILTER)
    assert any("spec.rules[0].filters: the CORS filter" in e for e in error_texts(config))


def test_retry_field_is_noted_and_the_route_still_applies() -> None:
    config = compile_docs(
        [
            *base(),
            http_route("r", [parent("web")], [to(backend_ref("web-v1"), retry={"attempts": 3})]),
        ]
    )
    assert backend_of(Client(config).http(HOST)) == "demo/web-v1"
    assert any(
        "spec.rules[0].retry: not read: retry is experimental" in e for e in error_texts(config)
    )


# -- access control ------------------------------------------------------------------------------


def test_acl_is_checked_on_the_chosen_backend_with_the_rewritten_request() -> None:
    group = route_group("paths", [{"name": "public", "pathRegex": "/public"}])
    grant = traffic_target(
        "tt", dest="web-v1", sources=["client"], rules=[rule("HTTPRouteGroup", "paths")]
    )
    rewrite = {
        "type": "URLRewrite",
        "urlRewrite": {"path": {"type": "ReplaceFullPath", "replaceFullPath": "/admin"}},
    }
    client = world(
        group,
        grant,
        http_route(
            "r",
            [parent("web")],
            [
                to(backend_ref("web-v1"), matches=[prefix("/public/sneaky")], filters=[rewrite]),
                to(backend_ref("web-v1")),
            ],
        ),
        acl=True,
    )
    assert ask(client, "/public/x", source="demo/client").allowed
    sneaky = ask(client, "/public/sneaky", source="demo/client")
    assert (sneaky.status, sneaky.reason) == (403, Reason.NO_MATCHING_ROUTE)
    assert ask(client, "/public/x", source="caller/client").status == 403


# -- reading: errors on the route, never on others ---------------------------------------------


def bad(route_spec: dict[str, Any], kind: str = "HTTPRoute") -> list[str]:
    doc = {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": kind,
        "metadata": {"name": "bad", "namespace": "demo"},
        "spec": {"parentRefs": [parent("web")], **route_spec},
    }
    good = http_route("good", [parent("web-v1")], [to(backend_ref("web-v2"))])
    config = compile_docs([*base(), doc, good])
    assert backend_of(Client(config).http("web-v1.demo.mesh")) == "demo/web-v2"  # unaffected
    return [e for e in error_texts(config) if e.startswith(f"{kind} demo/bad")]


R = "rules"


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        (
            {R: [{"matches": [{"path": {"type": "Exact", "value": "no-slash"}}]}]},
            "spec.rules[0].matches[0].path.value: expected an absolute path: must start with '/'",
        ),
        (
            {R: [{"matches": [{"path": {"type": "PathPrefix", "value": "/a//b"}}]}]},
            "may not hold '//'",
        ),
        ({R: [{"matches": [{"path": {"type": "PathPrefix", "value": "/a%2fb"}}]}]}, "encoded '/'"),
        (
            {R: [{"matches": [{"path": {"type": "Glob", "value": "/a"}}]}]},
            "spec.rules[0].matches[0].path.type: expected one of Exact, PathPrefix, "
            "RegularExpression",
        ),
        (
            {R: [{"matches": [{"path": {"type": "RegularExpression", "value": "(a)\\1"}}]}]},
            "expected an RE2 regular expression",
        ),
        (
            {R: [{"matches": [{"method": "FETCH"}]}]},
            "spec.rules[0].matches[0].method: expected one of GET",
        ),
        (
            {R: [{"matches": [{"headers": [{"name": "bad name", "value": "x"}]}]}]},
            "expected a header name",
        ),
        (
            {
                R: [
                    {
                        "filters": [
                            {
                                "type": "RequestHeaderModifier",
                                "requestHeaderModifier": {
                                    "set": [{"name": "X-A", "value": "a\r\nEvil: 1"}]
                                },
                            }
                        ]
                    }
                ]
            },
            "may not hold a line break",
        ),
        (
            {
                R: [
                    {
                        "filters": [
                            {
                                "type": "RequestHeaderModifier",
                                "requestHeaderModifier": {
                                    "set": [{"name": "X-A", "value": "1"}],
                                    "remove": ["x-a"],
                                },
                            }
                        ]
                    }
                ]
            },
            "only one action per header name",
        ),
        (
            {
                R: [
                    {
                        "filters": [
                            {
                                "type": "RequestHeaderModifier",
                                "requestHeaderModifier": {"set": [{"name": "Host", "value": "x"}]},
                            }
                        ]
                    }
                ]
            },
            "Host cannot be changed",
        ),
        (
            {
                R: [
                    {
                        "filters": [
                            {
                                "type": "ResponseHeaderModifier",
                                "responseHeaderModifier": {
                                    "add": [{"name": "Transfer-Encoding", "value": "x"}]
                                },
                            }
                        ]
                    }
                ]
            },
            "cannot be changed by a response header modifier",
        ),
        (
            {
                R: [
                    {
                        "filters": [{"type": "RequestRedirect", "requestRedirect": {}}],
                        "backendRefs": [backend_ref("web-v1")],
                    }
                ]
            },
            "may not be used together with backendRefs",
        ),
        (
            {
                R: [
                    {
                        "filters": [
                            {"type": "RequestRedirect", "requestRedirect": {}},
                            {"type": "URLRewrite", "urlRewrite": {}},
                        ]
                    }
                ]
            },
            "cannot be combined",
        ),
        (
            {
                R: [
                    {
                        "filters": [
                            {
                                "type": "URLRewrite",
                                "urlRewrite": {
                                    "path": {
                                        "type": "ReplacePrefixMatch",
                                        "replacePrefixMatch": "/x",
                                    }
                                },
                            }
                        ],
                        "matches": [exact("/a")],
                    }
                ]
            },
            "ReplacePrefixMatch needs exactly one PathPrefix match",
        ),
        (
            {
                R: [
                    {
                        "filters": [
                            {"type": "RequestRedirect", "requestRedirect": {"statusCode": 304}}
                        ]
                    }
                ]
            },
            "expected 301, 302, 303, 307 or 308",
        ),
        (
            {R: [{"filters": [{"type": "RequestRedirect", "requestRedirect": {"scheme": "ftp"}}]}]},
            "expected http or https",
        ),
        (
            {
                R: [
                    {
                        "filters": [
                            {
                                "type": "RequestRedirect",
                                "requestRedirect": {"hostname": "10.0.0.1:80"},
                            }
                        ]
                    }
                ]
            },
            "expected a hostname",
        ),
        (
            {R: [{"filters": [{"type": "Teleport"}]}]},
            "spec.rules[0].filters[0].type: expected one of",
        ),
        (
            {R: [{"filters": [{"type": "URLRewrite"}]}]},
            "spec.rules[0].filters[0].urlRewrite: required for a URLRewrite filter",
        ),
        (
            {
                R: [
                    {
                        "filters": [
                            {"type": "URLRewrite", "urlRewrite": {}},
                            {"type": "URLRewrite", "urlRewrite": {}},
                        ]
                    }
                ]
            },
            "cannot be repeated",
        ),
        (
            {
                R: [
                    {
                        "filters": [
                            {
                                "type": "RequestMirror",
                                "requestMirror": {
                                    "backendRef": backend_ref("web-v2"),
                                    "percent": 5,
                                    "fraction": {"numerator": 1},
                                },
                            }
                        ]
                    }
                ]
            },
            "only one of percent and fraction",
        ),
        (
            {
                R: [
                    {
                        "filters": [
                            {
                                "type": "RequestMirror",
                                "requestMirror": {
                                    "backendRef": backend_ref("web-v2"),
                                    "fraction": {"numerator": 3, "denominator": 2},
                                },
                            }
                        ]
                    }
                ]
            },
            "numerator may not be greater",
        ),
        (
            {R: [{"timeouts": {"request": "10 seconds"}}]},
            "spec.rules[0].timeouts.request: expected a duration",
        ),
        (
            {R: [{"timeouts": {"request": "1s", "backendRequest": "2s"}}]},
            "backendRequest timeout cannot be longer than request",
        ),
        ({R: [{"name": "same"}, {"name": "same"}]}, "spec.rules[1].name: 'same' is not unique"),
        (
            {R: [{"backendRefs": [{"name": "web-v1", "port": 80, "weight": -1}]}]},
            "spec.rules[0].backendRefs[0].weight: expected an integer in 0..1000000",
        ),
        (
            {"parentRefs": [{"group": "", "kind": "Service", "name": "web", "port": 70000}]},
            "spec.parentRefs[0].port: expected an integer in 1..65535",
        ),
        ({R: "everything"}, "spec.rules: expected a list"),
    ],
)
def test_malformed_http_routes_are_errors_on_that_route(
    spec: dict[str, Any], expected: str
) -> None:
    texts = bad(spec)
    assert any(expected in e for e in texts), texts


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ({R: [{"matches": [{"method": {"type": "Exact"}}]}]}, "one or both of service and method"),
        ({R: [{"matches": [{"method": {"service": "a/b"}}]}]}, "expected a gRPC service"),
        ({R: [{"matches": [{"method": {"method": "1x"}}]}]}, "expected a gRPC method"),
        (
            {R: [{"filters": [{"type": "URLRewrite", "urlRewrite": {}}]}]},
            "spec.rules[0].filters[0].type: expected one of RequestHeaderModifier",
        ),
    ],
)
def test_malformed_grpc_routes_are_errors_on_that_route(
    spec: dict[str, Any], expected: str
) -> None:
    texts = bad(spec, kind="GRPCRoute")
    assert any(expected in e for e in texts), texts


def test_versions_read_and_refused() -> None:
    beta = http_route("beta", [parent("web")], [to(backend_ref("web-v1"))], version="v1beta1")
    assert backend_of(world(beta).http(HOST)) == "demo/web-v1"
    alpha = http_route("alpha", [parent("web")], [to(backend_ref("web-v1"))], version="v1alpha2")
    assert any(
        "HTTPRoute demo/alpha: apiVersion: expected one of" in e
        for e in error_texts(compile_docs([*base(), alpha]))
    )
    tcp = {
        "apiVersion": "gateway.networking.k8s.io/v1alpha2",
        "kind": "TCPRoute",
        "metadata": {"name": "t", "namespace": "demo"},
        "spec": {},
    }
    assert not error_texts(compile_docs([*base(), tcp]))  # Gateway API's TCPRoute: not read


def test_the_config_is_deterministic_and_checked() -> None:
    docs = [*base(), MATCHING, QUERY]
    first = compile_docs(docs).to_json()
    assert compile_docs(list(reversed(docs))).to_json() == first
    Router(compile_docs(docs))  # compiles
    from mesh.core.schema import decode

    assert decode(first).to_json() == first


def test_explain_rng_independent_decisions() -> None:
    client = world(MATCHING)
    d = client.engine.decide_http(
        listener=5000,
        request=parse_request("GET", "/v2", [], authority=HOST),
        source=None,
        now=0.0,
        rng=random.Random(5),
    )
    assert d.matched is not None and d.matched.index == 1
