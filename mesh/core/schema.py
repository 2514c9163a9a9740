"""The MeshConfig schema: one typed structure for the document every proxy receives.

The compiler (:mod:`mesh.core.config`) builds it, the controller serves it as JSON, proxies and
``simmesh explain`` decode it, and :class:`~mesh.core.routing.Router` compiles it into lookup
tables: all of them read and write these types, nothing reads the document by hand.

Decoding is validating (:func:`decode`): types, ranges and enums are checked by msgspec while it
parses (``Expected `int` <= 65535, got `70000` - at `$.listeners[3].port```), then
:func:`check` checks what types cannot say (references that resolve, regexes that compile, IP
addresses, circuit-breaker expressions, a positive split weight, listeners that agree with
their routes). A document that fails is one :class:`ConfigError` naming the field path; a proxy
then keeps its previous config. Unknown fields are ignored, so a newer controller may add some.

The JSON is deterministic: keys sorted, so the same topology gives byte-identical documents and
the same version (a digest of the document without its version).
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from collections.abc import Mapping
from typing import Annotated, Literal, TypeVar

import msgspec

from mesh.core import patterns
from mesh.core.annotations import parse_circuit_breaker_expression

API_VERSION = "simmesh.io/v1alpha1"

Port = Annotated[int, msgspec.Meta(ge=1, le=65535)]
Count = Annotated[int, msgspec.Meta(ge=0, le=2**53)]
Seconds = Annotated[float, msgspec.Meta(ge=0.0, le=86400.0 * 365)]
PositiveSeconds = Annotated[float, msgspec.Meta(gt=0.0, le=86400.0 * 365)]
Name = Annotated[str, msgspec.Meta(min_length=1)]
Protocol = Literal["http", "tcp", "udp"]
Scheme = Literal["http", "https", "h2c"]
Balancer = Literal["round-robin", "least-request"]
RouteKind = Literal["HTTPRouteGroup", "TCPRoute", "UDPRoute"]


class _Doc(msgspec.Struct, frozen=True, kw_only=True, rename="camel", omit_defaults=True):
    """Fields with a default are left out of the JSON when they have it."""


class Mtls(_Doc, frozen=True, kw_only=True):
    """Workload certificates and tunnels (issue 17). ``nodes``: node -> the identities
    (namespace/serviceaccount) of its live pods, which its proxy holds certificates for;
    ``pods``: pod IP -> node, for the IPs with an identity (a caller on the proxy's own node);
    ``proxies``: node -> ``host:port`` of its proxy's mTLS tunnel port."""

    mode: Literal["permissive", "strict"]
    trust_domain: Name
    nodes: dict[str, list[str]] = {}
    pods: dict[str, str] = {}
    proxies: dict[str, str] = {}


class CaptureListener(_Doc, frozen=True, kw_only=True):
    """A GAMMA parent's Service port captured at its ClusterIP (issue 16): the node's capture
    agent redirects TCP to ``ip:servicePort`` from the node's pods to its proxy's listener
    ``port``, and the proxy routes what arrives there as a request to ``route`` (that Service
    port), whatever its Host says."""

    port: Port  # the proxy's capture listener
    route: Name  # namespace/name:port, a key of routes
    ip: Name  # the Service's ClusterIP
    service_port: Port  # the Service port the clients call (routes[route].port)


class Capture(_Doc, frozen=True, kw_only=True):
    """GAMMA capture (the ``capture`` setting): the captured Service ports and, per node, the
    IP of its proxy pod (where its agent redirects to; a node without one captures nothing)."""

    listeners: list[CaptureListener] = []
    proxies: dict[str, str] = {}  # node -> proxy pod IP


class ConfigSettings(_Doc, frozen=True, kw_only=True):
    zone: Name
    cluster_domain: Name
    mesh_namespace: Name
    acl: bool
    mtls: Mtls | None = None  # left out (None) when mTLS is off
    capture: Capture | None = None  # left out (None) when GAMMA capture is off


class Listener(_Doc, frozen=True, kw_only=True):
    port: Port
    protocol: Protocol
    route: str | None = None  # TCP and UDP listeners serve one route


class Endpoint(_Doc, frozen=True, kw_only=True):
    ip: Name
    port: Port
    node: str | None
    identity: str | None  # namespace/serviceaccount of the pod behind it


class Match(_Doc, frozen=True, kw_only=True):
    """An HTTPRouteGroup match: pathRegex anchored at the start, methods, header regexes."""

    name: str
    path_regex: str | None
    methods: list[str] | None
    headers: list[tuple[str, str]]


class Grant(_Doc, frozen=True, kw_only=True):
    target: Name  # namespace/name of the TrafficTarget
    destination: Name  # identity
    sources: list[str]
    kind: RouteKind
    route: Name
    match: Match | None
    ports: list[Port]


class CircuitBreaker(_Doc, frozen=True, kw_only=True):
    expression: Name
    window: PositiveSeconds
    open_duration: Seconds
    min_requests: Count
    check_period: PositiveSeconds


class Cluster(_Doc, frozen=True, kw_only=True):
    """A (service, port): its ready endpoints and, in ACL mode, the grants admitting them."""

    service: Name
    port: Port
    protocol: Protocol
    scheme: Scheme
    endpoints: list[Endpoint]
    load_balancer: Balancer
    circuit_breaker: CircuitBreaker | None
    access: list[Grant] | None = None


class Retry(_Doc, frozen=True, kw_only=True):
    attempts: Count
    non_idempotent: bool
    on_statuses: list[Annotated[int, msgspec.Meta(ge=100, le=599)]]
    backoff: Seconds
    budget: Annotated[float, msgspec.Meta(gt=0.0, le=1.0)] | None


class RateLimit(_Doc, frozen=True, kw_only=True):
    average: Annotated[float, msgspec.Meta(gt=0.0, le=2.0**53)]
    burst: Annotated[int, msgspec.Meta(ge=1, le=2**53)]


class Policy(_Doc, frozen=True, kw_only=True):
    retry: Retry | None
    timeout: PositiveSeconds | None
    request_timeout: PositiveSeconds | None
    rate_limit: RateLimit | None


class SplitBackend(_Doc, frozen=True, kw_only=True):
    service: Name
    weight: Count
    cluster: Name


class Split(_Doc, frozen=True, kw_only=True):
    name: Name  # namespace/name of the TrafficSplit
    backends: list[SplitBackend]
    matches: list[Match]


# -- GAMMA routes (Gateway API HTTPRoute and GRPCRoute with a Service parent) ---------------------


class HeaderEdit(_Doc, frozen=True, kw_only=True):
    """A RequestHeaderModifier or ResponseHeaderModifier."""

    set: list[tuple[str, str]] = []
    add: list[tuple[str, str]] = []
    remove: list[str] = []


class PathChange(_Doc, frozen=True, kw_only=True):
    type: Literal["ReplaceFullPath", "ReplacePrefixMatch"]
    value: str


class Redirect(_Doc, frozen=True, kw_only=True):
    scheme: Literal["http", "https"] | None = None
    hostname: str | None = None
    path: PathChange | None = None
    port: Port | None = None
    status: Literal[301, 302, 303, 307, 308]


class Rewrite(_Doc, frozen=True, kw_only=True):
    hostname: str | None = None
    path: PathChange | None = None


class Mirror(_Doc, frozen=True, kw_only=True):
    """A RequestMirror: a copy of numerator/denominator of the requests to ``cluster``."""

    service: Name
    cluster: Name
    scheme: Scheme
    numerator: Count
    denominator: Annotated[int, msgspec.Meta(ge=1, le=2**31)]


class Filters(_Doc, frozen=True, kw_only=True):
    request_headers: HeaderEdit | None = None
    response_headers: HeaderEdit | None = None
    redirect: Redirect | None = None
    rewrite: Rewrite | None = None
    mirrors: list[Mirror] = []
    unsupported: str | None = None  # a filter simmesh does not perform: the rule answers 500


class RuleBackend(_Doc, frozen=True, kw_only=True):
    """A backendRef: ``cluster`` when it resolves, else ``invalid`` says why (its share of the
    requests gets 500, or 503 for a GRPCRoute)."""

    service: Name
    port: Port | None
    weight: Count
    cluster: Name | None = None
    scheme: Scheme | None = None  # the cluster's own when None
    invalid: str | None = None
    filters: Filters | None = None


class Rule(_Doc, frozen=True, kw_only=True):
    route: Name  # namespace/name
    index: Count  # position in the route's rules
    name: str | None = None
    prefix: str | None = None  # the rule's one PathPrefix match, for ReplacePrefixMatch
    filters: Filters | None = None
    backends: list[RuleBackend] = []
    request_timeout: Seconds | None = None  # 0: no request timeout
    backend_timeout: Seconds | None = None  # 0: no per-try timeout


class ValueMatch(_Doc, frozen=True, kw_only=True):
    name: str
    value: str
    regex: bool = False


class RuleMatch(_Doc, frozen=True, kw_only=True):
    rule: Count  # index into the table's rules
    path_type: Literal["Exact", "PathPrefix", "RegularExpression"]
    path: str
    method: str | None = None
    headers: list[ValueMatch] = []
    query: list[ValueMatch] = []


class RouteTable(_Doc, frozen=True, kw_only=True):
    """The routes of one kind that govern a Service port for a set of callers; ``matches`` are
    in precedence order (mesh.core.gamma): the first that holds picks the rule."""

    kind: Literal["HTTPRoute", "GRPCRoute"]
    routes: list[str]  # namespace/name, oldest first
    rules: list[Rule]
    matches: list[RuleMatch]


class Gamma(_Doc, frozen=True, kw_only=True):
    """GAMMA routes attached to a Service port: the producer routes (in the Service's
    namespace) for every caller, and per namespace the consumer routes for its callers."""

    producer: RouteTable | None = None
    consumers: dict[str, RouteTable] = {}


class Route(_Doc, frozen=True, kw_only=True):
    """What a client reaches by calling a (service, port)."""

    service: Name
    port: Port
    protocol: Protocol
    scheme: Scheme
    listener: Port | None
    cluster: Name
    policy: Policy
    split: Split | None
    gamma: Gamma | None = None


class Problem(_Doc, frozen=True, kw_only=True):
    """A per-object error, as the controller reports it (kind, namespace/name, field)."""

    kind: str
    namespace: str
    name: str
    field: str
    message: str


class MeshConfig(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    """The document a proxy receives. ``version`` is a digest of the document with an empty
    version (:func:`mesh.core.config.config_version`)."""

    api_version: Literal["simmesh.io/v1alpha1"] = "simmesh.io/v1alpha1"
    kind: Literal["MeshConfig"] = "MeshConfig"
    settings: ConfigSettings
    listeners: list[Listener]
    hosts: dict[str, dict[str, str]]  # HTTP listener port -> Host -> route key
    routes: dict[str, Route]
    clusters: dict[str, Cluster]
    identities: dict[str, str]  # pod IP -> identity (ACL mode)
    errors: list[Problem]
    version: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9._-]{1,64}$")]

    def to_json(self, *, indent: int | None = 2) -> str:
        """Sorted-key JSON: compact with ``indent=None``, else indented with a final newline."""
        body = encode(self)
        if indent is None:
            return body.decode()
        return msgspec.json.format(body, indent=indent).decode() + "\n"

    @classmethod
    def from_json(cls, text: str | bytes) -> MeshConfig:
        """A checked config; raises ConfigError naming the field."""
        return decode(text)

    def port_assignments(self) -> dict[str, int]:
        """The TCP/UDP listener of each ``protocol:ns/name:port`` and the capture listener of
        each ``capture:ns/name:port``, for stable reassignment."""
        ports = {
            f"{item.protocol}:{item.route}": item.port
            for item in self.listeners
            if item.protocol != "http"
        }
        capture = self.settings.capture
        for each in capture.listeners if capture is not None else ():
            ports[f"capture:{each.route}"] = each.port
        return ports


class ConfigError(ValueError):
    """A MeshConfig document that cannot be used, with the field path of the first problem."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}" if path else message)
        self.path = path
        self.message = message


_DECODER = msgspec.json.Decoder(MeshConfig)
T = TypeVar("T")
_BAD_HEADER = re.compile(r"[^!#$%&'*+\-.^_`|~0-9A-Za-z]")  # not an RFC 9110 token character
_BAD_VALUE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_ENCODER = msgspec.json.Encoder(order="sorted")
_AT = re.compile(r"^(.*) - at `\$(.*)`$")


def decode(text: str | bytes, previous: MeshConfig | None = None) -> MeshConfig:
    """A checked MeshConfig from JSON; raises ConfigError. ``previous``: a config that was
    checked already, whose equal parts need no second check (see :func:`check`)."""
    config = _document(_DECODER, text)
    check(config, previous)
    return config


def _document(decoder: msgspec.json.Decoder[T], text: str | bytes) -> T:
    """A whole MeshConfig document decoded (or outlined); raises ConfigError."""
    try:
        return decoder.decode(text)
    except msgspec.ValidationError as exc:
        raise _config_error(exc) from None
    except (msgspec.DecodeError, RecursionError) as exc:
        raise ConfigError("", f"not a MeshConfig JSON document: {exc}") from None


class _Outline(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    """A MeshConfig whose routes and clusters are left as their JSON (see ConfigReader)."""

    api_version: Literal["simmesh.io/v1alpha1"] = "simmesh.io/v1alpha1"
    kind: Literal["MeshConfig"] = "MeshConfig"
    settings: ConfigSettings
    listeners: list[Listener]
    hosts: msgspec.Raw
    routes: dict[str, msgspec.Raw]
    clusters: dict[str, msgspec.Raw]
    identities: dict[str, str]
    errors: list[Problem]
    version: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9._-]{1,64}$")]


_OUTLINE = msgspec.json.Decoder(_Outline)
_HOSTS = msgspec.json.Decoder(dict[str, dict[str, str]])
_ROUTE = msgspec.json.Decoder(Route)
_CLUSTER = msgspec.json.Decoder(Cluster)


# -- deltas: what changed between two configs (docs/proxy.md, "Delta answers") -------------------

DELTA_KIND = "MeshConfigDelta"
DELTA_CONTENT_TYPE = "application/vnd.simmesh.meshconfig-delta+json"


class RawDelta(_Doc, frozen=True, kw_only=True):
    """Routes or clusters: the entries added or changed (their JSON as in the full document)
    and the keys removed."""

    put: dict[str, msgspec.Raw] = {}
    remove: list[str] = []


class TextDelta(_Doc, frozen=True, kw_only=True):
    """A table of strings (identities, one HTTP listener's Hosts): entries set, keys removed."""

    put: dict[str, str] = {}
    remove: list[str] = []


class ConfigDelta(_Doc, frozen=True, kw_only=True):
    """The changes that make the config ``base`` into the config ``version``. ``settings``,
    ``listeners`` and ``errors`` replace the base's when present (left out: unchanged);
    ``hosts`` edits each listed HTTP listener's Host table (a new listener starts empty) and
    ``hostsRemoved`` drops whole tables; ``routes``, ``clusters`` and ``identities`` put and
    remove entries. Applied to ``base`` it gives the config whose version is ``version``,
    which the reader checks (:meth:`ConfigReader.read_delta`)."""

    api_version: Literal["simmesh.io/v1alpha1"]  # always written, as the kind
    kind: Literal["MeshConfigDelta"]
    base: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9._-]{1,64}$")]
    version: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9._-]{1,64}$")]
    settings: ConfigSettings | None = None
    listeners: list[Listener] | None = None
    errors: list[Problem] | None = None
    hosts: dict[str, TextDelta] = {}
    hosts_removed: list[str] = []
    routes: RawDelta = RawDelta()
    clusters: RawDelta = RawDelta()
    identities: TextDelta = TextDelta()


_DELTA = msgspec.json.Decoder(ConfigDelta)


class DeltaError(ConfigError):
    """A delta that cannot be applied to the config held (another base, or a result whose
    digest is not the delta's version): the reader's config is unchanged; fetch a full one."""


def encode_parts(
    config: MeshConfig,
    routes: Mapping[str, msgspec.Raw] | None = None,
    clusters: Mapping[str, msgspec.Raw] | None = None,
    hosts: msgspec.Raw | None = None,
) -> bytes:
    """``encode(config)``, byte for byte, with the routes' and clusters' JSON taken from
    ``routes`` and ``clusters`` where they have it, and the Host tables' from ``hosts`` (the
    same encoder and sorted keys: a MeshConfig's fields in the order of their JSON names, as
    a dict of them has)."""
    routes = routes or {}
    clusters = clusters or {}
    if len(routes) != len(config.routes) or routes.keys() != config.routes.keys():
        routes = {k: _raw(routes, k, r) for k, r in config.routes.items()}
    if len(clusters) != len(config.clusters) or clusters.keys() != config.clusters.keys():
        clusters = {k: _raw(clusters, k, c) for k, c in config.clusters.items()}
    return encode_value(
        {
            "apiVersion": config.api_version,
            "clusters": clusters,
            "errors": config.errors,
            "hosts": config.hosts if hosts is None else hosts,
            "identities": config.identities,
            "kind": config.kind,
            "listeners": config.listeners,
            "routes": routes,
            "settings": config.settings,
            "version": config.version,
        }
    )


def _raw(made: Mapping[str, msgspec.Raw], key: str, value: object) -> msgspec.Raw:
    found = made.get(key)
    return found if found is not None else msgspec.Raw(encode_value(value))


def parts_version(
    config: MeshConfig,
    routes: Mapping[str, msgspec.Raw] | None = None,
    clusters: Mapping[str, msgspec.Raw] | None = None,
    hosts: msgspec.Raw | None = None,
) -> str:
    """The version a config should carry (:func:`mesh.core.config.config_version`): the
    digest of its JSON with an empty version, assembled from the parts' JSON at hand."""
    if config.version:
        config = msgspec.structs.replace(config, version="")
    return hashlib.sha256(encode_parts(config, routes, clusters, hosts)).hexdigest()[:16]


class ConfigReader:
    """Reads the successive configs of one source (a proxy's controller or file): a route or
    a cluster whose JSON is byte for byte the last config's is that config's value, neither
    decoded nor checked again; the rest is decoded and checked as :func:`decode` does, and
    the result is equal to ``decode(text)``. At 10,000 Services a change then costs the proxy
    an outline of the document, a comparison of each route's and cluster's bytes and the
    decoding of what changed; and the values it did not decode are the same objects as
    before, which the proxy's compile (:class:`mesh.core.routing.Router`) reuses."""

    def __init__(self) -> None:
        self.config: MeshConfig | None = None  # the last config read
        self._routes: dict[str, msgspec.Raw] = {}
        self._clusters: dict[str, msgspec.Raw] = {}
        self._hosts: msgspec.Raw | None = None  # the Host tables' JSON

    def decode(self, text: str | bytes) -> MeshConfig:
        outline = _document(_OUTLINE, text)
        previous = self.config
        try:
            hosts = _HOSTS.decode(outline.hosts)
        except msgspec.ValidationError as exc:
            inner = _config_error(exc)
            raise ConfigError(f"hosts{inner.path}", inner.message) from None
        routes = _values(
            outline.routes, self._routes, previous.routes if previous else {}, _ROUTE, "routes"
        )
        clusters = _values(
            outline.clusters,
            self._clusters,
            previous.clusters if previous else {},
            _CLUSTER,
            "clusters",
        )
        config = MeshConfig(
            api_version=outline.api_version,
            kind=outline.kind,
            settings=outline.settings,
            listeners=outline.listeners,
            hosts=hosts,
            routes=routes,
            clusters=clusters,
            identities=outline.identities,
            errors=outline.errors,
            version=outline.version,
        )
        check(config, previous)
        self.config = config
        self._routes = outline.routes
        self._clusters = outline.clusters
        self._hosts = outline.hosts
        return config

    def read_delta(self, text: str | bytes) -> MeshConfig:
        """The config a :class:`ConfigDelta` makes of the last config read: decoded and
        checked as :meth:`decode` would the full document (only what changed is decoded),
        and its version verified, the digest of the result's JSON. DeltaError when the
        delta is not for the config held or the digest differs (fetch the full config);
        ConfigError when a part is invalid. Either way the last config stays the base."""
        delta = _document(_DELTA, text)
        previous = self.config
        if previous is None or delta.base != previous.version:
            held = previous.version if previous is not None else "none"
            raise DeltaError("base", f"a delta from {delta.base}, the config held is {held}")
        route_raws = _edited(self._routes, delta.routes)
        cluster_raws = _edited(self._clusters, delta.clusters)
        routes = _put(previous.routes, delta.routes, _ROUTE, "routes")
        clusters = _put(previous.clusters, delta.clusters, _CLUSTER, "clusters")
        hosts = previous.hosts  # the same tables (and JSON) when no Host changed
        hosts_raw = self._hosts
        if delta.hosts or delta.hosts_removed:
            hosts = dict(previous.hosts)
            for port in delta.hosts_removed:
                hosts.pop(port, None)
            for port, edit in delta.hosts.items():
                hosts[port] = _edited(hosts.get(port, {}), edit)
            hosts_raw = msgspec.Raw(encode_value(hosts))
        config = MeshConfig(
            api_version=previous.api_version,
            kind=previous.kind,
            settings=previous.settings if delta.settings is None else delta.settings,
            listeners=previous.listeners if delta.listeners is None else delta.listeners,
            hosts=hosts,
            routes=routes,
            clusters=clusters,
            identities=_edited(previous.identities, delta.identities),
            errors=previous.errors if delta.errors is None else delta.errors,
            version=delta.version,
        )
        check(config, previous)
        got = parts_version(config, route_raws, cluster_raws, hosts_raw)
        if got != delta.version:
            raise DeltaError("version", f"the delta's result has digest {got}, not {delta.version}")
        self.config = config
        self._routes = route_raws
        self._clusters = cluster_raws
        self._hosts = hosts_raw
        return config


V = TypeVar("V")


def _edited(table: Mapping[str, V], edit: RawDelta | TextDelta) -> dict[str, V]:
    """A copy of ``table`` with the delta's keys removed and its entries put."""
    out = dict(table)
    for key in edit.remove:
        out.pop(key, None)
    out.update(edit.put)  # type: ignore[arg-type]  # V is the delta's own value type
    return out


def _put(
    old: Mapping[str, T], edit: RawDelta, decoder: msgspec.json.Decoder[T], where: str
) -> dict[str, T]:
    out = dict(old)
    for key in edit.remove:
        out.pop(key, None)
    for key, raw in edit.put.items():
        try:
            out[key] = decoder.decode(raw)
        except msgspec.ValidationError as exc:
            inner = _config_error(exc)
            path = f"{where}[{key}]" + (f".{inner.path}" if inner.path else "")
            raise ConfigError(path, inner.message) from None
    return out


def _values(
    raws: dict[str, msgspec.Raw],
    old_raws: dict[str, msgspec.Raw],
    old: Mapping[str, T],
    decoder: msgspec.json.Decoder[T],
    where: str,
) -> dict[str, T]:
    out: dict[str, T] = {}
    for key, raw in raws.items():
        value = old.get(key)
        if value is None or old_raws.get(key) != raw:
            try:
                value = decoder.decode(raw)
            except msgspec.ValidationError as exc:
                inner = _config_error(exc)
                path = f"{where}[{key}]" + (f".{inner.path}" if inner.path else "")
                raise ConfigError(path, inner.message) from None
        out[key] = value
    return out


def convert(doc: object) -> MeshConfig:
    """A checked MeshConfig from already parsed data (YAML); raises ConfigError."""
    try:
        config = msgspec.convert(doc, MeshConfig, str_keys=True)
    except msgspec.ValidationError as exc:
        raise _config_error(exc) from None
    check(config)
    return config


def _config_error(exc: msgspec.ValidationError) -> ConfigError:
    message = str(exc)
    found = _AT.match(message)
    if found is None:
        return ConfigError("", message)
    return ConfigError(found.group(2).lstrip("."), found.group(1))


def encode(config: MeshConfig) -> bytes:
    """Compact JSON with sorted keys: byte-identical for the same config."""
    return _ENCODER.encode(config)


def encode_value(value: object) -> bytes:
    """A part of a config (or a dict of parts) as :func:`encode` writes it in a config."""
    return _ENCODER.encode(value)


# -- what types cannot say ------------------------------------------------------------------------


def check(config: MeshConfig, previous: MeshConfig | None = None) -> None:
    """Cross-field checks: raises ConfigError naming the first bad field.

    With ``previous`` (a config that passed this check), a cluster or an identity equal to
    the previous one's is not checked again (its checks read only itself), nor a route equal
    to the previous one's while every previous cluster is still there (its checks read only
    itself and which clusters exist): at 10,000 Services a change then costs the proxy a
    check of what changed, not of 100,000 endpoint addresses."""
    old_clusters = previous.clusters if previous is not None else {}
    old_routes = previous.routes if previous is not None else {}
    old_ids = previous.identities if previous is not None else {}
    old_hosts = previous.hosts if previous is not None else {}
    if any(key not in config.clusters for key in old_clusters):
        old_routes = {}  # a cluster went away: every route's references are checked again
    if any(key not in config.routes for key in old_routes):
        old_hosts = {}  # a route went away: every Host's is checked again
    for i, listener in enumerate(config.listeners):
        where = f"listeners[{i}]"
        if listener.protocol == "http":
            if str(listener.port) not in config.hosts:
                raise ConfigError(where, f"HTTP listener {listener.port} has no hosts table")
        elif listener.route is None or listener.route not in config.routes:
            raise ConfigError(f"{where}.route", f"expected a route key, got {listener.route!r}")
    for port, table in config.hosts.items():
        if old_hosts.get(port) is table:  # the previous config's table (a delta's): checked
            continue
        if not port.isdigit() or not 1 <= int(port) <= 65535:
            raise ConfigError(f"hosts[{port}]", "expected an HTTP listener port 1..65535")
        for host, key in table.items():
            if key not in config.routes:
                raise ConfigError(f"hosts[{port}][{host}]", f"no route {key!r}")
    for key, route in config.routes.items():
        old_route = old_routes.get(key)
        if old_route is not route and old_route != route:
            _check_route(config, key, route)
    for key, cluster in config.clusters.items():
        old_cluster = old_clusters.get(key)
        if old_cluster is not cluster and old_cluster != cluster:
            _check_cluster(key, cluster)
    for ip, identity in config.identities.items():
        if old_ids.get(ip) == identity:
            continue
        _ip(ip, f"identities[{ip}]")
        if identity.count("/") != 1:
            raise ConfigError(f"identities[{ip}]", f"expected namespace/name, got {identity!r}")
    mtls = config.settings.mtls
    for node, identities in (mtls.nodes if mtls is not None else {}).items():
        for i, identity in enumerate(identities):
            if identity.count("/") != 1 or identity.startswith("/") or identity.endswith("/"):
                raise ConfigError(
                    f"settings.mtls.nodes[{node}][{i}]",
                    f"expected namespace/serviceaccount, got {identity!r}",
                )
    for ip in mtls.pods if mtls is not None else {}:
        _ip(ip, f"settings.mtls.pods[{ip}]")
    for node, address in (mtls.proxies if mtls is not None else {}).items():
        _host_port(address, f"settings.mtls.proxies[{node}]")
    if config.settings.capture is not None:
        _check_capture(config, config.settings.capture)


def _check_capture(config: MeshConfig, capture: Capture) -> None:
    taken = {item.port for item in config.listeners}
    for i, each in enumerate(capture.listeners):
        where = f"settings.capture.listeners[{i}]"
        if each.port in taken:
            raise ConfigError(f"{where}.port", f"port {each.port} is already a listener's")
        taken.add(each.port)
        route = config.routes.get(each.route)
        if route is None:
            raise ConfigError(f"{where}.route", f"no route {each.route!r}")
        if route.protocol != "http":
            raise ConfigError(f"{where}.route", f"expected an HTTP route, got {route.protocol}")
        if route.port != each.service_port:
            raise ConfigError(f"{where}.servicePort", f"expected the route's port {route.port}")
        _ip(each.ip, f"{where}.ip")
    for node, ip in capture.proxies.items():
        _ip(ip, f"settings.capture.proxies[{node}]")


def _check_route(config: MeshConfig, key: str, route: Route) -> None:
    where = f"routes[{key}]"
    if route.cluster not in config.clusters:
        raise ConfigError(f"{where}.cluster", f"no cluster {route.cluster!r}")
    if route.gamma is not None:
        if route.gamma.producer is not None:
            _check_table(config, route.gamma.producer, f"{where}.gamma.producer")
        for namespace, table in route.gamma.consumers.items():
            _check_table(config, table, f"{where}.gamma.consumers[{namespace}]")
    split = route.split
    if split is None:
        return
    for i, backend in enumerate(split.backends):
        if backend.cluster not in config.clusters:
            raise ConfigError(f"{where}.split.backends[{i}].cluster", "no such cluster")
    if not any(b.weight > 0 for b in split.backends):
        raise ConfigError(f"{where}.split.backends", "expected a backend with a positive weight")
    for i, match in enumerate(split.matches):
        _check_match(match, f"{where}.split.matches[{i}]")


def _check_table(config: MeshConfig, table: RouteTable, where: str) -> None:
    for i, rule in enumerate(table.rules):
        at = f"{where}.rules[{i}]"
        _check_filters(config, rule.filters, f"{at}.filters")
        for j, backend in enumerate(rule.backends):
            if backend.cluster is not None and backend.cluster not in config.clusters:
                raise ConfigError(f"{at}.backends[{j}].cluster", "no such cluster")
            if backend.cluster is None and backend.invalid is None:
                raise ConfigError(f"{at}.backends[{j}]", "expected a cluster or why it is invalid")
            _check_filters(config, backend.filters, f"{at}.backends[{j}].filters")
        wants = [rule.filters, *(b.filters for b in rule.backends)]
        if rule.prefix is None and any(_replaces_prefix(f) for f in wants):
            raise ConfigError(f"{at}.prefix", "ReplacePrefixMatch needs the rule's PathPrefix")
    for i, match in enumerate(table.matches):
        at = f"{where}.matches[{i}]"
        if match.rule >= len(table.rules):
            raise ConfigError(f"{at}.rule", f"no rule {match.rule}")
        regexes = [("path", match.path)] if match.path_type == "RegularExpression" else []
        regexes += [(f"headers[{v.name}]", v.value) for v in match.headers if v.regex]
        regexes += [(f"query[{v.name}]", v.value) for v in match.query if v.regex]
        for field, pattern in regexes:
            _check_pattern(pattern, f"{at}.{field}")


def _check_filters(config: MeshConfig, filters: Filters | None, where: str) -> None:
    if filters is None:
        return
    for i, mirror in enumerate(filters.mirrors):
        if mirror.cluster not in config.clusters:
            raise ConfigError(f"{where}.mirrors[{i}].cluster", "no such cluster")
        if mirror.numerator > mirror.denominator:
            raise ConfigError(f"{where}.mirrors[{i}]", "numerator over denominator")
    for name, edit in (
        ("requestHeaders", filters.request_headers),
        ("responseHeaders", filters.response_headers),
    ):
        if edit is None:
            continue
        for field, value in [*edit.set, *edit.add]:
            if _BAD_HEADER.search(field) or _BAD_VALUE.search(value):
                raise ConfigError(f"{where}.{name}", f"a header line that breaks HTTP: {field!r}")


def _replaces_prefix(filters: Filters | None) -> bool:
    if filters is None:
        return False
    changes = (filters.rewrite, filters.redirect)
    return any(
        c is not None and c.path is not None and c.path.type == "ReplacePrefixMatch"
        for c in changes
    )


def _check_pattern(pattern: str, where: str) -> None:
    try:
        patterns.check(pattern)
    except patterns.PatternError as exc:
        raise ConfigError(where, f"expected an RE2 regular expression: {exc}") from None


def _check_cluster(key: str, cluster: Cluster) -> None:
    where = f"clusters[{key}]"
    for i, endpoint in enumerate(cluster.endpoints):
        _ip(endpoint.ip, f"{where}.endpoints[{i}].ip")
    if cluster.circuit_breaker is not None:
        try:
            parse_circuit_breaker_expression(cluster.circuit_breaker.expression)
        except ValueError as exc:
            raise ConfigError(f"{where}.circuitBreaker.expression", str(exc)) from None
    for i, grant in enumerate(cluster.access or ()):
        if grant.match is not None:
            _check_match(grant.match, f"{where}.access[{i}].match")


def _check_match(match: Match, where: str) -> None:
    regexes = [("pathRegex", match.path_regex)] if match.path_regex is not None else []
    regexes += [(f"headers[{name}]", value) for name, value in match.headers]
    for field, pattern in regexes:
        _check_pattern(pattern, f"{where}.{field}")


def _ip(text: str, where: str) -> None:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        raise ConfigError(where, f"expected an IP address, got {text[:60]!r}") from None


def host_port(text: str) -> tuple[str, int]:
    """``ip:port`` (``[ip6]:port``) as (ip, port); ValueError naming what is wrong."""
    host, sep, port_text = text.rpartition(":")
    if not sep or not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ValueError(f"expected IP:PORT with a port in 1..65535, got {text[:60]!r}")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"expected IP:PORT with an IP address, got {text[:60]!r}") from None
    return host, int(port_text)


def _host_port(text: str, where: str) -> None:
    try:
        host_port(text)
    except ValueError as exc:
        raise ConfigError(where, str(exc)) from None


__all__ = [
    "API_VERSION",
    "DELTA_CONTENT_TYPE",
    "DELTA_KIND",
    "Capture",
    "CaptureListener",
    "CircuitBreaker",
    "Cluster",
    "ConfigDelta",
    "ConfigError",
    "ConfigReader",
    "ConfigSettings",
    "DeltaError",
    "Endpoint",
    "Filters",
    "Gamma",
    "Grant",
    "HeaderEdit",
    "Listener",
    "Match",
    "MeshConfig",
    "Mirror",
    "PathChange",
    "Policy",
    "Problem",
    "RateLimit",
    "RawDelta",
    "Redirect",
    "Retry",
    "Rewrite",
    "Route",
    "RouteTable",
    "Rule",
    "RuleBackend",
    "RuleMatch",
    "Split",
    "SplitBackend",
    "TextDelta",
    "ValueMatch",
    "check",
    "convert",
    "decode",
    "encode",
    "encode_parts",
    "encode_value",
    "host_port",
    "parts_version",
]
