"""--address-map: a pod network reached through local addresses."""

from __future__ import annotations

import pytest

from mesh.core.config import MeshConfig
from mesh.core.model import Settings
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
