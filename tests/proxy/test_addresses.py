"""--address-map: a pod network reached through local addresses."""

from __future__ import annotations

import pytest

from mesh.core.config import MeshConfig
from mesh.core.model import MtlsMode, Settings
from mesh.core.routing import Router
from mesh.proxy.addresses import AddressMap
from tests.core.builders import app, compile_docs, pod, wire


def config() -> MeshConfig:
    docs = [
        *app("web", ns="ns", ips=["10.244.1.7", "192.168.0.9"]),
        pod("client-0", sa="client", ip="10.244.0.20", ns="ns"),
    ]
    return compile_docs(docs, Settings(acl=True))


def test_endpoints_and_identities_move_to_local_addresses() -> None:
    mapped = AddressMap.parse(["10.244.0.0/16=127.1.0.0/16"]).apply(config())
    endpoints = wire(mapped)["clusters"]["ns/web:80"]["endpoints"]
    assert [e["ip"] for e in endpoints] == ["127.1.1.7", "192.168.0.9"]
    assert wire(mapped)["identities"] == {
        "127.1.0.20": "ns/client",
        "127.1.1.7": "ns/web",
        "192.168.0.9": "ns/web",
    }
    assert wire(config())["clusters"]["ns/web:80"]["endpoints"][0]["ip"] == "10.244.1.7"


def test_with_mtls_the_pods_nodes_move_to_local_addresses_too() -> None:
    """Strict mode refuses plaintext from another node's pod by the caller's node
    (settings.mtls.pods): keyed by the cluster address, a local caller's address was found
    on no node and let through (the local mesh, simmesh up)."""
    docs = [
        *app("web", ns="ns", ips=["10.244.1.7"]),
        pod("client-0", sa="client", ip="10.244.0.20", ns="ns", node="node-b"),
    ]
    original = compile_docs(docs, Settings(acl=True, mtls=MtlsMode.STRICT))
    mapped = AddressMap.parse(["10.244.0.0/16=127.1.0.0/16"]).apply(original)
    assert wire(original)["settings"]["mtls"]["pods"] == {"10.244.0.20": "node-b"}
    assert wire(mapped)["settings"]["mtls"]["pods"] == {"127.1.0.20": "node-b"}
    router = Router(mapped)
    assert router.caller("127.1.0.20", "node-a").refused is not None
    assert router.caller("127.1.0.20", "node-b").refused is None


def test_no_map_passes_the_config_through() -> None:
    original = config()
    assert AddressMap.parse([]).apply(original) is original


@pytest.mark.parametrize(
    "spec",
    [
        "10.244.0.0/16",
        "10.244.0.0/16=127.1.0.0/24",
        "10.244.0.0/16=::1/128",
        "nonsense=127.0.0.0/8",
    ],
)
def test_bad_maps_are_refused(spec: str) -> None:
    with pytest.raises(ValueError, match="--address-map"):
        AddressMap.parse([spec])
