"""What every part of the node proxy is built with: a narrow :class:`Context`, not the Proxy.

The front ends (HTTP/1.1, h2c, WebSocket tunnels, TCP, UDP) and the listeners need a handful
of shared things: the applied config (:class:`Snapshot`, swapped whole by a reload), the
metrics, the tracer, the access log, the :class:`~mesh.proxy.forward.Forwarder` that drives a
request through the core, the options, the downstream connection gate, the upstream one (for
tunnels and TCP flows; the upstream clients hold it too) and the registry of long-lived
:class:`Flows` that a reload judges again. The :class:`~mesh.proxy.proxy.Proxy` builds one
Context and owns it; nothing below it imports the Proxy, so the package reads from the top
(``app`` -> ``proxy`` -> ``listeners`` -> front ends -> ``forward`` -> upstream clients) down,
and import-linter's ``layers`` contract (pyproject.toml) keeps it that way.

A request or connection reads ``ctx.snapshot`` once when it starts and keeps that snapshot to
its end, so it finishes on the config it started on.
"""

from __future__ import annotations

import random

from mesh.proxy.accesslog import AccessLog
from mesh.proxy.flows import Flow, Flows
from mesh.proxy.forward import Forwarder
from mesh.proxy.limits import ConnectionGate
from mesh.proxy.metrics import Metrics
from mesh.proxy.options import Options
from mesh.proxy.resources import UpstreamGate
from mesh.proxy.snapshot import Snapshot
from mesh.proxy.streams import StreamPool
from mesh.proxy.tracing import Tracer

__all__ = ["Context", "Flow", "Flows", "Snapshot"]


class Context:
    """The shared state of one proxy process, as its components see it."""

    __slots__ = (
        "access_log",
        "draining",
        "flows",
        "forwarder",
        "gate",
        "inflight",
        "metrics",
        "options",
        "rng",
        "snapshot",
        "streams",
        "tracer",
        "upstreams",
    )

    def __init__(
        self,
        *,
        options: Options,
        metrics: Metrics,
        tracer: Tracer,
        access_log: AccessLog | None,
        forwarder: Forwarder,
        gate: ConnectionGate,
        upstreams: UpstreamGate,
        rng: random.Random,
        streams: StreamPool | None = None,
    ) -> None:
        self.options = options
        self.metrics = metrics
        self.tracer = tracer
        self.access_log = access_log
        self.forwarder = forwarder
        self.gate = gate
        self.upstreams = upstreams
        self.rng = rng
        self.streams = streams  # TCP flows through mTLS tunnels (None: never)
        self.flows = Flows(metrics)
        self.snapshot: Snapshot | None = None  # swapped whole by Proxy.apply
        self.draining = False  # SIGTERM: send clients elsewhere, finish what is in flight
        self.inflight = 0  # HTTP requests and h2c streams being served
