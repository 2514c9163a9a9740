"""The conformance suite against a real kube-apiserver (no nodes, no mesh): every manifest of
every case is accepted by the SMI and Gateway API CRDs (the chart's), objects written in older
versions reach the core in a layout it reads, and a cluster without simmesh is exit 2 with what
is missing."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest

from conformance import cli
from conformance import manifests as m
from conformance.cases import CASES
from conformance.kube import Kube
from conformance.model import Apply, Delete, Flowing
from mesh.core.parse import parse_objects
from tests.k8s import apiserver as k8s_harness

pytestmark = [pytest.mark.k8s, pytest.mark.timeout(300)]


def _fill(ns: str) -> Any:
    return lambda text: 9000 if text.startswith("$port:") else f"{ns}-{text[1:].lower()}"


GATEWAY = "gateway.networking.k8s.io/"


def test_every_case_manifest_is_accepted_and_read_by_the_core(
    apiserver: k8s_harness.Cluster,
) -> None:
    """SMI's here; the Gateway API routes of the GAMMA cases in test_route_status_k8s.py, which
    installs the Gateway API CRDs (the tests before it run without them)."""
    apply_every_manifest(apiserver, gateway=False)


def apply_every_manifest(apiserver: k8s_harness.Cluster, *, gateway: bool) -> None:
    """Every case's objects applied in order (Gateway API routes, or every other object)."""
    kube = Kube(apiserver.kubeconfig)
    try:
        if gateway:
            assert cli._gateway_api(kube, CASES) == []  # the suite finds the CRDs installed
        for i, case in enumerate(CASES):
            fill = _fill(f"conf{i}")
            for logical in case.namespaces():
                kube.apply(m.namespace(fill("$" + logical), "test"))
            for step in case.steps:
                for doc in getattr(step, "docs", ()):
                    if doc["apiVersion"].startswith(GATEWAY) != gateway:
                        continue
                    filled = m.substitute(doc, fill)
                    if isinstance(step, Delete):
                        kube.delete(*m.identity(filled))
                        continue
                    kube.apply(filled)  # the API server's CRD validation accepts it
                    assert isinstance(step, Apply | Flowing)
                    _read_back_as_the_controller_does(kube, filled)
    finally:
        kube.close()


def _read_back_as_the_controller_does(kube: Kube, doc: dict[str, Any]) -> None:
    """Through the version the controller watches; the core parses it without an error."""
    served = {
        "access.smi-spec.io": "v1alpha3",
        "specs.smi-spec.io": "v1alpha4",
        "split.smi-spec.io": "v1alpha4",
        "gateway.networking.k8s.io": "v1",
    }
    group = doc["apiVersion"].split("/")[0]
    if group not in served:
        return
    _, kind, ns, name = m.identity(doc)
    stored = kube.get(f"{group}/{served[group]}", kind, ns, name)
    errors = [e for e in parse_objects([stored]).errors if "without rules" not in e.message]
    assert errors == [], (doc, stored, errors)  # access-no-rules' TrafficTarget is meant to be one


def test_a_cluster_without_simmesh_is_exit_2(apiserver: k8s_harness.Cluster) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "conformance", "--kubeconfig", apiserver.kubeconfig],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert "simmesh is not installed: no namespace 'simmesh'" in done.stderr
