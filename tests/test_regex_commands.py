"""The commands a user runs on a directory with a catastrophic or an unsupported regex (issue
19): ``simmesh compile`` names the pattern RE2 cannot run, and ``simmesh explain`` and
``simmesh sim`` decide the evil path promptly (before RE2: 8.6 s per request for explain, past
60 s for sim).

Split from tests/core/test_patterns.py, which checks the same in the core, because these run
the commands as users do: in a subprocess (compile) or through ``mesh.cli.main``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from mesh.cli import main
from tests.core.builders import app

ROOT = Path(__file__).resolve().parents[1]
EVIL_PATH = "/r/" + "a" * 28 + "!"  # 34 bytes, as in the issue

SMI = """
apiVersion: specs.smi-spec.io/v1alpha4
kind: HTTPRouteGroup
metadata: {name: evil, namespace: demo}
spec:
  matches:
  - {name: r, pathRegex: "PATTERN", methods: ["*"]}
---
apiVersion: access.smi-spec.io/v1alpha3
kind: TrafficTarget
metadata: {name: client-to-web, namespace: demo}
spec:
  destination: {kind: ServiceAccount, name: web, namespace: demo}
  sources: [{kind: ServiceAccount, name: client, namespace: demo}]
  rules: [{kind: HTTPRouteGroup, name: evil}]
---
apiVersion: split.smi-spec.io/v1alpha4
kind: TrafficSplit
metadata: {name: web, namespace: demo}
spec:
  service: web
  backends: [{service: web-v2, weight: 1}]
  matches: [{kind: HTTPRouteGroup, name: evil}]
"""

SCENARIO = {
    "name": "evil-regex",
    "duration": 5,
    "seed": 1,
    "nodes": ["node-a"],
    "workloads": {"demo/web": {}, "demo/web-v2": {}, "demo/client": {}},
    "traffic": [
        {"name": "evil", "from": "demo/client", "to": f"http://web.demo.mesh{EVIL_PATH}", "rate": 4}
    ],
}


def manifests(directory: Path, pattern: str) -> Path:
    """The SMI objects above and, for compile and explain, the Services, slices and pods."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "smi.yaml").write_text(SMI.replace("PATTERN", pattern.replace("\\", "\\\\")))
    (directory / "mesh.yaml").write_text("acl: true\n")
    apps = [
        *app("web", ips=["10.0.0.1"]),
        *app("web-v2", sa="web", ips=["10.0.0.2"]),
        *app("client", ips=["10.0.9.1"]),
    ]
    (directory / "apps.yaml").write_text(yaml.safe_dump_all(apps, sort_keys=False))
    return directory


def scenario(directory: Path, pattern: str) -> Path:
    """The SMI objects above and a scenario whose workloads the simulator creates."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "smi.yaml").write_text(SMI.replace("PATTERN", pattern.replace("\\", "\\\\")))
    (directory / "mesh.yaml").write_text("acl: true\n")
    (directory / "scenario.yaml").write_text(yaml.safe_dump(SCENARIO, sort_keys=False))
    return directory


def simmesh(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mesh.cli", *args], capture_output=True, text=True, cwd=ROOT
    )


def test_compile_names_a_backreference_and_leaves_the_group_out(tmp_path: Path) -> None:
    result = simmesh("compile", str(manifests(tmp_path, r"/(a)\1")), "-o", "json")
    assert result.returncode == 0, result.stderr
    expected = (
        "warning: HTTPRouteGroup demo/evil: spec.matches[0].pathRegex: expected an RE2 regular "
        r"expression: invalid escape sequence: \1 (RE2 has no backreferences)"
    )
    assert expected in result.stderr.splitlines()
    config = json.loads(result.stdout)
    assert not any(c.get("access") for c in config["clusters"].values())  # nothing granted
    assert "Error parsing" not in result.stderr  # RE2's own log lines stay quiet


def test_compile_takes_the_evil_pattern_it_can_now_run(tmp_path: Path) -> None:
    result = simmesh("compile", str(manifests(tmp_path, "/r/(a+)+$")), "-o", "json")
    assert result.returncode == 0, result.stderr
    assert "warning" not in result.stderr


def explain(capsys: pytest.CaptureFixture[str], directory: Path, *args: str) -> dict[str, Any]:
    url = f"http://web.demo.mesh{EVIL_PATH}"
    code = main(["explain", str(directory), *args, "--url", url, "-o", "json"])
    out = capsys.readouterr()
    assert code == 0, out.err
    return dict(json.loads(out.out))


@pytest.mark.parametrize("source", [["--from", "demo/client"], []])
def test_explain_decides_the_evil_path_promptly(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, source: list[str]
) -> None:
    """As the granted client (the TrafficTarget's match) and without identity (the split's
    match runs before access control)."""
    directory = manifests(tmp_path, "/r/(a+)+$")
    start = time.perf_counter()
    answer = explain(capsys, directory, *source)
    assert time.perf_counter() - start < 5
    assert (answer["allowed"], answer["status"]) == (False, 403)
    assert answer["reasonCode"] == ("no-matching-route" if source else "no-source-identity")


def test_sim_runs_the_evil_path_promptly(tmp_path: Path) -> None:
    directory = scenario(tmp_path / "scenario", "/r/(a+)+$")
    start = time.perf_counter()
    code = main(["sim", str(directory), "--out", str(tmp_path / "out"), "--quiet"])
    assert time.perf_counter() - start < 60
    assert code == 0
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["overall"]["denied"] == results["requests"]["finished"] > 0
