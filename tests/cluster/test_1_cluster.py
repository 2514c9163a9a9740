"""The cluster and the deployment: nodes, images, least privilege, simmesh check."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.cluster import kube as k
from tests.cluster.conftest import MESH_NS, Mesh, Workloads

pytestmark = pytest.mark.timeout(600)
CONTROLLER_SA = f"system:serviceaccount:{MESH_NS}:simmesh-controller"
PROXY_SA = f"system:serviceaccount:{MESH_NS}:simmesh-proxy"


def test_three_nodes_of_the_pinned_kubernetes_version(kube: k.Kube) -> None:
    versions = Path(__file__).resolve().parents[2] / "tools" / "k8s-versions.env"
    wanted = next(
        line.split("=", 1)[1]
        for line in versions.read_text().splitlines()
        if line.startswith("KUBERNETES_VERSION=")
    )
    nodes = kube.json("get", "nodes")["items"]
    assert len(nodes) == 3
    for node in nodes:
        ready = {c["type"]: c["status"] for c in node["status"]["conditions"]}["Ready"]
        assert ready == "True", node["metadata"]["name"]
        assert node["status"]["nodeInfo"]["kubeletVersion"] == wanted


def test_one_proxy_per_worker_and_workloads_on_different_nodes(
    kube: k.Kube, workloads: Workloads
) -> None:
    proxies = kube.pods(MESH_NS, "app.kubernetes.io/name=simmesh-proxy")
    assert sorted(p["spec"]["nodeName"] for p in proxies) == sorted(workloads.workers)
    assert workloads.nodes[workloads.a.pod] != workloads.nodes[workloads.b_v1.pod]


def test_no_pod_ever_pulled_an_image(kube: k.Kube, workloads: Workloads) -> None:
    pulls = kube.json("get", "events", "-A", "--field-selector", "reason=Pulling")["items"]
    assert [e["message"] for e in pulls] == []
    for pod in kube.json("get", "pods", "-A")["items"]:
        for container in pod["spec"]["containers"]:
            assert container["imagePullPolicy"] in ("Never", "IfNotPresent"), pod["metadata"]
    ours = kube.pods(MESH_NS, "app.kubernetes.io/part-of=simmesh")
    assert {c["imagePullPolicy"] for p in ours for c in p["spec"]["containers"]} == {"Never"}


def _can(kube: k.Kube, user: str, *args: str) -> bool:
    done = kube.run("auth", "can-i", "--as", user, *args, check=False)
    assert done.stdout.strip() in ("yes", "no"), done.stderr
    return done.stdout.strip() == "yes"


def test_controller_runs_with_the_charts_service_account_and_no_more(
    kube: k.Kube, mesh: Mesh
) -> None:
    (pod,) = kube.pods(MESH_NS, "app.kubernetes.io/name=simmesh-controller")
    assert pod["spec"]["serviceAccountName"] == "simmesh-controller"
    needed = [
        ("list", "services", "-A"),
        ("watch", "endpointslices.discovery.k8s.io", "-A"),
        ("list", "traffictargets.access.smi-spec.io", "-A"),
        ("create", "services", "-n", MESH_NS),
        ("create", "events", "-n", "default"),
    ]
    for args in needed:
        assert _can(kube, CONTROLLER_SA, *args), args
    not_needed = [
        ("create", "services", "-n", "default"),  # shadows only in the mesh namespace
        ("delete", "pods", "-n", MESH_NS),
        ("get", "secrets", "-n", MESH_NS),
        ("list", "secrets", "-A"),
        ("update", "configmaps", "-n", "kube-system"),  # DNS is edited by `simmesh prepare`
        ("patch", "deployments.apps", "-n", "kube-system"),
        ("create", "traffictargets.access.smi-spec.io", "-n", "default"),
        ("create", "clusterrolebindings.rbac.authorization.k8s.io"),
    ]
    for args in not_needed:
        assert not _can(kube, CONTROLLER_SA, *args), args


def test_proxies_have_no_api_access_and_no_token(kube: k.Kube, mesh: Mesh) -> None:
    for verb, resource in (("get", "pods"), ("list", "services"), ("get", "configmaps")):
        assert not _can(kube, PROXY_SA, verb, resource, "-A")
    for pod in kube.pods(MESH_NS, "app.kubernetes.io/name=simmesh-proxy"):
        assert pod["spec"]["automountServiceAccountToken"] is False
        mounts = [m["mountPath"] for c in pod["spec"]["containers"] for m in c["volumeMounts"]]
        assert not any("serviceaccount" in m for m in mounts), mounts


def test_pods_run_as_non_root_with_a_read_only_root(kube: k.Kube, mesh: Mesh) -> None:
    for pod in kube.pods(MESH_NS, "app.kubernetes.io/part-of=simmesh"):
        assert pod["spec"]["securityContext"]["runAsUser"] == 65532
        for container in pod["spec"]["containers"]:
            assert container["securityContext"]["readOnlyRootFilesystem"] is True


def test_image_carries_only_the_runtime(image: str) -> None:
    """The runtime and the admission gate's simulator (simpy, numpy: the gate extra), and none
    of the tools: no plotting, load generator, test runner, type checker, Dask or pip."""
    probe = (
        "import importlib.util as u, os; "
        "extra = [m for m in ('matplotlib', 'locust', 'pytest', 'mypy', 'dask', 'pip') "
        "if u.find_spec(m)]; "
        "need = [m for m in ('aiohttp', 'kubernetes_asyncio', 'uvloop', 'opentelemetry.sdk', "
        "'mesh.testapp', 'simpy', 'numpy', 'mesh.gate', 'sim.model') if not u.find_spec(m)]; "
        "print(os.getuid(), extra, need)"
    )
    done = subprocess.run(
        ["docker", "run", "--rm", "--entrypoint", "python3", image, "-c", probe],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.stdout.split(None, 1) == ["65532", "[] []\n"], done.stderr


def test_simmesh_check_reports_every_proxy_in_sync(kube: k.Kube, workloads: Workloads) -> None:
    simmesh = str(Path(sys.executable).parent / "simmesh")
    args = ["check", "--kubeconfig", str(kube.kubeconfig), "--namespace", MESH_NS]
    done = subprocess.run(
        [simmesh, *args, "--wait", "30"],  # a proxy may be one poll behind the new workloads
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    rows = {line.split()[0]: line for line in done.stdout.splitlines()[1:] if line.strip()}
    assert "OK" in rows["proxies"] and "2/2 on version" in rows["proxies"], done.stdout
    for name in ("API", "SMI", "mesh", "DNS", "controller"):
        assert " OK " in rows[name], rows[name]
