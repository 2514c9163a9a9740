"""Each fidelity mechanism of the simulator against what it must come to in theory.

Every scenario here has one mechanism switched on through its profile (sim/profile.py) and
deterministic service times where that makes the expected value exact: the event loops
(an M/D/1 queue), the network, timer ticks, wake-ups, refused and unreachable connects,
attempts in flight when their pod or node goes down, load-dependent service time and the
config's propagation delay.
"""

from __future__ import annotations

import random
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import yaml

from sim.model import Simulation
from sim.profile import Profile, ProfileError, load_profile
from sim.resources import Loop, Resources
from sim.scenario import ScenarioError, load_scenario


def run(
    tmp: Path,
    *,
    profile: dict[str, Any] | None = None,
    workload: dict[str, Any] | None = None,
    traffic: dict[str, Any] | None = None,
    duration: float = 60.0,
    **top: Any,
) -> tuple[dict[str, Any], Simulation]:
    body: dict[str, Any] = {
        "duration": duration,
        "seed": 3,
        "nodes": ["node-a", "node-b"],
        "profile": "ideal",
        "workloads": {
            "m/server": {"replicas": 1, "nodes": ["node-a"], "latency": 0.01, **(workload or {})},
            "m/client": {"replicas": 1, "nodes": ["node-a"]},
        },
        "traffic": [
            {"name": "t", "from": "m/client", "to": "http://server.m.mesh/", "rate": 20}
            | (traffic or {})
        ],
        **top,
    }
    directory = tmp / "scenario"
    directory.mkdir(parents=True, exist_ok=True)
    if profile is not None:  # outside the scenario directory, whose YAML files are manifests
        (tmp / "profile.yaml").write_text(yaml.safe_dump(profile))
        body["profile"] = str(tmp / "profile.yaml")
    (directory / "scenario.yaml").write_text(yaml.safe_dump(body))
    sim = Simulation(load_scenario(directory))
    return sim.run(), sim


def latencies(sim: Simulation, status: int | None = None) -> list[float]:
    rec = sim.recorder
    return [
        e - s
        for s, e, code in zip(rec.start, rec.end, rec.status, strict=True)
        if status is None or code == status
    ]


def test_an_event_loop_is_a_fifo_single_server() -> None:
    # Poisson arrivals of deterministic work: an M/D/1 queue (Pollaczek-Khinchine), and
    # exponential work: M/M/1.
    rng = random.Random(5)
    for work, expected in (
        (lambda: 0.001, 0.001 + 0.6 * 0.001 / (2 * 0.4)),
        (lambda: rng.expovariate(1000), 1 / (1000 - 600)),
    ):
        loop, now, total, n = Loop(), 0.0, 0.0, 200_000
        for _ in range(n):
            now += rng.expovariate(600)
            total += loop.visit(now, work()) - now
        assert total / n == pytest.approx(expected, rel=0.03)
        assert loop.busy / now == pytest.approx(0.6, rel=0.02)


def test_the_proxy_loop_costs_what_the_profile_says(tmp_path: Path) -> None:
    costs = {"proxy": {"request": 0.0004, "attempt": 0.0002}, "client": {"request": 0.0003}}
    results, sim = run(tmp_path, profile=costs, workload={"latency": 0.01}, traffic={"rate": 1})
    # Alone in the mesh (1 request/s), a request pays every cost once and never queues.
    assert results["overall"]["latency"]["p50"] == pytest.approx(0.01 + 0.0004 + 0.0002 + 0.0003)
    started = results["requests"]["started"]
    assert sim.resources.proxies["node-a"].busy == pytest.approx(started * 0.0006, rel=0.02)
    assert sim.resources.proxies["node-b"].busy == 0  # the client is on node-a
    (tmp_path / "busy").mkdir()
    loaded, _ = run(
        tmp_path / "busy", profile=costs, workload={"latency": 0.01}, traffic={"rate": 1200}
    )
    # At 1,200 requests/s the proxy's loop is 72% busy: requests queue for it.
    assert loaded["overall"]["latency"]["p50"] > results["overall"]["latency"]["p50"] + 0.0005


def test_the_network_adds_its_delay_each_way(tmp_path: Path) -> None:
    network = {"local": 0.0001, "remote": 0.002, "between": {"node-a/node-b": 0.005}}
    results, _ = run(tmp_path / "a", profile={"network": network}, workload={"latency": 0.01})
    # client -> proxy (local), proxy -> pod (local, both on node-a) and back, proxy -> client
    assert results["overall"]["latency"]["p50"] == pytest.approx(0.01 + 4 * 0.0001)
    (tmp_path / "b").mkdir()
    results, _ = run(
        tmp_path / "b",
        profile={"network": network},
        workload={"latency": 0.01, "nodes": ["node-b"]},
    )
    assert results["overall"]["latency"]["p50"] == pytest.approx(0.01 + 2 * 0.0001 + 2 * 0.005)


def test_app_sleeps_end_on_a_timer_tick(tmp_path: Path) -> None:
    results, _ = run(tmp_path, profile={"app": {"timer": 0.001}}, workload={"latency": 0.0201})
    assert results["overall"]["latency"]["p50"] == pytest.approx(0.021)


def test_every_visit_to_an_idle_loop_waits_for_a_wake_up(tmp_path: Path) -> None:
    # At 1 request/s nothing queues: the client's loop, the proxy's (on arrival), the app's
    # (on arrival and after its sleep), the proxy's (the answer) and the client's: 6 wake-ups.
    # The proxy sends the attempt right after deciding, without sleeping in between.
    results, _ = run(
        tmp_path, profile={"wakeup": 0.0005}, workload={"latency": 0.01}, traffic={"rate": 1}
    )
    assert results["overall"]["latency"]["p50"] == pytest.approx(0.01 + 6 * 0.0005)


def test_a_capacity_slot_is_held_until_the_app_wakes_from_the_sleep(tmp_path: Path) -> None:
    # One slot, 10 ms of service, 80 requests/s: 80% busy when the wake-up after the sleep is
    # free; with a measured wake-up of 5 ms the slot is held 15 ms, 120% of the time needed:
    # the queue grows for the whole run. The wake-up is the machine's load (the probe's, in
    # verify): a simulator that ignores it for the slot sees no overload at all.
    quiet, _ = run(tmp_path / "a", workload={"latency": 0.01, "capacity": 1}, traffic={"rate": 80})
    (tmp_path / "b").mkdir()
    busy, _ = run(
        tmp_path / "b",
        profile={"wakeup": 0.005},
        workload={"latency": 0.01, "capacity": 1},
        traffic={"rate": 80},
    )
    assert quiet["overall"]["latency"]["p50"] < 0.05
    assert busy["overall"]["latency"]["p50"] > 1.0
    # a slot frees at most once per 15 ms: about 67 answers a second
    assert busy["requests"]["finished"] / 60 == pytest.approx(1 / 0.015, rel=0.05)


def test_a_loop_asleep_for_less_than_the_probes_sleep_pays_a_wake_up_in_proportion() -> None:
    # Wake-ups are measured after 2 ms sleeps: a loop idle for 0.5 ms between visits is
    # descheduled a quarter as often, one idle for 4 ms every time.
    resources = Resources(replace(Profile(), wakeup=0.001), ("node-a",))
    for gap, share in ((0.0005, 0.25), (0.001, 0.5), (0.004, 1.0)):
        loop, at, late, n = Loop(), 0.0, 0, 20_000
        for _ in range(n):
            at = loop.awake + gap
            late += resources._visit(loop, at, 0.0001) > at + 0.0001 + 1e-12
        assert late / n == pytest.approx(share, abs=0.015)


def test_the_wake_up_table_reaches_the_tail_of_a_measured_distribution() -> None:
    # A stall of 200 ms one wake-up in 10,000 (p99.99): the table resolves it (a 512-entry
    # table stopped at about p99.9 and never drew it).
    spec = {"dist": "empirical", "percentiles": {50: 0.0001, 99.9: 0.002, 99.99: 0.2}}
    resources = Resources(replace(Profile(), wakeup=spec), ("node-a",))
    wakes = resources.wakes
    assert len(wakes) == 8192
    assert wakes == sorted(wakes)
    assert wakes[len(wakes) // 2] == pytest.approx(0.0001, rel=0.01)
    assert max(wakes) > 0.15  # the stalls are in the table
    # above 0.1 s: from halfway between p99.9 and p99.99 up, 0.055%: 4.5 of 8,192 entries
    assert 4 <= sum(1 for w in wakes if w > 0.1) <= 5


def test_a_refused_connect_costs_a_round_trip_an_unreachable_one_the_connect_timeout(
    tmp_path: Path,
) -> None:
    common = {"profile": {"network": {"local": 0.0002}}, "duration": 30.0, "connectTimeout": 1.5}
    for failure, expected in (("refused", 4 * 0.0002), ("unreachable", 1.5 + 2 * 0.0002)):
        directory = tmp_path / failure
        directory.mkdir()
        event = {"at": 10, "action": "endpoint-down", "service": "m/server", "failure": failure}
        _, sim = run(directory, timeline=[event], **common)  # type: ignore[arg-type]
        rec = sim.recorder
        failed = [
            e - s
            for s, e, code in zip(rec.start, rec.end, rec.status, strict=True)
            if code == 502 and s >= 10  # earlier ones were in flight: cut, not refused
        ]
        assert len(failed) > 300
        assert min(failed) == pytest.approx(expected)
        assert max(failed) == pytest.approx(expected)


def test_node_down_is_unreachable_by_default_and_retries_hide_it(tmp_path: Path) -> None:
    results, sim = run(
        tmp_path,
        workload={"replicas": 2, "nodes": ["node-a", "node-b"]},
        policies={"m/server": {"retry-attempts": 1}},
        timeline=[{"at": 10, "action": "node-down", "node": "node-b", "until": 20}],
        connectTimeout=0.25,
        duration=30.0,
    )
    assert results["overall"]["successRate"] == 1.0
    slow = [x for x in latencies(sim, 200) if x > 0.2]
    assert slow and min(slow) == pytest.approx(0.25 + 0.01)  # a connect timeout, then the retry
    assert results["events"][0]["failure"] == "unreachable"


def test_attempts_in_flight_fail_when_their_pod_dies(tmp_path: Path) -> None:
    # 1 s answers at 20/s: about 20 requests are in flight when the pod dies at t=10.
    results, sim = run(
        tmp_path,
        workload={"latency": 1.0},
        traffic={"method": "POST"},  # not replayed: a reset is the client's 502
        timeline=[{"at": 10, "action": "endpoint-down", "service": "m/server", "until": 15}],
        duration=30.0,
    )
    rec = sim.recorder
    cut = [(s, e) for s, e, code in zip(rec.start, rec.end, rec.status, strict=True) if code == 502]
    reset = [(s, e) for s, e in cut if 9 <= s < 10]
    assert 10 <= len(reset) <= 35
    assert all(e == pytest.approx(10.0) for _, e in reset)  # cut when the pod died
    refused = [(s, e) for s, e in cut if 10 <= s < 15]
    assert all(e - s < 0.01 for s, e in refused)  # then refused at once
    assert results["requests"]["inFlightAtEnd"] == results["requests"]["started"] - rec.count


def test_attempts_in_flight_on_an_unreachable_node_hang_until_their_timeout(
    tmp_path: Path,
) -> None:
    timeline = [{"at": 10, "action": "node-down", "node": "node-a", "until": 20}]
    _, sim = run(
        tmp_path,
        workload={"latency": 1.0},
        traffic={"method": "POST"},
        policies={"m/server": {"timeout": "3s"}},
        timeline=timeline,
        duration=30.0,
    )
    rec = sim.recorder
    hung = [
        (s, e)
        for s, e, code in zip(rec.start, rec.end, rec.status, strict=True)
        if code == 504 and s < 10
    ]
    assert 10 <= len(hung) <= 35
    assert all(e - s == pytest.approx(3.0) for s, e in hung)
    (tmp_path / "none").mkdir()
    _, sim = run(
        tmp_path / "none",
        workload={"latency": 1.0},
        traffic={"method": "POST"},
        timeline=timeline,
        duration=30.0,
    )
    # No timeout: nothing answers them until the node is back and resets their connections.
    rec = sim.recorder
    reset = [
        e
        for s, e, code in zip(rec.start, rec.end, rec.status, strict=True)
        if code == 502 and s < 10
    ]
    assert len(reset) >= 10
    assert all(e == pytest.approx(20.0) for e in reset)


def test_contention_slows_service_with_the_requests_in_service(tmp_path: Path) -> None:
    users, service, k = 8, 0.01, 0.25
    results, _ = run(
        tmp_path,
        workload={"latency": service, "contention": k},
        traffic={"rate": None, "users": users, "thinkTime": 0},
        duration=60.0,
    )
    # Every user always has a request in service: each sees the other users' requests.
    expected = service * (1 + k * (users - 1))
    assert results["overall"]["latency"]["p50"] == pytest.approx(expected)
    assert results["overall"]["requests"] / 60 == pytest.approx(users / expected, rel=0.01)


def test_policy_changes_apply_after_the_config_delay(tmp_path: Path) -> None:
    split = {
        "apiVersion": "split.smi-spec.io/v1alpha4",
        "kind": "TrafficSplit",
        "metadata": {"name": "s", "namespace": "m"},
        "spec": {
            "service": "server",
            "backends": [
                {"service": "server-v1", "weight": 100},
                {"service": "server-v2", "weight": 0},
            ],
        },
    }
    (tmp_path / "scenario").mkdir()
    (tmp_path / "scenario" / "split.yaml").write_text(yaml.safe_dump(split))
    event = {
        "at": 10,
        "action": "set-split",
        "split": "m/s",
        "weights": {"server-v1": 0, "server-v2": 100},
    }
    _, sim = run(
        tmp_path,
        profile={"configDelay": 0.5},
        workloads={
            "m/server-v1": {"replicas": 1},
            "m/server-v2": {"replicas": 1},
            "m/server": {"replicas": 0},
            "m/client": {"replicas": 1},
        },
        traffic={"rate": 200},
        timeline=[event],
        duration=12.0,
    )
    rec, names = sim.recorder, {v: k for k, v in sim.recorder.names.items()}
    v1 = [s for s, b in zip(rec.start, rec.backend, strict=True) if names[b] == "m/server-v1"]
    v2 = [s for s, b in zip(rec.start, rec.backend, strict=True) if names[b] == "m/server-v2"]
    assert max(v1) == pytest.approx(10.5, abs=0.02)
    assert min(v2) == pytest.approx(10.5, abs=0.02)


def test_route_weights_change_after_the_config_delay_and_mirrors_load_their_pods(
    tmp_path: Path,
) -> None:
    """set-weights on an HTTPRoute (GAMMA) applies like set-split; a RequestMirror's copies
    reach the mirror's pod (its own requests), and never the client's results."""
    route = {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": "r", "namespace": "m"},
        "spec": {
            "parentRefs": [{"group": "", "kind": "Service", "name": "server"}],
            "rules": [
                {
                    "name": "main",
                    "filters": [
                        {
                            "type": "RequestMirror",
                            "requestMirror": {"backendRef": {"name": "shadow", "port": 80}},
                        }
                    ],
                    "backendRefs": [
                        {"name": "server-v1", "port": 80, "weight": 100},
                        {"name": "server-v2", "port": 80, "weight": 0},
                    ],
                }
            ],
        },
    }
    (tmp_path / "scenario").mkdir()
    (tmp_path / "scenario" / "route.yaml").write_text(yaml.safe_dump(route))
    event = {
        "at": 10,
        "action": "set-weights",
        "route": "m/r",
        "rule": "main",
        "weights": {"server-v1": 0, "server-v2": 100},
    }
    _, sim = run(
        tmp_path,
        profile={"configDelay": 0.5},
        workloads={
            "m/server-v1": {"replicas": 1},
            "m/server-v2": {"replicas": 1},
            "m/server": {"replicas": 0},
            "m/shadow": {"replicas": 1, "capacity": 1, "latency": 0.004},
            "m/client": {"replicas": 1},
        },
        traffic={"rate": 200},
        timeline=[event],
        duration=12.0,
    )
    rec, names = sim.recorder, {v: k for k, v in sim.recorder.names.items()}
    v1 = [s for s, b in zip(rec.start, rec.backend, strict=True) if names[b] == "m/server-v1"]
    v2 = [s for s, b in zip(rec.start, rec.backend, strict=True) if names[b] == "m/server-v2"]
    assert max(v1) == pytest.approx(10.5, abs=0.02)
    assert min(v2) == pytest.approx(10.5, abs=0.02)
    assert "m/shadow" not in {names[b] for b in rec.backend}
    shadow = next(p for p in sim.pods.values() if p.behaviour.workload.service == "m/shadow")
    assert shadow.slots is not None and max(shadow.slots) > 11.0  # busy to the end


def test_profiles_are_checked_with_one_line_errors(tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text("proxy: {request: -1}\n")
    with pytest.raises(ProfileError, match=r"proxy\.request: expected seconds >= 0"):
        load_profile("bad.yaml", base=tmp_path)
    (tmp_path / "worse.yaml").write_text("wakeup: {dist: gamma}\n")
    with pytest.raises(ProfileError, match="wakeup: dist"):
        load_profile("worse.yaml", base=tmp_path)
    with pytest.raises(ProfileError, match="no such profile"):
        load_profile("nope")
    assert load_profile("local").proxy_request > 0
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "scenario.yaml").write_text(
        "profile: nope\nworkloads: {a/b: {}}\n"
        "traffic: [{from: a/b, to: 'http://b.a.mesh/', rate: 1}]\n"
    )
    with pytest.raises(ScenarioError, match=r"scenario\.yaml: profile: profile 'nope'"):
        load_scenario(tmp_path / "s")
