"""The local mesh with mTLS strict, for real: ``simmesh up`` and ``simmesh verify`` on the
quickstart with ``--set settings.mtls=strict``.

The runner is the run's CA (mesh/local/ca.py): each node proxy holds certificates for the
identities of its own node's pods and no other, requests and TCP flows to pods of the other
node go through the tunnels (handshakes on both proxies' /metrics, the destination's access
log), a plaintext request from another node's pod address to a proxy is refused, and the
keys and tokens never reach the output directory.
"""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from tests.local.upmesh import simmesh_up

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = ROOT / "scenarios" / "quickstart"
STRICT = ("--set", "settings.mtls=strict")


def _expected_identities(plan: dict[str, Any]) -> dict[str, list[str]]:
    """node -> the identities (namespace/serviceaccount) of the pods the scenario puts there."""
    out: dict[str, set[str]] = {}
    for doc in plan["docs"]:
        if doc.get("kind") == "Pod" and (doc.get("spec") or {}).get("nodeName"):
            spec, meta = doc["spec"], doc["metadata"]
            identity = f"{meta.get('namespace', 'default')}/{spec['serviceAccountName']}"
            out.setdefault(spec["nodeName"], set()).add(identity)
    return {node: sorted(ids) for node, ids in sorted(out.items())}


def _metric(text: str, name: str, **labels: str) -> float:
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())
    )


def _held(certificates: dict[str, Any]) -> list[str]:
    return sorted(item["identity"] for item in certificates["identities"])


def test_verify_compares_a_strict_mtls_run_with_its_simulation(tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "mesh.cli",
            "verify",
            str(QUICKSTART),
            *STRICT,
            "--scale",
            "0.3",
            "--quiet",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert result.returncode in (0, 1, 3), result.stdout + result.stderr
    document = json.loads((out / "results.json").read_text())
    real, simulated = document["real"], document["simulated"]
    assert real["run"]["status"] == "finished"
    run = json.loads((out / "real" / "run.json").read_text())
    plan = json.loads((out / "real" / "plan.json").read_text())
    expected = _expected_identities(plan)
    assert set(expected) == {"node-a", "node-b"} and expected["node-a"] != expected["node-b"]

    # Each proxy holds the certificates of its own node's pods, and no other, from the CA
    # of the run, which issued nothing else and denied nothing.
    assert run["ca"]["denied"] == []
    assert {node: sorted(ids) for node, ids in run["ca"]["issued"].items()} == expected
    for node, identities in expected.items():
        certificates = json.loads((out / "real" / f"certificates-{node}.json").read_text())
        assert certificates["mtls"] == "strict"
        assert _held(certificates) == certificates["wanted"] == identities
        assert certificates["missing"] == []
        assert {r["fingerprint"] for r in certificates["roots"]} == {run["ca"]["root"]}

    # Requests and flows crossed nodes through the tunnels, none in the clear, and succeeded.
    a = (out / "real" / "metrics-node-a.txt").read_text()
    b = (out / "real" / "metrics-node-b.txt").read_text()
    assert _metric(a, "simmesh_proxy_tunnel_handshakes_total", side="client") >= 1
    assert _metric(b, "simmesh_proxy_tunnel_handshakes_total", side="server") >= 1
    assert _metric(a + b, "simmesh_proxy_tunnel_handshake_failures_total") == 0
    assert _metric(a + b, "simmesh_proxy_plaintext_requests_total") == 0
    # node-b's proxy delivered what came through the tunnel to its own pods (HTTP and TCP)
    assert _metric(b, "simmesh_proxy_calls_total", source="demo/frontend", code="200") > 0
    assert _metric(b, "simmesh_proxy_calls_total", protocol="tcp", code="200") > 0
    tunnelled = [
        json.loads(line)
        for line in (out / "real" / "access-node-b.jsonl").read_text().splitlines()
        if '"listener":15008' in line
    ]
    local_b = {p["address"] for p in plan["pods"] if p["node"] == "node-b"}
    assert {r["kind"] for r in tunnelled} == {"http", "tcp"}
    assert all(r["endpoint"].rsplit(":", 1)[0] in local_b for r in tunnelled)
    mtls = real["mtls"]
    assert mtls["mode"] == "strict" and mtls["handshakes"] >= 1
    assert mtls["tunnelledAttempts"] == len(tunnelled) > 50
    assert mtls["handshakeFailures"] == 0 and mtls["plaintext"] == {"sent": 0, "received": 0}
    assert real["traffic"]["frontend-to-backend"]["successRate"] >= 0.95
    assert real["traffic"]["backend-to-db"]["successRate"] >= 0.95
    # The client's node record is the one joined (not the destination's, same trace id).
    assert real["run"]["notJoined"].keys() <= {"403"}
    assert set(real["services"]) == set(simulated["services"])

    # The simulation modelled the same second hop; the table shows both, and the CPU.
    assert simulated["mtls"]["tunnelledAttempts"] > 0
    assert set(real["proxyCpu"]["nodes"]) == {"node-a", "node-b"}
    assert real["proxyCpu"]["seconds"] > 0
    assert "mTLS (strict), simulated / real" in result.stdout
    assert "proxy CPU s per 1,000 requests" in result.stdout

    # Nothing secret in the output: no key, no token.
    assert not [p for p in out.rglob("*") if p.suffix in (".key", ".token")]


def test_up_tunnels_across_nodes_and_refuses_plaintext_from_another_node(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with simmesh_up(QUICKSTART, out, *STRICT) as up:
        lines, source, host, url = up.lines, up.source, up.host, up.url
        scratch = next(x for x in lines if "logs in " in x).split("logs in ")[1].split()[0]
        plan = json.loads((Path(scratch) / "plan.json").read_text())
        nodes = {n["name"]: n for n in plan["nodes"]}
        assert any(
            x.strip().startswith("mTLS strict: certificates from the run's CA") for x in lines
        )

        pods = set()
        for _ in range(30):
            answer = subprocess.run(
                ["curl", "-s", "-D", "-", "--interface", source, "-H", f"Host: {host}", url],
                capture_output=True,
                text=True,
                timeout=30,
            )
            assert "HTTP/1.1 200" in answer.stdout, answer.stdout
            pods |= {
                h.split(":", 1)[1].strip()
                for h in answer.stdout.splitlines()
                if h.lower().startswith("x-testapp-pod:")
            }
        on_b = {p["name"] for p in plan["pods"] if p["node"] == "node-b"}
        assert pods & on_b  # answered by node-b's pods, through the tunnel

        # A pod of node-b speaking plaintext to node-a's proxy (it bypassed its own): strict
        # refuses it, whatever it is granted.
        b_pod = next(p for p in plan["pods"] if p["node"] == "node-b")
        a_proxy = nodes["node-a"]["address"]
        port = url.split(":")[2].split("/")[0]
        refused = subprocess.run(
            [
                "curl",
                "-s",
                "-D",
                "-",
                "--interface",
                b_pod["address"],
                "-H",
                f"Host: {host}",
                f"http://{a_proxy}:{port}/",
            ],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert "HTTP/1.1 403" in refused.stdout
        assert "x-simmesh-reason: plaintext-refused" in refused.stdout.lower()

        admin = f"http://{a_proxy}:{nodes['node-a']['admin_port']}"
        with urllib.request.urlopen(f"{admin}/metrics", timeout=10) as r:
            metrics = r.read().decode()
        assert _metric(metrics, "simmesh_proxy_tunnel_handshakes_total", side="client") >= 1
        for node in nodes.values():
            base = f"http://{node['address']}:{node['admin_port']}"
            with urllib.request.urlopen(f"{base}/certificates", timeout=10) as r:
                certificates = json.loads(r.read())
            assert _held(certificates) == _expected_identities(plan)[node["name"]]
        assert up.interrupt() == 0  # Ctrl-C
    run = json.loads((out / "run.json").read_text())
    assert run["ca"]["denied"] == [] and run["ca"]["issued"]
    assert not [p for p in out.rglob("*") if p.suffix in (".key", ".token")]
