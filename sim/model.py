"""The SimPy driver of mesh.core.

Every request of a scenario asks the core's :class:`~mesh.core.routing.Engine` of its node's
proxy for a decision (GAMMA routes and their filters, split, access, rate limit, circuit
breakers, load balancing; a redirect or a 404 is the proxy's own answer), then
performs the core's :class:`~mesh.core.lifecycle.Lifecycle` with simulated pods: each ``Send``
is an attempt whose outcome comes from the pod's behaviour after simulated time, each ``Wait``
a simulated backoff, and the lifecycle decides retries, timeouts and the final answer exactly
as it does for the real proxy (tests/test_parity.py). Requests are event callbacks, not SimPy
processes (a process per request would double the events). A RequestMirror's copies load
their pods as the first attempt leaves; their outcomes are discarded.

Endpoints are pods: each has ``capacity`` concurrent slots (FIFO; an attempt takes the slot that
frees first, so queueing delay grows with load) and a latency distribution and error rate that
faults on the timeline can change; with ``contention`` a request's service time grows with the
requests already in service on its pod. A timed-out attempt still occupies its slot until the
pod finishes it, which is what makes retry storms visible.

Around the pods, the scenario's profile (sim/profile.py) prices the machinery: the client's,
each node proxy's and each pod app's event loop, and the network between nodes
(sim/resources.py); policy changes reach the proxies after the profile's config delay. Pods and
nodes that go down refuse connects or leave them unanswered, and fail the attempts in flight
on them (sim/outages.py).

With mTLS on (the scenario's settings), an attempt to a pod of another node goes through that
node's proxy over a pooled tunnel connection, as the core's ``Router.tunnel_peer`` says (the
same call the proxy makes): one pool per (source node, calling identity, destination node,
destination identity), a connection carrying one request at a time, reused last freed first
while idle for less than the proxy's 15 s, closed when its attempt times out; a new one pays a
handshake (sim/resources.py prices the hops and the TLS work). An HTTP attempt to an ``http``
service whose grant admits the caller whatever the request (``Router.whole_access``, as the
proxy asks) goes on a pipe instead (mesh/proxy/pipe.py): pooled per pod, and the destination
proxy relays it (the profile's ``tls.relay``) instead of handling it as a request. Same-node
attempts, and every attempt with mTLS off, take one hop as before. A connect failure to a pod
that is down is priced as without mTLS.
"""

from __future__ import annotations

import heapq
import math
import random
import time
from bisect import bisect_right
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from itertools import accumulate
from typing import Any, cast

import msgspec
import simpy
from mypy_extensions import mypyc_attr

from mesh.core.config import MeshConfig, build_config
from mesh.core.lifecycle import (
    Answer,
    Command,
    Deliver,
    Lifecycle,
    Send,
    Wait,
)
from mesh.core.parse import parse_objects
from mesh.core.policies import Failure, Outcome
from mesh.core.request import Request
from mesh.core.routing import Decision, Endpoint, Engine, MirrorShot, Reason, Route, Router
from mesh.core.topology import build_topology
from sim.metrics import Recorder, RunFacts
from sim.outages import InFlight, Outage, connect_failure_delay, cut
from sim.placement import pod_owners
from sim.resources import Resources
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
    down: Outage | None = None
    fault: Behaviour | None = None  # a fault on this replica alone overrides its workload
    in_service: list[float] = field(default_factory=list)  # finish times (contention, no slots)
    flights: list[InFlight] = field(default_factory=list)  # attempts sent (outages only)
    hung: list[InFlight] = field(default_factory=list)  # unanswered while it is unreachable
    prune_at: int = 64

    def fresh(self) -> None:
        """A restarted pod: nothing in service, nothing queued."""
        if self.slots is not None:
            self.slots = [0.0] * len(self.slots)
        self.in_service = []
        self.flights = []


@dataclass
class _Stream:
    traffic: Traffic
    index: int
    cumulative: list[float] = field(default_factory=list)
    route: Route | None = None
    requests: list[Request] = field(default_factory=list)  # the canonical form of each mix item
    generation: int = -1


@mypyc_attr(allow_interpreted_subclasses=True)  # tests/test_parity.py scripts its attempts
class Simulation:
    def __init__(self, scenario: Scenario, *, cpu: bool = False) -> None:
        self.scenario = scenario
        self.cpu = cpu  # results carry the proxies' CPU even with mTLS off
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
        self.resources = Resources(scenario.profile, scenario.nodes, seed=scenario.seed)
        self.timer = scenario.profile.app_timer
        self.proxy_latency = scenario.proxy_latency
        self.hop = self.resources.network.uniform
        self.response_bytes = scenario.profile.response_bytes
        # Attempts in flight are tracked per pod only when something can take a pod down.
        self.outages = any(e.action in _OUTAGES for e in scenario.timeline)
        self.recorder = Recorder(scenario)
        self.events_applied: list[dict[str, Any]] = []
        self.config_errors = [msgspec.to_builtins(e) for e in self.config.errors]
        self.started = 0
        self.mtls = self.router.mtls != "off"
        self.pools: dict[tuple[str | None, ...], list[float]] = {}
        self.handshakes = 0  # new tunnel connections
        self.tunnelled = 0  # attempts through a tunnel
        self.piped = 0  # of those, on a spliced pipe (mesh/proxy/pipe.py)
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
        self.mtls = self.router.mtls != "off"
        self.engines = {n: Engine(self.router, e.state) for n, e in self.engines.items()}
        self.generation += 1
        self._place_pods()
        for error in msgspec.to_builtins(self.config.errors):
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
        index = (
            0
            if len(mix) == 1
            else bisect_right(stream.cumulative, self.rng_arrivals.random() * stream.cumulative[-1])
        )
        kind = mix[index]
        now = self.env.now
        route = stream.route if stream.generation == self.generation else self._resolve(stream)
        engine = self.engines[traffic.node]
        if route is None or route.listener is None:
            decision = Decision(Reason.UNKNOWN_HOST, f"no meshed service answers to {traffic.host}")
        elif traffic.protocol == "http":
            decision = engine.decide_http(
                listener=route.listener,
                request=stream.requests[index],
                source=traffic.source,
                now=now,
                rng=self.rng_route,
            )
        else:
            decision = engine.decide_flow(
                listener=route.listener, source=traffic.source, now=now, rng=self.rng_route
            )
        ready = self.resources.arrive(traffic.node, now, attempt=decision.endpoint is not None)
        _Flight(self, stream, kind, done, engine, decision, now, ready).begin()

    def _attempt(
        self,
        ip: str,
        timeout: float | None,
        *,
        sent: float,
        node: str,
        flight: _Flight | None,
        endpoint: Endpoint | None = None,
    ) -> Outcome:
        """One attempt to the pod at ``ip``, leaving the proxy of ``node`` at ``sent``: its
        outcome, whose latency is how long from now until the proxy has it. The pod's slot
        stays taken until it finishes, even past a timeout."""
        now = self.env.now
        pod = self.pods.get(ip)
        network = self.resources.network
        uniform = self.hop
        if pod is None or pod.down is not None:
            hop = network.delay(node, pod.node if pod is not None else None)
            fixed = self.scenario.connect_failure_latency
            delay = connect_failure_delay(
                pod.down if pod is not None and pod.down is not None else Outage.REFUSED,
                round_trip=2 * hop if fixed is None else fixed,
                connect_timeout=self.scenario.connect_timeout,
            )
            return Outcome(None, Failure.CONNECT, sent - now + delay)
        behaviour = pod.fault or pod.behaviour
        rng = self.rng_service
        resources = self.resources
        peer = pod.node
        pipe = False
        if self.mtls and peer is not None and self.router.tunnel_peer(peer, node) is not None:
            source = flight.stream.traffic.source if flight is not None else None
            key: tuple[str | None, ...] = (node, source, peer, self.router.identities.get(ip))
            if flight is not None and endpoint is not None and source is not None:
                cluster = flight.decision.cluster
                pipe = (
                    flight.stream.traffic.protocol == "http"
                    and cluster is not None
                    and cluster.scheme == "http"
                    and self.router.whole_access(cluster, endpoint, source)
                )
                if pipe:  # a pipe to this pod (mesh.proxy.pipe): pooled per pod
                    assert cluster is not None
                    key = (node, source, peer, cluster.key, ip)
            pool = self.pools.setdefault(key, [])
            conn = _reuse(pool, sent)
            handshake = conn < 0
            if handshake:
                self.handshakes += 1
                conn = len(pool)
                pool.append(math.inf)  # busy until the answer is back
            else:
                pool[conn] = math.inf
            self.tunnelled += 1
            if pipe:
                self.piped += 1
            hop = network.local  # from the destination's proxy to its pod
            at = resources.tunnel_in(node, peer, sent, handshake=handshake, pipe=pipe)
            arrived = resources.serve(ip, at + hop)
        else:
            pool = None
            conn = -1
            hop = uniform if uniform is not None else network.delay(node, pod.node)
            arrived = resources.serve(ip, sent + hop)
        sample = behaviour.workload.latency(rng) * behaviour.factor
        contention = behaviour.workload.contention
        slots = pod.slots
        if slots is not None:
            begin = slots[0] if slots[0] > arrived else arrived
            if contention:
                others = sum(1 for t in slots if t > begin)  # slots[0] is the one it takes
                sample *= 1 + contention * others
        else:
            begin = arrived
            if contention:
                busy = pod.in_service
                while busy and busy[0] <= begin:
                    heapq.heappop(busy)
                sample *= 1 + contention * len(busy)
        service = sample + behaviour.add
        if self.timer:  # the app's sleep ends on its event loop's next timer tick
            service = math.ceil(service / self.timer - 1e-9) * self.timer
        finish = begin + service
        # The app's loop must wake to run the request's task when its sleep ends: the slot
        # is freed then (the task leaves its capacity gate), and it writes the answer (not
        # queued on its loop: that visit lies in the future, and Lindley's recursion takes
        # work in the order it arrives). On a busy machine the wake-up holds the slot longer.
        wakes = resources.wakes
        wake = wakes[int(resources.random() * 8192)] if wakes else 0.0
        finish += wake
        if slots is not None:
            heapq.heapreplace(slots, finish)
        elif contention:
            heapq.heappush(pod.in_service, finish)
        back = finish + resources.half_app + hop + self.proxy_latency
        if pool is not None:  # the destination's proxy, the tunnel back, the source's
            assert peer is not None
            back += (
                resources.tunnel_out(node, peer, self.response_bytes, pipe=pipe)
                + network.delay(peer, node)
                + self.proxy_latency
            )
            timed_out = timeout is not None and back - sent > timeout
            pool[conn] = -math.inf if timed_out else back  # a timed-out one is closed
        failed = behaviour.error_rate > 0 and rng.random() < behaviour.error_rate
        if self.outages and flight is not None:
            self._in_flight(pod, InFlight(flight, flight.epoch, sent, back, timeout, node))
        if timeout is not None and back - sent > timeout:
            return Outcome(None, Failure.TIMEOUT, sent + timeout - now)
        return Outcome(500 if failed else 200, None, back - now)

    def _mirror(self, shots: tuple[MirrorShot, ...], *, sent: float, node: str) -> None:
        """RequestMirror copies: they load their pods like any request (a slot, service
        time); their outcomes are discarded, as the proxy discards their answers."""
        for shot in shots:
            self._attempt(shot.endpoint.ip, None, sent=sent, node=node, flight=None)

    def _in_flight(self, pod: Pod, attempt: InFlight) -> None:
        flights = pod.flights
        flights.append(attempt)
        if len(flights) > pod.prune_at:
            now = self.env.now
            pod.flights = flights = [f for f in flights if f.back > now or f.timeout is None]
            pod.prune_at = max(64, 2 * len(flights))

    def _bring_up(self, pod: Pod) -> None:
        """The pod is back (a new process): connections that hung on it are reset."""
        pod.down = None
        for attempt in pod.hung:
            flight = attempt.owner
            if flight.epoch != attempt.epoch + 1:
                continue
            hop = self.resources.network.delay(pod.node, attempt.node)
            flight.expect(Outcome(None, Failure.RESET, hop))
        pod.hung = []

    def _take_down(self, pod: Pod, outage: Outage) -> None:
        """The pod goes down now: the attempts in flight on it fail (sim/outages.py)."""
        now = self.env.now
        pod.down = outage
        hop = self.resources.network.delay
        for item in cut(pod.flights, at=now, outage=outage, hop=0.0):
            flight, attempt = item.attempt.owner, item.attempt
            if flight.epoch != attempt.epoch:
                continue  # that attempt is over already
            flight.epoch += 1
            if item.at is None:  # no answer until the node is back, which resets it
                pod.hung.append(attempt)
                continue
            at = item.at + (hop(pod.node, attempt.node) if outage is Outage.REFUSED else 0.0)
            outcome = Outcome(None, item.failure, at - now)
            flight.expect(outcome)
        pod.fresh()
        self.resources.apps.pop(pod.ip, None)

    # -- timeline ---------------------------------------------------------------------------

    def _timeline(self, event: Event) -> Generator[simpy.Event, Any, None]:
        env = self.env
        yield env.timeout(event.at)
        if event.action in _POLICY:  # the proxies apply it once the new config reaches them
            self._log(event, undo=False)
            yield env.timeout(self.scenario.profile.config_delay)
            self._apply(event, undo=False)
            return
        self._log(event, undo=False)
        self._apply(event, undo=False)
        until = event.params.get("until")
        if until is not None and event.action in (
            "endpoint-down",
            "node-down",
            "latency-spike",
            "error-burst",
        ):
            yield env.timeout(float(until) - event.at)
            self._log(event, undo=True)
            self._apply(event, undo=True)

    def _log(self, event: Event, *, undo: bool) -> None:
        self.events_applied.append(
            {"at": round(self.env.now, 6), "action": event.action, "undo": undo}
            | _plain(event.params)
        )

    def _apply(self, event: Event, *, undo: bool) -> None:
        params = event.params
        action = event.action
        if action in _OUTAGES:
            down = _OUTAGES[action] != undo
            if action.startswith("node"):
                pods = [p for p in self.pods.values() if p.node == params["node"]]
            else:
                pods = self._pods_of(params["service"], params.get("replica"))
            outage = Outage(params.get("failure", "refused"))
            for pod in pods:
                if down and pod.down is None:
                    self._take_down(pod, outage)
                elif not down and pod.down is not None:
                    self._bring_up(pod)
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
            stream.requests = [k.request(authority) for k in traffic.mix]
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
        results = self.recorder.results(self.facts())
        if self.mtls or self.cpu:
            results |= self.costs(results["requests"]["finished"])
        return results

    def costs(self, finished: int) -> dict[str, Any]:
        """What the proxies spent (CPU seconds per node, per 1,000 requests) and, with mTLS on,
        the tunnels' handshakes; in results.json only when mTLS is on or ``cpu`` asks for it
        (so a run with mTLS off writes what it always wrote)."""
        duration = self.scenario.duration
        nodes = {
            node: {"cpuSeconds": _r6(loop.busy), "utilisation": _r6(loop.busy / duration)}
            for node, loop in sorted(self.resources.proxies.items())
        }
        total = sum(loop.busy for loop in self.resources.proxies.values())
        out: dict[str, Any] = {
            "proxyCpu": {
                "seconds": _r6(total),
                "perThousandRequests": _r6(total * 1000 / finished) if finished else None,
                "nodes": nodes,
            }
        }
        if self.mtls:
            out["mtls"] = {
                "mode": self.router.mtls,
                "tunnelledAttempts": self.tunnelled,
                "pipedAttempts": self.piped,
                "handshakes": self.handshakes,
                "connectionsAtEnd": sum(len(p) for p in self.pools.values()),
            }
        return out

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


TUNNEL_IDLE = 15.0  # seconds an idle pooled tunnel connection is kept (mesh.proxy.upstream_raw)


def _reuse(pool: list[float], at: float) -> int:
    """The pooled connection an attempt at ``at`` takes: the one freed last among those idle
    then (-1: none, a new connection). Connections idle too long, or closed, are dropped."""
    pool[:] = [free for free in pool if free >= at - TUNNEL_IDLE]
    best = -1
    for index, free in enumerate(pool):
        if free <= at and (best < 0 or free > pool[best]):
            best = index
    return best


_OUTAGES = {"endpoint-down": True, "endpoint-up": False, "node-down": True, "node-up": False}
_POLICY = {"apply", "delete", "set-split", "set-weights", "set-policy"}


class _Flight(Lifecycle):
    """One request in flight: the core's lifecycle (mesh.core.lifecycle), performed with
    simulated pods and time, and at the end its one record. Every decision (attempts, retries,
    backoff, timeouts, the final answer) is the lifecycle's; this subclass only runs its
    commands (one object per request: a request is the simulator's unit of work)."""

    def __init__(
        self,
        sim: Simulation,
        stream: _Stream,
        kind: RequestKind,
        waiter: simpy.Event | None,
        engine: Engine,
        decision: Decision,
        now: float,
        ready: float,
    ) -> None:
        super().__init__(
            engine, decision, method=kind.method, replayable=True, rng=sim.rng_route, now=now
        )
        self.sim = sim
        self.stream = stream
        self.waiter = waiter  # a closed-loop user waiting for the answer
        self.status = 0
        self.ready = ready  # when the proxy can act on the request next
        self.epoch = 0  # changes when an attempt's outcome is replaced (its pod went down)

    def begin(self) -> None:
        command = self.start()
        if type(command) is Send:
            self.send(command)
        else:
            self.perform(command)

    def perform(self, command: Command | None) -> None:
        kind = type(command)
        if kind is Send:
            assert isinstance(command, Send)
            self.send(command)
        elif kind is Deliver:
            assert isinstance(command, Deliver)
            self.status = command.status or 200
            self.perform(self.delivered(self.sim.env.now))
        elif kind is Answer:
            assert isinstance(command, Answer)
            self.record(command.status, bytes_out=0)
        elif kind is Wait:
            assert isinstance(command, Wait)
            self.sim.env.timeout(command.delay).callbacks.append(self.resumed)
        else:
            self.record(self.status, bytes_out=self.sim.response_bytes)

    def send(self, command: Send) -> None:
        """An attempt: its outcome comes from the pod, after simulated time."""
        sim = self.sim
        node = self.stream.traffic.node
        if command.attempt == 1:  # sent in the turn that decided it (resources.arrive)
            sent = self.ready
        else:
            now = sim.env.now
            sent = sim.resources.send(node, self.ready if self.ready > now else now)
        outcome = sim._attempt(
            command.endpoint.ip,
            command.timeout,
            sent=sent,
            node=node,
            flight=self,
            endpoint=command.endpoint,
        )
        if command.attempt == 1 and self.decision.mirrors:
            sim._mirror(self.decision.mirrors, sent=sent, node=node)
        self.expect(outcome)

    def expect(self, outcome: Outcome) -> None:
        """The attempt's outcome reaches the proxy after ``outcome.latency`` (unless a pod
        that goes down replaces it first: see Simulation._take_down)."""
        event = self.sim.env.timeout(outcome.latency, (outcome, self.epoch))
        event.callbacks.append(self.attempted)

    def attempted(self, event: simpy.Event) -> None:
        outcome, epoch = cast(tuple[Outcome, int], event.value)
        if epoch != self.epoch:
            return  # replaced: the pod went down while this attempt was in flight
        now = self.ready = self.sim.env.now
        if outcome.failure is not None:
            self.perform(self.failed(outcome.failure, now))
            return
        command = self.responded(outcome.status, now)
        if type(command) is Deliver:  # most requests: relayed, and over
            self.status = command.status or 200
            self.delivered(now)
            self.record(self.status, bytes_out=self.sim.response_bytes)
        else:
            self.perform(command)

    def resumed(self, _: simpy.Event) -> None:
        self.ready = self.sim.env.now
        self.perform(self.resume(self.ready))

    def record(self, status: int, *, bytes_out: int) -> None:
        """The answer leaves the proxy and reaches the client (resources.py): its one row."""
        sim = self.sim
        now = sim.env.now
        end = sim.resources.deliver(
            self.stream.traffic.node, self.ready if self.ready > now else now, bytes_out
        )
        tries = self.tries
        if not tries:
            end += sim.scenario.proxy_latency  # answered by the proxy itself
        decision = self.decision
        route = decision.route
        # The backend is the one that got the request: none when the proxy answered itself.
        cluster = decision.cluster if tries else None
        sim.recorder.record(
            self.stream.index,
            route.service if route is not None else None,
            cluster.service if cluster is not None else None,
            status,
            self.started,
            end,
            tries,
        )
        trace = sim.trace
        if trace is not None:
            trace.append(
                {
                    "at": self.started,
                    "status": status,
                    "attempts": [
                        [e.key, o.failure.value if o.failure is not None else o.status]
                        for e, o in self.attempts
                    ],
                }
            )
        waiter = self.waiter
        if waiter is not None:
            if end > now:
                sim.env.timeout(end - now).callbacks.append(self._done)
            else:
                waiter.succeed()

    def _done(self, _: simpy.Event) -> None:
        assert self.waiter is not None
        self.waiter.succeed()


def _r6(value: float) -> float:
    return round(value, 6) + 0.0


def _plain(params: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in params.items() if k != "objects"}


def run_scenario(
    scenario: Scenario, progress: Progress | None = None, *, cpu: bool = False
) -> dict[str, Any]:
    return Simulation(scenario, cpu=cpu).run(progress)


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
