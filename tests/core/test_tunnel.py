"""The core's side of mTLS (issue 17): whom a plaintext caller is judged as, and what the
destination proxy of a tunnel admits (Router.caller, Engine.decide_tunnel). Pure: values in,
decisions out."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from mesh.core.config import build_config
from mesh.core.model import MtlsMode, PortRange, Settings
from mesh.core.parse import parse_objects
from mesh.core.request import parse_request
from mesh.core.routing import Engine, Reason, Router
from mesh.core.schema import ConfigError, MeshConfig, check, decode, encode
from mesh.core.topology import build_topology

_ALL: dict[str, Any] = {"pathRegex": "/.*"}


def _objects(grant: bool, match: dict[str, Any] = _ALL) -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = [
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "far", "namespace": "demo"},
            "spec": {"ports": [{"name": "http", "port": 80, "targetPort": "http"}]},
        },
        {
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {
                "name": "far-0",
                "namespace": "demo",
                "labels": {"kubernetes.io/service-name": "far"},
            },
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            "endpoints": [
                {
                    "addresses": [ip],
                    "conditions": {"ready": True},
                    "nodeName": node,
                    "targetRef": {"kind": "Pod", "name": name},
                }
                for ip, node, name in (
                    ("10.0.2.1", "node-b", "far-b"),
                    ("10.0.1.9", "node-a", "far-a"),
                )
            ],
        },
    ]
    for name, ip, account, node in (
        ("client", "10.0.1.1", "client", "node-a"),
        ("far-b", "10.0.2.1", "server", "node-b"),
        ("far-a", "10.0.1.9", "server", "node-a"),
    ):
        docs.append(
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": name, "namespace": "demo"},
                "spec": {"serviceAccountName": account, "nodeName": node},
                "status": {"podIP": ip, "phase": "Running"},
            }
        )
    if grant:
        docs.append(
            {
                "apiVersion": "specs.smi-spec.io/v1alpha4",
                "kind": "HTTPRouteGroup",
                "metadata": {"name": "all", "namespace": "demo"},
                "spec": {"matches": [{"name": "all", **match}]},
            }
        )
        docs.append(
            {
                "apiVersion": "access.smi-spec.io/v1alpha3",
                "kind": "TrafficTarget",
                "metadata": {"name": "t", "namespace": "demo"},
                "spec": {
                    "destination": {
                        "kind": "ServiceAccount",
                        "name": "server",
                        "namespace": "demo",
                    },
                    "sources": [{"kind": "ServiceAccount", "name": "client", "namespace": "demo"}],
                    "rules": [{"kind": "HTTPRouteGroup", "name": "all", "matches": ["all"]}],
                },
            }
        )
    return docs


def _config(mode: MtlsMode, *, acl: bool = True, match: dict[str, Any] = _ALL) -> MeshConfig:
    settings = Settings(acl=acl, mtls=mode, http_ports=PortRange(8000, 1))
    state = parse_objects(_objects(grant=True, match=match))
    return build_config(build_topology(state, settings), settings)


def _cluster(config: MeshConfig) -> str:
    return next(iter(config.clusters))


def test_the_config_says_where_each_identified_pod_runs() -> None:
    mtls = _config(MtlsMode.STRICT).settings.mtls
    assert mtls is not None
    assert mtls.pods == {"10.0.1.1": "node-a", "10.0.1.9": "node-a", "10.0.2.1": "node-b"}
    assert _config(MtlsMode.OFF).settings.mtls is None


def test_identities_are_in_the_config_with_mtls_even_without_acl() -> None:
    assert _config(MtlsMode.PERMISSIVE, acl=False).identities["10.0.1.1"] == "demo/client"
    assert _config(MtlsMode.OFF, acl=False).identities == {}


@pytest.mark.parametrize(
    ("mode", "identity", "remote", "refused"),
    [
        (MtlsMode.OFF, "demo/client", False, None),
        (MtlsMode.PERMISSIVE, "demo/client", True, None),
        (MtlsMode.STRICT, None, True, Reason.PLAINTEXT_REFUSED),
    ],
)
def test_a_plaintext_caller_of_another_node(
    mode: MtlsMode, identity: str | None, remote: bool, refused: Reason | None
) -> None:
    caller = Router(_config(mode)).caller("10.0.1.1", "node-b")
    assert (caller.identity, caller.remote, caller.refused) == (identity, remote, refused)


def test_a_plaintext_caller_of_the_same_node_keeps_its_address_identity() -> None:
    caller = Router(_config(MtlsMode.STRICT)).caller("10.0.1.1", "node-a")
    assert (caller.identity, caller.remote, caller.refused) == ("demo/client", False, None)
    unknown = Router(_config(MtlsMode.STRICT)).caller("192.0.2.7", "node-a")
    assert (unknown.identity, unknown.refused) == (None, None)


def _decide(config: MeshConfig, *, ip: str, node: str, source: str | None) -> Any:
    engine = Engine(Router(config))
    request = parse_request("GET", "/", [("Host", "far.demo.mesh")])
    return engine.decide_tunnel(
        cluster=_cluster(config), ip=ip, port=8080, node=node, source=source, request=request
    )


def test_the_destination_admits_its_own_granted_pod_once() -> None:
    d = _decide(_config(MtlsMode.STRICT), ip="10.0.2.1", node="node-b", source="demo/client")
    assert d.allowed and d.endpoint.ip == "10.0.2.1"
    assert d.policy.retry is None  # the source proxy retries, not this one
    assert d.route is not None and d.route.service == "demo/far"


@pytest.mark.parametrize(
    ("ip", "node", "source", "reason"),
    [
        ("10.0.1.9", "node-b", "demo/client", Reason.NOT_LOCAL_TARGET),  # node-a's pod
        ("10.0.9.9", "node-b", "demo/client", Reason.UNKNOWN_TARGET),
        ("10.0.2.1", "node-b", "demo/intruder", Reason.NOT_GRANTED),
        ("10.0.2.1", "node-b", None, Reason.NO_IDENTITY),
    ],
)
def test_the_destination_refuses(ip: str, node: str, source: str | None, reason: Reason) -> None:
    d = _decide(_config(MtlsMode.STRICT), ip=ip, node=node, source=source)
    assert not d.allowed and d.reason is reason and d.status in (403, 404)


def test_an_unknown_cluster_is_refused() -> None:
    engine = Engine(Router(_config(MtlsMode.STRICT)))
    d = engine.decide_tunnel(
        cluster="demo/nope:1", ip="10.0.2.1", port=8080, node="node-b", source=None, request=None
    )
    assert d.reason is Reason.UNKNOWN_TARGET


def test_without_acl_any_identity_reaches_a_local_pod() -> None:
    d = _decide(_config(MtlsMode.PERMISSIVE, acl=False), ip="10.0.2.1", node="node-b", source="x/y")
    assert d.allowed


def test_the_tunnel_addresses_are_checked() -> None:
    config = _config(MtlsMode.STRICT)
    assert config.settings.mtls is not None
    for bad in ("10.0.0.1", "10.0.0.1:0", "node:15008", "10.0.0.1:99999"):
        mtls = msgspec.structs.replace(config.settings.mtls, proxies={"node-b": bad})
        broken = msgspec.structs.replace(
            config, settings=msgspec.structs.replace(config.settings, mtls=mtls)
        )
        with pytest.raises(ConfigError, match=r"settings\.mtls\.proxies\[node-b\]"):
            check(decode(encode(broken)))
    good = msgspec.structs.replace(config.settings.mtls, proxies={"node-b": "[::1]:15008"})
    assert Router(
        msgspec.structs.replace(
            config, settings=msgspec.structs.replace(config.settings, mtls=good)
        )
    ).proxies == {"node-b": ("::1", 15008)}


def _pipe(config: MeshConfig, *, ip: str = "10.0.2.1", source: str | None = "demo/client") -> Any:
    engine = Engine(Router(config))
    return engine.decide_pipe(
        cluster=_cluster(config), ip=ip, port=8080, node="node-b", source=source
    )


@pytest.mark.parametrize(
    ("match", "whole"),
    [
        ({"pathRegex": "/.*"}, True),
        ({"pathRegex": ".*"}, True),
        ({"pathRegex": "/"}, True),
        ({}, True),  # no path: every path
        ({"pathRegex": "/.*", "methods": ["*"]}, True),
        ({"pathRegex": "/api"}, False),
        ({"pathRegex": "/?.*"}, False),  # matches every path, not recognised: per request
        ({"pathRegex": "/.*", "methods": ["GET"]}, False),
        ({"pathRegex": "/.*", "headers": [{"x-user": "admin"}]}, False),
    ],
)
def test_a_pipe_is_admitted_as_a_whole_only_when_no_request_could_be_refused(
    match: dict[str, Any], whole: bool
) -> None:
    """Engine.decide_pipe: the destination relays a pipe without reading its requests only
    when deciding each would admit every one: a grant whose match every request meets."""
    config = _config(MtlsMode.STRICT, match=match)
    d = _pipe(config)
    assert d.allowed is whole, d.detail
    if not whole:
        assert "depend on the request" in d.detail
    router = Router(config)
    cluster = router.clusters[_cluster(config)]
    endpoint = next(e for e in cluster.endpoints if e.ip == "10.0.2.1")
    assert router.whole_access(cluster, endpoint, "demo/client") is whole
    assert router.whole_access(cluster, endpoint, "demo/intruder") is False


@pytest.mark.parametrize(
    ("ip", "source", "reason"),
    [
        ("10.0.1.9", "demo/client", Reason.NOT_LOCAL_TARGET),
        ("10.0.9.9", "demo/client", Reason.UNKNOWN_TARGET),
        ("10.0.2.1", "demo/intruder", Reason.NOT_GRANTED),
        ("10.0.2.1", None, Reason.NO_IDENTITY),
    ],
)
def test_a_pipe_is_refused_where_a_request_would_be(
    ip: str, source: str | None, reason: Reason
) -> None:
    d = _pipe(_config(MtlsMode.STRICT), ip=ip, source=source)
    assert not d.allowed and d.reason is reason


def test_without_acl_a_pipe_to_a_local_http_pod_is_whole() -> None:
    d = _pipe(_config(MtlsMode.STRICT, acl=False), source="x/y")
    assert d.allowed and d.endpoint.ip == "10.0.2.1" and d.policy.retry is None
    assert not _pipe(_config(MtlsMode.STRICT, acl=False), ip="10.0.1.9").allowed


def test_a_pipe_to_an_https_service_is_decided_per_request() -> None:
    """The pipe's bytes would go to the pod as they are; an https pod needs the proxy's TLS."""
    config = _config(MtlsMode.STRICT, acl=False)
    key = _cluster(config)
    cluster = msgspec.structs.replace(config.clusters[key], scheme="https")
    config = msgspec.structs.replace(config, clusters={**config.clusters, key: cluster})
    d = _pipe(config)
    assert not d.allowed and "https" in d.detail
