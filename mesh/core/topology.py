"""ClusterState -> Topology: services with resolved ports and ready endpoints, access grants per
destination identity, validated traffic splits, and errors kept per object.

This is the traefik/mesh shape: plain data keyed by ``namespace/name`` with errors attached to
the object they concern. Nothing here fails as a whole: an object that cannot be used is left out
with an error naming it, and everything else is built as usual.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from mesh.core.annotations import ServiceOptions, service_options
from mesh.core.errors import ObjectError, ObjectRef
from mesh.core.model import (
    EndpointSlice,
    HTTPMatch,
    Service,
    ServicePort,
    Settings,
    TrafficSplit,
    TrafficTarget,
)
from mesh.core.parse import ClusterState


@dataclass(frozen=True, slots=True)
class TopoEndpoint:
    ip: str
    port: int
    node: str | None
    identity: str | None  # "namespace/serviceaccount" of the pod behind it, when known


@dataclass(frozen=True, slots=True)
class TopoPort:
    name: str
    port: int
    target_port: int | str
    endpoints: tuple[TopoEndpoint, ...]


@dataclass(frozen=True, slots=True)
class TopoService:
    namespace: str
    name: str
    cluster_ip: str | None
    options: ServiceOptions
    ports: tuple[TopoPort, ...]

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


@dataclass(slots=True)
class Topology:
    services: dict[str, TopoService] = field(default_factory=dict)
    grants: list[Grant] = field(default_factory=list)
    splits: dict[str, TopoSplit] = field(default_factory=dict)
    identities: dict[str, str] = field(default_factory=dict)  # pod IP -> identity
    errors: list[ObjectError] = field(default_factory=list)


def build_topology(state: ClusterState, settings: Settings) -> Topology:
    topology = Topology(errors=list(state.errors))
    pods_by_name, topology.identities = _pod_index(state, topology.errors)
    slices = _slices_by_service(state)
    for key in sorted(state.services):
        service = state.services[key]
        if not _meshed(service, settings):
            continue
        built = _service(service, settings, slices.get(key, []), pods_by_name, topology)
        topology.services[key] = built
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
    return topology


def _meshed(service: Service, settings: Settings) -> bool:
    if service.type == "ExternalName":
        return False
    if service.namespace == "default" and service.name == "kubernetes":
        return False
    return settings.watches(service.namespace)


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
        )
        for p in service.ports
    )
    return TopoService(service.namespace, service.name, service.cluster_ip, options, ports)


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


__all__ = [
    "Grant",
    "TopoEndpoint",
    "TopoPort",
    "TopoService",
    "TopoSplit",
    "Topology",
    "build_topology",
]
