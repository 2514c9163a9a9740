"""Parsing Kubernetes and SMI objects from plain dicts (YAML manifests or API responses).

Each ``parse_*`` function takes one object and returns a frozen value from :mod:`mesh.core.model`
or raises :class:`~mesh.core.errors.InvalidObject` with the field path and what was expected.
:func:`parse_objects` applies them to a batch and keeps one error per bad object, so a malformed
object never prevents the others from being read.

SMI versions: access v1alpha1-3, specs v1alpha1-4, split v1alpha1-4 (see shared/SMI.md).
Gateway API HTTPRoute (v1, v1beta1) and GRPCRoute (v1) are read by :mod:`mesh.core.gateway`.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from mesh.core import gateway, patterns
from mesh.core.errors import InvalidObject, ObjectError, describe
from mesh.core.fields import (
    DNS_1035_LABEL,
    boolean,
    dns_label,
    dns_name,
    domain,
    entries,
    integer,
    ip_address,
    mapping,
    object_meta,
    optional_name,
    port_number,
    seq,
    string,
    string_map,
)
from mesh.core.fields import object_ref as object_ref  # re-exported
from mesh.core.model import (
    POD_PHASES,
    PROXY_NAME_LABEL,
    TUNNEL_PORT_NAME,
    EndpointSlice,
    GatewayRoute,
    HTTPMatch,
    HTTPRouteGroup,
    Identity,
    MtlsMode,
    Node,
    Pod,
    PortMatch,
    PortRange,
    PortRoute,
    ProxyPod,
    RejectedRoute,
    Service,
    ServicePort,
    Settings,
    SliceEndpoint,
    SlicePort,
    SplitBackend,
    TrafficRule,
    TrafficSplit,
    TrafficTarget,
    TrafficType,
)

HTTP_METHODS = frozenset(
    ["GET", "HEAD", "PUT", "POST", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"]
)
ROUTE_KINDS = ("HTTPRouteGroup", "TCPRoute", "UDPRoute")
_ACCESS = "access.smi-spec.io/"
_SPECS = "specs.smi-spec.io/"
_SPLIT = "split.smi-spec.io/"
SUPPORTED_VERSIONS: dict[str, tuple[str, ...]] = {
    "TrafficTarget": tuple(_ACCESS + v for v in ("v1alpha1", "v1alpha2", "v1alpha3")),
    "HTTPRouteGroup": tuple(_SPECS + v for v in ("v1alpha1", "v1alpha2", "v1alpha3", "v1alpha4")),
    "TCPRoute": tuple(_SPECS + v for v in ("v1alpha1", "v1alpha2", "v1alpha3", "v1alpha4")),
    "UDPRoute": (_SPECS + "v1alpha4",),
    "TrafficSplit": tuple(_SPLIT + v for v in ("v1alpha1", "v1alpha2", "v1alpha3", "v1alpha4")),
    **gateway.VERSIONS,
    "Service": ("v1",),
    "EndpointSlice": ("discovery.k8s.io/v1",),
    "Pod": ("v1",),
    "ProxyPod": ("v1",),  # a Pod of the proxies' namespace, stored under its own kind
    "Node": ("v1",),
}
# ---------------------------------------------------------------------------------------------
# Kubernetes core objects


def parse_service(doc: Mapping[str, Any]) -> Service:
    namespace, name = object_meta(doc)
    if len(name) > 63 or not DNS_1035_LABEL.fullmatch(name):
        # the apiserver's rule for Services; a dot would also make <svc>.<ns>.mesh ambiguous
        raise InvalidObject(
            "metadata.name", f"expected a DNS-1035 label (a Service name), got {describe(name)}"
        )
    meta = mapping(doc.get("metadata"), "metadata")
    spec = mapping(doc.get("spec"), "spec")
    kind = string(spec.get("type"), "spec.type", required=False, default="ClusterIP")
    if kind not in ("ClusterIP", "NodePort", "LoadBalancer", "ExternalName"):
        raise InvalidObject(
            "spec.type",
            f"expected ClusterIP, NodePort, LoadBalancer or ExternalName, got {describe(kind)}",
        )
    cluster_ip = string(spec.get("clusterIP"), "spec.clusterIP", required=False) or None
    headless = cluster_ip == "None"
    if headless:
        cluster_ip = None
    ports = []
    for i, raw in enumerate(seq(spec.get("ports"), "spec.ports")):
        path = f"spec.ports[{i}]"
        item = mapping(raw, path)
        port = port_number(item.get("port"), f"{path}.port")
        target = item.get("targetPort", port)
        if isinstance(target, str) and not target.isdecimal():
            string(target, f"{path}.targetPort")
        elif isinstance(target, str):
            target = port_number(int(target), f"{path}.targetPort")
        else:
            target = port_number(target, f"{path}.targetPort")
        protocol = string(item.get("protocol"), f"{path}.protocol", required=False, default="TCP")
        if protocol not in ("TCP", "UDP", "SCTP"):
            raise InvalidObject(f"{path}.protocol", f"expected TCP, UDP or SCTP, got {protocol!r}")
        port_name = string(item.get("name"), f"{path}.name", required=False)
        app = string(item.get("appProtocol"), f"{path}.appProtocol", required=False) or None
        ports.append(ServicePort(port_name, port, target, protocol, app))
    if len({p.port for p in ports}) != len(ports):
        raise InvalidObject("spec.ports", "port numbers must be unique")
    return Service(
        namespace=namespace,
        name=name,
        type=kind,
        cluster_ip=cluster_ip,
        ports=tuple(ports),
        annotations=string_map(meta.get("annotations"), "metadata.annotations"),
        selector=string_map(spec.get("selector"), "spec.selector"),
        headless=headless,
    )


def parse_endpoint_slice(doc: Mapping[str, Any]) -> EndpointSlice:
    namespace, name = object_meta(doc)
    labels = mapping(mapping(doc.get("metadata"), "metadata").get("labels"), "metadata.labels")
    service = dns_name(
        labels.get("kubernetes.io/service-name"), "metadata.labels[kubernetes.io/service-name]"
    )
    address_type = string(doc.get("addressType"), "addressType", required=False, default="IPv4")
    if address_type not in ("IPv4", "IPv6", "FQDN"):
        raise InvalidObject("addressType", f"expected IPv4, IPv6 or FQDN, got {address_type!r}")
    ports = []
    for i, raw in enumerate(seq(doc.get("ports"), "ports")):
        item = mapping(raw, f"ports[{i}]")
        ports.append(
            SlicePort(
                string(item.get("name"), f"ports[{i}].name", required=False),
                port_number(item.get("port"), f"ports[{i}].port"),
                string(item.get("protocol"), f"ports[{i}].protocol", required=False, default="TCP"),
            )
        )
    endpoints = []
    for i, raw in enumerate(seq(doc.get("endpoints"), "endpoints")):
        path = f"endpoints[{i}]"
        item = mapping(raw, path)
        addresses = tuple(
            string(a, f"{path}.addresses[{j}]")
            for j, a in enumerate(seq(item.get("addresses"), f"{path}.addresses"))
        )
        if not addresses:
            raise InvalidObject(f"{path}.addresses", "expected at least one address")
        if address_type != "FQDN":
            for j, address in enumerate(addresses):
                ip_address(address, address_type, f"{path}.addresses[{j}]")
        conditions = mapping(item.get("conditions"), f"{path}.conditions")
        ready = boolean(conditions.get("ready"), f"{path}.conditions.ready", True)
        ref = mapping(item.get("targetRef"), f"{path}.targetRef")
        pod = None
        if ref.get("kind", "Pod") == "Pod" and ref.get("name") is not None:
            pod = dns_name(ref.get("name"), f"{path}.targetRef.name")
        node = optional_name(item.get("nodeName"), f"{path}.nodeName")
        if address_type != "FQDN":
            endpoints.append(SliceEndpoint(addresses, ready, node, pod))
    return EndpointSlice(namespace, name, service, tuple(ports), tuple(endpoints))


def parse_pod(doc: Mapping[str, Any]) -> Pod:
    namespace, name = object_meta(doc)
    spec = mapping(doc.get("spec"), "spec")
    status = mapping(doc.get("status"), "status")
    account = optional_name(spec.get("serviceAccountName"), "spec.serviceAccountName") or "default"
    ips = [string(status.get("podIP"), "status.podIP", required=False)]
    for i, raw in enumerate(seq(status.get("podIPs"), "status.podIPs")):
        ips.append(string(mapping(raw, f"status.podIPs[{i}]").get("ip"), f"status.podIPs[{i}].ip"))
    unique: tuple[str, ...] = ()
    for i, ip in enumerate(ips):
        if ip and ip not in unique:
            try:
                ipaddress.ip_address(ip)
            except ValueError:
                where = "status.podIP" if i == 0 else f"status.podIPs[{i - 1}].ip"
                raise InvalidObject(where, f"expected an IP address, got {ip[:60]!r}") from None
            unique += (ip,)
    node = optional_name(spec.get("nodeName"), "spec.nodeName")
    phase = string(status.get("phase"), "status.phase", required=False, default="Running")
    if phase not in POD_PHASES:
        raise InvalidObject(
            "status.phase",
            f"expected one of {', '.join(sorted(POD_PHASES))}, got {describe(phase)}",
        )
    host_network = boolean(spec.get("hostNetwork"), "spec.hostNetwork", False)
    return Pod(namespace, name, account, unique, node, phase, host_network)


def parse_proxy_pod(doc: Mapping[str, Any]) -> ProxyPod:
    """A Pod of the node proxies' namespace (the controller reads them with mTLS on, as kind
    ``ProxyPod``): whether it may be a proxy and where its tunnel listens. Which pods count is
    mesh.core.topology.tunnel_addresses' decision, not this one's."""
    namespace, name = object_meta(doc)
    meta = mapping(doc.get("metadata"), "metadata")
    spec = mapping(doc.get("spec"), "spec")
    status = mapping(doc.get("status"), "status")
    account = optional_name(spec.get("serviceAccountName"), "spec.serviceAccountName") or "default"
    labels = dict(string_map(meta.get("labels"), "metadata.labels"))
    ip = string(status.get("podIP"), "status.podIP", required=False) or None
    if ip is not None:
        try:
            ipaddress.ip_address(ip)
        except ValueError:
            raise InvalidObject(
                "status.podIP", f"expected an IP address, got {ip[:60]!r}"
            ) from None
    tunnel: int | None = None
    for i, raw in enumerate(seq(spec.get("containers"), "spec.containers")):
        container = mapping(raw, f"spec.containers[{i}]")
        for j, raw_port in enumerate(seq(container.get("ports"), f"spec.containers[{i}].ports")):
            path = f"spec.containers[{i}].ports[{j}]"
            port = mapping(raw_port, path)
            if port.get("name") == TUNNEL_PORT_NAME and tunnel is None:
                tunnel = port_number(port.get("containerPort"), f"{path}.containerPort")
    ready = False
    for i, raw in enumerate(seq(status.get("conditions"), "status.conditions")):
        condition = mapping(raw, f"status.conditions[{i}]")
        if condition.get("type") == "Ready":
            ready = condition.get("status") == "True"
    phase = string(status.get("phase"), "status.phase", required=False, default="Pending")
    created = string(meta.get("creationTimestamp"), "metadata.creationTimestamp", required=False)
    return ProxyPod(
        namespace=namespace,
        name=name,
        service_account=account,
        app_name=labels.get(PROXY_NAME_LABEL),
        node=optional_name(spec.get("nodeName"), "spec.nodeName"),
        ip=ip,
        tunnel_port=tunnel,
        ready=ready and phase == "Running",
        terminating=meta.get("deletionTimestamp") is not None,
        created=created,
    )


def parse_node(doc: Mapping[str, Any]) -> Node:
    meta = mapping(doc.get("metadata"), "metadata")
    name = dns_name(meta.get("name"), "metadata.name")
    status = mapping(doc.get("status"), "status")
    addresses = []
    for i, raw in enumerate(seq(status.get("addresses"), "status.addresses")):
        path = f"status.addresses[{i}]"
        addresses.append(string(mapping(raw, path).get("address"), f"{path}.address"))
    return Node(name, tuple(addresses))


# ---------------------------------------------------------------------------------------------
# SMI


def _identity(raw: Any, path: str, default_namespace: str) -> Identity:
    item = mapping(raw, path)
    kind = string(item.get("kind"), f"{path}.kind", required=False, default="ServiceAccount")
    if kind != "ServiceAccount":
        raise InvalidObject(f"{path}.kind", f"expected ServiceAccount, got {describe(kind)}")
    name = dns_name(item.get("name"), f"{path}.name")
    namespace = dns_label(item.get("namespace"), f"{path}.namespace", required=False)
    return Identity(namespace or default_namespace, name)


def _v1alpha1_layout(doc: Mapping[str, Any], top_level_key: str) -> bool:
    """Written as v1alpha1 (fields at the top level, no spec). The CRDs serve every version
    with conversion None, so the API server hands such an object to a client that watches
    the storage version under that version's apiVersion, in the layout it was written in."""
    version = str(doc.get("apiVersion", ""))
    return version.endswith("/v1alpha1") or ("spec" not in doc and top_level_key in doc)


def parse_traffic_target(doc: Mapping[str, Any]) -> TrafficTarget:
    namespace, name = object_meta(doc)
    if _v1alpha1_layout(doc, "destination"):
        body, prefix, rules_key = doc, "", "specs"
    else:
        body, prefix, rules_key = mapping(doc.get("spec"), "spec"), "spec.", "rules"
    if body.get("destination") is None:
        raise InvalidObject(f"{prefix}destination", "required, expected a ServiceAccount")
    destination = _identity(body.get("destination"), f"{prefix}destination", namespace)
    sources = tuple(
        _identity(raw, f"{prefix}sources[{i}]", namespace)
        for i, raw in enumerate(seq(body.get("sources"), f"{prefix}sources"))
    )
    if not sources:
        raise InvalidObject(f"{prefix}sources", "expected at least one source ServiceAccount")
    rules = []
    for i, raw in enumerate(seq(body.get(rules_key), f"{prefix}{rules_key}")):
        path = f"{prefix}{rules_key}[{i}]"
        item = mapping(raw, path)
        kind = string(item.get("kind"), f"{path}.kind")
        if kind not in ROUTE_KINDS:
            raise InvalidObject(
                f"{path}.kind",
                f"expected one of {', '.join(ROUTE_KINDS)}, got {describe(kind)}",
            )
        matches = None
        if item.get("matches") is not None:
            matches = tuple(
                string(m, f"{path}.matches[{j}]")
                for j, m in enumerate(seq(item.get("matches"), f"{path}.matches"))
            )
        rules.append(TrafficRule(kind, dns_name(item.get("name"), f"{path}.name"), matches))
    if not rules:
        raise InvalidObject(
            f"{prefix}{rules_key}",
            "expected at least one rule (a TrafficTarget without rules grants nothing)",
        )
    return TrafficTarget(namespace, name, destination, sources, tuple(rules))


def _header_matches(value: Any, path: str) -> tuple[tuple[str, str], ...]:
    pairs: list[tuple[str, str]] = []
    if isinstance(value, list):
        for i, raw in enumerate(value):
            for key, regex in entries(raw, f"{path}[{i}]"):
                pairs.append((str(key), _regex(regex, f"{path}[{i}].{key}")))
    else:
        for key, regex in entries(value, path):
            pairs.append((str(key), _regex(regex, f"{path}.{key}")))
    return tuple((k.lower(), v) for k, v in pairs)


def _regex(value: Any, path: str) -> str:
    text = string(value, path)
    try:
        patterns.check(text)
    except patterns.PatternError as exc:
        raise InvalidObject(path, f"expected an RE2 regular expression: {exc}") from None
    return text


def parse_http_route_group(doc: Mapping[str, Any]) -> HTTPRouteGroup:
    namespace, name = object_meta(doc)
    if _v1alpha1_layout(doc, "matches"):
        raw_matches, prefix = doc.get("matches"), ""
    else:
        raw_matches, prefix = mapping(doc.get("spec"), "spec").get("matches"), "spec."
    matches = []
    for i, raw in enumerate(seq(raw_matches, f"{prefix}matches")):
        path = f"{prefix}matches[{i}]"
        item = mapping(raw, path)
        path_regex = None
        if item.get("pathRegex") not in (None, ""):
            path_regex = _regex(item.get("pathRegex"), f"{path}.pathRegex")
        methods: frozenset[str] | None = None
        if item.get("methods") is not None:
            listed = [
                string(m, f"{path}.methods[{j}]").upper()
                for j, m in enumerate(seq(item.get("methods"), f"{path}.methods"))
            ]
            for j, method in enumerate(listed):
                if method != "*" and method not in HTTP_METHODS:
                    raise InvalidObject(
                        f"{path}.methods[{j}]",
                        f"expected * or an HTTP method ({', '.join(sorted(HTTP_METHODS))}), "
                        f"got {describe(method)}",
                    )
            methods = None if ("*" in listed or not listed) else frozenset(listed)
        headers = _header_matches(item.get("headers"), f"{path}.headers")
        matches.append(
            HTTPMatch(string(item.get("name"), f"{path}.name"), path_regex, methods, headers)
        )
    names = [m.name for m in matches]
    if len(set(names)) != len(names):
        raise InvalidObject(f"{prefix}matches", "match names must be unique")
    return HTTPRouteGroup(namespace, name, tuple(matches))


def parse_port_route(doc: Mapping[str, Any]) -> PortRoute:
    namespace, name = object_meta(doc)
    kind = str(doc.get("kind"))
    spec = mapping(doc.get("spec"), "spec")
    raw = spec.get("matches")
    items = raw if isinstance(raw, list) else ([] if raw is None else [raw])
    matches = []
    for i, item in enumerate(items):
        path = f"spec.matches[{i}]" if isinstance(raw, list) else "spec.matches"
        body = mapping(item, path)
        ports = tuple(
            port_number(p, f"{path}.ports[{j}]")
            for j, p in enumerate(seq(body.get("ports"), f"{path}.ports"))
        )
        matches.append(PortMatch(string(body.get("name"), f"{path}.name", required=False), ports))
    if not matches:
        matches.append(PortMatch("", ()))
    return PortRoute(kind, namespace, name, tuple(matches))


_QUANTITY = re.compile(r"^([0-9]+(?:\.[0-9]+)?)(m|k|M|G|Ki|Mi|Gi)?$")
_SCALE = {
    None: 1000,
    "m": 1,
    "k": 10**6,
    "M": 10**9,
    "G": 10**12,
    "Ki": 1024 * 1000,
    "Mi": 1024**2 * 1000,
    "Gi": 1024**3 * 1000,
}


def parse_quantity_milli(value: Any, path: str) -> int:
    """A Kubernetes quantity in thousandths: ``1`` -> 1000, ``500m`` -> 500."""
    if isinstance(value, bool):
        raise InvalidObject(path, f"expected a quantity such as 1 or 500m, got {describe(value)}")
    if isinstance(value, int):
        if value < 0:
            raise InvalidObject(path, f"expected a non-negative quantity, got {value}")
        return value * 1000
    if isinstance(value, float):
        if not 0 <= value < float("inf"):  # also NaN
            raise InvalidObject(path, f"expected a non-negative quantity, got {value}")
        return round(value * 1000)
    match = _QUANTITY.match(value) if isinstance(value, str) else None
    if match is None:
        raise InvalidObject(path, f"expected a quantity such as 1 or 500m, got {describe(value)}")
    number, suffix = match.groups()
    whole, _, frac = number.partition(".")
    scaled = int(whole) * _SCALE[suffix]
    if frac:
        scaled += int(frac) * _SCALE[suffix] // 10 ** len(frac)
    return scaled


def parse_traffic_split(doc: Mapping[str, Any]) -> TrafficSplit:
    namespace, name = object_meta(doc)
    version = str(doc.get("apiVersion", ""))
    spec = mapping(doc.get("spec"), "spec")
    service = dns_name(spec.get("service"), "spec.service")
    raw_backends = seq(spec.get("backends"), "spec.backends")
    # v1alpha1 weights are quantities. Read through the storage version v1alpha4 (the CRDs
    # convert nothing) they are still the strings the user wrote, so there a string weight
    # means quantities throughout; v1alpha2 and v1alpha3 take integers only.
    quantities = version.endswith("/v1alpha1") or (
        version.endswith("/v1alpha4")
        and any(isinstance(b, Mapping) and isinstance(b.get("weight"), str) for b in raw_backends)
    )
    backends = []
    for i, raw in enumerate(raw_backends):
        path = f"spec.backends[{i}]"
        item = mapping(raw, path)
        backend = dns_name(item.get("service"), f"{path}.service")
        if quantities:
            weight = parse_quantity_milli(item.get("weight"), f"{path}.weight")
        else:
            weight = integer(item.get("weight"), f"{path}.weight", low=0, high=2**31 - 1)
        backends.append(SplitBackend(backend, weight))
    if not backends:
        raise InvalidObject("spec.backends", "expected at least one backend")
    if len({b.service for b in backends}) != len(backends):
        raise InvalidObject("spec.backends", "each backend service may appear only once")
    matches = []
    for i, raw in enumerate(seq(spec.get("matches"), "spec.matches")):
        path = f"spec.matches[{i}]"
        item = mapping(raw, path)
        kind = string(item.get("kind"), f"{path}.kind", required=False, default="HTTPRouteGroup")
        if kind != "HTTPRouteGroup":
            raise InvalidObject(f"{path}.kind", f"expected HTTPRouteGroup, got {describe(kind)}")
        matches.append((kind, dns_name(item.get("name"), f"{path}.name")))
    return TrafficSplit(namespace, name, service, tuple(backends), tuple(matches))


PARSERS: dict[str, Any] = {
    "Service": parse_service,
    "EndpointSlice": parse_endpoint_slice,
    "Pod": parse_pod,
    "ProxyPod": parse_proxy_pod,
    "Node": parse_node,
    "TrafficTarget": parse_traffic_target,
    "HTTPRouteGroup": parse_http_route_group,
    "TCPRoute": parse_port_route,
    "UDPRoute": parse_port_route,
    "TrafficSplit": parse_traffic_split,
    "HTTPRoute": gateway.parse_gateway_route,
    "GRPCRoute": gateway.parse_gateway_route,
}


@dataclass(slots=True)
class ClusterState:
    """Everything the topology is built from, keyed by ``namespace/name`` (``name`` for nodes)."""

    services: dict[str, Service] = field(default_factory=dict)
    endpoint_slices: dict[str, EndpointSlice] = field(default_factory=dict)
    pods: dict[str, Pod] = field(default_factory=dict)
    proxy_pods: dict[str, ProxyPod] = field(default_factory=dict)  # read with mTLS on only
    nodes: dict[str, Node] = field(default_factory=dict)
    traffic_targets: dict[str, TrafficTarget] = field(default_factory=dict)
    http_route_groups: dict[str, HTTPRouteGroup] = field(default_factory=dict)
    tcp_routes: dict[str, PortRoute] = field(default_factory=dict)
    udp_routes: dict[str, PortRoute] = field(default_factory=dict)
    traffic_splits: dict[str, TrafficSplit] = field(default_factory=dict)
    http_routes: dict[str, GatewayRoute] = field(default_factory=dict)
    grpc_routes: dict[str, GatewayRoute] = field(default_factory=dict)
    # routes rejected as a whole, by (kind, namespace, name): their status says why
    rejected_routes: dict[tuple[str, str, str], RejectedRoute] = field(default_factory=dict)
    errors: list[ObjectError] = field(default_factory=list)

    def add(self, value: Any) -> None:
        if isinstance(value, RejectedRoute):
            self.rejected_routes[(value.kind, value.namespace, value.name)] = value
            return
        table = self._table(value)
        key = value.name if isinstance(value, Node) else f"{value.namespace}/{value.name}"
        table[key] = value

    def _table(self, value: Any) -> dict[str, Any]:
        if isinstance(value, PortRoute):
            return self.tcp_routes if value.kind == "TCPRoute" else self.udp_routes
        if isinstance(value, GatewayRoute):
            return self.http_routes if value.kind == "HTTPRoute" else self.grpc_routes
        tables: dict[type, dict[str, Any]] = {
            Service: self.services,
            EndpointSlice: self.endpoint_slices,
            Pod: self.pods,
            ProxyPod: self.proxy_pods,
            Node: self.nodes,
            TrafficTarget: self.traffic_targets,
            HTTPRouteGroup: self.http_route_groups,
            TrafficSplit: self.traffic_splits,
        }
        return tables[type(value)]


def parse_object(doc: Any) -> Any:
    """Parse one object of a kind the mesh reads; None for kinds it does not read."""
    if not isinstance(doc, Mapping):
        raise InvalidObject("", f"expected an object, got {describe(doc)}")
    kind = doc.get("kind")
    parser = PARSERS.get(kind) if isinstance(kind, str) else None
    if parser is None:
        return None
    version = doc.get("apiVersion")
    gateway_kind = isinstance(version, str) and version.startswith(gateway.GROUP + "/")
    if gateway_kind and kind not in gateway.VERSIONS:
        return None  # Gateway API's TCPRoute or UDPRoute (not SMI's): not read
    if version not in SUPPORTED_VERSIONS[str(kind)]:
        expected = ", ".join(SUPPORTED_VERSIONS[str(kind)])
        raise InvalidObject("apiVersion", f"expected one of {expected}, got {describe(version)}")
    return parser(doc)


def parse_objects(docs: Iterable[Any], state: ClusterState | None = None) -> ClusterState:
    """Parse a batch of objects into a :class:`ClusterState`, one error per bad object."""
    state = state if state is not None else ClusterState()
    for doc in docs:
        try:
            value = parse_object(doc)
        except InvalidObject as exc:
            state.errors.append(ObjectError(object_ref(doc), exc.field, exc.message))
            rejected = rejected_value(doc, exc)
            if rejected is not None:
                state.add(rejected)
            continue
        if value is not None:
            state.add(value)
    return state


def rejected_value(doc: Any, error: InvalidObject) -> RejectedRoute | None:
    """What is kept of an object :func:`parse_object` rejected: a GAMMA route's name and Service
    parents (its status says why it is not used); None for everything else."""
    kind = doc.get("kind") if isinstance(doc, Mapping) else None
    if not isinstance(kind, str) or kind not in gateway.VERSIONS:
        return None  # a kind that is a list or a mapping is not hashable: check it is text
    if doc.get("apiVersion") not in gateway.VERSIONS[kind]:
        return None
    return gateway.rejected_route(doc, error)


# ---------------------------------------------------------------------------------------------
# Settings


def _port_range(raw: Any, path: str, default: PortRange) -> PortRange:
    item = mapping(raw, path)
    start = item.get("start", default.start)
    size = item.get("size", default.size)
    first = port_number(start, f"{path}.start")
    return PortRange(first, integer(size, f"{path}.size", low=1, high=min(10000, 65536 - first)))


def _span(ports: PortRange) -> str:
    return f"{ports.start}..{ports.start + ports.size - 1}"


def settings_doc(settings: Settings) -> dict[str, Any]:
    """The settings as mesh.yaml: what :func:`parse_settings` reads back (the local mesh's
    file provider, a snapshot, the admission gate's scenario)."""
    return {
        "zone": settings.zone,
        "clusterDomain": settings.cluster_domain,
        "meshNamespace": settings.mesh_namespace,
        "defaultTrafficType": settings.default_traffic_type.value,
        "acl": settings.acl,
        "watchNamespaces": list(settings.watch_namespaces),
        "ignoreNamespaces": list(settings.ignore_namespaces),
        "accessAdminNamespaces": list(settings.access_admin_namespaces),
        "httpPorts": {"start": settings.http_ports.start, "size": settings.http_ports.size},
        "tcpPorts": {"start": settings.tcp_ports.start, "size": settings.tcp_ports.size},
        "udpPorts": {"start": settings.udp_ports.start, "size": settings.udp_ports.size},
        "capture": settings.capture,
        "capturePorts": {
            "start": settings.capture_ports.start,
            "size": settings.capture_ports.size,
        },
        "mtls": settings.mtls.value,
        "trustDomain": settings.trust_domain,
    }


def parse_settings(raw: Any) -> Settings:
    """Settings from a mesh.yaml mapping; unknown keys are errors (typos should not pass)."""
    doc = mapping(raw, "")
    known = {
        "zone",
        "clusterDomain",
        "meshNamespace",
        "defaultTrafficType",
        "acl",
        "watchNamespaces",
        "ignoreNamespaces",
        "accessAdminNamespaces",
        "httpPorts",
        "tcpPorts",
        "udpPorts",
        "capture",
        "capturePorts",
        "mtls",
        "trustDomain",
    }
    for key, _ in entries(doc, ""):  # a bare YAML on: a key that is no string, unknown
        if key not in known:
            raise InvalidObject(
                str(key), f"unknown setting; expected one of {', '.join(sorted(known))}"
            )
    base = Settings()
    traffic = string(
        doc.get("defaultTrafficType"), "defaultTrafficType", required=False, default="http"
    )
    try:
        traffic_type = TrafficType(traffic)
    except ValueError:
        raise InvalidObject(
            "defaultTrafficType", f"expected http, tcp or udp, got {traffic!r}"
        ) from None

    raw_mode = doc.get("mtls")
    if isinstance(raw_mode, bool):  # YAML 1.1 reads a bare off as false, on as true
        if raw_mode:
            raise InvalidObject(
                "mtls", "expected off, permissive or strict, got true (a bare YAML on)"
            )
        raw_mode = "off"
    mode = string(raw_mode, "mtls", required=False, default="off")
    try:
        mtls = MtlsMode(mode)
    except ValueError:
        raise InvalidObject("mtls", f"expected off, permissive or strict, got {mode!r}") from None

    def names(key: str) -> tuple[str, ...]:
        return tuple(dns_label(v, f"{key}[{i}]") for i, v in enumerate(seq(doc.get(key), key)))

    http_ports = _port_range(doc.get("httpPorts"), "httpPorts", base.http_ports)
    tcp_ports = _port_range(doc.get("tcpPorts"), "tcpPorts", base.tcp_ports)
    capture_ports = _port_range(doc.get("capturePorts"), "capturePorts", base.capture_ports)
    for name, other in (("httpPorts", http_ports), ("tcpPorts", tcp_ports)):
        # capture listeners are TCP sockets of the proxy beside these (UDP ports do not clash)
        if set(capture_ports.ports()) & set(other.ports()):
            raise InvalidObject(
                "capturePorts",
                f"{_span(capture_ports)} overlaps {name} {_span(other)}; choose a free range",
            )
    return Settings(
        zone=domain(doc.get("zone"), "zone", base.zone),
        cluster_domain=domain(doc.get("clusterDomain"), "clusterDomain", base.cluster_domain),
        mesh_namespace=dns_label(doc.get("meshNamespace"), "meshNamespace", required=False)
        or base.mesh_namespace,
        default_traffic_type=traffic_type,
        acl=boolean(doc.get("acl"), "acl", base.acl),
        watch_namespaces=names("watchNamespaces"),
        ignore_namespaces=names("ignoreNamespaces"),
        access_admin_namespaces=names("accessAdminNamespaces"),
        http_ports=http_ports,
        tcp_ports=tcp_ports,
        udp_ports=_port_range(doc.get("udpPorts"), "udpPorts", base.udp_ports),
        capture=boolean(doc.get("capture"), "capture", base.capture),
        capture_ports=capture_ports,
        mtls=mtls,
        trust_domain=domain(doc.get("trustDomain"), "trustDomain", base.trust_domain),
    )
