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

import ipaddress
import re
from typing import Annotated, Literal

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


class ConfigSettings(_Doc, frozen=True, kw_only=True):
    zone: Name
    cluster_domain: Name
    mesh_namespace: Name
    acl: bool


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
        """The TCP/UDP listener of each ``protocol:ns/name:port``, for stable reassignment."""
        return {
            f"{item.protocol}:{item.route}": item.port
            for item in self.listeners
            if item.protocol != "http"
        }


class ConfigError(ValueError):
    """A MeshConfig document that cannot be used, with the field path of the first problem."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}" if path else message)
        self.path = path
        self.message = message


_DECODER = msgspec.json.Decoder(MeshConfig)
_ENCODER = msgspec.json.Encoder(order="sorted")
_AT = re.compile(r"^(.*) - at `\$(.*)`$")


def decode(text: str | bytes) -> MeshConfig:
    """A checked MeshConfig from JSON; raises ConfigError."""
    try:
        config = _DECODER.decode(text)
    except msgspec.ValidationError as exc:
        raise _config_error(exc) from None
    except (msgspec.DecodeError, RecursionError) as exc:
        raise ConfigError("", f"not a MeshConfig JSON document: {exc}") from None
    check(config)
    return config


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


# -- what types cannot say ------------------------------------------------------------------------


def check(config: MeshConfig) -> None:
    """Cross-field checks: raises ConfigError naming the first bad field."""
    for i, listener in enumerate(config.listeners):
        where = f"listeners[{i}]"
        if listener.protocol == "http":
            if str(listener.port) not in config.hosts:
                raise ConfigError(where, f"HTTP listener {listener.port} has no hosts table")
        elif listener.route is None or listener.route not in config.routes:
            raise ConfigError(f"{where}.route", f"expected a route key, got {listener.route!r}")
    for port, table in config.hosts.items():
        if not port.isdigit() or not 1 <= int(port) <= 65535:
            raise ConfigError(f"hosts[{port}]", "expected an HTTP listener port 1..65535")
        for host, key in table.items():
            if key not in config.routes:
                raise ConfigError(f"hosts[{port}][{host}]", f"no route {key!r}")
    for key, route in config.routes.items():
        _check_route(config, key, route)
    for key, cluster in config.clusters.items():
        _check_cluster(key, cluster)
    for ip, identity in config.identities.items():
        _ip(ip, f"identities[{ip}]")
        if identity.count("/") != 1:
            raise ConfigError(f"identities[{ip}]", f"expected namespace/name, got {identity!r}")


def _check_route(config: MeshConfig, key: str, route: Route) -> None:
    where = f"routes[{key}]"
    if route.cluster not in config.clusters:
        raise ConfigError(f"{where}.cluster", f"no cluster {route.cluster!r}")
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
        try:
            patterns.check(pattern)
        except patterns.PatternError as exc:
            message = f"expected an RE2 regular expression: {exc}"
            raise ConfigError(f"{where}.{field}", message) from None


def _ip(text: str, where: str) -> None:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        raise ConfigError(where, f"expected an IP address, got {text[:60]!r}") from None


__all__ = [
    "API_VERSION",
    "CircuitBreaker",
    "Cluster",
    "ConfigError",
    "ConfigSettings",
    "Endpoint",
    "Grant",
    "Listener",
    "Match",
    "MeshConfig",
    "Policy",
    "Problem",
    "RateLimit",
    "Retry",
    "Route",
    "Split",
    "SplitBackend",
    "check",
    "convert",
    "decode",
    "encode",
]
