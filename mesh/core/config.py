"""Topology -> MeshConfig: the document every proxy receives.

The config is plain JSON-compatible data, so the controller can publish it, a proxy can load it
and :class:`mesh.core.routing.Router` can compile it, without sharing Python objects:

- ``listeners``: HTTP listeners are shared (the i-th port of every service uses the i-th HTTP
  listener, routed by Host); TCP and UDP get one listener per (service, port) from their pools.
- ``hosts``: per HTTP listener, every Host a client may send (``svc.ns.<zone>``,
  ``svc.ns.svc.<cluster domain>``, the ClusterIP; each with or without the port) -> route key.
- ``routes``: per (service, port): protocol, scheme, policies, the cluster and the split.
- ``clusters``: per (service, port): ready endpoints with their identities, and in ACL mode the
  grants that admit traffic to them.

TCP and UDP listener assignments are stable: given the previous assignment, a service that did
not change keeps its port. The same topology gives byte-identical JSON.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from mesh.core.annotations import ServicePolicy
from mesh.core.errors import ObjectError, ObjectRef
from mesh.core.model import HTTPMatch, PortRange, Settings, TrafficType
from mesh.core.topology import Grant, Topology, TopoPort, TopoService

API_VERSION = "simmesh.io/v1alpha1"


@dataclass(frozen=True, slots=True)
class MeshConfig:
    data: Mapping[str, Any]
    compact: str | None = None  # the compact JSON, when already rendered

    @property
    def version(self) -> str:
        return str(self.data["version"])

    def to_json(self, *, indent: int | None = 2) -> str:
        if indent is None:
            return self.compact if self.compact is not None else _compact(self.data)
        return json.dumps(self.data, sort_keys=True, indent=indent) + "\n"

    @classmethod
    def from_json(cls, text: str | bytes) -> MeshConfig:
        data = json.loads(text)
        if not isinstance(data, dict) or data.get("apiVersion") != API_VERSION:
            raise ValueError(f"not a MeshConfig document (expected apiVersion {API_VERSION})")
        return cls(data)

    def port_assignments(self) -> dict[str, int]:
        """The TCP/UDP listener of each ``protocol:ns/name:port``, for stable reassignment."""
        return {
            f"{item['protocol']}:{item['route']}": int(item["port"])
            for item in self.data.get("listeners", [])
            if item["protocol"] != "http"
        }


def route_key(service: TopoService, port: TopoPort) -> str:
    return f"{service.key}:{port.port}"


def build_config(
    topology: Topology, settings: Settings, previous: Mapping[str, int] | None = None
) -> MeshConfig:
    errors = list(topology.errors)
    previous = previous or {}
    routes: dict[str, Any] = {}
    clusters: dict[str, Any] = {}
    hosts: dict[str, dict[str, str]] = {}
    flows: dict[str, list[str]] = {"tcp": [], "udp": []}
    grants: dict[str, list[Grant]] = {}
    for grant in topology.grants:
        grants.setdefault(grant.destination, []).append(grant)
    for key in sorted(topology.services):
        service = topology.services[key]
        kind = service.options.traffic_type
        for index, port in enumerate(service.ports):
            rkey = route_key(service, port)
            clusters[rkey] = _cluster(service, port, grants if settings.acl else None)
            listener = None
            if kind is TrafficType.HTTP:
                if index >= settings.http_ports.size:
                    errors.append(_too_many_ports(service, index, settings.http_ports))
                    continue
                listener = settings.http_ports.start + index
                table = hosts.setdefault(str(listener), {})
                for host in _hosts(service, port, settings):
                    table[host] = rkey
            else:
                flows[kind.value].append(rkey)
            routes[rkey] = _route(service, port, listener, topology)
    listeners: list[dict[str, Any]] = [
        {"port": int(k), "protocol": "http"} for k in sorted(hosts, key=int)
    ]
    for proto, pool in (("tcp", settings.tcp_ports), ("udp", settings.udp_ports)):
        assigned, overflow = assign_ports(flows[proto], pool, previous, proto)
        for rkey, number in sorted(assigned.items(), key=lambda item: item[1]):
            routes[rkey]["listener"] = number
            listeners.append({"port": number, "protocol": proto, "route": rkey})
        for rkey in overflow:
            namespace, _, rest = rkey.partition("/")
            name, _, number_text = rest.rpartition(":")
            del routes[rkey]
            last = pool.start + pool.size - 1
            errors.append(
                ObjectError(
                    ObjectRef("Service", namespace, name),
                    "spec.ports",
                    f"no free {proto.upper()} listener left in {pool.start}..{last} for port "
                    f"{number_text}; raise the {proto}Ports size",
                )
            )
    listeners.sort(key=lambda item: item["port"])
    data: dict[str, Any] = {
        "apiVersion": API_VERSION,
        "kind": "MeshConfig",
        "settings": {
            "zone": settings.zone,
            "clusterDomain": settings.cluster_domain,
            "meshNamespace": settings.mesh_namespace,
            "acl": settings.acl,
        },
        "listeners": listeners,
        "hosts": hosts,
        "routes": routes,
        "clusters": clusters,
        "identities": dict(sorted(topology.identities.items())) if settings.acl else {},
        "errors": [e.to_dict() for e in sorted(set(errors))],
    }
    body = _compact(data)
    data["version"] = _digest(body)
    # "version" sorts after every other top-level key, so it goes last.
    compact = f'{body[:-1]},"version":"{data["version"]}"}}'
    return MeshConfig(data, compact)


def _compact(data: Mapping[str, Any]) -> str:
    return json.dumps(data, sort_keys=True, separators=(",", ":"))


def _digest(body: str) -> str:
    return hashlib.sha256(body.encode()).hexdigest()[:16]


def config_version(data: Mapping[str, Any]) -> str:
    """The version of a config document: a digest of everything but the version itself."""
    return _digest(_compact({k: v for k, v in data.items() if k != "version"}))


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


def _route(
    service: TopoService, port: TopoPort, listener: int | None, topology: Topology
) -> dict[str, Any]:
    route: dict[str, Any] = {
        "service": service.key,
        "port": port.port,
        "protocol": service.options.traffic_type.value,
        "scheme": service.options.scheme.value,
        "listener": listener,
        "cluster": route_key(service, port),
        "policy": policy_dict(service.options.policy),
        "split": None,
    }
    split = topology.splits.get(service.key)
    if split is not None:
        missing = set(split.missing_ports)
        backends: list[dict[str, Any]] = [
            {"service": key, "weight": weight, "cluster": f"{key}:{port.port}"}
            for key, weight in split.backends
            if (key, port.port) not in missing
        ]
        if any(b["weight"] > 0 for b in backends):
            route["split"] = {
                "name": f"{split.namespace}/{split.name}",
                "backends": backends,
                "matches": [match_dict(m) for m in split.matches],
            }
    return route


def _cluster(
    service: TopoService, port: TopoPort, grants: Mapping[str, list[Grant]] | None
) -> dict[str, Any]:
    endpoints = [
        {"ip": e.ip, "port": e.port, "node": e.node, "identity": e.identity} for e in port.endpoints
    ]
    cluster: dict[str, Any] = {
        "service": service.key,
        "port": port.port,
        "protocol": service.options.traffic_type.value,
        "scheme": service.options.scheme.value,
        "endpoints": endpoints,
        "loadBalancer": service.options.policy.load_balancer,
        "circuitBreaker": _breaker_dict(service.options.policy),
    }
    if grants is not None:
        cluster["access"] = _access(service, port, grants)
    return cluster


def _access(
    service: TopoService, port: TopoPort, grants: Mapping[str, list[Grant]]
) -> list[dict[str, Any]]:
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
            {
                "target": grant.target,
                "destination": grant.destination,
                "sources": list(grant.sources),
                "kind": grant.kind,
                "route": grant.route,
                "match": match_dict(grant.match) if grant.match is not None else None,
                "ports": list(grant.ports),
            }
        )
    return out


def match_dict(match: HTTPMatch) -> dict[str, Any]:
    return {
        "name": match.name,
        "pathRegex": match.path_regex,
        "methods": sorted(match.methods) if match.methods is not None else None,
        "headers": [[k, v] for k, v in match.headers],
    }


def policy_dict(policy: ServicePolicy) -> dict[str, Any]:
    retry = policy.retry
    limit = policy.rate_limit
    return {
        "retry": None
        if retry is None
        else {
            "attempts": retry.attempts,
            "nonIdempotent": retry.non_idempotent,
            "onStatuses": list(retry.on_statuses),
            "backoff": retry.backoff,
            "budget": retry.budget,
        },
        "timeout": policy.timeout,
        "requestTimeout": policy.request_timeout,
        "rateLimit": None if limit is None else {"average": limit.average, "burst": limit.burst},
    }


def _breaker_dict(policy: ServicePolicy) -> dict[str, Any] | None:
    spec = policy.circuit_breaker
    if spec is None:
        return None
    return {
        "expression": spec.expression,
        "window": spec.window,
        "openDuration": spec.open_duration,
        "minRequests": spec.min_requests,
        "checkPeriod": spec.check_period,
    }
