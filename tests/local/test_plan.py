"""The local mesh's plan: the same pods as the simulator, identities that survive the address
map, listeners from the compiled config, and one-line errors for what it cannot run."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest
import yaml

from mesh.core.routing import Router
from mesh.local.compare import Tolerance
from mesh.local.plan import Addressing, Plan, PlanError, compile_config, make_plan
from sim.model import Simulation
from sim.scenario import load_scenario

ROOT = Path(__file__).resolve().parents[2]
SCENARIOS = ROOT / "scenarios"


def to_cluster(address: str, maps: list[str]) -> str:
    for item in maps:
        cluster, local = (ipaddress.ip_network(x) for x in item.split("="))
        if ipaddress.ip_address(address) in local:
            offset = int(ipaddress.ip_address(address)) - int(local.network_address)
            return str(ipaddress.ip_address(int(cluster.network_address) + offset))
    raise AssertionError(f"{address} is in no local network")


@pytest.mark.parametrize("name", ["canary", "acl-lockout", "node-failure", "rate-limit"])
def test_the_plan_runs_the_simulators_pods_with_their_behaviour(name: str) -> None:
    scenario = load_scenario(SCENARIOS / name)
    plan = make_plan(scenario, isolation="netns")
    simulated = Simulation(scenario).pods
    assert {p.ip: (p.workload, p.node) for p in plan.pods} == {
        ip: (pod.behaviour.workload.service, pod.node) for ip, pod in simulated.items()
    }
    for pod in plan.pods:
        workload = scenario.workloads[pod.workload]
        assert pod.behaviour["latency"] == workload.latency_spec
        assert pod.behaviour["capacity"] == workload.capacity
        assert to_cluster(pod.address, plan.address_maps) == pod.ip
    addresses = [n.address for n in plan.nodes] + [p.address for p in plan.pods]
    assert len(set(addresses)) == len(addresses)
    assert all(ipaddress.ip_address(a).is_loopback for a in addresses)


@pytest.mark.parametrize("name", ["acl-lockout", "canary", "rate-limit"])
def test_each_stream_sends_from_an_address_with_its_source_identity(name: str) -> None:
    scenario = load_scenario(SCENARIOS / name)
    plan = make_plan(scenario, isolation="netns")
    router = Router(compile_config(scenario))
    for stream, traffic in zip(plan.streams, scenario.traffic, strict=True):
        cluster_ip = to_cluster(stream.address, plan.address_maps)
        accounts = {
            f"{d['metadata']['namespace']}/{d['spec']['serviceAccountName']}"
            for d in scenario.docs
            if d["kind"] == "Pod" and d["status"]["podIP"] == cluster_ip
        }
        assert accounts == {traffic.source}
        if router.acl:  # identities are compiled into the config only in ACL mode
            assert router.source_identity(cluster_ip) == traffic.source
        route = router.find_route(traffic.host, traffic.port, traffic.protocol)
        assert route is not None and stream.port == route.listener
        assert stream.proxy == next(n.address for n in plan.nodes if n.name == traffic.node)


def test_a_source_without_pods_gets_a_client_pod_in_both_runs(tmp_path: Path) -> None:
    body = {
        "duration": 5,
        "settings": {"acl": True},
        "workloads": {"ns/api": {"replicas": 1}},
        "traffic": [{"name": "t", "from": "ns/robot", "to": "http://api.ns.mesh/", "rate": 5}],
    }
    (tmp_path / "scenario.yaml").write_text(yaml.safe_dump(body))
    scenario = load_scenario(tmp_path)
    plan = make_plan(scenario, isolation="loopback", addressing=Addressing(base=150))
    router = Router(compile_config(scenario))
    address = to_cluster(plan.streams[0].address, plan.address_maps)
    assert router.source_identity(address) == "ns/robot"
    assert plan.nodes[0].address == "127.150.0.1"


def test_the_plan_survives_json(tmp_path: Path) -> None:
    plan = make_plan(load_scenario(SCENARIOS / "canary", scale=0.1), isolation="netns")
    (tmp_path / "plan.json").write_text(plan.to_json())
    again = Plan.read(tmp_path / "plan.json")
    assert again == plan
    assert again.duration == pytest.approx(30.0)
    assert [e["at"] for e in again.timeline] == pytest.approx([6, 12, 18, 24])


def test_scale_shortens_the_whole_time_line() -> None:
    scenario = load_scenario(SCENARIOS / "canary", scale=0.2)
    assert scenario.duration == pytest.approx(60)
    assert [e.at for e in scenario.timeline] == pytest.approx([12, 24, 36, 48])
    assert [(s.start, s.end) for s in scenario.slos][1:3] == [
        pytest.approx((12, 24)),
        pytest.approx((24, 36)),
    ]
    assert scenario.traffic[0].rate == 200  # rates are not scaled


def test_what_the_local_mesh_cannot_run_is_one_line(tmp_path: Path) -> None:
    body = {
        "workloads": {"ns/api": {"replicas": 1}},
        "traffic": [{"name": "t", "from": "ns/api", "to": "http://api.ns.mesh/", "rate": 5}],
    }
    (tmp_path / "scenario.yaml").write_text(yaml.safe_dump(body))
    (tmp_path / "pods.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": "x", "namespace": "ns"},
                "spec": {"serviceAccountName": "x"},
                "status": {"podIP": "fd00::1"},
            }
        )
    )
    with pytest.raises(PlanError, match="IPv4 pod networks only"):
        make_plan(load_scenario(tmp_path), isolation="netns")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", Tolerance()),
        ("success=0.05", Tolerance(success=0.05)),
        ("p50=10%,p99=0.5", Tolerance(p50=0.10, p99=0.5)),
    ],
)
def test_tolerance_spec(text: str, expected: Tolerance) -> None:
    assert Tolerance.parse(text) == expected


@pytest.mark.parametrize("text", ["p90=0.1", "success", "p50=fast", "p99=-1"])
def test_bad_tolerance_is_one_line(text: str) -> None:
    with pytest.raises(ValueError, match="--tolerance") as caught:
        Tolerance.parse(text)
    assert "\n" not in str(caught.value)
