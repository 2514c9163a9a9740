"""The node proxy object: the applied config, the listeners, the clients, draining.

:class:`Proxy` builds the :class:`~mesh.proxy.context.Context` that every component is given
(the components never see the Proxy). The applied config is one immutable
:class:`~mesh.proxy.snapshot.Snapshot` (config, compiled router, engine). A reload builds the
next snapshot beside the current one and swaps one reference (``ctx.snapshot``); a request or
connection reads it once when it starts and keeps that snapshot to its end, so it finishes on
the config it started on. Policy state lives in one
:class:`~mesh.core.routing.EngineState` that every snapshot's engine shares: the core keys it
by names, so balancers, breakers and limiters carry over across reloads. After the swap the
listeners are reconciled: only added ones open, only removed ones close.

Draining (SIGTERM) has two phases (:meth:`Proxy.drain`). First, for ``--drain-delay``, the
proxy still accepts and stays ready, because clients keep being sent to it until the news of
its end has spread (in Kubernetes: until kube-proxy on the node has rewritten its rules; while
no other proxy is ready on the node, kube-proxy keeps using this terminating one only as long
as its readiness probe passes). Meanwhile every HTTP/1.1 answer says ``Connection: close`` and
closes its connection, and an h2c connection gets GOAWAY once no stream is open, so clients
move their next requests to new connections, that is to the proxy that replaces this one.
Then the proxy stops accepting and turns unready: idle connections close (HTTP/1.1: FIN
first, see :meth:`~mesh.proxy.http1.H1Connection.retire`), new h2c streams are refused
(REFUSED_STREAM, safe to retry), UDP listeners close, and in-flight requests, h2c streams and
TCP flows may finish until ``--drain-timeout``; whatever is left then is aborted.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import math
import os
import random
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TextIO

import msgspec

from mesh.core.routing import Engine, EngineState, Router
from mesh.core.schema import MeshConfig
from mesh.proxy.accesslog import AccessLog
from mesh.proxy.admin import Status, start_admin
from mesh.proxy.context import Context
from mesh.proxy.flows import Flow
from mesh.proxy.forward import Forwarder
from mesh.proxy.inbound import TunnelServer
from mesh.proxy.limits import ConnectionGate
from mesh.proxy.listeners import ListenerSet
from mesh.proxy.metrics import Metrics
from mesh.proxy.mtls import TunnelTls
from mesh.proxy.options import Options
from mesh.proxy.resources import FdBudget, UpstreamGate, fd_budget, open_file_limit
from mesh.proxy.snapshot import Snapshot
from mesh.proxy.streams import StreamPool
from mesh.proxy.tracing import make_tracer
from mesh.proxy.udp import UdpListener
from mesh.proxy.upstream import Upstream
from mesh.proxy.upstream_h2 import H2Upstream
from mesh.proxy.upstream_http import HttpUpstream, client_ssl_context
from mesh.proxy.upstream_raw import RawUpstream

__all__ = [
    "Flow",
    "Options",
    "Proxy",
    "Snapshot",
    "make_http_upstream",
    "settle_memory",
    "share_rate_limits",
]

log = logging.getLogger("simmesh.proxy")


def share_rate_limits(config: MeshConfig, workers: int) -> MeshConfig:
    """The config one of ``workers`` worker processes enforces: each route's rate limit
    divided among them (``average``/N per second, the burst divided up, at least 1)."""
    if workers <= 1:
        return config
    routes = {}
    for key, route in config.routes.items():
        limit = route.policy.rate_limit
        if limit is not None:
            share = msgspec.structs.replace(
                limit,
                average=limit.average / workers,
                burst=max(1, math.ceil(limit.burst / workers)),
            )
            policy = msgspec.structs.replace(route.policy, rate_limit=share)
            route = msgspec.structs.replace(route, policy=policy)
        routes[key] = route
    return msgspec.structs.replace(config, routes=routes)


def settle_memory() -> None:
    """Move what a config leaves alive (router, engine, modules) out of the cyclic GC's reach.

    Garbage from the previous config is collected first; afterwards the collector only scans
    what requests allocate, so its pauses stay short however large the config is. Young
    collections are also made rarer: request objects are short-lived and freed by reference
    counting, so frequent generation-0 scans mostly cost latency.

    The previous config's objects were frozen and, being acyclic, are freed by reference
    counting as it is replaced: a full collection (every object, 110-250 ms at 10,000
    Services) is needed only for cycles among them. Like CPython's own rule for its oldest
    generation, it runs when the frozen objects have grown by a quarter since the last one
    (what cycles can hold back is bounded); otherwise the young generations are collected
    and frozen.
    """
    global _frozen_after_full
    gc.collect(1)
    gc.freeze()
    if _frozen_after_full == 0 or gc.get_freeze_count() > _frozen_after_full * 5 // 4:
        gc.unfreeze()
        gc.collect()
        gc.freeze()
        _frozen_after_full = max(1, gc.get_freeze_count())
    gc.set_threshold(10_000, 20, 100)


_frozen_after_full = 0  # objects frozen by the last full collection (0: none yet)


def make_http_upstream(
    options: Options, gate: UpstreamGate, tunnels: TunnelTls | None = None
) -> Upstream:
    """The HTTP/1.1 upstream client: pooled Protocols + httptools for ``http``, aiohttp for
    ``https``. ``SIMMESH_PROXY_UPSTREAM=aiohttp`` sends ``http`` through aiohttp too (to
    compare the two in benchmarks)."""
    client = HttpUpstream(
        connect_timeout=options.connect_timeout,
        ca_file=options.upstream_ca,
        max_headers=options.max_headers,
        gate=gate,
    )
    if os.environ.get("SIMMESH_PROXY_UPSTREAM", "raw") == "aiohttp":
        return client
    return RawUpstream(
        connect_timeout=options.connect_timeout,
        fallback=client,
        max_header_bytes=options.max_response_header_size,
        max_headers=options.max_headers,
        gate=gate,
        tunnels=tunnels,
    )


def _share(limit: int | None, workers: int) -> int | None:
    """A node-wide limit's share of one of ``workers`` processes."""
    return None if limit is None else math.ceil(limit / workers)


def budget_of(options: Options) -> FdBudget:
    """This process's connection limits: ``--max-connections`` and
    ``--max-upstream-connections`` are the node's, so each worker has its share, within what
    its RLIMIT_NOFILE allows (mesh.proxy.resources)."""
    share = math.ceil(options.max_connections / options.workers)
    budget = fd_budget(
        nofile=open_file_limit(),
        max_connections=share,
        max_upstream=_share(options.max_upstream_connections, options.workers),
    )
    if budget.downstream < share:
        log.warning(
            "RLIMIT_NOFILE %d leaves room for %d downstream and %d upstream connections: "
            "--max-connections is lowered from %d to %d per process (raise the limit: "
            "ulimit -n, LimitNOFILE)",
            budget.nofile,
            budget.downstream,
            budget.upstream,
            share,
            budget.downstream,
        )
    elif budget.overcommitted:
        log.warning(
            "RLIMIT_NOFILE %d is less than --max-connections %d plus "
            "--max-upstream-connections %d per process: connects and accepts may fail first",
            budget.nofile,
            budget.downstream,
            budget.upstream,
        )
    return budget


class Proxy:
    """One proxy process: builds the :class:`~mesh.proxy.context.Context` its components
    share, applies configs, and owns the listeners, the upstream clients and the admin port."""

    def __init__(self, options: Options, *, access_stream: TextIO | None = None) -> None:
        self.options = options
        self.state = EngineState()
        self.metrics = Metrics(self._live)
        rng = random.Random()
        self.budget = budget = budget_of(options)
        self.upstreams = upstreams = UpstreamGate(budget.upstream, wait=options.connect_timeout)
        self.tls = TunnelTls(self.metrics, node=options.node, port=options.tunnel_port)
        # the certificate manager's state (mesh.proxy.certs), when it runs in this process
        self.certificate_manager: Callable[[], dict[str, Any]] | None = None
        self.http = make_http_upstream(options, upstreams, self.tls)
        self.h2c = H2Upstream(
            connect_timeout=options.connect_timeout,
            max_headers=options.max_headers,
            gate=upstreams,
            tunnels=self.tls,
        )
        tracer = make_tracer(f"simmesh-proxy/{options.node}")
        # With --workers, lines of several processes share stdout: each line is written whole.
        every = 0.0 if options.workers > 1 else 0.2
        access_log = AccessLog(access_stream, flush_every=every) if options.access_log else None
        forwarder = Forwarder(
            options=options,
            metrics=self.metrics,
            tracer=tracer,
            access_log=access_log,
            http=self.http,
            h2c=self.h2c,
            upstream_ssl=client_ssl_context(options.upstream_ca),
            rng=rng,
            tunnels=self.tls,
        )
        self.ctx = Context(
            options=options,
            metrics=self.metrics,
            tracer=tracer,
            access_log=access_log,
            forwarder=forwarder,
            gate=ConnectionGate(
                budget.downstream,
                self.metrics,
                per_source=_share(options.max_connections_per_source, options.workers),
                reserved=_share(options.reserved_connections, options.workers),
                identified=self._identified,
            ),
            upstreams=upstreams,
            rng=rng,
            streams=StreamPool(self.tls, upstreams, connect_timeout=options.connect_timeout),
        )
        self.forwarder = forwarder
        self.listeners = ListenerSet(self.ctx)
        self.tunnel: TunnelServer | None = None  # the tunnel port, while mTLS is on
        self.source: dict[str, Any] = {}
        self.admin_port: int | None = None
        self._admin: Any = None
        self._listening = False
        self._listening_since = 0.0  # time.monotonic() of the first config applied
        self._certified = False  # the node's certificates held (or waited for long enough)
        self._stopped = False  # draining, and no longer accepting

    def _identified(self, ip: str) -> bool:
        """Whether the source ``ip`` counts as one with an identity: in ACL mode, when the
        applied config knows its identity; without ACLs identities are not used (and not in
        the config): every source counts."""
        snapshot = self.ctx.snapshot
        if snapshot is None:
            return False
        if not snapshot.config.settings.acl:
            return True
        return snapshot.router.source_identity(ip) is not None

    @property
    def snapshot(self) -> Snapshot | None:
        return self.ctx.snapshot

    @property
    def draining(self) -> bool:
        return self.ctx.draining

    @property
    def inflight(self) -> int:
        return self.ctx.inflight

    # -- config -------------------------------------------------------------------------------

    async def apply(self, config: MeshConfig) -> bool:
        """Apply a config (False when it is the version already applied)."""
        current = self.snapshot
        if current is not None and current.version == config.version:
            return False
        local = share_rate_limits(self.options.address_map.apply(config), self.options.workers)
        router = Router(local, current.router if current is not None else None)
        engine = Engine(router, state=self.state)
        self.ctx.snapshot = Snapshot(config, router, engine, config.version, time.time())
        self.metrics.count("reloads")
        self.revoke(router)
        await self.listeners.reconcile(router.listeners)
        await self._reconcile_tunnel()
        if not self._listening:
            self._listening_since = time.monotonic()
        self._listening = True  # ready only once the first config's listeners are open
        log.info("applied config %s (%d listeners)", config.version, len(router.listeners))
        return True

    def load_certificates(
        self, *, trust_domain: str, roots: Path, held: Mapping[str, tuple[Path, Path]]
    ) -> None:
        """The certificates this proxy holds now (identity -> certificate and key files) and
        the trust bundle: new tunnels, both ways, use them (see mesh.proxy.mtls)."""
        if held:
            self.tls.load(trust_domain=trust_domain, roots=roots, held=held)
        else:
            self.tls.clear()

    async def _reconcile_tunnel(self) -> None:
        """The tunnel port is open while the config has mTLS on; a proxy deployed to hold
        certificates (``mtls_capable``) keeps it open whatever the config says. The chart
        renders the proxies differently with mTLS off (no tunnel port), so turning mTLS on or
        off rolls them; a config with mTLS off reaching a proxy rendered with it on comes from
        the previous release's controller while an upgrade's surge runs both, and closing the
        port then broke the tunnels of the other nodes' proxies (on kind: 37 of 37,200
        requests of the upgrade from off to permissive, "tunnel ...: closed")."""
        snapshot = self.snapshot
        on = snapshot is not None and (snapshot.router.mtls != "off" or self.options.mtls_capable)
        wanted = on and not self._stopped
        if wanted and self.tunnel is None:
            server = TunnelServer(self.ctx, self.tls)
            try:
                await server.open(self.options.bind)
            except OSError as exc:
                self.metrics.count("listener_errors", "tunnel")
                log.error("cannot open the tunnel port %d: %s", self.tls.port, exc)
                return
            self.tls.port = server.port
            self.tunnel = server
            log.info("opened the mTLS tunnel port %d", server.port)
        elif not wanted and self.tunnel is not None:
            self.tunnel.close()
            self.tunnel = None

    def revoke(self, router: Router) -> int:
        """End the flows ``router``'s config no longer admits (the core judges each)."""
        return self.ctx.flows.revoke(router)

    def live(self) -> dict[str, Any]:
        """What the metrics read from the applied config and the engine's state."""
        return self._live()

    def worker_summary(self) -> dict[str, Any]:
        """This process's part of ``/config`` with ``--workers``."""
        requests = sum(self.metrics.counters["requests"].values())
        return {
            "worker": self.options.worker,
            "pid": os.getpid(),
            "running": True,
            "version": self.version,
            "requests": int(requests),
            "connections": dict(self.metrics.active),
        }

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
            "upstream_connections": self.upstreams.open,
            "tunnels": dict(self.tls.open),
            "certificate_age": self.tls.certificate_age(),
            "certificates": self.tls.expiries(),
            "roots": self.tls.root_expiries(),
        }

    @property
    def version(self) -> str | None:
        snapshot = self.snapshot
        return snapshot.version if snapshot is not None else None

    async def metrics_text(self) -> bytes:
        return self.metrics.render()

    async def summary(self) -> dict[str, Any]:
        return self.describe()

    async def certificates(self) -> dict[str, Any]:
        return self.certificate_state()

    def certificate_state(self) -> dict[str, Any]:
        """/certificates: the mTLS mode of the applied config, the identities of this node's
        pods (``wanted``), the certificates the tunnels hold for them (SPIFFE ID, issue and
        expiry times, fingerprint), the ones missing, the trust roots, and the certificate
        manager's counters when it runs. Public facts only: never a key or a file path."""
        snapshot = self.snapshot
        mtls = snapshot.config.settings.mtls if snapshot is not None else None
        wanted = sorted(mtls.nodes.get(self.options.node, ())) if mtls is not None else []
        held = self.tls.certificates()
        manager = self.certificate_manager() if self.certificate_manager is not None else None
        if manager is not None:
            for item in held["identities"]:
                kept = manager.get("held", {}).get(item["identity"], {})
                item["renewAt"] = kept.get("renewAt")
                item["secondsToRenewal"] = kept.get("secondsToRenewal")
        return {
            "node": self.options.node,
            "version": snapshot.version if snapshot is not None else None,
            "mtls": mtls.mode if mtls is not None else "off",
            "trustDomain": mtls.trust_domain if mtls is not None else held["trustDomain"],
            "wanted": wanted,
            "missing": self.missing_certificates(),
            "identities": held["identities"],
            "roots": held["roots"],
            "tunnels": dict(self.tls.open),
            "manager": None
            if manager is None
            else {
                key: manager.get(key)
                for key in (
                    "issued",
                    "renewals",
                    "failures",
                    "dropped",
                    "pending",
                    "bundleChanges",
                    "bundleFailures",
                )
            },
        }

    def describe(self) -> dict[str, Any]:
        """/config: the version, the listeners (open, or why not), counts, the source."""
        snapshot = self.snapshot
        out: dict[str, Any] = {
            "node": self.options.node,
            "ready": self.ready,
            "draining": self.draining,
            "source": self.source,
            "version": None,
            "limits": {  # this process's (mesh.proxy.resources)
                "openFiles": self.budget.nofile,
                "maxConnections": self.budget.downstream,
                "maxConnectionsPerSource": self.ctx.gate.per_source,
                "reservedConnections": self.ctx.gate.reserved,
                "maxUpstreamConnections": self.budget.upstream,
                "upstreamConnections": self.upstreams.open,
            },
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
        """A config is applied and the listeners accept (also during the drain delay); with
        mTLS on, the node's certificates are held too (see :meth:`missing_certificates`)."""
        return self._listening and not self._stopped and self._certificates_settled()

    def missing_certificates(self) -> list[str]:
        """The identities of this node's pods (the applied config's ``settings.mtls.nodes``)
        that the tunnels hold no certificate for, sorted; none with mTLS off (readiness and
        ``/certificates`` both read it)."""
        snapshot = self.snapshot
        mtls = snapshot.config.settings.mtls if snapshot is not None else None
        if mtls is None:
            return []
        wanted = sorted(mtls.nodes.get(self.options.node, ()))
        return [name for name in wanted if not self.tls.holds(name)]

    def _certificates_settled(self) -> bool:
        """Whether the certificates let this proxy be Ready. The controller publishes a Ready
        proxy as its node's tunnel address, so a proxy that starts with mTLS on waits (up to
        ``certificate_wait`` after its first config) until it holds every identity of its
        node's pods: a tunnel to a proxy without the destination's certificate fails, while
        the proxy it replaces (during a surge) still serves. After that wait it is Ready
        anyway (its node's own traffic needs no certificate; ``simmesh check`` fails it).
        Once settled it stays so: a new pod's identity arriving later must not unpublish the
        tunnels of the node's other pods."""
        if self._certified:
            return True
        waited = time.monotonic() - self._listening_since
        if waited >= self.options.certificate_wait or (
            not self._mtls_unknown() and not self.missing_certificates()
        ):
            self._certified = True
        return self._certified

    def _mtls_unknown(self) -> bool:
        """A proxy deployed for mTLS applying a config with mTLS off: during an upgrade that
        turns mTLS on, the previous release's controller still answers, and its config says
        nothing of the identities this proxy must hold (Ready on it, the proxy was published
        without certificates: on kind, 528 of 65,400 requests failed on resets)."""
        snapshot = self.snapshot
        off = snapshot is None or snapshot.config.settings.mtls is None
        return self.options.mtls_capable and off

    @property
    def unready_reason(self) -> str:
        """Why /readyz answers 503 (for the admin port)."""
        if self.draining:
            return "draining"
        if not self._listening:
            return "no config applied yet"
        if not self._certified and self._mtls_unknown():
            return "waiting for a config with mTLS on (this proxy is deployed with it)"
        if not self._certified:
            left = self.options.certificate_wait - (time.monotonic() - self._listening_since)
            missing = ", ".join(self.missing_certificates())
            return f"waiting for the certificates of {missing} (at most {max(0.0, left):.0f} s)"
        return "stopped"

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self, *, status: Status | None = None) -> None:
        """Open the admin port (serving ``status``: this proxy unless a supervisor's)."""
        if self.options.admin_port is not None:
            self._admin, self.admin_port = await start_admin(
                status or self, self.options.bind, self.options.admin_port
            )

    async def drain(self, timeout: float | None = None, *, delay: float | None = None) -> bool:
        """Keep accepting for ``delay`` (``--drain-delay``) while sending clients elsewhere,
        then stop accepting and wait up to ``timeout`` (``--drain-timeout``) for in-flight
        work; True when everything finished in time. (See the module docstring.)"""
        delay = self.options.drain_delay if delay is None else delay
        self.ctx.draining = True
        self.listeners.part()
        if delay > 0:
            await asyncio.sleep(delay)
        self._stopped = True
        self.listeners.stop_accepting()
        if self.tunnel is not None:
            self.tunnel.close()
        deadline = time.monotonic() + (self.options.drain_timeout if timeout is None else timeout)
        while time.monotonic() < deadline:
            tunneled = self.tunnel.active() if self.tunnel is not None else 0
            if self.inflight == 0 and self.listeners.active() + tunneled == 0:
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
        if self.tunnel is not None:
            self.tunnel.close()
            self.tunnel.abort()
            self.tunnel = None
        await self.forwarder.mirrors.close()
        await self.http.close()
        await self.h2c.close()
        if self.ctx.streams is not None:
            self.ctx.streams.close()
        if self._admin is not None:
            await self._admin.cleanup()
            self._admin = None
        self.ctx.tracer.shutdown()
        if self.ctx.access_log is not None:
            self.ctx.access_log.flush()
