"""Which pods are the node proxies, and the tunnel address each node publishes
(settings.mtls.proxies, mesh.core.topology.tunnel_addresses): the proxies' own pods, Ready,
in their ServiceAccount's namespace, running as it and labelled as the chart labels them; one
per node, picked the same way at every rebuild while a rolling update surges."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from mesh.core import schema
from mesh.core.model import MtlsMode, Settings
from mesh.core.parse import parse_objects
from mesh.core.routing import Router
from mesh.core.topology import build_topology, tunnel_addresses
from tests.core.builders import app, compile_docs, pod, wire

PERMISSIVE = Settings(mtls=MtlsMode.PERMISSIVE)


def proxy(
    name: str,
    *,
    node: str | None = "node-a",
    ip: str | None = "10.0.0.1",
    ns: str = "simmesh",
    sa: str = "simmesh-proxy",
    labels: dict[str, str] | None = None,
    ready: bool = True,
    phase: str = "Running",
    port: int | None = 15008,
    created: str = "2025-06-01T10:00:00Z",
    terminating: bool = False,
) -> dict[str, Any]:
    """A pod as the chart's DaemonSet makes it (kind ProxyPod: the controller's store kind)."""
    meta: dict[str, Any] = {
        "name": name,
        "namespace": ns,
        "labels": {"app.kubernetes.io/name": "simmesh-proxy"} if labels is None else labels,
        "creationTimestamp": created,
    }
    if terminating:
        meta["deletionTimestamp"] = "2025-06-01T12:00:00Z"
    ports: list[dict[str, Any]] = [{"name": "admin", "containerPort": 9901}]
    if port is not None:
        ports.append({"name": "tunnel", "containerPort": port, "protocol": "TCP"})
    spec: dict[str, Any] = {
        "serviceAccountName": sa,
        "containers": [{"name": "proxy", "image": "simmesh", "ports": ports}],
    }
    if node is not None:
        spec["nodeName"] = node
    status: dict[str, Any] = {
        "phase": phase,
        "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
    }
    if ip is not None:
        status["podIP"] = ip
        status["podIPs"] = [{"ip": ip}]
    return {
        "apiVersion": "v1",
        "kind": "ProxyPod",
        "metadata": meta,
        "spec": spec,
        "status": status,
    }


def addresses(*docs: dict[str, Any], settings: Settings = PERMISSIVE) -> dict[str, str]:
    state = parse_objects(docs)
    assert state.errors == []
    return tunnel_addresses(state.proxy_pods.values(), settings)


def test_each_ready_proxy_publishes_its_pod_ip_and_tunnel_port() -> None:
    found = addresses(
        proxy("p-a", node="node-a", ip="10.0.0.1"),
        proxy("p-b", node="node-b", ip="10.0.1.7", port=16000),
        proxy("p-c", node="node-c", ip="fd00::5"),
    )
    assert found == {
        "node-a": "10.0.0.1:15008",
        "node-b": "10.0.1.7:16000",
        "node-c": "[fd00::5]:15008",
    }
    assert schema.host_port(found["node-c"]) == ("fd00::5", 15008)


@pytest.mark.parametrize(
    "doc",
    [
        proxy("not-ready", ready=False),
        proxy("pending", phase="Pending"),
        proxy("no-ip", ip=None),
        proxy("unscheduled", node=None),
        proxy("no-tunnel-port", port=None),  # rendered with mtls off: holds no certificates
    ],
    ids=lambda d: d["metadata"]["name"],
)
def test_a_proxy_that_cannot_take_tunnels_is_not_published(doc: dict[str, Any]) -> None:
    assert addresses(doc) == {}
    assert addresses(doc, proxy("ok", node="node-b", ip="10.0.1.1")) == {"node-b": "10.0.1.1:15008"}


@pytest.mark.parametrize(
    "doc",
    [
        proxy("other-namespace", ns="attacker"),
        proxy("other-namespace-same-account-name", ns="demo", sa="simmesh-proxy"),
        proxy("other-account", sa="default"),
        proxy("no-label", labels={}),
        proxy("other-label", labels={"app.kubernetes.io/name": "simmesh-controller"}),
        proxy("label-elsewhere", labels={"app": "simmesh-proxy"}),
    ],
    ids=lambda d: d["metadata"]["name"],
)
def test_a_look_alike_is_not_taken_for_a_proxy(doc: dict[str, Any]) -> None:
    """Namespace, ServiceAccount and label must all be the proxies': a pod labelled like a
    proxy in another namespace, or running as another account, would otherwise receive
    (and could refuse) every tunnel to its node, older than the real proxy as it is here."""
    doc["metadata"]["creationTimestamp"] = "2020-01-01T00:00:00Z"  # older than the real one
    doc["status"]["podIP"] = "10.66.6.6"
    real = proxy("simmesh-proxy-abcde", ip="10.0.0.1")
    assert addresses(doc) == {}
    assert addresses(doc, real) == {"node-a": "10.0.0.1:15008"}


def test_the_proxies_service_account_is_the_controller_s_option() -> None:
    moved = Settings(mtls=MtlsMode.PERMISSIVE, proxy_service_account="mesh-sys/node-proxy")
    doc = proxy("p", ns="mesh-sys", sa="node-proxy")
    assert addresses(doc, settings=moved) == {"node-a": "10.0.0.1:15008"}
    assert addresses(doc) == {}  # not the default simmesh/simmesh-proxy
    assert addresses(proxy("q"), settings=moved) == {}


SURGE = {
    "old": proxy("p-old", ip="10.0.0.1", created="2025-06-01T10:00:00Z"),
    "new": proxy("p-new", ip="10.0.0.2", created="2025-06-01T11:00:00Z"),
    "new-not-ready": proxy("p-new", ip="10.0.0.2", created="2025-06-01T11:00:00Z", ready=False),
    "old-terminating": proxy(
        "p-old", ip="10.0.0.1", created="2025-06-01T10:00:00Z", terminating=True
    ),
    "new-terminating": proxy(
        "p-new", ip="10.0.0.2", created="2025-06-01T11:00:00Z", terminating=True
    ),
}


@pytest.mark.parametrize(
    ("pair", "chosen"),
    [
        (("old", "new-not-ready"), "10.0.0.1"),  # the new one is not ready yet: the old stays
        (("old", "new"), "10.0.0.1"),  # both ready: the old one until it is told to stop
        (("old-terminating", "new"), "10.0.0.2"),  # the old one was told to stop
        (("old", "new-terminating"), "10.0.0.1"),  # a new one deleted during the update
        (("old-terminating", "new-not-ready"), "10.0.0.1"),  # still ready, still accepting
        (("old-terminating", "new-terminating"), "10.0.0.1"),
    ],
    ids=lambda v: "+".join(v) if isinstance(v, tuple) else v,
)
def test_two_proxies_on_one_node_give_one_address_whatever_the_order(
    pair: tuple[str, str], chosen: str
) -> None:
    docs = [SURGE[name] for name in pair]
    for order in itertools.permutations(docs):
        assert addresses(*order) == {"node-a": f"{chosen}:15008"}


def test_equal_creation_times_are_ordered_by_name() -> None:
    a = proxy("p-a", ip="10.0.0.1")
    b = proxy("p-b", ip="10.0.0.2")
    assert addresses(a, b) == addresses(b, a) == {"node-a": "10.0.0.1:15008"}


# -- in the config --------------------------------------------------------------------------


def world() -> list[dict[str, Any]]:
    return [
        *app("web", ips=["10.1.0.1", "10.1.0.2"]),  # endpoints on node-0 and node-1
        pod("client", sa="client", ip="10.1.0.9", node="node-0"),
    ]


PROXIES = [
    proxy("simmesh-proxy-0", node="node-0", ip="10.0.0.1"),
    proxy("simmesh-proxy-1", node="node-1", ip="10.0.1.1"),
]


def test_with_mtls_on_the_config_publishes_them_and_the_router_tunnels_to_them() -> None:
    config = compile_docs([*world(), *PROXIES], PERMISSIVE)
    assert wire(config)["settings"]["mtls"]["proxies"] == {
        "node-0": "10.0.0.1:15008",
        "node-1": "10.0.1.1:15008",
    }
    router = Router(config)
    assert router.tunnel_peer("node-1", "node-0") == ("10.0.1.1", 15008)
    assert router.tunnel_peer("node-0", "node-0") is None  # same node: no tunnel
    # a change of address is a new config version, published like any other change
    moved = [PROXIES[0], proxy("simmesh-proxy-1b", node="node-1", ip="10.0.1.2")]
    assert compile_docs([*world(), *moved], PERMISSIVE).version != config.version


def test_the_proxies_are_not_workloads() -> None:
    """Their pods give no identity and no pod -> node entry: they are not the mesh's callers."""
    with_proxies = wire(compile_docs([*world(), *PROXIES], PERMISSIVE))
    without = wire(compile_docs(world(), PERMISSIVE))
    assert with_proxies["identities"] == without["identities"]
    assert "10.0.0.1" not in with_proxies["identities"]
    assert with_proxies["settings"]["mtls"]["pods"] == without["settings"]["mtls"]["pods"]
    assert with_proxies["settings"]["mtls"]["nodes"] == without["settings"]["mtls"]["nodes"]
    assert "proxies" not in without["settings"]["mtls"]  # none known: left out, as before


@pytest.mark.parametrize("acl", [False, True])
def test_with_mtls_off_nothing_is_published_and_the_config_is_unchanged(acl: bool) -> None:
    off = Settings(acl=acl)
    plain = compile_docs(world(), off)
    with_proxies = compile_docs([*world(), *PROXIES], off)
    assert schema.encode(with_proxies) == schema.encode(plain)
    assert with_proxies.version == plain.version
    assert with_proxies.settings.mtls is None
    assert build_topology(parse_objects([*world(), *PROXIES]), off).proxies == {}


def test_a_malformed_proxy_pod_is_an_error_of_that_object_only() -> None:
    bad = proxy("bad", ip="10.0.0.300")
    state = parse_objects([bad, proxy("good", node="node-b", ip="10.0.1.1")])
    assert [(e.ref.name, e.field) for e in state.errors] == [("bad", "status.podIP")]
    assert tunnel_addresses(state.proxy_pods.values(), PERMISSIVE) == {"node-b": "10.0.1.1:15008"}
    port = proxy("bad-port", port=70000)
    state = parse_objects([port])
    assert [e.field for e in state.errors] == ["spec.containers[0].ports[1].containerPort"]
