"""The controller's incremental rebuild (mesh.core.topology.TopologyCache,
mesh.core.config.ConfigCache) builds the same topology, config and JSON as a build from
nothing, through a sequence of changes of every kind the store sees; and the proxy's
incremental intake (schema.check and Router with the previous one) compiles the same."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from mesh.controller.controller import _build
from mesh.controller.store import Store
from mesh.core import schema
from mesh.core.config import ConfigCache
from mesh.core.model import Settings
from mesh.core.routing import Router, route_clusters
from mesh.core.topology import TopologyCache
from tests.core.builders import (
    app,
    backend_ref,
    endpoint,
    endpoint_slice,
    http_match,
    http_route,
    parent,
    pod,
    prefix,
    route_group,
    rule,
    service,
    traffic_split,
    traffic_target,
)

Step = Callable[[Store], None]


def _put(*docs: dict[str, Any]) -> Step:
    def step(store: Store) -> None:
        for doc in docs:
            store.put(doc)

    return step


def _delete(*docs: dict[str, Any]) -> Step:
    def step(store: Store) -> None:
        for doc in docs:
            store.delete(doc)

    return step


RETRY = {"simmesh.io/retry-attempts": "2"}
TCP = {"simmesh.io/traffic-type": "tcp"}
GROUP = route_group("api", [http_match("all", path="/.*"), http_match("get", methods=["GET"])])
TARGET = traffic_target(
    "a-from-b", dest="a", sources=["b"], rules=[rule("HTTPRouteGroup", "api", ["all"])]
)
SPLIT = traffic_split("a-split", "a", [("a", 50), ("b", 50)])
ROUTE = http_route(
    "to-b", [parent("a", port=80)], [{"matches": [prefix("/b")], "backendRefs": [backend_ref("b")]}]
)

STEPS: list[tuple[str, Step]] = [
    (
        "start",
        _put(
            *app("a", ips=["10.1.0.1", "10.1.0.2"], cluster_ip="10.96.0.1"),
            *app("b", ips=["10.1.1.1"], cluster_ip="10.96.0.2"),
            *app("c", ips=["10.1.2.1"], cluster_ip="10.96.0.3"),
            *app("d", ips=["10.1.3.1"], ports=[("db", 5432, 5432)], annotations=TCP),
        ),
    ),
    ("annotate a", _put(service("a", ip="10.96.0.1", annotations=RETRY))),
    ("a's ClusterIP: its Hosts", _put(service("a", ip="10.96.0.9", annotations=RETRY))),
    (
        "b's endpoints",
        _put(
            endpoint_slice(
                "b", [endpoint("10.1.1.1", pod="b-0"), endpoint("10.1.1.2", node="node-1")]
            )
        ),
    ),
    ("c's slice deleted", _delete(endpoint_slice("c", []))),
    ("second slice for c", _put(endpoint_slice("c", [endpoint("10.1.2.9")], name="c-2"))),
    ("access", _put(GROUP, TARGET)),
    ("route group changed", _put(route_group("api", [http_match("all", path="/x.*")]))),
    ("split", _put(SPLIT)),
    ("GAMMA route", _put(ROUTE)),
    ("a pod's account", _put(pod("b-0", sa="other", ip="10.1.1.1"))),
    ("b deleted", _delete(service("b"))),
    ("b back", _put(service("b", ip="10.96.0.2"))),
    ("d deleted, e tcp", _delete(service("d"))),
    ("e tcp", _put(*app("e", ips=["10.1.4.1"], ports=[("db", 5432, 5432)], annotations=TCP))),
    ("split and route gone", _delete(SPLIT, ROUTE)),
    ("access gone", _delete(TARGET)),
    ("c unannotated", _put(service("c", ip="10.96.0.3", annotations={"simmesh.io/timeout": "3"}))),
]


@pytest.mark.parametrize(
    "settings",
    [Settings(), Settings(acl=True), Settings(capture=True)],
    ids=["default", "acl", "capture"],
)
def test_incremental_rebuild_equals_a_full_one(settings: Settings) -> None:
    store = Store()
    caches = (TopologyCache(), ConfigCache())
    previous: dict[str, int] = {}
    last_services: dict[str, Any] = {}
    reused = 0
    for name, step in STEPS:
        step(store)
        full = _build(store.snapshot(), settings, dict(previous))
        incremental = _build(store.snapshot(), settings, dict(previous), caches)
        assert incremental[0] == full[0], name  # the topology
        assert incremental[1] == full[1], name  # the config
        assert incremental[2] == full[2], name  # its JSON
        assert incremental[2] == schema.encode(incremental[1]), name
        assert incremental[1].version == full[1].version
        for key, built in incremental[0].services.items():
            reused += last_services.get(key) is built
        last_services = dict(incremental[0].services)
        previous = incremental[1].port_assignments()
    assert reused > 0  # the caches were used: unchanged Services are the same objects


def test_settings_change_invalidates_the_caches() -> None:
    store = Store()
    _put(*app("a", ips=["10.1.0.1"]), *app("b", ips=["10.1.1.1"]), GROUP, TARGET)(store)
    caches = (TopologyCache(), ConfigCache())
    _build(store.snapshot(), Settings(), {}, caches)
    for settings in (Settings(acl=True), Settings(zone="other"), Settings()):
        assert _build(store.snapshot(), settings, {}, caches) == _build(
            store.snapshot(), settings, {}
        )


def _compiled(store: Store, settings: Settings) -> schema.MeshConfig:
    return _build(store.snapshot(), settings, {})[1]


def _consistent(router: Router) -> None:
    """Every compiled route points at this router's own clusters."""
    for key, route in router.routes.items():
        assert route.doc == router.config.routes[key]
        assert route.cluster is router.clusters[route.doc.cluster]
        for each in route.split.clusters if route.split is not None else ():
            assert each is router.clusters[each.key]
        assert set(route_clusters(route.doc)) <= set(router.clusters)
    for key, cluster in router.clusters.items():
        doc = router.config.clusters[key]
        assert [e.ip for e in cluster.endpoints] == [e.ip for e in doc.endpoints]


@pytest.mark.parametrize("acl", [False, True])
def test_router_with_the_previous_one_compiles_the_same(acl: bool) -> None:
    settings = Settings(acl=acl)
    store = Store()
    router: Router | None = None
    config: schema.MeshConfig | None = None
    reader = schema.ConfigReader()
    last: schema.MeshConfig | None = None
    for name, step in STEPS:
        step(store)
        new = _compiled(store, settings)
        checked = schema.decode(schema.encode(new), config)  # checks only what changed
        assert checked == new, name
        read = reader.decode(schema.encode(new))  # decodes only what changed
        assert read == new, name
        if last is not None:
            same = [k for k in new.clusters if new.clusters[k] == last.clusters.get(k)]
            assert same or name == "start"
            assert all(read.clusters[k] is last.clusters[k] for k in same), name
        last = read
        fresh = Router(new)
        reusing = Router(new, router)
        _consistent(reusing)
        assert reusing.listeners == fresh.listeners, name
        assert {k: r.cluster.key for k, r in reusing.routes.items()} == {
            k: r.cluster.key for k, r in fresh.routes.items()
        }
        assert {p: {h: r.key for h, r in t.items()} for p, t in reusing.hosts.items()} == {
            p: {h: r.key for h, r in t.items()} for p, t in fresh.hosts.items()
        }
        if router is not None:
            kept = [k for k in new.clusters if reusing.clusters[k] is router.clusters.get(k)]
            assert all(new.clusters[k] == router.config.clusters[k] for k in kept)
        router, config = reusing, new


def test_check_with_the_previous_config_still_catches_what_changed() -> None:
    store = Store()
    _put(*app("a", ips=["10.1.0.1"]), *app("b", ips=["10.1.1.1"]))(store)
    good = _compiled(store, Settings())
    bad_ip = schema.encode(good).replace(b'"10.1.0.1"', b'"10.1.0.x"')
    with pytest.raises(schema.ConfigError, match="IP address"):
        schema.decode(bad_ip, good)
    # a route whose cluster went away, the route itself unchanged
    clusters = {k: v for k, v in good.clusters.items() if not k.startswith("demo/b")}
    import msgspec

    dangling = schema.encode(msgspec.structs.replace(good, clusters=clusters))
    with pytest.raises(schema.ConfigError, match="no cluster"):
        schema.decode(dangling, good)


def test_config_reader_checks_what_changed() -> None:
    store = Store()
    _put(*app("a", ips=["10.1.0.1"]), *app("b", ips=["10.1.1.1"]))(store)
    good = _compiled(store, Settings())
    reader = schema.ConfigReader()
    assert reader.decode(schema.encode(good)) == good
    bad_ip = schema.encode(good).replace(b'"10.1.0.1"', b'"10.1.0.x"')
    with pytest.raises(schema.ConfigError, match="IP address"):
        reader.decode(bad_ip)
    bad_type = schema.encode(good).replace(b'"port":8080', b'"port":"x"', 1)
    with pytest.raises(schema.ConfigError, match=r"clusters\[demo/a:80\]\.endpoints"):
        reader.decode(bad_type)
    with pytest.raises(schema.ConfigError, match="MeshConfig JSON"):
        reader.decode(b"{")
    assert reader.decode(schema.encode(good)) == good  # the last good one is still the base
