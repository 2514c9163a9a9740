"""The local mesh for real: short runs whose assertions hold however busy the machine is.

Each test runs ``simmesh up`` or ``simmesh verify`` as a user would (a subprocess) on a small
scenario of a few seconds and checks what does not depend on timing: identities through the
address map (ACL denials), the timeline (an error burst on one replica, a node cut off), the
split, the join of Locust's rows with the proxies' access logs, and that Ctrl-C stops every
process the mesh started. The long fidelity runs are benchmarks (``make bench``).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from mesh.local.procs import netns_command
from tests.local.upmesh import simmesh_up

ROOT = Path(__file__).resolve().parents[2]

SMI = """
apiVersion: specs.smi-spec.io/v1alpha4
kind: HTTPRouteGroup
metadata: {name: everything, namespace: t}
spec:
  matches: [{name: all, pathRegex: /, methods: ["*"]}]
---
apiVersion: access.smi-spec.io/v1alpha3
kind: TrafficTarget
metadata: {name: web-to-v1, namespace: t}
spec:
  destination: {kind: ServiceAccount, name: api-v1, namespace: t}
  rules: [{kind: HTTPRouteGroup, name: everything}]
  sources: [{kind: ServiceAccount, name: web, namespace: t}]
---
apiVersion: access.smi-spec.io/v1alpha3
kind: TrafficTarget
metadata: {name: web-to-v2, namespace: t}
spec:
  destination: {kind: ServiceAccount, name: api-v2, namespace: t}
  rules: [{kind: HTTPRouteGroup, name: everything}]
  sources: [{kind: ServiceAccount, name: web, namespace: t}]
---
apiVersion: split.smi-spec.io/v1alpha4
kind: TrafficSplit
metadata: {name: api, namespace: t}
spec:
  service: api
  backends: [{service: api-v1, weight: 80}, {service: api-v2, weight: 20}]
"""


def scenario(directory: Path, body: dict[str, Any], smi: str = "") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "scenario.yaml").write_text(yaml.safe_dump(body))
    if smi:
        (directory / "smi.yaml").write_text(smi)
    return directory


def simmesh(
    *args: str, timeout: float = 300, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mesh.cli", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=timeout,
        env=env,
    )


def test_verify_runs_a_small_scenario_for_real(tmp_path: Path) -> None:
    body = {
        "duration": 6,
        "seed": 5,
        "nodes": ["node-a", "node-b"],
        "settings": {"acl": True},
        "workloads": {
            "t/api": {"replicas": 0},
            "t/api-v1": {"replicas": 2, "latency": 0.005},
            "t/api-v2": {"replicas": 1, "latency": 0.005},
            "t/web": {"replicas": 1, "nodes": ["node-a"]},
            "t/stranger": {"replicas": 1, "nodes": ["node-b"]},
        },
        "traffic": [
            {"name": "web", "from": "t/web", "to": "http://api.t.mesh/x", "rate": 60},
            {"name": "stranger", "from": "t/stranger", "to": "http://api.t.mesh/x", "rate": 10},
        ],
        "timeline": [
            {
                "at": 2,
                "action": "error-burst",
                "service": "t/api-v1",
                "replica": 0,
                "errorRate": 1,
                "until": 4,
            },
        ],
        "slos": [{"name": "web mostly works", "traffic": "web", "successRate": 0.5}],
    }
    directory = scenario(tmp_path / "s", body, SMI)
    out = tmp_path / "out"
    result = simmesh("verify", str(directory), "--out", str(out), "--quiet")
    assert result.returncode in (0, 1, 3), result.stdout + result.stderr
    document = json.loads((out / "results.json").read_text())
    real, simulated = document["real"], document["simulated"]
    assert real["run"]["status"] == "finished"
    rows = json.loads((out / "real" / "rows.json").read_text())["rows"]
    # Every forwarded request was joined with the proxy's record of it; the proxy has no
    # trace id for the ones it denied itself.
    assert real["run"]["joined"] + real["run"]["notJoined"].get("403", 0) == len(rows) > 200
    assert set(real["run"]["notJoined"]) <= {"403"}
    # Identities come from the client's address: the stranger has no grant, in both runs.
    for run in (real, simulated):
        stranger = run["traffic"]["stranger"]
        assert stranger["outcomes"] == {"denied": stranger["requests"]}
        assert run["traffic"]["web"]["denied"] == 0
    # The error burst hits one replica of v1 from 2 s to 4 s, and only then.
    web = [r for r in rows if r[0] == 0]
    failed = [r for r in web if r[3] == 500]
    assert failed and all(1.9 <= start < 4.2 for _, start, *_ in failed)
    assert {pod for *_, pod in failed} == {"api-v1-0"}
    during = [r for r in web if 2.3 <= r[1] < 3.7]
    assert 0.15 <= len([r for r in during if r[3] == 500]) / len(during) <= 0.65
    # The split sends about 20% to v2 (a binomial share of a few hundred requests).
    shares = real["services"]["t/api"]["backends"]
    assert 0.08 <= shares["t/api-v2"]["share"] <= 0.32
    assert set(document["comparison"]["slosOk"]) == {"simulated", "real"}
    assert (out / "report.html").exists() and (out / "latency.png").exists()


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_up_serves_identities_and_ctrl_c_stops_everything(tmp_path: Path) -> None:
    body = {
        "duration": 60,
        "settings": {"acl": True},
        "workloads": {
            "t/api-v1": {"replicas": 1},
            "t/api-v2": {"replicas": 1},
            "t/api": {"replicas": 0},
            "t/web": {"replicas": 1},
        },
        "traffic": [{"name": "web", "from": "t/web", "to": "http://api.t.mesh/", "rate": 1}],
    }
    directory = scenario(tmp_path / "s", body, SMI)
    out = tmp_path / "out"
    with simmesh_up(directory, out) as up:
        source, host, url = up.source, up.host, up.url
        answer = subprocess.run(
            ["curl", "-s", "-D", "-", "--interface", source, "-H", f"Host: {host}", url],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert "HTTP/1.1 200" in answer.stdout and "x-testapp-pod: api-v" in answer.stdout.lower()
        denied = subprocess.run(
            ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "-H", f"Host: {host}", url],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert denied.stdout == "403"  # from the machine's own address: no identity
        assert up.interrupt() == 0
    run = json.loads((out / "run.json").read_text())
    assert run["status"].startswith("interrupted")
    pids = run["processes"]
    assert {"controller", "proxy-node-a"} <= set(pids) and len(pids) >= 5
    assert not [name for name, pid in pids.items() if _alive(pid)]


def _without(tmp_path: Path, *programs: str) -> dict[str, str]:
    """An environment whose PATH has every program of this one's but ``programs``: what a
    machine without those packages looks like to the code under test."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for directory in os.environ["PATH"].split(os.pathsep):
        with contextlib.suppress(OSError):
            for entry in os.scandir(directory):
                target = bin_dir / entry.name
                if entry.name not in programs and not target.exists() and entry.is_file():
                    target.symlink_to(entry.path)
    return {**os.environ, "PATH": str(bin_dir)}


def _unreachable_node_scenario(directory: Path) -> Path:
    body = {
        "duration": 7,
        "seed": 2,
        "nodes": ["node-a", "node-b"],
        "connectTimeout": 0.4,
        "workloads": {
            "t/api": {"replicas": 1, "nodes": ["node-b"], "latency": 0.005},
            "t/web": {"replicas": 1, "nodes": ["node-a"]},
        },
        "traffic": [
            {
                "name": "web",
                "from": "t/web",
                "to": "http://api.t.mesh/",
                "rate": 30,
                "method": "POST",
            },
        ],
        "timeline": [{"at": 2, "action": "node-down", "node": "node-b", "until": 4.5}],
    }
    return scenario(directory, body)


NETNS_MISSING = (
    "no network namespace here (root?)"
    if netns_command() is None
    else "no iptables command (Debian package iptables)"
    if shutil.which("iptables") is None
    else ""
)


@pytest.mark.skipif(bool(NETNS_MISSING) and not os.environ.get("CI"), reason=NETNS_MISSING)
def test_an_unreachable_node_times_connects_out_for_real(tmp_path: Path) -> None:
    assert not NETNS_MISSING, f"under CI=true this test must run: {NETNS_MISSING}"
    directory = _unreachable_node_scenario(tmp_path / "s")
    out = tmp_path / "out"
    result = simmesh("verify", str(directory), "--out", str(out), "--quiet")
    assert result.returncode in (0, 1, 3), result.stdout + result.stderr
    assert "realised as" not in result.stderr
    document = json.loads((out / "results.json").read_text())
    (event, *_) = document["real"]["events"]
    assert event["realisedFailure"] == "unreachable"
    rows = json.loads((out / "real" / "rows.json").read_text())["rows"]
    unreachable = [(start, end) for _, start, end, status, *_ in rows if status == 502]
    assert len(unreachable) > 20
    # Each waited for the connect timeout, never less; the few sent on connections the proxy
    # had open (no timeout on this service) hung until the node came back and reset them.
    assert all(1.9 <= start < 4.6 for start, _ in unreachable)
    assert all(end - start >= 0.38 for start, end in unreachable)
    assert all(end - start < 2.0 or 4.4 <= end < 6.0 for start, end in unreachable)
    # The node's pods were started ahead and listen from 4.5 s on: nothing is refused after.
    assert not [r for r in rows if r[1] >= 4.6 and r[3] != 200]
    simulated = document["simulated"]["traffic"]["web"]["outcomes"]["unreachable"]
    assert abs(simulated - len(unreachable)) <= 0.5 * len(unreachable)


def test_without_iptables_unreachable_is_refused_on_both_sides(tmp_path: Path) -> None:
    """A machine without iptables (a laptop, a fresh CI machine) still runs the scenario: the
    node-down is realised as refused, one line says so, and the simulation does the same, so
    the two runs still compare."""
    directory = _unreachable_node_scenario(tmp_path / "s")
    out = tmp_path / "out"
    result = simmesh(
        "verify", str(directory), "--out", str(out), "--quiet", env=_without(tmp_path, "iptables")
    )
    assert result.returncode in (0, 1, 3), result.stdout + result.stderr
    notes = [line for line in result.stderr.splitlines() if "realised as 'refused'" in line]
    assert len(notes) == 1 and "node-down at 2 s" in notes[0] and "iptables" in notes[0], notes
    document = json.loads((out / "results.json").read_text())
    assert document["isolationNotes"] == [notes[0].removeprefix("simmesh: ")]
    (event, *_) = document["real"]["events"]
    assert event["realisedFailure"] == "refused"
    rows = json.loads((out / "real" / "rows.json").read_text())["rows"]
    refused = [(start, end) for _, start, end, status, *_ in rows if status == 502]
    assert len(refused) > 20 and all(1.9 <= start < 4.6 for start, _ in refused)
    # Refused at once: no connect timeout (0.4 s) is waited for.
    assert sorted(end - start for start, end in refused)[len(refused) // 2] < 0.2
    # The simulation had the same fault: refused, and no request waited for a connect timeout.
    simulated = document["simulated"]
    assert {e["failure"] for e in simulated["events"]} == {"refused"}
    assert simulated["traffic"]["web"]["outcomes"]["unreachable"] > 20  # (502s, by status)
    assert simulated["traffic"]["web"]["latency"]["max"] < 0.38


def test_without_ip_the_mesh_runs_on_the_loopback(tmp_path: Path) -> None:
    body = {
        "duration": 3,
        "workloads": {"t/api": {"replicas": 1}, "t/web": {"replicas": 1}},
        "traffic": [{"name": "web", "from": "t/web", "to": "http://api.t.mesh/", "rate": 20}],
    }
    directory = scenario(tmp_path / "s", body)
    out = tmp_path / "out"
    env = _without(tmp_path, "ip", "iptables")
    result = simmesh("verify", str(directory), "--out", str(out), "--quiet", env=env)
    assert result.returncode in (0, 1, 3), result.stdout + result.stderr
    notes = [line for line in result.stderr.splitlines() if line.startswith("simmesh: ")]
    expected = "simmesh: running on this machine's loopback: no ip command"
    assert len(notes) == 1 and notes[0].startswith(expected), result.stderr
    document = json.loads((out / "results.json").read_text())
    assert document["isolation"] == "loopback"
    assert document["real"]["traffic"]["web"]["outcomes"].get("ok", 0) > 20
