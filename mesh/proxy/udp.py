"""UDP relay: per-client sessions with an idle timeout.

A datagram from a client address that has no session asks the core (``decide_flow``); a
denied client's datagrams are dropped and counted. An allowed one gets a session: a connected
UDP socket of its own towards the decided endpoint, so replies come back to the session and
are sent to the client from the listener's socket. A session ends after ``--udp-idle-timeout``
without traffic either way; that ends its attempt in the engine. Datagrams that arrive while
the session's socket is being opened wait in a short queue (:data:`PENDING`, then dropped).
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
from mesh.proxy.snapshot import Snapshot
from mesh.proxy.streams import DatagramSide
from mesh.proxy.upstream import UpstreamError

PENDING = 64
Address = tuple[Any, ...]


class UdpListener(asyncio.DatagramProtocol):
    protocol = "udp"

    def __init__(self, ctx: Context, port: int) -> None:
        self.ctx = ctx
        self.port = port
        self.sessions: dict[Address, Session] = {}
        self.transport: asyncio.DatagramTransport | None = None
        self.closing = False

    async def open(self, host: str) -> None:
        loop = asyncio.get_running_loop()
        await loop.create_datagram_endpoint(
            lambda: self,
            local_addr=(host, self.port),
            reuse_port=self.ctx.options.workers > 1 or None,
        )

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: Address) -> None:
        session = self.sessions.get(addr)
        if session is not None:
            session.send(data)
            return
        snapshot = self.ctx.snapshot
        if snapshot is None or self.closing or not self.ctx.gate.admit(addr[0], "udp"):
            return
        router = snapshot.router
        if router.mtls == "off":
            source = router.source_identity(addr[0])
        else:
            caller = router.caller(addr[0], self.ctx.options.node)
            source = caller.identity
            if caller.remote:
                self.ctx.metrics.count("plaintext", "received")
            if caller.refused is not None:  # strict: a pod of another node, in the clear
                route = router.flows.get(self.port)
                service = route.service if route is not None else "-"
                self.ctx.gate.leave(addr[0])
                self.ctx.metrics.deny(service, "udp", caller.refused.value)
                return
        d = snapshot.engine.decide_flow(
            listener=self.port, source=source, now=time.monotonic(), rng=self.ctx.rng
        )
        service = d.route.service if d.route is not None else "-"
        if not d.allowed:
            self.ctx.gate.leave(addr[0])
            self.ctx.metrics.deny(service, "udp", d.reason.value)
            self.ctx.metrics.called(service, "udp", source, d.status or 503)
            return
        self.ctx.metrics.called(service, "udp", source, 200)
        session = self.sessions[addr] = Session(self, addr, snapshot, d, source)
        session.start(data)

    def reply(self, data: bytes, addr: Address) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.sendto(data, addr)

    def close(self) -> None:
        """UDP has no connections to finish: the socket and its sessions close at once."""
        self.closing = True
        for session in list(self.sessions.values()):
            session.close()
        if self.transport is not None:
            self.transport.close()

    def active(self) -> int:
        return 0  # sessions are not waited for when draining

    def abort(self) -> None:
        self.close()


class Session(asyncio.DatagramProtocol):
    kind = "udp"

    def __init__(
        self,
        listener: UdpListener,
        client: Address,
        snapshot: Snapshot,
        d: Decision,
        source: str | None = None,
    ) -> None:
        self.listener = listener
        self.source = source  # the client's identity
        self.ctx = listener.ctx
        self.client = client
        self.snapshot = snapshot
        self.decision = d
        self.transport: asyncio.DatagramTransport | None = None
        self.endpoint: Endpoint | None = None
        self.endpoint_key: str | None = None
        self.pending: list[bytes] = []
        self.started = self.last = time.monotonic()
        self.life: Lifecycle | None = None  # the connected attempt, ended with the session
        self.rx = 0
        self.tx = 0
        self.failure: Failure | None = None
        self.closed = False
        self.ready = False  # pending datagrams flushed, in order
        self._timer: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def service(self) -> str:
        route = self.decision.route
        return route.service if route is not None else "-"

    def start(self, first: bytes) -> None:
        self.ctx.metrics.opened("udp")
        self.ctx.flows.add(self)
        self.send(first)
        self._task = asyncio.create_task(self._open())

    async def _open(self) -> None:
        loop = asyncio.get_running_loop()

        async def connect(endpoint: Endpoint) -> asyncio.DatagramTransport:
            if self.snapshot.router.mtls != "off":
                tunneled = await self._tunnel(endpoint)
                if tunneled is not None:
                    return tunneled
            try:
                transport, _ = await loop.create_datagram_endpoint(
                    lambda: self, remote_addr=(endpoint.ip, endpoint.port)
                )
            except OSError as exc:
                raise UpstreamError(Failure.CONNECT, f"{endpoint.key}: {exc!r}") from exc
            return transport

        try:
            transport, self.life = await connect_flow(
                self.snapshot.engine, self.decision, connect, rng=self.ctx.rng
            )
        except UpstreamError:
            self._task = None
            if self.closed:
                self._finish()
            else:
                self.close()
            return
        endpoint = self.life.endpoint
        assert endpoint is not None
        self.endpoint, self.endpoint_key = endpoint, endpoint.key
        if self.closed:
            transport.close()
            self._finish()
            return
        for data in self.pending:
            transport.sendto(data)
        self.pending.clear()
        self.ready = True
        self._schedule()

    async def _tunnel(self, endpoint: Endpoint) -> asyncio.DatagramTransport | None:
        """To a pod of another node with mTLS on: the session through a stream tunnel to
        its node's proxy, a datagram per frame (mesh.proxy.streams); None to send in the
        clear (same node, or permissive mode without a tunnel); UpstreamError when strict
        mode forbids that."""
        pool = self.ctx.streams
        if pool is None:
            return None
        router, cluster = self.snapshot.router, self.decision.cluster
        hop = pool.plan(router, endpoint=endpoint, source=self.source, cluster=cluster)
        if hop is None:
            return None
        peer = (endpoint.ip, endpoint.port)
        await pool.open(hop, self.client[0], lambda: DatagramSide(self, peer), udp=True)
        assert self.transport is not None  # DatagramSide gave the session its transport
        return self.transport

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def send(self, data: bytes) -> None:
        self.rx += len(data)
        self.last = time.monotonic()
        if self.ready and self.transport is not None:
            self.transport.sendto(data)
        elif len(self.pending) < PENDING:
            self.pending.append(data)

    def datagram_received(self, data: bytes, addr: Address) -> None:
        self.tx += len(data)
        self.last = time.monotonic()
        self.listener.reply(data, self.client)

    def error_received(self, exc: Exception) -> None:
        self.failure = Failure.RESET  # e.g. ICMP port unreachable

    def _schedule(self) -> None:
        idle = self.ctx.options.udp_idle_timeout
        delay = max(0.0, self.last + idle - time.monotonic())
        self._timer = asyncio.get_running_loop().call_later(delay, self._check)

    def _check(self) -> None:
        self._timer = None
        if self.closed:
            return
        if time.monotonic() - self.last >= self.ctx.options.udp_idle_timeout:
            self.close()
        else:
            self._schedule()

    def readmitted(self, router: Router) -> bool:
        d = self.decision
        endpoint = self.endpoint or d.endpoint
        if d.cluster is None or endpoint is None:
            return True
        return router.readmits(cluster=d.cluster.key, endpoint=endpoint, source_ip=self.client[0])

    def revoke(self) -> None:
        """A new config no longer admits this session: end it; the client's next datagram
        is decided again (and dropped)."""
        self.close()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.ctx.flows.discard(self)
        if self._timer is not None:
            self._timer.cancel()
        if self.listener.sessions.get(self.client) is self:
            del self.listener.sessions[self.client]
        if self.transport is not None:
            self.transport.close()
        if self._task is None or self._task.done():
            self._finish()

    def _finish(self) -> None:
        if self.life is not None and not self.life.done:
            self.life.handle(Delivered(self.failure), time.monotonic())
        self.ctx.gate.leave(self.client[0])
        metrics = self.ctx.metrics
        metrics.closed("udp")
        metrics.transferred(self.service, "udp", self.rx, self.tx)
        log = self.ctx.access_log
        if log is not None:
            log.write(
                {
                    "kind": "udp",
                    "listener": self.listener.port,
                    "client": f"{self.client[0]}:{self.client[1]}",
                    "service": self.service,
                    "endpoint": self.endpoint_key,
                    "failure": self.failure.value if self.failure is not None else None,
                    "bytes_in": self.rx,
                    "bytes_out": self.tx,
                    "duration_ms": round((time.monotonic() - self.started) * 1000.0, 3),
                    "config": self.snapshot.version,
                }
            )
