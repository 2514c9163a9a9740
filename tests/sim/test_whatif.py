"""simmesh whatif (sim/whatif.py, sim/change.py): a change applied to a scenario, simulated
over seeds before and after; the verdict, the exit codes, the reports and bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from mesh.cli import main
from sim.change import Change, ChangeError, Ref, load_change
from sim.scenario import load_scenario
from sim.whatif import Verdict, whatif

ROOT = Path(__file__).resolve().parents[2]
CANARY = ROOT / "scenarios" / "canary"
CHANGES = ROOT / "examples" / "whatif" / "canary"

# 1,000 requests a run; 5% of them fail, and the retries hide it.
SCENARIO = """
name: tiny
duration: 20
seed: 3
nodes: [node-a, node-b]
workloads:
  demo/web: {replicas: 2, latency: 0.01, errorRate: 0.05}
traffic:
  - {name: t, from: demo/client, to: "http://web.demo.mesh/", rate: 50}
slos:
  - {name: users see no errors, successRate: 0.99}
  - {name: fast, latency: {p99: 0.5}}
"""
SERVICE = """
apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: demo
  annotations: {{simmesh.io/retry-attempts: "{retries}"}}
spec:
  ports: [{{name: http, port: 80, targetPort: 8080}}]
"""


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    directory = tmp_path / "tiny"
    directory.mkdir()
    (directory / "scenario.yaml").write_text(SCENARIO)
    (directory / "services.yaml").write_text(SERVICE.format(retries=2))
    return directory


def change_file(tmp_path: Path, text: str, name: str = "change.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def simmesh(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mesh.cli", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )


# -- changes ---------------------------------------------------------------------------------


def test_a_change_replaces_adds_and_deletes_by_kind_namespace_and_name(tmp_path: Path) -> None:
    docs = [
        {"kind": "Service", "metadata": {"name": "a", "namespace": "x"}, "spec": {"v": 1}},
        {"kind": "Service", "metadata": {"name": "b"}},  # namespace default
        {"kind": "TrafficTarget", "metadata": {"name": "t", "namespace": "x"}},
    ]
    new_a = {"kind": "Service", "metadata": {"name": "a", "namespace": "x"}, "spec": {"v": 2}}
    added = {"kind": "Service", "metadata": {"name": "c", "namespace": "x"}}
    change = Change((new_a, added), (Ref("Service", "default", "b"),))
    after = change.apply(docs)
    assert after == [new_a, docs[2], added]
    assert docs[0]["spec"] == {"v": 1}  # the scenario's objects are left alone
    assert [a["action"] for a in change.actions(docs)] == ["replace", "add", "delete"]
    with pytest.raises(ChangeError, match="cannot delete TrafficTarget x/nope"):
        Change(deletions=(Ref("TrafficTarget", "x", "nope"),)).apply(docs)


def test_the_delete_annotation_and_ignored_kinds(tmp_path: Path) -> None:
    path = change_file(
        tmp_path,
        SERVICE.format(retries=0)
        + "---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web, namespace: demo}\n"
        + "---\napiVersion: access.smi-spec.io/v1alpha3\nkind: TrafficTarget\n"
        + "metadata: {name: old, namespace: demo, annotations: {simmesh.io/whatif: delete}}\n",
    )
    change = load_change([path], ["HTTPRouteGroup/demo/routes"])
    assert [Ref.of(o) for o in change.objects] == [Ref("Service", "demo", "web")]
    assert change.deletions == (
        Ref("HTTPRouteGroup", "demo", "routes"),
        Ref("TrafficTarget", "demo", "old"),
    )
    assert change.ignored == (Ref("Deployment", "demo", "web"),)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("kind: [\n", "not valid YAML"),
        ("- 1\n", "expected a Kubernetes object with a kind"),
        (
            "apiVersion: split.smi-spec.io/v1alpha4\nkind: TrafficSplit\n"
            "metadata: {name: s, namespace: demo}\nspec: {service: web, backends: 3}\n",
            "TrafficSplit demo/s: spec.backends",
        ),
        (
            "apiVersion: v1\nkind: Service\n"
            "metadata: {name: s, annotations: {simmesh.io/whatif: maybe}}\n",
            "simmesh.io/whatif: expected 'delete'",
        ),
        ("apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\n", "nothing to apply"),
        (SERVICE.format(retries=1) + "---\n" + SERVICE.format(retries=2), "one change per object"),
    ],
)
def test_bad_changes_name_the_file(tmp_path: Path, text: str, expected: str) -> None:
    path = change_file(tmp_path, text)
    with pytest.raises(ChangeError) as info:
        load_change([path])
    assert expected in str(info.value)
    assert "\n" not in str(info.value)


# -- the library -----------------------------------------------------------------------------


def test_dropping_the_retries_breaks_the_success_slo(tiny: Path, tmp_path: Path) -> None:
    change = load_change([change_file(tmp_path, SERVICE.format(retries=0))])
    result = whatif(load_scenario(tiny), change, seeds=3)
    assert result.seeds == (3, 4, 5)
    assert result.verdict is Verdict.BREAKS
    assert [s.name for s in result.broken] == ["users see no errors"]
    slo = result.slos[0]
    assert (slo.passes_before, slo.passes_after, slo.runs_before) == (3, 0, 3)
    assert result.slos[1].broken is False
    diff = result.comparison["services"]["demo/web"]["successRate"]["difference"]
    assert diff["n"] == 3 and diff["high"] < 0  # about -5 points, and the seeds agree


def test_a_harmless_change_is_safe(tiny: Path, tmp_path: Path) -> None:
    change = load_change([change_file(tmp_path, SERVICE.format(retries=3))])
    result = whatif(load_scenario(tiny), change, seeds=2)
    assert result.verdict is Verdict.SAFE
    assert result.complete


def test_a_spent_budget_is_undecided(tiny: Path, tmp_path: Path) -> None:
    change = load_change([change_file(tmp_path, SERVICE.format(retries=0))])
    result = whatif(load_scenario(tiny), change, seeds=3, budget_seconds=1e-9)
    assert result.verdict is Verdict.UNDECIDED
    assert not result.complete
    assert all(s.broken is None for s in result.slos)


# -- the command -----------------------------------------------------------------------------


def test_promoting_the_canary_now_breaks_an_slo(tmp_path: Path) -> None:
    result = simmesh(
        "whatif", str(CANARY), "--apply", str(CHANGES / "promote-now.yaml"),
        "--out", str(tmp_path), "--workers", "2",
    )  # fmt: skip
    assert result.returncode == 1, result.stdout + result.stderr
    assert "breaks 1 SLO that held before: 'users do not notice the rollout'" in result.stdout
    assert "5/5    0/5    BROKEN  users do not notice the rollout" in result.stdout
    assert "runs" in result.stderr  # progress
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["verdict"] == "breaks" and data["seeds"] == [7, 8, 9, 10, 11]
    assert len(data["runs"]["before"]) == len(data["runs"]["after"]) == 5
    for name in ("report.html", "latency.png", "success.png", "shares.png"):
        assert (tmp_path / name).stat().st_size > 1000


def test_starting_the_canary_at_five_percent_is_harmless(tmp_path: Path) -> None:
    result = simmesh(
        "whatif", str(CANARY), "--apply", str(CHANGES / "start-at-5.yaml"),
        "--out", str(tmp_path), "--quiet", "--seeds", "3",
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "verdict: no SLO that held before breaks" in result.stdout
    assert result.stderr == ""


def test_deleting_the_split_breaks_the_rollout(tmp_path: Path) -> None:
    """Without its TrafficSplit the root Service backend has no pods of its own: 503s. The
    timeline's set-split steps then find no split and do nothing."""
    result = simmesh(
        "whatif", str(CANARY), "--delete", "TrafficSplit/shop/backend-rollout",
        "--out", str(tmp_path), "--quiet", "--seeds", "1",
    )  # fmt: skip
    assert result.returncode == 1, result.stdout + result.stderr
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["change"] == [
        {"action": "delete", "kind": "TrafficSplit", "namespace": "shop", "name": "backend-rollout"}
    ]
    assert "users do not notice the rollout" in data["broken"]


def test_results_are_byte_identical_serially_and_in_parallel(tiny: Path, tmp_path: Path) -> None:
    path = change_file(tmp_path, SERVICE.format(retries=0))
    outputs = []
    for workers in ("1", "2"):
        out = tmp_path / f"out-{workers}"
        code = main(["whatif", str(tiny), "--apply", str(path), "--seeds", "2",
                     "--workers", workers, "--out", str(out), "--quiet"])  # fmt: skip
        assert code == 1
        outputs.append((out / "results.json").read_bytes())
    assert outputs[0] == outputs[1]


def test_an_slo_file_replaces_the_scenarios_slos(
    tiny: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    change = change_file(tmp_path, SERVICE.format(retries=0))
    slos = change_file(tmp_path, "- {name: lenient, successRate: 0.5}\n", "slos.yaml")
    args = ["whatif", str(tiny), "--apply", str(change), "--seeds", "1", "--workers", "1"]
    code = main([*args, "--slos", str(slos), "--out", str(tmp_path / "out"), "--quiet"])
    assert code == 0
    assert "lenient" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--apply", "{tmp}/missing.yaml"], "missing.yaml: no such file"),
        (["--apply", "{tmp}/bad.yaml"], "bad.yaml"),
        (["--delete", "TrafficTarget/demo/nope"], "cannot delete TrafficTarget demo/nope"),
        (["--delete", "TrafficTarget/nope"], "expected KIND/NAMESPACE/NAME"),
        ([], "nothing to change"),
        (["--delete", "Service/demo/web", "--slos", "{tmp}/bad.yaml"], "--slos"),
        (["--delete", "Service/demo/web", "--slos", "{tmp}/badslo.yaml"], "badslo.yaml: slos[0]"),
        (["--delete", "Service/demo/web", "--set", "duration=x"], "scenario.yaml: duration"),
        (["--delete", "Service/demo/web", "--seeds", "0"], "--seeds"),
        (["--delete", "Service/demo/web", "--scheduler", "nowhere"], "tcp://HOST:PORT"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    tiny: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], expected: str
) -> None:
    (tmp_path / "bad.yaml").write_text("kind: [\n")
    (tmp_path / "badslo.yaml").write_text("- {name: x, successRate: 2}\n")
    argv = ["whatif", str(tiny), *(a.format(tmp=tmp_path) for a in args), "--quiet"]
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's own errors
        code = int(exc.code or 0)
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("simmesh")
    assert expected in err


def test_a_budget_that_runs_out_exits_3(
    tiny: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The budget is spent before the first run starts (loading the scenario alone takes
    longer than a millisecond): nothing can be decided."""
    args = ["whatif", str(tiny), "--delete", "Service/demo/web", "--budget", "0.001"]
    code = main([*args, "--workers", "1", "--out", str(tmp_path / "out"), "--quiet"])
    assert code == 3
    assert "verdict: undecided: the budget of 0.001 s ran out" in capsys.readouterr().out
    data = json.loads((tmp_path / "out" / "results.json").read_text())
    assert data["verdict"] == "undecided" and data["complete"] is False
