"""Prometheus metrics of one proxy, in a CollectorRegistry of its own.

A registry per proxy (not the global one) keeps several proxies in one process, as in the
tests, apart. The hot path does not touch prometheus-client at all: it adds to plain dicts
keyed by label tuples (one dict operation per count, no locks, no label validation), and
:class:`_Exporter` turns them into metric families when ``/metrics`` is scraped, together
with what is read from the current snapshot then: circuit breaker states, the applied config
version, open UDP sessions.

With ``--workers`` each process keeps its own tables; :meth:`Metrics.export` turns them (and
the live state) into plain data and :func:`render_merged` adds every worker's up into one
exposition for the supervisor's ``/metrics``.

What ``simmesh snapshot`` and the admission gate read (docs/snapshot.md): requests and flows
per destination service and *caller identity* (``calls``), the method and path mix
(``paths``), and per-backend response times on finer buckets with the backends' 5xx
(``backend``, ``backend_errors``). Labels that come from traffic are bounded: at most
:data:`MAX_CALLERS` caller identities per service and :data:`MAX_PATHS` (method, path) pairs
per service in one process, the ones after that counted as ``other``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from mesh import __version__
from mesh.build import describe
from mesh.core.policies import CircuitState

_METHODS = frozenset(["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE"])
# Typed as variable-length tuples: one Python object each (compiled, a fixed-length tuple of
# floats would be unboxed and boxed again, every float, at every bisect).
BUCKETS: tuple[float, ...] = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10,
)  # fmt: skip
# Request durations and per-backend response times, from which a snapshot reads what was
# observed and makes the workloads' latency distributions: steps of 1.25-1.5x, so a percentile
# read by interpolating within a bucket is off by a few percent at most.
FINE_BUCKETS: tuple[float, ...] = (
    0.0005, 0.001, 0.0015, 0.002, 0.003, 0.004, 0.005, 0.0075, 0.01, 0.0125, 0.015, 0.02,
    0.025, 0.03, 0.04, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1, 1.5, 2, 3, 5, 10,
    30, 60,
)  # fmt: skip
MAX_CALLERS = 32  # caller identities per destination service, then "other"
MAX_PATHS = 16  # (method, path) pairs per service, then path "other"
UNKNOWN = "unknown"  # a caller without an identity (its address is no pod's)
OTHER = "other"
CIRCUIT_VALUES = {CircuitState.CLOSED: 0, CircuitState.OPEN: 1, CircuitState.HALF_OPEN: 2}

LiveState = Callable[[], dict[str, Any]]
Labels = tuple[str, ...]


class Histogram:
    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...] = BUCKETS) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one is +Inf
        self.sum = 0.0

    def observe(self, value: float) -> None:
        # bisect_left written out: compiled, a loop of native compares, where calling
        # bisect.bisect_left (a module global, then a call) was most of an observation.
        bounds = self.bounds
        lo, hi = 0, len(bounds)
        while lo < hi:
            mid = (lo + hi) >> 1
            if bounds[mid] < value:
                lo = mid + 1
            else:
                hi = mid
        self.counts[lo] += 1
        self.sum += value

    def cumulative(self) -> list[tuple[str, float]]:
        out = []
        total = 0
        for bound, count in zip((*map(str, self.bounds), "+Inf"), self.counts, strict=True):
            total += count
            out.append((bound, float(total)))
        return out


class _Served:
    """What HTTP requests with the same raw labels added up to since the last fold."""

    __slots__ = ("count", "duration", "rx", "tx")

    def __init__(self) -> None:
        self.count = 0
        self.rx = 0
        self.tx = 0
        self.duration = Histogram(FINE_BUCKETS)


class _Tried:
    """Attempts of one service to one backend since the last fold."""

    __slots__ = ("backend", "errors", "upstream")

    def __init__(self) -> None:
        self.upstream = Histogram(BUCKETS)
        self.backend = Histogram(FINE_BUCKETS)
        self.errors = 0


def _merge(into: dict[Labels, Histogram], key: Labels, other: Histogram) -> None:
    histogram = into.get(key)
    if histogram is None:
        histogram = into[key] = Histogram(other.bounds)
    counts = histogram.counts
    for i, count in enumerate(other.counts):
        if count:
            counts[i] += count
    histogram.sum += other.sum


# Raw rows kept between folds at most (a fold runs at each scrape, and when this many are held).
MAX_ROWS = 1024
# HTTP status codes as label values, made once.
_STATUS = {code: str(code) for code in range(100, 600)}


# (name, help, label names) of the counters; the Metrics attribute is the name's last part.
COUNTERS = {
    "requests": (
        "simmesh_proxy_http_requests",
        "HTTP requests answered, by service, status code and method",
        ("service", "code", "method"),
    ),
    "connections": (
        "simmesh_proxy_connections",
        "Downstream connections and UDP sessions",
        ("protocol",),
    ),
    "bytes": (
        "simmesh_proxy_bytes",
        "Payload bytes relayed; direction rx = from the client, tx = to the client",
        ("service", "protocol", "direction"),
    ),
    "retries": ("simmesh_proxy_retries", "Retried attempts", ("service",)),
    "failures": (
        "simmesh_proxy_upstream_failures",
        "Attempts that failed to connect, were reset or timed out",
        ("service", "failure"),
    ),
    "denied": (
        "simmesh_proxy_denied",
        "Requests and flows the core denied (403, 404, 503), by reason",
        ("service", "protocol", "reason"),
    ),
    "mirrors": (
        "simmesh_proxy_mirrors",
        "RequestMirror copies: sent (answered), failed, dropped (over --max-mirrors), "
        "streamed (a streamed body is not copied)",
        ("service", "result"),
    ),
    "rate_limited": (
        "simmesh_proxy_rate_limited",
        "Requests and flows refused with 429",
        ("service", "protocol"),
    ),
    "reloads": ("simmesh_proxy_config_reloads", "Configs applied", ()),
    "config_errors": (
        "simmesh_proxy_config_errors",
        "Configs that could not be read or applied",
        (),
    ),
    "config_deltas": (
        "simmesh_proxy_config_deltas",
        "Delta answers from the controller: applied, or fallback (not applicable, or the "
        "result's digest was not the delta's version: the full config was fetched instead)",
        ("result",),
    ),
    "listener_errors": (
        "simmesh_proxy_listener_errors",
        "Listeners that could not be opened",
        ("protocol",),
    ),
    "revoked": (
        "simmesh_proxy_revoked_flows",
        "TCP flows, UDP sessions and WebSocket tunnels ended because a new config no longer "
        "admits them",
        ("service", "protocol"),
    ),
    "bad_requests": (
        "simmesh_proxy_bad_requests",
        "Downstream protocol errors answered by the proxy itself (400, 408, 431)",
        ("code",),
    ),
    "connections_refused": (
        "simmesh_proxy_connections_refused",
        "Connections and UDP sessions turned away: reason max-connections, per-source "
        "(--max-connections-per-source) or unidentified (--reserved-connections)",
        ("protocol", "reason"),
    ),
    "upstream_limited": (
        "simmesh_proxy_upstream_limited",
        "Requests (503 upstream-connection-limit), tunnels and TCP flows turned away because no "
        "upstream connection was free within --connect-timeout (--max-upstream-connections), "
        "or the process was out of file descriptors",
        ("service", "protocol"),
    ),
    "streams_refused": (
        "simmesh_proxy_streams_refused",
        "h2c streams refused: max-concurrent-streams (the client opened more than "
        "--max-concurrent-streams: connection error), draining (REFUSED_STREAM while the "
        "connection retires)",
        ("reason",),
    ),
    "h2_abusive": (
        "simmesh_proxy_h2_abusive_connections",
        "h2c connections ended with GOAWAY(ENHANCE_YOUR_CALM), by the budget they overspent: "
        "resets (streams reset while served) or control (SETTINGS, PING, refused HEADERS)",
        ("budget",),
    ),
    "client_timeouts": (
        "simmesh_proxy_client_timeouts",
        "Downstream connections or requests cut by a timeout, by what the client was slow at: "
        "headers, body, h2c-preface (first request after the preface), h2c-idle",
        ("phase",),
    ),
    "calls": (
        "simmesh_proxy_calls",
        f"Requests (http) and flows (tcp when they end, udp when they start) by destination "
        f"service, caller identity (namespace/serviceaccount; {UNKNOWN} without one; at most "
        f"{MAX_CALLERS} per service, the rest {OTHER}) and code (HTTP status; flows: 200 "
        f"connected, else the proxy's 403, 404, 429, 502, 503)",
        ("service", "protocol", "source", "code"),
    ),
    "paths": (
        "simmesh_proxy_http_paths",
        f"HTTP requests by service, method and path without the query (at most {MAX_PATHS} "
        f"pairs per service, the rest path {OTHER})",
        ("service", "method", "path"),
    ),
    "tunnel_handshakes": (
        "simmesh_proxy_tunnel_handshakes",
        "mTLS tunnel connections established, by side (client: to another node's proxy, "
        "server: from one)",
        ("side",),
    ),
    "tunnel_handshake_failures": (
        "simmesh_proxy_tunnel_handshake_failures",
        "mTLS tunnel handshakes that failed, by side and reason (not-tls, "
        "untrusted-certificate, no-client-certificate, tls-version, unknown-identity, "
        "bad-identity, trust-domain, wrong-identity, timeout, closed, handshake, ...)",
        ("side", "reason"),
    ),
    "tunnel_pipes": (
        "simmesh_proxy_tunnel_pipes",
        "mTLS pipe connections opened here by other nodes' proxies (a tunnel connection to "
        "one pod, mesh.proxy.pipe), by how they were served: spliced (authorised once, bytes "
        "relayed to the pod) or per-request (each request decided here, as on a tunnel)",
        ("mode",),
    ),
    "plaintext": (
        "simmesh_proxy_plaintext_requests",
        "With mTLS on: received, plaintext requests from pods of other nodes (permissive "
        "judges them by address, strict refuses them); sent, requests to pods of other "
        "nodes sent in the clear (permissive, when no tunnel could be used)",
        ("direction",),
    ),
    "backend_errors": (
        "simmesh_proxy_backend_errors",
        "Attempts the backend (the Service a request was sent to, after splits) answered "
        "with a 5xx",
        ("backend",),
    ),
}
HISTOGRAMS = {
    "duration": (
        "simmesh_proxy_http_request_duration_seconds",
        "Time from request headers to the last response byte",
        ("service",),
    ),
    "upstream": (
        "simmesh_proxy_upstream_response_seconds",
        "Time from sending an attempt upstream to its response headers",
        ("service",),
    ),
    "backend": (
        "simmesh_proxy_backend_response_seconds",
        "Per backend (the Service a request was sent to, after splits): http, from sending an "
        "attempt to its response headers; tcp, a flow from its upstream connect to its close",
        ("backend",),
    ),
}
BOUNDS = {"backend": FINE_BUCKETS, "duration": FINE_BUCKETS}  # histograms not on BUCKETS


class Metrics:
    """The proxy's tables. An HTTP request costs one dictionary lookup on the request path:
    :meth:`http` and :meth:`attempt` add to a row per raw label set, and a fold (at each
    scrape or export, or when :data:`MAX_ROWS` rows are held) turns the rows into the labelled
    counters and histograms, bounding the caller and path labels on the way."""

    def __init__(self, live: LiveState) -> None:
        self._counters: dict[str, dict[Labels, float]] = {key: {} for key in COUNTERS}
        self._histograms: dict[str, dict[Labels, Histogram]] = {key: {} for key in HISTOGRAMS}
        self._served: dict[tuple[str, int, str, str | None, str | None], _Served] = {}
        self._tried: dict[tuple[str, str | None], _Tried] = {}
        self.active: dict[str, int] = {}
        self.registry = CollectorRegistry()
        self.registry.register(_Exporter(self, live))
        self._requests = self._counters["requests"]
        self._duration = self._histograms["duration"]
        self._upstream = self._histograms["upstream"]
        self._backend = self._histograms["backend"]
        self._bytes = self._counters["bytes"]
        self._calls = self._counters["calls"]
        self._paths = self._counters["paths"]
        self._callers: dict[str, set[str]] = {}  # service -> caller identities with a label
        self._mixes: dict[str, set[tuple[str, str]]] = {}  # service -> (method, path) labelled

    @property
    def counters(self) -> dict[str, dict[Labels, float]]:
        """The counters by name (the rows folded in first)."""
        self.fold()
        return self._counters

    @property
    def histograms(self) -> dict[str, dict[Labels, Histogram]]:
        self.fold()
        return self._histograms

    def count(self, name: str, *labels: str, value: float = 1.0) -> None:
        table = self._counters[name]
        table[labels] = table.get(labels, 0.0) + value

    def _observe(
        self,
        table: dict[Labels, Histogram],
        key: Labels,
        value: float,
        bounds: tuple[float, ...] = BUCKETS,
    ) -> None:
        histogram = table.get(key)
        if histogram is None:
            histogram = table[key] = Histogram(bounds)
        histogram.observe(value)

    def http(
        self,
        service: str,
        code: int,
        method: str,
        seconds: float,
        source: str | None,
        path: str | None,
        rx: int,
        tx: int,
    ) -> None:
        """An answered HTTP request (``source``: the caller's identity; with ``path``, no
        query, it counts in the path mix; ``rx``/``tx``: body bytes from and to the client)."""
        key = (service, code, method, source, path)
        row = self._served.get(key)
        if row is None:
            if len(self._served) >= MAX_ROWS:
                self.fold()
            row = self._served[key] = _Served()
        row.count += 1
        row.rx += rx
        row.tx += tx
        row.duration.observe(seconds)

    def request(
        self,
        service: str,
        code: int,
        method: str,
        seconds: float,
        *,
        source: str | None = None,
        path: str | None = None,
    ) -> None:
        """An answered HTTP request, no bytes counted."""
        self.http(service, code, method, seconds, source, path, 0, 0)

    def fold(self) -> None:
        """The rows into the labelled tables (labels from traffic bounded here)."""
        served, tried = self._served, self._tried
        if served:
            self._served = {}
            requests, calls, paths, sent = self._requests, self._calls, self._paths, self._bytes
            for (service, code, method, source, path), row in served.items():
                n = float(row.count)
                status = _STATUS.get(code) or str(code)
                method = method if method in _METHODS else "OTHER"
                key: Labels = (service, status, method)
                requests[key] = requests.get(key, 0.0) + n
                who = source or UNKNOWN
                callers = self._callers.get(service)
                if callers is None or who not in callers:
                    who = self._caller(service, who)
                key = (service, "http", who, status)
                calls[key] = calls.get(key, 0.0) + n
                if path is not None:
                    mix = self._mixes.get(service)
                    if mix is None or (method, path) not in mix:
                        path = self._path(service, method, path)
                    key = (service, method, path)
                    paths[key] = paths.get(key, 0.0) + n
                if row.rx:
                    key = (service, "http", "rx")
                    sent[key] = sent.get(key, 0.0) + row.rx
                if row.tx:
                    key = (service, "http", "tx")
                    sent[key] = sent.get(key, 0.0) + row.tx
                _merge(self._duration, (service,), row.duration)
        if tried:
            self._tried = {}
            errors = self._counters["backend_errors"]
            for (service, backend), attempts in tried.items():
                _merge(self._upstream, (service,), attempts.upstream)
                if backend is not None:
                    _merge(self._backend, (backend,), attempts.backend)
                    if attempts.errors:
                        key = (backend,)
                        errors[key] = errors.get(key, 0.0) + attempts.errors

    def called(self, service: str, protocol: str, source: str | None, code: int) -> None:
        """One flow (or request) from ``source`` (an identity; None: unknown) to ``service``."""
        who = source or UNKNOWN
        callers = self._callers.get(service)
        if callers is None or who not in callers:
            who = self._caller(service, who)
        key = (service, protocol, who, str(code))
        calls = self._calls
        calls[key] = calls.get(key, 0.0) + 1.0

    def _caller(self, service: str, who: str) -> str:
        """The label of a caller not labelled yet: itself while the service has room."""
        callers = self._callers.setdefault(service, set())
        if len(callers) >= MAX_CALLERS:
            return OTHER
        callers.add(who)
        return who

    def _path(self, service: str, method: str, path: str) -> str:
        mix = self._mixes.setdefault(service, set())
        if len(mix) >= MAX_PATHS:
            return OTHER
        mix.add((method, path))
        return path

    def attempt(
        self, service: str, seconds: float, backend: str | None = None, status: int = 0
    ) -> None:
        """An attempt's response headers (or failure) after ``seconds``; ``backend``: the
        Service it went to, after splits."""
        key = (service, backend)
        row = self._tried.get(key)
        if row is None:
            if len(self._tried) >= MAX_ROWS:
                self.fold()
            row = self._tried[key] = _Tried()
        row.upstream.observe(seconds)
        if backend is not None:
            row.backend.observe(seconds)
            if status >= 500:
                row.errors += 1

    def served(self, backend: str, seconds: float) -> None:
        """A flow's duration (tcp) of ``backend``."""
        self._observe(self._backend, (backend,), seconds, FINE_BUCKETS)

    def transferred(self, service: str, protocol: str, rx: int, tx: int) -> None:
        table = self._bytes
        if rx:
            key = (service, protocol, "rx")
            table[key] = table.get(key, 0.0) + rx
        if tx:
            key = (service, protocol, "tx")
            table[key] = table.get(key, 0.0) + tx

    def deny(self, service: str, protocol: str, reason: str) -> None:
        if reason == "rate-limited":
            self.count("rate_limited", service, protocol)
        else:
            self.count("denied", service, protocol, reason)

    def failure(self, service: str, failure: str) -> None:
        self.count("failures", service, failure)

    def retry(self, service: str) -> None:
        self.count("retries", service)

    def opened(self, protocol: str) -> None:
        self.count("connections", protocol)
        self.active[protocol] = self.active.get(protocol, 0) + 1

    def closed(self, protocol: str) -> None:
        self.active[protocol] = self.active.get(protocol, 0) - 1

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def export(self, live: dict[str, Any]) -> dict[str, Any]:
        """The tables and ``live`` state as plain data (to send to the supervisor)."""
        breakers = live.get("breakers", {})
        return {
            "counters": {name: list(table.items()) for name, table in self.counters.items()},
            "histograms": {
                name: [(labels, h.counts, h.sum) for labels, h in table.items()]
                for name, table in self.histograms.items()
            },
            "active": dict(self.active),
            "live": {
                **live,
                "breakers": {key: (b.state, b.opens) for key, b in breakers.items()},
            },
        }


@dataclass
class BreakerView:
    """A circuit breaker as several workers see it: the most alarming state, opens added."""

    state: CircuitState
    opens: int


_SEVERITY = {CircuitState.CLOSED: 0, CircuitState.HALF_OPEN: 1, CircuitState.OPEN: 2}


def render_merged(exports: list[dict[str, Any]]) -> bytes:
    """One exposition for several workers: counters, histograms and gauges added up,
    breakers at their most alarming state, the config version of the first."""
    live: dict[str, Any] = {"breakers": {}, "udp_sessions": 0, "upstream_connections": 0}
    merged = Metrics(lambda: live)
    for export in exports:
        for name, rows in export["counters"].items():
            table = merged.counters[name]
            for labels, value in rows:
                table[labels] = table.get(labels, 0.0) + value
        for name, rows in export["histograms"].items():
            hist_table = merged.histograms[name]
            for labels, counts, total in rows:
                histogram = hist_table.get(labels)
                if histogram is None:
                    histogram = hist_table[labels] = Histogram(BOUNDS.get(name, BUCKETS))
                histogram.counts = [a + b for a, b in zip(histogram.counts, counts, strict=True)]
                histogram.sum += total
        for protocol, value in export["active"].items():
            merged.active[protocol] = merged.active.get(protocol, 0) + value
        state = export["live"]
        live.setdefault("version", state.get("version"))
        live.setdefault("applied_at", state.get("applied_at", 0.0))
        live["udp_sessions"] += state.get("udp_sessions", 0)
        live["upstream_connections"] += state.get("upstream_connections", 0)
        for held in ("certificate_age", "certificates", "roots"):
            if held in state:  # the supervisor's process holds the certificates
                live.setdefault(held, state[held])
        for key, (breaker_state, opens) in state["breakers"].items():
            view = live["breakers"].get(key)
            if view is None:
                live["breakers"][key] = BreakerView(breaker_state, opens)
                continue
            view.opens += opens
            if _SEVERITY[breaker_state] > _SEVERITY[view.state]:
                view.state = breaker_state
    return merged.render()


class _Exporter(Collector):
    """Metric families built from the plain tables, at scrape time."""

    def __init__(self, metrics: Metrics, live: LiveState) -> None:
        self._metrics = metrics
        self._live = live

    def collect(self) -> Iterator[Metric]:
        m = self._metrics
        for key, (name, text, labels) in COUNTERS.items():
            family = CounterMetricFamily(name, text, labels=labels)
            for values, value in sorted(m.counters[key].items()):
                family.add_metric(values, value)
            yield family
        for key, (name, text, labels) in HISTOGRAMS.items():
            histogram = HistogramMetricFamily(name, text, labels=labels)
            for values, item in sorted(m.histograms[key].items()):
                histogram.add_metric(values, item.cumulative(), item.sum)
            yield histogram
        active = GaugeMetricFamily(
            "simmesh_proxy_active_connections",
            "Open downstream connections (http, h2c, tcp) and UDP sessions",
            labels=["protocol"],
        )
        for protocol, count in sorted(m.active.items()):
            active.add_metric([protocol], count)
        yield active
        yield from self._live_families()

    def _live_families(self) -> Iterator[Metric]:
        state = self._live()
        build = GaugeMetricFamily(
            "simmesh_proxy_build_info",
            "The running simmesh (value 1): its version and build (compiled or interpreted)",
            labels=["version", "build"],
        )
        build.add_metric([__version__, describe()], 1)
        yield build
        info = GaugeMetricFamily(
            "simmesh_proxy_config_info", "The applied MeshConfig (value 1)", labels=["version"]
        )
        if state.get("version"):
            info.add_metric([state["version"]], 1)
        yield info
        applied = GaugeMetricFamily(
            "simmesh_proxy_config_applied_timestamp_seconds", "When the config was applied"
        )
        applied.add_metric([], state.get("applied_at", 0.0))
        yield applied
        circuit = GaugeMetricFamily(
            "simmesh_proxy_circuit_state",
            "Circuit breaker state per endpoint: 0 closed, 1 open, 2 half-open",
            labels=["service", "endpoint"],
        )
        opens = CounterMetricFamily(
            "simmesh_proxy_circuit_opens",
            "Times a circuit breaker opened, per endpoint",
            labels=["service", "endpoint"],
        )
        for (service, endpoint), breaker in sorted(state.get("breakers", {}).items()):
            circuit.add_metric([service, endpoint], CIRCUIT_VALUES[breaker.state])
            opens.add_metric([service, endpoint], breaker.opens)
        yield circuit
        yield opens
        sessions = GaugeMetricFamily("simmesh_proxy_udp_sessions", "Open UDP sessions")
        sessions.add_metric([], state.get("udp_sessions", 0))
        yield sessions
        upstream = GaugeMetricFamily(
            "simmesh_proxy_upstream_connections",
            "Upstream connections counted against --max-upstream-connections (busy and idle)",
        )
        upstream.add_metric([], state.get("upstream_connections", 0))
        yield upstream
        tunnels = GaugeMetricFamily(
            "simmesh_proxy_tunnels_open",
            "Open mTLS tunnel connections, by side (client, server)",
            labels=["side"],
        )
        for side, count in sorted(state.get("tunnels", {}).items()):
            tunnels.add_metric([side], count)
        yield tunnels
        age = GaugeMetricFamily(
            "simmesh_proxy_tunnel_certificate_age_seconds",
            "Age of the oldest certificate the tunnels use (absent when none is held)",
        )
        if state.get("certificate_age") is not None:
            age.add_metric([], state["certificate_age"])
        yield age
        # per identity: at most the ServiceAccounts with a pod on this node (docs/proxy.md)
        identity_age = GaugeMetricFamily(
            "simmesh_proxy_identity_certificate_age_seconds",
            "Seconds since the certificate the tunnels use for an identity was issued",
            labels=["identity"],
        )
        identity_expiry = GaugeMetricFamily(
            "simmesh_proxy_identity_certificate_expiry_seconds",
            "Seconds until the certificate the tunnels use for an identity expires "
            "(negative: expired)",
            labels=["identity"],
        )
        for identity, seconds_old, seconds_left in state.get("certificates", ()):
            identity_age.add_metric([identity], seconds_old)
            identity_expiry.add_metric([identity], seconds_left)
        yield identity_age
        yield identity_expiry
        roots = GaugeMetricFamily(
            "simmesh_proxy_trust_root_expiry_seconds",
            "Seconds until a trust root the tunnels verify with expires, by its SHA-256 "
            "fingerprint (one root, two during a rotation's overlap)",
            labels=["fingerprint"],
        )
        for fingerprint, seconds_left in state.get("roots", ()):
            roots.add_metric([fingerprint], seconds_left)
        yield roots
