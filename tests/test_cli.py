"""The simmesh CLI on the quickstart scenario, run as a user runs it."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

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


def _explain_json(directory: Path, *args: str) -> dict[str, Any]:
    result = simmesh("explain", str(directory), *args, "-o", "json")
    assert result.returncode == 0, result.stderr
    answer: dict[str, Any] = json.loads(result.stdout)
    return answer


def _strict(tmp_path: Path) -> Path:
    """Quickstart with mTLS strict (frontend on node-a, backend on both nodes, db on node-b)."""
    directory = tmp_path / "strict"
    shutil.copytree(QUICKSTART, directory)
    (directory / "mesh.yaml").write_text("acl: true\nmtls: strict\ntrustDomain: prod.example\n")
    return directory


def test_explain_says_which_identity_mtls_off_by_source_ip() -> None:
    identity = _explain_json(
        QUICKSTART, "--from", "demo/frontend", "--url", "http://backend.demo.mesh/api/items"
    )["identity"]
    assert identity["mode"] == "off" and identity["by"] == "source-ip"
    assert identity["identity"] == "demo/frontend" and identity["spiffeId"] is None
    assert "nothing but the address proves it" in identity["detail"]
    # by the caller's address: its pod's ServiceAccount, as the proxy finds it
    answer = _explain_json(
        QUICKSTART, "--from-ip", "10.244.1.10", "--url", "http://backend.demo.mesh/api/items"
    )
    assert answer["source"] == "demo/frontend" and answer["allowed"] is True
    assert answer["identity"]["sourceIp"] == "10.244.1.10"
    nobody = _explain_json(
        QUICKSTART, "--from-ip", "10.9.9.9", "--url", "http://backend.demo.mesh/api/items"
    )
    assert nobody["allowed"] is False and nobody["identity"]["by"] == "none"
    assert nobody["identity"]["detail"].startswith(
        "no identity: the source IP 10.9.9.9 is no running pod's"
    )


def test_explain_says_which_identity_with_mtls_the_certificates(tmp_path: Path) -> None:
    directory = _strict(tmp_path)
    # backend (pods on node-a and node-b) to db (node-b): the certificate from node-a
    identity = _explain_json(directory, "--from", "demo/backend", "--tcp", "db.demo.mesh:5432")[
        "identity"
    ]
    assert identity["by"] == "certificate" and identity["mode"] == "strict"
    assert identity["spiffeId"] == "spiffe://prod.example/ns/demo/sa/backend"
    assert identity["sourceNodes"] == ["node-a", "node-b"] and identity["endpointNode"] == "node-b"
    assert "the client certificate the proxy of node-a presents" in identity["detail"]
    assert "from its pods on node-b: their IP" in identity["detail"]
    # the pod at 10.244.1.20 is on node-a: the certificate only; the directory names no
    # proxy pods, so no tunnel address: strict refuses
    identity = _explain_json(directory, "--from-ip", "10.244.1.20", "--tcp", "db.demo.mesh:5432")[
        "identity"
    ]
    assert identity["sourceNodes"] == ["node-a"] and identity["tunnel"] is None
    assert identity["detail"].endswith(
        "(no tunnel address for that node in this config: refused (502))"
    )
    # the pod at 10.244.2.21 is on node-b with db: same node, its address
    identity = _explain_json(directory, "--from-ip", "10.244.2.21", "--tcp", "db.demo.mesh:5432")[
        "identity"
    ]
    assert identity["by"] == "source-ip" and identity["sourceNodes"] == ["node-b"]
    assert "same node: no tunnel, no certificate" in identity["detail"]
    # a ServiceAccount with no pod anywhere: no proxy may hold its certificate
    identity = _explain_json(directory, "--from", "demo/ghost", "--tcp", "db.demo.mesh:5432")[
        "identity"
    ]
    assert "no pod of demo/ghost runs on any node" in identity["detail"]
    # and in the text output
    text = simmesh(
        "explain", str(directory), "--from", "demo/backend", "--tcp", "db.demo.mesh:5432"
    )
    line = next(x for x in text.stdout.splitlines() if x.startswith("  identity:"))
    assert line.startswith(
        "  identity: [client certificate, mTLS strict] spiffe://prod.example/ns/demo/sa/backend"
    )


def test_explain_bad_callers_are_one_line_errors() -> None:
    url = ("--url", "http://backend.demo.mesh/")
    for args, message in (
        (("--from-ip", "10.0.0.999"), "--from-ip '10.0.0.999': expected a pod's IP address"),
        (("--from", "demo/"), "--from 'demo/': expected NAMESPACE/SERVICEACCOUNT"),
        (("--from", "demo/a", "--from-ip", "10.0.0.1"), "not allowed with argument"),
    ):
        result = simmesh("explain", str(QUICKSTART), *args, *url)
        assert result.returncode == 2
        assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1, (
            result.stderr
        )
