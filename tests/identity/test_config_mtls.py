"""The MeshConfig carries each node's identities when mTLS is on, and nothing when it is off
(configs of existing users stay byte-identical)."""

from __future__ import annotations

import pytest

from mesh.core import schema
from mesh.core.config import build_config
from mesh.core.errors import InvalidObject
from mesh.core.model import MtlsMode, Settings
from mesh.core.parse import parse_objects, parse_settings
from mesh.core.topology import build_topology

PODS = [
    {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"namespace": "shop", "name": f"web-{i}"},
        "spec": {"serviceAccountName": "web", "nodeName": node},
        "status": {"phase": "Running", "podIP": f"10.0.0.{i}"},
    }
    for i, node in enumerate(("node-a", "node-b"), start=1)
]


def config(settings: Settings) -> schema.MeshConfig:
    state = parse_objects(PODS)
    return build_config(build_topology(state, settings), settings)


def test_off_leaves_the_config_as_it_was() -> None:
    off = config(Settings())
    assert off.settings.mtls is None
    assert b"mtls" not in schema.encode(off)


def test_on_lists_each_node_s_identities_and_the_trust_domain() -> None:
    on = config(Settings(mtls=MtlsMode.PERMISSIVE, trust_domain="prod.example"))
    assert on.settings.mtls == schema.Mtls(
        mode="permissive",
        trust_domain="prod.example",
        nodes={"node-a": ["shop/web"], "node-b": ["shop/web"]},
        pods={"10.0.0.1": "node-a", "10.0.0.2": "node-b"},  # where each caller runs (tunnels)
    )
    assert on.identities == {"10.0.0.1": "shop/web", "10.0.0.2": "shop/web"}  # not only in ACL
    again = schema.decode(schema.encode(on))
    assert again.settings.mtls == on.settings.mtls


def test_a_bad_identity_in_the_node_table_is_a_config_error() -> None:
    on = config(Settings(mtls=MtlsMode.STRICT))
    text = schema.encode(on).replace(b'"node-a":["shop/web"]', b'"node-a":["shopweb"]', 1)
    with pytest.raises(schema.ConfigError) as info:
        schema.decode(text)
    assert info.value.path.startswith("settings.mtls.nodes[")


def test_mesh_yaml_reads_mtls_and_trust_domain() -> None:
    settings = parse_settings({"mtls": "strict", "trustDomain": "prod.example"})
    assert settings.mtls is MtlsMode.STRICT and settings.trust_domain == "prod.example"
    with pytest.raises(InvalidObject, match="mtls: expected off, permissive or strict"):
        parse_settings({"mtls": "on"})
    assert parse_settings({"mtls": False}).mtls is MtlsMode.OFF  # a bare YAML off
    with pytest.raises(InvalidObject, match="a bare YAML on"):
        parse_settings({"mtls": True})
