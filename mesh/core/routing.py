"""Routing decisions: one HTTP request or one TCP/UDP flow -> allowed or denied, and where to.

:class:`Router` compiles a MeshConfig into lookup tables once; it is stateless and answers what a
request *may* do (:meth:`Router.plan_http`), which is what ``simmesh explain`` prints.
:class:`Engine` adds the state a data plane keeps between requests (split and endpoint balancers,
circuit breakers, rate limiters, in-flight counts) and answers what *this* request does
(:meth:`Engine.decide_http`, :meth:`Engine.decide_flow`). The proxy feeds it wall-clock ``now``;
the simulator feeds it simulated ``now``. What happens after the decision (attempts, retries,
timeouts, the final answer) is :mod:`mesh.core.lifecycle`'s, which reports each attempt's
outcome back here (:meth:`Engine.finish`) and asks where to retry (:meth:`Engine.next_endpoint`).
:class:`Router` also judges again flows admitted by an earlier config (:meth:`Router.readmits`).

Requests are decided in their canonical form (:mod:`mesh.core.request`).

Order of checks for a request: listener and Host (404) -> GAMMA routes attached to the Service
port (the caller's consumer table, else the producer table): the first match in precedence
order picks a rule (none: 404), whose redirect is answered (3xx), whose backendRef is chosen by
weight (none usable: 500) and whose filters give the request that goes on -> else the split
(weighted backend choice for the requests its matches select) -> access control in ACL mode on
the chosen backend and the request as it goes on (403) -> rate limit (429) -> ready endpoints
admitted by the grants (503) -> circuit breakers (503) -> load balancer.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from enum import StrEnum
from typing import Final, final

from mesh.core import patterns, schema
from mesh.core.annotations import ServicePolicy, parse_circuit_breaker_expression
from mesh.core.gamma import (
    Edits,
    Matcher,
    edit_request,
    query_params,
    redirect_location,
    rewrite,
)
from mesh.core.gateway import YEAR
from mesh.core.policies import (
    CircuitBreaker,
    CircuitBreakerSpec,
    CircuitState,
    LeastRequest,
    Outcome,
    RateLimitSpec,
    RetrySpec,
    Rng,
    RoundRobin,
    SmoothWeightedRoundRobin,
    TokenBucket,
    retry_budget_allows,
    retry_verdict,
)
from mesh.core.request import Request
from mesh.core.schema import MeshConfig, host_port


class Reason(StrEnum):
    ALLOWED = "allowed"
    BAD_REQUEST = "bad-request"
    UNKNOWN_LISTENER = "unknown-listener"
    UNKNOWN_HOST = "unknown-host"
    NO_IDENTITY = "no-source-identity"
    NOT_GRANTED = "not-granted"
    NO_MATCHING_ROUTE = "no-matching-route"
    NO_ENDPOINTS = "no-ready-endpoints"
    CIRCUIT_OPEN = "circuit-open"
    RATE_LIMITED = "rate-limited"
    NO_MATCHING_RULE = "no-matching-rule"  # GAMMA routes are attached; none of their rules
    INVALID_BACKEND = "invalid-backend"  # the backendRef chosen does not resolve
    NO_BACKEND = "no-backend"  # the rule has no backendRef with a positive weight
    UNSUPPORTED_FILTER = "unsupported-filter"
    REDIRECT = "redirect"  # a RequestRedirect: the proxy answers 3xx with a Location
    # mTLS (issue 17): a plaintext request from a pod of another node in strict mode; on a
    # tunnel, a target that is no endpoint of the cluster named, or not a pod of this node
    PLAINTEXT_REFUSED = "plaintext-refused"
    UNKNOWN_TARGET = "unknown-target"
    NOT_LOCAL_TARGET = "not-local-target"


# Final: a compiled module reads it as a C global, not from its globals dict per decision.
STATUS: Final = {
    Reason.BAD_REQUEST: 400,
    Reason.UNKNOWN_LISTENER: 404,
    Reason.UNKNOWN_HOST: 404,
    Reason.NO_IDENTITY: 403,
    Reason.NOT_GRANTED: 403,
    Reason.NO_MATCHING_ROUTE: 403,
    Reason.NO_ENDPOINTS: 503,
    Reason.CIRCUIT_OPEN: 503,
    Reason.RATE_LIMITED: 429,
    Reason.NO_MATCHING_RULE: 404,
    Reason.INVALID_BACKEND: 500,
    Reason.NO_BACKEND: 500,
    Reason.UNSUPPORTED_FILTER: 500,
    Reason.REDIRECT: 302,  # the filter's statusCode, set on the decision
    Reason.PLAINTEXT_REFUSED: 403,
    Reason.UNKNOWN_TARGET: 404,
    Reason.NOT_LOCAL_TARGET: 403,
}


# ---------------------------------------------------------------------------------------------
# Compiled config


class Endpoint:
    __slots__ = ("identity", "ip", "key", "node", "port")

    def __init__(self, ip: str, port: int, node: str | None, identity: str | None) -> None:
        self.ip = ip
        self.port = port
        self.node = node
        self.identity = identity
        self.key = f"{ip}:{port}"

    def __repr__(self) -> str:
        return f"Endpoint({self.key}, identity={self.identity})"


_UNIVERSAL_PATHS: Final = frozenset({None, "", ".*", "/", "/.*"})


class Match:
    """A compiled HTTPRouteGroup match: path regex anchored at the start only, on the path
    without its query; methods; header regexes over the whole value (AND)."""

    __slots__ = ("headers", "literal", "methods", "name", "path", "universal")

    def __init__(self, doc: schema.Match) -> None:
        self.name = doc.name
        regex = doc.path_regex
        self.path: patterns.Matcher | None = patterns.prefix(regex) if regex else None
        # a pattern without metacharacters (most pathRegex values): its startswith, inline
        self.literal: str | None = patterns.literal(regex) if regex else None
        methods = doc.methods
        self.methods: frozenset[str] | None = frozenset(methods) if methods is not None else None
        self.headers = tuple((k.lower(), patterns.whole(v)) for k, v in doc.headers)
        # every request meets it: any method, no header, a path pattern that any path meets
        # (anchored at the start only: none, ".*", and "/" or "/.*", which every normalised
        # origin-form path meets; the one request target they do not, OPTIONS's "*", asks a
        # server about itself). Judged on the text, narrowly: another pattern that happens
        # to match everything ("/?.*") is not recognised.
        self.universal = methods is None and not doc.headers and regex in _UNIVERSAL_PATHS

    def matches(self, method: str, path: str, headers: dict[str, str]) -> bool:
        if self.methods is not None and method not in self.methods:
            return False
        literal = self.literal
        if literal is not None:
            if len(path) > patterns.MAX_SUBJECT_LENGTH or not path.startswith(literal):
                return False
        elif self.path is not None and not self.path(path):
            return False
        for name, pattern in self.headers:
            value = headers.get(name)
            if value is None or not pattern(value):
                return False
        return True


class AccessGrant:
    __slots__ = (
        "description",
        "destination",
        "granted",
        "kind",
        "match",
        "ports",
        "route",
        "sources",
        "target",
    )

    def __init__(self, doc: schema.Grant) -> None:
        self.target = doc.target
        self.destination = doc.destination
        self.sources = frozenset(doc.sources)
        self.kind: str = doc.kind
        self.route = doc.route
        self.match = Match(doc.match) if doc.match is not None else None
        self.ports = frozenset(doc.ports)
        self.description = self.describe()
        self.granted = f"granted by {self.description}"

    def admits(self, source: str, request: Request | None) -> bool:
        """Whether this grant lets ``source`` make the request (None: a TCP/UDP flow). A
        path match must hold for every reading of the path a backend may take."""
        if source not in self.sources:
            return False
        match = self.match
        if request is None or match is None:
            return True
        method, headers = request.method, request.headers
        if request.plain_path:  # one reading, the path itself: no tuple to build
            return match.matches(method, request.path, headers)
        for reading in request.readings:  # noqa: SIM110 (all(): a generator per call)
            if not match.matches(method, reading, headers):
                return False
        return True

    def admits_all(self, source: str) -> bool:
        """Whether this grant lets ``source`` make any request (and any flow)."""
        match = self.match
        return source in self.sources and (match is None or match.universal)

    def describe(self) -> str:
        what = f"{self.kind} {self.route}"
        if self.match is not None:
            what += f" match {self.match.name!r}"
        elif self.ports:
            what += f" ports {sorted(self.ports)}"
        return f"TrafficTarget {self.target} ({what})"


class EndpointGroup:
    """Endpoints sharing an identity and a target port, with the grants that admit traffic."""

    __slots__ = ("_verdicts", "endpoints", "grants", "identity", "port")

    def __init__(self, identity: str | None, port: int, grants: tuple[AccessGrant, ...]) -> None:
        self.identity = identity
        self.port = port
        self.grants = grants
        self.endpoints: tuple[Endpoint, ...] = ()
        self._verdicts: tuple[Access, ...] | None = None

    def admitted(self, index: int) -> Access:
        """The verdict of ``grants[index]`` admitting a request to this group alone: the same
        for every request it admits, so made once (on the first)."""
        verdicts = self._verdicts
        if verdicts is None:
            verdicts = self._verdicts = tuple(
                Access(True, Reason.ALLOWED, g.granted, g.description, self.endpoints)
                for g in self.grants
            )
        return verdicts[index]


class Cluster:
    __slots__ = (
        "_denial",
        "_destinations",
        "breaker",
        "endpoints",
        "groups",
        "key",
        "load_balancer",
        "open_access",
        "port",
        "protocol",
        "scheme",
        "service",
    )

    def __init__(self, key: str, doc: schema.Cluster, acl: bool) -> None:
        self.key = key
        self.service = doc.service
        self.port = doc.port
        self.protocol: str = doc.protocol
        self.scheme: str = doc.scheme
        self.load_balancer: str = doc.load_balancer
        self.endpoints = tuple(Endpoint(e.ip, e.port, e.node, e.identity) for e in doc.endpoints)
        self.breaker = _breaker_spec(doc.circuit_breaker)
        self.groups: tuple[EndpointGroup, ...] = ()
        self.open_access: Access
        self._destinations: str | None = None
        self._denial: Denial | None = None
        if acl:
            self.groups = _groups(self.endpoints, [AccessGrant(g) for g in doc.access or ()])

    @property
    def destinations(self) -> str:
        """The identities behind this cluster, sorted (what a denial names), once."""
        if self._destinations is None:
            self._destinations = ", ".join(sorted({str(g.identity) for g in self.groups}))
        return self._destinations

    @property
    def denial(self) -> Denial:
        """The constant parts of a denial's detail, made once (on the first denial)."""
        if self._denial is None:
            self._denial = Denial(self.destinations, self.service, self.port)
        return self._denial


@final
class Denial:
    """What every denial of a cluster's access control says, but the source and the request:
    built once, so that a denied request formats one short string, not the whole detail."""

    __slots__ = ("no_route", "not_granted")

    def __init__(self, destinations: str, service: str, port: int) -> None:
        # f"{source}{no_route}{method} {path}"
        self.no_route = (
            f" has TrafficTargets to {destinations} but none of their route matches admits "
        )
        # f"no TrafficTarget grants {source}{not_granted}"
        self.not_granted = f" access to {destinations} (the pods behind {service}:{port})"


def _groups(endpoints: Sequence[Endpoint], grants: list[AccessGrant]) -> tuple[EndpointGroup, ...]:
    members: dict[tuple[str | None, int], list[Endpoint]] = {}
    for endpoint in endpoints:
        members.setdefault((endpoint.identity, endpoint.port), []).append(endpoint)
    groups = []
    for (identity, port), group_endpoints in members.items():
        admitted = tuple(
            g for g in grants if g.destination == identity and (not g.ports or port in g.ports)
        )
        group = EndpointGroup(identity, port, admitted)
        group.endpoints = tuple(group_endpoints)
        groups.append(group)
    return tuple(groups)


def _breaker_spec(doc: schema.CircuitBreaker | None) -> CircuitBreakerSpec | None:
    if doc is None:
        return None
    return CircuitBreakerSpec(
        expression=doc.expression,
        any_of=parse_circuit_breaker_expression(doc.expression),
        window=doc.window,
        open_duration=doc.open_duration,
        min_requests=doc.min_requests,
        check_period=doc.check_period,
    )


class Split:
    __slots__ = ("backends", "clusters", "matches", "name", "weights")

    def __init__(self, doc: schema.Split, clusters: Mapping[str, Cluster]) -> None:
        self.name = doc.name
        self.backends: tuple[str, ...] = tuple(b.service for b in doc.backends)
        self.weights: tuple[int, ...] = tuple(b.weight for b in doc.backends)
        self.clusters = tuple(clusters[b.cluster] for b in doc.backends)
        self.matches = tuple(Match(m) for m in doc.matches)

    def applies(self, method: str, path: str, headers: dict[str, str]) -> bool:
        if not self.matches:
            return True
        for match in self.matches:  # noqa: SIM110 (any(): a generator per call)
            if match.matches(method, path, headers):
                return True
        return False


# -- GAMMA routes, compiled -----------------------------------------------------------------------


class Mirror:
    """A RequestMirror's target."""

    __slots__ = ("cluster", "denominator", "numerator", "scheme", "service")

    def __init__(self, doc: schema.Mirror, clusters: Mapping[str, Cluster]) -> None:
        self.service = doc.service
        self.cluster = clusters[doc.cluster]
        self.scheme: str = doc.scheme
        self.numerator = doc.numerator
        self.denominator = doc.denominator


class FilterSet:
    """The filters of a rule or of a backendRef."""

    __slots__ = ("mirrors", "redirect", "request", "response", "rewrite", "unsupported")

    def __init__(self, doc: schema.Filters | None, clusters: Mapping[str, Cluster]) -> None:
        self.request = Edits(doc.request_headers) if doc and doc.request_headers else None
        self.response = Edits(doc.response_headers) if doc and doc.response_headers else None
        self.redirect = doc.redirect if doc is not None else None
        self.rewrite = doc.rewrite if doc is not None else None
        self.mirrors = tuple(Mirror(m, clusters) for m in doc.mirrors) if doc is not None else ()
        self.unsupported = doc.unsupported if doc is not None else None

    def apply(self, request: Request, prefix: str) -> Request:
        """The request as these filters send it on: headers edited, then URL rewritten."""
        if self.request is not None:
            request = edit_request(request, self.request)
        if self.rewrite is not None:
            request = rewrite(request, self.rewrite, prefix)
        return request

    def describe(self) -> list[str]:
        out = self.request.describe("request") if self.request is not None else []
        if self.response is not None:
            out += self.response.describe("response")
        if self.rewrite is not None:
            change = self.rewrite.path
            if self.rewrite.hostname is not None:
                out.append(f"URLRewrite hostname {self.rewrite.hostname}")
            if change is not None:
                out.append(f"URLRewrite path {change.type} {change.value!r}")
        if self.redirect is not None:
            out.append(f"RequestRedirect {self.redirect.status}")
        out += [
            f"RequestMirror to {m.cluster.key} ({m.numerator}/{m.denominator})"
            for m in self.mirrors
        ]
        if self.unsupported is not None:
            out.append(self.unsupported)
        return out


class RuleBackend:
    __slots__ = ("cluster", "filters", "invalid", "port", "scheme", "service", "weight")

    def __init__(self, doc: schema.RuleBackend, clusters: Mapping[str, Cluster]) -> None:
        self.service = doc.service
        self.port = doc.port
        self.weight = doc.weight
        self.cluster = clusters[doc.cluster] if doc.cluster is not None else None
        self.scheme: str | None = doc.scheme
        self.invalid = doc.invalid
        self.filters = FilterSet(doc.filters, clusters) if doc.filters is not None else None

    def describe(self) -> str:
        return f"{self.service}:{self.port}" if self.port is not None else self.service


class Rule:
    """One rule of an HTTPRoute or GRPCRoute, with the policy its requests run under (the
    parent Service's, with the rule's timeouts)."""

    __slots__ = (
        "backends",
        "balancer",
        "filters",
        "grpc",
        "index",
        "kind",
        "name",
        "policy",
        "prefix",
        "route",
        "weights",
    )

    def __init__(
        self,
        doc: schema.Rule,
        kind: str,
        balancer: str,
        clusters: Mapping[str, Cluster],
        policy: ServicePolicy,
    ) -> None:
        self.route = doc.route
        self.kind = kind
        self.grpc = kind == "GRPCRoute"
        self.index = doc.index
        self.name = doc.name
        self.prefix = doc.prefix or "/"
        self.filters = FilterSet(doc.filters, clusters)
        self.backends = tuple(RuleBackend(b, clusters) for b in doc.backends)
        self.weights = tuple(b.weight for b in self.backends)
        self.balancer = balancer
        self.policy = _rule_policy(policy, doc.request_timeout, doc.backend_timeout)

    def describe(self) -> str:
        name = f" ({self.name})" if self.name else ""
        return f"{self.kind} {self.route} rule {self.index}{name}"


_NO_LIMIT = YEAR  # timeouts.backendRequest 0s: the longest per-try timeout there is


def _rule_policy(
    policy: ServicePolicy, request_timeout: float | None, backend_timeout: float | None
) -> ServicePolicy:
    if request_timeout is None and backend_timeout is None:
        return policy
    timeout, overall = policy.timeout, policy.request_timeout
    if request_timeout is not None:
        overall = request_timeout or None
    if backend_timeout is not None:
        timeout = backend_timeout or _NO_LIMIT
    return ServicePolicy(
        retry=policy.retry,
        timeout=timeout,
        request_timeout=overall,
        circuit_breaker=policy.circuit_breaker,
        rate_limit=policy.rate_limit,
        load_balancer=policy.load_balancer,
    )


class RouteTable:
    """The rules of the routes that govern a Service port for some callers, and their
    matches in precedence order: the first match that holds picks the rule."""

    __slots__ = ("kind", "matchers", "routes", "rules", "scope")

    def __init__(
        self,
        key: str,
        scope: str,
        doc: schema.RouteTable,
        clusters: Mapping[str, Cluster],
        policy: ServicePolicy,
    ) -> None:
        self.kind: str = doc.kind
        self.scope = scope
        self.routes = tuple(doc.routes)
        self.rules = tuple(
            Rule(r, doc.kind, f"{key}|{scope}|{r.route}|{r.index}", clusters, policy)
            for r in doc.rules
        )
        self.matchers = tuple(Matcher(m) for m in doc.matches)

    def find(self, request: Request) -> tuple[Rule, Matcher] | None:
        query: dict[str, str] | None = None
        for matcher in self.matchers:
            if matcher.query and query is None:
                query = query_params(request.query)
            if matcher.matches(request, query):
                return self.rules[matcher.rule], matcher
        return None

    def describe(self) -> str:
        who = "producer" if not self.scope else f"consumer (callers in {self.scope})"
        return f"{self.kind}s {', '.join(self.routes)} ({who})"


class GammaRoutes:
    """The GAMMA routes of a Service port: the producer table for every caller, and the
    consumer table of the caller's namespace, which takes precedence for its callers."""

    __slots__ = ("consumers", "producer")

    def __init__(
        self, key: str, doc: schema.Gamma, clusters: Mapping[str, Cluster], policy: ServicePolicy
    ) -> None:
        self.producer = (
            RouteTable(key, "", doc.producer, clusters, policy) if doc.producer else None
        )
        self.consumers = {
            ns: RouteTable(key, ns, table, clusters, policy) for ns, table in doc.consumers.items()
        }

    def table(self, source: str | None) -> RouteTable | None:
        """The table for a caller of identity ``source`` (``namespace/serviceaccount``)."""
        if self.consumers and source is not None:
            found = self.consumers.get(source.partition("/")[0])
            if found is not None:
                return found
        return self.producer


class MirrorShot:
    """A copy of the request to send to ``endpoint`` and forget: its answer is discarded."""

    __slots__ = ("cluster", "endpoint", "scheme")

    def __init__(self, cluster: Cluster, endpoint: Endpoint, scheme: str) -> None:
        self.cluster = cluster
        self.endpoint = endpoint
        self.scheme = scheme


class Route:
    __slots__ = (
        "cluster",
        "doc",
        "gamma",
        "key",
        "listener",
        "policy",
        "port",
        "protocol",
        "scheme",
        "service",
        "split",
    )

    def __init__(self, key: str, doc: schema.Route, clusters: Mapping[str, Cluster]) -> None:
        self.key = key
        self.doc = doc
        self.service = doc.service
        self.port = doc.port
        self.protocol: str = doc.protocol
        self.scheme: str = doc.scheme
        self.listener = doc.listener
        self.cluster = clusters[doc.cluster]
        self.split = Split(doc.split, clusters) if doc.split is not None else None
        self.policy = _policy(doc.policy, self.cluster.breaker)
        self.gamma: GammaRoutes | None = None
        if doc.gamma is not None:
            self.gamma = GammaRoutes(key, doc.gamma, clusters, self.policy)


def route_clusters(doc: schema.Route) -> list[str]:
    """Every cluster a route's document names (its own, its split's, its GAMMA rules'
    backends and mirrors): what its compiled form holds."""
    keys = [doc.cluster]
    if doc.split is not None:
        keys.extend(b.cluster for b in doc.split.backends)
    gamma = doc.gamma
    if gamma is None:
        return keys
    tables = [*([gamma.producer] if gamma.producer is not None else []), *gamma.consumers.values()]
    for table in tables:
        for rule in table.rules:
            _filter_clusters(rule.filters, keys)
            for backend in rule.backends:
                if backend.cluster is not None:
                    keys.append(backend.cluster)
                _filter_clusters(backend.filters, keys)
    return keys


def _filter_clusters(filters: schema.Filters | None, keys: list[str]) -> None:
    if filters is not None:
        keys.extend(m.cluster for m in filters.mirrors)


def _policy(doc: schema.Policy, breaker: CircuitBreakerSpec | None) -> ServicePolicy:
    retry = doc.retry
    limit = doc.rate_limit
    return ServicePolicy(
        retry=None
        if retry is None
        else RetrySpec(
            attempts=retry.attempts,
            non_idempotent=retry.non_idempotent,
            on_statuses=tuple(retry.on_statuses),
            backoff=retry.backoff,
            budget=retry.budget,
        ),
        timeout=doc.timeout,
        request_timeout=doc.request_timeout,
        circuit_breaker=breaker,
        rate_limit=None if limit is None else RateLimitSpec(limit.average, limit.burst),
    )


# ---------------------------------------------------------------------------------------------
# Access


class Access:
    """The access verdict for one backend: the endpoints a request may reach there."""

    __slots__ = ("allowed", "detail", "endpoints", "reason", "rule")

    def __init__(
        self,
        allowed: bool,
        reason: Reason,
        detail: str,
        rule: str | None,
        endpoints: tuple[Endpoint, ...],
    ) -> None:
        self.allowed = allowed
        self.reason = reason
        self.detail = detail
        self.rule = rule
        self.endpoints = endpoints

    def __repr__(self) -> str:
        return (
            f"Access(allowed={self.allowed!r}, reason={self.reason!r}, detail={self.detail!r}, "
            f"rule={self.rule!r}, endpoints={self.endpoints!r})"
        )


def _norm_host(host: str) -> str:
    host = host.lower()
    if host.endswith("."):
        host = host[:-1]
    elif ".:" in host:
        host = host.replace(".:", ":")
    return host


class Router:
    """A compiled MeshConfig. Stateless: the same question always gets the same answer."""

    def __init__(self, config: MeshConfig, previous: Router | None = None) -> None:
        """``previous``: the router of the config before, whose compiled clusters and routes
        are reused where their documents are equal (a route only while every cluster it
        names is reused too): at 10,000 Services a change compiles what changed. The
        result is the same as without it (compiled parts are immutable; the engine's state
        is kept by names, not by these objects)."""
        self.config = config
        self.version = config.version
        self.acl = config.settings.acl
        self.identities: dict[str, str] = dict(config.identities)
        self._whole: dict[tuple[str, str, str], bool] = {}  # whole_access, memoised
        reuse = previous is not None and previous.acl == self.acl
        old_docs = previous.config.clusters if previous is not None and reuse else {}
        old_clusters = previous.clusters if previous is not None and reuse else {}
        self.clusters: dict[str, Cluster] = {}
        fresh: set[str] = set()  # keys of clusters compiled anew
        for k, v in config.clusters.items():
            old = old_clusters.get(k)
            if old is not None and old_docs.get(k) == v:
                self.clusters[k] = old
                continue
            cluster = Cluster(k, v, self.acl)
            cluster.open_access = Access(
                True,
                Reason.ALLOWED,
                "access control is off (default mode)",
                None,
                cluster.endpoints,
            )
            self.clusters[k] = cluster
            fresh.add(k)
        old_routes = previous.routes if previous is not None and reuse else {}
        self.routes: dict[str, Route] = {}
        for k, doc in config.routes.items():
            route = old_routes.get(k)
            if route is None or route.doc != doc or not fresh.isdisjoint(route_clusters(doc)):
                route = Route(k, doc, self.clusters)
            self.routes[k] = route
        self.hosts: dict[int, dict[str, Route]] = {
            int(listener): {h: self.routes[r] for h, r in table.items() if r in self.routes}
            for listener, table in config.hosts.items()
        }
        # route_http's memo of the listener it was asked about last, and its Host table
        self._listener = -1
        self._table: dict[str, Route] | None = None
        self.flows: dict[int, Route] = {
            item.port: self.routes[item.route]
            for item in config.listeners
            if item.protocol != "http" and item.route is not None
        }
        # GAMMA capture listeners: each stands for one Service port, whatever the Host says
        capture = config.settings.capture
        self.captured: dict[int, Route] = {
            item.port: self.routes[item.route]
            for item in (capture.listeners if capture is not None else ())
            if item.route in self.routes
        }
        self.listeners: tuple[tuple[int, str], ...] = tuple(
            sorted(
                [(item.port, item.protocol) for item in config.listeners]
                + [(port, "http") for port in self.captured]
            )
        )
        mtls = config.settings.mtls
        self.mtls: str = mtls.mode if mtls is not None else "off"
        self.trust_domain = mtls.trust_domain if mtls is not None else ""
        self.pod_nodes: dict[str, str] = dict(mtls.pods) if mtls is not None else {}
        self.proxies: dict[str, tuple[str, int]] = (
            {node: host_port(address) for node, address in mtls.proxies.items()}
            if mtls is not None
            else {}
        )
        self.cluster_routes: dict[str, Route] = {}  # the route a cluster serves (metrics)
        for route in self.routes.values():
            self.cluster_routes.setdefault(route.cluster.key, route)
            for each in route.split.clusters if route.split is not None else ():
                self.cluster_routes.setdefault(each.key, route)

    # -- lookups ---------------------------------------------------------------------------

    def route_http(self, listener: int, host: str) -> Route | None:
        """The route of a request on an HTTP listener: by Host on the shared listeners; on a
        capture listener, the Service port it stands for (the Host is not read: clients send
        short names, or on purpose another Service's, GAMMA matches the destination)."""
        if listener == self._listener:  # nearly always: the listener asked about last
            table = self._table
        else:
            table = self._table = self.hosts.get(listener)
            self._listener = listener
        if table is None:
            return self.captured.get(listener)
        route = table.get(host)
        if route is None:
            route = table.get(_norm_host(host))
        return route

    def find_route(self, host: str, port: int, protocol: str) -> Route | None:
        """The route a client reaches by calling ``host:port`` (for explain and the sim)."""
        host = _norm_host(host)
        for route in self.routes.values():
            if route.port != port or route.protocol != protocol or route.listener is None:
                continue
            if protocol == "http":
                if self.route_http(route.listener, host) is route:
                    return route
            elif host in self._names(route):
                return route
        return None

    def _names(self, route: Route) -> set[str]:
        names: set[str] = set()
        for table in self.hosts.values():
            names.update(h for h, r in table.items() if r.service == route.service)
        namespace, _, name = route.service.partition("/")
        zone = self.config.settings.zone
        domain = self.config.settings.cluster_domain
        names.update({f"{name}.{namespace}.{zone}", f"{name}.{namespace}.svc.{domain}"})
        return names

    def source_identity(self, ip: str) -> str | None:
        return self.identities.get(ip)

    def caller(self, ip: str, node: str) -> Caller:
        """Who a plaintext request from ``ip`` on ``node``'s proxy is judged as. Without mTLS,
        the source-IP map. With mTLS the address proves an identity only on the caller's own
        node (the path from a pod to its node's proxy): a pod of another node that sends
        plaintext bypassed its own proxy (or forged the address). Permissive: still judged
        by the map, and reported; strict: refused (403 ``plaintext-refused``)."""
        identity = self.identities.get(ip)
        if self.mtls == "off" or identity is None:
            return Caller(identity, False)
        where = self.pod_nodes.get(ip)
        if where is None or where == node:
            return Caller(identity, False)
        if self.mtls == "strict":
            return Caller(None, True, Reason.PLAINTEXT_REFUSED)
        return Caller(identity, True)

    def tunnel_peer(self, node: str | None, local: str) -> tuple[str, int] | None:
        """The tunnel address of ``node``'s proxy when a request to a pod there crosses
        nodes over mTLS (None: same node, no node known, or mTLS off)."""
        if self.mtls == "off" or node is None or node == local:
            return None
        return self.proxies.get(node)

    # -- access ----------------------------------------------------------------------------

    def access(
        self, cluster: Cluster, source: str | None, request: Request | None = None
    ) -> Access:
        """Which endpoints of ``cluster`` this request (None: a TCP/UDP flow) may reach; all
        of them outside ACL mode."""
        if not self.acl:
            return cluster.open_access
        if not cluster.groups:
            return Access(
                False, Reason.NO_ENDPOINTS, f"{cluster.service} has no ready endpoints", None, ()
            )
        if source is None:
            return Access(
                False,
                Reason.NO_IDENTITY,
                "the source is not a meshed pod, so it has no identity to grant",
                None,
                (),
            )
        first: EndpointGroup | None = None  # the first group a grant admits the request to
        index = 0  # that grant's, in first.grants
        more: list[Endpoint] | None = None  # the endpoints of every admitting group, if several
        granted_source = False
        for group in cluster.groups:
            grants = group.grants
            for at in range(len(grants)):
                grant = grants[at]
                if grant.admits(source, request):
                    if first is None:
                        first, index = group, at
                    else:
                        if more is None:
                            more = list(first.endpoints)
                        more.extend(group.endpoints)
                    break
                granted_source = granted_source or source in grant.sources
        if first is not None:
            if more is None:
                return first.admitted(index)
            grant = first.grants[index]
            return Access(True, Reason.ALLOWED, grant.granted, grant.description, tuple(more))
        denial = cluster.denial
        if granted_source and request is not None:  # no route match admits the request
            return Access(
                False,
                Reason.NO_MATCHING_ROUTE,
                f"{source}{denial.no_route}{request.method} {request.path}",
                None,
                (),
            )
        return Access(
            False,
            Reason.NOT_GRANTED,
            f"no TrafficTarget grants {source}{denial.not_granted}",
            None,
            (),
        )

    def whole_access(self, cluster: Cluster, endpoint: Endpoint, source: str | None) -> bool:
        """Whether ``source`` may send ``endpoint`` (of ``cluster``) every request, whatever it
        is: outside ACL mode always; in it, when a grant of a group holding the endpoint admits
        the source with no route match, or with one every request meets. Then an mTLS tunnel
        connection to that endpoint can be authorised once, as a whole, without reading its
        requests (a pipe: mesh.proxy.pipe); the answer is kept per config."""
        if not self.acl:
            return endpoint in cluster.endpoints
        if source is None:
            return False
        key = (cluster.key, endpoint.key, source)
        known = self._whole.get(key)
        if known is not None:
            return known
        whole = False
        for group in cluster.groups:
            if endpoint in group.endpoints:
                for grant in group.grants:
                    if grant.admits_all(source):
                        whole = True
                        break
            if whole:
                break
        if len(self._whole) < 65536:
            self._whole[key] = whole
        return whole

    def readmits(
        self,
        *,
        cluster: str,
        endpoint: Endpoint,
        source_ip: str,
        request: Request | None = None,
        identity: str | None = None,
    ) -> bool:
        """Whether this config still admits a flow (or upgraded request) that an earlier config
        admitted: on reload the proxy ends the flows whose grant was revoked.

        The flow is judged by the grants of its endpoint's identity and port in ``cluster``
        and by its source's current identity. When that cluster, or any endpoint of that
        identity and port in it, is gone, there is nothing to judge the grant by and the flow
        is left to end by itself (a removed listener, a pod going away). ``identity``: the
        source's identity when a certificate proved it (a flow out of an mTLS tunnel), in
        place of the address's.
        """
        if not self.acl:
            return True
        compiled = self.clusters.get(cluster)
        if compiled is None:
            return True
        group = next(
            (
                g
                for g in compiled.groups
                if g.identity == endpoint.identity and g.port == endpoint.port
            ),
            None,
        )
        if group is None:
            return True
        source = identity if identity is not None else self.source_identity(source_ip)
        if source is None:
            return False
        return any(g.admits(source, request) for g in group.grants)


class Caller:
    """A plaintext caller as :meth:`Router.caller` judges it: the identity to authorise
    (None: none), whether it is a pod of another node, and the refusal when strict."""

    __slots__ = ("identity", "refused", "remote")

    def __init__(self, identity: str | None, remote: bool, refused: Reason | None = None) -> None:
        self.identity = identity
        self.remote = remote
        self.refused = refused


# ---------------------------------------------------------------------------------------------
# Decisions (stateful)


class Decision:
    """The verdict for one request or flow. ``status`` is set when the proxy answers itself."""

    __slots__ = (
        "allowed",
        "candidates",
        "cluster",
        "detail",
        "endpoint",
        "location",
        "matched",
        "mirrors",
        "policy",
        "reason",
        "request",
        "response_edits",
        "retry_after",
        "route",
        "rule",
        "scheme",
        "status",
    )

    def __init__(
        self,
        reason: Reason,
        detail: str,
        route: Route | None = None,
        cluster: Cluster | None = None,
        rule: str | None = None,
    ) -> None:
        self.allowed = reason is Reason.ALLOWED
        self.status = None if reason is Reason.ALLOWED else STATUS.get(reason)
        self.reason = reason
        self.detail = detail
        self.route = route
        self.cluster = cluster
        self.rule = rule
        self.endpoint: Endpoint | None = None
        self.candidates: tuple[Endpoint, ...] = ()
        self.policy = route.policy if route is not None else ServicePolicy()
        self.retry_after = 0.0
        self.scheme: str = cluster.scheme if cluster is not None else "http"
        # GAMMA routes: the rule that matched, the request as its filters send it on (None:
        # unchanged), response header edits in order, copies to mirror, a redirect's Location
        self.matched: Rule | None = None
        self.request: Request | None = None
        self.response_edits: tuple[Edits, ...] = ()
        self.mirrors: tuple[MirrorShot, ...] = ()
        self.location: str | None = None

    def __repr__(self) -> str:
        return f"Decision({self.reason}, status={self.status}, endpoint={self.endpoint})"


class EngineState:
    """Balancer, breaker and limiter state, keyed by names so it survives config reloads."""

    def __init__(self) -> None:
        self.splits: dict[str, SmoothWeightedRoundRobin] = {}
        self.round_robin: dict[str, RoundRobin] = {}
        self.least_request: dict[str, LeastRequest] = {}
        self.breakers: dict[tuple[str, str], CircuitBreaker] = {}
        self.limiters: dict[str, TokenBucket] = {}
        self.inflight: dict[str, int] = {}
        self.tripped: dict[str, int] = {}  # service -> breakers not closed
        self.active: dict[str, int] = {}  # route -> requests in their lifecycle
        self.retrying: dict[str, int] = {}  # route -> of those, requests that retried


class Engine:
    def __init__(self, router: Router, state: EngineState | None = None) -> None:
        self.router = router
        self.state = state if state is not None else EngineState()

    def decide_http(
        self,
        *,
        listener: int,
        request: Request,
        source: str | None,
        now: float,
        rng: Rng,
    ) -> Decision:
        """The verdict for one request, read in its canonical form (mesh.core.request)."""
        host = request.host
        route = self.router.route_http(listener, host)
        if route is None:
            if listener not in self.router.hosts:  # (a capture listener always has a route)
                return Decision(Reason.UNKNOWN_LISTENER, f"no HTTP listener on port {listener}")
            return Decision(Reason.UNKNOWN_HOST, f"no meshed service answers to Host {host!r}")
        gamma = route.gamma
        if gamma is not None:
            table = gamma.table(source)
            if table is not None:
                return self._decide_rules(route, table, request, source, now, rng)
        cluster = route.cluster
        split = route.split
        if split is not None and split.applies(request.method, request.path, request.headers):
            cluster = split.clusters[self._split_pick(route.key, split)]
        access = self.router.access(cluster, source, request)
        return self._admit(route, cluster, access, now, rng)

    def _decide_rules(
        self,
        route: Route,
        table: RouteTable,
        request: Request,
        source: str | None,
        now: float,
        rng: Rng,
    ) -> Decision:
        """A request to a Service port with GAMMA routes: the first match in precedence order
        picks the rule (none: 404); its filters and a weighted backendRef decide the rest."""
        found = table.find(request)
        if found is None:
            return Decision(
                Reason.NO_MATCHING_RULE,
                f"no rule of the {table.describe()} matches {request.method} {request.path}",
                route,
            )
        rule = found[0]
        filters = rule.filters
        if filters.unsupported is not None:
            return self._refuse(route, rule, Reason.UNSUPPORTED_FILTER, filters.unsupported)
        if filters.redirect is not None:
            return self._redirect(route, rule, filters, request)
        if not any(w > 0 for w in rule.weights):
            why = "no backendRef with a positive weight"
            return self._refuse(route, rule, Reason.NO_BACKEND, why)
        backend = rule.backends[self._weighted_pick(rule.balancer, rule.weights)]
        extra = backend.filters
        if backend.cluster is None:
            why = f"backendRef {backend.describe()}: {backend.invalid}"
            return self._refuse(route, rule, Reason.INVALID_BACKEND, why)
        if extra is not None and extra.unsupported is not None:
            return self._refuse(route, rule, Reason.UNSUPPORTED_FILTER, extra.unsupported)
        if extra is not None and extra.redirect is not None:
            return self._redirect(route, rule, extra, request)
        sent = filters.apply(request, rule.prefix)
        if extra is not None:
            sent = extra.apply(sent, rule.prefix)
        cluster = backend.cluster
        decision = self._admit(route, cluster, self.router.access(cluster, source, sent), now, rng)
        decision.matched = rule
        decision.policy = rule.policy
        if sent is not request:
            decision.request = sent
        if backend.scheme is not None:
            decision.scheme = backend.scheme
        edits = [f.response for f in (filters, extra) if f is not None and f.response is not None]
        if edits:
            decision.response_edits = tuple(edits)
        if decision.allowed and (filters.mirrors or (extra is not None and extra.mirrors)):
            mirrors = filters.mirrors + (extra.mirrors if extra is not None else ())
            decision.mirrors = self._mirror(mirrors, source, sent, rng)
        return decision

    def _refuse(self, route: Route, rule: Rule, reason: Reason, why: str) -> Decision:
        decision = Decision(reason, f"{rule.describe()}: {why}", route)
        decision.matched = rule
        if rule.grpc and reason is not Reason.NO_MATCHING_RULE:
            decision.status = 503  # a GRPCRoute's clients get UNAVAILABLE (gRPC's 503)
        return decision

    def _redirect(self, route: Route, rule: Rule, filters: FilterSet, request: Request) -> Decision:
        redirect = filters.redirect
        assert redirect is not None
        location = redirect_location(request, redirect, port=route.port, prefix=rule.prefix)
        decision = Decision(Reason.REDIRECT, f"{rule.describe()}: redirected to {location}", route)
        decision.status = redirect.status
        decision.location = location
        decision.matched = rule
        if filters.response is not None:
            decision.response_edits = (filters.response,)
        return decision

    def _mirror(
        self, mirrors: tuple[Mirror, ...], source: str | None, request: Request, rng: Rng
    ) -> tuple[MirrorShot, ...]:
        """The copies to send: each mirror's share of requests, to one endpoint its access
        control admits (none: no copy), chosen round robin; never counted as in flight."""
        shots = []
        for mirror in mirrors:
            share = mirror.numerator
            if share < mirror.denominator and (
                share == 0 or rng.random() * mirror.denominator >= share
            ):
                continue
            access = self.router.access(mirror.cluster, source, request)
            if not access.allowed or not access.endpoints:
                continue
            key = "mirror:" + mirror.cluster.key
            robin = self.state.round_robin.get(key)
            if robin is None:
                robin = self.state.round_robin[key] = RoundRobin()
            endpoint = access.endpoints[robin.pick(len(access.endpoints), rng)]
            shots.append(MirrorShot(mirror.cluster, endpoint, mirror.scheme))
        return tuple(shots)

    def decide_tunnel(
        self,
        *,
        cluster: str,
        ip: str,
        port: int,
        node: str,
        source: str | None,
        request: Request | None,
    ) -> Decision:
        """The destination side of an mTLS tunnel: may ``source`` (the identity the peer's
        certificate proves) reach the pod ``ip:port`` of ``cluster`` that the source proxy
        chose? Only a pod of this ``node``, only as the grants admit. The source proxy made
        the routing decision (split, balancing, retries, rate limit): this one delivers to
        that pod once, with no retries of its own."""
        compiled = self.router.clusters.get(cluster)
        if compiled is None:
            return Decision(Reason.UNKNOWN_TARGET, f"no cluster {cluster!r} in this config")
        endpoint = next((e for e in compiled.endpoints if e.ip == ip and e.port == port), None)
        route = self.router.cluster_routes.get(cluster)
        if endpoint is None:
            return Decision(
                Reason.UNKNOWN_TARGET,
                f"{ip}:{port} is not a ready endpoint of {compiled.service}:{compiled.port}",
                route,
                compiled,
            )
        if endpoint.node != node:
            return Decision(
                Reason.NOT_LOCAL_TARGET,
                f"{ip}:{port} is a pod of node {endpoint.node}, not of {node}",
                route,
                compiled,
            )
        access = self.router.access(compiled, source, request)
        if not access.allowed:
            return Decision(access.reason, access.detail, route, compiled)
        if endpoint not in access.endpoints:
            return Decision(
                Reason.NOT_GRANTED,
                f"no TrafficTarget grants {source} access to {endpoint.identity} "
                f"on port {endpoint.port}",
                route,
                compiled,
            )
        decision = Decision(Reason.ALLOWED, access.detail, route, compiled, access.rule)
        decision.policy = ServicePolicy()  # one attempt: the source proxy retries
        decision.endpoint = endpoint
        decision.candidates = (endpoint,)
        return decision

    def decide_pipe(
        self, *, cluster: str, ip: str, port: int, node: str, source: str | None
    ) -> Decision:
        """The destination side of an mTLS pipe (a tunnel connection to one pod, authorised
        once for every request it will carry): allowed when ``decide_tunnel`` would allow
        every request ``source`` could send on it, that is, the pod is a ready endpoint of
        ``cluster`` on this ``node``, the cluster is plain ``http`` (the pipe's bytes go to
        the pod as they are) and the grants admit ``source`` whatever the request
        (:meth:`Router.whole_access`). Otherwise the connection's requests are each decided
        by ``decide_tunnel``, as on a tunnel connection."""
        d = self.decide_tunnel(
            cluster=cluster, ip=ip, port=port, node=node, source=source, request=None
        )
        if not d.allowed:
            return d
        compiled, endpoint = d.cluster, d.endpoint
        assert compiled is not None and endpoint is not None
        if compiled.scheme != "http":
            return Decision(
                Reason.NOT_GRANTED,
                f"{compiled.service}:{compiled.port} is {compiled.scheme}: each request is "
                "delivered by the proxy",
                d.route,
                compiled,
            )
        if not self.router.whole_access(compiled, endpoint, source):
            return Decision(
                Reason.NOT_GRANTED,
                f"the grants of {source} to {endpoint.identity} depend on the request",
                d.route,
                compiled,
            )
        return d

    def decide_flow(self, *, listener: int, source: str | None, now: float, rng: Rng) -> Decision:
        route = self.router.flows.get(listener)
        if route is None:
            return Decision(Reason.UNKNOWN_LISTENER, f"no TCP/UDP listener on port {listener}")
        cluster = route.cluster
        if route.split is not None:
            cluster = route.split.clusters[self._split_pick(route.key, route.split)]
        return self._admit(route, cluster, self.router.access(cluster, source), now, rng)

    def _split_pick(self, key: str, split: Split) -> int:
        return self._weighted_pick(key, split.weights)

    def _weighted_pick(self, key: str, weights: tuple[int, ...]) -> int:
        balancer = self.state.splits.get(key)
        if balancer is None or (balancer.weights is not weights and balancer.weights != weights):
            balancer = self.state.splits[key] = SmoothWeightedRoundRobin(weights)
        return balancer.pick()

    def _admit(
        self, route: Route, cluster: Cluster, access: Access, now: float, rng: Rng
    ) -> Decision:
        if not access.allowed:
            return Decision(access.reason, access.detail, route, cluster)
        limit = route.policy.rate_limit
        if limit is not None:
            wait = self._limiter(route.key, limit).take(now)
            if wait > 0:
                decision = Decision(
                    Reason.RATE_LIMITED,
                    f"{route.service} allows {limit.average:g} requests/s (burst {limit.burst})",
                    route,
                    cluster,
                )
                decision.retry_after = wait
                return decision
        if not access.endpoints:
            return Decision(
                Reason.NO_ENDPOINTS,
                f"{cluster.service}:{cluster.port} has no ready endpoints",
                route,
                cluster,
            )
        endpoint = self._pick(cluster, access.endpoints, (), now, rng)
        if endpoint is None:
            return Decision(
                Reason.CIRCUIT_OPEN,
                f"every endpoint of {cluster.service}:"
                f"{cluster.port} is ejected by its circuit breaker",
                route,
                cluster,
            )
        decision = Decision(Reason.ALLOWED, access.detail, route, cluster, access.rule)
        decision.candidates = access.endpoints
        decision.endpoint = endpoint
        return decision

    def _limiter(self, key: str, spec: RateLimitSpec) -> TokenBucket:
        bucket = self.state.limiters.get(key)
        if bucket is None or bucket.spec != spec:
            bucket = self.state.limiters[key] = TokenBucket(spec)
        return bucket

    def breaker(self, cluster: Cluster, endpoint: Endpoint) -> CircuitBreaker | None:
        spec = cluster.breaker
        if spec is None:
            return None
        key = (cluster.service, endpoint.key)
        breaker = self.state.breakers.get(key)
        if breaker is None or (breaker.spec is not spec and breaker.spec != spec):
            if breaker is not None and breaker.state is not CircuitState.CLOSED:
                self._count_tripped(cluster.service, -1)
            breaker = self.state.breakers[key] = CircuitBreaker(spec)
        return breaker

    def _count_tripped(self, service: str, delta: int) -> None:
        tripped = self.state.tripped
        tripped[service] = tripped.get(service, 0) + delta

    def _pick(
        self,
        cluster: Cluster,
        endpoints: tuple[Endpoint, ...],
        avoid: Sequence[Endpoint],
        now: float,
        rng: Rng,
    ) -> Endpoint | None:
        pool: list[Endpoint] | None = None  # the endpoints left, when some are not available
        if avoid or (cluster.breaker is not None and self.state.tripped.get(cluster.service)):
            pool = [e for e in endpoints if e not in avoid and self._available(cluster, e, now)]
            if not pool and avoid:
                pool = [e for e in endpoints if self._available(cluster, e, now)]
            if not pool:
                return None
        count = len(pool) if pool is not None else len(endpoints)
        if cluster.load_balancer == "least-request":
            balancer = self.state.least_request.get(cluster.key)
            if balancer is None:
                balancer = self.state.least_request[cluster.key] = LeastRequest()
            balancer.inflight = self.state.inflight
            keys = [e.key for e in (pool if pool is not None else endpoints)]
            index = balancer.pick(count, rng, keys)
        else:
            robin = self.state.round_robin.get(cluster.key)
            if robin is None:
                robin = self.state.round_robin[cluster.key] = RoundRobin()
            index = robin.pick(count, rng)
        endpoint = pool[index] if pool is not None else endpoints[index]
        breaker = self.breaker(cluster, endpoint)
        if breaker is not None:
            breaker.allow(now)
        inflight = self.state.inflight
        inflight[endpoint.key] = inflight.get(endpoint.key, 0) + 1
        return endpoint

    def _available(self, cluster: Cluster, endpoint: Endpoint, now: float) -> bool:
        breaker = self.breaker(cluster, endpoint)
        return breaker is None or breaker.available(now)

    def finish(self, decision: Decision, endpoint: Endpoint, outcome: Outcome, now: float) -> None:
        """Report one attempt's outcome: in-flight count and circuit breaker."""
        inflight = self.state.inflight
        key = endpoint.key
        left = inflight.get(key, 1) - 1
        inflight[key] = left if left > 0 else 0
        cluster = decision.cluster
        if cluster is not None and cluster.breaker is not None:
            breaker = self.breaker(cluster, endpoint)
            if breaker is not None:
                was_closed = breaker.state is CircuitState.CLOSED
                breaker.record(now, outcome)
                if was_closed != (breaker.state is CircuitState.CLOSED):
                    self._count_tripped(cluster.service, 1 if was_closed else -1)

    def may_retry(
        self, decision: Decision, *, tries: int, method: str, replayable: bool, outcome: Outcome
    ) -> bool:
        """Whether the policy retries after ``tries`` attempts ending in ``outcome``."""
        why = retry_verdict(
            decision.policy.retry,
            tries=tries,
            method=method,
            replayable=replayable,
            outcome=outcome,
        )
        return why is not None and decision.cluster is not None

    def next_endpoint(
        self, decision: Decision, *, tried: Sequence[Endpoint], now: float, rng: Rng
    ) -> Endpoint | None:
        """The endpoint for a retry, preferring one not tried yet; None when every candidate
        is ejected by its circuit breaker."""
        assert decision.cluster is not None
        return self._pick(decision.cluster, decision.candidates, tried, now, rng)

    # -- request accounting (for retry budgets), called by mesh.core.lifecycle ------------------

    def request_started(self, decision: Decision) -> None:
        key = decision.route.key if decision.route is not None else ""
        self.state.active[key] = self.state.active.get(key, 0) + 1

    def request_ended(self, decision: Decision, *, retried: bool) -> None:
        key = decision.route.key if decision.route is not None else ""
        state = self.state
        state.active[key] = max(0, state.active.get(key, 1) - 1)
        if retried:
            state.retrying[key] = max(0, state.retrying.get(key, 1) - 1)

    def retry_budget_allows(self, decision: Decision) -> bool:
        key = decision.route.key if decision.route is not None else ""
        return retry_budget_allows(
            decision.policy.retry,
            active=self.state.active.get(key, 0),
            retrying=self.state.retrying.get(key, 0),
        )

    def retry_started(self, decision: Decision) -> None:
        key = decision.route.key if decision.route is not None else ""
        self.state.retrying[key] = self.state.retrying.get(key, 0) + 1
