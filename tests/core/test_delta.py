"""Delta answers (docs/proxy.md, "Delta answers"): mesh.core.config.config_delta computes what
changed between two built configs, mesh.core.schema.ConfigReader.read_delta applies it to the
config held; the result is the new config exactly (the same value, the same JSON, its digest
the new version), or the reader refuses it and keeps its config."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

import msgspec
import pytest

from mesh.core import schema
from mesh.core.config import ConfigCache, ConfigParts, build_config_parts, config_delta
from mesh.core.model import Settings
from mesh.core.parse import parse_objects
from mesh.core.topology import TopologyCache, build_topology
from tests.core.builders import (
    app,
    backend_ref,
    http_match,
    http_route,
    parent,
    prefix,
    route_group,
    rule,
    service,
    traffic_split,
    traffic_target,
)

TCP = {"simmesh.io/traffic-type": "tcp"}
RETRY = {"simmesh.io/retry-attempts": "2"}


class Builder:
    """Builds configs as the controller does (caches, stable port assignments)."""

    def __init__(self) -> None:
        self.caches = (TopologyCache(), ConfigCache())
        self.previous: dict[str, int] = {}

    def build(
        self, docs: Iterable[dict[str, Any]], settings: Settings | None = None
    ) -> tuple[bytes, ConfigParts]:
        settings = settings or Settings()
        topology = build_topology(parse_objects(list(docs)), settings, self.caches[0])
        config, body, parts = build_config_parts(topology, settings, self.previous, self.caches[1])
        self.previous = config.port_assignments()
        return body, parts


def base_docs() -> list[dict[str, Any]]:
    return [
        *app("a", ips=["10.1.0.1", "10.1.0.2"], cluster_ip="10.96.0.1"),
        *app("b", ips=["10.1.1.1"], cluster_ip="10.96.0.2"),
        *app("c", ips=["10.1.2.1"], cluster_ip="10.96.0.3"),
        *app("d", ips=["10.1.3.1"], ports=[("db", 5432, 5432)], annotations=TCP),
    ]


def delta_bytes(old: ConfigParts, new: ConfigParts) -> bytes:
    return schema.encode_value(config_delta(old, new))


def follow(sequence: Sequence[list[dict[str, Any]]], settings: Settings | None = None) -> None:
    """A reader fed the first config whole and then each next one as a delta ends each step
    with exactly the config a full read gives."""
    builder = Builder()
    body, parts = builder.build(sequence[0], settings)
    reader = schema.ConfigReader()
    reader.decode(body)
    for step, docs in enumerate(sequence[1:], start=1):
        new_body, new_parts = builder.build(docs, settings)
        delta = delta_bytes(parts, new_parts)
        config = reader.read_delta(delta)
        assert config == schema.decode(new_body), step
        assert schema.encode(config) == new_body, step
        assert config.version == new_parts.config.version
        body, parts = new_body, new_parts


def test_the_delta_of_one_annotation_is_one_route() -> None:
    builder = Builder()
    _, old = builder.build(base_docs())
    docs = base_docs()
    docs[0] = service("a", ip="10.96.0.1", annotations=RETRY)
    new_body, new = builder.build(docs)
    delta = config_delta(old, new)
    assert set(delta.routes.put) == {"demo/a:80"}
    assert not delta.routes.remove and not delta.clusters.put and not delta.clusters.remove
    assert delta.hosts == {} and delta.settings is None and delta.listeners is None
    assert new.config.hosts is old.config.hosts  # no Host changed: the tables are kept
    assert delta.base == old.config.version and delta.version == new.config.version
    wire = json.loads(delta_bytes(old, new))
    assert wire["kind"] == "MeshConfigDelta" and wire["apiVersion"] == schema.API_VERSION
    assert len(delta_bytes(old, new)) * 4 < len(new_body)


def test_removing_a_service() -> None:
    builder = Builder()
    _, old = builder.build(base_docs())
    docs = [d for d in base_docs() if d["metadata"]["name"] not in ("c", "d")]
    _, new = builder.build(docs)
    delta = config_delta(old, new)
    assert set(delta.routes.remove) == {"demo/c:80", "demo/d:5432"}
    assert set(delta.clusters.remove) == {"demo/c:80", "demo/d:5432"}
    assert set(delta.hosts["5000"].remove) >= {"c.demo.mesh", "10.96.0.3:80"}
    assert delta.listeners is not None  # d's TCP listener went away
    follow([base_docs(), docs])


def test_a_changed_cluster() -> None:
    docs = base_docs()
    more = [d for d in base_docs() if not d["metadata"]["name"].startswith("b")]
    more += app("b", ips=["10.1.1.1", "10.1.1.2"], cluster_ip="10.96.0.2")
    builder = Builder()
    _, old = builder.build(docs)
    _, new = builder.build(more)
    delta = config_delta(old, new)
    assert set(delta.clusters.put) == {"demo/b:80"}
    assert not delta.routes.put
    follow([docs, more])


def test_a_settings_change() -> None:
    builder = Builder()
    docs = base_docs()
    _, old = builder.build(docs, Settings())
    _, new = builder.build(docs, Settings(zone="other"))
    delta = config_delta(old, new)
    assert delta.settings is not None and delta.settings.zone == "other"
    assert "a.demo.other" in delta.hosts["5000"].put
    assert "a.demo.mesh" in delta.hosts["5000"].remove
    reader = schema.ConfigReader()
    reader.decode(Builder().build(docs, Settings())[0])
    assert schema.encode(reader.read_delta(delta_bytes(old, new))) == schema.encode(new.config)


def test_a_sequence_of_changes_of_every_kind() -> None:
    group = route_group("api", [http_match("all", path="/.*")])
    target = traffic_target(
        "a-from-b", dest="a", sources=["b"], rules=[rule("HTTPRouteGroup", "api", ["all"])]
    )
    split = traffic_split("a-split", "a", [("a", 50), ("b", 50)])
    route = http_route(
        "to-b",
        [parent("a", port=80)],
        [{"matches": [prefix("/b")], "backendRefs": [backend_ref("b")]}],
    )
    base = base_docs()
    steps = [
        base,
        [*base, group, target],
        [*base, group, target, split],
        [*base, group, target, split, route],
        [d for d in base if d["metadata"]["name"] != "b"] + [split, route],
        base,
        [*base, *app("e", ips=["10.1.4.1"], ports=[("db", 5432, 5432)], annotations=TCP)],
        [],
        base,
    ]
    for settings in (Settings(), Settings(acl=True), Settings(capture=True)):
        follow(steps, settings)


def test_a_delta_from_another_version_is_refused() -> None:
    builder = Builder()
    _, one = builder.build(base_docs())
    docs = base_docs()
    docs[0] = service("a", ip="10.96.0.1", annotations=RETRY)
    _, two = builder.build(docs)
    _, three = builder.build(base_docs()[2:])
    reader = schema.ConfigReader()
    with pytest.raises(schema.DeltaError, match="base"):
        reader.read_delta(delta_bytes(one, two))  # nothing held yet
    reader.decode(schema.encode(one.config))
    with pytest.raises(schema.DeltaError, match="base"):
        reader.read_delta(delta_bytes(two, three))
    assert reader.config == one.config  # unchanged: the next full config reads as ever
    assert reader.read_delta(delta_bytes(one, three)) == three.config


def test_a_delta_whose_result_is_not_its_version_is_refused() -> None:
    builder = Builder()
    _, one = builder.build(base_docs())
    docs = base_docs()
    docs[0] = service("a", ip="10.96.0.1", annotations=RETRY)
    _, two = builder.build(docs)
    reader = schema.ConfigReader()
    reader.decode(schema.encode(one.config))
    delta = config_delta(one, two)
    lossy = msgspec.structs.replace(delta, routes=schema.RawDelta())  # the change left out
    with pytest.raises(schema.DeltaError, match="digest"):
        reader.read_delta(schema.encode_value(lossy))
    assert reader.config == one.config
    assert reader.read_delta(schema.encode_value(delta)) == two.config


def test_an_invalid_part_in_a_delta_is_a_config_error() -> None:
    builder = Builder()
    _, one = builder.build(base_docs())
    more = [d for d in base_docs() if not d["metadata"]["name"].startswith("b")]
    more += app("b", ips=["10.1.1.1", "10.1.1.2"], cluster_ip="10.96.0.2")
    _, two = builder.build(more)
    reader = schema.ConfigReader()
    reader.decode(schema.encode(one.config))
    bad_hosts = schema.encode(one.config).replace(b'"a.demo.mesh":"demo/a:80"', b'"a.demo.mesh":7')
    with pytest.raises(schema.ConfigError, match="hosts"):
        schema.ConfigReader().decode(bad_hosts)
    bad = delta_bytes(one, two).replace(b'"10.1.1.2"', b'"10.1.1.x"')
    with pytest.raises(schema.ConfigError, match="IP address"):
        reader.read_delta(bad)
    bad_type = delta_bytes(one, two).replace(b'"port":8080', b'"port":"x"', 1)
    with pytest.raises(schema.ConfigError, match=r"clusters\[demo/b:80\]\.endpoints"):
        reader.read_delta(bad_type)
    assert reader.config == one.config


def test_encode_parts_is_encode() -> None:
    _, parts = Builder().build(base_docs(), Settings(acl=True))
    assert schema.encode_parts(parts.config, parts.routes, parts.clusters) == schema.encode(
        parts.config
    )
    assert schema.encode_parts(parts.config) == schema.encode(parts.config)
    assert schema.parts_version(parts.config) == parts.config.version
