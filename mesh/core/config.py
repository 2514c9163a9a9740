"""Topology -> MeshConfig: the document every proxy receives.

The document's schema is :mod:`mesh.core.schema` (typed, validating, JSON with sorted keys), so
the controller can publish it, a proxy can load it and :class:`mesh.core.routing.Router` can
compile it, without sharing Python objects:

- ``listeners``: HTTP listeners are shared (the i-th port of every service uses the i-th HTTP
  listener, routed by Host); TCP and UDP get one listener per (service, port) from their pools.
- ``hosts``: per HTTP listener, every Host a client may send (``svc.ns.<zone>``,
  ``svc.ns.svc.<cluster domain>``, the ClusterIP; each with or without the port) -> route key.
- ``routes``: per (service, port): protocol, scheme, policies, the cluster and the split, and
  the GAMMA routes (HTTPRoute, GRPCRoute) attached to that Service port: the producer routes'
  table and one table per namespace of consumer routes, each with its matches in precedence
  order. Keyed by the parent Service and port, never by a Host: a listener that receives a
  Service's traffic by its ClusterIP can use the same tables.
- ``clusters``: per (service, port): ready endpoints with their identities, and in ACL mode the
  grants that admit traffic to them.

- ``settings.capture`` (the ``capture`` setting, GAMMA): per Service port with GAMMA routes and
  a ClusterIP, a capture listener of its own (mesh.core.capture), and each node's proxy pod IP.

TCP and UDP listener assignments are stable: given the previous assignment, a service that did
not change keeps its port (capture listeners too, see mesh.core.capture). The same topology
gives byte-identical JSON.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import final

import msgspec

from mesh.core import schema
from mesh.core.annotations import ServicePolicy
from mesh.core.capture import assign_capture_ports
from mesh.core.errors import ObjectError, ObjectRef
from mesh.core.gamma import match_rank
from mesh.core.model import (
    HeaderEdits,
    HTTPMatch,
    MtlsMode,
    PathModifier,
    PortRange,
    RouteFilters,
    RouteMatch,
    Settings,
    TrafficType,
    ValueMatch,
)
from mesh.core.schema import API_VERSION, MeshConfig

__all__ = [
    "API_VERSION",
    "ConfigCache",
    "ConfigParts",
    "MeshConfig",
    "assign_ports",
    "build_config",
    "build_config_json",
    "build_config_parts",
    "config_delta",
    "config_version",
]
from mesh.core.topology import (
    Grant,
    TopoFilters,
    Topology,
    TopoPort,
    TopoRoute,
    TopoRule,
    TopoService,
    TopoSplit,
)


def route_key(service: TopoService, port: TopoPort) -> str:
    return f"{service.key}:{port.port}"


@final
class _Parts:
    """What one Service gives the config, and what it was made from. (A plain native class:
    a compiled frozen dataclass is made by a generated Python ``__init__``.)"""

    __slots__ = (
        "cluster_json",
        "clusters",
        "errors",
        "flows",
        "hosts",
        "route_json",
        "routes",
        "scopes",
        "service",
        "split",
    )

    def __init__(
        self,
        service: TopoService,
        split: TopoSplit | None,
        scopes: tuple[Mapping[str, list[TopoRoute]] | None, ...],  # per port: its GAMMA routes
        clusters: tuple[tuple[str, schema.Cluster], ...],
        routes: tuple[tuple[str, schema.Route], ...],
        hosts: tuple[tuple[str, str, tuple[str, ...]], ...],  # (HTTP listener, route key, Hosts)
        flows: tuple[tuple[str, str], ...],  # (tcp|udp, route key): given a listener later
        errors: tuple[ObjectError, ...],
        # the JSON of its clusters and of its HTTP routes (a TCP or UDP route's listener is
        # assigned later), encoded when the part is made: a rebuild encodes what changed
        cluster_json: tuple[tuple[str, msgspec.Raw], ...],
        route_json: tuple[tuple[str, msgspec.Raw], ...],
    ) -> None:
        self.service = service
        self.split = split
        self.scopes = scopes
        self.clusters = clusters
        self.routes = routes
        self.hosts = hosts
        self.flows = flows
        self.errors = errors
        self.cluster_json = cluster_json
        self.route_json = route_json


class ConfigCache:
    """What the last :func:`build_config` made of each Service, so that the next build
    reuses it when the Service's topology, its split and its GAMMA routes are equal (and the
    settings, and in ACL mode the grants): a change at 10,000 Services builds the documents
    of what changed. The result is the same as a build without the cache."""

    def __init__(self) -> None:
        self.settings: Settings | None = None
        self.grants: list[Grant] | None = None
        self.services: dict[str, _Parts] = {}
        # the last build's Host tables and their JSON, kept while no Service's Hosts change
        self.hosts: dict[str, dict[str, str]] | None = None
        self.hosts_json: msgspec.Raw | None = None


def build_config(
    topology: Topology,
    settings: Settings,
    previous: Mapping[str, int] | None = None,
    cache: ConfigCache | None = None,
) -> MeshConfig:
    return build_config_json(topology, settings, previous, cache)[0]


def build_config_json(
    topology: Topology,
    settings: Settings,
    previous: Mapping[str, int] | None = None,
    cache: ConfigCache | None = None,
) -> tuple[MeshConfig, bytes]:
    """The config and its JSON (:func:`mesh.core.schema.encode`), encoded once: the version
    is a digest of the JSON with an empty version, which is then written in."""
    config, body, _ = build_config_parts(topology, settings, previous, cache)
    return config, body


@dataclass(frozen=True, slots=True)
class ConfigParts:
    """A built config and the JSON of each of its routes and clusters, as they are in its
    document: what :func:`config_delta` compares (the JSON of a Service that did not change
    is the same bytes object from one build to the next)."""

    config: MeshConfig
    routes: Mapping[str, msgspec.Raw]
    clusters: Mapping[str, msgspec.Raw]


def build_config_parts(
    topology: Topology,
    settings: Settings,
    previous: Mapping[str, int] | None = None,
    cache: ConfigCache | None = None,
) -> tuple[MeshConfig, bytes, ConfigParts]:
    """:func:`build_config_json`, and the config's parts for deltas."""
    errors = list(topology.errors)
    previous = previous or {}
    routes: dict[str, schema.Route] = {}
    clusters: dict[str, schema.Cluster] = {}
    hosts: dict[str, dict[str, str]] = {}
    flows: dict[str, list[str]] = {"tcp": [], "udp": []}
    grants: dict[str, list[Grant]] = {}
    for grant in topology.grants:
        grants.setdefault(grant.destination, []).append(grant)
    reuse: dict[str, _Parts] = {}
    if (
        cache is not None
        and cache.settings == settings
        and (not settings.acl or cache.grants == topology.grants)
    ):
        reuse = cache.services
    made: dict[str, _Parts] = {}
    cluster_json: dict[str, msgspec.Raw] = {}  # cluster key -> its JSON
    route_json: dict[str, msgspec.Raw] = {}  # HTTP route key -> its JSON
    # the last build's Host tables serve again when every Service is the last build's, with
    # the same Hosts (most changes: an annotation, endpoints)
    old_hosts = cache.hosts if cache is not None and reuse else None
    same_hosts = old_hosts is not None and len(reuse) == len(topology.services)
    for key in sorted(topology.services):
        service = topology.services[key]
        split = topology.splits.get(key)
        scopes = tuple(topology.routes.get((key, p.port)) for p in service.ports)
        old = reuse.get(key)
        parts = old
        if (
            parts is None
            or not (parts.service is service or parts.service == service)
            or parts.split != split
            or parts.scopes != scopes
        ):
            parts = _parts(service, split, scopes, settings, grants)
            if same_hosts and (old is None or old.hosts != parts.hosts):
                same_hosts = False
        made[key] = parts
        clusters.update(parts.clusters)
        routes.update(parts.routes)
        for proto, rkey in parts.flows:
            flows[proto].append(rkey)
        errors.extend(parts.errors)
        cluster_json.update(parts.cluster_json)
        route_json.update(parts.route_json)
    hosts_json: msgspec.Raw | None = None
    if same_hosts and old_hosts is not None and cache is not None:
        hosts = old_hosts
        hosts_json = cache.hosts_json
    else:
        for each in made.values():  # (in the Services' order, as they were made)
            for listener, rkey, names in each.hosts:
                table = hosts.setdefault(listener, {})
                for host in names:
                    table[host] = rkey
    if cache is not None:
        cache.settings = settings
        cache.grants = list(topology.grants)
        cache.services = made
        if hosts_json is None:
            hosts_json = msgspec.Raw(schema.encode_value(hosts))
        cache.hosts = hosts
        cache.hosts_json = hosts_json
    listeners = [schema.Listener(port=int(p), protocol="http") for p in hosts]
    for proto, pool in (("tcp", settings.tcp_ports), ("udp", settings.udp_ports)):
        assigned, overflow = assign_ports(flows[proto], pool, previous, proto)
        for rkey, number in sorted(assigned.items(), key=lambda item: item[1]):
            routes[rkey] = msgspec.structs.replace(routes[rkey], listener=number)
            listeners.append(schema.Listener(port=number, protocol=proto, route=rkey))  # type: ignore[arg-type]
        for rkey in overflow:
            del routes[rkey]
            errors.append(_pool_full(rkey, pool, f"{proto.upper()} listener", f"{proto}Ports"))
    listeners.sort(key=lambda item: item.port)
    capture = _capture(topology, settings, routes, previous, errors) if settings.capture else None
    config = MeshConfig(
        settings=schema.ConfigSettings(
            zone=settings.zone,
            cluster_domain=settings.cluster_domain,
            mesh_namespace=settings.mesh_namespace,
            acl=settings.acl,
            mtls=_mtls(topology, settings),
            capture=capture,
        ),
        listeners=listeners,
        hosts=hosts,
        routes=routes,
        clusters=clusters,
        identities=dict(sorted(topology.identities.items()))
        if _identified(topology, settings)
        else {},
        errors=[_problem(e) for e in sorted(set(errors))],
        version="",
    )
    route_raws = {k: _fragment(route_json, k, r) for k, r in routes.items()}
    cluster_raws = {k: _fragment(cluster_json, k, c) for k, c in clusters.items()}
    unversioned = schema.encode_parts(config, route_raws, cluster_raws, hosts_json)
    version = hashlib.sha256(unversioned).hexdigest()[:16]
    if not unversioned.endswith(_NO_VERSION):  # "version" is the last key, sorted
        raise AssertionError("the config's JSON does not end with its version")
    # one copy of the 12.6 MB at 10,000 Services (a slice and a + made two)
    head = memoryview(unversioned)[: -len(_NO_VERSION)]
    body = b"".join((head, b'"version":"', version.encode(), b'"}'))
    head.release()
    config = msgspec.structs.replace(config, version=version)
    return config, body, ConfigParts(config, route_raws, cluster_raws)


_NO_VERSION = b'"version":""}'


def _fragment(made: Mapping[str, msgspec.Raw], key: str, value: object) -> msgspec.Raw:
    found = made.get(key)
    return found if found is not None else msgspec.Raw(schema.encode_value(value))


def config_delta(old: ConfigParts, new: ConfigParts) -> schema.ConfigDelta:
    """What makes ``old``'s config into ``new``'s (mesh.core.schema.ConfigDelta): the routes
    and clusters whose JSON differs (with that JSON), the Hosts and identities set or gone,
    and the settings, listeners and errors when they changed. Applied to ``old`` by
    :meth:`mesh.core.schema.ConfigReader.read_delta`, it gives ``new``'s config, version
    included."""
    a, b = old.config, new.config
    hosts: dict[str, schema.TextDelta] = {}
    for port, table in b.hosts.items():
        before = a.hosts.get(port)
        if before is None:
            hosts[port] = schema.TextDelta(put=dict(table))
        elif before is not table and before != table:
            hosts[port] = _text_delta(before, table)
    return schema.ConfigDelta(
        api_version="simmesh.io/v1alpha1",
        kind="MeshConfigDelta",
        base=a.version,
        version=b.version,
        settings=None if a.settings == b.settings else b.settings,
        listeners=None if a.listeners == b.listeners else b.listeners,
        errors=None if a.errors == b.errors else b.errors,
        hosts=hosts,
        hosts_removed=[port for port in a.hosts if port not in b.hosts],
        routes=_raw_delta(old.routes, new.routes),
        clusters=_raw_delta(old.clusters, new.clusters),
        identities=_text_delta(a.identities, b.identities),
    )


def _raw_delta(old: Mapping[str, msgspec.Raw], new: Mapping[str, msgspec.Raw]) -> schema.RawDelta:
    put: dict[str, msgspec.Raw] = {}
    for key, raw in new.items():
        before = old.get(key)
        if before is None or (before is not raw and before != raw):
            put[key] = raw
    return schema.RawDelta(put=put, remove=[key for key in old if key not in new])


def _text_delta(old: Mapping[str, str], new: Mapping[str, str]) -> schema.TextDelta:
    put: dict[str, str] = {}
    for key, value in new.items():
        if old.get(key) != value:
            put[key] = value
    return schema.TextDelta(put=put, remove=[key for key in old if key not in new])


def _parts(
    service: TopoService,
    split: TopoSplit | None,
    scopes: tuple[Mapping[str, list[TopoRoute]] | None, ...],
    settings: Settings,
    grants: Mapping[str, list[Grant]],
) -> _Parts:
    clusters: list[tuple[str, schema.Cluster]] = []
    routes: list[tuple[str, schema.Route]] = []
    hosts: list[tuple[str, str, tuple[str, ...]]] = []
    flows: list[tuple[str, str]] = []
    errors: list[ObjectError] = []
    cluster_json: list[tuple[str, msgspec.Raw]] = []
    route_json: list[tuple[str, msgspec.Raw]] = []
    kind = service.options.traffic_type
    for index, port in enumerate(service.ports):
        rkey = route_key(service, port)
        cluster = _cluster(service, port, grants if settings.acl else None)
        clusters.append((rkey, cluster))
        cluster_json.append((rkey, msgspec.Raw(schema.encode_value(cluster))))
        listener: int | None = None
        if kind is TrafficType.HTTP:
            if index >= settings.http_ports.size:
                errors.append(_too_many_ports(service, index, settings.http_ports))
                continue
            listener = settings.http_ports.start + index
            hosts.append((str(listener), rkey, tuple(_hosts(service, port, settings))))
        else:
            flows.append((kind.value, rkey))
        route = _route(service, port, split, scopes[index] or {}, listener)
        routes.append((rkey, route))
        if listener is not None:
            route_json.append((rkey, msgspec.Raw(schema.encode_value(route))))
    return _Parts(
        service,
        split,
        scopes,
        tuple(clusters),
        tuple(routes),
        tuple(hosts),
        tuple(flows),
        tuple(errors),
        tuple(cluster_json),
        tuple(route_json),
    )


def _mtls(topology: Topology, settings: Settings) -> schema.Mtls | None:
    if settings.mtls is MtlsMode.OFF:
        return None
    return schema.Mtls(
        mode=settings.mtls.value,  # type: ignore[arg-type]  # permissive or strict
        trust_domain=settings.trust_domain,
        nodes={node: list(ids) for node, ids in topology.node_identities.items()},
        pods=dict(topology.pod_nodes),
        proxies=dict(topology.proxies),
    )


def _capture(
    topology: Topology,
    settings: Settings,
    routes: Mapping[str, schema.Route],
    previous: Mapping[str, int],
    errors: list[ObjectError],
) -> schema.Capture:
    """The Service ports with GAMMA routes whose Service has a ClusterIP (mesh.core.capture):
    each gets a capture listener, kept from the previous config when it can be."""
    wanted: dict[str, str] = {}  # route key -> ClusterIP
    for key, route in routes.items():
        ip = topology.services[route.service].cluster_ip
        if route.gamma is not None and route.protocol == "http" and ip:
            wanted[key] = ip
    assigned, overflow = assign_capture_ports(list(wanted), settings.capture_ports, previous)
    for key in overflow:
        why = "its ClusterIP traffic is not captured, so its GAMMA routes do not apply to it"
        errors.append(
            _pool_full(key, settings.capture_ports, "capture listener", "capturePorts", why)
        )
    return schema.Capture(
        listeners=[
            schema.CaptureListener(
                port=number, route=key, ip=wanted[key], service_port=routes[key].port
            )
            for key, number in sorted(assigned.items(), key=lambda item: item[1])
        ],
        proxies=dict(topology.capture_proxies),
    )


def _pool_full(key: str, pool: PortRange, what: str, setting: str, why: str = "") -> ObjectError:
    """The error on the Service of ``key`` (ns/name:port) when ``pool`` has no port left."""
    namespace, _, rest = key.partition("/")
    name, _, number = rest.rpartition(":")
    last = pool.start + pool.size - 1
    because = f": {why}" if why else ""
    return ObjectError(
        ObjectRef("Service", namespace, name),
        "spec.ports",
        f"no free {what} left in {pool.start}..{last} for port {number}{because}; "
        f"raise the {setting} size",
    )


def _identified(topology: Topology, settings: Settings) -> bool:
    """Whether proxies need the callers' identities: for access control, for consumer
    routes, which apply to callers of their namespace only, and with mTLS (the certificate a
    proxy presents for a caller is its identity's)."""
    return (
        settings.acl
        or settings.mtls is not MtlsMode.OFF
        or any(scope for scopes in topology.routes.values() for scope in scopes)
    )


def config_version(config: MeshConfig) -> str:
    """The version of a config: a digest of its JSON without the version itself."""
    if config.version:
        config = msgspec.structs.replace(config, version="")
    return hashlib.sha256(schema.encode(config)).hexdigest()[:16]


def _problem(error: ObjectError) -> schema.Problem:
    ref = error.ref
    return schema.Problem(
        kind=ref.kind,
        namespace=ref.namespace,
        name=ref.name,
        field=error.field,
        message=error.message,
    )


def assign_ports(
    keys: list[str], pool: PortRange, previous: Mapping[str, int], kind: str
) -> tuple[dict[str, int], list[str]]:
    """Stable assignment: previous ports are kept; new keys take the lowest free ports."""
    ports = pool.ports()
    assigned: dict[str, int] = {}
    used: set[int] = set()
    for key in keys:
        number = previous.get(f"{kind}:{key}")
        if number is not None and number in ports and number not in used:
            assigned[key] = number
            used.add(number)
    free = (p for p in ports if p not in used)
    overflow = []
    for key in keys:
        if key in assigned:
            continue
        number = next(free, None)
        if number is None:
            overflow.append(key)
        else:
            assigned[key] = number
    return assigned, overflow


def _too_many_ports(service: TopoService, index: int, pool: PortRange) -> ObjectError:
    return ObjectError(
        ObjectRef("Service", service.namespace, service.name),
        f"spec.ports[{index}]",
        f"only {pool.size} HTTP ports per service are meshed (httpPorts.size); this port is not",
    )


def _hosts(service: TopoService, port: TopoPort, settings: Settings) -> list[str]:
    names = [
        f"{service.name}.{service.namespace}.{settings.zone}",
        f"{service.name}.{service.namespace}.svc.{settings.cluster_domain}",
    ]
    hosts = [h for name in names for h in (name, f"{name}:{port.port}")]
    ip = service.cluster_ip
    if ip and ":" in ip:  # IPv6: Host headers bracket the address
        hosts += [ip, f"[{ip}]", f"[{ip}]:{port.port}"]
    elif ip:
        hosts += [ip, f"{ip}:{port.port}"]
    return hosts


def _scheme(port: TopoPort) -> str:
    return port.scheme or "http"


def _route(
    service: TopoService,
    port: TopoPort,
    split: TopoSplit | None,
    scopes: Mapping[str, list[TopoRoute]],
    listener: int | None,
) -> schema.Route:
    doc = None
    if split is not None and not scopes.get(""):  # producer routes decide: no split
        missing = set(split.missing_ports)
        backends = [
            schema.SplitBackend(service=key, weight=weight, cluster=f"{key}:{port.port}")
            for key, weight in split.backends
            if (key, port.port) not in missing
        ]
        if any(b.weight > 0 for b in backends):
            doc = schema.Split(
                name=f"{split.namespace}/{split.name}",
                backends=backends,
                matches=[match_doc(m) for m in split.matches],
            )
    return schema.Route(
        service=service.key,
        port=port.port,
        protocol=service.options.traffic_type.value,
        scheme=_scheme(port),  # type: ignore[arg-type]
        listener=listener,
        cluster=route_key(service, port),
        policy=policy_doc(service.options.policy),
        split=doc,
        gamma=_gamma(scopes) if scopes else None,
    )


# -- GAMMA ---------------------------------------------------------------------------------------


def _gamma(scopes: Mapping[str, list[TopoRoute]]) -> schema.Gamma:
    producer = scopes.get("")
    return schema.Gamma(
        producer=_table(producer) if producer else None,
        consumers={scope: _table(routes) for scope, routes in sorted(scopes.items()) if scope},
    )


def _table(routes: list[TopoRoute]) -> schema.RouteTable:
    """Every match of the routes, in precedence order (mesh.core.gamma.match_rank, then the
    oldest route, the route first by namespace/name, the rule and match order): the same
    routes give the same table whatever order they were read in."""
    ordered = sorted(routes, key=lambda r: (r.created or "~", r.key))
    rules: list[schema.Rule] = []
    entries: list[tuple[tuple[int, ...], schema.RuleMatch]] = []
    for order, route in enumerate(ordered):
        for rule in route.rules:
            index = len(rules)
            rules.append(_rule_doc(route, rule))
            for position, match in enumerate(rule.rule.matches):
                rank = (*match_rank(match), order, rule.index, position)
                entries.append((rank, _match_doc(index, match)))
    entries.sort(key=lambda entry: entry[0])
    return schema.RouteTable(
        kind=ordered[0].kind,  # type: ignore[arg-type]
        routes=[r.key for r in ordered],
        rules=rules,
        matches=[doc for _, doc in entries],
    )


def _match_doc(rule: int, match: RouteMatch) -> schema.RuleMatch:
    return schema.RuleMatch(
        rule=rule,
        path_type=match.path_type,  # type: ignore[arg-type]
        path=match.path,
        method=match.method,
        headers=[_value_doc(v) for v in match.headers],
        query=[_value_doc(v) for v in match.query],
    )


def _value_doc(match: ValueMatch) -> schema.ValueMatch:
    return schema.ValueMatch(name=match.name, value=match.value, regex=match.regex)


def _rule_doc(route: TopoRoute, rule: TopoRule) -> schema.Rule:
    matches = rule.rule.matches
    one_prefix = len(matches) == 1 and matches[0].path_type == "PathPrefix"
    return schema.Rule(
        route=route.key,
        index=rule.index,
        name=rule.rule.name,
        prefix=matches[0].path if one_prefix and route.kind == "HTTPRoute" else None,
        filters=_filters_doc(rule.filters),
        backends=[
            schema.RuleBackend(
                service=b.service,
                port=b.port,
                weight=b.weight,
                cluster=b.cluster,
                scheme=b.scheme,  # type: ignore[arg-type]
                invalid=b.invalid,
                filters=_filters_doc(b.filters),
            )
            for b in rule.backends
        ],
        request_timeout=rule.rule.request_timeout,
        backend_timeout=rule.rule.backend_timeout,
    )


def _filters_doc(resolved: TopoFilters) -> schema.Filters | None:
    f = resolved.filters
    if f == _NO_FILTERS and not resolved.mirrors:
        return None
    return schema.Filters(
        request_headers=_edit_doc(f.request_headers),
        response_headers=_edit_doc(f.response_headers),
        redirect=None
        if f.redirect is None
        else schema.Redirect(
            scheme=f.redirect.scheme,  # type: ignore[arg-type]
            hostname=f.redirect.hostname,
            path=_path_doc(f.redirect.path),
            port=f.redirect.port,
            status=f.redirect.status,  # type: ignore[arg-type]
        ),
        rewrite=None
        if f.rewrite is None
        else schema.Rewrite(hostname=f.rewrite.hostname, path=_path_doc(f.rewrite.path)),
        mirrors=[
            schema.Mirror(
                service=m.service,
                cluster=m.cluster,
                scheme=m.scheme,  # type: ignore[arg-type]
                numerator=m.numerator,
                denominator=m.denominator,
            )
            for m in resolved.mirrors
        ],
        unsupported=f.unsupported,
    )


_NO_FILTERS = RouteFilters()


def _edit_doc(edits: HeaderEdits | None) -> schema.HeaderEdit | None:
    if edits is None:
        return None
    return schema.HeaderEdit(set=list(edits.set), add=list(edits.add), remove=list(edits.remove))


def _path_doc(change: PathModifier | None) -> schema.PathChange | None:
    if change is None:
        return None
    return schema.PathChange(type=change.type, value=change.value)  # type: ignore[arg-type]


def _cluster(
    service: TopoService, port: TopoPort, grants: Mapping[str, list[Grant]] | None
) -> schema.Cluster:
    policy = service.options.policy
    return schema.Cluster(
        service=service.key,
        port=port.port,
        protocol=service.options.traffic_type.value,
        scheme=_scheme(port),  # type: ignore[arg-type]
        endpoints=[
            schema.Endpoint(ip=e.ip, port=e.port, node=e.node, identity=e.identity)
            for e in port.endpoints
        ],
        load_balancer=policy.load_balancer,  # type: ignore[arg-type]
        circuit_breaker=_breaker_doc(policy),
        access=_access(service, port, grants) if grants is not None else None,
    )


def _access(
    service: TopoService, port: TopoPort, grants: Mapping[str, list[Grant]]
) -> list[schema.Grant]:
    kind = service.options.traffic_type
    kinds = {
        TrafficType.HTTP: ("HTTPRouteGroup", "TCPRoute"),
        TrafficType.TCP: ("TCPRoute",),
        TrafficType.UDP: ("UDPRoute",),
    }[kind]
    identities = sorted({e.identity for e in port.endpoints if e.identity is not None})
    target_ports = {e.port for e in port.endpoints}
    candidates = [g for identity in identities for g in grants.get(identity, ())]
    candidates.sort(key=lambda g: (g.target, g.route, g.match.name if g.match else ""))
    out = []
    for grant in candidates:
        if grant.kind not in kinds:
            continue
        if grant.ports and not target_ports.intersection(grant.ports):
            continue
        out.append(
            schema.Grant(
                target=grant.target,
                destination=grant.destination,
                sources=list(grant.sources),
                kind=grant.kind,  # type: ignore[arg-type]
                route=grant.route,
                match=match_doc(grant.match) if grant.match is not None else None,
                ports=list(grant.ports),
            )
        )
    return out


def match_doc(match: HTTPMatch) -> schema.Match:
    return schema.Match(
        name=match.name,
        path_regex=match.path_regex,
        methods=sorted(match.methods) if match.methods is not None else None,
        headers=[(k, v) for k, v in match.headers],
    )


def policy_doc(policy: ServicePolicy) -> schema.Policy:
    retry = policy.retry
    limit = policy.rate_limit
    return schema.Policy(
        retry=None
        if retry is None
        else schema.Retry(
            attempts=retry.attempts,
            non_idempotent=retry.non_idempotent,
            on_statuses=list(retry.on_statuses),
            backoff=retry.backoff,
            budget=retry.budget,
        ),
        timeout=policy.timeout,
        request_timeout=policy.request_timeout,
        rate_limit=None
        if limit is None
        else schema.RateLimit(average=limit.average, burst=limit.burst),
    )


def _breaker_doc(policy: ServicePolicy) -> schema.CircuitBreaker | None:
    spec = policy.circuit_breaker
    if spec is None:
        return None
    return schema.CircuitBreaker(
        expression=spec.expression,
        window=spec.window,
        open_duration=spec.open_duration,
        min_requests=spec.min_requests,
        check_period=spec.check_period,
    )
