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

Order of checks for a request: listener and Host (404) -> split (weighted backend choice for the
requests its matches select) -> access control in ACL mode (403) -> rate limit (429) -> ready
endpoints admitted by the grants (503) -> circuit breakers (503) -> load balancer.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum

from mesh.core import patterns, schema
from mesh.core.annotations import ServicePolicy, parse_circuit_breaker_expression
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
from mesh.core.schema import MeshConfig


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


STATUS = {
    Reason.BAD_REQUEST: 400,
    Reason.UNKNOWN_LISTENER: 404,
    Reason.UNKNOWN_HOST: 404,
    Reason.NO_IDENTITY: 403,
    Reason.NOT_GRANTED: 403,
    Reason.NO_MATCHING_ROUTE: 403,
    Reason.NO_ENDPOINTS: 503,
    Reason.CIRCUIT_OPEN: 503,
    Reason.RATE_LIMITED: 429,
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


class Match:
    """A compiled HTTPRouteGroup match: path regex anchored at the start only, on the path
    without its query; methods; header regexes over the whole value (AND)."""

    __slots__ = ("headers", "methods", "name", "path")

    def __init__(self, doc: schema.Match) -> None:
        self.name = doc.name
        regex = doc.path_regex
        self.path: patterns.Matcher | None = patterns.prefix(regex) if regex else None
        methods = doc.methods
        self.methods: frozenset[str] | None = frozenset(methods) if methods is not None else None
        self.headers = tuple((k.lower(), patterns.whole(v)) for k, v in doc.headers)

    def matches(self, method: str, path: str, headers: Mapping[str, str]) -> bool:
        if self.methods is not None and method not in self.methods:
            return False
        if self.path is not None and not self.path(path):
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
        return all(match.matches(method, path, headers) for path in request.readings)

    def describe(self) -> str:
        what = f"{self.kind} {self.route}"
        if self.match is not None:
            what += f" match {self.match.name!r}"
        elif self.ports:
            what += f" ports {sorted(self.ports)}"
        return f"TrafficTarget {self.target} ({what})"


class EndpointGroup:
    """Endpoints sharing an identity and a target port, with the grants that admit traffic."""

    __slots__ = ("endpoints", "grants", "identity", "port")

    def __init__(self, identity: str | None, port: int, grants: tuple[AccessGrant, ...]) -> None:
        self.identity = identity
        self.port = port
        self.grants = grants
        self.endpoints: tuple[Endpoint, ...] = ()


class Cluster:
    __slots__ = (
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
        if acl:
            self.groups = _groups(self.endpoints, [AccessGrant(g) for g in doc.access or ()])


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

    def applies(self, method: str, path: str, headers: Mapping[str, str]) -> bool:
        if not self.matches:
            return True
        return any(m.matches(method, path, headers) for m in self.matches)


class Route:
    __slots__ = (
        "cluster",
        "doc",
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


@dataclass(slots=True)
class Access:
    """The access verdict for one backend: the endpoints a request may reach there."""

    allowed: bool
    reason: Reason
    detail: str
    rule: str | None
    endpoints: tuple[Endpoint, ...]


def _norm_host(host: str) -> str:
    host = host.lower()
    if host.endswith("."):
        host = host[:-1]
    elif ".:" in host:
        host = host.replace(".:", ":")
    return host


class Router:
    """A compiled MeshConfig. Stateless: the same question always gets the same answer."""

    def __init__(self, config: MeshConfig) -> None:
        self.config = config
        self.version = config.version
        self.acl = config.settings.acl
        self.identities: dict[str, str] = dict(config.identities)
        self.clusters = {k: Cluster(k, v, self.acl) for k, v in config.clusters.items()}
        for cluster in self.clusters.values():
            cluster.open_access = Access(
                True,
                Reason.ALLOWED,
                "access control is off (default mode)",
                None,
                cluster.endpoints,
            )
        self.routes = {k: Route(k, v, self.clusters) for k, v in config.routes.items()}
        self.hosts: dict[int, dict[str, Route]] = {
            int(listener): {h: self.routes[r] for h, r in table.items() if r in self.routes}
            for listener, table in config.hosts.items()
        }
        self.flows: dict[int, Route] = {
            item.port: self.routes[item.route]
            for item in config.listeners
            if item.protocol != "http" and item.route is not None
        }
        self.listeners: tuple[tuple[int, str], ...] = tuple(
            (item.port, item.protocol) for item in config.listeners
        )

    # -- lookups ---------------------------------------------------------------------------

    def route_http(self, listener: int, host: str) -> Route | None:
        table = self.hosts.get(listener)
        if table is None:
            return None
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
        admitted: list[tuple[EndpointGroup, AccessGrant]] = []
        granted_source = False
        for group in cluster.groups:
            for grant in group.grants:
                if grant.admits(source, request):
                    admitted.append((group, grant))
                    break
                granted_source = granted_source or source in grant.sources
        if admitted:
            first = admitted[0][1]
            if len(admitted) == 1:
                endpoints = admitted[0][0].endpoints
            else:
                endpoints = tuple(e for group, _ in admitted for e in group.endpoints)
            return Access(True, Reason.ALLOWED, first.granted, first.description, endpoints)
        destinations = sorted({str(g.identity) for g in cluster.groups})
        if granted_source and request is not None:  # no route match admits the request
            return Access(
                False,
                Reason.NO_MATCHING_ROUTE,
                f"{source} has TrafficTargets to {', '.join(destinations)} but none of their "
                f"route matches admits {request.method} {request.path}",
                None,
                (),
            )
        return Access(
            False,
            Reason.NOT_GRANTED,
            f"no TrafficTarget grants {source} access to {', '.join(destinations)} "
            f"(the pods behind {cluster.service}:{cluster.port})",
            None,
            (),
        )

    def readmits(
        self,
        *,
        cluster: str,
        endpoint: Endpoint,
        source_ip: str,
        request: Request | None = None,
    ) -> bool:
        """Whether this config still admits a flow (or upgraded request) that an earlier config
        admitted: on reload the proxy ends the flows whose grant was revoked.

        The flow is judged by the grants of its endpoint's identity and port in ``cluster``
        and by its source's current identity. When that cluster, or any endpoint of that
        identity and port in it, is gone, there is nothing to judge the grant by and the flow
        is left to end by itself (a removed listener, a pod going away).
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
        source = self.source_identity(source_ip)
        if source is None:
            return False
        return any(g.admits(source, request) for g in group.grants)


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
        "policy",
        "reason",
        "retry_after",
        "route",
        "rule",
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
        self.status = STATUS.get(reason)
        self.reason = reason
        self.detail = detail
        self.route = route
        self.cluster = cluster
        self.rule = rule
        self.endpoint: Endpoint | None = None
        self.candidates: tuple[Endpoint, ...] = ()
        self.policy = route.policy if route is not None else ServicePolicy()
        self.retry_after = 0.0

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
            if listener not in self.router.hosts:
                return Decision(Reason.UNKNOWN_LISTENER, f"no HTTP listener on port {listener}")
            return Decision(Reason.UNKNOWN_HOST, f"no meshed service answers to Host {host!r}")
        cluster = route.cluster
        split = route.split
        if split is not None and split.applies(request.method, request.path, request.headers):
            cluster = split.clusters[self._split_pick(route.key, split)]
        access = self.router.access(cluster, source, request)
        return self._admit(route, cluster, access, now, rng)

    def decide_flow(self, *, listener: int, source: str | None, now: float, rng: Rng) -> Decision:
        route = self.router.flows.get(listener)
        if route is None:
            return Decision(Reason.UNKNOWN_LISTENER, f"no TCP/UDP listener on port {listener}")
        cluster = route.cluster
        if route.split is not None:
            cluster = route.split.clusters[self._split_pick(route.key, route.split)]
        return self._admit(route, cluster, self.router.access(cluster, source), now, rng)

    def _split_pick(self, key: str, split: Split) -> int:
        balancer = self.state.splits.get(key)
        if balancer is None or balancer.weights != split.weights:
            balancer = self.state.splits[key] = SmoothWeightedRoundRobin(split.weights)
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
        endpoints: Sequence[Endpoint],
        avoid: Sequence[Endpoint],
        now: float,
        rng: Rng,
    ) -> Endpoint | None:
        candidates = endpoints
        if avoid or (cluster.breaker is not None and self.state.tripped.get(cluster.service)):
            candidates = [
                e for e in endpoints if e not in avoid and self._available(cluster, e, now)
            ]
            if not candidates and avoid:
                candidates = [e for e in endpoints if self._available(cluster, e, now)]
            if not candidates:
                return None
        if cluster.load_balancer == "least-request":
            balancer = self.state.least_request.get(cluster.key)
            if balancer is None:
                balancer = self.state.least_request[cluster.key] = LeastRequest()
            balancer.inflight = self.state.inflight
            endpoint = candidates[balancer.pick(len(candidates), rng, [e.key for e in candidates])]
        else:
            robin = self.state.round_robin.get(cluster.key)
            if robin is None:
                robin = self.state.round_robin[cluster.key] = RoundRobin()
            endpoint = candidates[robin.pick(len(candidates), rng)]
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
