"""The prepare/cleanup/check entry points: options, exit codes and messages (no cluster)."""

from __future__ import annotations

import argparse
import os
import socket
from pathlib import Path

import pytest

from mesh.dns import cli
from mesh.dns.kube import KubeUnreachable, kubeconfig_source


@pytest.fixture
def no_kubeconfig(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing"))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    return tmp_path


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_options_and_defaults() -> None:
    parser = argparse.ArgumentParser()
    cli.add_check_arguments(parser)
    args = parser.parse_args([])
    assert (args.namespace, args.zone, args.cluster_domain) == ("simmesh", "mesh", "cluster.local")
    assert args.kubeconfig is None and args.controller is None
    parser = argparse.ArgumentParser()
    cli.add_prepare_arguments(parser)
    assert parser.parse_args([]).coredns_image.startswith("registry.k8s.io/coredns/coredns:")
    cli.add_cleanup_arguments(argparse.ArgumentParser())


@pytest.mark.parametrize("command", ["prepare", "cleanup"])
def test_no_kubeconfig_is_an_error(
    command: str, no_kubeconfig: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main([command]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"simmesh {command}: error: no Kubernetes configuration: pass --kube")


def test_a_broken_kubeconfig_is_an_error(
    no_kubeconfig: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = no_kubeconfig / "config"
    broken.write_text("apiVersion: v1\nkind: Config\nclusters: []\n")
    assert cli.main(["prepare", "--kubeconfig", str(broken)]) == 2
    assert f"simmesh prepare: error: kubeconfig {broken}: " in capsys.readouterr().err


def test_bad_settings_are_an_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["prepare", "--zone", "Mesh"]) == 2
    assert "error: zone 'Mesh': expected a lowercase DNS name" in capsys.readouterr().err


def test_check_wants_an_http_controller_url(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["check", "--controller", "controller:9000"]) == 2
    assert "--controller 'controller:9000': expected a URL" in capsys.readouterr().err


def test_check_wants_http_proxy_urls(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["check", "--proxy", "http://127.0.0.1:9901", "--proxy", "node-a:9901"]) == 2
    err = capsys.readouterr().err
    assert err == (
        "simmesh check: error: --proxy 'node-a:9901': expected a URL such as "
        "http://127.0.0.1:9901\n"
    )


@pytest.mark.parametrize("value", ["-1", "3601", "nan"])
def test_check_wait_is_bounded(value: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["check", "--wait", value]) == 2
    assert f"simmesh check: error: --wait {value}: expected 0 to 3600 seconds" in (
        capsys.readouterr().err
    )


def test_check_without_cluster_or_controller_fails_with_a_table(
    no_kubeconfig: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"http://127.0.0.1:{closed_port()}"
    assert cli.main(["check", "--controller", url]) == 1
    out = capsys.readouterr().out
    assert out.startswith("CHECK           RESULT  DETAIL\nAPI server      FAIL    no Kube")
    assert f"controller      FAIL    {url}/readyz: " in out
    assert out.count("FAIL") == 6


def test_kubeconfig_source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    first, second = tmp_path / "a", tmp_path / "b"
    second.write_text("{}")
    monkeypatch.setenv("KUBECONFIG", f"{first}{os.pathsep}{second}")
    assert kubeconfig_source(None) == f"{first}{os.pathsep}{second}"
    assert kubeconfig_source("explicit") == "explicit"
    monkeypatch.setenv("KUBECONFIG", str(first))
    with pytest.raises(KubeUnreachable, match="no Kubernetes configuration"):
        kubeconfig_source(None)
    (tmp_path / ".kube").mkdir()
    (tmp_path / ".kube" / "config").write_text("{}")
    assert kubeconfig_source(None) == str(tmp_path / ".kube" / "config")
    (tmp_path / ".kube" / "config").unlink()
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.96.0.1")
    assert kubeconfig_source(None) == "in-cluster"
