"""The plan of a local mesh: which process runs where, on which address, doing what.

A scenario (sim.scenario) is turned into plain data, written to ``plan.json`` and read by the
process that runs the mesh (run.py) and by Locust (locustfile.py):

- one node proxy per scenario node, each on its own loopback address (``127.B.0.i``), every
  listener of the MeshConfig on it, fed by one controller (file provider);
- one test app per pod that the simulator would place (sim.placement: the same pods with the
  same behaviour), listening on the pod's address. Pods keep their cluster addresses in the
  manifests (10.244.x.y); each pod network /16 is mapped onto a loopback /16
  (``127.(B+1+k).0.0/16``) and the proxies get the same ``--address-map``, so a client bound
  to a pod's local address has that pod's identity, exactly as in a cluster;
- one stream per traffic entry: the local address of a pod with the source identity (on the
  traffic's node when there is one), the node proxy it sends to and the listener port, the
  Host, the request mix, the rate or the users and think time, the start and stop;
- the manifests and mesh settings the controller reads, and the timeline.

Times are seconds after ``t0``, the moment load starts (already scaled by ``--scale``).
Nothing here starts a process; :func:`make_plan` is pure apart from reading the scenario.
"""

from __future__ import annotations

import copy
import ipaddress
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mesh.core.config import MeshConfig, build_config
from mesh.core.model import TUNNEL_PORT_NAME, MtlsMode
from mesh.core.parse import parse_objects, settings_doc
from mesh.core.routing import Router
from mesh.core.topology import build_topology
from sim.placement import pod_owners
from sim.scenario import TUNNEL_PORT, Scenario

__all__ = ["Addressing", "NodePlan", "Plan", "PlanError", "PodPlan", "StreamPlan", "make_plan"]

ADMIN_PORT = 9901
CONTROLLER_PORT = 9000
CA_PORT = 9002  # the local CA (ca.py), with mTLS on


class PlanError(Exception):
    """A scenario the local mesh cannot run (one line, exit code 2)."""


@dataclass(frozen=True)
class Addressing:
    """Loopback blocks: nodes at 127.``base``.0.i, pod networks from 127.(``base``+1).0.0/16."""

    base: int = 100
    pod_blocks: int = 4

    def node(self, index: int) -> str:
        return f"127.{self.base}.0.{index + 1}"

    def controller(self) -> str:
        return f"127.{self.base}.0.254"

    def ca(self) -> str:
        return f"127.{self.base}.0.253"

    def local_network(self, index: int) -> str:
        if index >= self.pod_blocks or self.base + 1 + index > 255:
            raise PlanError(
                f"the pods use more than {self.pod_blocks} /16 networks; "
                "the local mesh maps at most that many onto loopback"
            )
        return f"127.{self.base + 1 + index}.0.0/16"


@dataclass(frozen=True)
class NodePlan:
    name: str
    address: str
    admin_port: int = ADMIN_PORT
    tunnel_port: int = TUNNEL_PORT  # mTLS from the other nodes' proxies, when on


@dataclass(frozen=True)
class PodPlan:
    name: str
    namespace: str
    workload: str  # namespace/service whose behaviour the pod has
    node: str | None
    ip: str  # in the manifests
    address: str  # on loopback
    http_port: int
    tcp_port: int | None
    udp_port: int | None
    behaviour: dict[str, Any]  # latency (spec), errorRate, capacity, contention
    seed: int


@dataclass(frozen=True)
class StreamPlan:
    index: int
    name: str
    protocol: str  # http, tcp or udp
    source: str | None
    address: str  # the local address requests are sent from
    node: str
    proxy: str  # the node proxy's address
    port: int  # the node proxy's listener
    host: str  # Host header (http)
    mix: list[dict[str, Any]]  # method, path, weight, headers
    rate: float
    users: int
    think: float
    start: float
    stop: float


@dataclass(frozen=True)
class Plan:
    scenario: str
    directory: str
    seed: int
    duration: float
    nodes: list[NodePlan]
    pods: list[PodPlan]
    streams: list[StreamPlan]
    address_maps: list[str]  # CLUSTER_CIDR=LOCAL_CIDR
    controller: str  # host:port
    connect_timeout: float
    docs: list[dict[str, Any]]
    settings: dict[str, Any]  # mesh.yaml
    timeline: list[dict[str, Any]]  # {at, action, params}
    isolation: str  # netns or loopback
    config_version: str
    options: dict[str, Any] = field(default_factory=dict)
    mtls: str = "off"  # the settings' mode: permissive or strict runs the CA (ca.py)
    trust_domain: str = "cluster.local"
    ca: str = ""  # host:port of the local CA, with mTLS on

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, indent=1) + "\n"

    @classmethod
    def read(cls, path: Path) -> Plan:
        raw = json.loads(path.read_text())
        raw["nodes"] = [NodePlan(**n) for n in raw["nodes"]]
        raw["pods"] = [PodPlan(**p) for p in raw["pods"]]
        raw["streams"] = [StreamPlan(**s) for s in raw["streams"]]
        return cls(**raw)

    def pods_of(self, workload: str, replica: Any = None) -> list[PodPlan]:
        """The workload's pods in the simulator's replica order (by address), or one of them."""
        pods = sorted(
            (p for p in self.pods if p.workload == workload),
            key=lambda p: tuple(int(x) for x in p.ip.split(".")),
        )
        if replica is None:
            return pods
        return [pods[int(replica)]] if int(replica) < len(pods) else []


def compile_config(scenario: Scenario) -> MeshConfig:
    settings = scenario.settings
    return build_config(build_topology(parse_objects(scenario.docs), settings), settings)


def make_plan(
    scenario: Scenario,
    *,
    isolation: str,
    addressing: Addressing | None = None,
    controller_port: int = CONTROLLER_PORT,
    ca_port: int = CA_PORT,
) -> Plan:
    addressing = addressing or Addressing()
    config = compile_config(scenario)
    router = Router(config)
    maps = _address_maps(scenario.docs, addressing)
    nodes = [NodePlan(name, addressing.node(i)) for i, name in enumerate(scenario.nodes)]
    mtls = scenario.settings.mtls is not MtlsMode.OFF
    docs = _local_proxy_pods(scenario.docs, nodes) if mtls else scenario.docs
    if docs is not scenario.docs:
        config = build_config(
            build_topology(parse_objects(docs), scenario.settings), scenario.settings
        )
    pods = _pods(scenario, router, maps)
    streams = [_stream(scenario, i, router, maps, nodes) for i in range(len(scenario.traffic))]
    timeline = [{"at": e.at, "action": e.action, "params": e.params} for e in scenario.timeline]
    return Plan(
        scenario=scenario.name,
        directory=str(scenario.directory),
        seed=scenario.seed,
        duration=scenario.duration,
        nodes=nodes,
        pods=pods,
        streams=streams,
        address_maps=[f"{c}={loc}" for c, loc in maps],
        controller=f"{addressing.controller()}:{controller_port}",
        connect_timeout=scenario.connect_timeout,
        docs=docs,
        settings=settings_doc(scenario.settings),
        timeline=timeline,
        isolation=isolation,
        config_version=config.version,
        mtls=scenario.settings.mtls.value,
        trust_domain=scenario.settings.trust_domain,
        ca=f"{addressing.ca()}:{ca_port}" if mtls else "",
    )


def _local_proxy_pods(docs: list[dict[str, Any]], nodes: list[NodePlan]) -> list[dict[str, Any]]:
    """With mTLS on, the scenario has a proxy pod per node (kind ``ProxyPod``, as the
    controller reads the proxies' own pods in a cluster: sim.scenario.proxy_pods), which the
    core turns into each node's tunnel address (``settings.mtls.proxies``). Here each node's
    proxy listens on the node's loopback address: the pods carry that address and tunnel
    port, so the controller publishes where the real proxies are."""
    where = {n.name: n for n in nodes}
    out = []
    for doc in docs:
        node = where.get(str((doc.get("spec") or {}).get("nodeName")))
        if doc.get("kind") != "ProxyPod" or node is None:
            out.append(doc)
            continue
        local = copy.deepcopy(doc)
        local.setdefault("status", {})["podIP"] = node.address
        for container in local["spec"].get("containers") or []:
            for port in container.get("ports") or []:
                if port.get("name") == TUNNEL_PORT_NAME:
                    port["containerPort"] = node.tunnel_port
        out.append(local)
    return out


def _pod_ips(docs: list[dict[str, Any]]) -> list[str]:
    ips: list[str] = []
    for doc in docs:
        if doc.get("kind") == "Pod":
            ip = ((doc.get("status") or {}).get("podIP")) or ""
            ips.append(str(ip))
        elif doc.get("kind") == "EndpointSlice":
            for endpoint in doc.get("endpoints") or []:
                ips.extend(str(a) for a in endpoint.get("addresses") or [])
    return [ip for ip in ips if ip]


def _address_maps(docs: list[dict[str, Any]], addressing: Addressing) -> list[tuple[str, str]]:
    networks: list[str] = []
    for ip in _pod_ips(docs):
        try:
            address = ipaddress.ip_address(ip)
        except ValueError:
            raise PlanError(f"pod address {ip!r} is not an IP address") from None
        if address.version != 4:
            raise PlanError(f"pod address {ip}: the local mesh runs IPv4 pod networks only")
        network = str(ipaddress.ip_network(f"{ip}/16", strict=False))
        if network not in networks:
            networks.append(network)
    return [(n, addressing.local_network(i)) for i, n in enumerate(sorted(networks))]


def _local(ip: str, maps: list[tuple[str, str]]) -> str:
    address = ipaddress.ip_address(ip)
    for cluster, local in maps:
        net = ipaddress.ip_network(cluster)
        if address in net:
            offset = int(address) - int(net.network_address)
            return str(
                ipaddress.ip_address(int(ipaddress.ip_network(local).network_address) + offset)
            )
    raise PlanError(f"pod address {ip} is in no mapped network")


def _pod_names(docs: list[dict[str, Any]]) -> dict[str, tuple[str, str]]:
    """Pod IP -> (namespace, name), from the Pod objects."""
    out: dict[str, tuple[str, str]] = {}
    for doc in docs:
        if doc.get("kind") == "Pod":
            meta = doc.get("metadata") or {}
            ip = (doc.get("status") or {}).get("podIP")
            if ip:
                out[str(ip)] = (str(meta.get("namespace") or "default"), str(meta.get("name")))
    return out


def _pods(scenario: Scenario, router: Router, maps: list[tuple[str, str]]) -> list[PodPlan]:
    names = _pod_names(scenario.docs)
    ports: dict[str, dict[str, set[int]]] = {}
    for cluster in router.clusters.values():
        for endpoint in cluster.endpoints:
            ports.setdefault(endpoint.ip, {}).setdefault(cluster.protocol, set()).add(endpoint.port)
    pods = []
    for n, (ip, (service, node)) in enumerate(pod_owners(router, scenario.workloads).items()):
        workload = scenario.workloads[service]
        namespace, name = names.get(ip, (service.split("/")[0], f"{service.split('/')[1]}-{n}"))
        served = ports.get(ip, {})
        single = {}
        for protocol in ("http", "tcp", "udp"):
            numbers = sorted(served.get(protocol, set()))
            if len(numbers) > 1:
                raise PlanError(
                    f"pod {namespace}/{name} ({ip}) serves {protocol} on several ports "
                    f"({', '.join(map(str, numbers))}); a test app serves one of each"
                )
            single[protocol] = numbers[0] if numbers else None
        http_port = single["http"]
        if http_port is None:  # a TCP/UDP-only pod still has its HTTP control API
            http_port = 8080 if 8080 not in (single["tcp"], single["udp"]) else 8081
        pods.append(
            PodPlan(
                name=name,
                namespace=namespace,
                workload=service,
                node=node,
                ip=ip,
                address=_local(ip, maps),
                http_port=http_port,
                tcp_port=single["tcp"],
                udp_port=single["udp"],
                behaviour={
                    "latency": workload.latency_spec,
                    "errorRate": workload.error_rate,
                    "capacity": workload.capacity,
                    "contention": workload.contention,
                },
                seed=scenario.seed * 1000 + n,
            )
        )
    return pods


def _source_address(
    scenario: Scenario, source: str | None, node: str, maps: list[tuple[str, str]]
) -> str:
    """A pod with the source identity, preferably on the traffic's node."""
    candidates: list[tuple[bool, str]] = []
    for doc in scenario.docs:
        if doc.get("kind") != "Pod":
            continue
        meta, spec = doc.get("metadata") or {}, doc.get("spec") or {}
        identity = f"{meta.get('namespace') or 'default'}/{spec.get('serviceAccountName')}"
        ip = (doc.get("status") or {}).get("podIP")
        if ip and (source is None or identity == source):
            candidates.append((spec.get("nodeName") != node, str(ip)))
    if not candidates:
        raise PlanError(f"no pod has the identity {source} to send its traffic from")
    return _local(sorted(candidates)[0][1], maps)


def _stream(
    scenario: Scenario,
    index: int,
    router: Router,
    maps: list[tuple[str, str]],
    nodes: list[NodePlan],
) -> StreamPlan:
    t = scenario.traffic[index]
    route = router.find_route(t.host, t.port, t.protocol)
    port = route.listener if route is not None else None
    if port is None and t.protocol == "http":
        http = [p for p, proto in router.listeners if proto == "http"]
        port = http[0] if http else None  # an unknown Host: the proxy answers 404 itself
    if port is None:
        raise PlanError(
            f"traffic {t.name}: no mesh listener for {t.protocol}://{t.host}:{t.port} "
            "when the run starts, so the local mesh has nowhere to send it"
        )
    proxy = next(n.address for n in nodes if n.name == t.node)
    return StreamPlan(
        index=index,
        name=t.name,
        protocol=t.protocol,
        source=t.source,
        address=_source_address(scenario, t.source, t.node, maps),
        node=t.node,
        proxy=proxy,
        port=port,
        host=t.host if t.port == 80 else f"{t.host}:{t.port}",
        mix=[
            {"method": k.method, "path": k.path, "weight": k.weight, "headers": dict(k.headers)}
            for k in t.mix
        ],
        rate=t.rate,
        users=t.users,
        think=t.think,
        start=t.start,
        stop=t.stop,
    )
