"""Every conformance case, as data (see model.py for the vocabulary, docs/conformance.md for
the list in words).

Apps are named after their role: ``a`` and ``c`` call, ``b`` (or ``b-v1``..``b-v3``, the
backends of a split, all running as ServiceAccount ``b``) answer. Services: ``b`` (HTTP 8080),
``b-tcp`` (7000 -> target 9000, so a TCPRoute's port is not the Service's), ``b-udp`` (7001 ->
9001). Negative checks after a change come after a positive "marker" through the same caller's
mesh path (``wait=False``), so they cannot pass just because the change is not there yet.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from conformance import manifests as m
from conformance.model import (
    Allowed,
    Answered,
    App,
    Apply,
    Call,
    Case,
    Counts,
    Delete,
    Denied,
    Expect,
    Flowing,
    Mode,
    RouteStatus,
    Shares,
    Step,
    Svc,
    http,
    tcp,
    udp,
)

__all__ = ["CASES"]

A, B, C = App("a"), App("b"), App("c")
B_HTTP, B_TCP, B_UDP = http("b", "b"), tcp("b-tcp", "b"), udp("b-udp", "b")
HRG, TCPR, UDPR = "HTTPRouteGroup", "TCPRoute", "UDPRoute"


def call(
    path: str = "/echo", *, src: str = "a", svc: str = "b", method: str = "GET", **headers: str
) -> Call:
    return Call(
        src,
        svc,
        path=path,
        method=method,
        headers={k.replace("_", "-"): v for k, v in headers.items()},
    )


def allowed(what: str, c: Call, *by: str, wait: bool = True) -> Expect:
    return Expect(what, c, Allowed(by or ("b",)), wait=wait)


def denied(what: str, c: Call, *, wait: bool = True) -> Expect:
    return Expect(what, c, Denied(), wait=wait)


def tt(
    name: str, sources: list[Any], rules: list[dict[str, Any]], dest: str = "b"
) -> dict[str, Any]:
    return m.traffic_target(name, destination=dest, sources=sources, rules=rules)


def match(
    name: str,
    path: str | None = None,
    methods: list[str] | None = None,
    headers: list[dict[str, str]] | dict[str, str] | None = None,
) -> dict[str, Any]:
    """A match; ``headers`` as a list of single-key maps or as one map (SMI allows both)."""
    out: dict[str, Any] = {"name": name}
    if path is not None:
        out["pathRegex"] = path
    if methods is not None:
        out["methods"] = methods
    if headers is not None:
        out["headers"] = headers
    return out


def marker(source: str = "a") -> list[dict[str, Any]]:
    """Grants ``source`` GET /marker on b: seeing it allowed proves a change is in force."""
    return [
        m.http_route_group(f"marker-{source}", match("marker", "/marker$", ["GET"])),
        tt(f"marker-{source}", [source], [m.rule(HRG, f"marker-{source}")]),
    ]


# --------------------------------------------------------------------------- access


def _grant_and_revoke() -> Case:
    grant = (m.tcp_route("b-ports"), tt("a-to-b", ["a"], [m.rule(TCPR, "b-ports")]))
    return Case(
        name="access-grant-revoke",
        title="Layer5 access, fixed: denied without a TrafficTarget; a TCPRoute with ports [] "
        "admits HTTP (b receives exactly one call); deleting both denies again",
        tags=("access", "layer5", "http", "propagation"),
        needs=Mode.ACL,
        apps=(A, B),
        services=(B_HTTP,),
        steps=(
            denied("no TrafficTarget: a -> b denied", call()),
            Apply("TCPRoute b-ports (ports: []) and TrafficTarget a-to-b", grant),
            Expect("a -> b allowed, b received exactly one call", call(), Counts({"b": 1})),
            Delete("delete the TCPRoute and the TrafficTarget", grant),
            denied("a -> b denied again", call()),
        ),
    )


def _spec_change() -> Case:
    def routes(path: str, methods: list[str]) -> dict[str, Any]:
        return m.http_route_group("routes", match("routes", path, methods))

    target = tt("a-to-b", ["a"], [m.rule(HRG, "routes", ["routes"])])
    return Case(
        name="spec-route-change",
        title="Layer5 specs, fixed: pathRegex /metrics, methods * admits GET /metrics, not "
        "/echo; changed to .* and [GET] it admits GET /echo, not POST /echo",
        tags=("spec", "access", "layer5", "http", "propagation"),
        needs=Mode.ACL,
        apps=(A, B),
        services=(B_HTTP,),
        steps=(
            Apply(
                "HTTPRouteGroup /metrics, methods *; TrafficTarget",
                (routes("/metrics", ["*"]), target),
            ),
            allowed("GET /metrics allowed", call("/metrics")),
            denied("GET /echo denied", call("/echo"), wait=False),
            Apply("HTTPRouteGroup changed: pathRegex .*, methods [GET]", (routes(".*", ["GET"]),)),
            allowed("GET /echo allowed", call("/echo")),
            denied("POST /echo denied", call("/echo", method="POST"), wait=False),
        ),
    )


def _union() -> Case:
    one = (
        m.http_route_group("one", match("one", "/one$")),
        tt("tt-one", ["a"], [m.rule(HRG, "one")]),
    )
    two = (
        m.http_route_group("two", match("two", "/two$")),
        tt("tt-two", ["a"], [m.rule(HRG, "two")]),
    )
    return Case(
        name="access-union",
        title="two TrafficTargets on one destination are a union; deleting one keeps the other",
        tags=("access", "http"),
        needs=Mode.ACL,
        apps=(A, B),
        services=(B_HTTP,),
        steps=(
            Apply("TrafficTargets tt-one (GET /one) and tt-two (GET /two)", one + two),
            allowed("GET /one allowed", call("/one")),
            allowed("GET /two allowed", call("/two")),
            denied("GET /three denied", call("/three"), wait=False),
            Delete("delete tt-one", one),
            denied("GET /one denied", call("/one")),
            allowed("GET /two still allowed", call("/two"), wait=False),
        ),
    )


def _overlap() -> Case:
    api = m.http_route_group(
        "api", match("read", "/api", ["GET"]), match("admin", "/api/admin", ["POST"])
    )
    docs = (
        api,
        tt("readers", ["a"], [m.rule(HRG, "api", ["read"])]),
        tt("admins", ["c"], [m.rule(HRG, "api", ["admin"])]),
    )
    return Case(
        name="access-overlap",
        title="overlapping routes for different sources do not shadow each other (a: GET /api, "
        "c: POST /api/admin)",
        tags=("access", "http"),
        needs=Mode.ACL,
        apps=(A, C, B),
        services=(B_HTTP,),
        steps=(
            Apply("routes read (GET /api) for a, admin (POST /api/admin) for c", docs),
            allowed("a: GET /api/admin allowed (read covers it)", call("/api/admin")),
            allowed("c: POST /api/admin allowed", call("/api/admin", src="c", method="POST")),
            denied("a: POST /api/admin denied", call("/api/admin", method="POST"), wait=False),
            denied("c: GET /api/x denied", call("/api/x", src="c"), wait=False),
        ),
    )


def _no_rules() -> Case:
    empty = m.traffic_target("no-rules", destination="b", sources=["a"], rules=[])
    return Case(
        name="access-no-rules",
        title="a TrafficTarget without rules grants nothing",
        tags=("access", "http"),
        needs=Mode.ACL,
        apps=(A, B),
        services=(B_HTTP,),
        steps=(
            Apply(
                "TrafficTarget no-rules (b <- a, no rules) and a marker (GET /marker)",
                (empty, *marker()),
            ),
            allowed("GET /marker allowed: the change is in force", call("/marker")),
            denied("GET /echo denied", call("/echo"), wait=False),
            denied("POST /anything denied", call("/anything", method="POST"), wait=False),
        ),
    )


def _methods() -> Case:
    group = m.http_route_group(
        "methods", match("read", None, ["GET", "HEAD"]), match("any", "/any", ["*"])
    )
    return Case(
        name="access-methods",
        title="route matches on methods: listed methods only; * is every method",
        tags=("access", "http"),
        needs=Mode.ACL,
        apps=(A, B),
        services=(B_HTTP,),
        steps=(
            Apply(
                "matches read (GET, HEAD, any path) and any (/any, *)",
                (group, tt("a-to-b", ["a"], [m.rule(HRG, "methods")])),
            ),
            allowed("GET /echo allowed", call()),
            allowed("HEAD /echo allowed", call(method="HEAD"), wait=False),
            denied("POST /echo denied", call(method="POST"), wait=False),
            denied("DELETE /echo denied", call(method="DELETE"), wait=False),
            allowed("POST /any allowed", call("/any", method="POST"), wait=False),
            allowed("PATCH /any/x allowed", call("/any/x", method="PATCH"), wait=False),
        ),
    )


def _anchoring() -> Case:
    group = m.http_route_group("paths", match("metrics", "/metrics"), match("exact", "/exact$"))
    paths_ok = ("/metrics", "/metrics/x", "/metricsX", "/metrics?a=b", "/exact")
    return Case(
        name="access-path-anchoring",
        title="pathRegex is anchored at the start only and matched without the query",
        tags=("access", "http"),
        needs=Mode.ACL,
        apps=(A, B),
        services=(B_HTTP,),
        steps=(
            Apply(
                "matches /metrics and /exact$", (group, tt("a-to-b", ["a"], [m.rule(HRG, "paths")]))
            ),
            allowed("GET /metrics allowed", call("/metrics")),
            *(allowed(f"GET {p} allowed", call(p), wait=False) for p in paths_ok[1:]),
            denied("GET /x/metrics denied", call("/x/metrics"), wait=False),
            denied("GET /exact/more denied ($ in the regex)", call("/exact/more"), wait=False),
        ),
    )


def _headers() -> Case:
    group = m.http_route_group(
        "headers",
        match("admin", "/h", headers=[{"x-user": "admin|ops"}, {"x-env": "prod"}]),
        match("agent", "/h", headers=[{"user-agent": "conformance/.*"}]),
    )
    return Case(
        name="access-headers",
        title="header matches: regexes over the whole value, AND within a match, OR across",
        tags=("access", "http"),
        needs=Mode.ACL,
        apps=(A, B),
        services=(B_HTTP,),
        steps=(
            Apply(
                "matches admin (x-user admin|ops AND x-env prod) and agent (user-agent)",
                (group, tt("a-to-b", ["a"], [m.rule(HRG, "headers")])),
            ),
            allowed("x-user: admin, x-env: prod allowed", call("/h", x_user="admin", x_env="prod")),
            allowed(
                "x-user: ops, x-env: prod allowed",
                call("/h", x_user="ops", x_env="prod"),
                wait=False,
            ),
            denied("x-user: admin alone denied (AND)", call("/h", x_user="admin"), wait=False),
            denied(
                "x-user: superadmin denied (whole value)",
                call("/h", x_user="superadmin", x_env="prod"),
                wait=False,
            ),
            allowed(
                "user-agent: conformance/1 allowed (OR)",
                call("/h", user_agent="conformance/1"),
                wait=False,
            ),
            denied("no headers denied", call("/h"), wait=False),
        ),
    )


def _headers_map() -> Case:
    group = m.http_route_group("teams", match("team", "/h", headers={"x-team": "ops|sre"}))
    return Case(
        name="access-headers-map",
        title="headers written as a map (x-team: ops|sre): the regex over the whole value, a "
        "missing header matches nothing",
        tags=("access", "http"),
        needs=Mode.ACL,
        apps=(A, B),
        services=(B_HTTP,),
        steps=(
            Apply(
                "match team with headers as a map {x-team: ops|sre}",
                (group, tt("a-to-b", ["a"], [m.rule(HRG, "teams")])),
            ),
            allowed("x-team: ops allowed", call("/h", x_team="ops")),
            allowed("x-team: sre allowed", call("/h", x_team="sre"), wait=False),
            denied("x-team: dev denied", call("/h", x_team="dev"), wait=False),
            denied("x-team: opsx denied (not a prefix)", call("/h", x_team="opsx"), wait=False),
            denied("x-team: devops denied (not a search)", call("/h", x_team="devops"), wait=False),
            denied("no x-team denied", call("/h"), wait=False),
        ),
    )


def _denial_is_403() -> Case:
    return Case(
        name="access-denial-403",
        title="a denial is an HTTP 403 with a reason on a kept-alive connection, never a reset, "
        "and the destination receives nothing",
        tags=("access", "http"),
        needs=Mode.ACL,
        apps=(A, B),
        services=(B_HTTP,),
        steps=(
            denied("GET /echo: 403 with a reason", call()),
            denied("POST /echo with a body: 403", call(method="POST"), wait=False),
            denied("DELETE /x: 403", call("/x", method="DELETE"), wait=False),
        ),
    )


def _tcp_ports() -> Case:
    route = m.tcp_route("b-tcp", [1234])
    target = tt("a-to-b-tcp", ["a"], [m.rule(TCPR, "b-tcp")])
    return Case(
        name="access-tcp-ports",
        title="TCP access by TCPRoute ports (the target port 9000, Service port 7000); another "
        "port grants nothing",
        tags=("access", "tcp", "propagation"),
        needs=Mode.ACL,
        apps=(A, B),
        services=(B_HTTP, B_TCP),
        steps=(
            denied("no TrafficTarget: TCP a -> b-tcp denied", call(svc="b-tcp")),
            Apply("TCPRoute with port 1234 only, and a marker", (route, target, *marker())),
            allowed("GET /marker allowed: the change is in force", call("/marker")),
            denied("TCP a -> b-tcp denied (port not in the route)", call(svc="b-tcp"), wait=False),
            Apply("TCPRoute changed to b-tcp's port", (m.tcp_route("b-tcp", ["$port:b-tcp"]),)),
            allowed("TCP a -> b-tcp allowed", call(svc="b-tcp")),
            Delete("delete the TrafficTarget", (target,)),
            denied("TCP a -> b-tcp denied again", call(svc="b-tcp")),
        ),
    )


def _udp() -> Case:
    grant = (
        m.udp_route("b-udp", ["$port:b-udp"]),
        tt("a-to-b-udp", ["a"], [m.rule(UDPR, "b-udp")]),
    )
    return Case(
        name="access-udp",
        title="UDP access by UDPRoute: no reply without a grant, an echo with it, none after",
        tags=("access", "udp", "propagation"),
        needs=Mode.ACL,
        apps=(A, B),
        services=(B_HTTP, B_UDP),
        steps=(
            denied("no TrafficTarget: UDP a -> b-udp gets no reply", call(svc="b-udp")),
            Apply("UDPRoute with b-udp's port and a TrafficTarget", grant),
            allowed("UDP a -> b-udp answered by b", call(svc="b-udp")),
            Delete("delete both", grant),
            denied("UDP a -> b-udp gets no reply again", call(svc="b-udp")),
        ),
    )


# --------------------------------------------------------------------------- split


def _backends(n: int = 2) -> tuple[tuple[App, ...], tuple[Svc, ...]]:
    apps = tuple(App(f"b-v{i}", account="b", labels={"svc": "b"}) for i in range(1, n + 1))
    services = (Svc("b", {"svc": "b"}), *(http(a.name, a.name) for a in apps))
    return (A, *apps), services


GRANT = Apply("grant a every route to b (ignored in default mode)", tuple(m.grant_all("b", "a")))


def split_case(
    *,
    name: str,
    title: str,
    tags: tuple[str, ...],
    steps: tuple[Step, ...],
    backends: int = 2,
    services: tuple[Svc, ...] | None = None,
    own_root: bool = False,
) -> Case:
    """``a`` calls the root ``b`` over backends ``b-v1``.., granted first (``GRANT``). With
    ``own_root`` the root Service ``b`` selects a pod of its own (app ``b``) instead of the
    backends', so what a split leaves to the root is told apart from what it sends on."""
    apps, default_services = _backends(backends)
    if own_root:
        apps, services = (*apps, B), (http("b", "b"), *default_services[1:])
    return Case(
        name=name,
        title=title,
        tags=tags,
        apps=apps,
        services=services or default_services,
        steps=(GRANT, *steps),
    )


def split(weights: Mapping[str, int | str], name: str = "b-split", **kw: Any) -> dict[str, Any]:
    return m.traffic_split(name, "b", weights, **kw)


def pin(app: str, apps: list[str]) -> tuple[Apply, Expect]:
    """Everything to one backend, and wait for it: the next split's change is then visible."""
    weights = {a: int(a == app) for a in apps}
    return (
        Apply(f"split pinned on {app}", (split(weights),)),
        Expect(f"only {app} serves", call(), Counts({a: 10 * w for a, w in weights.items()})),
    )


# weights 1/0 then 0/1: exact counts (split-exact, and default-split in default mode)
EXACT = (
    Apply("split b-v1=1, b-v2=0", (split({"b-v1": 1, "b-v2": 0}),)),
    Expect("exactly 50/0", call(), Counts({"b-v1": 50, "b-v2": 0})),
    Apply("split b-v1=0, b-v2=1", (split({"b-v1": 0, "b-v2": 1}),)),
    Expect("exactly 0/50", call(), Counts({"b-v1": 0, "b-v2": 50})),
)


def _split_none() -> Case:
    return split_case(
        name="split-none",
        title="Layer5 split, fixed: without a split, 50 calls to the root reach both backends",
        tags=("split", "layer5"),
        steps=(
            Expect(
                "50 calls shared by b-v1 and b-v2", call(), Shares({"b-v1": 0.5, "b-v2": 0.5}, n=50)
            ),
        ),
    )


def _split_exact() -> Case:
    return split_case(
        name="split-exact",
        title="Layer5 split, fixed: weights 1/0 give exactly 50/0 and 0/1 exactly 0/50, as the "
        "backends received them (no retries or probes in the counts)",
        tags=("split", "layer5", "propagation"),
        steps=EXACT,
    )


def _split_shares() -> Case:
    names = ["b-v1", "b-v2"]
    return split_case(
        name="split-75-25",
        title="Layer5 split, fixed: 75/25 and 25/75 within a binomial bound over 200 calls",
        tags=("split", "layer5", "propagation"),
        steps=(
            *pin("b-v2", names),
            Apply("split b-v1=75, b-v2=25", (split({"b-v1": 75, "b-v2": 25}),)),
            Expect("75/25", call(), Shares({"b-v1": 0.75, "b-v2": 0.25})),
            *pin("b-v1", names),
            Apply("split b-v1=25, b-v2=75", (split({"b-v1": 25, "b-v2": 75}),)),
            Expect("25/75", call(), Shares({"b-v1": 0.25, "b-v2": 0.75})),
        ),
    )


def _split_three() -> Case:
    return split_case(
        name="split-three",
        title="three backends 50/30/20 within a binomial bound over 300 calls",
        tags=("split",),
        backends=3,
        steps=(
            *pin("b-v3", ["b-v1", "b-v2", "b-v3"]),
            Apply("split 50/30/20", (split({"b-v1": 50, "b-v2": 30, "b-v3": 20}),)),
            Expect("50/30/20", call(), Shares({"b-v1": 0.5, "b-v2": 0.3, "b-v3": 0.2}, n=300)),
        ),
    )


def _split_v1alpha1() -> Case:

    def old(w1: str, w2: str) -> dict[str, Any]:
        return split({"b-v1": w1, "b-v2": w2}, version="v1alpha1")

    return split_case(
        name="split-v1alpha1-quantities",
        title="v1alpha1 weights are quantities: 1 (= 1000m) and 500m share 2/3 : 1/3",
        tags=("split", "versions"),
        steps=(
            Apply("v1alpha1 split: b-v1 0, b-v2 1", (old("0", "1"),)),
            Expect("only b-v2 serves", call(), Counts({"b-v1": 0, "b-v2": 10})),
            Apply("v1alpha1 split: b-v1 1, b-v2 500m", (old("1", "500m"),)),
            Expect("2/3 : 1/3", call(), Shares({"b-v1": 2 / 3, "b-v2": 1 / 3}, n=300)),
        ),
    )


def _split_matches() -> Case:
    services = (http("b", "b-v1"), http("b-v1", "b-v1"), http("b-v2", "b-v2"))
    canary = m.http_route_group("canary", match("canary", headers=[{"x-canary": "yes"}]))
    return split_case(
        name="split-matches",
        title="a split with matches splits only the requests they select; the rest go to the "
        "root Service (whose pods are b-v1's)",
        tags=("split",),
        services=services,
        steps=(
            Apply(
                "split b-v2=1 for x-canary: yes",
                (canary, split({"b-v1": 0, "b-v2": 1}, matches=["canary"])),
            ),
            Expect(
                "x-canary: yes -> exactly 20 to b-v2",
                call(x_canary="yes"),
                Counts({"b-v1": 0, "b-v2": 20}),
            ),
            Expect(
                "other requests -> exactly 20 to the root's b-v1",
                call(x_canary="no"),
                Counts({"b-v1": 20, "b-v2": 0}),
            ),
        ),
    )


def _split_port() -> Case:
    services = (Svc("b", {"svc": "b"}), http("b-v1", "b-v1"), http("b-v2", "b-v2", port=8081))
    return split_case(
        name="split-backend-port",
        title="a backend without the root's port (b-v2 serves 8081, the root 8080) gets nothing",
        tags=("split",),
        services=services,
        steps=(
            Apply("split b-v1=1, b-v2=1", (split({"b-v1": 1, "b-v2": 1}),)),
            Expect("exactly 50/0", call(), Counts({"b-v1": 50, "b-v2": 0})),
        ),
    )


# How a split is resolved (no positive weight, a backend itself split, two splits on one
# root): the root Service has a pod of its own (``own_root``), and these cases also run in
# the default-mode pass (tag ``default-mode``), as splits are honoured in either mode.


def only(app: str, n: int = 20) -> Counts:
    """Exactly ``n`` calls to ``app``, none to the others of an ``own_root`` split case."""
    return Counts({a: n * (a == app) for a in ("b", "b-v1", "b-v2")})


def _split_all_zero() -> Case:
    return split_case(
        name="split-all-zero",
        title="a split whose backends all weigh 0 is unusable: its traffic goes to the root "
        "Service's own pod",
        tags=("split", "default-mode", "propagation"),
        own_root=True,
        steps=(
            Apply("split b-v1=1, b-v2=0", (split({"b-v1": 1, "b-v2": 0}),)),
            Expect("exactly 20 to b-v1", call(), only("b-v1")),
            Apply("split b-v1=0, b-v2=0", (split({"b-v1": 0, "b-v2": 0}),)),
            Expect("exactly 20 to the root's own pod b", call(), only("b")),
        ),
    )


def _split_nested() -> Case:
    inner = m.traffic_split("b-v1-split", "b-v1", {"b-v2": 1})
    return split_case(
        name="split-nested",
        title="splits are not hierarchical: b is split to b-v1 and b-v1 to b-v2; calls to b "
        "reach b-v1's own pod, never b-v2",
        tags=("split", "default-mode"),
        own_root=True,
        steps=(
            Apply("splits b -> b-v1 and b-v1 -> b-v2", (split({"b-v1": 1}), inner)),
            Expect(
                "b-v1's own split: calls to b-v1 exactly 20 to b-v2", call(svc="b-v1"), only("b-v2")
            ),
            Expect("calls to b: exactly 20 to b-v1's own pod (one hop)", call(), only("b-v1")),
        ),
    )


def _split_conflict() -> Case:
    return split_case(
        name="split-conflict",
        title="two splits on one root: the first by name wins and the other is ignored, also "
        "when the first is unusable (its traffic goes to the root's own pod)",
        tags=("split", "default-mode", "propagation"),
        own_root=True,
        steps=(
            Apply("split b-split-2: b-v2=1", (split({"b-v1": 0, "b-v2": 1}, "b-split-2"),)),
            Expect("b-split-2 alone: exactly 20 to b-v2", call(), only("b-v2")),
            Apply(
                "split b-split-1: b-v1=1 (applied later, first by name)",
                (split({"b-v1": 1, "b-v2": 0}, "b-split-1"),),
            ),
            Expect("b-split-1 wins: exactly 20 to b-v1", call(), only("b-v1")),
            Apply(
                "b-split-1 changed to b-v1=0, b-v2=0 (unusable)",
                (split({"b-v1": 0, "b-v2": 0}, "b-split-1"),),
            ),
            Expect(
                "b-split-1 still holds b: exactly 20 to the root's own pod, none to b-split-2's",
                call(),
                only("b"),
            ),
        ),
    )


def _split_flowing() -> Case:
    return split_case(
        name="split-under-traffic",
        title="a split changed while traffic flows: no call fails, the backend switches once, "
        "each backend received exactly what the caller saw",
        tags=("split", "propagation"),
        steps=(
            *pin("b-v1", ["b-v1", "b-v2"]),
            Flowing(
                "split moved to b-v2 under traffic",
                call(),
                (split({"b-v1": 0, "b-v2": 1}),),
                before="b-v1",
                after="b-v2",
            ),
        ),
    )


# --------------------------------------------------------------------------- default mode


def _default_allows() -> Case:
    only_c = (
        m.http_route_group("only", match("only", "/only$", ["GET"])),
        tt("c-only", ["c"], [m.rule(HRG, "only")]),
    )
    return Case(
        name="default-allows",
        title="default mode: with no grant for a (and one for c only), a reaches b over HTTP, "
        "TCP and UDP",
        tags=("default-mode", "http", "tcp", "udp"),
        needs=Mode.DEFAULT,
        apps=(A, C, B),
        services=(B_HTTP, B_TCP, B_UDP),
        steps=(
            Apply("a TrafficTarget for c only (not enforced in default mode)", only_c),
            allowed("GET /echo allowed", call()),
            allowed("POST /echo allowed", call(method="POST")),
            allowed("TCP allowed", call(svc="b-tcp")),
            allowed("UDP allowed", call(svc="b-udp")),
        ),
    )


def _default_split() -> Case:
    apps, services = _backends()
    return Case(
        name="default-split",
        title="default mode: splits are honoured, exactly (1/0 -> 50/0, 0/1 -> 0/50)",
        tags=("default-mode", "split", "propagation"),
        needs=Mode.DEFAULT,
        apps=apps,
        services=services,
        steps=EXACT,
    )


# --------------------------------------------------------------------------- versions


def _tt_versions() -> Case:
    src, dst = m.account("a"), m.account("b")
    rule = m.rule(HRG, "all", ["all"])
    v1 = {
        "apiVersion": "access.smi-spec.io/v1alpha1",
        "kind": "TrafficTarget",
        "metadata": m.meta("tt"),
        "destination": dst,
        "sources": [src],
        "specs": [rule],
    }
    v2 = {
        "apiVersion": "access.smi-spec.io/v1alpha2",
        "kind": "TrafficTarget",
        "metadata": m.meta("tt"),
        "spec": {"destination": {**dst, "port": 8080}, "sources": [src], "rules": [rule]},
    }
    v3 = tt("tt", ["a"], [rule])
    group = m.http_route_group("all", match("all", ".*", ["*"]))
    steps: list[Any] = [Apply("HTTPRouteGroup all", (group,))]
    for version, doc in (("v1alpha1", v1), ("v1alpha2", v2), ("v1alpha3", v3)):
        steps += [
            Apply(f"TrafficTarget {version}", (doc,)),
            allowed(f"allowed by the {version} TrafficTarget", call()),
            Delete(f"delete the {version} TrafficTarget", (doc,)),
            denied(f"denied again without the {version} TrafficTarget", call()),
        ]
    return Case(
        name="versions-traffictarget",
        title="TrafficTarget v1alpha1 (top-level fields, specs), v1alpha2 (destination.port) "
        "and v1alpha3 each grant",
        tags=("versions", "access", "propagation"),
        needs=Mode.ACL,
        apps=(A, B),
        services=(B_HTTP,),
        steps=tuple(steps),
    )


def _route_versions() -> Case:
    def group(version: str, path: str, top_level: bool = False) -> dict[str, Any]:
        matches = [match("m", path, ["GET"])]
        doc: dict[str, Any] = {
            "apiVersion": f"specs.smi-spec.io/{version}",
            "kind": "HTTPRouteGroup",
            "metadata": m.meta(f"r-{version}"),
        }
        if top_level:
            doc["matches"] = matches
        else:
            doc["spec"] = {"matches": matches}
        return doc

    groups = (
        group("v1alpha1", "/v1$", top_level=True),
        group("v1alpha2", "/v2$"),
        group("v1alpha3", "/v3$"),
        group("v1alpha4", "/v4$"),
    )
    target = tt("a-to-b", ["a"], [m.rule(HRG, g["metadata"]["name"]) for g in groups])

    def tcp_route(version: str) -> dict[str, Any]:
        """A TCPRoute without matches (every port): v1alpha1 has no spec at all."""
        doc: dict[str, Any] = {
            "apiVersion": f"specs.smi-spec.io/{version}",
            "kind": "TCPRoute",
            "metadata": m.meta("t-old"),
        }
        return doc if version == "v1alpha1" else {**doc, "spec": {}}

    tcp_target = tt("a-to-b-tcp", ["a"], [m.rule(TCPR, "t-old")])
    return Case(
        name="versions-routes",
        title="HTTPRouteGroup v1alpha1 (top-level matches), v1alpha2, v1alpha3, v1alpha4, and "
        "TCPRoute v1alpha3 (no matches: every port) and v1alpha1 (no spec) each grant",
        tags=("versions", "access", "spec", "tcp"),
        needs=Mode.ACL,
        apps=(A, B),
        services=(B_HTTP, B_TCP),
        steps=(
            Apply("HTTPRouteGroups v1alpha1..v1alpha4 and a TrafficTarget", (*groups, target)),
            allowed("GET /v1 allowed (v1alpha1)", call("/v1")),
            *(
                allowed(f"GET /v{i} allowed (v1alpha{i})", call(f"/v{i}"), wait=False)
                for i in (2, 3, 4)
            ),
            denied("GET /v5 denied", call("/v5"), wait=False),
            Apply("TCPRoute v1alpha3 and a TrafficTarget", (tcp_route("v1alpha3"), tcp_target)),
            allowed("TCP allowed (v1alpha3 TCPRoute)", call(svc="b-tcp")),
            Delete("delete the v1alpha3 TCPRoute", (tcp_route("v1alpha3"),)),
            denied("TCP denied (the rule's route is gone)", call(svc="b-tcp")),
            Apply("the same TCPRoute as v1alpha1 (no spec)", (tcp_route("v1alpha1"),)),
            allowed("TCP allowed (v1alpha1 TCPRoute)", call(svc="b-tcp")),
        ),
    )


def _split_versions() -> Case:

    def doc(version: str, w1: int, w2: int) -> dict[str, Any]:
        return split({"b-v1": w1, "b-v2": w2}, version=version)

    return split_case(
        name="versions-trafficsplit",
        title="TrafficSplit v1alpha2 and v1alpha3 (integer weights) split exactly",
        tags=("versions", "split"),
        steps=(
            Apply("v1alpha2 split b-v1=1, b-v2=0", (doc("v1alpha2", 1, 0),)),
            Expect("exactly 30/0", call(), Counts({"b-v1": 30, "b-v2": 0})),
            Apply("v1alpha3 split b-v1=0, b-v2=1", (doc("v1alpha3", 0, 1),)),
            Expect("exactly 0/30", call(), Counts({"b-v1": 0, "b-v2": 30})),
        ),
    )


# --------------------------------------------------------------------------- Gateway API (GAMMA)
# What the official Gateway API mesh suite (make conformance-gateway) does not check: the
# status the controller writes, consumer routes against producer routes per caller, SMI access
# control on the backends a route chose, and a route changed under traffic.

ACCEPTED = {"Accepted": ("True", "Accepted"), "ResolvedRefs": ("True", "ResolvedRefs")}


def to(*services: str, path: str | None = None, **kw: Any) -> dict[str, Any]:
    """A rule sending to these Services (port 8080), for ``path`` (Exact) or every request."""
    rule: dict[str, Any] = {"backendRefs": [m.backend(svc) for svc in services], **kw}
    if path is not None:
        rule["matches"] = [{"path": {"type": "Exact", "value": path}}]
    return rule


def route(name: str, *rules: dict[str, Any], parent: str = "b", **kw: Any) -> dict[str, Any]:
    return m.http_route(name, [m.parent(parent, port=kw.pop("port", None))], *rules, **kw)


def _gamma_status() -> Case:
    grpc = m.grpc_route("b-grpc", [m.parent("b")], {"backendRefs": [m.backend("b")]})
    fixed = route("b-missing", to("b", path="/missing"))
    return Case(
        name="gamma-status",
        title="HTTPRoute status: Accepted and ResolvedRefs per Service parent, each with the "
        "spec's reason, following changes (missing backend, missing port or Service, TCP "
        "Service, GRPCRoute conflict)",
        tags=("gamma", "status"),
        apps=(A, B),
        services=(B_HTTP, B_TCP),
        steps=(
            Apply("grant a every route to b", tuple(m.grant_all("b", "a"))),
            Apply("HTTPRoute b-route: b -> b", (route("b-route", to("b")),)),
            RouteStatus("b-route accepted, refs resolved", "b-route", "b", ACCEPTED),
            allowed("GET /echo served by b through the route", call()),
            Apply(
                "HTTPRoute b-missing: /missing -> Service nope",
                (route("b-missing", to("nope", path="/missing")),),
            ),
            RouteStatus(
                "b-missing accepted, BackendNotFound",
                "b-missing",
                "b",
                {"Accepted": ("True", "Accepted"), "ResolvedRefs": ("False", "BackendNotFound")},
            ),
            Expect("GET /missing: 500 from the mesh", call("/missing"), Answered(500)),
            Apply("b-missing fixed: /missing -> b", (fixed,)),
            RouteStatus("b-missing resolved once fixed", "b-missing", "b", ACCEPTED),
            Apply(
                "HTTPRoutes on port 9999 of b, on Service nobody, on TCP Service b-tcp",
                (
                    route("b-port", to("b"), port=9999),
                    route("nobody", to("b"), parent="nobody"),
                    route("on-tcp", to("b"), parent="b-tcp"),
                ),
            ),
            RouteStatus(
                "b-port: NoMatchingParent",
                "b-port",
                "b",
                {"Accepted": ("False", "NoMatchingParent")},
                port=9999,
            ),
            RouteStatus(
                "nobody: NoMatchingParent",
                "nobody",
                "nobody",
                {"Accepted": ("False", "NoMatchingParent")},
            ),
            RouteStatus(
                "on-tcp: UnsupportedValue",
                "on-tcp",
                "b-tcp",
                {"Accepted": ("False", "UnsupportedValue")},
            ),
            Apply("GRPCRoute b-grpc on b", (grpc,)),
            RouteStatus(
                "b-grpc accepted",
                "b-grpc",
                "b",
                {"Accepted": ("True", "Accepted")},
                kind="GRPCRoute",
            ),
            RouteStatus(
                "b-route loses to the GRPCRoute: Conflicted",
                "b-route",
                "b",
                {"Accepted": ("False", "Conflicted")},
            ),
            Delete("GRPCRoute b-grpc deleted", (grpc,)),
            RouteStatus("b-route accepted again", "b-route", "b", ACCEPTED),
        ),
    )


C_B = App("c", ns="B")


def _gamma_consumer() -> Case:
    """Producer route in A (b -> b-v1, /marker -> b-v2 once the consumer route is there),
    consumer route in B (b -> b-v2 for /echo only)."""
    apps, services = _backends()
    grants = (*m.grant_all("b", "a"), *m.grant_all("b", ("$B", "c"), name="all-b-from-c"))
    producer = route("producer", to("b-v1"))
    marked = route("producer", to("b-v1"), to("b-v2", path="/marker"))
    # a backendRef's namespace is the route's unless it says otherwise: b-v2 is in A
    to_v2 = {
        "backendRefs": [m.backend("b-v2", namespace="$A")],
        "matches": [{"path": {"type": "Exact", "value": "/echo"}}],
    }
    consumer = m.http_route("consumer", [m.parent("b", ns="$A")], to_v2, ns="$B")
    c_call = Call("c", "b")
    return Case(
        name="gamma-consumer",
        title="a consumer route (in the caller's namespace) replaces the producer routes for its "
        "callers only, with no merging (its unmatched paths get 404), and when it goes the "
        "producer route applies again",
        tags=("gamma", "default-mode", "propagation"),
        apps=(*apps, C_B),
        services=services,
        steps=(
            Apply("grant a and c (namespace B) every route to b (ignored in default mode)", grants),
            Apply("producer route in A: b -> b-v1", (producer,)),
            Expect("a: exactly 10 to b-v1", call(), Counts({"b-v1": 10, "b-v2": 0})),
            Expect("c: exactly 10 to b-v1", c_call, Counts({"b-v1": 10, "b-v2": 0})),
            Apply(
                "consumer route in B: b /echo -> b-v2; then the producer route gains "
                "/marker -> b-v2",
                (consumer, marked),
            ),
            Expect("c: exactly 10 to b-v2", c_call, Counts({"b-v1": 0, "b-v2": 10})),
            Expect(
                "a sees the producer's /marker (its proxy has the consumer route too)",
                call("/marker"),
                Allowed(("b-v2",)),
            ),
            Expect(
                "a: still served by b-v1 (the consumer route is not a's)",
                call(),
                Allowed(("b-v1",)),
                wait=False,
            ),
            Expect(
                "c: GET /marker 404, the producer route's rule is not merged in",
                Call("c", "b", path="/marker"),
                Answered(404),
                wait=False,
            ),
            Delete("consumer route deleted", (consumer,)),
            Expect("c: exactly 10 to b-v1 again", c_call, Counts({"b-v1": 10, "b-v2": 0})),
        ),
    )


D = App("d")


def _gamma_acl() -> Case:
    """Routes never grant: access is checked on the backend the route chose, on the request as
    the route sends it on."""
    on_d = (
        m.http_route_group("d-paths", match("open", "/(echo|open)$", ["GET"])),
        tt("a-to-d", ["a"], [m.rule(HRG, "d-paths")], dest="d"),
    )
    rewrite = {
        "type": "URLRewrite",
        "urlRewrite": {"path": {"type": "ReplaceFullPath", "replaceFullPath": "/admin"}},
    }
    return Case(
        name="gamma-acl",
        title="ACL mode: an HTTPRoute from b to d grants nothing: a needs a TrafficTarget to d "
        "(b's grant does not do), and the path a rewrite sends on is the one judged",
        tags=("gamma", "access"),
        needs=Mode.ACL,
        apps=(A, B, D),
        services=(B_HTTP, http("d", "d")),
        steps=(
            Apply("grant a every route to b", tuple(m.grant_all("b", "a"))),
            allowed("GET /echo on b allowed", call()),
            Apply("HTTPRoute on b: everything -> d", (route("b-to-d", to("d")),)),
            denied("GET /echo on b denied: the route chose d, where a has no grant", call()),
            Apply("grant a GET /echo and /open on d", on_d),
            allowed("GET /echo on b: allowed, served by d", call(), "d"),
            allowed("GET /open on b: allowed, served by d", call("/open"), "d"),
            Apply(
                "route rule: /open rewritten to /admin on its way to d",
                (route("b-to-d", to("d", path="/open", filters=[rewrite]), to("d")),),
            ),
            denied("GET /open on b denied: d is asked for /admin, not granted", call("/open")),
            allowed("GET /echo on b: still allowed by d", call(), "d", wait=False),
        ),
    )


def _gamma_flowing() -> Case:
    return split_case(
        name="gamma-under-traffic",
        title="an HTTPRoute's backend changed while traffic flows: no call fails, the backend "
        "switches once, each backend received exactly what the caller saw",
        tags=("gamma", "propagation"),
        steps=(
            Apply("HTTPRoute b -> b-v1", (route("b-route", to("b-v1")),)),
            Expect("only b-v1 serves", call(), Counts({"b-v1": 10, "b-v2": 0})),
            Flowing(
                "route moved to b-v2 under traffic",
                call(),
                (route("b-route", to("b-v2")),),
                before="b-v1",
                after="b-v2",
            ),
        ),
    )


CASES: tuple[Case, ...] = (
    _grant_and_revoke(),
    _spec_change(),
    _union(),
    _overlap(),
    _no_rules(),
    _methods(),
    _anchoring(),
    _headers(),
    _headers_map(),
    _denial_is_403(),
    _tcp_ports(),
    _udp(),
    _split_none(),
    _split_exact(),
    _split_shares(),
    _split_three(),
    _split_v1alpha1(),
    _split_matches(),
    _split_port(),
    _split_all_zero(),
    _split_nested(),
    _split_conflict(),
    _split_flowing(),
    _default_allows(),
    _default_split(),
    _tt_versions(),
    _route_versions(),
    _split_versions(),
    _gamma_status(),
    _gamma_consumer(),
    _gamma_acl(),
    _gamma_flowing(),
)
