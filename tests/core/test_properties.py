"""Properties checked with hypothesis over random small clusters and random requests.

- Split weights are honoured: smooth weighted round robin gives exact shares per cycle and stays
  within two picks per backend of the ideal share at every point; the Engine's split shares are
  exact over whole cycles.
- ACL mode: deny by default. A request is allowed only if an independent, deliberately naive
  oracle (written from docs/semantics.md, not from the implementation) finds a TrafficTarget
  granting it, and denied with 403 only if the oracle finds none for any ready endpoint.
- Every decision is exactly one of allowed or denied (allowed <=> status is None <=> endpoint).
- No endpoint that is not ready is ever chosen, also by retries.
- Malformed objects never raise out of parse/topology/config, and valid objects beside them
  are still in the config and still routed.
"""

from __future__ import annotations

import copy
import json
import re
from dataclasses import dataclass, field
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mesh.core.config import MeshConfig
from mesh.core.lifecycle import Failed, Lifecycle, Send
from mesh.core.model import Settings
from mesh.core.policies import Failure, SmoothWeightedRoundRobin
from mesh.core.routing import Decision, Reason
from tests.core import test_malformed as malformed
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

FAST = settings(
    max_examples=400,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
SLOW = settings(FAST, max_examples=250)


def assert_exclusive(decision: Decision) -> None:
    """Exactly one of allowed or denied: allowed <=> no status <=> an endpoint is set."""
    allowed = decision.allowed
    assert allowed == (decision.status is None) == (decision.endpoint is not None), decision
    assert allowed == (decision.reason is Reason.ALLOWED), decision
    if not allowed:
        assert decision.status in (403, 404, 429, 503), decision


# -- weights --------------------------------------------------------------------------------------

weights_strategy = st.lists(st.integers(0, 30), min_size=1, max_size=6).filter(lambda w: sum(w) > 0)


@FAST
@given(weights=weights_strategy, cycles=st.integers(1, 3))
def test_smooth_weighted_round_robin_is_exact_per_cycle_and_smooth(
    weights: list[int], cycles: int
) -> None:
    balancer = SmoothWeightedRoundRobin(weights)
    total = sum(weights)
    seen = [0] * len(weights)
    for n in range(1, cycles * total + 1):
        seen[balancer.pick()] += 1
        for i, weight in enumerate(weights):
            # tolerance: always within two picks of the ideal share n * w / W (nginx smooth
            # WRR can lead or lag by slightly more than one pick), exact after each cycle
            assert abs(seen[i] - n * weight / total) < 2.0, (n, seen, weights)
        if n % total == 0:
            assert seen == [w * n // total for w in weights]


@SLOW
@given(
    weights=st.lists(st.integers(0, 6), min_size=2, max_size=4).filter(lambda w: sum(w) > 0),
    quantities=st.booleans(),
)
def test_engine_split_shares_are_exact_over_whole_cycles(
    weights: list[int], quantities: bool
) -> None:
    names = [f"b{i}" for i in range(len(weights))]
    docs = [*app("root", ips=["10.0.0.1"])]
    for i, name in enumerate(names):
        docs += app(name, ips=[f"10.0.{i + 1}.1", f"10.0.{i + 1}.2"])
    given_weights: list[Any] = [f"{w * 100}m" if quantities else w for w in weights]
    version = "v1alpha1" if quantities else "v1alpha4"
    docs.append(
        traffic_split("s", "root", list(zip(names, given_weights, strict=True)), version=version)
    )
    client = Client(compile_docs(docs))
    total = sum(weights)
    seen = {name: 0 for name in names}
    for _ in range(3 * total):
        decision = client.http("root.demo.mesh")
        assert_exclusive(decision)
        assert decision.cluster is not None
        seen[decision.cluster.service.split("/")[1]] += 1
    assert seen == {name: 3 * w for name, w in zip(names, weights, strict=True)}


# -- random clusters for access control -----------------------------------------------------------

SAS = ("sa0", "sa1")
METHODS = ("GET", "POST", "PUT", "DELETE", "PATCH", "HEAD")
PATH_REGEXES = (None, "/api", "/metrics", ".*", "/a+", "/api/v[0-9]+")
PATHS = ("/", "/api", "/api/v1?x=1", "/metrics", "/x/metrics", "/aaa", "/apix", "/api/v22/z")
HEADER_MATCHES: tuple[dict[str, str], ...] = (
    {},
    {"x-a": "1"},
    {"x-a": "1|2", "X-B": "y.*"},
    {"x-b": "yes"},
)
REQUEST_HEADERS: tuple[dict[str, str], ...] = (
    {},
    {"x-a": "1"},
    {"x-a": "2", "x-b": "yes"},
    {"x-a": "12"},
    {"x-b": "y"},
)
PORTS = (("http", 80, 8080), ("admin", 81, 9090))


@dataclass
class MPod:
    name: str
    ip: str
    sa: str
    ready: bool


@dataclass
class MService:
    name: str
    ports: list[tuple[str, int, int]]
    tcp: bool
    pods: list[MPod]


@dataclass
class MMatch:
    name: str
    path: str | None
    methods: list[str] | None
    headers: dict[str, str]
    as_list: bool


@dataclass
class MRule:
    kind: str
    name: str
    matches: list[str] | None


@dataclass
class MTarget:
    name: str
    dest: str
    sources: list[str]
    rules: list[MRule]


@dataclass
class Model:
    services: list[MService]
    groups: dict[str, list[MMatch]]
    tcp_routes: dict[str, list[tuple[str, list[int]]]]
    targets: list[MTarget]
    split: tuple[str, list[tuple[str, int]]] | None = None
    docs: list[dict[str, Any]] = field(default_factory=list)


@st.composite
def models(draw: st.DrawFn) -> Model:
    services = []
    ip = 0
    for i in range(draw(st.integers(1, 3))):
        chosen = draw(st.sampled_from([[PORTS[0]], [PORTS[1]], list(PORTS)]))
        pods = []
        for j in range(draw(st.sampled_from([1, 2, 3, 0]))):
            ip += 1
            pods.append(
                MPod(
                    f"svc{i}-{j}",
                    f"10.0.{i}.{ip}",
                    draw(st.sampled_from(SAS)),
                    draw(st.sampled_from([True, True, True, False])),
                )
            )
        services.append(MService(f"svc{i}", chosen, draw(st.integers(0, 3)) == 0, pods))
    groups = {}
    for g in range(draw(st.sampled_from([1, 2, 0]))):
        groups[f"g{g}"] = [
            MMatch(
                f"m{k}",
                draw(st.sampled_from(PATH_REGEXES)),
                draw(
                    st.one_of(
                        st.none(),
                        st.just(["*"]),
                        st.lists(st.sampled_from(METHODS), min_size=1, max_size=3),
                    )
                ),
                draw(st.sampled_from(HEADER_MATCHES)),
                draw(st.booleans()),
            )
            for k in range(draw(st.integers(1, 3)))
        ]
    tcp_routes = {}
    for t in range(draw(st.sampled_from([1, 0, 2]))):
        tcp_routes[f"t{t}"] = [
            (
                f"p{k}",
                draw(st.lists(st.sampled_from([8080, 9090, 80, 81]), max_size=2, unique=True)),
            )
            for k in range(draw(st.integers(1, 2)))
        ]
    targets = []
    kinds = ["HTTPRouteGroup"] * 3 + ["TCPRoute"] * 3 + ["UDPRoute", "GRPCRoute"]
    for n in range(draw(st.sampled_from([2, 1, 3, 4, 0]))):
        rules = []
        for _ in range(draw(st.sampled_from([1, 2, 3, 0]))):
            kind = draw(st.sampled_from(kinds))
            table: dict[str, Any] = groups if kind == "HTTPRouteGroup" else tcp_routes
            name = draw(st.sampled_from([*table, *table, *table, "missing"]))
            names = [m.name if isinstance(m, MMatch) else m[0] for m in table.get(name, [])]
            matches = draw(
                st.one_of(
                    st.none(),
                    st.lists(st.sampled_from([*names, "nope"]), max_size=3, unique=True),
                )
            )
            rules.append(MRule(kind, name, matches))
        sources = draw(
            st.lists(
                st.sampled_from(SAS),
                min_size=draw(st.sampled_from([1, 0])),
                max_size=2,
                unique=True,
            )
        )
        targets.append(MTarget(f"tt{n}", draw(st.sampled_from(SAS)), sources, rules))
    model = Model(services, groups, tcp_routes, targets)
    if draw(st.booleans()) and len(services) > 1:
        backends = [(s.name, draw(st.integers(0, 3))) for s in services[1:]]
        model.split = ("svc0", backends)
    model.docs = render(model)
    return model


def render(model: Model) -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for svc in model.services:
        annotations = {"simmesh.io/traffic-type": "tcp"} if svc.tcp else None
        docs.append(service(svc.name, ports=svc.ports, annotations=annotations))
        eps = [endpoint(p.ip, pod=p.name, ready=p.ready) for p in svc.pods]
        docs.append(endpoint_slice(svc.name, eps, ports=[(n, t) for n, _, t in svc.ports]))
        docs += [pod(p.name, sa=p.sa, ip=p.ip) for p in svc.pods]
    for name, matches in model.groups.items():
        docs.append(
            route_group(
                name,
                [
                    http_match(
                        m.name,
                        path=m.path,
                        methods=m.methods,
                        headers=([{k: v} for k, v in m.headers.items()] if m.as_list else m.headers)
                        if m.headers
                        else None,
                    )
                    for m in matches
                ],
            )
        )
    for name, port_matches in model.tcp_routes.items():
        body: Any = [{"name": n, "ports": ports} for n, ports in port_matches]
        if len(body) == 1:
            body = body[0]  # the object form
        docs.append(port_route(name, body))
    for tt in model.targets:
        docs.append(
            traffic_target(
                tt.name,
                dest=tt.dest,
                sources=tt.sources,
                rules=[rule(r.kind, r.name, r.matches) for r in tt.rules],
            )
        )
    if model.split is not None:
        docs.append(traffic_split("s", model.split[0], model.split[1]))
    return docs


# -- the oracle: a direct reading of docs/semantics.md "Access control" and "HTTPRouteGroup matches


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    headers: dict[str, str]


def oracle_match(match: MMatch, request: Request) -> bool:
    if (
        match.methods is not None
        and "*" not in match.methods
        and request.method not in match.methods
    ):
        return False
    path = request.path.split("?")[0]
    if match.path is not None and re.match(match.path, path) is None:
        return False
    for name, regex in match.headers.items():
        value = request.headers.get(name.lower())
        if value is None or re.fullmatch(regex, value) is None:
            return False
    return True


def oracle_admits(
    model: Model, source: str | None, identity: str, target_port: int, request: Request | None
) -> bool:
    """May ``source`` reach a pod of ``identity`` listening on ``target_port`` with ``request``
    (None for a TCP flow)?"""
    if source is None:
        return False
    for tt in model.targets:
        valid = (
            tt.sources
            and tt.rules
            and all(r.kind in ("HTTPRouteGroup", "TCPRoute", "UDPRoute") for r in tt.rules)
        )
        if (
            not valid
            or f"demo/{tt.dest}" != identity
            or source not in [f"demo/{s}" for s in tt.sources]
        ):
            continue
        for r in tt.rules:
            if r.kind == "HTTPRouteGroup" and request is not None and r.name in model.groups:
                chosen = [
                    m for m in model.groups[r.name] if r.matches is None or m.name in r.matches
                ]
                if any(oracle_match(m, request) for m in chosen):
                    return True
            if r.kind == "TCPRoute" and r.name in model.tcp_routes:
                chosen_ports = [
                    p for n, p in model.tcp_routes[r.name] if r.matches is None or n in r.matches
                ]
                if any(not ports or target_port in ports for ports in chosen_ports):
                    return True
    return False


def ready_endpoints(model: Model, service_key: str, port: int) -> list[tuple[str, int, str]]:
    svc = next(s for s in model.services if f"demo/{s.name}" == service_key)
    target = next(t for _, p, t in svc.ports if p == port)
    return [(p.ip, target, f"demo/{p.sa}") for p in svc.pods if p.ready]


def check_decision(
    model: Model, decision: Decision, source: str | None, request: Request | None
) -> None:
    assert_exclusive(decision)
    cluster = decision.cluster
    assert cluster is not None
    ready = ready_endpoints(model, cluster.service, cluster.port)
    if decision.allowed:
        chosen = decision.endpoint
        assert chosen is not None
        assert (chosen.ip, chosen.port, chosen.identity) in ready, "an endpoint that is not ready"
        assert oracle_admits(model, source, str(chosen.identity), chosen.port, request), (
            f"allowed without a grant: {source} -> {chosen} {request}"
        )
    elif decision.status == 403:
        assert ready, "403 although there is no ready endpoint (503 expected)"
        for _, port, identity in ready:
            assert not oracle_admits(model, source, identity, port, request), (
                f"denied although granted: {source} -> {identity}:{port} {request}"
            )
    else:
        assert decision.status == 503, decision
        assert not ready


sources_strategy = st.sampled_from(["demo/sa0", "demo/sa1", None, "other/sa0"])
requests_strategy = st.builds(
    Request,
    method=st.sampled_from(METHODS),
    path=st.sampled_from(PATHS),
    headers=st.sampled_from(REQUEST_HEADERS),
)


@SLOW
@given(
    model=models(),
    asks=st.lists(
        st.tuples(st.integers(0, 2), st.integers(0, 1), sources_strategy, requests_strategy),
        min_size=1,
        max_size=12,
    ),
)
def test_acl_never_allows_without_a_grant_and_never_denies_a_granted_request(
    model: Model, asks: list[tuple[int, int, str | None, Request]]
) -> None:
    config = compile_docs(model.docs, Settings(acl=True))
    client = Client(config)
    for index, port_index, source, request in asks:
        svc = model.services[index % len(model.services)]
        _, port, _ = svc.ports[port_index % len(svc.ports)]
        route = client.router.routes[f"demo/{svc.name}:{port}"]
        if svc.tcp:
            decision = client.flow(client.listener_of(route.key), source=source)
            check_decision(model, decision, source, None)
        else:
            host = f"{svc.name}.demo.mesh:{port}"
            assert route.listener is not None
            decision = client.http(
                host,
                request.path,
                method=request.method,
                headers=request.headers,
                source=source,
                listener=route.listener,
            )
            check_decision(model, decision, source, request)


match_strategy = st.builds(
    MMatch,
    name=st.just("m"),
    path=st.sampled_from(PATH_REGEXES),
    methods=st.one_of(
        st.none(), st.just(["*"]), st.lists(st.sampled_from(METHODS), min_size=1, max_size=3)
    ),
    headers=st.sampled_from(HEADER_MATCHES),
    as_list=st.booleans(),
)


def one_server(
    tcp: bool = False, ports: list[tuple[str, int, int]] | None = None
) -> list[MService]:
    """Service svc0 (pods of sa0, one not ready) and the caller's Service client (sa1)."""
    pods = [MPod("svc0-0", "10.0.0.1", "sa0", True), MPod("svc0-1", "10.0.0.2", "sa0", False)]
    return [
        MService("svc0", ports or [PORTS[0]], tcp, pods),
        MService("client", [PORTS[0]], False, [MPod("client-0", "10.0.9.1", "sa1", True)]),
    ]


@FAST
@given(
    matches=st.lists(match_strategy, min_size=1, max_size=3),
    selected=st.one_of(st.none(), st.lists(st.integers(0, 3), max_size=3, unique=True)),
    extra_rule=st.sampled_from([None, "GRPCRoute", "TCPRoute"]),
    requests=st.lists(requests_strategy, min_size=1, max_size=8),
    source=st.sampled_from(["demo/sa1", "demo/sa0"]),
)
def test_acl_route_group_matches_agree_with_the_oracle(
    matches: list[MMatch],
    selected: list[int] | None,
    extra_rule: str | None,
    requests: list[Request],
    source: str,
) -> None:
    for i, match in enumerate(matches):
        match.name = f"m{i}"
    rules = [
        MRule("HTTPRouteGroup", "g0", None if selected is None else [f"m{i}" for i in selected])
    ]
    if extra_rule is not None:
        rules.append(MRule(extra_rule, "t0", None))
    model = Model(
        one_server(),
        {"g0": matches},
        {"t0": [("p0", [1])]},  # a TCPRoute that admits no port of svc0
        [MTarget("tt0", "sa0", ["sa1"], rules)],
    )
    model.docs = render(model)
    client = Client(compile_docs(model.docs, Settings(acl=True)))
    for request in requests:
        decision = client.http(
            "svc0.demo.mesh",
            request.path,
            method=request.method,
            headers=request.headers,
            source=source,
        )
        check_decision(model, decision, source, request)


@FAST
@given(
    tcp=st.booleans(),
    service_ports=st.lists(
        st.tuples(st.sampled_from([80, 81, 5432]), st.sampled_from([80, 8080, 9090, 5432])),
        min_size=1,
        max_size=2,
        unique_by=lambda p: p[0],
    ),
    route_matches=st.lists(
        st.lists(st.sampled_from([80, 81, 8080, 9090, 5432]), max_size=3, unique=True),
        min_size=1,
        max_size=3,
    ),
    selected=st.one_of(st.none(), st.lists(st.integers(0, 3), max_size=3, unique=True)),
    object_form=st.booleans(),
)
def test_acl_port_routes_agree_with_the_oracle(
    tcp: bool,
    service_ports: list[tuple[int, int]],
    route_matches: list[list[int]],
    selected: list[int] | None,
    object_form: bool,
) -> None:
    ports = [(f"p{i}", port, target) for i, (port, target) in enumerate(service_ports)]
    route = [(f"p{i}", found) for i, found in enumerate(route_matches)]
    if object_form:
        route = route[:1]
    rule_matches = None if selected is None else [f"p{i}" for i in selected]
    model = Model(
        one_server(tcp, ports),
        {},
        {"t0": route},
        [MTarget("tt0", "sa0", ["sa1"], [MRule("TCPRoute", "t0", rule_matches)])],
    )
    model.docs = render(model)
    client = Client(compile_docs(model.docs, Settings(acl=True)))
    request = Request("POST", "/anything", {})
    for _, port, _ in ports:
        key = f"demo/svc0:{port}"
        if tcp:
            decision = client.flow(client.listener_of(key), source="demo/sa1")
            check_decision(model, decision, "demo/sa1", None)
        else:
            listener = client.router.routes[key].listener
            assert listener is not None
            decision = client.http(
                f"svc0.demo.mesh:{port}", source="demo/sa1", listener=listener, method="POST"
            )
            check_decision(model, decision, "demo/sa1", request)


@SLOW
@given(model=models(), seed=st.integers(0, 2**16), least=st.booleans(), acl=st.booleans())
def test_no_endpoint_that_is_not_ready_is_ever_chosen(
    model: Model, seed: int, least: bool, acl: bool
) -> None:
    docs = copy.deepcopy(model.docs)
    for doc in docs:
        if doc["kind"] == "Service":
            annotations = doc["metadata"].setdefault("annotations", {})
            annotations["simmesh.io/retry-attempts"] = "3"
            annotations["simmesh.io/circuit-breaker"] = "ConsecutiveFailures() >= 2"
            if least:
                annotations["simmesh.io/load-balancer"] = "least-request"
    client = Client(compile_docs(docs, Settings(acl=acl)), seed=seed)
    ready = {(p.ip, p.sa) for s in model.services for p in s.pods if p.ready}
    for step in range(20):
        svc = model.services[step % len(model.services)]
        _, port, _ = svc.ports[step % len(svc.ports)]
        key = f"demo/{svc.name}:{port}"
        source = f"demo/{SAS[step % len(SAS)]}"
        client.now = step * 0.05
        if svc.tcp:
            decision = client.flow(client.listener_of(key), source=source)
        else:
            listener = client.router.routes[key].listener
            assert listener is not None
            decision = client.http(f"{svc.name}.demo.mesh:{port}", source=source, listener=listener)
        assert_exclusive(decision)
        life = Lifecycle(
            client.engine, decision, method="GET", replayable=True, rng=client.rng, now=client.now
        )
        command = life.start()
        while isinstance(command, Send):
            endpoint_ = command.endpoint
            assert (endpoint_.ip, str(endpoint_.identity).split("/")[1]) in ready
            command = life.handle(Failed(Failure.CONNECT), client.now)
        assert life.done and life.tries <= 4


# -- malformed objects never raise ----------------------------------------------------------------

FORBIDDEN = {"safe", "good", "10.96.9.1", "10.9.0.1"}
scalars = st.one_of(
    st.sampled_from(malformed.ODD_VALUES),
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12).filter(lambda s: s not in FORBIDDEN),
)
junk = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)


def paths_of(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix] if prefix else []
    if isinstance(value, dict):
        for key, item in value.items():
            out += paths_of(item, (*prefix, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            out += paths_of(item, (*prefix, index))
    return out


@st.composite
def mutated_docs(draw: st.DrawFn) -> list[Any]:
    bases = [
        malformed.SVC,
        malformed.SLICE,
        malformed.POD,
        malformed.NODE,
        malformed.TT,
        malformed.TT1,
        malformed.HRG,
        malformed.HRG1,
        malformed.TCP,
        malformed.UDP,
        malformed.TS,
        malformed.TS1,
    ]
    docs = []
    for base in draw(st.lists(st.sampled_from(bases), min_size=1, max_size=8)):
        doc: Any = copy.deepcopy(base)
        for _ in range(draw(st.integers(1, 4))):
            paths = paths_of(doc)
            if not paths or draw(st.integers(0, 20)) == 0:
                doc = copy.deepcopy(draw(junk))
                break
            path = draw(st.sampled_from(paths))
            parent = doc
            for part in path[:-1]:
                parent = parent[part]
            if isinstance(parent, dict) and draw(st.booleans()):
                del parent[path[-1]]
            else:
                parent[path[-1]] = copy.deepcopy(draw(junk))
        docs.append(doc)
    return docs


def safe_world() -> list[dict[str, Any]]:
    return app("good", ns="safe", ips=["10.9.0.1"], cluster_ip="10.96.9.1")


@FAST
@given(docs=mutated_docs(), acl=st.booleans(), first=st.booleans())
def test_malformed_objects_never_raise_and_valid_ones_still_route(
    docs: list[Any], acl: bool, first: bool
) -> None:
    world = [*docs, *safe_world()] if first else [*safe_world(), *docs]
    config = compile_docs(world, Settings(acl=acl))
    again = MeshConfig.from_json(config.to_json())
    assert wire(again) == json.loads(config.to_json(indent=None))
    assert wire(config)["routes"]["safe/good:80"]["listener"] == 5000
    assert [e["ip"] for e in wire(config)["clusters"]["safe/good:80"]["endpoints"]] == ["10.9.0.1"]
    for error in wire(config)["errors"]:
        assert error["kind"] and error["name"] and error["message"]
        assert (error["namespace"], error["name"]) != ("safe", "good")
    client = Client(config)
    decision = client.http("good.safe.mesh", source=None)
    assert_exclusive(decision)
    if not acl:
        assert (
            decision.allowed
            and decision.endpoint is not None
            and decision.endpoint.ip == "10.9.0.1"
        )
    for key, route in client.router.routes.items():  # whatever parsed must also route
        if route.protocol == "http":
            assert route.listener is not None
            host = f"{route.service.split('/')[1]}.{route.service.split('/')[0]}.mesh:{route.port}"
            assert_exclusive(client.http(host, source="demo/sa", listener=route.listener))
        else:
            assert_exclusive(client.flow(client.listener_of(key), source="demo/sa"))
