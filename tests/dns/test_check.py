"""simmesh check: each row on its own, and the rendered table."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from mesh.dns import apply, check
from mesh.dns import corefile as cf
from mesh.dns import kubedns as kd
from mesh.dns.kube import cluster_scoped, configmap, namespaced
from tests.dns import corefiles
from tests.dns.fakekube import FakeKube
from tests.dns.test_apply import coredns_cluster, kubedns_cluster

ROOT = Path(__file__).resolve().parents[2]
SETTINGS = cf.DnsSettings()
NOW = 1_000_000.0
CRDS = cluster_scoped("apiextensions.k8s.io/v1", "customresourcedefinitions")
PODS = namespaced("v1", "pods", "simmesh")


def run(work: Coroutine[Any, Any, Any]) -> Any:
    return asyncio.run(work)


class FakeController:
    where = "http://controller:9000"

    def __init__(self, answers: dict[str, tuple[int, str]] | None = None) -> None:
        self.answers = answers or {}

    async def get(self, path: str) -> tuple[int, str]:
        if path not in self.answers:
            raise aiohttp.ClientConnectionError("Cannot connect to host controller:9000")
        return self.answers[path]


def nodes(version: str | None, *entries: tuple[str, str, float]) -> tuple[int, str]:
    listed = [{"node": n, "version": v, "lastSeen": seen} for n, v, seen in entries]
    return 200, json.dumps({"version": version, "nodes": listed})


def healthy_controller() -> FakeController:
    return FakeController(
        {
            "/readyz": (200, "ready\n"),
            "/api/v1/nodes": nodes("v7", ("n1", "v7", NOW - 1), ("n2", "v7", NOW - 2)),
        }
    )


def ready_cluster(kube: FakeKube | None = None) -> FakeKube:
    kube = kube or coredns_cluster()
    for name in check.SMI_CRDS:
        established = {"conditions": [{"type": "Established", "status": "True"}]}
        kube.put(CRDS, {"metadata": {"name": name}, "status": established})
    kube.put(cluster_scoped("v1", "namespaces"), {"metadata": {"name": "simmesh"}})
    for node in ("n1", "n2"):
        kube.put(PODS, proxy_pod(f"simmesh-proxy-{node}", node))
    run(apply.prepare(kube, SETTINGS, now="t", report=lambda _: None))
    return kube


def proxy_pod(
    name: str,
    node: str | None,
    *,
    ready: bool = True,
    terminating: bool = False,
    tunnel: bool = False,
) -> dict[str, Any]:
    """A pod of the chart's proxy DaemonSet, as the API server lists it."""
    condition = {"type": "Ready", "status": "True" if ready else "False"}
    metadata: dict[str, Any] = {"name": name, "labels": {"app.kubernetes.io/name": "simmesh-proxy"}}
    if terminating:
        metadata["deletionTimestamp"] = "2026-12-01T00:00:00Z"
    spec: dict[str, Any] = {"nodeName": node} if node else {}
    if tunnel:  # the chart's proxy with mTLS on
        ports = [
            {"name": "admin", "containerPort": 9901},
            {"name": "tunnel", "containerPort": 15008},
        ]
        spec["containers"] = [{"name": "proxy", "ports": ports}]
    return {"metadata": metadata, "spec": spec, "status": {"conditions": [condition]}}


def rows(kube: FakeKube | None, controller: check.Controller | None, **kw: Any) -> dict[str, Any]:
    out = run(check.run_checks(kube, controller, SETTINGS, now=NOW, **kw))
    return {row.name: row for row in out}


# --------------------------------------------------------------------------- all good


def test_everything_ok() -> None:
    table = rows(ready_cluster(), healthy_controller())
    assert list(table) == [
        "API server",
        "SMI CRDs",
        "mesh namespace",
        "DNS",
        "controller",
        "proxies",
        "certificates",
    ]
    assert all(row.ok for row in table.values()), table
    # the proxy pods have no tunnel port: mTLS off, and no proxy is asked
    assert table["certificates"].detail == "mTLS off (no proxy pod has a tunnel port)"
    assert table["API server"].detail == "https://fake:6443, Kubernetes v1.37.2"
    assert table["SMI CRDs"].detail == "5/5 established"
    assert table["DNS"].detail == (
        "CoreDNS, ConfigMap kube-system/coredns: server block maps mesh to namespace simmesh"
    )
    assert table["proxies"].detail == "2/2 on version v7"


def test_kube_dns_ok_and_a_hand_edited_mesh_corefile() -> None:
    kube = ready_cluster(kubedns_cluster())
    assert rows(kube, healthy_controller())["DNS"].ok
    kube.objects[configmap("simmesh", kd.MESH_COREDNS)]["data"]["Corefile"] = "x"
    dns = rows(kube, healthy_controller())["DNS"]
    assert not dns.ok and "its Corefile is not the one prepare writes" in dns.detail


# --------------------------------------------------------------------------- failures


def test_missing_crds_are_named() -> None:
    kube = ready_cluster()
    del kube.objects[f"{CRDS}/udproutes.specs.smi-spec.io"]
    kube.objects[f"{CRDS}/tcproutes.specs.smi-spec.io"]["status"] = {}
    row = rows(kube, healthy_controller())["SMI CRDs"]
    assert not row.ok
    assert row.detail == (
        "3/5 established; missing: tcproutes.specs.smi-spec.io, udproutes.specs.smi-spec.io"
    )
    assert "crds" in row.hint


def test_unprepared_and_stale_dns() -> None:
    kube = ready_cluster()
    kube.objects[configmap("kube-system", "coredns")]["data"]["Corefile"] = corefiles.KUBEADM
    row = rows(kube, healthy_controller())["DNS"]
    assert not row.ok and row.detail.endswith("no simmesh server block")
    assert row.hint == check.PREPARE_HINT
    other = cf.DnsSettings(zone="other")
    stale = cf.prepare(corefiles.KUBEADM, other)
    kube.objects[configmap("kube-system", "coredns")]["data"]["Corefile"] = stale
    row = rows(kube, healthy_controller())["DNS"]
    assert not row.ok
    assert "differs from what prepare writes for zone mesh" in row.detail
    assert "(simmesh blocks for zones: other)" in row.detail


def test_no_dns_at_all() -> None:
    kube = ready_cluster()
    del kube.objects[configmap("kube-system", "coredns")]
    row = rows(kube, healthy_controller())["DNS"]
    assert not row.ok and row.detail.startswith("no cluster DNS found")
    assert row.hint == check.DNS_HINT


def test_no_client_marks_the_cluster_rows_unchecked() -> None:
    table = rows(None, None, kube_problem="no Kubernetes configuration: pass --kubeconfig")
    assert not any(row.ok for row in table.values())
    assert table["API server"].detail == "no Kubernetes configuration: pass --kubeconfig"
    assert table["DNS"].detail == "not checked: the API server is unreachable"
    assert table["controller"].detail.startswith("not reachable")


def test_unreachable_api_server() -> None:
    kube = ready_cluster()
    kube.unreachable = True
    table = rows(kube, healthy_controller())
    assert table["API server"].detail == "GET https://fake:6443: connection refused"
    assert table["SMI CRDs"].detail.startswith("not checked")
    assert table["controller"].ok


def test_controller_not_ready_or_down() -> None:
    down = rows(ready_cluster(), FakeController())
    assert not down["controller"].ok
    assert "Cannot connect to host controller:9000" in down["controller"].detail
    assert "kubectl -n simmesh logs deploy/simmesh-controller" in down["controller"].hint
    busy = FakeController({"/readyz": (503, "no config built yet\n")})
    row = rows(ready_cluster(), busy)["controller"]
    assert row.detail == "http://controller:9000/readyz: HTTP 503 no config built yet"


@pytest.mark.parametrize(
    ("answer", "detail"),
    [
        (
            nodes("v7", ("n1", "v7", NOW), ("n2", "v6", NOW - 12.4)),
            "1/2 not on version v7: n2 on v6, last seen 12s ago",
        ),
        (
            nodes("v7"),
            "2/2 not on version v7: n1 has not reported (pod simmesh-proxy-n1), n2 has not "
            "reported (pod simmesh-proxy-n2)",
        ),
        (nodes(None), "the controller has no config yet"),
        ((200, "[]"), 'http://controller:9000/api/v1/nodes: expected JSON {"version": ...'),
        (
            (503, '{"kind": "Status", "message": "no endpoints available"}'),
            "http://controller:9000/api/v1/nodes: HTTP 503 no endpoints available",
        ),
    ],
)
def test_proxies(answer: tuple[int, str], detail: str) -> None:
    controller = FakeController({"/readyz": (200, "ready"), "/api/v1/nodes": answer})
    row = rows(ready_cluster(), controller)["proxies"]
    assert not row.ok
    assert row.detail.startswith(detail.removesuffix("..."))


@pytest.mark.parametrize(
    ("pods", "detail"),
    [
        # the DaemonSet runs a proxy on n3 that never reported: found by the conformance suite
        # (check passed "1/1" on a two-worker kind cluster before the second proxy was up)
        (
            [("simmesh-proxy-n3", "n3", True)],
            "1/3 not on version v7: n3 has not reported (pod simmesh-proxy-n3)",
        ),
        (
            [("simmesh-proxy-n3", "n3", False)],
            "1/3 not on version v7: n3 has not reported (pod simmesh-proxy-n3, not ready)",
        ),
        ([("simmesh-proxy-x", None, False)], "1/3 not on version v7: pod simmesh-proxy-x is not"),
        ([("simmesh-proxy-n2", "n2", False)], "0/2 not on version v7: n2's pod simmesh-proxy-n2"),
    ],
)
def test_every_proxy_pod_must_have_reported(
    pods: list[tuple[str, str | None, bool]], detail: str
) -> None:
    kube = ready_cluster()
    for name, node, ready in pods:
        kube.put(PODS, proxy_pod(name, node, ready=ready))
    row = rows(kube, healthy_controller())["proxies"]
    assert not row.ok
    assert row.detail.startswith(detail), row.detail


def test_a_terminating_proxy_beside_its_replacement_is_not_waited_for() -> None:
    """A rolling update surges: the old proxy drains (unready once it stops accepting) while
    the new one on the same node serves."""
    kube = ready_cluster()
    kube.put(PODS, proxy_pod("simmesh-proxy-old", "n1", ready=False, terminating=True))
    assert rows(kube, healthy_controller())["proxies"].ok
    # the only proxy of its node, terminating and not ready: that node has none
    kube = ready_cluster()
    kube.objects.pop(f"{PODS}/simmesh-proxy-n1")
    kube.put(PODS, proxy_pod("simmesh-proxy-old", "n1", ready=False, terminating=True))
    row = rows(kube, healthy_controller())["proxies"]
    assert not row.ok and "n1's pod simmesh-proxy-old is not ready" in row.detail, row.detail


def test_proxies_are_the_proxy_pods_when_the_api_server_answers() -> None:
    kube = ready_cluster()
    for name in ("simmesh-proxy-n1", "simmesh-proxy-n2"):
        kube.objects.pop(f"{PODS}/{name}")
    assert rows(kube, healthy_controller())["proxies"].detail == (
        "no proxy pod (app.kubernetes.io/name=simmesh-proxy) in namespace simmesh"
    )
    # a node that left (the controller still lists it until its TTL) is not a proxy to wait for
    kube = ready_cluster()
    kube.objects.pop(f"{PODS}/simmesh-proxy-n2")
    gone = FakeController(
        {
            "/readyz": (200, "ready"),
            "/api/v1/nodes": nodes("v7", ("n1", "v7", NOW), ("n2", "v6", NOW - 40)),
        }
    )
    row = rows(kube, gone)["proxies"]
    assert (row.ok, row.detail) == (True, "1/1 on version v7")
    # without an API server, what reported is all there is to compare
    row = run(check.check_proxies(gone, "simmesh", now=NOW))
    assert row.detail.startswith("1/2 not on version v7: n2 on v6")


def test_the_controller_through_the_api_servers_proxy() -> None:
    kube = ready_cluster()
    proxied = check.ProxiedController(kube, "simmesh")
    row = rows(kube, proxied)["controller"]  # the fake answers 503 like a Service without pods
    assert proxied.base == "/api/v1/namespaces/simmesh/services/http:simmesh-controller:9000/proxy"
    assert row.detail.endswith("readyz: HTTP 503 no endpoints available for service")


# --------------------------------------------------------------------------- output and data


def test_render() -> None:
    table = check.render(
        [
            check.Row("API server", True, "https://x, Kubernetes v1.37.2"),
            check.Row("DNS", False, "no simmesh server block", "run `simmesh prepare`"),
        ]
    )
    assert table == (
        "CHECK       RESULT  DETAIL\n"
        "API server  OK      https://x, Kubernetes v1.37.2\n"
        "DNS         FAIL    no simmesh server block\n"
        "                    hint: run `simmesh prepare`\n"
    )


def test_smi_crds_are_the_charts() -> None:
    names = set()
    for path in (ROOT / "charts" / "simmesh" / "crds").glob("*.yaml"):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc.get("kind") == "CustomResourceDefinition":
                names.add(doc["metadata"]["name"])
    assert names == set(check.SMI_CRDS)


# --------------------------------------------------------------------------- certificates

HOUR = 3600.0


def held(identity: str, left: float, lifetime: float = HOUR, **extra: Any) -> dict[str, Any]:
    namespace, _, name = identity.partition("/")
    return {
        "identity": identity,
        "spiffeId": f"spiffe://cluster.local/ns/{namespace}/sa/{name}",
        "fingerprint": "sha256:" + "ab" * 32,
        "issued": "2026-12-01T10:00:00+00:00",
        "notAfter": "2026-12-01T11:00:00+00:00",
        "lifetimeSeconds": lifetime,
        "ageSeconds": lifetime - left,
        "secondsToExpiry": left,
        **extra,
    }


def proxy_state(
    node: str = "n1",
    *,
    mode: str = "strict",
    wanted: tuple[str, ...] = ("shop/web",),
    identities: list[dict[str, Any]] | None = None,
    root_left: float = 3000 * 86400.0,
    pending: dict[str, Any] | None = None,
) -> dict[str, Any]:
    identities = [held(w, 3000.0) for w in wanted] if identities is None else identities
    names = {i["identity"] for i in identities}
    return {
        "node": node,
        "version": "v7",
        "mtls": mode,
        "trustDomain": "cluster.local",
        "wanted": list(wanted),
        "missing": [w for w in wanted if w not in names],
        "identities": identities,
        "roots": [
            {
                "fingerprint": "sha256:" + "cd" * 32,
                "subject": "O=simmesh,CN=simmesh root cluster.local",
                "notAfter": "2036-12-01T00:00:00+00:00",
                "secondsToExpiry": root_left,
            }
        ],
        "tunnels": {"client": 0, "server": 0},
        "manager": None if pending is None else {"pending": pending},
    }


def test_a_proxy_holding_every_local_identity_is_ok_and_lists_them() -> None:
    row = check.certificate_row(proxy_state(wanted=("shop/web", "shop/db")))
    assert (row.name, row.ok, row.warn) == ("certificates n1", True, False)
    assert row.detail == (
        "mTLS strict, trust domain cluster.local, 2/2 identities of the node's pods held"
    )
    assert row.lines == (
        "spiffe://cluster.local/ns/shop/sa/web  expires in 50m 0s (2026-12-01T11:00:00+00:00), "
        "issued 10m 0s ago",
        "spiffe://cluster.local/ns/shop/sa/db  expires in 50m 0s (2026-12-01T11:00:00+00:00), "
        "issued 10m 0s ago",
        "root sha256:cdcdcdcdcdcdcdcd O=simmesh,CN=simmesh root cluster.local  expires in 3000d 0h "
        "(2036-12-01T00:00:00+00:00)",
    )


def test_a_local_identity_without_a_certificate_fails_with_the_cas_answer() -> None:
    state = proxy_state(
        wanted=("shop/web", "shop/db"),
        identities=[held("shop/web", 3000.0)],
        pending={"shop/db": {"error": "denied: NoPodOnNode: ...", "retryAt": "x"}},
    )
    row = check.certificate_row(state)
    assert not row.ok
    assert row.detail.endswith(
        "1/2 identities of the node's pods held: no certificate for "
        "shop/db (denied: NoPodOnNode: ...)"
    )
    assert "kubectl get csr" in row.hint
    # permissive too: a pod whose node proxy cannot prove its identity gets no tunnels
    assert not check.certificate_row(proxy_state(mode="permissive", identities=[])).ok


def test_close_to_expiry_warns_and_expired_fails() -> None:
    # no manager: under a quarter of the lifetime left warns
    assert not check.certificate_row(proxy_state(identities=[held("shop/web", 1000.0)])).warn
    row = check.certificate_row(proxy_state(identities=[held("shop/web", 800.0)]))
    assert (row.ok, row.warn) == (True, True)
    assert row.detail.endswith(": shop/web expires in 13m 20s")
    assert "renewals are failing" in row.hint
    # a manager's renewal time: a minute late warns (whatever is left), on time does not
    late = held("shop/web", 1500.0, secondsToRenewal=-61.0)
    assert check.certificate_row(proxy_state(identities=[late])).warn
    on_time = held("shop/web", 800.0, secondsToRenewal=10.0)  # renews at 0.8 of its life
    assert not check.certificate_row(proxy_state(identities=[on_time])).warn
    row = check.certificate_row(
        proxy_state(identities=[held("shop/web", 300.0, secondsToRenewal=-30)])
    )
    assert row.warn  # under a tenth left
    row = check.certificate_row(proxy_state(identities=[held("shop/web", -90.0)]))
    assert (row.ok, row.detail.endswith("shop/web expired 1m 30s ago")) == (False, True)
    assert "EXPIRED 1m 30s ago" in row.lines[0]


def test_trust_roots_close_to_expiry_warn_and_expired_fail() -> None:
    row = check.certificate_row(proxy_state(root_left=10 * 86400.0))
    assert (row.ok, row.warn) == (True, True)
    assert row.detail.endswith("root sha256:cdcdcdcdcdcdcdcd expires in 10d 0h")
    assert "rotate the root" in row.hint
    row = check.certificate_row(proxy_state(root_left=-1.0))
    assert not row.ok and "root sha256:cdcdcdcdcdcdcdcd expired" in row.detail
    state = proxy_state()
    state["roots"] = []
    assert "no trust root" in check.certificate_row(state).detail


def test_render_shows_warnings_and_the_lines_of_a_row() -> None:
    table = check.render(
        [
            check.Row("proxies", True, "2/2 on version v7"),
            check.Row("certificates n1", True, "soon", "renew", warn=True, lines=("a", "b")),
        ]
    )
    assert table == (
        "CHECK            RESULT  DETAIL\n"
        "proxies          OK      2/2 on version v7\n"
        "certificates n1  WARN    soon\n"
        "                           a\n"
        "                           b\n"
        "                         hint: renew\n"
    )


def test_the_proxy_pods_certificates_through_the_api_servers_pod_proxy() -> None:
    kube = ready_cluster()
    for node in ("n1", "n2"):
        kube.put(PODS, proxy_pod(f"simmesh-proxy-{node}", node, tunnel=True))
    kube.put(PODS, proxy_pod("simmesh-proxy-old", "n2", terminating=True, tunnel=True))
    base = "/api/v1/namespaces/simmesh/pods/{}:9901/proxy/certificates"
    kube.texts[base.format("simmesh-proxy-n1")] = (200, json.dumps(proxy_state("n1")))
    kube.texts[base.format("simmesh-proxy-n2")] = (
        200,
        json.dumps(proxy_state("n2", wanted=("shop/db",), identities=[])),
    )
    table = rows(kube, healthy_controller())
    assert table["certificates n1"].ok
    assert not table["certificates n2"].ok
    assert table["certificates n2"].detail.endswith("no certificate for shop/db")
    # the terminating proxy beside its replacement is not asked
    assert sorted(kube.text_paths[-2:]) == [
        base.format("simmesh-proxy-n1"),
        base.format("simmesh-proxy-n2"),
    ]
    # a proxy pod the caller may not reach (RBAC on pods/proxy) fails its own row
    kube.texts[base.format("simmesh-proxy-n1")] = (
        403,
        '{"kind": "Status", "message": "pods \\"simmesh-proxy-n1\\" is forbidden"}',
    )
    row = rows(kube, healthy_controller())[
        "certificates pod simmesh/simmesh-proxy-n1:9901 (API proxy)"
    ]
    assert not row.ok and 'HTTP 403 pods "simmesh-proxy-n1" is forbidden' in row.detail


def test_every_proxy_with_mtls_off_is_one_row() -> None:
    class Fixed:
        def __init__(self, state: dict[str, Any]) -> None:
            self.where = f"http://{state['node']}:9901"
            self.state = state

        async def get(self, path: str) -> tuple[int, str]:
            assert path == "/certificates"
            return 200, json.dumps(self.state)

    off = [Fixed(proxy_state(n, mode="off", wanted=(), identities=[])) for n in ("n1", "n2")]
    [row] = run(check.check_certificates(list(off)))
    assert (row.name, row.ok, row.detail) == ("certificates", True, "mTLS off on 2 proxies")
    mixed = [off[0], Fixed(proxy_state("n2"))]
    names = [r.name for r in run(check.check_certificates(list(mixed)))]
    assert names == ["certificates n1", "certificates n2"]
    broken = Fixed(proxy_state("n3"))
    broken.state = {"identities": "no"}  # not what a proxy answers
    [row] = run(check.check_certificates([broken]))
    assert not row.ok and row.detail.endswith("not the JSON a proxy answers")


def test_a_certificate_of_a_root_the_proxy_does_not_trust_fails() -> None:
    trusted = "sha256:" + "cd" * 32
    ok = check.certificate_row(proxy_state(identities=[held("shop/web", 3000.0, root=trusted)]))
    assert ok.ok and ok.lines[0].endswith(", root sha256:cdcdcdcdcdcdcdcd")
    stray = held("shop/web", 3000.0, root="sha256:" + "ef" * 32)
    row = check.certificate_row(proxy_state(identities=[stray]))
    assert not row.ok and "shop/web is signed by no root it trusts" in row.detail


def test_proxies_trusting_different_roots_warn_naming_who_is_behind() -> None:
    """A root announced for a rotation: every proxy should trust it within the bundle's
    refresh; one that does not would refuse its peers' certificates once it signs."""
    a, b = proxy_state("n1"), proxy_state("n2")
    assert check.roots_row([("a", a)]) is None
    same = check.roots_row([("a", a), ("b", b)])
    assert same is not None and (same.ok, same.warn) == (True, False)
    assert same.detail == "the same 1 root on every proxy"
    new = dict(a["roots"][0], fingerprint="sha256:" + "ef" * 32)
    a["roots"] = [*a["roots"], new]
    row = check.roots_row([("a", a), ("b", b)])
    assert row is not None and (row.ok, row.warn) == (True, True)
    assert row.detail == "1 proxy trusts fewer roots than the others (2 with mTLS on)"
    assert row.lines == ("n2 does not trust sha256:efefefefefefefef",)
    assert "--trust-bundle-refresh" in row.hint
    off = proxy_state("n3", mode="off")
    assert check.roots_row([("a", a), ("c", off)]) is None  # one proxy with mTLS on
