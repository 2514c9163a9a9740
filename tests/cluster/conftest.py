"""Fixtures of the end-to-end tests on the kind cluster (``make test-cluster``).

The cluster comes from ``make kind-up`` (tools/kind/up.sh) and the image from ``make image``;
these tests then own the deployment: the session records CoreDNS, deploys simmesh in ACL mode
with the chart's own ServiceAccounts and RBAC (tools/kind/deploy.sh), starts the test app pods
(namespaces e2e-a and e2e-b, on different workers), and at the end removes the pods and
undeploys (the last test checks that CoreDNS is as it was). Measured times go to
out/cluster/times.json and the terminal summary.

Without a cluster these tests are skipped ("run make kind-up"), except under CI=true, where
that is a failure. They are not part of ``make test``: pyproject's testpaths leave them out.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.cluster import egress
from tests.cluster import kube as k

ROOT = Path(__file__).resolve().parents[2]
MESH_NS = "simmesh"
NS_A, NS_B = "e2e-a", "e2e-b"
TIMES: dict[str, float] = {}


def record(name: str, seconds: float) -> None:
    TIMES[name] = round(seconds, 2)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not TIMES:
        return
    out = ROOT / "out" / "cluster"
    out.mkdir(parents=True, exist_ok=True)
    (out / "times.json").write_text(json.dumps(TIMES, indent=2, sort_keys=True) + "\n")
    terminalreporter.section("measured on the kind cluster (out/cluster/times.json)")
    for name, value in TIMES.items():
        if name.endswith("(count)"):
            terminalreporter.write_line(f"{name:<55} {value:8.0f}")
        else:
            terminalreporter.write_line(f"{name:<55} {value:8.2f} s")


def _script(name: str, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SIMMESH": str(Path(sys.executable).parent / "simmesh")}
    done = subprocess.run(
        ["bash", str(ROOT / "tools" / "kind" / name), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )
    if done.returncode != 0:
        raise AssertionError(f"tools/kind/{name} {' '.join(args)} failed:\n{done.stderr}")
    return done


def _missing(message: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"{message}. CI must create it first: make kind-up image", pytrace=False)
    pytest.skip(f"{message} (run make kind-up image)")


@pytest.fixture(scope="session")
def kube() -> k.Kube:
    """kubectl on the kind cluster (fails under CI=true, skips otherwise, when there is none)."""
    bins = subprocess.run(
        ["bash", str(ROOT / "tools" / "k8s-bins.sh"), "--print-dir"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    kubectl = Path(bins) / "kubectl"
    cache = Path(os.environ.get("SIMMESH_CACHE", Path.home() / ".cache" / "simmesh"))
    kubeconfig = Path(os.environ.get("SIMMESH_KUBECONFIG", cache / "kind" / "simmesh.kubeconfig"))
    if not kubectl.exists():
        _missing(f"no kubectl in {bins}")
    if not kubeconfig.exists():
        _missing(f"no kind cluster (no kubeconfig {kubeconfig})")
    client = k.Kube(kubectl, kubeconfig)
    if client.run("get", "nodes", check=False, timeout=30).returncode != 0:
        _missing(f"the cluster of {kubeconfig} does not answer")
    return client


@pytest.fixture(scope="session", autouse=True)
def egress_before(kube: k.Kube) -> dict[str, int] | None:
    """The egress guards' drop counters before anything of this session ran (and the
    count-only rules that say what a dropped packet was, egress.classify)."""
    nodes = node_names(kube)
    egress.classify(nodes)
    return egress.snapshot(nodes)


def node_names(kube: k.Kube) -> list[str]:
    return sorted(n["metadata"]["name"] for n in kube.json("get", "nodes")["items"])


@pytest.fixture(scope="session")
def image() -> str:
    name = os.environ.get("SIMMESH_IMAGE", "simmesh/simmesh:dev")
    if subprocess.run(["docker", "image", "inspect", name], capture_output=True).returncode:
        _missing(f"no image {name}")
    return name


ENFORCERS = ("simmesh-netpol", "kindnet")  # tools/kind/netpol.sh; stock kind's CNI


def kind_binary() -> str:
    """The kind binary tools/kind/kind.sh built (it prints the path)."""
    done = subprocess.run(
        ["bash", str(ROOT / "tools" / "kind" / "kind.sh")], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def _enforcer(kube: k.Kube) -> str | None:
    names = {
        d["metadata"]["name"] for d in kube.json("get", "daemonsets", "-n", "kube-system")["items"]
    }
    return next((name for name in ENFORCERS if name in names), None)


def _netpol(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(ROOT / "tools" / "kind" / "netpol.sh"), *args],
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.fixture(scope="session")
def netpol_enforcer(kube: k.Kube) -> Iterator[str]:
    """The cluster's NetworkPolicy enforcer. tools/kind/netpol.sh installs one when there is
    none, for the rest of the session (removed at its end), if its binary is built; under
    CI=true always. First asked for after test_3_egress: with the enforcer on during the
    session's deploy, the egress guards counted packets to the service range
    (docs/security.md), so the modules that need it come after that one."""
    found = _enforcer(kube)
    installed = False
    if found is None:
        if os.environ.get("CI") != "true" and _netpol("built").returncode != 0:
            pytest.skip(
                "no NetworkPolicy enforcer on the cluster and no kube-router binary: "
                "make netpol-bins (about 3.5 CPU-minutes, cached), or KIND_NETPOL=1 make kind-up"
            )
        start = time.monotonic()
        done = _netpol("install")
        if done.returncode != 0:
            pytest.fail(f"tools/kind/netpol.sh install failed:\n{done.stderr}", pytrace=False)
        found, installed = "simmesh-netpol", True
        record("NetworkPolicy enforcer installed", time.monotonic() - start)
    kube.run("-n", "kube-system", "rollout", "status", f"daemonset/{found}", "--timeout=120s")
    try:
        yield found
    finally:
        if installed:
            done = _netpol("uninstall")
            assert done.returncode == 0, done.stderr


@dataclass
class Mesh:
    coredns_before: dict[str, str]
    undeployed: bool = False


def _coredns(kube: k.Kube) -> dict[str, str]:
    data: dict[str, str] = kube.json("get", "configmap", "-n", "kube-system", "coredns")["data"]
    return data


@pytest.fixture(scope="session")
def mesh(kube: k.Kube, image: str) -> Iterator[Mesh]:
    """simmesh deployed in ACL mode by the chart, after recording CoreDNS; undeployed after."""
    _script("undeploy.sh")  # a deployment left by hand would hide CoreDNS's original state
    state = Mesh(coredns_before=_coredns(kube))
    start = time.monotonic()
    _script("deploy.sh", image, "--set", "acl=true")
    record("deploy (kind load, helm install, prepare, check)", time.monotonic() - start)
    try:
        yield state
    finally:
        if not state.undeployed:
            _script("undeploy.sh")


@dataclass
class Workloads:
    kube: k.Kube
    a: k.App  # e2e-a/a on the first worker, ServiceAccount a
    b_v1: k.App  # e2e-b/b-v1 on the second worker, ServiceAccount b
    b_v2: k.App  # e2e-b/b-v2 on the second worker, ServiceAccount b
    nodes: dict[str, str]  # pod -> node
    workers: tuple[str, str]
    extra: dict[str, Any] = field(default_factory=dict)


def _manifests(image: str, workers: tuple[str, str]) -> list[dict[str, Any]]:
    first, second = workers
    docs: list[dict[str, Any]] = [k.namespace(NS_A), k.namespace(NS_B)]
    docs += [k.service_account(NS_A, "a"), k.service_account(NS_B, "b")]
    docs.append(k.testapp(NS_A, "a", account="a", node=first, labels={"app": "a"}, image=image))
    for version in ("v1", "v2"):
        labels = {"app": "b", "version": version}
        docs.append(
            k.testapp(NS_B, f"b-{version}", account="b", node=second, labels=labels, image=image)
        )
        docs.append(k.service(NS_B, f"b-{version}", labels))
    for ns, app in ((NS_A, "a"), (NS_B, "b")):
        docs.append(k.service(ns, app, {"app": app}))
        docs.append(k.service(ns, f"{app}-tcp", {"app": app}, protocol="tcp"))
        docs.append(k.service(ns, f"{app}-udp", {"app": app}, protocol="udp"))
    return docs


@pytest.fixture(scope="session")
def workloads(kube: k.Kube, mesh: Mesh, image: str) -> Iterator[Workloads]:
    """Test app pods: e2e-a/a on one worker, e2e-b/b-v1 and b-v2 on the other; removed after."""
    workers = kube.workers()
    assert len(workers) == 2, f"expected two workers, got {workers}"
    docs = _manifests(image, (workers[0], workers[1]))
    start = time.monotonic()
    kube.apply(docs)
    try:
        for ns in (NS_A, NS_B):
            kube.run("rollout", "status", "-n", ns, "deployment", "--timeout=180s", timeout=200)
        record("test app pods ready", time.monotonic() - start)
        pods = {
            name: (ns, kube.pod_names(ns, selector)[0])
            for name, ns, selector in (
                ("a", NS_A, "app=a"),
                ("b_v1", NS_B, "app=b,version=v1"),
                ("b_v2", NS_B, "app=b,version=v2"),
            )
        }
        placed = {
            p["metadata"]["name"]: p["spec"]["nodeName"]
            for ns in (NS_A, NS_B)
            for p in kube.pods(ns, "app")
        }
        yield Workloads(
            kube=kube,
            a=k.App(kube, *pods["a"]),
            b_v1=k.App(kube, *pods["b_v1"]),
            b_v2=k.App(kube, *pods["b_v2"]),
            nodes=placed,
            workers=(workers[0], workers[1]),
        )
    finally:
        kube.run(
            "delete", "namespace", NS_A, NS_B, "--ignore-not-found", "--timeout=120s", timeout=150
        )
