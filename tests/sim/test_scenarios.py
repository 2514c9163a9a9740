"""Scenario files: validation errors name the file and the field; the CLI's outputs and exit
codes; every scenario in the library runs with the verdict its README promises."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from sim.scenario import ScenarioError, load_scenario

ROOT = Path(__file__).resolve().parents[2]
SCENARIOS = ROOT / "scenarios"

GOOD = """
duration: 10
workloads:
  ns/api: {replicas: 2}
traffic:
  - {name: t, from: ns/web, to: http://api.ns.mesh/, rate: 10}
"""


def write(tmp: Path, text: str) -> Path:
    (tmp / "scenario.yaml").write_text(text)
    return tmp


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("duration: -1\n" + GOOD.replace("duration: 10\n", ""), "duration"),
        (GOOD.replace("rate: 10", "rate: fast"), "traffic[0].rate"),
        (GOOD.replace("rate: 10", "rate: 10, users: 3"), "traffic[0]: expected exactly one"),
        (GOOD.replace("http://api.ns.mesh/", "ftp://x"), "traffic[0].to"),
        (GOOD.replace("from: ns/web", "from: web"), "traffic[0].from"),
        (
            GOOD.replace("{replicas: 2}", "{replicas: 2, latency: {dist: gamma}}"),
            "workloads.ns/api.latency",
        ),
        (
            GOOD.replace(
                "{replicas: 2}",
                "{replicas: 2, latency: {dist: empirical, percentiles: {50: 2, 90: 1}}}",
            ),
            "workloads.ns/api.latency",
        ),
        (
            GOOD.replace("{replicas: 2}", "{replicas: 2, errorRate: 2}"),
            "workloads.ns/api.errorRate",
        ),
        (
            GOOD.replace("{replicas: 2}", "{replicas: 2, nodes: [mars]}"),
            "workloads.ns/api.nodes[0]",
        ),
        (GOOD.replace("{replicas: 2}", "{replicas: 2, colour: red}"), "workloads.ns/api.colour"),
        (GOOD + "timeline: [{at: 5, action: explode}]\n", "timeline[0].action"),
        (GOOD + "timeline: [{at: 5, action: node-down, node: mars}]\n", "timeline[0].node"),
        (
            GOOD + "timeline: [{at: 5, action: error-burst, service: ns/nope, errorRate: 1}]\n",
            "timeline[0].service",
        ),
        (
            GOOD + "timeline: [{at: 5, action: latency-spike, service: ns/api, until: 2}]\n",
            "timeline[0].until",
        ),
        (
            GOOD + "timeline: [{at: 5, action: set-weights, route: ns/nope, weights: {a: 1}}]\n",
            "timeline[0].route",
        ),
        (GOOD + "slos: [{name: x}]\n", "slos[0]"),
        (GOOD + "slos: [{latency: {q99: 1}}]\n", "slos[0].latency.q99"),
        (GOOD + "slos: [{traffic: nope, successRate: 1}]\n", "slos[0].traffic"),
        (GOOD + "slos: [{share: {backend: ns/a, expected: 0.5}}]\n", "slos[0].service"),
        (GOOD + "surprise: 1\n", "surprise"),
        ("traffic: [\n", "not valid YAML"),
        ("duration: 5\n", "traffic"),
    ],
)
def test_bad_scenarios_name_the_file_and_field(tmp_path: Path, text: str, expected: str) -> None:
    with pytest.raises(ScenarioError) as info:
        load_scenario(write(tmp_path, text))
    message = str(info.value)
    assert "scenario.yaml" in message
    assert expected in message


def test_good_minimal_scenario_loads(tmp_path: Path) -> None:
    scenario = load_scenario(write(tmp_path, GOOD))
    assert scenario.duration == 10
    assert scenario.workloads["ns/api"].replicas == 2


def test_set_edits_before_validation(tmp_path: Path) -> None:
    scenario = load_scenario(
        write(tmp_path, GOOD), ["traffic[0].rate=25", "policies.ns/api.retry-attempts=2"]
    )
    assert scenario.traffic[0].rate == 25
    service = next(d for d in scenario.docs if d["kind"] == "Service")
    assert service["metadata"]["annotations"] == {"simmesh.io/retry-attempts": "2"}
    with pytest.raises(ScenarioError, match=r"no item 5"):
        load_scenario(write(tmp_path, GOOD), ["traffic[5].rate=1"])


def test_set_of_one_setting_keeps_the_others_of_mesh_yaml(tmp_path: Path) -> None:
    directory = write(tmp_path, GOOD)
    (directory / "mesh.yaml").write_text("acl: true\nzone: local\n")
    scenario = load_scenario(directory, ["settings.mtls=strict"])
    assert scenario.settings.acl and scenario.settings.zone == "local"
    assert scenario.settings.mtls.value == "strict"
    assert load_scenario(directory).settings.mtls.value == "off"


def simmesh(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mesh.cli", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )


@pytest.mark.parametrize(
    ("name", "code"),
    [
        ("canary", 0),
        ("gamma-canary", 0),
        ("retry-storm", 1),
        ("circuit-breaker", 0),
        ("rate-limit", 0),
        ("node-failure", 0),
        ("acl-lockout", 1),
    ],
)
def test_library_scenarios_run_with_their_verdicts(tmp_path: Path, name: str, code: int) -> None:
    result = simmesh("sim", str(SCENARIOS / name), "--out", str(tmp_path), "--quiet")
    assert result.returncode == code, result.stdout + result.stderr
    assert "SLOs:" in result.stdout
    for produced in ("results.json", "report.html", "latency.png", "success.png"):
        assert (tmp_path / produced).stat().st_size > 1000
    if name in ("canary", "gamma-canary"):
        assert (tmp_path / "shares.png").exists()
        assert "data:image/png;base64" in (tmp_path / "report.html").read_text()


def test_outputs_replace_planted_links_and_never_follow_them(tmp_path: Path) -> None:
    """A link planted in the output directory (shared, or left by someone else) is replaced
    by the run's file; the file it pointed to is untouched."""
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    out = tmp_path / "out"
    out.mkdir()
    for name in ("results.json", "report.html", "latency.png"):
        (out / name).symlink_to(victim)
    result = simmesh("sim", str(SCENARIOS / "canary"), "--out", str(out), "--quiet")
    assert result.returncode == 0, result.stderr
    assert victim.read_text() == "precious\n"
    for name in ("results.json", "report.html", "latency.png"):
        assert not (out / name).is_symlink() and (out / name).stat().st_size > 1000
    assert json.loads((out / "results.json").read_text())["scenario"] == "canary"
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == []


def test_sweep_shows_the_retry_storm(tmp_path: Path) -> None:
    result = simmesh(
        "sim",
        str(SCENARIOS / "retry-storm"),
        "--out",
        str(tmp_path),
        "--quiet",
        "--sweep",
        "policies.shop/catalog.retry-attempts=0,3",
    )
    assert result.returncode == 1
    lines = [line.split() for line in result.stdout.splitlines() if line[:1] in ("0", "3")]
    by_value = {row[0]: row for row in lines}
    assert by_value["0"][-2:] == ["PASS", "PASS"]
    assert "FAIL" in by_value["3"]
    assert (tmp_path / "sweep.png").exists()


def test_bad_scenario_exits_2(tmp_path: Path) -> None:
    shutil.copy(SCENARIOS / "canary" / "services.yaml", tmp_path)
    (tmp_path / "scenario.yaml").write_text("duration: x\ntraffic: []\n")
    result = simmesh("sim", str(tmp_path))
    assert result.returncode == 2
    assert "scenario.yaml: duration" in result.stderr
