"""The measurements of a local run, in the simulator's result format.

Locust's rows say what each client saw (start, end, status, the answering pod); the proxies'
access logs say what the mesh did with each request (the route's service, the endpoint, how
many tries). They are joined on the trace id each HTTP request carried, and on the client's
address and port for TCP and UDP flows. Each request then becomes one row of
:class:`sim.metrics.Recorder` (the simulator's own recorder), so the real run is aggregated,
plotted and judged against its SLOs by exactly the code that judges the simulation:

- service: the route's service (from the access log; from the plan when no record matches);
- backend: the split backend (or the service) whose endpoints hold the endpoint that answered;
- status: the client's; a flow closed without an answer takes the status of the proxy's
  reason (403 denied, 502 connect failed, ...); a request with no answer at all is status 0
  (``no-answer``), which the simulator never produces;
- tries: the proxy's count.

The proxy logs no trace id for the requests it answers itself (403, 404, 429): those keep the
client's status and have no backend and no tries; ``run.notJoined`` counts them by status.

Requests that ended after the scenario's duration count as in flight at the end, as in the
simulator. Circuit breaker openings come from each proxy's ``simmesh_proxy_circuit_opens``.

With mTLS on, the results gain what the simulator's do (sim/model.py ``costs``): ``proxyCpu``,
each node proxy's CPU seconds over the scenario's duration (from /proc, sampled by the runner
at t0 and at the end) and per 1,000 finished requests, and ``mtls``: the tunnels' handshakes
(``simmesh_proxy_tunnel_handshakes{side="client"}``), their failures, the requests and flows
that went through a tunnel (HTTP attempts to another node's pods in the source proxies' access
logs, flows in the destination proxies') and the plaintext requests counted across nodes.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from mesh.core.routing import STATUS, Reason, Route, Router
from mesh.local.plan import Plan, compile_config
from sim.metrics import Recorder, RunFacts
from sim.scenario import Scenario

__all__ = ["real_results"]

FLOW_REASONS = {"upstream-connect-failed": 502, "revoked": 502, "no-config": 503}


def _access_logs(
    workdir: Path, tunnel_ports: set[int], pod_nodes: dict[str, str | None]
) -> tuple[dict[str, Any], dict[tuple[str, int], Any], int]:
    """HTTP records by trace id and flows by client address and port, as the client's node
    proxy logged them, and how many requests and flows went through an mTLS tunnel: the HTTP
    attempts each source proxy logged to pods of other nodes (``pod_nodes``: a pod's address
    -> its node), as the simulator counts them (a pipe's requests are logged by the source
    only), and the flows the destination proxies logged (the same trace id: never joined)."""
    http: dict[str, Any] = {}
    flows: dict[tuple[str, int], Any] = {}
    tunnelled = 0
    for path in sorted(workdir.glob("access-*.jsonl")):
        node = path.stem.removeprefix("access-")
        for line in path.read_text(errors="replace").splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue  # a line cut by a kill
            if record.get("listener") in tunnel_ports:
                tunnelled += record.get("kind") != "http"  # HTTP: counted at the source
            elif record.get("kind") == "http" and record.get("trace_id"):
                if tunnel_ports:
                    for attempt in record.get("attempts") or ():
                        there = pod_nodes.get(str(attempt[0]).rpartition(":")[0])
                        tunnelled += there is not None and there != node
                http[record["trace_id"]] = record
            elif record.get("kind") in ("tcp", "udp") and record.get("client_port"):
                flows[(record["client"], int(record["client_port"]))] = record
    return http, flows, tunnelled


class _Backends:
    """Endpoint (ip:port, local) -> the backend service that owns it, per route."""

    def __init__(self, router: Router, plan: Plan) -> None:
        self.router = router
        self.local = {p.address: p.ip for p in plan.pods}
        self.pods = {(p.namespace, p.name): p for p in plan.pods}
        self.names = {p.name: p for p in plan.pods}

    def of(self, route: Route | None, endpoint: str | None, pod: str | None) -> str | None:
        if route is None:
            return None
        ip = None
        if endpoint:
            ip = self.local.get(endpoint.rsplit(":", 1)[0])
        elif pod and pod in self.names:
            ip = self.names[pod].ip
        if ip is None:
            return None
        clusters = list(route.split.clusters) if route.split is not None else [route.cluster]
        if route.gamma is not None:  # the backendRefs of GAMMA routes on the port
            tables = [route.gamma.producer, *route.gamma.consumers.values()]
            clusters += [
                b.cluster
                for table in tables
                if table is not None
                for rule in table.rules
                for b in rule.backends
                if b.cluster is not None
            ]
        for cluster in clusters:
            if any(e.ip == ip for e in cluster.endpoints):
                return cluster.service
        return route.cluster.service


def _flow_status(record: dict[str, Any] | None) -> int:
    if record is None:
        return 0
    reason = str(record.get("reason"))
    if reason in FLOW_REASONS:
        return FLOW_REASONS[reason]
    try:
        return STATUS.get(Reason(reason), 0)
    except ValueError:
        return 0


def _breakers(metrics: dict[str, str]) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = defaultdict(lambda: {"opens": 0, "endpointsOpenAtEnd": 0})
    for text in metrics.values():
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                service = sample.labels.get("service")
                if service is None:
                    continue
                if sample.name == "simmesh_proxy_circuit_opens_total":
                    out[service]["opens"] += int(sample.value)
                elif sample.name == "simmesh_proxy_circuit_state" and sample.value != 0:
                    out[service]["endpointsOpenAtEnd"] += 1
    return {k: v for k, v in sorted(out.items()) if v["opens"] or v["endpointsOpenAtEnd"]}


def _samples(metrics: dict[str, str], name: str) -> list[tuple[dict[str, str], float]]:
    out = []
    for text in metrics.values():
        for family in text_string_to_metric_families(text):
            out += [(s.labels, s.value) for s in family.samples if s.name == name]
    return out


def _costs(
    plan: Plan, run: dict[str, Any], metrics: dict[str, str], tunnelled: int, finished: int
) -> dict[str, Any]:
    """``proxyCpu`` and ``mtls``, in the shape of the simulator's (mTLS on only)."""
    if plan.mtls == "off":
        return {}
    out: dict[str, Any] = {}
    cpu = run.get("proxyCpu") or {}
    if cpu:
        total = sum(cpu.values())
        out["proxyCpu"] = {
            "seconds": round(total, 6),
            "perThousandRequests": round(total * 1000 / finished, 6) if finished else None,
            "nodes": {
                node: {
                    "cpuSeconds": round(seconds, 6),
                    "utilisation": round(seconds / plan.duration, 6),
                }
                for node, seconds in sorted(cpu.items())
            },
        }
    handshakes = _samples(metrics, "simmesh_proxy_tunnel_handshakes_total")
    failures = _samples(metrics, "simmesh_proxy_tunnel_handshake_failures_total")
    plaintext = _samples(metrics, "simmesh_proxy_plaintext_requests_total")
    out["mtls"] = {
        "mode": plan.mtls,
        "tunnelledAttempts": tunnelled,
        "handshakes": int(sum(v for labels, v in handshakes if labels.get("side") == "client")),
        "handshakeFailures": int(sum(v for _, v in failures)),
        "plaintext": {
            direction: int(
                sum(v for labels, v in plaintext if labels.get("direction") == direction)
            )
            for direction in ("sent", "received")
        },
    }
    return out


def real_results(scenario: Scenario, plan: Plan, workdir: Path) -> dict[str, Any]:
    run = json.loads((workdir / "run.json").read_text())
    measured = json.loads((workdir / "rows.json").read_text())
    tunnel_ports = {n.tunnel_port for n in plan.nodes} if plan.mtls != "off" else set()
    pod_nodes = {a: p.node for p in plan.pods for a in (p.ip, p.address)}
    http_logs, flow_logs, tunnelled = _access_logs(workdir, tunnel_ports, pod_nodes)
    router = Router(compile_config(scenario))
    backends = _Backends(router, plan)
    routes = []
    for t in scenario.traffic:
        routes.append(router.find_route(t.host, t.port, t.protocol))
    recorder = Recorder(scenario)
    duration = scenario.duration
    rows = sorted(measured["rows"], key=lambda r: (r[1], r[0]))
    for index, start, end, status, key, pod in rows:
        if end > duration or start < 0:
            continue  # in flight at the end (or before the start): not finished in the run
        stream = plan.streams[index]
        route = routes[index]
        if stream.protocol == "http":
            record = http_logs.get(key)
        else:
            record = flow_logs.get((stream.address, int(key)))
            if not status:
                status = _flow_status(record)
        service = record.get("service") if record else None
        if not service or service == "-":
            service = route.service if route is not None else None
        tries = int(record.get("tries", 1 if record.get("endpoint") else 0)) if record else 0
        if record is not None and stream.protocol != "http":
            tries = 1 if record.get("endpoint") or record.get("failure") else 0
        endpoint = record.get("endpoint") if record else None
        recorder.record(
            index,
            service,
            backends.of(route, endpoint, pod),
            int(status),
            float(start),
            float(end),
            tries,
        )
    started = sum(int(n) for n in measured["started"].values())
    versions = sorted({c.get("version") or "" for c in run.get("configs", {}).values()})
    facts = RunFacts(
        started=started - sum(1 for r in rows if r[1] < 0),
        config_version=",".join(versions),
        breakers=_breakers({p.name: p.read_text() for p in sorted(workdir.glob("metrics-*.txt"))}),
        events=run.get("events", []),
        config_errors=[],
    )
    results = recorder.results(facts)
    metrics = {p.name: p.read_text() for p in sorted(workdir.glob("metrics-*.txt"))}
    results |= _costs(plan, run, metrics, tunnelled, results["requests"]["finished"])
    results["run"] = {
        "isolation": plan.isolation,
        "status": run.get("status"),
        "realised": run.get("realised", []),
        "joined": sum(
            1 for r in rows if r[4] in http_logs or plan.streams[r[0]].protocol != "http"
        ),
        "notJoined": dict(
            sorted(
                Counter(
                    str(r[3])
                    for r in rows
                    if plan.streams[r[0]].protocol == "http" and r[4] not in http_logs
                ).items()
            )
        ),
    }
    return results
