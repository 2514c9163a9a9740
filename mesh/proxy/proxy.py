"""The node proxy object: the applied config, the listeners, the clients, draining.

The applied config is one immutable :class:`Snapshot` (config, compiled router, engine). A
reload builds the next snapshot beside the current one and swaps one reference; a request or
connection reads ``proxy.snapshot`` once when it starts and keeps that snapshot to its end,
so it finishes on the config it started on. Policy state lives in one
:class:`~mesh.core.routing.EngineState` that every snapshot's engine shares: the core keys it
by names, so balancers, breakers and limiters carry over across reloads. After the swap the
listeners are reconciled: only added ones open, only removed ones close.

Draining (SIGTERM): stop accepting on every listener, let in-flight requests and open
connections finish up to a deadline, then abort what is left.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any, Protocol, TextIO

from mesh.core.config import MeshConfig
from mesh.core.routing import Engine, EngineState, Router
from mesh.proxy.accesslog import AccessLog
from mesh.proxy.addresses import AddressMap
from mesh.proxy.forward import Forwarder
from mesh.proxy.limits import ConnectionGate
from mesh.proxy.listeners import ListenerSet
from mesh.proxy.metrics import Metrics
from mesh.proxy.tracing import make_tracer
from mesh.proxy.udp import UdpListener
from mesh.proxy.upstream import Upstream
from mesh.proxy.upstream_h2 import H2Upstream
from mesh.proxy.upstream_http import HttpUpstream, client_ssl_context
from mesh.proxy.upstream_raw import RawUpstream

log = logging.getLogger("simmesh.proxy")


@dataclass(frozen=True, slots=True)
class Options:
    node: str
    bind: str = "0.0.0.0"
    admin_port: int | None = 9901  # None: no admin server; 0: any free port
    access_log: bool = False
    header_timeout: float = 10.0  # request headers; h2c preface and first request
    keepalive_timeout: float = 60.0  # idle HTTP/1.1 keep-alive and h2c connections
    body_timeout: float = 30.0  # between two reads of a request body
    upstream_timeout: float = 60.0  # per try, for services without simmesh.io/timeout
    connect_timeout: float = 5.0
    drain_timeout: float = 15.0
    udp_idle_timeout: float = 30.0
    buffer_limit: int = 64 * 1024
    max_header_size: int = 8190
    max_headers: int = 100  # request headers (431 beyond), and upstream response headers
    max_response_header_size: int = 64 * 1024  # upstream response headers in total (502)
    max_connections: int = 10_000  # downstream connections and UDP sessions
    upstream_ca: str | None = None
    address_map: AddressMap = field(default_factory=lambda: AddressMap([]))


class Flow(Protocol):
    """A long-lived flow admitted once (TCP connection, UDP session, WebSocket tunnel): a new
    config that no longer admits it ends it."""

    kind: str  # tcp, udp or websocket

    @property
    def service(self) -> str: ...

    def readmitted(self, router: Router) -> bool: ...

    def revoke(self) -> None: ...


@dataclass(frozen=True, slots=True)
class Snapshot:
    config: MeshConfig
    router: Router
    engine: Engine
    version: str
    applied_at: float  # wall-clock seconds


def make_http_upstream(options: Options) -> Upstream:
    """The HTTP/1.1 upstream client: pooled Protocols + httptools for ``http``, aiohttp for
    ``https``. ``SIMMESH_PROXY_UPSTREAM=aiohttp`` sends ``http`` through aiohttp too (to
    compare the two in benchmarks)."""
    client = HttpUpstream(
        connect_timeout=options.connect_timeout,
        ca_file=options.upstream_ca,
        max_headers=options.max_headers,
    )
    if os.environ.get("SIMMESH_PROXY_UPSTREAM", "raw") == "aiohttp":
        return client
    return RawUpstream(
        connect_timeout=options.connect_timeout,
        fallback=client,
        max_header_bytes=options.max_response_header_size,
        max_headers=options.max_headers,
    )


class Proxy:
    def __init__(self, options: Options, *, access_stream: TextIO | None = None) -> None:
        self.options = options
        self.state = EngineState()
        self.snapshot: Snapshot | None = None
        self.metrics = Metrics(self._live)
        self.gate = ConnectionGate(options.max_connections, self.metrics)
        self.tracer = make_tracer(f"simmesh-proxy/{options.node}")
        self.access_log = AccessLog(access_stream) if options.access_log else None
        self.upstream_ssl = client_ssl_context(options.upstream_ca)
        self.http = make_http_upstream(options)
        self.h2c = H2Upstream(
            connect_timeout=options.connect_timeout, max_headers=options.max_headers
        )
        self.forwarder = Forwarder(self, http=self.http, h2c=self.h2c)
        self.rng = self.forwarder.rng
        self.listeners = ListenerSet(self)
        self.draining = False
        self.inflight = 0
        self.flows: set[Flow] = set()  # admitted long-lived flows, judged again on reload
        self.source: dict[str, Any] = {}
        self.admin_port: int | None = None
        self._admin: Any = None

    # -- config -------------------------------------------------------------------------------

    async def apply(self, config: MeshConfig) -> bool:
        """Apply a config (False when it is the version already applied)."""
        current = self.snapshot
        if current is not None and current.version == config.version:
            return False
        router = Router(self.options.address_map.apply(config))
        engine = Engine(router, state=self.state)
        self.snapshot = Snapshot(config, router, engine, config.version, time.time())
        self.metrics.count("reloads")
        self.revoke(router)
        await self.listeners.reconcile(router.listeners)
        log.info("applied config %s (%d listeners)", config.version, len(router.listeners))
        return True

    def revoke(self, router: Router) -> int:
        """End the flows ``router``'s config no longer admits (a grant was removed, or the
        source's identity changed); the core judges each (Router.readmits)."""
        revoked = [flow for flow in self.flows if not flow.readmitted(router)]
        for flow in revoked:
            self.flows.discard(flow)
            self.metrics.count("revoked", flow.service, flow.kind)
            flow.revoke()
        if revoked:
            log.info("ended %d flows that config %s no longer admits", len(revoked), router.version)
        return len(revoked)

    def server_name(self, service: str) -> str | None:
        """The cluster DNS name of ``namespace/name``, checked when HTTPS is verified."""
        snapshot = self.snapshot
        if snapshot is None:
            return None
        namespace, _, name = service.partition("/")
        domain = snapshot.config.settings.cluster_domain
        return f"{name}.{namespace}.svc.{domain}"

    def _live(self) -> dict[str, Any]:
        snapshot = self.snapshot
        sessions = sum(
            len(item.sessions)
            for item in self.listeners.open.values()
            if isinstance(item, UdpListener)
        )
        return {
            "version": snapshot.version if snapshot is not None else None,
            "applied_at": snapshot.applied_at if snapshot is not None else 0.0,
            "breakers": dict(self.state.breakers),
            "udp_sessions": sessions,
        }

    def summary(self) -> dict[str, Any]:
        snapshot = self.snapshot
        out: dict[str, Any] = {
            "node": self.options.node,
            "ready": self.ready,
            "draining": self.draining,
            "source": self.source,
            "version": None,
        }
        if snapshot is None:
            return out
        config = snapshot.config
        out.update(
            version=snapshot.version,
            appliedAt=snapshot.applied_at,
            acl=config.settings.acl,
            services=len({r.service for r in config.routes.values()}),
            routes=len(config.routes),
            endpoints=sum(len(c.endpoints) for c in config.clusters.values()),
            errors=len(config.errors),
            listeners=[
                {"port": port, "protocol": proto, "open": (port, proto) in self.listeners.open}
                | (
                    {"error": self.listeners.failed[(port, proto)]}
                    if (port, proto) in self.listeners.failed
                    else {}
                )
                for port, proto in snapshot.router.listeners
            ],
        )
        return out

    @property
    def ready(self) -> bool:
        return self.snapshot is not None and not self.draining

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        if self.options.admin_port is not None:
            from mesh.proxy.admin import start_admin

            self._admin, self.admin_port = await start_admin(
                self, self.options.bind, self.options.admin_port
            )

    async def drain(self, timeout: float | None = None) -> bool:
        """Stop accepting, wait for in-flight work; True when everything finished in time."""
        self.draining = True
        self.listeners.stop_accepting()
        deadline = time.monotonic() + (self.options.drain_timeout if timeout is None else timeout)
        while time.monotonic() < deadline:
            if self.inflight == 0 and self.listeners.active() == 0:
                return True
            await asyncio.sleep(0.05)
        log.warning(
            "drain deadline passed with %d requests and %d connections open",
            self.inflight,
            self.listeners.active(),
        )
        return False

    async def close(self) -> None:
        self.listeners.abort()
        await self.http.close()
        await self.h2c.close()
        if self._admin is not None:
            await self._admin.cleanup()
            self._admin = None
        self.tracer.shutdown()
        if self.access_log is not None:
            self.access_log.flush()
