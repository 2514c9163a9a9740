"""Last: undeploy (simmesh cleanup, helm uninstall) leaves the cluster as it was, and a deploy
after an interrupted one recovers the release helm left pending."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.cluster import kube as k
from tests.cluster.conftest import MESH_NS, NS_B, ROOT, Mesh, Workloads, _coredns, _script

pytestmark = pytest.mark.timeout(300)


def test_undeploy_restores_coredns_byte_for_byte(
    kube: k.Kube, mesh: Mesh, workloads: Workloads
) -> None:
    assert _coredns(kube) != mesh.coredns_before  # prepared: the mesh zone is there
    _script("undeploy.sh")
    mesh.undeployed = True
    assert _coredns(kube) == mesh.coredns_before
    assert kube.run("get", "namespace", MESH_NS, check=False).returncode != 0
    assert kube.json("get", "services", "-A", "-l", "simmesh.io/shadow")["items"] == []
    kube.run("rollout", "status", "-n", "kube-system", "deployment/coredns", "--timeout=120s")
    # the mesh names are gone; plain cluster names still resolve and serve
    a = workloads.a
    gone = k.wait_for(
        "mesh names to stop resolving",
        lambda: (
            (r := a.call(f"http://b.{NS_B}.mesh:{k.HTTP_PORT}/")["results"][0])["error"] == "dns"
            and r
        ),
    )
    assert gone["status"] is None
    plain = a.call(f"http://b.{NS_B}.svc.cluster.local:{k.HTTP_PORT}/echo", count=3)
    assert plain["summary"]["statuses"] == {"200": 3}, plain


def _helm() -> str:
    bins = subprocess.run(
        ["bash", str(ROOT / "tools" / "k8s-bins.sh"), "--print-dir"],
        capture_output=True,
        text=True,
        check=True,
    )
    return str(Path(bins.stdout.strip()) / "helm")


def _release_status(helm: str, kube: k.Kube) -> str | None:
    done = subprocess.run(
        [helm, "status", "simmesh", "-n", MESH_NS, "-o", "json"],
        capture_output=True,
        text=True,
        env={**os.environ, "KUBECONFIG": str(kube.kubeconfig)},
    )
    return str(json.loads(done.stdout)["info"]["status"]) if done.returncode == 0 else None


def test_deploy_recovers_a_release_an_interrupted_deploy_left_pending(
    kube: k.Kube, mesh: Mesh, image: str
) -> None:
    """A deploy killed during `helm --wait` leaves the release pending-install, and helm then
    refuses every upgrade ("another operation is in progress"); deploy.sh clears it."""
    assert mesh.undeployed, "runs after the undeploy test"
    helm = _helm()
    # Pods that can never start (an image that is not there, never pulled) keep helm waiting.
    interrupted = subprocess.Popen(
        [
            helm,
            *("install", "simmesh", str(ROOT / "charts" / "simmesh"), "-n", MESH_NS),
            *("--create-namespace", "--wait", "--timeout", "240s"),
            *("--set", "controller.image.tag=absent", "--set", "controller.image.pullPolicy=Never"),
            *("--set", "proxy.image.tag=absent", "--set", "proxy.image.pullPolicy=Never"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "KUBECONFIG": str(kube.kubeconfig)},
    )
    try:
        k.wait_for(
            "helm to be waiting on the release",
            lambda: _release_status(helm, kube) == "pending-install",
        )
    finally:
        interrupted.kill()
        interrupted.wait(10)
    assert _release_status(helm, kube) == "pending-install"
    mesh.undeployed = False  # the session undeploys whatever this leaves
    done = _script("deploy.sh", image, "--set", "acl=true")
    assert "left pending-install by an interrupted deploy: uninstalling it" in done.stderr
    assert _release_status(helm, kube) == "deployed"
    _script("undeploy.sh")
    mesh.undeployed = True
    assert _release_status(helm, kube) is None
