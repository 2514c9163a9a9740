"""``simmesh snapshot`` against a fake API server and a fake Prometheus: the directory it
writes, that the simulator runs it unchanged, and the one-line errors (exit 2)."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from mesh.cli import main
from sim.scenario import load_scenario
from tests.snapshot import world
from tests.snapshot.fakeapi import Fake, kubeconfig, serving


@pytest.fixture
def fake() -> Iterator[Fake]:
    with serving(Fake()) as running:
        yield running


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_snapshot_from_the_proxies_runs_in_the_simulator(
    fake: Fake, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out, slos = tmp_path / "snap", tmp_path / "slos.yaml"
    argv = ["snapshot", "--kubeconfig", str(kubeconfig(tmp_path, fake.port))]
    argv += ["--window", "1s", "--out", str(out), "--propose-slos", str(slos), "--quiet"]
    assert main(argv) == 0
    printed = capsys.readouterr()
    assert "shop/web" in printed.out and "wrote" in printed.out
    assert "UDPRoute objects: specs.smi-spec.io/v1alpha4 is not served" in printed.err
    assert not any("secret" in p for p in fake.paths)
    assert fake.scrapes == {"simmesh-proxy-a": 2, "simmesh-proxy-b": 2}
    files = {p.name: p.read_text() for p in out.iterdir()}
    assert set(files) == {
        "scenario.yaml",
        "mesh.yaml",
        "services.yaml",
        "endpointslices.yaml",
        "pods.yaml",
        "traffictargets.yaml",
        "httproutegroups.yaml",
        "tcproutes.yaml",
        "snapshot.json",
    }
    everything = "".join(files.values())
    assert "hunter2" not in everything and "managedFields" not in everything
    assert "kube-system" not in everything and "6d61657368" not in everything  # not watched
    assert files["mesh.yaml"] == world.MESH_YAML
    scenario = load_scenario(out)
    assert scenario.name == "snap" and {t.source for t in scenario.traffic} == {
        "shop/frontend",
        "shop/web",
    }
    assert main(["sim", str(out), "--out", str(tmp_path / "sim"), "--quiet"]) == 0
    proposed = yaml.safe_load(slos.read_text())["slos"]
    assert {s["service"] for s in proposed} == {"shop/web", "shop/db"}


def test_a_snapshot_from_prometheus_takes_the_window_that_ended(fake: Fake, tmp_path: Path) -> None:
    out = tmp_path / "snap"
    argv = ["snapshot", "--kubeconfig", str(kubeconfig(tmp_path, fake.port)), "--window", "2m"]
    argv += ["--prometheus", f"http://127.0.0.1:{fake.port}/prom", "--out", str(out)]
    assert main(argv) == 0
    assert not fake.scrapes  # the proxies were not asked
    raw = yaml.safe_load((out / "scenario.yaml").read_text())
    rates = {t["to"]: t["rate"] for t in raw["traffic"]}
    assert rates["http://web.shop.mesh:8080/"] == pytest.approx(world.WEB_RATE, rel=0.01)
    assert rates["tcp://db.shop.mesh:5432"] == pytest.approx(world.DB_RATE, rel=0.01)
    assert {t["node"] for t in raw["traffic"]} == {"node-a", "node-b"}  # from the instances
    assert raw["duration"] == 120


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse: a bad option value
        code = int(exc.code or 0)
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("simmesh"), err
    return err


def test_a_cluster_without_simmesh(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with serving(Fake(installed=False)) as fake:
        config = str(kubeconfig(tmp_path, fake.port))
        err = run(["snapshot", "--kubeconfig", config, "--out", str(tmp_path / "o")], capsys)
    assert "no namespace simmesh: simmesh is not installed there" in err
    assert not (tmp_path / "o").exists()


def test_a_window_without_traffic(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with serving(Fake(traffic=False)) as fake:
        config = str(kubeconfig(tmp_path, fake.port))
        argv = ["snapshot", "--kubeconfig", config, "--window", "1s", "--out", str(tmp_path / "o")]
        err = run([*argv, "--quiet"], capsys)
    assert "no traffic through the mesh" in err and not (tmp_path / "o").exists()


def test_an_unreachable_api_server(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = str(kubeconfig(tmp_path, closed_port()))
    err = run(["snapshot", "--kubeconfig", config, "--out", str(tmp_path / "o")], capsys)
    assert "cannot reach the API server" in err


def test_an_unreachable_prometheus(
    fake: Fake, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = str(kubeconfig(tmp_path, fake.port))
    argv = ["snapshot", "--kubeconfig", config, "--out", str(tmp_path / "o")]
    err = run([*argv, "--prometheus", f"http://127.0.0.1:{closed_port()}"], capsys)
    assert "--prometheus" in err and "cannot query it" in err


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (["--window", "0s"], "--window"),
        (["--window", "5 minutes"], "--window"),
        (["--window", "8d"], "--window"),
        (["--namespace", "Sim_Mesh"], "--namespace"),
        (["--prometheus", "prometheus:9090"], "--prometheus"),
        (["--slo-margin", "-1"], "--slo-margin"),
        (["--name", "../x"], "--name"),
    ],
)
def test_bad_options(
    extra: list[str], expected: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    err = run(["snapshot", "--out", str(tmp_path / "o"), *extra], capsys)
    assert expected in err


def test_out_must_be_new_and_the_slos_outside_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x.yaml").write_text("{}")
    err = run(["snapshot", "--out", str(tmp_path / "full")], capsys)
    assert "exists and is not an empty directory" in err
    argv = ["snapshot", "--out", str(tmp_path / "o"), "--propose-slos", str(tmp_path / "o/s.yaml")]
    assert "put it outside --out" in run(argv, capsys)
