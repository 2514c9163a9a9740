"""Check a change before it is applied, on the kind cluster: snapshot -> simulate -> gate.

1. ``simmesh snapshot`` measures 30 s of traffic that test app pods send each other through
   the mesh (``/call`` from inside the pods: a -> b split 50/50 over b-v1, lognormal 20 ms, and
   b-v2, exponential 30 ms with 5% errors; b -> a, 5 ms; b -> a-tcp, TCP flows), and
   ``simmesh sim`` runs the directory it wrote unchanged. Its prediction per service (success
   rate, p50, p99) is held against what the callers saw in the same window. The table goes to
   out/cluster/snapshot-fidelity.{json,md}; ``python -m loadtests.bench_snapshot`` puts it in
   BENCHMARKS.md. The test asserts loose bounds (a machine this loaded stalls now and then);
   the table says which of the verify tolerances (2 points, 25%) were met.
2. The admission gate (``gate.mode``): in enforce mode the deletion of the TrafficTarget that
   lets a call b is denied, naming the SLO it breaks and the predicted numbers; a harmless
   change goes through; in warn mode the deletion goes through with kubectl's warning; with
   the controller down every change goes through (failurePolicy Ignore).
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.cluster import kube as k
from tests.cluster.conftest import MESH_NS, NS_A, NS_B, ROOT, Workloads, _script, record
from tests.cluster.rollout import Load

pytestmark = pytest.mark.timeout(600)
OUT = ROOT / "out" / "cluster"
SIMMESH = str(Path(sys.executable).parent / "simmesh")
WINDOW = 30
B_HTTP = f"http://b.{NS_B}.mesh:{k.HTTP_PORT}/echo"
A_HTTP = f"http://a.{NS_A}.mesh:{k.HTTP_PORT}/echo"
A_TCP = f"tcp://a-tcp.{NS_A}.mesh:{k.TCP_PORT}"
SERVICES = {B_HTTP: f"{NS_B}/b", A_HTTP: f"{NS_A}/a", A_TCP: f"{NS_A}/a-tcp"}
SERVICES_CALLED = (f"{NS_B}/b", f"{NS_A}/a")
TOLERANCE = {"success": 0.02, "p50": 0.25, "p99": 0.25}  # as simmesh verify's
LOCKOUT = "snap-a-to-b"
SLOS = f"""slos:
  - {{name: a can call b, service: {NS_B}/b, successRate: 0.9}}
  - {{name: b can call a, service: {NS_A}/a, successRate: 0.9}}
"""


def behave(app: k.App, body: dict[str, Any]) -> None:
    path = f"/api/v1/namespaces/{app.namespace}/pods/{app.pod}:{k.HTTP_PORT}/proxy/behaviour"
    app.kube.raw("PUT", path, body)


@pytest.fixture(scope="module")
def scene(workloads: Workloads) -> Iterator[list[dict[str, Any]]]:
    """a -> b and b -> a allowed, b split 50/50, the pods slowed down; all undone after."""
    kube = workloads.kube
    docs = k.grant(NS_B, LOCKOUT, destination="b", source=(NS_A, "a"))
    docs += k.grant(NS_A, "snap-b-to-a", destination="a", source=(NS_B, "b"))
    split = k.split(NS_B, "snap-split", "b", {"b-v1": 50, "b-v2": 50})
    kube.apply([*docs, split])
    behave(workloads.b_v1, {"latency": {"dist": "lognormal", "median": 0.02, "sigma": 0.5}})
    behave(workloads.b_v2, {"latency": {"dist": "exponential", "mean": 0.03}, "errorRate": 0.05})
    behave(workloads.a, {"latency": {"dist": "constant", "value": 0.005}})
    for app, url in ((workloads.a, B_HTTP), (workloads.b_v1, A_HTTP)):
        k.wait_for(
            f"{url} allowed",
            lambda app=app, url=url: app.call(url, timeout=5)["results"][0]["status"] in (200, 500),
            interval=0.2,
        )
    try:
        yield docs
    finally:
        for app in (workloads.a, workloads.b_v1, workloads.b_v2):
            behave(app, {"latency": 0, "errorRate": 0})
        kube.delete([*docs, split])


# --------------------------------------------------------------------------- 1. snapshot


@dataclass
class Batch:
    url: str
    started: float
    ended: float
    results: list[dict[str, Any]]


@dataclass
class Callers:
    """Pods calling mesh URLs in batches (100 at a time, 2 in parallel), every result kept."""

    callers: list[tuple[k.App, str]]
    batches: list[Batch] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def __enter__(self) -> Callers:
        self.threads = [
            threading.Thread(target=self._run, args=c, daemon=True) for c in self.callers
        ]
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=60)

    def _run(self, app: k.App, url: str) -> None:
        while not self.stop.is_set():
            started = time.time()
            try:
                answer = app.call(url, count=100, concurrency=2, timeout=5)
            except (k.KubeError, ValueError):
                time.sleep(0.2)
                continue
            self.batches.append(Batch(url, started, time.time(), answer["results"]))

    def seen(self, since: float, until: float) -> dict[str, dict[str, Any]]:
        """Per service, what the callers saw of the batches within the window."""
        out = {}
        for url, service in SERVICES.items():
            results = [
                r
                for b in self.batches
                if b.url == url and b.started >= since and b.ended <= until
                for r in b.results
            ]
            ok = [r for r in results if r["error"] is None and (r["status"] or 200) < 400]
            latencies = sorted(r["elapsedMs"] / 1000 for r in ok)
            out[service] = {
                "requests": len(results),
                "successRate": len(ok) / len(results) if results else None,
                "p50": quantile(latencies, 0.5),
                "p99": quantile(latencies, 0.99),
            }
        return out


def quantile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    rank = q * (len(values) - 1)
    low, high = math.floor(rank), math.ceil(rank)
    return values[low] + (values[high] - values[low]) * (rank - low)


def _rel(predicted: float | None, observed: float | None) -> float | None:
    if predicted is None or observed is None or observed == 0:
        return None
    return (predicted - observed) / observed


def fidelity(
    seen: dict[str, dict[str, Any]], proxies: dict[str, Any], sim: dict[str, Any]
) -> list[dict[str, Any]]:
    rows = []
    for service, callers in seen.items():
        predicted = sim["services"].get(service) or {}
        latency = predicted.get("latency") or {}
        measured = (proxies.get(service) or {}).get("latency") or {}
        row = {
            "service": service,
            "requests": [callers["requests"], predicted.get("requests")],
            "successRate": [callers["successRate"], predicted.get("successRate")],
            "p50": [callers["p50"], latency.get("p50"), measured.get("p50")],
            "p99": [callers["p99"], latency.get("p99"), measured.get("p99")],
        }
        s_obs, s_sim = row["successRate"]
        row["within"] = {
            "success": s_obs is not None
            and s_sim is not None
            and abs(s_sim - s_obs) <= TOLERANCE["success"],
            "p50": abs(_rel(latency.get("p50"), callers["p50"]) or 9) <= TOLERANCE["p50"],
            "p99": abs(_rel(latency.get("p99"), callers["p99"]) or 9) <= TOLERANCE["p99"],
        }
        rows.append(row)
    return rows


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:.1f}"


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| service | requests observed / simulated | success % observed / simulated | "
        "p50 ms observed / simulated (proxies) | p99 ms observed / simulated (proxies) |",
        "|---|---:|---:|---:|---:|",
    ]
    for row in rows:
        s_obs, s_sim = row["successRate"]
        bold = {key: "" if ok else "**" for key, ok in row["within"].items()}
        p50, p99 = row["p50"], row["p99"]
        lines.append(
            f"| {row['service']} | {row['requests'][0]:,} / {row['requests'][1] or 0:,} | "
            f"{s_obs * 100:.2f} / {bold['success']}{(s_sim or 0) * 100:.2f}{bold['success']} | "
            f"{_ms(p50[0])} / {bold['p50']}{_ms(p50[1])}{bold['p50']} ({_ms(p50[2])}) | "
            f"{_ms(p99[0])} / {bold['p99']}{_ms(p99[1])}{bold['p99']} ({_ms(p99[2])}) |"
        )
    return "\n".join(lines)


def test_a_snapshot_predicts_the_window_it_came_from(
    kube: k.Kube, workloads: Workloads, scene: Any
) -> None:
    out, slos = OUT / "snapshot", OUT / "snapshot-slos.yaml"
    for old in (out, OUT / "snapshot-sim"):
        shutil.rmtree(old, ignore_errors=True)
    callers = [(workloads.a, B_HTTP), (workloads.b_v1, A_HTTP), (workloads.b_v1, A_TCP)]
    argv = [SIMMESH, "snapshot", "--kubeconfig", str(kube.kubeconfig), "--window", f"{WINDOW}s"]
    argv += ["--out", str(out), "--propose-slos", str(slos), "--quiet"]
    with Callers(callers) as load:
        time.sleep(3)  # every caller has a batch going
        started = time.monotonic()
        done = subprocess.run(argv, capture_output=True, text=True, timeout=WINDOW + 120)
        record("snapshot (30 s window, through the API server)", time.monotonic() - started)
    assert done.returncode == 0, done.stderr
    observed = json.loads((out / "snapshot.json").read_text())
    window = observed["window"]
    seen = load.seen(window["fromEpoch"], window["untilEpoch"])
    started = time.monotonic()
    sim = subprocess.run(
        [SIMMESH, "sim", str(out), "--out", str(OUT / "snapshot-sim"), "--quiet"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    record("simmesh sim of the snapshot", time.monotonic() - started)
    assert sim.returncode == 0, sim.stderr + sim.stdout  # the snapshot has no SLOs of its own
    results = json.loads((OUT / "snapshot-sim" / "results.json").read_text())
    rows = fidelity(seen, observed["services"], results)
    report = {"window": window, "rows": rows, "tolerance": TOLERANCE, "stdout": done.stdout}
    (OUT / "snapshot-fidelity.json").write_text(json.dumps(report, indent=2, sort_keys=True))
    (OUT / "snapshot-fidelity.md").write_text(table(rows) + "\n")
    print("\n" + done.stdout + "\n" + table(rows))
    for row in rows:
        observed_success, predicted_success = row["successRate"]
        assert observed_success is not None and predicted_success is not None, row
        assert abs(predicted_success - observed_success) <= 0.04, row
        assert row["requests"][1] == pytest.approx(row["requests"][0], rel=0.35), row
        if row["service"] != f"{NS_A}/a-tcp":  # a pod's one behaviour is its HTTP latency
            assert abs(_rel(row["p50"][1], row["p50"][0]) or 9) <= 0.5, row
    assert "slos:" in slos.read_text()


# --------------------------------------------------------------------------- 2. the gate


def gate(kube: k.Kube) -> dict[str, Any]:
    path = f"/api/v1/namespaces/{MESH_NS}/services/simmesh-controller:9000/proxy/api/v1/gate"
    answer: dict[str, Any] = kube.raw("GET", path)
    return answer


def deploy(image: str, mode: str) -> None:
    """The session's deployment (ACL mode), with the gate in ``mode``, measuring every 5 s."""
    sets = ["--set", "acl=true", "--set", f"gate.mode={mode}", "--set", "gate.windowSeconds=5"]
    started = time.monotonic()
    _script("deploy.sh", image, *sets)
    record(f"helm upgrade: gate.mode={mode}", time.monotonic() - started)


def measured(kube: k.Kube, mode: str) -> None:
    """Until the gate in ``mode`` has measured both callers (a -> b, b -> a)."""

    def both() -> bool:
        view = gate(kube)
        services = (view["window"] or {}).get("services", {})
        return view["mode"] == mode and all(services.get(s, 0) > 0 for s in SERVICES_CALLED)

    k.wait_for(f"the gate ({mode}) has measured a -> b and b -> a", both, timeout=90, interval=1)


def test_the_gate_denies_warns_and_fails_open(
    kube: k.Kube, workloads: Workloads, scene: list[dict[str, Any]], image: str
) -> None:
    configmap = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "simmesh-slos", "namespace": MESH_NS},
        "data": {"slos.yaml": SLOS},
    }
    kube.apply([configmap])
    target = ["traffictarget", LOCKOUT, "-n", NS_B]
    load = Load([(workloads.a, B_HTTP), (workloads.b_v1, A_HTTP)], count=100)
    try:
        with load:
            deploy(image, "enforce")
            measured(kube, "enforce")
            started = time.monotonic()
            denied = kube.run("delete", *target, check=False)
            record("gate: the lockout denied in", time.monotonic() - started)
            assert denied.returncode != 0, (denied.stdout, json.dumps(gate(kube)["recent"]))
            assert 'admission webhook "gate.simmesh.io" denied the request: simmesh gate: ' in (
                denied.stderr
            )
            assert "this change breaks SLO 'a can call b': successRate" in denied.stderr
            assert "-> 0 (objective >= 0.9)" in denied.stderr
            assert "b can call a" not in denied.stderr
            kube.run("get", *target)  # still there
            started = time.monotonic()
            harmless = kube.run(
                "annotate", "service", "b", "-n", NS_B, "simmesh.io/retry-attempts=1"
            )
            record("gate: a harmless change allowed in", time.monotonic() - started)
            assert "Warning" not in harmless.stderr, harmless.stderr
            recent = gate(kube)["recent"]
            assert [r["outcome"] for r in recent[-2:]] == ["breaks", "safe"], recent

            deploy(image, "warn")
            measured(kube, "warn")
            warned = kube.run("delete", *target, "--dry-run=server")
            assert "Warning: simmesh gate: this change breaks SLO 'a can call b'" in (
                warned.stderr
            ), warned.stderr
            assert "(server dry run)" in warned.stdout

            kube.run("scale", "-n", MESH_NS, "deployment/simmesh-controller", "--replicas=0")
            selector = "app.kubernetes.io/name=simmesh-controller"
            k.wait_for(  # not even a terminating one, which still answers while it drains
                "no controller pod at all",
                lambda: not kube.json("get", "pods", "-n", MESH_NS, "-l", selector)["items"],
            )
            started = time.monotonic()
            through = kube.run("delete", *target)  # failurePolicy Ignore: nobody asked
            record("gate: controller down, the lockout went through in", time.monotonic() - started)
            assert "Warning" not in through.stderr, through.stderr
            kube.apply([d for d in scene if d["metadata"]["name"] == LOCKOUT])  # back
            kube.run("scale", "-n", MESH_NS, "deployment/simmesh-controller", "--replicas=1")
            kube.run(
                "rollout", "status", "-n", MESH_NS, "deployment/simmesh-controller",
                "--timeout=120s", timeout=150,
            )  # fmt: skip
    finally:
        deploy(image, "off")
        kube.run("annotate", "service", "b", "-n", NS_B, "simmesh.io/retry-attempts-", check=False)
        kube.delete([configmap])
    assert not kube.json("get", "validatingwebhookconfigurations")["items"]
