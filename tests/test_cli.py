"""The simmesh CLI on the quickstart scenario, run as a user runs it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "scenarios" / "quickstart"


def simmesh(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mesh.cli", *args], capture_output=True, text=True, cwd=ROOT
    )


def test_compile_twice_gives_identical_bytes() -> None:
    first = simmesh("compile", str(QUICKSTART), "-o", "json")
    second = simmesh("compile", str(QUICKSTART), "-o", "json")
    assert first.returncode == 0, first.stderr
    assert first.stdout == second.stdout
    data = json.loads(first.stdout)
    assert data["kind"] == "MeshConfig"
    assert {item["protocol"] for item in data["listeners"]} == {"http", "tcp"}


def test_compile_yaml_output() -> None:
    result = simmesh("compile", str(QUICKSTART), "-o", "yaml")
    assert result.returncode == 0, result.stderr
    assert "kind: MeshConfig" in result.stdout


def test_explain_allowed_json() -> None:
    result = simmesh(
        "explain",
        str(QUICKSTART),
        "--from",
        "demo/frontend",
        "--url",
        "http://backend.demo.mesh/api/items",
        "-o",
        "json",
    )
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    assert answer["allowed"] is True
    assert answer["status"] is None
    assert "frontend-to-backend" in answer["rule"]
    assert answer["backends"][0]["service"] == "demo/backend-v1"
    assert [b["weight"] for b in answer["backends"]] == [90, 10]


def test_explain_denied_path_and_text() -> None:
    result = simmesh(
        "explain",
        str(QUICKSTART),
        "--from",
        "demo/frontend",
        "--url",
        "http://backend.demo.mesh/metrics",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("DENIED (403)")


def test_explain_tcp() -> None:
    allowed = simmesh(
        "explain",
        str(QUICKSTART),
        "--from",
        "demo/backend",
        "--tcp",
        "db.demo.mesh:5432",
        "-o",
        "json",
    )
    denied = simmesh(
        "explain",
        str(QUICKSTART),
        "--from",
        "demo/frontend",
        "--tcp",
        "db.demo.mesh:5432",
        "-o",
        "json",
    )
    assert json.loads(allowed.stdout)["allowed"] is True
    assert json.loads(denied.stdout)["status"] == 403


def test_explain_unknown_host_exits_2() -> None:
    result = simmesh(
        "explain", str(QUICKSTART), "--from", "demo/frontend", "--url", "http://nope.demo.mesh/"
    )
    assert result.returncode == 2
    assert "no meshed service answers" in result.stderr


def test_unreadable_manifest_exits_2(tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text("kind: Service\n  bad: [indent\n")
    result = simmesh("compile", str(tmp_path))
    assert result.returncode == 2
    assert "bad.yaml" in result.stderr


def test_a_command_whose_extra_is_not_installed_says_which_in_one_line() -> None:
    # As installed without the `sim` extra (the container image): simpy cannot be imported.
    code = "import sys; sys.modules['simpy'] = None; from mesh.cli import main; sys.exit(main())"
    result = subprocess.run(
        [sys.executable, "-c", code, "sim", str(QUICKSTART)],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "simmesh sim: error: needs the Python package simpy: pip install 'simmesh[sim]'"
    ]
