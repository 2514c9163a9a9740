"""From a measured window to a scenario (mesh/snapshot/model.py) that predicts the window:
objects stripped, metrics differenced, workloads, traffic, SLOs proposed, and the simulator
run on what was written, against the truth the metrics were drawn from."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import yaml

from mesh.core.model import Settings
from mesh.core.parse import parse_settings, settings_doc
from mesh.manifests import read_manifests
from mesh.proxy.metrics import Metrics
from mesh.snapshot import exposition, model, objects, slos, write
from sim.model import run_scenario
from sim.scenario import load_scenario
from tests.snapshot import world

WINDOW = 60.0


def test_strip_keeps_what_the_mesh_reads_and_nothing_else() -> None:
    web, pod = world.objects()[0], world.objects()[4]
    kept = objects.strip(web)
    assert kept["metadata"] == {"name": "web", "namespace": "shop"}  # no uid, rv, kubectl copy
    assert "status" not in kept and kept["spec"] == web["spec"]
    small = objects.strip(pod)
    assert small["spec"] == {"serviceAccountName": "web", "nodeName": "node-a"}
    assert small["status"] == {"phase": "Running", "podIP": "10.244.1.10"}
    assert "hunter2" not in str(small)
    slice_ = objects.strip(world.objects()[2])
    assert "ownerReferences" not in slice_["metadata"] and slice_["endpoints"]


def test_settings_round_trip() -> None:
    settings = parse_settings({"acl": True, "zone": "m", "watchNamespaces": ["shop"]})
    assert parse_settings(settings_doc(settings)) == settings
    assert parse_settings(settings_doc(Settings())) == Settings()


def test_difference_counts_a_reset_counter_from_zero() -> None:
    before = exposition.parse(world.metrics(10)[0]["node-a"])
    after = exposition.parse(world.metrics(20)[0]["node-a"])
    window = exposition.difference(before, after)
    key = {"service": "shop/web", "protocol": "http", "source": "shop/frontend", "code": "200"}
    grown = [v for labels, v in exposition.rows(window, model.CALLS) if labels == key]
    assert grown and 0 < grown[0] < world.WEB_RATE * 20
    restarted = exposition.difference(after, before)  # went down: the proxy restarted
    again = [v for labels, v in exposition.rows(restarted, model.CALLS) if labels == key]
    assert again[0] == pytest.approx(world.WEB_RATE * 10 * (1 - world.WEB_ERRORS), rel=0.2)


def test_histogram_quantiles_read_as_prometheus_does() -> None:
    metrics = Metrics(lambda: {})
    for value in [0.004] * 50 + [0.012] * 49 + [0.5]:
        metrics.attempt("s", value, backend="b", status=200)
    table = exposition.parse(metrics.render().decode())
    hist = exposition.histograms(table, model.BACKEND, "backend")["b"]
    assert hist.count == 100 and hist.quantile(0.5) == pytest.approx(0.004)
    assert 0.01 < (hist.quantile(0.9) or 0) <= 0.0125  # within the (0.01, 0.0125] bucket
    spec = model.latency_spec(hist)
    assert spec is not None and spec["percentiles"][0] == 0.003  # the first bucket's floor
    assert spec["percentiles"][100] == 0.5


def window_tables(seconds: float) -> tuple[dict[str, exposition.Table], world.Truth]:
    before = {node: exposition.parse(world.empty_metrics()) for node in ("node-a", "node-b")}
    texts, truth = world.metrics(seconds)
    return {
        node: exposition.difference(before[node], exposition.parse(text))
        for node, text in texts.items()
    }, truth


def take(tmp_path: Path) -> tuple[Path, model.Snapshot, world.Truth]:
    per_node, truth = window_tables(WINDOW)
    docs = [objects.strip(d) for d in world.objects()]
    settings = parse_settings(yaml.safe_load(world.MESH_YAML))
    snap = model.snapshot(
        per_node, seconds=WINDOW, docs=docs, settings=settings, name="shop", duration=WINDOW
    )
    out = tmp_path / "shop"
    write.write(
        out,
        scenario=snap.scenario,
        settings_text=world.MESH_YAML,
        docs=docs,
        observed=snap.observed,
        header="a test",
    )
    return out, snap, truth


def test_the_scenario_has_the_measured_traffic_and_workloads(tmp_path: Path) -> None:
    out, snap, _ = take(tmp_path)
    scenario = snap.scenario
    db, web = scenario["traffic"]  # sorted by service
    assert db["to"] == "tcp://db.shop.mesh:5432" and db["from"] == "shop/web"
    assert db["node"] == "node-b" and db["rate"] == pytest.approx(world.DB_RATE, rel=0.01)
    assert web["to"] == "http://web.shop.mesh:8080/" and web["from"] == "shop/frontend"
    assert web["rate"] == pytest.approx(world.WEB_RATE, rel=0.01)
    assert [m["path"] for m in web["mix"]] == ["/api/items", "/health"]
    assert scenario["workloads"]["shop/web"]["replicas"] == 2
    assert scenario["workloads"]["shop/web"]["errorRate"] == pytest.approx(0.02, abs=0.01)
    assert scenario["proxyLatency"] == pytest.approx(world.OVERHEAD, rel=0.05)
    assert scenario["profile"] == "ideal"
    assert any("hosts no meshed service answers" in w for w in snap.warnings)
    # the directory holds manifests of each kind, and snapshot.json is not read as one
    names = sorted(p.name for p in out.iterdir())
    assert "snapshot.json" in names and "traffictargets.yaml" in names
    manifests = read_manifests(out)
    assert not manifests.problems and len(manifests.docs) == len(world.objects())


def test_the_simulated_snapshot_predicts_the_window(tmp_path: Path) -> None:
    out, snap, truth = take(tmp_path)
    results = run_scenario(load_scenario(out))
    web = results["services"]["shop/web"]
    assert web["requests"] == pytest.approx(len(truth.web), rel=0.1)
    assert web["successRate"] == pytest.approx(truth.web_success(), abs=0.015)
    assert web["latency"]["p50"] == pytest.approx(truth.web_quantile(0.5), rel=0.1)
    assert web["latency"]["p99"] == pytest.approx(truth.web_quantile(0.99), rel=0.2)
    db = results["services"]["shop/db"]
    assert db["successRate"] == 1.0
    median = math.log(2) * world.DB_MEAN + world.OVERHEAD  # the proxy's part added once
    assert db["latency"]["p50"] == pytest.approx(median, rel=0.2)
    # what the proxies observed agrees with the truth too (at their buckets' resolution)
    seen = snap.observed["services"]["shop/web"]
    assert seen["successRate"] == pytest.approx(truth.web_success(), abs=0.002)
    assert seen["latency"]["p50"] == pytest.approx(truth.web_quantile(0.5), rel=0.25)


def test_proposed_slos_hold_on_the_window_they_came_from(tmp_path: Path) -> None:
    out, snap, _ = take(tmp_path)
    proposed = slos.propose(snap.observed, margin=0.5)
    by_service = {s["service"]: s for s in proposed}
    web = by_service["shop/web"]
    assert 0.96 < web["successRate"] < 0.98 and web["latency"]["p99"] > 0.05
    assert by_service["shop/db"]["successRate"] == 0.999
    raw = yaml.safe_load((out / "scenario.yaml").read_text())
    raw["slos"] = proposed
    (out / "scenario.yaml").write_text(yaml.safe_dump(raw))
    results = run_scenario(load_scenario(out))
    assert all(s["ok"] for s in results["slos"]), results["slos"]


def test_a_pod_of_several_services_behaves_as_measured_through_any(tmp_path: Path) -> None:
    docs = [objects.strip(d) for d in world.objects()]
    narrow = world.endpoint_slice("web-v1", 8080, [("10.244.1.10", "node-a")])
    docs += [objects.strip(world.service("web-v1", 8080)), objects.strip(narrow)]
    per_node, _ = window_tables(10)
    total = exposition.add(per_node.values())
    backends = exposition.histograms(total, model.BACKEND, "backend")
    loads = model.workloads(docs, backends, {}, Settings())
    assert loads["shop/web-v1"]["latency"] == loads["shop/web"]["latency"]
    assert loads["shop/web-v1"]["replicas"] == 1
    # a TCP Service on the same pods does not lend its flows to an HTTP one
    tcp = world.service("web-tcp", 9000, tcp=True)
    docs += [
        objects.strip(tcp),
        objects.strip(world.endpoint_slice("web-tcp", 9000, [("10.244.1.10", "node-a")])),
    ]
    flows = exposition.Hist(list(backends["shop/db"].bounds), list(backends["shop/db"].counts), 1.0)
    loads = model.workloads(docs, {**backends, "shop/web-tcp": flows}, {}, Settings())
    assert loads["shop/web-v1"]["latency"] == loads["shop/web"]["latency"]
