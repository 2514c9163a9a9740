"""The simulator with mTLS on (issue 17 part 6): the second hop through the destination node's
proxy, handshakes on new pooled tunnel connections, TLS CPU from the profile; a what-if of
turning mTLS on; and mTLS off writing exactly what it wrote before."""

from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path
from typing import Any

import pytest

from mesh.cli import main
from sim.change import ChangeError, load_change
from sim.model import _reuse, run_scenario
from sim.profile import ProfileError, load_profile
from sim.report import results_json
from sim.runs import Source
from sim.scenario import ScenarioError, load_scenario

ROOT = Path(__file__).resolve().parents[2]
SCENARIOS = ROOT / "scenarios"

# sha256 (first 16 hex digits) of results.json with duration=6, computed before the simulator
# modelled mTLS: with mTLS off a run must write the same bytes. Computed again (issue 15 part
# 5) when the wake-up table reached p99.99 and a capacity slot came to be held through the
# app's wake-up, and again when short sleeps paid wake-ups in proportion: those change
# every run with the local profile, mTLS or not.
OFF = {
    "canary": "b3735d4e50cbff15",
    "quickstart": "ee1961a62b193044",
    "retry-storm": "40fe804b5e621d10",
}

TWO_NODES = """
name: tls
duration: 20
seed: 5
nodes: [node-a, node-b]
workloads:
  demo/web: {replicas: 2, latency: 0.01, nodes: [node-b]}
traffic:
  - {name: t, from: demo/client, node: node-a, to: "http://web.demo.mesh/", rate: 100}
"""


def _digest(results: dict[str, Any]) -> str:
    data = results_json(results)
    raw = data.encode() if isinstance(data, str) else data
    return hashlib.sha256(raw).hexdigest()[:16]


@pytest.mark.parametrize("name", sorted(OFF))
def test_mtls_off_writes_the_same_results(name: str) -> None:
    results = run_scenario(load_scenario(SCENARIOS / name, ["duration=6"]))
    assert "mtls" not in results and "proxyCpu" not in results
    assert _digest(results) == OFF[name]


def _scenario(tmp: Path, text: str, mesh: str = "", profile: str | None = None) -> Path:
    (tmp / "scenario.yaml").write_text(text + (f"profile: {profile}\n" if profile else ""))
    if mesh:
        (tmp / "mesh.yaml").write_text(mesh)
    return tmp


def _run(directory: Path, sets: list[str] | None = None) -> dict[str, Any]:
    return run_scenario(load_scenario(directory, sets or []), cpu=True)


def test_strict_takes_the_second_hop_and_pays_for_tls(tmp_path: Path) -> None:
    (tmp_path / "off").mkdir()
    (tmp_path / "on").mkdir()
    off = _run(_scenario(tmp_path / "off", TWO_NODES))
    on = _run(_scenario(tmp_path / "on", TWO_NODES, "mtls: strict\n"))
    tls = on["mtls"]
    assert tls["mode"] == "strict"
    # every attempt crosses nodes; pooled connections amortise the handshakes
    assert tls["tunnelledAttempts"] == on["requests"]["started"] > 1500
    assert 0 < tls["handshakes"] <= 10
    # the destination node's proxy now works; the source's does more (TLS)
    assert off["proxyCpu"]["nodes"]["node-b"]["cpuSeconds"] == 0
    assert on["proxyCpu"]["nodes"]["node-b"]["cpuSeconds"] > 0
    assert (
        on["proxyCpu"]["nodes"]["node-a"]["cpuSeconds"]
        > off["proxyCpu"]["nodes"]["node-a"]["cpuSeconds"]
    )
    # access control is off: every tunnelled attempt goes on a pipe, which node-b relays
    assert tls["pipedAttempts"] == tls["tunnelledAttempts"]
    ratio = on["proxyCpu"]["perThousandRequests"] / off["proxyCpu"]["perThousandRequests"]
    assert 1.1 < ratio < 2.0
    assert on["overall"]["latency"]["p50"] > off["overall"]["latency"]["p50"]
    assert on["overall"]["successRate"] == off["overall"]["successRate"] == 1.0


def test_a_pipe_costs_its_destination_a_relay_and_a_request_dependent_grant_a_proxy_pass(
    tmp_path: Path,
) -> None:
    """A spliced pipe's destination proxy is priced the profile's relay per attempt; where the
    grants depend on the request (quickstart: paths), no attempt is piped and the destination
    handles each as a request, as the proxies do."""
    profile = load_profile("local")
    assert profile.tls_relay > 0
    (tmp_path / "pipes").mkdir()
    on = _run(_scenario(tmp_path / "pipes", TWO_NODES, "mtls: strict\n"))
    tunnelled, handshakes = on["mtls"]["tunnelledAttempts"], on["mtls"]["handshakes"]
    expected = tunnelled * profile.tls_relay + handshakes * profile.tls_accept
    measured = on["proxyCpu"]["nodes"]["node-b"]["cpuSeconds"]
    assert measured == pytest.approx(expected, rel=0.05)
    quick = _run(SCENARIOS / "quickstart", ["duration=10", "settings.mtls=strict"])
    assert quick["mtls"]["tunnelledAttempts"] > 100 and quick["mtls"]["pipedAttempts"] == 0
    per_request = (
        quick["proxyCpu"]["nodes"]["node-b"]["cpuSeconds"] / quick["mtls"]["tunnelledAttempts"]
    )
    assert per_request > profile.proxy_request + profile.proxy_attempt > profile.tls_relay


def test_same_node_traffic_stays_one_hop(tmp_path: Path) -> None:
    one = TWO_NODES.replace("nodes: [node-b]", "nodes: [node-a]")
    (tmp_path / "off").mkdir()
    (tmp_path / "on").mkdir()
    off = _run(_scenario(tmp_path / "off", one))
    on = _run(_scenario(tmp_path / "on", one, "mtls: strict\n"))
    assert on["mtls"]["tunnelledAttempts"] == 0 and on["mtls"]["handshakes"] == 0
    assert on["overall"] == off["overall"]
    assert on["proxyCpu"] == off["proxyCpu"]


def test_handshakes_cost_what_the_profile_says(tmp_path: Path) -> None:
    base = load_profile("local")
    slow = tmp_path / "slow.yaml"
    slow.write_text(
        (ROOT / "sim/profiles/local.yaml").read_text().split("\ntls:")[0]
        + "\ntls: {connect: 0.05, accept: 0.05, request: 0.0, byte: 0.0}\n"
    )
    assert base.tls_connect > 0 and base.tls_request > 0
    runs = {}
    for name, profile in (("local", None), ("slow", str(slow))):
        (tmp_path / name).mkdir()
        runs[name] = _run(_scenario(tmp_path / name, TWO_NODES, "mtls: strict\n", profile))
    # a handshake that takes 100 ms of CPU shows in the slowest requests, not the median
    assert (
        runs["slow"]["overall"]["latency"]["max"] > runs["local"]["overall"]["latency"]["max"] + 0.1
    )
    assert (
        abs(runs["slow"]["overall"]["latency"]["p50"] - runs["local"]["overall"]["latency"]["p50"])
        < 0.002
    )


def test_pool_reuses_the_connection_freed_last() -> None:
    pool = [1.0, 3.0, 9.0, -float("inf")]
    assert _reuse(pool, 5.0) == 1  # 3.0 freed last among those idle at 5.0; 9.0 is busy
    assert pool == [1.0, 3.0, 9.0]  # the closed one is dropped
    assert _reuse(pool, 0.5) == -1  # all busy: a new connection
    assert _reuse(pool, 20.0) == 0 and pool == [9.0]  # idle over 15 s: closed


def test_whatif_turning_mtls_on(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    change = tmp_path / "mesh.yaml"
    change.write_text("mtls: strict\n")
    code = main(
        [
            "whatif",
            str(SCENARIOS / "quickstart"),
            "--apply",
            str(change),
            "--seeds",
            "2",
            "--duration",
            "6",
            "--quiet",
            "--out",
            str(tmp_path / "out"),
        ]
    )
    out = capsys.readouterr().out
    assert code == 0, out
    assert "set setting mtls=strict" in out or "mtls=strict" in out
    line = next(x for x in out.splitlines() if "proxy CPU/1k req" in x)
    assert line.rstrip().endswith("*")  # the increase is outside the noise


def test_a_settings_change_keeps_the_other_settings() -> None:
    base = load_scenario(SCENARIOS / "quickstart", ["duration=2"])
    assert base.settings.acl
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "mesh.yaml").write_text("mtls: permissive\n")
        change = load_change([Path(tmp)])
        with tempfile.TemporaryDirectory() as work:
            after = Source.of(base).load(Path(work), (), change)
    assert after.settings.acl and after.settings.mtls.value == "permissive"
    assert change.actions(base.docs) == [
        {"action": "set", "kind": "setting", "namespace": "", "name": "mtls=permissive"}
    ]


def test_bad_settings_change_is_one_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "mesh.yaml"
    bad.write_text("mtls: yes-please\n")
    with pytest.raises(ChangeError, match=r"mesh.yaml: mtls: expected off, permissive or strict"):
        load_change([bad])
    bad.write_text("- mtls\n")
    with pytest.raises(ChangeError, match="expected a mapping of settings"):
        load_change([bad])


def test_bad_tls_profile_is_one_clear_error(tmp_path: Path) -> None:
    profile = tmp_path / "p.yaml"
    profile.write_text("tls: {handshake: 0.001}\n")
    with pytest.raises(ProfileError, match=r"tls.handshake: unknown key"):
        load_profile(str(profile))
    profile.write_text("tls: {connect: -1}\n")
    with pytest.raises(ProfileError, match=r"tls.connect: expected seconds >= 0"):
        load_profile(str(profile))
    (tmp_path / "s").mkdir()
    with pytest.raises(ScenarioError, match=r"tls\.handshake"):
        profile.write_text("tls: {handshake: 0.001}\n")
        load_scenario(_scenario(tmp_path / "s", TWO_NODES, "", str(profile)))
