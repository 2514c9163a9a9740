"""A deliberately broken mesh makes the suite fail, with a report that says why.

The broken mesh: simmesh deployed in default mode, so the proxies enforce no TrafficTarget,
while the suite is told the mesh runs in ACL mode (``--mode acl``), as a mesh whose ACL
enforcement is off would claim. The access cases (gamma-acl's access on the backend a route
chose included) must fail, each naming the denial it expected and what it saw; the split case,
honoured in either mode, must pass, so the failures are the broken feature's and not the
suite's. Every namespace is deleted afterwards.

Run by ``make conformance-kind`` (after the suite itself) on the kind cluster; it deploys
simmesh in default mode itself (tools/kind/deploy.sh, idempotent). Without a cluster it is
skipped, and fails under CI=true. Not part of ``make test``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from conformance.kube import Kube

pytestmark = pytest.mark.timeout(600)
ROOT = Path(__file__).resolve().parents[3]
PREFIX = "brk-"


@pytest.fixture(scope="module")
def kubeconfig() -> str:
    cache = Path(os.environ.get("SIMMESH_CACHE", Path.home() / ".cache" / "simmesh"))
    path = os.environ.get("SIMMESH_KUBECONFIG", str(cache / "kind" / "simmesh.kubeconfig"))
    if not Path(path).exists():
        message = f"no kind cluster (no kubeconfig {path}): run make kind-up"
        if os.environ.get("CI") == "true":
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    return path


@pytest.fixture(scope="module")
def default_mode(kubeconfig: str) -> str:
    """simmesh deployed in default mode: TrafficTargets are not enforced."""
    image = os.environ.get("SIMMESH_IMAGE", "simmesh/simmesh:dev")
    env = {**os.environ, "SIMMESH": str(Path(sys.executable).parent / "simmesh")}
    done = subprocess.run(
        [
            *("bash", str(ROOT / "tools/kind/deploy.sh"), image),
            *("--set", "acl=false", "--set", "gatewayAPI.installCRDs=true"),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=400,
    )
    assert done.returncode == 0, done.stderr
    return kubeconfig


def test_acl_enforcement_off_fails_the_access_cases_with_a_clear_report(
    default_mode: str, tmp_path: Path
) -> None:
    args = [
        sys.executable,
        "-m",
        "conformance",
        "--kubeconfig",
        default_mode,
        "--mode",
        "acl",
        "-k",
        "access-grant-revoke",
        "-k",
        "access-udp",
        "-k",
        "split-exact",
        "-k",
        "gamma-acl",
        "--timeout",
        "8",
        "--namespace-prefix",
        PREFIX,
        "--out",
        str(tmp_path),
    ]
    done = subprocess.run(args, capture_output=True, text=True, timeout=400, cwd=ROOT)
    print(done.stdout)
    assert done.returncode == 1, done.stdout + done.stderr

    cases = {c["name"]: c for c in json.loads((tmp_path / "report.json").read_text())["cases"]}
    assert {n: c["verdict"] for n, c in cases.items()} == {
        "access-grant-revoke": "fail",
        "access-udp": "fail",
        "split-exact": "pass",
        "gamma-acl": "fail",
    }
    http = next(s for s in cases["access-grant-revoke"]["steps"] if s["verdict"] == "fail")
    assert http["what"] == "no TrafficTarget: a -> b denied"
    assert http["expected"] == "a -> GET b/echo: HTTP 403 from the mesh with a reason"
    assert http["seen"].startswith("HTTP 200 from b x1 (polled"), http["seen"]
    gamma = next(s for s in cases["gamma-acl"]["steps"] if s["verdict"] == "fail")
    assert gamma["what"] == "GET /echo on b denied: the route chose d, where a has no grant"
    assert gamma["seen"].startswith("HTTP 200 from d x1 (polled"), gamma["seen"]
    udp = next(s for s in cases["access-udp"]["steps"] if s["verdict"] == "fail")
    assert udp["expected"].endswith(": no reply") and "reply from b" in udp["seen"], udp

    # the table people read says the same, under each failed case
    assert "access-grant-revoke  FAIL" in done.stdout
    assert "expected: a -> GET b/echo: HTTP 403 from the mesh with a reason" in done.stdout
    assert "seen: HTTP 200 from b x1" in done.stdout
    assert "1 passed, 3 failed, 0 errors, 0 skipped" in done.stdout
    suite = ET.parse(tmp_path / "junit.xml").getroot()
    assert (suite.get("tests"), suite.get("failures")) == ("4", "3")

    kube = Kube(default_mode)
    try:
        left = [
            ns["metadata"]["name"]
            for ns in kube.list_objects("v1", "Namespace", None, "smi-conformance/suite")
            if ns["metadata"]["name"].startswith(PREFIX)
            and not ns["metadata"].get("deletionTimestamp")
        ]
    finally:
        kube.close()
    assert left == []  # failed cases' namespaces are deleted too
