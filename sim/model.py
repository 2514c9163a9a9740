"""The SimPy driver of mesh.core.

Every request of a scenario asks the core's :class:`~mesh.core.routing.Engine` of its node's
proxy for a decision (split, access, rate limit, circuit breakers, load balancing), then
performs the core's :class:`~mesh.core.lifecycle.Lifecycle` with simulated pods: each ``Send``
is an attempt whose outcome comes from the pod's behaviour after simulated time, each ``Wait``
a simulated backoff, and the lifecycle decides retries, timeouts and the final answer exactly
as it does for the real proxy (tests/test_parity.py). Requests are event callbacks, not SimPy
processes (a process per request would double the events).

Endpoints are pods: each has ``capacity`` concurrent slots (FIFO; an attempt takes the slot that
frees first, so queueing delay grows with load) and a latency distribution and error rate that
faults on the timeline can change. A timed-out attempt still occupies its slot until the pod
finishes it, which is what makes retry storms visible.
"""

from __future__ import annotations

import heapq
import random
import time
from bisect import bisect_right
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from itertools import accumulate
from typing import Any

import simpy

from mesh.core.config import MeshConfig, build_config
from mesh.core.lifecycle import (
    Answer,
    Command,
    Deliver,
    Delivered,
    Failed,
    Lifecycle,
    Responded,
    Send,
    Wait,
)
from mesh.core.parse import parse_objects
from mesh.core.policies import Failure, Outcome
from mesh.core.request import Request
from mesh.core.routing import Decision, Engine, Route, Router
from mesh.core.topology import build_topology
from sim.metrics import Recorder, RunFacts
from sim.placement import pod_owners
from sim.scenario import Event, RequestKind, Scenario, Traffic, Workload, with_event_objects

Progress = Callable[[float, int], None]


@dataclass
class Behaviour:
    """A workload's current behaviour, changed by faults."""

    workload: Workload
    factor: float = 1.0
    add: float = 0.0
    error_rate: float = 0.0


@dataclass
class Pod:
    ip: str
    node: str | None
    behaviour: Behaviour
    slots: list[float] | None  # min-heap of the times each slot frees; None: unbounded
    down: bool = False
    fault: Behaviour | None = None  # a fault on this replica alone overrides its workload


@dataclass
class _Stream:
    traffic: Traffic
    index: int
    cumulative: list[float] = field(default_factory=list)
    route: Route | None = None
    requests: dict[RequestKind, Request] = field(default_factory=dict)
    generation: int = -1


class Simulation:
    def __init__(self, scenario: Scenario) -> None:
        self.scenario = scenario
        self.env = simpy.Environment()
        seed = scenario.seed
        self.rng_arrivals = random.Random(f"{seed}:arrivals")
        self.rng_service = random.Random(f"{seed}:service")
        self.rng_route = random.Random(f"{seed}:route")
        self.docs = scenario.docs
        self.generation = 0
        self.config = self._compile(None)
        self.router = Router(self.config)
        self.engines = {node: Engine(self.router) for node in scenario.nodes}
        self.behaviours = {
            k: Behaviour(w, error_rate=w.error_rate) for k, w in scenario.workloads.items()
        }
        self.pods: dict[str, Pod] = {}
        self._place_pods()
        self.recorder = Recorder(scenario)
        self.events_applied: list[dict[str, Any]] = []
        self.config_errors = list(self.config.data["errors"])
        self.started = 0
        # Every request's attempts and answer, when asked for (debugging, parity tests).
        self.trace: list[dict[str, Any]] | None = None

    # -- config -----------------------------------------------------------------------------

    def _compile(self, previous: MeshConfig | None) -> MeshConfig:
        settings = self.scenario.settings
        state = parse_objects(self.docs)
        assignments = previous.port_assignments() if previous is not None else None
        return build_config(build_topology(state, settings), settings, assignments)

    def _reload(self) -> None:
        self.config = self._compile(self.config)
        self.router = Router(self.config)
        self.engines = {n: Engine(self.router, e.state) for n, e in self.engines.items()}
        self.generation += 1
        self._place_pods()
        for error in self.config.data["errors"]:
            if error not in self.config_errors:
                self.config_errors.append(error)

    def _place_pods(self) -> None:
        """Create a pod for every endpoint address not seen before (sim.placement)."""
        for ip, (service, node) in pod_owners(self.router, self.behaviours).items():
            if ip in self.pods:
                continue
            behaviour = self.behaviours[service]
            capacity = behaviour.workload.capacity
            slots = [0.0] * capacity if capacity is not None else None
            self.pods[ip] = Pod(ip, node, behaviour, slots)

    # -- traffic ----------------------------------------------------------------------------

    def _resolve(self, stream: _Stream) -> Route | None:
        if stream.generation != self.generation:
            t = stream.traffic
            stream.route = self.router.find_route(t.host, t.port, t.protocol)
            stream.generation = self.generation
        return stream.route

    def _open_loop(self, stream: _Stream) -> Generator[simpy.Event, Any, None]:
        env = self.env
        traffic = stream.traffic
        rate = traffic.rate
        expovariate = self.rng_arrivals.expovariate
        if traffic.start > 0:
            yield env.timeout(traffic.start)
        while True:
            yield env.timeout(expovariate(rate))
            if env.now >= traffic.stop:
                return
            self._request(stream, None)

    def _closed_loop(self, stream: _Stream) -> Generator[simpy.Event, Any, None]:
        """One user of a closed-loop stream (``users`` of them run side by side): a request,
        its answer, an exponential think time, the next request."""
        env = self.env
        traffic = stream.traffic
        if traffic.start > 0:
            yield env.timeout(traffic.start)
        while env.now < traffic.stop:
            done = env.event()
            self._request(stream, done)
            yield done
            if traffic.think > 0:
                yield env.timeout(self.rng_arrivals.expovariate(1.0 / traffic.think))

    def _request(self, stream: _Stream, done: simpy.Event | None) -> None:
        """Start one request: decide now, then wait for its attempts with event callbacks
        (no SimPy process per request: that alone would double the events per request)."""
        self.started += 1
        traffic = stream.traffic
        mix = traffic.mix
        kind = (
            mix[0]
            if len(mix) == 1
            else mix[
                bisect_right(stream.cumulative, self.rng_arrivals.random() * stream.cumulative[-1])
            ]
        )
        flight = _Flight(self, stream, kind, done)
        route = self._resolve(stream)
        if route is None or route.listener is None:
            flight.answer(404)
            return
        flight.route = route
        engine = self.engines[traffic.node]
        if traffic.protocol == "http":
            decision = engine.decide_http(
                listener=route.listener,
                request=stream.requests[kind],
                source=traffic.source,
                now=flight.start,
                rng=self.rng_route,
            )
        else:
            decision = engine.decide_flow(
                listener=route.listener, source=traffic.source, now=flight.start, rng=self.rng_route
            )
        flight.begin(engine, decision)

    def _attempt(self, ip: str, timeout: float | None) -> Outcome:
        """One attempt to the pod at ``ip``: its outcome, whose latency is how long the caller
        waits for it. The pod's slot stays taken until it finishes, even past a timeout."""
        now = self.env.now
        pod = self.pods.get(ip)
        if pod is None or pod.down:
            return Outcome(None, Failure.CONNECT, self.scenario.connect_failure_latency)
        behaviour = pod.fault or pod.behaviour
        rng = self.rng_service
        service = behaviour.workload.latency(rng) * behaviour.factor + behaviour.add
        slots = pod.slots
        if slots is not None:
            begin = slots[0] if slots[0] > now else now
            finish = begin + service
            heapq.heapreplace(slots, finish)
        else:
            finish = now + service
        delay = finish - now + self.scenario.proxy_latency
        failed = behaviour.error_rate > 0 and rng.random() < behaviour.error_rate
        if timeout is not None and delay > timeout:
            return Outcome(None, Failure.TIMEOUT, timeout)
        return Outcome(500 if failed else 200, None, delay)

    # -- timeline ---------------------------------------------------------------------------

    def _timeline(self, event: Event) -> Generator[simpy.Event, Any, None]:
        env = self.env
        yield env.timeout(event.at)
        self._apply(event, undo=False)
        until = event.params.get("until")
        if until is not None and event.action in (
            "endpoint-down",
            "node-down",
            "latency-spike",
            "error-burst",
        ):
            yield env.timeout(float(until) - event.at)
            self._apply(event, undo=True)

    def _apply(self, event: Event, *, undo: bool) -> None:
        params = event.params
        action = event.action
        self.events_applied.append(
            {"at": round(self.env.now, 6), "action": action, "undo": undo, **_plain(params)}
        )
        if action in ("endpoint-down", "endpoint-up"):
            down = (action == "endpoint-down") != undo
            for pod in self._pods_of(params["service"], params.get("replica")):
                pod.down = down
        elif action in ("node-down", "node-up"):
            down = (action == "node-down") != undo
            for pod in self.pods.values():
                if pod.node == params["node"]:
                    pod.down = down
        elif action in ("latency-spike", "error-burst"):
            for behaviour in self._behaviours_of(params["service"], params.get("replica")):
                if action == "latency-spike":
                    behaviour.factor = 1.0 if undo else float(params.get("factor", 1.0))
                    behaviour.add = 0.0 if undo else float(params.get("add", 0.0))
                else:
                    rate = behaviour.workload.error_rate
                    behaviour.error_rate = rate if undo else float(params["errorRate"])
        else:
            self.docs = with_event_objects(self.docs, event)
            self._reload()

    def _behaviours_of(self, service: str, replica: Any) -> list[Behaviour]:
        """The workload's behaviour, or one replica's own (created on its first fault)."""
        if replica is None:
            return [self.behaviours[service]]
        out = []
        for pod in self._pods_of(service, replica):
            if pod.fault is None:
                base = pod.behaviour
                pod.fault = Behaviour(base.workload, base.factor, base.add, base.error_rate)
            out.append(pod.fault)
        return out

    def _pods_of(self, service: str, replica: Any) -> list[Pod]:
        pods = sorted(
            (p for p in self.pods.values() if p.behaviour.workload.service == service),
            key=lambda p: tuple(int(x) for x in p.ip.split(".")),
        )
        if replica is None:
            return pods
        return [pods[int(replica)]] if int(replica) < len(pods) else []

    # -- run ----------------------------------------------------------------------------------

    def run(self, progress: Progress | None = None) -> dict[str, Any]:
        env = self.env
        for index, traffic in enumerate(self.scenario.traffic):
            stream = _Stream(traffic, index, list(accumulate(k.weight for k in traffic.mix)))
            authority = f"{traffic.host}:{traffic.port}"
            stream.requests = {k: k.request(authority) for k in traffic.mix}
            if traffic.rate > 0:
                env.process(self._open_loop(stream))
            for _ in range(traffic.users):
                env.process(self._closed_loop(stream))
        for event in self.scenario.timeline:
            env.process(self._timeline(event))
        duration = self.scenario.duration
        steps = 100
        for step in range(1, steps + 1):
            env.run(until=duration * step / steps)
            if progress is not None:
                progress(step / steps, self.recorder.count)
        return self.recorder.results(self.facts())

    def facts(self) -> RunFacts:
        breakers: dict[str, dict[str, int]] = {}
        for engine in self.engines.values():
            for (service, _), breaker in sorted(engine.state.breakers.items()):
                entry = breakers.setdefault(service, {"opens": 0, "endpointsOpenAtEnd": 0})
                entry["opens"] += breaker.opens
                entry["endpointsOpenAtEnd"] += int(breaker.state.value != "closed")
        return RunFacts(
            started=self.started,
            config_version=self.config.version,
            breakers=dict(sorted(breakers.items())),
            events=self.events_applied,
            config_errors=self.config_errors,
        )


class _Flight:
    """One request in flight: the core's lifecycle performed with simulated pods and time, and
    at the end its one record. Every decision (attempts, retries, backoff, timeouts, the final
    answer) is the lifecycle's (mesh.core.lifecycle); this class only runs its commands."""

    __slots__ = ("decision", "done", "kind", "life", "route", "sim", "start", "status", "stream")

    def __init__(
        self, sim: Simulation, stream: _Stream, kind: RequestKind, done: simpy.Event | None
    ) -> None:
        self.sim = sim
        self.stream = stream
        self.kind = kind
        self.done = done
        self.start = sim.env.now
        self.route: Route | None = None
        self.decision: Decision | None = None
        self.life: Lifecycle | None = None
        self.status = 0

    def answer(self, status: int) -> None:
        """The proxy answers itself (404 before any decision) after its own hop."""
        event = self.sim.env.timeout(self.sim.scenario.proxy_latency)
        event.callbacks.append(lambda _: self.record(status))

    def begin(self, engine: Engine, decision: Decision) -> None:
        self.decision = decision
        life = self.life = Lifecycle(
            engine,
            decision,
            method=self.kind.method,
            replayable=True,
            rng=self.sim.rng_route,
            now=self.start,
        )
        self.perform(life.start())

    def perform(self, command: Command | None) -> None:
        env = self.sim.env
        if isinstance(command, Send):
            outcome = self.sim._attempt(command.endpoint.ip, command.timeout)
            env.timeout(outcome.latency).callbacks.append(lambda _: self.attempted(outcome))
        elif isinstance(command, Wait):
            env.timeout(command.delay).callbacks.append(self.resumed)
        elif isinstance(command, Deliver):
            self.status = command.status or 200
            self.perform(self._life.handle(Delivered(), env.now))
        elif isinstance(command, Answer):
            if self._life.tries:
                self.record(command.status)  # the last try's outcome came through the proxy
            else:
                self.answer(command.status)
        else:
            self.record(self.status)

    @property
    def _life(self) -> Lifecycle:
        assert self.life is not None
        return self.life

    def attempted(self, outcome: Outcome) -> None:
        now = self.sim.env.now
        if outcome.failure is not None:
            event: Responded | Failed = Failed(outcome.failure)
        else:
            event = Responded(outcome.status)
        self.perform(self._life.handle(event, now))

    def resumed(self, _: simpy.Event) -> None:
        self.perform(self._life.resume(self.sim.env.now))

    def record(self, status: int) -> None:
        route, decision = self.route, self.decision
        cluster = decision.cluster if decision is not None else None
        self.sim.recorder.record(
            self.stream.index,
            route.service if route is not None else None,
            cluster.service if cluster is not None else None,
            status,
            self.start,
            self.sim.env.now,
            self.life.tries if self.life is not None else 0,
        )
        trace = self.sim.trace
        if trace is not None:
            attempts = self.life.attempts if self.life is not None else []
            trace.append(
                {
                    "at": self.start,
                    "status": status,
                    "attempts": [
                        [e.key, o.failure.value if o.failure is not None else o.status]
                        for e, o in attempts
                    ],
                }
            )
        if self.done is not None:
            self.done.succeed()


def _plain(params: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in params.items() if k != "objects"}


def run_scenario(scenario: Scenario, progress: Progress | None = None) -> dict[str, Any]:
    return Simulation(scenario).run(progress)


class ProgressBar:
    """A terminal progress bar that shows itself only once a run takes more than a moment."""

    def __init__(self, label: str, stream: Any, *, after: float = 2.0) -> None:
        self.label = label
        self.stream = stream
        self.after = after
        self.start = time.monotonic()
        self.shown = False
        self.last = -1

    def __call__(self, fraction: float, requests: int) -> None:
        elapsed = time.monotonic() - self.start
        if elapsed < self.after and fraction < 1.0:
            return
        if not self.shown and fraction >= 1.0:
            return
        percent = int(fraction * 100)
        tty = self.stream.isatty()
        if not tty and percent // 10 == self.last // 10 and fraction < 1.0:
            return
        self.shown = True
        self.last = percent
        bar = "#" * (percent // 4) + "-" * (25 - percent // 4)
        rate = requests / elapsed if elapsed > 0 else 0.0
        text = (
            f"{self.label} [{bar}] {percent:3d}%  {requests:,} requests  "
            f"{rate:,.0f} req/s  {elapsed:.1f}s"
        )
        self.stream.write(("\r" + text) if tty else text + "\n")
        if tty and fraction >= 1.0:
            self.stream.write("\n")
        self.stream.flush()
