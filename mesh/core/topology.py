"""ClusterState -> Topology: services with resolved ports and ready endpoints, access grants per
destination identity, validated traffic splits, and errors kept per object.

This is the traefik/mesh shape: plain data keyed by ``namespace/name`` with errors attached to
the object they concern. Nothing here fails as a whole: an object that cannot be used is left out
with an error naming it, and everything else is built as usual.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import final

from mesh.core.annotations import ServiceOptions, service_options
from mesh.core.errors import ObjectError, ObjectRef
from mesh.core.model import (
    PROXY_NAME,
    EndpointSlice,
    GatewayRoute,
    HTTPMatch,
    MtlsMode,
    ObjectReference,
    ParentRef,
    Pod,
    ProxyPod,
    RejectedRoute,
    RouteFilters,
    RouteRule,
    Service,
    ServicePort,
    Settings,
    TrafficSplit,
    TrafficTarget,
    TrafficType,
)
from mesh.core.parse import ClusterState


@final
class TopoEndpoint:
    """A ready endpoint of a Service port. A plain (native) class, read-only by convention: a
    compiled frozen dataclass is made by its generated Python ``__init__``, which was a
    seventh of a full build at 10,000 Services (100,000 endpoints)."""

    __slots__ = ("identity", "ip", "node", "port")

    def __init__(self, ip: str, port: int, node: str | None, identity: str | None) -> None:
        self.ip = ip
        self.port = port
        self.node = node
        self.identity = identity  # "namespace/serviceaccount" of the pod behind it, when known

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, TopoEndpoint):
            return NotImplemented
        return (
            self.ip == other.ip
            and self.port == other.port
            and self.node == other.node
            and self.identity == other.identity
        )

    def __hash__(self) -> int:
        return hash((self.ip, self.port, self.node, self.identity))

    def __repr__(self) -> str:
        return (
            f"TopoEndpoint(ip={self.ip!r}, port={self.port!r}, node={self.node!r}, "
            f"identity={self.identity!r})"
        )


@final
class TopoPort:
    """A Service port and its ready endpoints (a plain native class, as TopoEndpoint)."""

    __slots__ = ("endpoints", "name", "port", "scheme", "target_port")

    def __init__(
        self,
        name: str,
        port: int,
        target_port: int | str,
        endpoints: tuple[TopoEndpoint, ...],
        scheme: str | None = None,  # chosen for this port: the scheme annotation, else appProtocol
    ) -> None:
        self.name = name
        self.port = port
        self.target_port = target_port
        self.endpoints = endpoints
        self.scheme = scheme

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, TopoPort):
            return NotImplemented
        return (
            self.name == other.name
            and self.port == other.port
            and self.target_port == other.target_port
            and self.scheme == other.scheme
            and self.endpoints == other.endpoints
        )

    def __hash__(self) -> int:
        return hash((self.name, self.port, self.target_port, self.endpoints, self.scheme))

    def __repr__(self) -> str:
        return (
            f"TopoPort(name={self.name!r}, port={self.port!r}, "
            f"target_port={self.target_port!r}, endpoints={self.endpoints!r}, "
            f"scheme={self.scheme!r})"
        )


@dataclass(frozen=True, slots=True)
class TopoService:
    namespace: str
    name: str
    cluster_ip: str | None
    options: ServiceOptions
    ports: tuple[TopoPort, ...]
    headless: bool = False
    # spec.selector, as written: the pods a NetworkPolicy for the Service selects (mesh.core.netpol)
    selector: tuple[tuple[str, str], ...] = ()

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    def port(self, number: int) -> TopoPort | None:
        return next((p for p in self.ports if p.port == number), None)


@dataclass(frozen=True, slots=True)
class Grant:
    """One TrafficTarget rule match: ``sources`` may reach ``destination`` pods with it."""

    target: str  # namespace/name of the TrafficTarget
    destination: str  # identity
    sources: tuple[str, ...]
    kind: str  # HTTPRouteGroup, TCPRoute or UDPRoute
    route: str  # name of the route object
    match: HTTPMatch | None  # HTTPRouteGroup match; None for TCP/UDP routes
    ports: tuple[int, ...]  # TCP/UDP route ports (target ports); empty: every port


@dataclass(frozen=True, slots=True)
class TopoSplit:
    namespace: str
    name: str
    root: str  # service key
    backends: tuple[tuple[str, int], ...]  # (service key, weight)
    matches: tuple[HTTPMatch, ...]  # empty: every request
    missing_ports: tuple[tuple[str, int], ...] = ()  # (backend key, root port) not exposed


@dataclass(frozen=True, slots=True)
class TopoMirror:
    service: str  # namespace/name
    cluster: str  # route key of the mirror backend's port
    scheme: str
    numerator: int
    denominator: int


@dataclass(frozen=True, slots=True)
class TopoFilters:
    """A rule's or backendRef's filters, with their mirror backends resolved."""

    filters: RouteFilters
    mirrors: tuple[TopoMirror, ...] = ()


@dataclass(frozen=True, slots=True)
class TopoBackend:
    """A backendRef: ``cluster`` when it resolves to a meshed Service port, else ``invalid``."""

    service: str  # namespace/name, as referenced
    port: int | None
    weight: int
    cluster: str | None
    scheme: str | None  # set when the route kind chooses it (GRPCRoute: h2c)
    invalid: str | None
    filters: TopoFilters


@dataclass(frozen=True, slots=True)
class TopoRule:
    index: int
    rule: RouteRule
    filters: TopoFilters
    backends: tuple[TopoBackend, ...]


class Detached(StrEnum):
    """Why a parentRef attaches its route to no port of the Service it names."""

    NO_SERVICE = "no-service"  # no such Service, or not meshed
    NO_PORT = "no-port"  # the Service has no port of that number or name
    NOT_HTTP = "not-http"  # the Service's traffic type is tcp or udp
    HEADLESS = "headless"  # no frontend to route on (GEP-1294)


class Unresolved(StrEnum):
    """Why a backendRef (or a mirror's) resolves to no Service port."""

    KIND = "kind"  # not a Service
    NO_PORT = "no-port"  # a Service without a port in the reference
    NOT_FOUND = "not-found"  # no such Service, or not meshed, or no such port
    NOT_HTTP = "not-http"  # the Service's traffic type is tcp or udp


@dataclass(frozen=True, slots=True)
class TopoParent:
    """One Service parentRef of a route: the ports it attaches the route to, or why none."""

    ref: ParentRef
    ports: tuple[int, ...]
    detached: Detached | None = None
    message: str = ""


@dataclass(frozen=True, slots=True)
class UnresolvedRef:
    path: str  # field path of the reference
    reason: Unresolved
    message: str


@dataclass(frozen=True, slots=True)
class TopoRoute:
    """An HTTPRoute or GRPCRoute with its references resolved."""

    kind: str
    namespace: str
    name: str
    created: str
    rules: tuple[TopoRule, ...]
    generation: int = 0
    parents: tuple[TopoParent, ...] = ()
    unresolved: tuple[UnresolvedRef, ...] = ()  # backendRefs and mirrors that did not resolve

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


# (service key, port) -> scope ("" for the producer routes, else the consumers' namespace) ->
# the routes that govern it, of one kind (a GRPCRoute set wins over HTTPRoutes)
Attachments = dict[tuple[str, int], dict[str, list[TopoRoute]]]


@dataclass(slots=True)
class Topology:
    services: dict[str, TopoService] = field(default_factory=dict)
    grants: list[Grant] = field(default_factory=list)
    splits: dict[str, TopoSplit] = field(default_factory=dict)
    identities: dict[str, str] = field(default_factory=dict)  # pod IP -> identity
    routes: Attachments = field(default_factory=dict)  # GAMMA
    # every route with a Service parent in a watched namespace, attached or not, by
    # (kind, namespace, name): what its status is decided from (mesh.core.status)
    gateway_routes: dict[tuple[str, str, str], TopoRoute] = field(default_factory=dict)
    # routes rejected as a whole in a watched namespace, by the same key: not used, but their
    # Service parents get a status entry that says why
    rejected_routes: dict[tuple[str, str, str], RejectedRoute] = field(default_factory=dict)
    # node -> identities of its live pods: the certificates its proxy may hold (mTLS)
    node_identities: dict[str, list[str]] = field(default_factory=dict)
    # pod IP -> node, for the IPs with an identity: which callers are on a proxy's own node
    pod_nodes: dict[str, str] = field(default_factory=dict)
    # node -> "ip:port" of its proxy's mTLS tunnel (mTLS on only): where the other nodes'
    # proxies send its pods' requests
    proxies: dict[str, str] = field(default_factory=dict)
    # node -> its proxy pod's IP (GAMMA capture on only): where the node's capture agent
    # redirects the ClusterIP traffic of GAMMA parents, and whose own packets it leaves alone
    capture_proxies: dict[str, str] = field(default_factory=dict)
    errors: list[ObjectError] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class _Built:
    """One Service as the last build made it, and from what."""

    service: Service
    slices: tuple[EndpointSlice, ...]
    built: TopoService
    errors: tuple[ObjectError, ...]


class TopologyCache:
    """What the last :func:`build_topology` made of each Service, so that the next build
    reuses it when the Service and its EndpointSlices are the same objects (a store keeps
    each object's parsed value until the object changes; parsed values are immutable) and
    what else a Service's part reads (the settings, the pods' identities) is equal. The
    result is the same as a build without the cache."""

    def __init__(self) -> None:
        self.settings: Settings | None = None
        self.pods_by_name: dict[str, str] = {}
        self.identities: dict[str, str] = {}
        self.services: dict[str, _Built] = {}


def build_topology(
    state: ClusterState, settings: Settings, cache: TopologyCache | None = None
) -> Topology:
    topology = Topology(errors=list(state.errors))
    pods_by_name, topology.identities = _pod_index(state, topology.errors)
    reuse: dict[str, _Built] = {}
    if (
        cache is not None
        and cache.settings == settings
        and cache.pods_by_name == pods_by_name
        and cache.identities == topology.identities
    ):
        reuse = cache.services
    made: dict[str, _Built] = {}
    topology.node_identities = node_identities(state.pods.values(), settings)
    topology.pod_nodes = pod_nodes(state.pods.values(), topology.identities)
    if settings.mtls is not MtlsMode.OFF:
        topology.proxies = tunnel_addresses(state.proxy_pods.values(), settings)
    if settings.capture:
        topology.capture_proxies = proxy_ips(state.proxy_pods.values(), settings)
    slices = _slices_by_service(state)
    for key in sorted(state.services):
        service = state.services[key]
        if not _meshed(service, settings):
            continue
        mine = tuple(slices.get(key, ()))
        last = reuse.get(key)
        if last is not None and last.service is service and _same(last.slices, mine):
            topology.errors.extend(last.errors)
            built = last.built
        else:
            before = len(topology.errors)
            built = _service(service, settings, list(mine), pods_by_name, topology)
            last = _Built(service, mine, built, tuple(topology.errors[before:]))
        made[key] = last
        topology.services[key] = built
    if cache is not None:
        cache.settings = settings
        cache.pods_by_name = pods_by_name
        cache.identities = dict(topology.identities)
        cache.services = made
    for key in sorted(state.traffic_targets):
        target = state.traffic_targets[key]
        if settings.watches(target.namespace) and _may_grant(target, settings, topology.errors):
            topology.grants.extend(_grants(target, state, topology.errors))
    claimed: dict[str, str] = {}
    for key in sorted(state.traffic_splits):
        split = state.traffic_splits[key]
        if settings.watches(split.namespace):
            built_split = _split(split, state, topology, claimed)
            if built_split is not None:
                topology.splits[built_split.root] = built_split
    _report_nested_splits(topology)
    _attach_routes(state, settings, topology)
    _report_shadowed_splits(topology)
    return topology


def _same(old: tuple[EndpointSlice, ...], new: tuple[EndpointSlice, ...]) -> bool:
    """The same slice objects, in the same order."""
    return len(old) == len(new) and all(a is b for a, b in zip(old, new, strict=True))


def _meshed(service: Service, settings: Settings) -> bool:
    if service.type == "ExternalName":
        return False
    if service.namespace == "default" and service.name == "kubernetes":
        return False
    return settings.watches(service.namespace)


# appProtocol values that choose how the proxy speaks to a port (KEP-3726 and common names);
# others (tcp, mysql, ...) choose nothing. The scheme annotation wins over appProtocol.
APP_PROTOCOLS = {
    "http": "http",
    "https": "https",
    "h2c": "h2c",
    "kubernetes.io/h2c": "h2c",
    "grpc": "h2c",
    "kubernetes.io/ws": "http",
    "kubernetes.io/wss": "https",
}


def node_identities(pods: Iterable[Pod], settings: Settings) -> dict[str, list[str]]:
    """The identities (namespace/serviceaccount) each node's proxy may hold certificates
    for: those of its live pods in watched namespaces, sorted."""
    by_node: dict[str, set[str]] = {}
    for pod in pods:
        if pod.holds_identity and pod.node is not None and settings.watches(pod.namespace):
            by_node.setdefault(pod.node, set()).add(f"{pod.namespace}/{pod.service_account}")
    return {node: sorted(ids) for node, ids in sorted(by_node.items())}


def pod_nodes(pods: Iterable[Pod], identities: dict[str, str]) -> dict[str, str]:
    """The node of each pod IP that has an identity (running, pod network, unambiguous)."""
    nodes: dict[str, str] = {}
    for pod in pods:
        if pod.running and not pod.host_network and pod.node is not None:
            for ip in pod.ips:
                if ip in identities:
                    nodes[ip] = pod.node
    return dict(sorted(nodes.items()))


def is_node_proxy(pod: ProxyPod, settings: Settings) -> bool:
    """A pod of the node proxies: in their ServiceAccount's namespace (the mesh namespace with
    the chart), running as that ServiceAccount, labelled app.kubernetes.io/name=simmesh-proxy.
    A look-alike elsewhere, or under another ServiceAccount, is not one: creating pods that
    run as the proxies' ServiceAccount is already what a proxy may do (the CA answers it)."""
    namespace, account = settings.proxy_account
    return (
        pod.namespace == namespace and pod.service_account == account and pod.app_name == PROXY_NAME
    )


def node_proxies(
    pods: Iterable[ProxyPod], settings: Settings, *, tunnel: bool
) -> dict[str, ProxyPod]:
    """Each node's proxy pod: Ready, scheduled, with an IP (and with ``tunnel``, a container
    port named ``tunnel``). Two proxies on one node (a rolling update surges): the one not
    terminating, then the oldest (it has been serving and holds its certificates; the new one
    takes over when the old one is told to stop), then the smallest name, so every rebuild
    picks the same one."""
    best: dict[str, ProxyPod] = {}
    for pod in pods:
        if not is_node_proxy(pod, settings) or not pod.ready:
            continue
        if pod.node is None or pod.ip is None or (tunnel and pod.tunnel_port is None):
            continue
        current = best.get(pod.node)
        if current is None or _proxy_order(pod) < _proxy_order(current):
            best[pod.node] = pod
    return dict(sorted(best.items()))


def tunnel_addresses(pods: Iterable[ProxyPod], settings: Settings) -> dict[str, str]:
    """Each node's proxy tunnel, ``ip:port`` (``[ip6]:port``), of :func:`node_proxies`."""
    return {
        node: _address(pod.ip, pod.tunnel_port)
        for node, pod in node_proxies(pods, settings, tunnel=True).items()
        if pod.ip is not None and pod.tunnel_port is not None
    }


def proxy_ips(pods: Iterable[ProxyPod], settings: Settings) -> dict[str, str]:
    """Each node's proxy pod IP (:func:`node_proxies`), for the capture agents. A node whose
    proxy is not Ready has none, so its agent captures nothing (traffic then goes straight to
    the Service, unrouted, rather than to a proxy that cannot answer)."""
    return {
        node: pod.ip
        for node, pod in node_proxies(pods, settings, tunnel=False).items()
        if pod.ip is not None
    }


def _proxy_order(pod: ProxyPod) -> tuple[bool, str, str]:
    return (pod.terminating, pod.created, pod.name)


def _address(ip: str, port: int) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def _pod_index(
    state: ClusterState, errors: list[ObjectError]
) -> tuple[dict[str, str], dict[str, str]]:
    """Identities by pod (for EndpointSlice targetRefs) and by source IP.

    Only running pods have an identity: a finished pod's IP may already belong to another pod.
    By IP, only pod-network pods: a host-network pod's IP is its node's, shared by everything
    on the node. Two running pods of different identities on one IP (stale data, a recycled
    IP) give that IP no identity, with an error on each pod.
    """
    by_name: dict[str, str] = {}
    claims: dict[str, dict[str, list[str]]] = {}  # ip -> identity -> pod keys
    for key in sorted(state.pods):
        pod = state.pods[key]
        if not pod.running:
            continue
        identity = f"{pod.namespace}/{pod.service_account}"
        by_name[key] = identity
        if pod.host_network:
            continue
        for ip in pod.ips:
            claims.setdefault(ip, {}).setdefault(identity, []).append(key)
    by_ip: dict[str, str] = {}
    for ip, identities in claims.items():
        if len(identities) == 1:
            by_ip[ip] = next(iter(identities))
            continue
        owners = sorted(f"Pod {k} ({i})" for i, keys in identities.items() for k in keys)
        for keys in identities.values():
            for key in keys:
                namespace, _, name = key.partition("/")
                errors.append(
                    ObjectError(
                        ObjectRef("Pod", namespace, name),
                        "status.podIPs",
                        f"{ip} is claimed by running pods of different ServiceAccounts: "
                        f"{', '.join(owners)}; traffic from it has no identity",
                    )
                )
    return by_name, by_ip


def _slices_by_service(state: ClusterState) -> dict[str, list[EndpointSlice]]:
    out: dict[str, list[EndpointSlice]] = defaultdict(list)
    for key in sorted(state.endpoint_slices):
        item = state.endpoint_slices[key]
        out[f"{item.namespace}/{item.service}"].append(item)
    return out


def _service(
    service: Service,
    settings: Settings,
    slices: list[EndpointSlice],
    pods_by_name: dict[str, str],
    topology: Topology,
) -> TopoService:
    options, problems = service_options(service.annotations, settings.default_traffic_type)
    ref = ObjectRef("Service", service.namespace, service.name)
    topology.errors.extend(ObjectError(ref, p.field, p.message) for p in problems)
    ports = tuple(
        TopoPort(
            p.name,
            p.port,
            p.target_port,
            _endpoints(service, p, slices, pods_by_name, topology.identities),
            options.scheme.value
            if options.scheme_set
            else APP_PROTOCOLS.get((p.app_protocol or "").lower()),
        )
        for p in service.ports
    )
    return TopoService(
        service.namespace,
        service.name,
        service.cluster_ip,
        options,
        ports,
        service.headless,
        service.selector,
    )


def _endpoints(
    service: Service,
    port: ServicePort,
    slices: list[EndpointSlice],
    pods_by_name: dict[str, str],
    identities: dict[str, str],
) -> tuple[TopoEndpoint, ...]:
    found: dict[tuple[str, int], TopoEndpoint] = {}
    for item in slices:
        number = next((p.port for p in item.ports if p.name == port.name), None)
        if number is None and not item.ports and isinstance(port.target_port, int):
            number = port.target_port
        if number is None:
            continue
        for endpoint in item.endpoints:
            if not endpoint.ready:
                continue
            identity = None
            if endpoint.pod is not None:
                identity = pods_by_name.get(f"{service.namespace}/{endpoint.pod}")
            for ip in endpoint.addresses:
                who = identity if identity is not None else identities.get(ip)
                found[(ip, number)] = TopoEndpoint(ip, number, endpoint.node, who)
    return tuple(found[k] for k in sorted(found))


def _may_grant(target: TrafficTarget, settings: Settings, errors: list[ObjectError]) -> bool:
    """A namespace's owners grant access to its ServiceAccounts: a TrafficTarget elsewhere
    granting it would let anyone who can create one in any namespace in."""
    destination = target.destination.namespace
    if destination == target.namespace or target.namespace in settings.access_admin_namespaces:
        return True
    errors.append(
        ObjectError(
            ObjectRef("TrafficTarget", target.namespace, target.name),
            "spec.destination.namespace",
            f"a TrafficTarget may only grant access to ServiceAccounts of its own namespace "
            f"({target.namespace}), not {destination}; it grants nothing (create it in "
            f"{destination}, or list {target.namespace} in accessAdminNamespaces)",
        )
    )
    return False


def _grants(target: TrafficTarget, state: ClusterState, errors: list[ObjectError]) -> list[Grant]:
    ref = ObjectRef("TrafficTarget", target.namespace, target.name)
    key = f"{target.namespace}/{target.name}"
    sources = tuple(sorted({str(s) for s in target.sources}))
    destination = str(target.destination)
    grants: list[Grant] = []
    for i, rule in enumerate(target.rules):
        path = f"spec.rules[{i}]"
        route_key = f"{target.namespace}/{rule.name}"
        if rule.kind == "HTTPRouteGroup":
            group = state.http_route_groups.get(route_key)
            if group is None:
                errors.append(
                    ObjectError(ref, f"{path}.name", f"HTTPRouteGroup {route_key} not found")
                )
                continue
            by_name = {m.name: m for m in group.matches}
            for name in _selected(
                rule.matches, list(by_name), ref, path, errors, group_key=route_key
            ):
                grants.append(
                    Grant(key, destination, sources, rule.kind, rule.name, by_name[name], ())
                )
        else:
            table = state.tcp_routes if rule.kind == "TCPRoute" else state.udp_routes
            route = table.get(route_key)
            if route is None:
                errors.append(
                    ObjectError(ref, f"{path}.name", f"{rule.kind} {route_key} not found")
                )
                continue
            by_port = {m.name: m for m in route.matches}
            for name in _selected(
                rule.matches, list(by_port), ref, path, errors, group_key=route_key
            ):
                grants.append(
                    Grant(
                        key, destination, sources, rule.kind, rule.name, None, by_port[name].ports
                    )
                )
    return grants


def _selected(
    wanted: tuple[str, ...] | None,
    available: list[str],
    ref: ObjectRef,
    path: str,
    errors: list[ObjectError],
    *,
    group_key: str,
) -> list[str]:
    if wanted is None:
        return available
    chosen = []
    for j, name in enumerate(wanted):
        if name in available:
            chosen.append(name)
        else:
            errors.append(
                ObjectError(ref, f"{path}.matches[{j}]", f"no match {name!r} in {group_key}")
            )
    return chosen


def _split(
    split: TrafficSplit, state: ClusterState, topology: Topology, claimed: dict[str, str]
) -> TopoSplit | None:
    ref = ObjectRef("TrafficSplit", split.namespace, split.name)
    errors = topology.errors
    root_key = f"{split.namespace}/{split.service}"
    root = topology.services.get(root_key)
    if root is None:
        errors.append(
            ObjectError(ref, "spec.service", f"Service {root_key} not found or not meshed")
        )
        return None
    if root_key in claimed:
        errors.append(
            ObjectError(
                ref,
                "spec.service",
                f"Service {root_key} is already split by TrafficSplit {claimed[root_key]}; "
                "this one is ignored",
            )
        )
        return None
    # the first split by name holds its root even when it is unusable (its traffic then goes to
    # the root Service): a later split never takes over because an earlier one broke
    claimed[root_key] = f"{split.namespace}/{split.name}"
    backends: list[tuple[str, int]] = []
    missing: list[tuple[str, int]] = []
    for i, backend in enumerate(split.backends):
        path = f"spec.backends[{i}].service"
        key = f"{split.namespace}/{backend.service}"
        service = topology.services.get(key)
        if service is None:
            errors.append(
                ObjectError(ref, path, f"Service {key} not found or not meshed; backend excluded")
            )
            continue
        if service.options.traffic_type != root.options.traffic_type:
            errors.append(
                ObjectError(
                    ref,
                    path,
                    f"Service {key} has traffic type {service.options.traffic_type}, the root has "
                    f"{root.options.traffic_type}; backend excluded",
                )
            )
            continue
        for port in root.ports:
            if service.port(port.port) is None:
                missing.append((key, port.port))
                errors.append(
                    ObjectError(
                        ref,
                        path,
                        f"Service {key} has no port {port.port} (the root's); "
                        "excluded on that port",
                    )
                )
        backends.append((key, backend.weight))
    if not any(weight > 0 for _, weight in backends):
        errors.append(
            ObjectError(
                ref,
                "spec.backends",
                "no usable backend with a positive weight; traffic goes to the root Service",
            )
        )
        return None
    matches: list[HTTPMatch] = []
    for i, (_, name) in enumerate(split.matches):
        group = state.http_route_groups.get(f"{split.namespace}/{name}")
        if group is None:
            errors.append(
                ObjectError(
                    ref,
                    f"spec.matches[{i}].name",
                    f"HTTPRouteGroup {split.namespace}/{name} not found",
                )
            )
            continue
        matches.extend(group.matches)
    if split.matches and not matches:
        errors.append(
            ObjectError(
                ref,
                "spec.matches",
                "no usable match: no request is split, all go to the root Service",
            )
        )
    if split.matches and not matches:
        return None
    return TopoSplit(
        split.namespace, split.name, root_key, tuple(backends), tuple(matches), tuple(missing)
    )


def _report_nested_splits(topology: Topology) -> None:
    """Splits are not hierarchical: a backend that is itself split is used as a plain Service."""
    for root, split in sorted(topology.splits.items()):
        ref = ObjectRef("TrafficSplit", split.namespace, split.name)
        for backend, _ in split.backends:
            if backend == root or backend not in topology.splits:
                continue
            other = topology.splits[backend]
            cycle = root in {b for b, _ in other.backends}
            what = "forms a cycle with" if cycle else "is itself split by"
            topology.errors.append(
                ObjectError(
                    ref,
                    "spec.backends",
                    f"backend {backend} {what} TrafficSplit {other.namespace}/{other.name}; "
                    "splits are not hierarchical, so its own endpoints are used",
                )
            )


# -- GAMMA: HTTPRoutes and GRPCRoutes attached to Service ports ----------------------------------


def _attach_routes(state: ClusterState, settings: Settings, topology: Topology) -> None:
    """Resolve every route's backends, then attach it to the Service ports its parentRefs name
    (GEP-1294): for every caller when the route is in the Service's namespace (a producer
    route), for callers of the route's namespace only otherwise (a consumer route)."""
    attached: dict[tuple[str, int], dict[str, dict[str, tuple[TopoRoute, int]]]] = {}
    for rejected_key in sorted(state.rejected_routes):
        if settings.watches(rejected_key[1]):
            topology.rejected_routes[rejected_key] = state.rejected_routes[rejected_key]
    for table in (state.grpc_routes, state.http_routes):
        for key in sorted(table):
            route = table[key]
            if not settings.watches(route.namespace) or not route.parents:
                continue
            ref = ObjectRef(route.kind, route.namespace, route.name)
            topology.errors.extend(ObjectError(ref, f, m) for f, m in route.notes)
            unresolved: list[UnresolvedRef] = []
            resolved = _resolve_route(route, topology, ref, unresolved)
            parents = tuple(_parent(parent, route, topology, ref) for parent in route.parents)
            resolved = replace(resolved, parents=parents, unresolved=tuple(unresolved))
            topology.gateway_routes[(route.kind, route.namespace, route.name)] = resolved
            for parent in parents:
                for number in parent.ports:
                    scope = "" if parent.ref.namespace == route.namespace else route.namespace
                    place = (f"{parent.ref.namespace}/{parent.ref.name}", number)
                    by_scope = attached.setdefault(place, {}).setdefault(scope, {})
                    by_scope.setdefault(f"{route.kind}:{route.key}", (resolved, parent.ref.index))
    for place in sorted(attached):
        for scope in sorted(attached[place]):
            routes = attached[place][scope]
            grpc = [r for k, (r, _) in sorted(routes.items()) if r.kind == "GRPCRoute"]
            chosen = grpc or [r for _, (r, _) in sorted(routes.items())]
            topology.routes.setdefault(place, {})[scope] = chosen
            if grpc:
                _report_conflicts(place, routes, grpc, topology.errors)


def _parent(
    parent: ParentRef, route: GatewayRoute, topology: Topology, ref: ObjectRef
) -> TopoParent:
    """The ports of the parent Service this parentRef attaches the route to, or why none."""
    key = f"{parent.namespace}/{parent.name}"
    where = f"spec.parentRefs[{parent.index}]"
    service = topology.services.get(key)
    problem = None
    detached = None
    if service is None:
        problem = f"Service {key} not found or not meshed; the route is not attached to it"
        detached = Detached.NO_SERVICE
    elif service.options.traffic_type is not TrafficType.HTTP:
        problem = (
            f"Service {key} has traffic type {service.options.traffic_type}; {route.kind}s "
            "attach to HTTP Services only"
        )
        detached = Detached.NOT_HTTP
    elif service.headless:
        problem = f"Service {key} is headless: it has no frontend for a route (GEP-1294)"
        detached = Detached.HEADLESS
    if service is None or problem is not None:
        topology.errors.append(ObjectError(ref, where, problem or ""))
        return TopoParent(parent, (), detached, problem or "")
    ports = [
        p.port
        for p in service.ports
        if (parent.port is None or p.port == parent.port)
        and (parent.section is None or p.name == parent.section)
    ]
    if not ports:
        wanted = " ".join(
            w
            for w in (
                f"port {parent.port}" if parent.port is not None else "",
                f"named {parent.section!r}" if parent.section is not None else "",
            )
            if w
        )
        problem = f"Service {key} has no port {wanted}; not attached"
        topology.errors.append(ObjectError(ref, where, problem))
        return TopoParent(parent, (), Detached.NO_PORT, problem)
    return TopoParent(parent, tuple(ports))


def _resolve_route(
    route: GatewayRoute, topology: Topology, ref: ObjectRef, unresolved: list[UnresolvedRef]
) -> TopoRoute:
    rules = []
    for i, rule in enumerate(route.rules):
        filters = _resolve_filters(rule.filters, route, topology, ref, unresolved)
        backends = tuple(
            _resolve_backend(b.ref, b.weight, b.path, route, topology, ref, unresolved)
            for b in rule.backends
        )
        backends = tuple(
            TopoBackend(
                b.service,
                b.port,
                b.weight,
                b.cluster,
                b.scheme,
                b.invalid,
                _resolve_filters(rb.filters, route, topology, ref, unresolved),
            )
            for b, rb in zip(backends, rule.backends, strict=True)
        )
        if rule.filters.unsupported is not None:
            topology.errors.append(
                ObjectError(
                    ref,
                    f"spec.rules[{i}].filters",
                    rule.filters.unsupported + ": its requests get 500",
                )
            )
        rules.append(TopoRule(i, rule, filters, backends))
    return TopoRoute(
        route.kind, route.namespace, route.name, route.created, tuple(rules), route.generation
    )


def _resolve_filters(
    filters: RouteFilters,
    route: GatewayRoute,
    topology: Topology,
    ref: ObjectRef,
    unresolved: list[UnresolvedRef],
) -> TopoFilters:
    mirrors = []
    for mirror in filters.mirrors:
        found = _resolve_backend(
            mirror.backend, 1, mirror.path + ".backendRef", route, topology, ref, unresolved
        )
        if found.cluster is None:
            continue  # reported; a mirror that does not resolve is left out
        scheme = found.scheme or _cluster_scheme(topology, found.cluster)
        mirrors.append(
            TopoMirror(found.service, found.cluster, scheme, mirror.numerator, mirror.denominator)
        )
    return TopoFilters(filters, tuple(mirrors))


def _cluster_scheme(topology: Topology, cluster: str) -> str:
    service_key, _, number = cluster.rpartition(":")
    port = topology.services[service_key].port(int(number))
    return (port.scheme if port is not None else None) or "http"


def _resolve_backend(
    target: ObjectReference,
    weight: int,
    path: str,
    route: GatewayRoute,
    topology: Topology,
    ref: ObjectRef,
    unresolved: list[UnresolvedRef],
) -> TopoBackend:
    """A backendRef (or a mirror's): to a meshed HTTP Service port, in any namespace (no
    ReferenceGrant for mesh routes, GEP-1294). One that does not resolve is kept with why:
    its share of the requests is answered 500 (503 for a GRPCRoute), never sent elsewhere."""
    key = f"{target.namespace}/{target.name}"
    service = topology.services.get(key)
    problem = None
    reason = Unresolved.NOT_FOUND
    if target.group not in ("", "core") or target.kind != "Service":
        group = target.group or "core"
        problem = f"backends of kind {target.kind} ({group}) are not supported, only Services"
        reason = Unresolved.KIND
    elif target.port is None:
        problem = "a backendRef to a Service needs a port"
        reason = Unresolved.NO_PORT
    elif service is None:
        problem = f"Service {key} not found or not meshed"
    elif service.options.traffic_type is not TrafficType.HTTP:
        problem = f"Service {key} has traffic type {service.options.traffic_type}, not http"
        reason = Unresolved.NOT_HTTP
    elif service.port(target.port) is None:
        problem = f"Service {key} has no port {target.port}"
    if problem is not None or service is None or target.port is None:
        status = 503 if route.kind == "GRPCRoute" else 500
        share = "it gets no requests" if weight == 0 else f"its share of requests gets {status}"
        topology.errors.append(ObjectError(ref, path, f"{problem}; {share}"))
        unresolved.append(UnresolvedRef(path, reason, problem or ""))
        return TopoBackend(
            key, target.port, weight, None, None, problem, TopoFilters(RouteFilters())
        )
    port = service.port(target.port)
    assert port is not None
    scheme = None
    if route.kind == "GRPCRoute" and port.scheme is None:
        scheme = "h2c"  # gRPC is HTTP/2: without a scheme or appProtocol the route kind decides
    cluster = f"{key}:{port.port}"
    return TopoBackend(key, port.port, weight, cluster, scheme, None, TopoFilters(RouteFilters()))


def _report_conflicts(
    place: tuple[str, int],
    routes: dict[str, tuple[TopoRoute, int]],
    grpc: list[TopoRoute],
    errors: list[ObjectError],
) -> None:
    service, number = place
    winner = grpc[0].key
    for route, index in routes.values():
        if route.kind == "HTTPRoute":
            errors.append(
                ObjectError(
                    ObjectRef(route.kind, route.namespace, route.name),
                    f"spec.parentRefs[{index}]",
                    f"Conflicted: GRPCRoute {winner} is attached to Service {service} port "
                    f"{number} for the same callers, and a GRPCRoute wins over an HTTPRoute "
                    "(GEP-1294); this route is not used on that port",
                )
            )


def _report_shadowed_splits(topology: Topology) -> None:
    """A TrafficSplit on a Service port with producer routes is never used there: the routes
    decide for every caller (consumer routes for their own callers only)."""
    for root, split in sorted(topology.splits.items()):
        service = topology.services[root]
        for port in service.ports:
            routes = topology.routes.get((root, port.port), {}).get("")
            if routes:
                names = ", ".join(f"{r.kind} {r.key}" for r in routes)
                topology.errors.append(
                    ObjectError(
                        ObjectRef("TrafficSplit", split.namespace, split.name),
                        "spec.service",
                        f"Service {root} port {port.port} has {names} attached: the route decides "
                        "there and this split is not used on that port",
                    )
                )


__all__ = [
    "APP_PROTOCOLS",
    "Detached",
    "Grant",
    "TopoBackend",
    "TopoEndpoint",
    "TopoFilters",
    "TopoMirror",
    "TopoParent",
    "TopoPort",
    "TopoRoute",
    "TopoRule",
    "TopoService",
    "TopoSplit",
    "Topology",
    "Unresolved",
    "UnresolvedRef",
    "build_topology",
]
