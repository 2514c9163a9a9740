"""TCP relay: one upstream connection per accepted connection, with half-close.

Transports and Protocols, not streams: ``data_received`` writes straight into the other
side's transport, and each side's ``pause_writing``/``resume_writing`` pauses and resumes
reading on the other, so a slow reader throttles a fast writer and buffers stay bounded.
Half-close is kept: EOF from one side becomes ``write_eof`` on the other, and the flow ends
when both directions are done (or either side resets, which aborts the other).

The core decides once per connection (``decide_flow``); a denied connection is closed at
once. Connecting is bounded by ``--connect-timeout`` and retried where the core says. The
attempt is reported to the engine when the flow ends (so least-request sees open flows). The
upstream connection holds a slot of the upstream gate (``--max-upstream-connections``) until
it closes; a flow that gets none in time is closed (``simmesh_proxy_upstream_limited_total``).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, cast

from mesh.core.lifecycle import Delivered, Lifecycle
from mesh.core.policies import Failure
from mesh.core.routing import Decision, Endpoint, Router
from mesh.proxy.context import Context
from mesh.proxy.forward import connect_flow
from mesh.proxy.resources import Slot, UpstreamLimit
from mesh.proxy.snapshot import Snapshot
from mesh.proxy.upstream import UpstreamError

_HIGH_WATER = 1 << 20


class TcpListener:
    protocol = "tcp"

    def __init__(self, ctx: Context, port: int) -> None:
        self.ctx = ctx
        self.port = port
        self.flows: set[Inbound] = set()
        self._server: asyncio.Server | None = None

    async def open(self, host: str) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: Inbound(self),
            host,
            self.port,
            reuse_address=True,
            reuse_port=self.ctx.options.workers > 1 or None,
            backlog=1024,
        )

    def close(self) -> None:
        if self._server is not None:
            self._server.close()

    def active(self) -> int:
        return len(self.flows)

    def abort(self) -> None:
        for flow in list(self.flows):
            flow.abort()


class Outbound(asyncio.Protocol):
    """The upstream side of one flow."""

    def __init__(self, flow: Inbound, slot: Slot) -> None:
        self.flow = flow
        self.slot = slot  # given back when the connection closes
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.transport.set_write_buffer_limits(high=_HIGH_WATER)

    def data_received(self, data: bytes) -> None:
        flow = self.flow
        flow.tx += len(data)
        if flow.transport is not None:
            flow.transport.write(data)

    def eof_received(self) -> bool:
        self.flow.half_closed(upstream=True)
        return True

    def pause_writing(self) -> None:
        if self.flow.transport is not None:
            self.flow.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.flow.transport is not None and not self.flow.transport.is_closing():
            self.flow.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.slot.release()
        self.flow.upstream_lost(exc)


class Inbound(asyncio.Protocol):
    """The client side of one flow; owns the flow's bookkeeping."""

    kind = "tcp"

    def __init__(self, listener: TcpListener) -> None:
        self.listener = listener
        self.ctx = listener.ctx
        self.transport: asyncio.Transport | None = None
        self.peer: Outbound | None = None
        self.peer_ip = ""
        self.peer_port = 0
        self.snapshot: Snapshot | None = None
        self.decision: Decision | None = None
        self.source: str | None = None  # the client's identity
        self.endpoint: Endpoint | None = None  # set while the engine attempt is open
        self.endpoint_key: str | None = None
        self.started = self.connected = time.monotonic()
        self.life: Lifecycle | None = None  # the connected attempt, ended with the flow
        self.rx = 0
        self.tx = 0
        self.eof_in = False
        self.eof_out = False
        self.failure: Failure | None = None
        self.reason = "closed"
        self.done = False
        self.early: list[bytes] = []  # bytes read before the upstream connected
        self._task: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport = cast(asyncio.Transport, transport)
        transport.pause_reading()
        transport.set_write_buffer_limits(high=_HIGH_WATER)
        peer = transport.get_extra_info("peername")
        self.peer_ip = peer[0] if peer else ""
        self.peer_port = int(peer[1]) if peer else 0
        if not self.ctx.gate.admit(self.peer_ip, "tcp"):
            transport.abort()
            return
        self.listener.flows.add(self)
        self.ctx.metrics.opened("tcp")
        snapshot = self.snapshot = self.ctx.snapshot
        if snapshot is None:
            self.reason = "no-config"
            transport.close()
            return
        router = snapshot.router
        if router.mtls == "off":
            source = self.source = router.source_identity(self.peer_ip)
        else:
            caller = router.caller(self.peer_ip, self.ctx.options.node)
            source = self.source = caller.identity
            if caller.remote:
                self.ctx.metrics.count("plaintext", "received")
            if caller.refused is not None:  # strict: a pod of another node, in the clear
                self.reason = caller.refused.value
                self.ctx.metrics.deny(self.service, "tcp", caller.refused.value)
                transport.close()
                return
        d = self.decision = snapshot.engine.decide_flow(
            listener=self.listener.port,
            source=source,
            now=time.monotonic(),
            rng=self.ctx.rng,
        )
        if not d.allowed:
            self.reason = d.reason.value
            self.ctx.metrics.deny(self.service, "tcp", d.reason.value)
            transport.close()
            return
        self._task = asyncio.create_task(self._connect(snapshot, d))
        self.ctx.flows.add(self)

    def readmitted(self, router: Router) -> bool:
        d = self.decision
        endpoint = self.endpoint or (d.endpoint if d is not None else None)
        if d is None or d.cluster is None or endpoint is None:
            return True
        return router.readmits(cluster=d.cluster.key, endpoint=endpoint, source_ip=self.peer_ip)

    def revoke(self) -> None:
        """A new config no longer admits this flow: reset both sides."""
        self.reason = "revoked"
        self.abort()

    @property
    def service(self) -> str:
        d = self.decision
        return d.route.service if d is not None and d.route is not None else "-"

    async def _connect(self, snapshot: Snapshot, d: Decision) -> None:
        loop = asyncio.get_running_loop()
        timeout = self.ctx.options.connect_timeout

        async def connect(endpoint: Endpoint) -> Outbound:
            if snapshot.router.mtls != "off":
                tunneled = await self._tunnel(snapshot, d, endpoint)
                if tunneled is not None:
                    return tunneled

            async def open_(slot: Slot) -> Outbound:
                async with asyncio.timeout(timeout):
                    _, out = await loop.create_connection(
                        lambda: Outbound(self, slot), endpoint.ip, endpoint.port
                    )
                return out

            try:
                return await self.ctx.upstreams.connect(open_, where=endpoint.key)
            except (OSError, TimeoutError) as exc:
                raise UpstreamError(Failure.CONNECT, f"{endpoint.key}: {exc!r}") from exc

        def failed(exc: UpstreamError) -> None:
            self.ctx.metrics.failure(self.service, Failure.CONNECT.value)

        try:
            peer, self.life = await connect_flow(
                snapshot.engine, d, connect, rng=self.ctx.rng, on_failure=failed
            )
        except UpstreamLimit:
            self.reason = "upstream-connection-limit"
            self.ctx.metrics.count("upstream_limited", self.service, "tcp")
            if self.transport is not None:
                self.transport.close()
            return
        except UpstreamError:
            self.reason = "upstream-connect-failed"
            if self.transport is not None:
                self.transport.close()
            return
        endpoint = self.life.endpoint
        assert endpoint is not None
        self.peer, self.endpoint, self.endpoint_key = peer, endpoint, endpoint.key
        self.reason = "forwarded"
        self.connected = time.monotonic()
        if peer.transport is not None:
            for data in self.early:
                peer.transport.write(data)
            if self.eof_in and peer.transport.can_write_eof():
                peer.transport.write_eof()
        self.early.clear()
        if self.done or self.transport is None or self.transport.is_closing():
            if peer.transport is not None:
                peer.transport.close()
            self._finish()
            return
        self.transport.resume_reading()

    async def _tunnel(self, snapshot: Snapshot, d: Decision, endpoint: Endpoint) -> Outbound | None:
        """To a pod of another node with mTLS on: a flow through a stream tunnel to its
        node's proxy (mesh.proxy.streams); None to connect in the clear (same node, or
        permissive mode without a tunnel); UpstreamError when strict mode forbids that."""
        pool = self.ctx.streams
        if pool is None:
            return None
        hop = pool.plan(snapshot.router, endpoint=endpoint, source=self.source, cluster=d.cluster)
        if hop is None:
            return None
        out = await pool.open(hop, self.peer_ip, lambda: Outbound(self, Slot(None)))
        return cast(Outbound, out)

    def data_received(self, data: bytes) -> None:
        self.rx += len(data)
        peer = self.peer
        if peer is not None and peer.transport is not None:
            peer.transport.write(data)
        else:  # before the upstream is connected (uvloop may read despite pause_reading)
            self.early.append(data)
            if self.transport is not None and self.rx > _HIGH_WATER:
                self.transport.pause_reading()

    def eof_received(self) -> bool:
        self.half_closed(upstream=False)
        return True

    def half_closed(self, *, upstream: bool) -> None:
        """EOF from one side: shut down writing on the other; done when both are."""
        if upstream:
            self.eof_out = True
            if self.transport is not None and self.transport.can_write_eof():
                self.transport.write_eof()
        else:
            self.eof_in = True
            peer = self.peer
            if peer is not None and peer.transport is not None and peer.transport.can_write_eof():
                peer.transport.write_eof()
        if self.eof_in and self.eof_out:
            self._close_both()

    def _close_both(self) -> None:
        if self.transport is not None:
            self.transport.close()
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.close()

    def pause_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        peer = self.peer
        if peer is not None and peer.transport is not None and not peer.transport.is_closing():
            peer.transport.resume_reading()

    def upstream_lost(self, exc: Exception | None) -> None:
        if exc is not None:
            self.failure = Failure.RESET
            if self.transport is not None:
                self.transport.abort()
        elif self.transport is not None:
            self.transport.close()
        self._finish()

    def connection_lost(self, exc: Exception | None) -> None:
        peer = self.peer
        if peer is not None and peer.transport is not None:
            if exc is not None:
                peer.transport.abort()
            else:
                peer.transport.close()
        if self._task is not None and not self._task.done() and self.peer is None:
            self.done = True  # _connect finishes the attempt when it returns
            self._count()
            return
        self._finish()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.abort()

    def _finish(self) -> None:
        if self.life is not None and not self.life.done:
            self.life.handle(Delivered(self.failure), time.monotonic())
        self._count()

    def _count(self) -> None:
        self.ctx.flows.discard(self)
        if self not in self.listener.flows:
            return
        self.listener.flows.discard(self)
        self.ctx.gate.leave(self.peer_ip)
        metrics = self.ctx.metrics
        metrics.closed("tcp")
        metrics.transferred(self.service, "tcp", self.rx, self.tx)
        d = self.decision
        if d is not None:
            metrics.called(self.service, "tcp", self.source, self._code(d))
            if self.reason == "forwarded" and d.cluster is not None:
                metrics.served(d.cluster.service, time.monotonic() - self.connected)
        log = self.ctx.access_log
        if log is not None:
            log.write(self._record())

    def _code(self, d: Decision) -> int:
        """The flow as the simulator records one: 200 connected, else the proxy's status."""
        if not d.allowed:
            return d.status or 503
        if self.reason in ("forwarded", "revoked"):
            return 200
        if self.reason == "upstream-connection-limit":
            return 503
        return 502 if self.reason == "upstream-connect-failed" else 499

    def _record(self) -> dict[str, Any]:
        return {
            "kind": "tcp",
            "listener": self.listener.port,
            "client": self.peer_ip,
            "client_port": self.peer_port,
            "service": self.service,
            "endpoint": self.endpoint_key,
            "reason": self.reason,
            "failure": self.failure.value if self.failure is not None else None,
            "bytes_in": self.rx,
            "bytes_out": self.tx,
            "duration_ms": round((time.monotonic() - self.started) * 1000.0, 3),
            "config": self.snapshot.version if self.snapshot is not None else None,
        }
