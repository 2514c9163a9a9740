"""simmesh prepare / cleanup / check against a real kube-apiserver (no kubelet: the DNS
Deployments are objects only). What CoreDNS does with the result is in test_dns_coredns.py."""

from __future__ import annotations

import argparse
import http.server
import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from mesh.dns import cli
from mesh.dns import corefile as cf
from mesh.dns import kubedns as kd
from tests.dns.corefiles import KUBEADM
from tests.dns.test_check import proxy_pod

try:
    from . import apiserver as k8s_harness
except ImportError:
    import apiserver as k8s_harness  # type: ignore[no-redef]

pytestmark = pytest.mark.k8s

Cluster = k8s_harness.Cluster
ROOT = Path(__file__).resolve().parents[2]
KS = "kube-system"
SHAPES = {
    "kubeadm": KUBEADM,
    "crlf": KUBEADM.replace("\n", "\r\n"),
    "no-trailing-newline": KUBEADM.rstrip("\n"),
    "tabs": KUBEADM.replace("       ", "\t\t").replace("    ", "\t"),
}


# --------------------------------------------------------------------------- helpers


def run(
    add: Callable[[argparse.ArgumentParser], None],
    runner: Callable[[argparse.Namespace], int],
    cluster: Cluster,
    *options: str,
) -> int:
    parser = argparse.ArgumentParser()
    add(parser)
    return runner(parser.parse_args(["--kubeconfig", cluster.kubeconfig, *options]))


def prepare(cluster: Cluster, *options: str) -> int:
    return run(cli.add_prepare_arguments, cli.run_prepare, cluster, *options)


def cleanup(cluster: Cluster, *options: str) -> int:
    return run(cli.add_cleanup_arguments, cli.run_cleanup, cluster, *options)


def check(cluster: Cluster, *options: str) -> int:
    return run(cli.add_check_arguments, cli.run_check, cluster, *options)


def cm_path(namespace: str, name: str = "") -> str:
    return f"/api/v1/namespaces/{namespace}/configmaps" + (f"/{name}" if name else "")


def dep_path(namespace: str, name: str = "") -> str:
    return f"/apis/apps/v1/namespaces/{namespace}/deployments" + (f"/{name}" if name else "")


def put_configmap(cluster: Cluster, name: str, data: dict[str, str]) -> None:
    cluster.create(cm_path(KS), {"metadata": {"name": name}, "data": data})


def put_deployment(cluster: Cluster, name: str, image: str, container: str = "coredns") -> None:
    labels = {"k8s-app": "kube-dns"}
    cluster.create(
        dep_path(KS),
        {
            "metadata": {"name": name, "labels": labels},
            "spec": {
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {"containers": [{"name": container, "image": image}]},
                },
            },
        },
    )


def put_proxy_pod(cluster: Cluster, namespace: str, node: str, *, ready: bool = True) -> None:
    """test_check's proxy pod on ``node``, created for real (no kubelet here: its status is
    written through the status subresource)."""
    pods = f"/api/v1/namespaces/{namespace}/pods"
    pod = proxy_pod(f"simmesh-proxy-{node}", node, ready=ready)
    status = pod.pop("status")
    pod["spec"]["containers"] = [{"name": "proxy", "image": "simmesh"}]
    cluster.create(pods, pod)
    cluster.merge_patch(f"{pods}/{pod['metadata']['name']}/status", {"status": status})


def put_coredns(cluster: Cluster, corefile: str = KUBEADM) -> None:
    put_configmap(cluster, "coredns", {"Corefile": corefile})
    put_deployment(cluster, "coredns", "registry.k8s.io/coredns/coredns:v1.11.3")


def corefile(cluster: Cluster) -> str:
    return str(cluster.get(cm_path(KS, "coredns"))["data"]["Corefile"])


def restarted_at(cluster: Cluster, namespace: str, name: str) -> str | None:
    template = cluster.get(dep_path(namespace, name))["spec"]["template"]
    annotations = (template.get("metadata") or {}).get("annotations") or {}
    return annotations.get("simmesh.io/restartedAt")


def exists(cluster: Cluster, path: str) -> bool:
    return cluster.request("GET", path)[0] == 200


# --------------------------------------------------------------------------- CoreDNS


def test_prepare_patches_the_corefile_and_restarts_coredns(
    clean_dns: Cluster, dns_mesh_namespace: str, capsys: pytest.CaptureFixture[str]
) -> None:
    put_coredns(clean_dns)
    assert prepare(clean_dns, "--namespace", dns_mesh_namespace) == 0
    settings = cf.DnsSettings(mesh_namespace=dns_mesh_namespace)
    assert corefile(clean_dns) == cf.prepare(KUBEADM, settings)
    assert restarted_at(clean_dns, KS, "coredns") is not None
    assert clean_dns.get(dep_path(KS, "coredns"))["metadata"]["generation"] == 2
    out = capsys.readouterr().out
    assert "cluster DNS: CoreDNS (ConfigMap kube-system/coredns)" in out
    assert "Deployment kube-system/coredns: restarted (simmesh.io/restartedAt=" in out


def test_prepare_twice_equals_once(clean_dns: Cluster, capsys: pytest.CaptureFixture[str]) -> None:
    put_coredns(clean_dns)
    assert prepare(clean_dns) == 0
    cm, dep = clean_dns.get(cm_path(KS, "coredns")), clean_dns.get(dep_path(KS, "coredns"))
    capsys.readouterr()
    assert prepare(clean_dns) == 0
    assert clean_dns.get(cm_path(KS, "coredns")) == cm
    assert clean_dns.get(dep_path(KS, "coredns")) == dep
    assert capsys.readouterr().out.endswith("DNS already prepared; nothing changed\n")


@pytest.mark.parametrize("original", SHAPES.values(), ids=SHAPES.keys())
def test_cleanup_restores_the_corefile_byte_for_byte(
    clean_dns: Cluster, dns_mesh_namespace: str, original: str, capsys: pytest.CaptureFixture[str]
) -> None:
    put_coredns(clean_dns, original)
    shadows = f"/api/v1/namespaces/{dns_mesh_namespace}/services"
    port = [{"port": 80, "targetPort": 5000}]
    labels = {"simmesh.io/shadow": "true", "app.kubernetes.io/managed-by": "simmesh"}
    shadow = {"metadata": {"name": "web-6d61657368-shop", "labels": labels}}
    clean_dns.create(shadows, {**shadow, "spec": {"ports": port}})
    clean_dns.create(shadows, {"metadata": {"name": "simmesh-controller"}, "spec": {"ports": port}})
    assert prepare(clean_dns, "--namespace", dns_mesh_namespace) == 0
    assert corefile(clean_dns) != original
    capsys.readouterr()
    assert cleanup(clean_dns, "--namespace", dns_mesh_namespace) == 0
    assert corefile(clean_dns) == original
    out = capsys.readouterr().out
    assert "Deployment kube-system/coredns: restarted" in out
    assert f"shadow Services in {dns_mesh_namespace}: 1 deleted" in out
    assert not exists(clean_dns, f"{shadows}/web-6d61657368-shop")
    assert exists(clean_dns, f"{shadows}/simmesh-controller")


def test_aks_coredns_custom(clean_dns: Cluster) -> None:
    put_coredns(clean_dns)
    user = {"log.override": "log\n"}
    put_configmap(clean_dns, "coredns-custom", user)
    assert prepare(clean_dns) == 0
    custom = clean_dns.get(cm_path(KS, "coredns-custom"))["data"]
    assert custom == {**user, cf.CUSTOM_KEY: cf.custom_server(cf.DnsSettings())}
    assert corefile(clean_dns) == KUBEADM
    assert restarted_at(clean_dns, KS, "coredns") is not None
    assert cleanup(clean_dns) == 0
    assert clean_dns.get(cm_path(KS, "coredns-custom"))["data"] == user


# --------------------------------------------------------------------------- kube-dns


def mesh_objects(namespace: str) -> list[str]:
    paths = []
    for manifest in kd.mesh_coredns_manifests(cf.DnsSettings(mesh_namespace=namespace)):
        api, kind = manifest["apiVersion"], manifest["kind"].lower() + "s"
        prefix = "/api/v1" if api == "v1" else f"/apis/{api}"
        if manifest["metadata"].get("namespace"):
            prefix += f"/namespaces/{namespace}"
        paths.append(f"{prefix}/{kind}/{manifest['metadata']['name']}")
    return paths


def test_kube_dns_without_its_configmap(clean_dns: Cluster, dns_mesh_namespace: str) -> None:
    put_deployment(clean_dns, "kube-dns", "registry.k8s.io/dns/k8s-dns-kube-dns:1.22.28", "kubedns")
    assert prepare(clean_dns, "--namespace", dns_mesh_namespace) == 0
    svc = clean_dns.get(f"/api/v1/namespaces/{dns_mesh_namespace}/services/simmesh-coredns")
    stubs = clean_dns.get(cm_path(KS, "kube-dns"))["data"]["stubDomains"]
    assert json.loads(stubs) == {"mesh": [svc["spec"]["clusterIP"]]}
    assert all(exists(clean_dns, path) for path in mesh_objects(dns_mesh_namespace))
    mesh_cm = clean_dns.get(cm_path(dns_mesh_namespace, "simmesh-coredns"))
    assert mesh_cm["data"]["Corefile"] == kd.mesh_corefile(
        cf.DnsSettings(mesh_namespace=dns_mesh_namespace)
    )
    assert restarted_at(clean_dns, KS, "kube-dns") is not None
    before = clean_dns.get(cm_path(KS, "kube-dns"))
    assert prepare(clean_dns, "--namespace", dns_mesh_namespace) == 0
    assert clean_dns.get(cm_path(KS, "kube-dns")) == before
    assert cleanup(clean_dns, "--namespace", dns_mesh_namespace) == 0
    assert not exists(clean_dns, cm_path(KS, "kube-dns"))
    assert not any(exists(clean_dns, path) for path in mesh_objects(dns_mesh_namespace))


def test_kube_dns_configmap_restored_exactly(clean_dns: Cluster, dns_mesh_namespace: str) -> None:
    put_deployment(clean_dns, "kube-dns", "registry.k8s.io/dns/k8s-dns-kube-dns:1.22.28", "kubedns")
    original = {
        "stubDomains": '{ "acme.local" : ["1.2.3.4"] }\n',
        "upstreamNameservers": '["8.8.8.8", "8.8.4.4"]',
    }
    put_configmap(clean_dns, "kube-dns", original)
    assert prepare(clean_dns, "--namespace", dns_mesh_namespace) == 0
    stubs = json.loads(clean_dns.get(cm_path(KS, "kube-dns"))["data"]["stubDomains"])
    assert set(stubs) == {"acme.local", "mesh"}
    assert cleanup(clean_dns, "--namespace", dns_mesh_namespace) == 0
    restored = clean_dns.get(cm_path(KS, "kube-dns"))
    assert restored["data"] == original
    assert "annotations" not in restored["metadata"]


# --------------------------------------------------------------------------- errors


def test_no_dns_is_exit_2_with_a_clear_message(
    clean_dns: Cluster, capsys: pytest.CaptureFixture[str]
) -> None:
    assert prepare(clean_dns) == 2
    err = capsys.readouterr().err
    assert err.startswith("simmesh prepare: error: no cluster DNS found in namespace kube-system")


def test_a_foreign_mesh_block_is_refused_and_left_alone(
    clean_dns: Cluster, capsys: pytest.CaptureFixture[str]
) -> None:
    theirs = KUBEADM + "mesh:53 {\n    forward . 10.0.0.1\n}\n"
    put_coredns(clean_dns, theirs)
    assert prepare(clean_dns) == 2
    assert (
        "error: ConfigMap kube-system/coredns: line 21: a server block for zone 'mesh' on "
        "port 53 already exists" in capsys.readouterr().err
    )
    assert corefile(clean_dns) == theirs
    assert restarted_at(clean_dns, KS, "coredns") is None


# --------------------------------------------------------------------------- check


@pytest.fixture
def controller() -> Iterator[dict[str, Any]]:
    """A stand-in for the controller's API on loopback: /readyz and /api/v1/nodes."""
    state: dict[str, Any] = {
        "ready": True,
        "nodes": {"version": "v2", "nodes": [{"node": "n1", "version": "v2", "lastSeen": 0}]},
    }

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/readyz":
                status, body = (200, b"ready\n") if state["ready"] else (503, b"not ready\n")
            elif self.path == "/api/v1/nodes":
                status, body = 200, json.dumps(state["nodes"]).encode()
            else:
                status, body = 404, b"not found\n"
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state["url"] = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_check_ok_then_each_failure(
    clean_dns: Cluster,
    dns_mesh_namespace: str,
    controller: dict[str, Any],
    capsys: pytest.CaptureFixture[str],
) -> None:
    options = ("--namespace", dns_mesh_namespace, "--controller", controller["url"])
    put_coredns(clean_dns)
    put_proxy_pod(clean_dns, dns_mesh_namespace, "n1")
    assert check(clean_dns, *options) == 1
    assert "DNS             FAIL    CoreDNS, ConfigMap kube-system/coredns: no simmesh" in (
        capsys.readouterr().out
    )
    assert prepare(clean_dns, "--namespace", dns_mesh_namespace) == 0
    capsys.readouterr()
    assert check(clean_dns, *options) == 0
    out = capsys.readouterr().out
    assert "FAIL" not in out
    assert "API server      OK      https://127.0.0.1:" in out
    assert "SMI CRDs        OK      5/5 established" in out
    assert "proxies         OK      1/1 on version v2" in out
    # the DaemonSet's proxy on n2 has not reported yet: not in sync, whatever the others say
    put_proxy_pod(clean_dns, dns_mesh_namespace, "n2", ready=False)
    assert check(clean_dns, *options) == 1
    out = capsys.readouterr().out
    assert (
        "proxies         FAIL    1/2 not on version v2: n2 has not reported (pod simmesh-proxy-n2, "
        "not ready)"
    ) in out
    controller["nodes"]["nodes"].append({"node": "n2", "version": "v1", "lastSeen": 1.0})
    controller["ready"] = False
    assert check(clean_dns, *options) == 1
    out = capsys.readouterr().out
    assert "controller      FAIL    " in out and "/readyz: HTTP 503 not ready" in out
    assert (
        "proxies         FAIL    1/2 not on version v2: n2's pod simmesh-proxy-n2 is not ready, "
        "n2 on v1, last seen"
    ) in out
    assert cleanup(clean_dns, "--namespace", dns_mesh_namespace) == 0


def test_check_wait_until_every_proxy_is_in_sync(
    clean_dns: Cluster,
    dns_mesh_namespace: str,
    controller: dict[str, Any],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`check --wait`: a proxy one poll behind passes once it catches up; one that never does
    fails when the time is up. Each failed try says why on stderr."""
    options = ("--namespace", dns_mesh_namespace, "--controller", controller["url"])
    put_coredns(clean_dns)
    assert prepare(clean_dns, "--namespace", dns_mesh_namespace) == 0
    put_proxy_pod(clean_dns, dns_mesh_namespace, "n1")
    put_proxy_pod(clean_dns, dns_mesh_namespace, "n2")
    capsys.readouterr()
    reported = {"node": "n2", "version": "v2", "lastSeen": 1.0}
    threading.Timer(2.5, controller["nodes"]["nodes"].append, (reported,)).start()
    started = time.monotonic()
    assert check(clean_dns, *options, "--wait", "30") == 0
    took = time.monotonic() - started
    captured = capsys.readouterr()
    assert "proxies         OK      2/2 on version v2" in captured.out
    assert (
        captured.err.count("simmesh check: not yet: proxies (1/2 not on version v2: n2 has not")
        >= 1
    )
    assert 2.5 <= took < 15, took
    controller["nodes"]["nodes"].remove(reported)
    started = time.monotonic()
    assert check(clean_dns, *options, "--wait", "3") == 1
    assert 3 <= time.monotonic() - started < 15
    captured = capsys.readouterr()
    assert "proxies         FAIL    1/2 not on version v2: n2 has not reported" in captured.out
    assert captured.err.count("simmesh check: not yet:") >= 1  # at 0 s, 2 s; the last try at 3 s
    assert cleanup(clean_dns, "--namespace", dns_mesh_namespace) == 0


def test_check_through_the_api_server_proxy(
    clean_dns: Cluster, dns_mesh_namespace: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without --controller the controller Service is reached via the API server; here it
    does not exist, and the row says so."""
    assert check(clean_dns, "--namespace", dns_mesh_namespace) == 1
    out = capsys.readouterr().out
    assert (
        f"controller      FAIL    Service {dns_mesh_namespace}/simmesh-controller:9000 (API proxy)"
        f'/readyz: HTTP 404 services "simmesh-controller" not found'
    ) in out


def test_the_cli_as_a_process(clean_dns: Cluster) -> None:
    put_coredns(clean_dns)

    def simmesh(*args: str) -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, "-m", "mesh.dns.cli", *args, "--kubeconfig", clean_dns.kubeconfig]
        return subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, timeout=60)

    done = simmesh("prepare")
    assert done.returncode == 0, done.stderr
    assert "server block for zone mesh -> namespace simmesh written" in done.stdout
    done = simmesh("cleanup")
    assert done.returncode == 0, done.stderr
    assert corefile(clean_dns) == KUBEADM
