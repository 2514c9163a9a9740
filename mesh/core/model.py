"""Plain, frozen values for the objects the core reads.

These are the parsed forms of Kubernetes and SMI objects (see :mod:`mesh.core.parse`) and the
mesh settings. They carry only what routing needs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


class TrafficType(StrEnum):
    HTTP = "http"
    TCP = "tcp"
    UDP = "udp"


class Scheme(StrEnum):
    HTTP = "http"
    HTTPS = "https"
    H2C = "h2c"


@dataclass(frozen=True, slots=True)
class ServicePort:
    name: str
    port: int
    target_port: int | str
    protocol: str = "TCP"
    app_protocol: str | None = None  # spec.ports[].appProtocol, as written


@dataclass(frozen=True, slots=True)
class Service:
    namespace: str
    name: str
    type: str
    cluster_ip: str | None
    ports: tuple[ServicePort, ...]
    annotations: tuple[tuple[str, str], ...] = ()
    selector: tuple[tuple[str, str], ...] = ()
    headless: bool = False  # clusterIP: None

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True, slots=True)
class SlicePort:
    name: str
    port: int
    protocol: str = "TCP"


@dataclass(frozen=True, slots=True)
class SliceEndpoint:
    addresses: tuple[str, ...]
    ready: bool
    node: str | None = None
    pod: str | None = None


@dataclass(frozen=True, slots=True)
class EndpointSlice:
    namespace: str
    name: str
    service: str
    ports: tuple[SlicePort, ...]
    endpoints: tuple[SliceEndpoint, ...]


POD_PHASES = frozenset({"Pending", "Running", "Succeeded", "Failed", "Unknown"})
# Phases of a pod that is (or is about to be) running on its node: its node's proxy may hold
# its ServiceAccount's certificate (mesh.identity.authorize).
LIVE_PHASES = frozenset({"Pending", "Running"})


@dataclass(frozen=True, slots=True)
class Pod:
    namespace: str
    name: str
    service_account: str
    ips: tuple[str, ...]
    node: str | None = None
    phase: str = "Running"  # status.phase; hand-written manifests without one count as Running
    host_network: bool = False

    @property
    def running(self) -> bool:
        return self.phase == "Running"

    @property
    def holds_identity(self) -> bool:
        """Scheduled, not finished, on the pod network: its node's proxy speaks for it."""
        return self.node is not None and self.phase in LIVE_PHASES and not self.host_network


# The node proxies' pods, as the chart labels them (the shadow Services select the same label).
PROXY_NAME_LABEL = "app.kubernetes.io/name"
PROXY_NAME = "simmesh-proxy"
TUNNEL_PORT_NAME = "tunnel"  # the proxy container's port of the mTLS tunnel


@dataclass(frozen=True, slots=True)
class ProxyPod:
    """A pod of the proxies' namespace that may be a node proxy: what says whether it is one
    (namespace, label, ServiceAccount) and where its mTLS tunnel listens. Read only with mTLS
    on (store kind ``ProxyPod``; mesh.core.topology.tunnel_addresses decides)."""

    namespace: str
    name: str
    service_account: str
    app_name: str | None  # the label app.kubernetes.io/name
    node: str | None  # spec.nodeName
    ip: str | None  # status.podIP
    tunnel_port: int | None  # the containerPort named "tunnel"
    ready: bool  # condition Ready is True, phase Running
    terminating: bool  # metadata.deletionTimestamp set
    created: str = ""  # metadata.creationTimestamp (RFC 3339 in UTC: sorts by time)


@dataclass(frozen=True, slots=True)
class Node:
    name: str
    addresses: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True, order=True)
class Identity:
    """A ServiceAccount: the identity SMI access control is about."""

    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"

    @classmethod
    def parse(cls, text: str) -> Identity:
        namespace, sep, name = text.partition("/")
        if not sep or not namespace or not name:
            raise ValueError(f"expected NAMESPACE/SERVICEACCOUNT, got {text!r}")
        return cls(namespace, name)


@dataclass(frozen=True, slots=True)
class TrafficRule:
    kind: str
    name: str
    matches: tuple[str, ...] | None  # None: every match of the route


@dataclass(frozen=True, slots=True)
class TrafficTarget:
    namespace: str
    name: str
    destination: Identity
    sources: tuple[Identity, ...]
    rules: tuple[TrafficRule, ...]


@dataclass(frozen=True, slots=True)
class HTTPMatch:
    name: str
    path_regex: str | None
    methods: frozenset[str] | None  # None: any method
    headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class HTTPRouteGroup:
    namespace: str
    name: str
    matches: tuple[HTTPMatch, ...]


@dataclass(frozen=True, slots=True)
class PortMatch:
    name: str
    ports: tuple[int, ...]  # empty: every port


@dataclass(frozen=True, slots=True)
class PortRoute:
    """A TCPRoute or a UDPRoute."""

    kind: str
    namespace: str
    name: str
    matches: tuple[PortMatch, ...]


@dataclass(frozen=True, slots=True)
class SplitBackend:
    service: str
    weight: int


@dataclass(frozen=True, slots=True)
class TrafficSplit:
    namespace: str
    name: str
    service: str
    backends: tuple[SplitBackend, ...]
    matches: tuple[tuple[str, str], ...] = ()  # (kind, name) of route groups


# -- Gateway API routes with a Service parent (GAMMA; mesh.core.gateway reads them) ----------------


@dataclass(frozen=True, slots=True)
class ParentRef:
    """A route's parentRef to a Service: ``port`` None and ``section`` None attach it to every
    port; ``section`` is a port's name (sectionName)."""

    namespace: str
    name: str
    port: int | None
    section: str | None
    index: int  # position in spec.parentRefs, for errors
    group: str = ""  # as written ("" or "core"): the route's status echoes the parentRef
    namespace_given: bool = False  # the parentRef names its namespace (else the route's)


@dataclass(frozen=True, slots=True)
class ValueMatch:
    """A header (name lower-cased) or query parameter (name as written) match."""

    name: str
    value: str
    regex: bool = False


@dataclass(frozen=True, slots=True)
class RouteMatch:
    """One match of a rule: every condition holds (AND). gRPC matches are read into a path
    match too (``/service/method``), and keep their service and method for precedence."""

    path_type: str  # Exact, PathPrefix or RegularExpression
    path: str
    method: str | None = None
    headers: tuple[ValueMatch, ...] = ()
    query: tuple[ValueMatch, ...] = ()
    grpc: tuple[str, str, bool] | None = None  # (service, method, regex) of a GRPCRoute match


@dataclass(frozen=True, slots=True)
class HeaderEdits:
    """RequestHeaderModifier or ResponseHeaderModifier: names as written, one action each."""

    set: tuple[tuple[str, str], ...] = ()
    add: tuple[tuple[str, str], ...] = ()
    remove: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class PathModifier:
    type: str  # ReplaceFullPath or ReplacePrefixMatch
    value: str


@dataclass(frozen=True, slots=True)
class RedirectFilter:
    scheme: str | None
    hostname: str | None
    path: PathModifier | None
    port: int | None
    status: int


@dataclass(frozen=True, slots=True)
class RewriteFilter:
    hostname: str | None
    path: PathModifier | None


@dataclass(frozen=True, slots=True)
class ObjectReference:
    """A backendRef's target (group "" is the core group)."""

    group: str
    kind: str
    namespace: str
    name: str
    port: int | None


@dataclass(frozen=True, slots=True)
class MirrorFilter:
    backend: ObjectReference
    numerator: int  # the share of requests mirrored: numerator / denominator
    denominator: int
    path: str  # field path, for errors


@dataclass(frozen=True, slots=True)
class RouteFilters:
    request_headers: HeaderEdits | None = None
    response_headers: HeaderEdits | None = None
    redirect: RedirectFilter | None = None
    rewrite: RewriteFilter | None = None
    mirrors: tuple[MirrorFilter, ...] = ()
    unsupported: str | None = None  # a filter simmesh does not perform: its requests get 500


@dataclass(frozen=True, slots=True)
class RouteBackend:
    ref: ObjectReference
    weight: int
    filters: RouteFilters
    path: str  # field path, for errors


@dataclass(frozen=True, slots=True)
class RouteRule:
    name: str | None
    matches: tuple[RouteMatch, ...]
    filters: RouteFilters
    backends: tuple[RouteBackend, ...]
    request_timeout: float | None = None  # timeouts.request; 0.0: disabled
    backend_timeout: float | None = None  # timeouts.backendRequest; 0.0: disabled


@dataclass(frozen=True, slots=True)
class GatewayRoute:
    """An HTTPRoute or GRPCRoute. Only its Service parents are kept (mesh routes); ``notes``
    are problems that leave the route in use (a field simmesh does not read)."""

    kind: str  # HTTPRoute or GRPCRoute
    namespace: str
    name: str
    created: str  # creationTimestamp in UTC, sortable; "" when the object has none
    parents: tuple[ParentRef, ...]
    rules: tuple[RouteRule, ...]
    notes: tuple[tuple[str, str], ...] = ()  # (field, message)
    generation: int = 0  # metadata.generation: the status's observedGeneration

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True, slots=True)
class RejectedRoute:
    """An HTTPRoute or GRPCRoute the core rejects as a whole (a value the CRD's rules allow but
    simmesh cannot use, such as a regular expression outside RE2): not used, but its Service
    parents still get a status entry saying why (mesh.core.status)."""

    kind: str
    namespace: str
    name: str
    generation: int
    parents: tuple[ParentRef, ...]
    field: str  # the field path of the error, "" for the object
    message: str


class MtlsMode(StrEnum):
    OFF = "off"
    PERMISSIVE = "permissive"
    STRICT = "strict"


@dataclass(frozen=True, slots=True)
class PortRange:
    start: int
    size: int

    def ports(self) -> range:
        return range(self.start, self.start + self.size)


@dataclass(frozen=True, slots=True)
class Settings:
    zone: str = "mesh"
    cluster_domain: str = "cluster.local"
    mesh_namespace: str = "simmesh"
    default_traffic_type: TrafficType = TrafficType.HTTP
    acl: bool = False
    watch_namespaces: tuple[str, ...] = ()  # empty: every namespace
    ignore_namespaces: tuple[str, ...] = ()
    # TrafficTargets in these namespaces may grant access to ServiceAccounts of any namespace;
    # elsewhere only to the TrafficTarget's own namespace.
    access_admin_namespaces: tuple[str, ...] = ()
    # workload certificates (issue 17): off, or permissive/strict (the controller's CA signs
    # SPIFFE IDs of trust_domain and proxies hold those of their node's pods)
    mtls: MtlsMode = MtlsMode.OFF
    trust_domain: str = "cluster.local"
    http_ports: PortRange = field(default_factory=lambda: PortRange(5000, 10))
    tcp_ports: PortRange = field(default_factory=lambda: PortRange(10000, 1000))
    udp_ports: PortRange = field(default_factory=lambda: PortRange(15000, 1000))
    # GAMMA capture (issue 16): traffic from local pods to the ClusterIP:port of a Service
    # that is the parent of a GAMMA route is redirected by the node's capture agent to a
    # listener of the node proxy dedicated to that Service port, from this range
    capture: bool = False
    capture_ports: PortRange = field(default_factory=lambda: PortRange(12000, 1000))
    # the node proxies' ServiceAccount, NAMESPACE/NAME ("": <mesh namespace>/simmesh-proxy):
    # the only requester the CA answers, and whose pods give the tunnel addresses. Not a
    # mesh.yaml key: the controller's --proxy-service-account.
    proxy_service_account: str = ""

    @property
    def proxy_account(self) -> tuple[str, str]:
        """The node proxies' ServiceAccount as (namespace, name)."""
        if not self.proxy_service_account:
            return (self.mesh_namespace, PROXY_NAME)
        namespace, _, name = self.proxy_service_account.partition("/")
        return (namespace, name)

    def watches(self, namespace: str) -> bool:
        if namespace == "kube-system" or namespace in self.ignore_namespaces:
            return False
        if namespace == self.mesh_namespace:
            return False
        return not self.watch_namespaces or namespace in self.watch_namespaces
