"""What a conformance case is made of: plain, frozen data.

A ``Case`` names its workloads (``App``: one test app pod with its own ServiceAccount, in a
logical namespace ``"A"`` or ``"B"``), its Services (``Svc``), and a list of steps:

- ``Apply``/``Delete``: Kubernetes objects (SMI objects as the user writes them). Strings
  ``"$A"``/``"$B"`` stand for the case's namespaces and ``"$port:<svc>"`` for the port a
  TCPRoute/UDPRoute names for that Service (the adapter says which: simmesh's are target ports).
- ``Expect``: a call made from inside an app's pod (the test app's ``/call``, so the caller has
  the pod's mesh identity) and what must be seen (``Want``). After a change it is polled until
  it holds (that time is the case's propagation), then confirmed.
- ``Flowing``: objects applied while traffic flows; every call must still succeed and the
  serving backend switch once.
- ``RouteStatus``: the conditions the mesh's controller writes on a Gateway API route for one
  Service parent (``status.parents``), polled until they hold for the route's generation.

The ``Want`` kinds judge the test app's call results (pure functions of them) and describe
themselves for the report: ``Denied``, ``Allowed``, ``Answered`` (a status the mesh answers
itself), ``Counts`` (exact, as received by the backends), ``Shares`` (within a binomial bound).
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

__all__ = [
    "Allowed",
    "Answered",
    "App",
    "Apply",
    "Call",
    "Case",
    "Counts",
    "Delete",
    "Denied",
    "Expect",
    "Flowing",
    "Mode",
    "RouteStatus",
    "Shares",
    "Step",
    "Svc",
    "Want",
    "binomial_ok",
    "describe_results",
    "route_conditions",
]

HTTP_PORT, TCP_PORT, UDP_PORT = 8080, 9000, 9001
Result = Mapping[str, Any]


class Mode(StrEnum):
    """How the mesh is installed: ACL (deny by default) or default (everything allowed)."""

    ACL = "acl"
    DEFAULT = "default"


@dataclass(frozen=True, slots=True)
class App:
    """One test app pod (HTTP 8080, TCP 9000, UDP 9001) running as ServiceAccount ``account``."""

    name: str
    ns: str = "A"
    account: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)

    @property
    def service_account(self) -> str:
        return self.account or self.name


@dataclass(frozen=True, slots=True)
class Svc:
    """A Service selecting apps by label (every app has ``app: <name>`` and its own labels)."""

    name: str
    selector: Mapping[str, str]
    protocol: str = "http"
    port: int = HTTP_PORT
    target: int = HTTP_PORT
    ns: str = "A"


def http(name: str, app: str, **kw: Any) -> Svc:
    return Svc(name, {"app": app}, **kw)


def tcp(name: str, app: str, port: int = 7000, **kw: Any) -> Svc:
    return Svc(name, {"app": app}, protocol="tcp", port=port, target=TCP_PORT, **kw)


def udp(name: str, app: str, port: int = 7001, **kw: Any) -> Svc:
    return Svc(name, {"app": app}, protocol="udp", port=port, target=UDP_PORT, **kw)


@dataclass(frozen=True, slots=True)
class Call:
    """A request (or TCP connection, or UDP datagram) from app ``source`` to a Service."""

    source: str
    service: str
    ns: str = "A"
    path: str = "/echo"
    method: str = "GET"
    headers: Mapping[str, str] = field(default_factory=dict)

    def label(self, protocol: str = "http") -> str:
        if protocol != "http":  # a connection or a datagram: no method, path or headers
            return f"{self.source} -> {protocol.upper()} {self.service}"
        extra = "".join(f" {k}: {v}" for k, v in self.headers.items())
        return f"{self.source} -> {self.method} {self.service}{self.path}{extra}"


# --------------------------------------------------------------------------- what is wanted


def _reply_pod(result: Result) -> str | None:
    pod = result.get("pod")
    return str(pod) if pod else None


def describe_results(results: Sequence[Result], apps: Mapping[str, str]) -> str:
    """``HTTP 200 from b x3; reset x1``: what the calls saw, pods named by their app."""
    seen: Counter[str] = Counter()
    for r in results:
        if r.get("error"):
            seen[str(r["error"])] += 1
            continue
        what = f"HTTP {r['status']}" if r.get("status") is not None else "reply"
        pod = _reply_pod(r)
        if pod:
            what += f" from {apps.get(pod, pod)}"
        elif r.get("status") is not None:
            reason = r.get("reason") or (r.get("body") or "").strip()[:60]
            what += f" ({reason})" if reason else " (no reason given)"
        seen[what] += 1
    return "; ".join(f"{k} x{n}" for k, n in seen.items()) or "no calls"


class Want:
    """What an ``Expect`` step wants; ``ok`` judges one batch of call results."""

    probe_count = 1  # calls per poll
    probes_in_a_row = 1  # polls that must pass in a row

    def ok(self, results: Sequence[Result], protocol: str, pods: Mapping[str, str]) -> bool:
        raise NotImplementedError

    def shown(self, seen: set[str]) -> bool:
        """Whether the apps that answered since the change show it (Shares: every backend)."""
        return True

    def describe(self, protocol: str) -> str:
        raise NotImplementedError


@dataclass(frozen=True, slots=True)
class Denied(Want):
    """HTTP: a 403 answered by the mesh with a reason (never a reset). TCP: closed without a
    reply. UDP: no reply. And the destination receives nothing."""

    def ok(self, results: Sequence[Result], protocol: str, pods: Mapping[str, str]) -> bool:
        return bool(results) and all(self._one(r, protocol) for r in results)

    @staticmethod
    def _one(r: Result, protocol: str) -> bool:
        if protocol == "http":
            reason = r.get("reason") or (r.get("body") or "").strip()
            from_mesh = _reply_pod(r) is None  # a 403 from the destination's app is no denial
            return r.get("status") == 403 and not r.get("error") and from_mesh and bool(reason)
        if protocol == "tcp":
            return r.get("error") in ("reset", "timeout") and not r.get("reply")
        return r.get("error") == "timeout"

    def describe(self, protocol: str) -> str:
        return {
            "http": "HTTP 403 from the mesh with a reason",
            "tcp": "the connection closed or reset without a reply",
            "udp": "no reply",
        }[protocol]


@dataclass(frozen=True, slots=True)
class Allowed(Want):
    """Served (HTTP 200, or the TCP/UDP echo's reply) by a pod of one of these apps."""

    by: tuple[str, ...]

    def ok(self, results: Sequence[Result], protocol: str, pods: Mapping[str, str]) -> bool:
        wanted = {pod for pod, app in pods.items() if app in self.by}
        return bool(results) and all(
            not r.get("error")
            and (protocol != "http" or r.get("status") == 200)
            and _reply_pod(r) in wanted
            for r in results
        )

    def describe(self, protocol: str) -> str:
        what = "HTTP 200" if protocol == "http" else f"a {protocol.upper()} echo reply"
        return f"{what} from {' or '.join(self.by)}"


@dataclass(frozen=True, slots=True)
class Answered(Want):
    """HTTP ``status`` answered by the mesh itself, no pod replying (a 404 when routes are
    attached but none matches, a 500 for a backend that does not resolve); the Service's pods
    receive nothing."""

    status: int

    def ok(self, results: Sequence[Result], protocol: str, pods: Mapping[str, str]) -> bool:
        return bool(results) and all(
            r.get("status") == self.status and not r.get("error") and _reply_pod(r) is None
            for r in results
        )

    def describe(self, protocol: str) -> str:
        return f"HTTP {self.status} from the mesh"


@dataclass(frozen=True, slots=True)
class Counts(Want):
    """Exactly these numbers of calls received by each app (its /calls), all answered 200."""

    by: Mapping[str, int]
    probe_count = 5
    probes_in_a_row = 2  # the old state could pass one poll by chance (a random balancer)

    @property
    def total(self) -> int:
        return sum(self.by.values())

    def ok(self, results: Sequence[Result], protocol: str, pods: Mapping[str, str]) -> bool:
        positive = {app for app, n in self.by.items() if n > 0}
        return Allowed(tuple(sorted(positive))).ok(results, protocol, pods)

    def describe(self, protocol: str) -> str:
        return "received exactly " + ", ".join(f"{a}={n}" for a, n in self.by.items())


@dataclass(frozen=True, slots=True)
class Shares(Want):
    """``n`` calls shared by the apps in these proportions, each within a binomial bound."""

    by: Mapping[str, float]
    n: int = 200
    probe_count = 10

    def ok(self, results: Sequence[Result], protocol: str, pods: Mapping[str, str]) -> bool:
        positive = {app for app, p in self.by.items() if p > 0}
        return Allowed(tuple(sorted(positive))).ok(results, protocol, pods)

    def shown(self, seen: set[str]) -> bool:
        # the cases pin every call on one backend first: seeing all of them proves the change
        return {app for app, p in self.by.items() if p > 0} <= seen

    def within(self, received: Mapping[str, int]) -> bool:
        return all(binomial_ok(received.get(app, 0), self.n, p) for app, p in self.by.items())

    def describe(self, protocol: str) -> str:
        shares = ", ".join(f"{a}={p:.0%}" for a, p in self.by.items())
        return f"{self.n} calls shared {shares} (each within 4 sigma of the binomial mean)"


def binomial_ok(k: int, n: int, p: float) -> bool:
    """Within 4 standard deviations of n*p (a false alarm about once in 16,000 checks)."""
    return abs(k - n * p) <= 4 * math.sqrt(n * p * (1 - p)) + 1e-9


# --------------------------------------------------------------------------- steps and cases


@dataclass(frozen=True, slots=True)
class Apply:
    what: str
    docs: tuple[Mapping[str, Any], ...]


@dataclass(frozen=True, slots=True)
class Delete:
    what: str
    docs: tuple[Mapping[str, Any], ...]


@dataclass(frozen=True, slots=True)
class Expect:
    """``call`` must give ``want``. ``wait``: poll until it does (after a change), else it must
    hold at once (used after a marker proved the change is in force on the caller's proxy)."""

    what: str
    call: Call
    want: Want
    wait: bool = True


@dataclass(frozen=True, slots=True)
class Flowing:
    """While ``call`` runs in batches, apply ``docs``: every call succeeds, ``before`` serves
    until the change and ``after`` from then on, and each backend received exactly what the
    caller saw."""

    what: str
    call: Call
    docs: tuple[Mapping[str, Any], ...]
    before: str
    after: str


@dataclass(frozen=True, slots=True)
class RouteStatus:
    """The ``status.parents`` entry the mesh's controller writes on route ``route`` (an
    HTTPRoute or GRPCRoute in logical namespace ``ns``) for its parentRef to Service ``parent``
    (in ``parent_ns``, else the route's; ``port`` as the parentRef names it): each condition
    type with its ``(status, reason)``, every condition observed at the route's generation."""

    what: str
    route: str
    parent: str
    conditions: Mapping[str, tuple[str, str]]
    kind: str = "HTTPRoute"
    ns: str = "A"
    parent_ns: str | None = None
    port: int | None = None

    def label(self) -> str:
        port = f":{self.port}" if self.port is not None else ""
        return f"{self.kind} {self.route} status for Service {self.parent}{port}"

    def describe(self) -> str:
        return ", ".join(f"{t} {s} ({r})" for t, (s, r) in self.conditions.items())


def route_conditions(
    route: Mapping[str, Any] | None,
    controller: str,
    parent: Mapping[str, Any],
) -> tuple[dict[str, tuple[str, str]] | None, str]:
    """What the controller ``controller`` says of ``parent`` (a parentRef: name, namespace,
    port) on ``route``: its conditions observed at the route's current generation (None when it
    has no such entry, or one from an older generation) and the entry in words for a report."""
    if route is None:
        return None, "the route does not exist"
    generation = route.get("metadata", {}).get("generation")
    route_ns = route.get("metadata", {}).get("namespace")
    for entry in (route.get("status") or {}).get("parents") or []:
        ref = entry.get("parentRef") or {}
        if entry.get("controllerName") != controller or ref.get("kind", "") != "Service":
            continue
        if (ref.get("name"), ref.get("namespace") or route_ns, ref.get("port")) != (
            parent["name"],
            parent.get("namespace") or route_ns,
            parent.get("port"),
        ):
            continue
        conditions = entry.get("conditions") or []
        words = "; ".join(
            f"{c.get('type')} {c.get('status')} ({c.get('reason')}: {c.get('message', '')})"
            f"{'' if c.get('observedGeneration') == generation else ' of an older generation'}"
            for c in conditions
        )
        if any(c.get("observedGeneration") != generation for c in conditions):
            return None, words
        return {
            str(c.get("type")): (str(c.get("status")), str(c.get("reason"))) for c in conditions
        }, words
    others = [str(e.get("controllerName")) for e in (route.get("status") or {}).get("parents", [])]
    return None, (
        f"no status entry of {controller} for that parent"
        + (f" (entries of: {', '.join(others)})" if others else "")
    )


Step = Apply | Delete | Expect | Flowing | RouteStatus


@dataclass(frozen=True, slots=True)
class Case:
    name: str
    title: str
    tags: tuple[str, ...]
    apps: tuple[App, ...]
    services: tuple[Svc, ...]
    steps: tuple[Step, ...]
    needs: Mode | None = None

    def app(self, name: str) -> App:
        return next(a for a in self.apps if a.name == name)

    def service(self, name: str, ns: str = "A") -> Svc:
        return next(s for s in self.services if s.name == name and s.ns == ns)

    def namespaces(self) -> tuple[str, ...]:
        return tuple(sorted({a.ns for a in self.apps} | {s.ns for s in self.services}))

    def selected(self, svc: Svc) -> tuple[str, ...]:
        """The apps a Service selects."""
        return tuple(
            a.name
            for a in self.apps
            if a.ns == svc.ns
            and all({"app": a.name, **a.labels}.get(k) == v for k, v in svc.selector.items())
        )


def dump(doc: Any) -> str:
    return json.dumps(doc, sort_keys=True)
