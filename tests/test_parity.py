"""Parity: the real proxy and the simulator execute the same lifecycle.

The same manifests, the same seed and the same scripted upstream behaviour (per endpoint, a
sequence of statuses, resets and stalls) must give the identical trace of attempts (which
endpoint, what came of it) and the identical final answer, request by request, through the
real node proxy on loopback sockets and through the SimPy simulator. Run on several policies
(retries, timeouts, a circuit breaker, a split, a rate limit, least-request balancing) and on
hypothesis-generated scripts.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mesh.core.policies import Failure, Outcome
from sim.model import Simulation
from sim.scenario import load_scenario
from tests.proxy.harness import (
    LOCAL,
    build,
    endpoints,
    free_range,
    pod,
    running_proxy,
    service,
)
from tests.proxy.harness import settings as mesh_settings

SEED = 11
CLIENT = "127.0.0.5"
STALL = 1.0  # a stalled upstream answers after this long; per-try timeouts are shorter
Script = dict[str, list[str | int]]  # endpoint ip -> behaviours, in the order it is tried


class ScriptedUpstream(asyncio.Protocol):
    """One HTTP/1.1 request per connection, answered as the endpoint's script says next:
    a status, ``reset`` (abort) or ``stall`` (answer after STALL seconds)."""

    def __init__(self, script: list[str | int]) -> None:
        self.script = script
        self.transport: asyncio.Transport | None = None
        self.buffer = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if b"\r\n\r\n" not in self.buffer or self.transport is None:
            return
        what = self.script.pop(0) if self.script else 200
        if what == "reset":
            self.transport.abort()
        elif what == "stall":
            asyncio.get_running_loop().call_later(STALL, self._answer, 200)
        else:
            self._answer(int(what))

    def _answer(self, status: int) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(
                b"HTTP/1.1 %d X\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok" % status
            )
            self.transport.close()


class ScriptedSimulation(Simulation):
    """The simulator with each attempt's outcome taken from the same scripts."""

    scripts: Script

    def _attempt(self, ip: str, timeout: float | None, **where: Any) -> Outcome:
        queue = self.scripts.get(ip, [])
        what = queue.pop(0) if queue else 200
        if what == "reset":
            return Outcome(None, Failure.RESET, 0.001)
        if what == "stall":
            if timeout is not None and timeout < STALL:
                return Outcome(None, Failure.TIMEOUT, timeout)
            return Outcome(200, None, STALL)
        return Outcome(int(what), None, 0.001)


# -- one world, both drivers --------------------------------------------------------------------


@contextlib.asynccontextmanager
async def upstreams(script: Script) -> AsyncIterator[dict[str, int]]:
    loop = asyncio.get_running_loop()
    servers = {}
    for ip, behaviours in script.items():
        servers[ip] = await loop.create_server(lambda b=behaviours: ScriptedUpstream(b), ip, 0)
    try:
        yield {ip: s.sockets[0].getsockname()[1] for ip, s in servers.items()}
    finally:
        for server in servers.values():
            server.close()


def manifests(
    services: dict[str, list[str]], ports: dict[str, int], notes: dict[str, str], extra: list[Any]
) -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = [pod("client-0", CLIENT, "client")]
    for name, ips in services.items():
        docs.append(service(name, annotations=dict(notes)))
        pods = [f"{name}-{i}" for i in range(len(ips))]
        docs += endpoints(name, [(ip, ports[ip]) for ip in ips], pods=pods)
        docs += [pod(p, ip, name) for p, ip in zip(pods, ips, strict=True)]
    return docs + extra


async def real_trace(docs: list[dict[str, Any]], count: int) -> list[tuple[int, list[Any]]]:
    http = free_range(1)
    config = build(docs, mesh_settings(http=http))
    log = io.StringIO()
    async with running_proxy(config, access_log=True, access_stream=log) as proxy:
        proxy.forwarder.rng.seed(f"{SEED}:route")
        for _ in range(count):
            reader, writer = await asyncio.open_connection(LOCAL, http, local_addr=(CLIENT, 0))
            writer.write(b"GET /x HTTP/1.1\r\nHost: web.demo.mesh\r\nConnection: close\r\n\r\n")
            await asyncio.wait_for(reader.read(), 10)
            writer.close()
    records = [json.loads(line) for line in log.getvalue().splitlines()]
    return [(r["status"], r["attempts"]) for r in records if r.get("kind") == "http"]


def sim_trace(
    docs: list[dict[str, Any]], script: Script, count: int, tmp: Path, duration: float
) -> list[tuple[int, list[Any]]]:
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "manifests.yaml").write_text(yaml.safe_dump_all(docs))
    scenario = {
        "duration": duration,
        "seed": SEED,
        "nodes": ["node-a"],
        "proxyLatency": 0.0001,
        "traffic": [
            {"name": "t", "from": "demo/client", "to": "http://web.demo.mesh/x", "users": 1}
        ],
    }
    (tmp / "scenario.yaml").write_text(yaml.safe_dump(scenario))
    sim = ScriptedSimulation(load_scenario(tmp))
    sim.scripts = {ip: list(b) for ip, b in script.items()}
    sim.trace = []
    sim.run()
    return [(t["status"], t["attempts"]) for t in sim.trace[:count]]


def check(
    tmp: Path,
    services: dict[str, list[str]],
    script: Script,
    count: int,
    notes: dict[str, str] | None = None,
    extra: list[Any] | None = None,
    duration: float = 20.0,
) -> list[tuple[int, list[Any]]]:
    async def real() -> tuple[list[Any], list[dict[str, Any]]]:
        async with upstreams({ip: list(b) for ip, b in script.items()}) as ports:
            docs = manifests(services, ports, notes or {}, extra or [])
            return await real_trace(docs, count), docs

    proxied, docs = asyncio.run(real())
    simulated = sim_trace(docs, script, count, tmp, duration)
    assert proxied == simulated
    return proxied


IPS = ["127.0.0.11", "127.0.0.12", "127.0.0.13"]


def test_retries_resets_and_the_last_5xx(tmp_path: Path) -> None:
    script: Script = {
        IPS[0]: [503, "reset", 200, 500, 500],
        IPS[1]: ["reset", 503, 200, 502],
        IPS[2]: [200, 503, "reset", 504, 503],
    }
    trace = check(tmp_path, {"web": IPS}, script, 8, {"simmesh.io/retry-attempts": "2"})
    assert {status for status, _ in trace} >= {200, 502}
    assert max(len(attempts) for _, attempts in trace) == 3


def test_per_try_timeouts(tmp_path: Path) -> None:
    script: Script = {IPS[0]: ["stall", 200, "stall"], IPS[1]: ["stall", "stall", 200]}
    notes = {"simmesh.io/retry-attempts": "1", "simmesh.io/timeout": "150ms"}
    trace = check(tmp_path, {"web": IPS[:2]}, script, 4, notes)
    assert any(status == 504 for status, _ in trace)
    assert any(outcome == "timeout" for _, attempts in trace for _e, outcome in attempts)


def test_a_circuit_breaker_ejects_the_failing_endpoint(tmp_path: Path) -> None:
    script: Script = {IPS[0]: [500] * 10, IPS[1]: [200] * 10, IPS[2]: [200] * 10}
    notes = {
        "simmesh.io/retry-attempts": "1",
        "simmesh.io/circuit-breaker": "ConsecutiveFailures() >= 2",
        "simmesh.io/circuit-breaker-open-duration": "60s",
    }
    trace = check(tmp_path, {"web": IPS}, script, 10, notes)
    tried_first = [attempts[0][0].split(":")[0] for _, attempts in trace]
    assert tried_first[-4:].count(IPS[0]) == 0  # ejected after two failures


def test_a_split_sends_its_shares_and_retries_within_the_backend(tmp_path: Path) -> None:
    split = {
        "apiVersion": "split.smi-spec.io/v1alpha4",
        "kind": "TrafficSplit",
        "metadata": {"name": "rollout", "namespace": "demo"},
        "spec": {
            "service": "web",
            "backends": [{"service": "web-v1", "weight": 3}, {"service": "web-v2", "weight": 1}],
        },
    }
    script: Script = {IPS[0]: [200], IPS[1]: [503, 200, "reset"], IPS[2]: [200, 200, 200]}
    services = {"web": [IPS[0]], "web-v1": [IPS[1]], "web-v2": [IPS[2]]}
    trace = check(tmp_path, services, script, 8, {"simmesh.io/retry-attempts": "1"}, [split])
    firsts = [attempts[0][0].split(":")[0] for _, attempts in trace]
    assert firsts.count(IPS[2]) == 2 and IPS[0] not in firsts


def test_an_httproute_weights_its_backends_with_the_rules_timeouts(tmp_path: Path) -> None:
    """GAMMA: an HTTPRoute on web (weights 3:1, the rule's per-try timeout of 150ms, the
    Service's retry annotation) decides alike in the proxy and the simulator."""
    route = {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": "rollout", "namespace": "demo"},
        "spec": {
            "parentRefs": [{"group": "", "kind": "Service", "name": "web", "port": 80}],
            "rules": [
                {
                    "matches": [{"path": {"type": "PathPrefix", "value": "/x"}}],
                    "backendRefs": [
                        {"name": "web-v1", "port": 80, "weight": 3},
                        {"name": "web-v2", "port": 80, "weight": 1},
                    ],
                    "timeouts": {"request": "2s", "backendRequest": "150ms"},
                }
            ],
        },
    }
    script: Script = {IPS[0]: [200], IPS[1]: ["stall", 200, 503, 200], IPS[2]: [200, "reset"]}
    services = {"web": [IPS[0]], "web-v1": [IPS[1]], "web-v2": [IPS[2]]}
    trace = check(tmp_path, services, script, 8, {"simmesh.io/retry-attempts": "1"}, [route])
    firsts = [attempts[0][0].split(":")[0] for _, attempts in trace]
    assert firsts.count(IPS[2]) == 2 and IPS[0] not in firsts
    assert any(outcome == "timeout" for _, attempts in trace for _e, outcome in attempts)


def test_a_rate_limit_answers_429_without_an_attempt(tmp_path: Path) -> None:
    notes = {"simmesh.io/ratelimit-average": "1", "simmesh.io/ratelimit-burst": "3"}
    trace = check(tmp_path, {"web": IPS[:1]}, {IPS[0]: []}, 6, notes, duration=0.5)
    assert [status for status, _ in trace] == [200, 200, 200, 429, 429, 429]
    assert [len(a) for _, a in trace] == [1, 1, 1, 0, 0, 0]


def test_least_request_balancing_with_the_same_seed(tmp_path: Path) -> None:
    script: Script = {ip: [200, 503, 200, "reset"] for ip in IPS}
    notes = {"simmesh.io/load-balancer": "least-request", "simmesh.io/retry-attempts": "1"}
    check(tmp_path, {"web": IPS}, script, 8, notes)


behaviour = st.sampled_from([200, 200, 404, 500, 503, "reset", "stall"])


@given(
    script=st.fixed_dictionaries({ip: st.lists(behaviour, max_size=6) for ip in IPS[:2]}),
    attempts=st.integers(0, 3),
)
@settings(
    max_examples=8,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
def test_generated_scripts(tmp_path: Path, script: Script, attempts: int) -> None:
    notes = {"simmesh.io/retry-attempts": str(attempts), "simmesh.io/timeout": "150ms"}
    check(Path(tempfile.mkdtemp(dir=tmp_path)), {"web": IPS[:2]}, script, 5, notes)
