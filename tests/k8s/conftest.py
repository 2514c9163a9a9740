"""pytest fixtures for tests against a real kube-apiserver (see tests/k8s/apiserver.py).

``apiserver`` (session scope) starts etcd + kube-apiserver on 127.0.0.1 with the simmesh CRDs
installed and yields the running ``Cluster`` (``.kubeconfig``, ``.url``, ``.ca``,
``.restart()``, and a small stdlib client: ``.get``/``.create``/``.merge_patch``/``.delete``).

Binaries: ``$SIMMESH_BIN_DIR`` or ``tools/k8s-bins.sh --print-dir``. When they are missing the
tests are skipped ("run make k8s-bins"), except under CI=true, where that is a failure.
Depends on nothing else in the project.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

try:  # tests/k8s as a package
    from . import apiserver as k8s_harness
except ImportError:  # rootdir-relative import mode: tests/k8s is on sys.path
    import apiserver as k8s_harness  # type: ignore[no-redef]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "k8s: needs the real kube-apiserver and etcd binaries (make k8s-bins)"
    )


def _binaries_or_skip(names: tuple[str, ...]) -> dict[str, Any]:
    try:
        return k8s_harness.find_binaries(names)
    except k8s_harness.BinaryMissing as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{exc}. CI must build them first: run make k8s-bins", pytrace=False)
        pytest.skip(f"run make k8s-bins ({exc})")


@pytest.fixture(scope="session")
def k8s_binaries() -> dict[str, Any]:
    """Paths of etcd and kube-apiserver (skips, or fails under CI=true, when missing)."""
    return _binaries_or_skip(("etcd", "kube-apiserver"))


@pytest.fixture(scope="session")
def apiserver(
    k8s_binaries: dict[str, Any], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[k8s_harness.Cluster]:
    """A running etcd + kube-apiserver with the SMI CRDs Established; stopped at session end."""
    cluster = k8s_harness.Cluster(tmp_path_factory.mktemp("k8s"), binaries=k8s_binaries)
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


# --------------------------------------------------------------------------- DNS tests (mesh/dns)
# Used by tests/k8s/test_dns*.py; owned by the DNS integration.


@pytest.fixture(scope="session")
def coredns_binary() -> Any:
    """Path of the coredns binary (skips, or fails under CI=true, when missing)."""
    return _binaries_or_skip(("coredns",))["coredns"]


DNS_OBJECTS = (
    "/api/v1/namespaces/kube-system/configmaps/coredns",
    "/api/v1/namespaces/kube-system/configmaps/coredns-custom",
    "/api/v1/namespaces/kube-system/configmaps/kube-dns",
    "/apis/apps/v1/namespaces/kube-system/deployments/coredns",
    "/apis/apps/v1/namespaces/kube-system/deployments/kube-dns",
)


@pytest.fixture
def clean_dns(apiserver: k8s_harness.Cluster) -> Iterator[k8s_harness.Cluster]:
    """The cluster without kube-system DNS objects, before and after the test (they are
    cluster-wide singletons, so DNS tests must not see each other's)."""

    def clear() -> None:
        for path in DNS_OBJECTS:
            apiserver.request("DELETE", path)

    clear()
    try:
        yield apiserver
    finally:
        clear()


@pytest.fixture
def dns_mesh_namespace(apiserver: k8s_harness.Cluster) -> Iterator[str]:
    """A fresh mesh namespace (created, so check finds it), unique per test; deleted after
    (without a controller-manager it stays Terminating, which no other test sees)."""
    import uuid

    name = f"simmesh-dns-{uuid.uuid4().hex[:8]}"
    apiserver.create("/api/v1/namespaces", {"metadata": {"name": name}})
    try:
        yield name
    finally:
        apiserver.request("DELETE", f"/api/v1/namespaces/{name}")
