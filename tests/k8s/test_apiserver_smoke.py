"""Smoke tests of the real-apiserver harness and of the SMI CRDs in charts/simmesh/crds."""

from __future__ import annotations

import copy
import http.client
import json
import ssl
import uuid
from pathlib import Path
from typing import Any

import pytest

try:
    from . import apiserver as k8s_harness
except ImportError:
    import apiserver as k8s_harness  # type: ignore[no-redef]

pytestmark = pytest.mark.k8s

REPO_ROOT = Path(__file__).resolve().parents[2]


def _pinned_versions() -> dict[str, str]:
    out = {}
    for line in (REPO_ROOT / "tools" / "k8s-versions.env").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, value = line.split("=", 1)
            out[key] = value
    return out


@pytest.fixture(scope="module")
def ns(apiserver: k8s_harness.Cluster) -> str:
    name = f"smoke-{uuid.uuid4().hex[:8]}"
    apiserver.create("/api/v1/namespaces", {"metadata": {"name": name}})
    return name


# --------------------------------------------------------------------------- the server


def test_ready_and_version(apiserver: k8s_harness.Cluster) -> None:
    status, body = apiserver.request("GET", "/readyz", raw=True)
    assert status == 200, body
    version = apiserver.get("/version")
    assert version["gitVersion"] == _pinned_versions()["KUBERNETES_VERSION"]
    assert apiserver.url.startswith("https://127.0.0.1:")
    assert Path(apiserver.kubeconfig).is_file()
    assert Path(apiserver.ca).read_text().startswith("-----BEGIN CERTIFICATE-----")


def test_kubeconfig_points_at_the_server(apiserver: k8s_harness.Cluster) -> None:
    import yaml

    config = yaml.safe_load(Path(apiserver.kubeconfig).read_text())
    ctx = next(c for c in config["contexts"] if c["name"] == config["current-context"])
    cluster = next(c for c in config["clusters"] if c["name"] == ctx["context"]["cluster"])
    user = next(u for u in config["users"] if u["name"] == ctx["context"]["user"])
    assert cluster["cluster"]["server"] == apiserver.url
    assert cluster["cluster"]["certificate-authority-data"]
    assert user["user"]["client-certificate-data"] and user["user"]["client-key-data"]


def test_admin_identities(apiserver: k8s_harness.Cluster) -> None:
    """Both the client certificate and the static token are system:masters."""
    review = {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"}
    out = apiserver.create("/apis/authentication.k8s.io/v1/selfsubjectreviews", review)
    assert "system:masters" in out["status"]["userInfo"]["groups"]

    conn = http.client.HTTPSConnection(
        "127.0.0.1",
        apiserver.port,
        context=ssl.create_default_context(cafile=apiserver.ca),
        timeout=10,
    )
    try:
        conn.request(
            "POST",
            "/apis/authentication.k8s.io/v1/selfsubjectreviews",
            body=json.dumps(review),
            headers={
                "Authorization": f"Bearer {apiserver.token}",
                "Content-Type": "application/json",
            },
        )
        resp = conn.getresponse()
        body = json.loads(resp.read())
    finally:
        conn.close()
    assert resp.status == 201, body
    assert body["status"]["userInfo"]["username"] == "simmesh-admin"
    assert "system:masters" in body["status"]["userInfo"]["groups"]


# --------------------------------------------------------------------------- core objects


def test_service_endpointslice_pod(apiserver: k8s_harness.Cluster, ns: str) -> None:
    svc = apiserver.create(
        apiserver.namespaced("v1", ns, "services"),
        {
            "metadata": {"name": "web", "labels": {"app": "web"}},
            "spec": {
                "type": "ClusterIP",
                "selector": {"app": "web"},
                "ports": [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"}],
            },
        },
    )
    cluster_ip = svc["spec"]["clusterIP"]
    assert cluster_ip.startswith("10.96.")
    got = apiserver.get(apiserver.namespaced("v1", ns, "services", "web"))
    assert got["spec"]["clusterIP"] == cluster_ip
    assert got["spec"]["ports"][0]["targetPort"] == 8080

    es_path = apiserver.namespaced("discovery.k8s.io/v1", ns, "endpointslices")
    apiserver.create(
        es_path,
        {
            "metadata": {"name": "web-1", "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4",
            "endpoints": [
                {
                    "addresses": ["10.244.0.5"],
                    "conditions": {"ready": True},
                    "targetRef": {"kind": "Pod", "name": "web-0", "namespace": ns},
                }
            ],
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        },
    )
    listed = apiserver.get(es_path, query={"labelSelector": "kubernetes.io/service-name=web"})
    assert [i["metadata"]["name"] for i in listed["items"]] == ["web-1"]
    es = listed["items"][0]
    assert es["endpoints"][0]["addresses"] == ["10.244.0.5"]
    assert es["endpoints"][0]["conditions"]["ready"] is True
    assert es["ports"] == [{"name": "http", "port": 8080, "protocol": "TCP"}]

    pods = apiserver.namespaced("v1", ns, "pods")
    apiserver.create(
        pods,
        {
            "metadata": {"name": "web-0", "labels": {"app": "web"}},
            "spec": {
                "serviceAccountName": "web",
                "containers": [{"name": "app", "image": "simmesh/local-process"}],
            },
        },
    )
    # Pods here are local processes: the harness writes status.podIP itself. Pod IPs may be
    # loopback addresses (EndpointSlice addresses may not: see the next test).
    apiserver.merge_patch(
        f"{pods}/web-0/status",
        {
            "status": {
                "phase": "Running",
                "podIP": "127.0.0.7",
                "podIPs": [{"ip": "127.0.0.7"}],
                "conditions": [{"type": "Ready", "status": "True"}],
            }
        },
    )
    pod = apiserver.get(f"{pods}/web-0")
    assert pod["status"]["podIP"] == "127.0.0.7"
    assert pod["status"]["phase"] == "Running"
    assert pod["spec"]["serviceAccountName"] == "web"
    by_ip = apiserver.get(pods, query={"fieldSelector": "status.podIP=127.0.0.7"})
    assert [p["metadata"]["name"] for p in by_ip["items"]] == ["web-0"]


def test_endpointslice_rejects_loopback(apiserver: k8s_harness.Cluster, ns: str) -> None:
    """A fact the local-cluster harness must live with: EndpointSlices may not hold
    127.0.0.0/8 addresses (kube-apiserver validation), although Pod IPs may."""
    status, body = apiserver.request(
        "POST",
        apiserver.namespaced("discovery.k8s.io/v1", ns, "endpointslices"),
        {
            "metadata": {"name": "loopback"},
            "addressType": "IPv4",
            "endpoints": [{"addresses": ["127.0.0.5"]}],
            "ports": [{"port": 8080}],
        },
    )
    assert status == 422, body
    assert "loopback" in body["message"]


# --------------------------------------------------------------------------- SMI CRDs

SMI_CRDS = {
    # name: (group, kind, short name, storage version, served versions)
    "traffictargets.access.smi-spec.io": (
        "access.smi-spec.io",
        "TrafficTarget",
        "tt",
        "v1alpha3",
        {"v1alpha3", "v1alpha2", "v1alpha1"},
    ),
    "httproutegroups.specs.smi-spec.io": (
        "specs.smi-spec.io",
        "HTTPRouteGroup",
        "htr",
        "v1alpha4",
        {"v1alpha4", "v1alpha3", "v1alpha2", "v1alpha1"},
    ),
    "tcproutes.specs.smi-spec.io": (
        "specs.smi-spec.io",
        "TCPRoute",
        "tr",
        "v1alpha4",
        {"v1alpha4", "v1alpha3", "v1alpha1"},
    ),
    "udproutes.specs.smi-spec.io": (
        "specs.smi-spec.io",
        "UDPRoute",
        "ur",
        "v1alpha4",
        {"v1alpha4"},
    ),
    "trafficsplits.split.smi-spec.io": (
        "split.smi-spec.io",
        "TrafficSplit",
        "ts",
        "v1alpha4",
        {"v1alpha4", "v1alpha3", "v1alpha2", "v1alpha1"},
    ),
}


def test_crds_established_with_versions_and_short_names(apiserver: k8s_harness.Cluster) -> None:
    for name, (group, kind, short, storage, served) in SMI_CRDS.items():
        crd = apiserver.get(f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}")
        conds = {c["type"]: c["status"] for c in crd["status"]["conditions"]}
        assert conds["Established"] == "True", name
        assert conds["NamesAccepted"] == "True", name
        assert crd["spec"]["names"]["kind"] == kind
        assert crd["spec"]["names"]["shortNames"] == [short]
        assert crd["spec"]["conversion"]["strategy"] == "None"
        assert crd["status"]["storedVersions"] == [storage]
        assert {v["name"] for v in crd["spec"]["versions"] if v["served"]} == served
        assert [v["name"] for v in crd["spec"]["versions"] if v["storage"]] == [storage]
        plural = name.split(".", 1)[0]
        for version in served:
            discovery = apiserver.get(f"/apis/{group}/{version}")
            res = next(r for r in discovery["resources"] if r["name"] == plural)
            assert res["kind"] == kind and res["namespaced"] is True
            assert res["shortNames"] == [short]


SA = "ServiceAccount"


def _tt_v1alpha3() -> dict[str, Any]:
    return {
        "spec": {
            "destination": {"kind": SA, "name": "b", "namespace": "n"},
            "sources": [{"kind": SA, "name": "a", "namespace": "n"}],
            "rules": [
                {"kind": "HTTPRouteGroup", "name": "routes", "matches": ["metrics"]},
                {"kind": "TCPRoute", "name": "tcp"},
            ],
        }
    }


# (plural, group, version, body without metadata, fields that storage drops)
SMI_OBJECTS: list[tuple[str, str, str, dict[str, Any], list[str]]] = [
    ("traffictargets", "access.smi-spec.io", "v1alpha3", _tt_v1alpha3(), []),
    (
        "traffictargets",
        "access.smi-spec.io",
        "v1alpha2",
        {
            "spec": {
                "destination": {"kind": SA, "name": "b", "namespace": "n", "port": 8080},
                "sources": [{"kind": SA, "name": "a", "namespace": "n"}],
                "rules": [{"kind": "HTTPRouteGroup", "name": "routes", "matches": ["metrics"]}],
            }
        },
        # v1alpha3 has no destination.port: stored as v1alpha3, so it is dropped (SMI.md)
        ["spec.destination.port"],
    ),
    (
        "traffictargets",
        "access.smi-spec.io",
        "v1alpha1",
        {
            "destination": {"kind": SA, "name": "b", "namespace": "n", "port": 8080},
            "sources": [{"kind": SA, "name": "a", "namespace": "n"}],
            "specs": [{"kind": "HTTPRouteGroup", "name": "routes", "matches": ["metrics"]}],
        },
        [],
    ),
    (
        "httproutegroups",
        "specs.smi-spec.io",
        "v1alpha4",
        {
            "spec": {
                "matches": [
                    {
                        "name": "metrics",
                        "pathRegex": "/metrics",
                        "methods": ["GET", "HEAD"],
                        "headers": [{"user-agent": ".*curl.*"}, {"x-env": "prod"}],
                    },
                    {"name": "map-headers", "methods": ["*"], "headers": {"x-a": "1", "x-b": "2"}},
                    {"name": "any"},
                ]
            }
        },
        [],
    ),
    (
        "httproutegroups",
        "specs.smi-spec.io",
        "v1alpha3",
        {
            "spec": {
                "matches": [
                    {
                        "name": "echo",
                        "pathRegex": ".*",
                        "methods": ["GET"],
                        "headers": [{"content-type": "application/json"}],
                    }
                ]
            }
        },
        [],
    ),
    (
        "httproutegroups",
        "specs.smi-spec.io",
        "v1alpha2",
        {"spec": {"matches": [{"name": "echo", "pathRegex": "/echo", "methods": ["POST"]}]}},
        [],
    ),
    (
        "httproutegroups",
        "specs.smi-spec.io",
        "v1alpha1",
        {"matches": [{"name": "metrics", "pathRegex": "/metrics", "methods": ["*"]}]},
        [],
    ),
    (
        "tcproutes",
        "specs.smi-spec.io",
        "v1alpha4",
        {"spec": {"matches": {"name": "tcp", "ports": [8080, 9090]}}},
        [],
    ),
    ("tcproutes", "specs.smi-spec.io", "v1alpha3", {"spec": {}}, []),
    ("tcproutes", "specs.smi-spec.io", "v1alpha1", {}, []),
    (
        "udproutes",
        "specs.smi-spec.io",
        "v1alpha4",
        {"spec": {"matches": {"name": "dns", "ports": [53]}}},
        [],
    ),
    (
        "trafficsplits",
        "split.smi-spec.io",
        "v1alpha4",
        {
            "spec": {
                "service": "root",
                "backends": [{"service": "v1", "weight": 75}, {"service": "v2", "weight": 25}],
                "matches": [
                    {"kind": "HTTPRouteGroup", "name": "routes", "apiGroup": "specs.smi-spec.io"}
                ],
            }
        },
        [],
    ),
    (
        "trafficsplits",
        "split.smi-spec.io",
        "v1alpha3",
        {
            "spec": {
                "service": "root",
                "backends": [{"service": "v1", "weight": 1}, {"service": "v2", "weight": 0}],
                "matches": [{"kind": "HTTPRouteGroup", "name": "routes"}],
            }
        },
        [],
    ),
    (
        "trafficsplits",
        "split.smi-spec.io",
        "v1alpha2",
        {
            "spec": {
                "service": "root",
                "backends": [{"service": "v1", "weight": 50}, {"service": "v2", "weight": 50}],
            }
        },
        [],
    ),
    (
        "trafficsplits",
        "split.smi-spec.io",
        "v1alpha1",
        {
            "spec": {
                "service": "root",
                # Kubernetes quantities: kept as written, the reader converts (1 = 1000m)
                "backends": [{"service": "v1", "weight": "500m"}, {"service": "v2", "weight": 1}],
            }
        },
        [],
    ),
]


def _drop(body: dict[str, Any], dotted: str) -> None:
    *parents, last = dotted.split(".")
    for key in parents:
        body = body[key]
    del body[last]


def _content(obj: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in obj.items() if k not in ("apiVersion", "kind", "metadata")}


@pytest.mark.parametrize(
    ("plural", "group", "version", "body", "dropped"),
    SMI_OBJECTS,
    ids=[f"{p}-{v}" for p, _, v, _, _ in SMI_OBJECTS],
)
def test_smi_object_round_trip(
    apiserver: k8s_harness.Cluster,
    ns: str,
    plural: str,
    group: str,
    version: str,
    body: dict[str, Any],
    dropped: list[str],
) -> None:
    crd = next(v for k, v in SMI_CRDS.items() if k.startswith(f"{plural}.{group}"))
    kind, storage = crd[1], crd[3]
    name = f"{version}-obj"
    obj = {"apiVersion": f"{group}/{version}", "kind": kind, "metadata": {"name": name}}
    obj.update(copy.deepcopy(body))
    created = apiserver.create(apiserver.namespaced(f"{group}/{version}", ns, plural), obj)
    assert created["apiVersion"] == f"{group}/{version}"

    expected = copy.deepcopy(body)
    for field in dropped:
        _drop(expected, field)

    got = apiserver.get(apiserver.namespaced(f"{group}/{version}", ns, plural, name))
    assert got["apiVersion"] == f"{group}/{version}" and got["kind"] == kind
    assert _content(got) == expected

    # Conversion None: the stored object reads the same in the storage version.
    stored = apiserver.get(apiserver.namespaced(f"{group}/{storage}", ns, plural, name))
    assert stored["apiVersion"] == f"{group}/{storage}"
    assert _content(stored) == expected

    listed = apiserver.get(apiserver.namespaced(f"{group}/{version}", ns, plural))
    assert name in {i["metadata"]["name"] for i in listed["items"]}


@pytest.mark.parametrize(
    ("plural", "group", "version", "body", "message"),
    [
        (
            "traffictargets",
            "access.smi-spec.io",
            "v1alpha3",
            {"spec": {"sources": [{"kind": SA, "name": "a"}]}},
            "spec.destination: Required value",
        ),
        (
            "trafficsplits",
            "split.smi-spec.io",
            "v1alpha4",
            {"spec": {"service": "root", "backends": [{"service": "v1", "weight": "500m"}]}},
            "must be of type integer",
        ),
        (
            "trafficsplits",
            "split.smi-spec.io",
            "v1alpha4",
            {"spec": {"service": "root", "backends": [{"service": "v1", "weight": -1}]}},
            "should be greater than or equal to 0",
        ),
        (
            "tcproutes",
            "specs.smi-spec.io",
            "v1alpha4",
            {"spec": {"matches": {"name": "x", "ports": [70000]}}},
            "should be less than or equal to 65535",
        ),
        (
            "httproutegroups",
            "specs.smi-spec.io",
            "v1alpha4",
            {"spec": {"matches": [{"pathRegex": "/x"}]}},
            "spec.matches[0].name: Required value",
        ),
    ],
    ids=["tt-no-destination", "ts-quantity-v1alpha4", "ts-negative", "tr-port", "htr-no-name"],
)
def test_smi_schema_rejects(
    apiserver: k8s_harness.Cluster,
    ns: str,
    plural: str,
    group: str,
    version: str,
    body: dict[str, Any],
    message: str,
) -> None:
    kind = next(v[1] for k, v in SMI_CRDS.items() if k.startswith(f"{plural}.{group}"))
    obj = {"apiVersion": f"{group}/{version}", "kind": kind, "metadata": {"name": "invalid"}}
    obj.update(body)
    status, out = apiserver.request(
        "POST", apiserver.namespaced(f"{group}/{version}", ns, plural), obj
    )
    assert status == 422, out
    assert message in out["message"]


def test_unknown_fields_pruned_in_storage_version(apiserver: k8s_harness.Cluster, ns: str) -> None:
    obj = {
        "apiVersion": "access.smi-spec.io/v1alpha3",
        "kind": "TrafficTarget",
        "metadata": {"name": "pruned"},
        "spec": {"destination": {"kind": SA, "name": "b", "port": 80}, "bogus": True},
        "bogusTop": 1,
    }
    apiserver.create(apiserver.namespaced("access.smi-spec.io/v1alpha3", ns, "traffictargets"), obj)
    got = apiserver.get(
        apiserver.namespaced("access.smi-spec.io/v1alpha3", ns, "traffictargets", "pruned")
    )
    assert _content(got) == {"spec": {"destination": {"kind": SA, "name": "b"}}}


# --------------------------------------------------------------------------- restart


def test_restart_keeps_state_and_address(apiserver: k8s_harness.Cluster, ns: str) -> None:
    path = apiserver.namespaced("v1", ns, "configmaps")
    apiserver.create(path, {"metadata": {"name": "before"}, "data": {"k": "v"}})
    url, kubeconfig = apiserver.url, Path(apiserver.kubeconfig).read_text()
    etcd_pid = apiserver.pids()[0]

    apiserver.restart()

    assert apiserver.url == url
    assert Path(apiserver.kubeconfig).read_text() == kubeconfig
    assert apiserver.pids()[0] == etcd_pid  # same etcd
    assert apiserver.get(f"{path}/before")["data"] == {"k": "v"}
    apiserver.create(path, {"metadata": {"name": "after"}, "data": {"k": "w"}})
    assert apiserver.get(f"{path}/after")["data"] == {"k": "w"}
    # the CRDs are served again
    tt = apiserver.namespaced("access.smi-spec.io/v1alpha3", ns, "traffictargets")
    apiserver.create(
        tt,
        {
            "apiVersion": "access.smi-spec.io/v1alpha3",
            "kind": "TrafficTarget",
            "metadata": {"name": "after-restart"},
            **_tt_v1alpha3(),
        },
    )
    assert apiserver.get(f"{tt}/after-restart")["spec"]["destination"]["name"] == "b"
    assert "restart" in " ".join(apiserver.timings)
