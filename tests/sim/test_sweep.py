"""Sweeps (sim/sweep.py, sim/runs.py): grids of several paths over several seeds, the same
numbers serially, on local processes and on a real Dask cluster, and bad input."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from mesh.cli import main
from sim.report import results_json
from sim.runs import Source
from sim.scenario import load_scenario
from sim.sweep import Axis, grid, sweep

ROOT = Path(__file__).resolve().parents[2]

SCENARIO = """
name: tiny
duration: 5
seed: 3
nodes: [node-a, node-b]
workloads:
  demo/web: {replicas: 2, latency: 0.01, errorRate: 0.01}
traffic:
  - {name: t, from: demo/client, to: "http://web.demo.mesh/", rate: 20}
slos:
  - {name: ok, successRate: 0.98}
  - {name: fast, latency: {p99: 0.5}}
"""
AXES = ["traffic[0].rate=10,20", "workloads.demo/web.errorRate=0,0.05"]


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    directory = tmp_path / "tiny"
    directory.mkdir()
    (directory / "scenario.yaml").write_text(SCENARIO)
    return directory


def test_the_grid_is_the_product_first_path_slowest() -> None:
    axes = [Axis.parse("a=1,2"), Axis.parse("b=x,y,z")]
    assert grid(axes) == [(a, b) for a in ("1", "2") for b in ("x", "y", "z")]
    for bad in ("a", "a=", "=1", "a=1,,2", "a=1,1"):
        with pytest.raises(Exception, match="--sweep"):
            Axis.parse(bad)


def test_serial_parallel_and_a_dask_cluster_give_the_same_bytes(tiny: Path) -> None:
    import distributed

    source = Source.of(load_scenario(tiny))
    axes = [Axis.parse(text) for text in AXES]
    seeds = [3, 4]
    serial = results_json(sweep(source, axes, seeds, workers=1).to_json())
    parallel = results_json(sweep(source, axes, seeds, workers=2).to_json())
    with distributed.LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        dashboard_address=None,
    ) as cluster:
        address = cluster.scheduler_address
        assert address.startswith("tcp://127.0.0.1:")
        on_cluster = results_json(sweep(source, axes, seeds, scheduler=address).to_json())
    assert serial == parallel == on_cluster
    points = sweep(source, axes, seeds).points
    assert [p["values"] for p in points] == [
        {"traffic[0].rate": r, "workloads.demo/web.errorRate": e}
        for r in ("10", "20")
        for e in ("0", "0.05")
    ]
    assert all(len(p["runs"]) == 2 and p["successRate"]["n"] == 2 for p in points)
    assert points[0]["successRate"]["mean"] == 1.0  # no errors at all
    assert points[1]["slos"][0]["passes"] < 2  # 5% errors fail the 98% SLO


def test_the_grid_command_prints_intervals_and_plots(tiny: Path, tmp_path: Path) -> None:
    args = ["sim", str(tiny), "--sweep", AXES[0], "--sweep", AXES[1], "--seeds", "3"]
    result = subprocess.run(
        [sys.executable, "-m", "mesh.cli", *args, "--workers", "2", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert result.returncode == 1, result.stderr  # the 5% error points fail an SLO
    lines = result.stdout.splitlines()
    assert lines[0].split()[:3] == ["traffic[0].rate", "workloads.demo/web.errorRate", "requests"]
    rows = [line.split() for line in lines[2:6]]
    assert [r[:2] for r in rows] == [["10", "0"], ["10", "0.05"], ["20", "0"], ["20", "0.05"]]
    assert all("±" in line for line in lines[2:6])
    assert rows[0][-2:] == ["PASS", "PASS"]
    assert "means over 3 seeds (3..5)" in result.stdout
    assert "12/12 runs" in result.stderr
    for name in ("sweep.json", "sweep.png", "sweep.txt"):
        assert (tmp_path / name).stat().st_size > 500


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--sweep", "nosuch=1,2"], "nosuch=1: scenario.yaml: nosuch: unknown key"),
        (["--sweep", "traffic[5].rate=1,2"], "no item 5"),
        (["--sweep", "duration=10,soon"], "duration=soon: scenario.yaml: duration"),
        (["--sweep", "duration=1,2", "--sweep", "duration=3"], "the same path twice"),
        (["--sweep", "duration=1", "--scheduler", "http://x"], "tcp://HOST:PORT"),
        (["--seeds", "2", "--scheduler", "tcp://127.0.0.1:{port}"], "no Dask scheduler answered"),
    ],
)
def test_bad_sweeps_are_one_line_and_exit_2(
    tiny: Path, capsys: pytest.CaptureFixture[str], args: list[str], expected: str
) -> None:
    port = _free_port()  # nothing listens there: the connect fails within the timeout
    argv = ["sim", str(tiny), *(a.format(port=port) for a in args), "--quiet"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("simmesh: error:")
    assert expected in err
