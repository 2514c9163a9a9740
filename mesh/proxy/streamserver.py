"""The destination side of stream tunnels: TCP flows from other nodes' proxies to this node's pods.

A tunnel connection that negotiated ALPN ``simmesh-stream/1`` is handed here by
:mod:`mesh.proxy.inbound` with the identity its client certificate proves. It carries one flow
at a time, framed as :mod:`mesh.proxy.streams` describes: an ``OPEN`` names the pod and the
cluster; the core decides (``Engine.decide_tunnel``: only a pod of this node, and in ACL mode
only as the grants admit the certificate's identity for a flow); the proxy connects to the pod
once (the source proxy retries, elsewhere if it may) and answers ``REPLY``; then ``DATA`` and
``EOF`` frames are relayed to and from the pod with half-close and flow control both ways. When
both directions ended, the connection waits for the source's next ``OPEN``. A reset of the pod
aborts the tunnel connection (the source resets its client); a lost tunnel resets the pod's
connection. An open flow is judged again by each new config (revocation) on the identity of
its certificate.

A UDP session (``Simmesh-Protocol: udp`` in its ``OPEN``) gets a connected UDP socket towards
the pod: each ``DATA`` frame is sent as one datagram, each datagram from the pod comes back as
one ``DATA`` frame; the source's ``EOF`` ends the session (the socket closes, ``EOF`` answers).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any, cast

from mesh.core.lifecycle import Delivered, Lifecycle
from mesh.core.policies import Failure
from mesh.core.routing import Decision, Endpoint, Router
from mesh.proxy.context import Context
from mesh.proxy.forward import connect_flow, tunnel_target
from mesh.proxy.resources import Slot, UpstreamLimit
from mesh.proxy.streams import (
    CALLER,
    DATA,
    EOF,
    MAX_OPEN,
    OPEN,
    PROTOCOL,
    REPLY,
    Deframer,
    FrameError,
    frame,
)
from mesh.proxy.upstream import UpstreamError

log = logging.getLogger("simmesh.proxy.tunnel")
_HIGH_WATER = 1 << 20
_KINDS = ("tcp", "udp")


class _Pod(asyncio.Protocol):
    """The connection to the pod of one flow."""

    def __init__(self, server: StreamServer, slot: Slot) -> None:
        self.server = server
        self.slot = slot
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.transport.set_write_buffer_limits(high=_HIGH_WATER)

    def data_received(self, data: bytes) -> None:
        server = self.server
        server.tx += len(data)
        if server.transport is not None:
            server.transport.write(frame(DATA, data))

    def eof_received(self) -> bool:
        self.server.pod_eof()
        return True

    def pause_writing(self) -> None:
        if self.server.transport is not None:
            self.server.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.server.transport is not None and not self.server.transport.is_closing():
            self.server.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.slot.release()
        self.server.pod_lost(self, exc)


class _PodDatagrams(asyncio.DatagramProtocol):
    """The UDP socket towards the pod of one session."""

    def __init__(self, server: StreamServer) -> None:
        self.server = server
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: Any) -> None:
        server = self.server
        server.tx += len(data)
        if server.transport is not None:
            server.transport.write(frame(DATA, data))

    def error_received(self, exc: Exception) -> None:
        self.server.failure = Failure.RESET  # e.g. ICMP port unreachable

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.pod_lost(self, exc)


class StreamServer(asyncio.Protocol):
    """One stream tunnel connection (TLS, authenticated as ``identity``)."""

    def __init__(
        self,
        ctx: Context,
        identity: str,
        peer_ip: str,
        port: int,
        registry: set[StreamServer],
        on_close: Callable[[], None],
    ) -> None:
        self.ctx = ctx
        self.identity = identity
        self.peer_ip = peer_ip  # the source proxy's address
        self.port = port
        self.registry = registry
        self.on_close: Callable[[], None] | None = on_close
        self.transport: asyncio.Transport | None = None
        self.frames = Deframer()
        self.state = "idle"  # idle, connecting, open (a flow), closed
        self.kind = "tcp"  # or udp: the flow's protocol
        self.pod: _Pod | _PodDatagrams | None = None
        self.task: asyncio.Task[None] | None = None
        self.retiring = False  # the proxy stops: close once no flow is open
        self._reset_flow()

    def _reset_flow(self) -> None:
        self.decision: Decision | None = None
        self.endpoint: Endpoint | None = None
        self.life: Lifecycle | None = None
        self.caller = ""
        self.eof_in = self.eof_out = self.pod_gone = False
        self.failure: Failure | None = None
        self.reason = "closed"
        self.rx = self.tx = 0
        self.started = self.connected = time.monotonic()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.transport.set_write_buffer_limits(high=_HIGH_WATER)
        self.registry.add(self)

    # -- frames from the source proxy ---------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        try:
            frames = self.frames.feed(data)
        except FrameError as exc:
            self._broken(str(exc))
            return
        for kind, payload in frames:
            if kind == OPEN and self.state == "idle" and len(payload) <= MAX_OPEN:
                self._open(payload)
            elif kind == DATA and self.state == "open" and not self.eof_in:
                self.rx += len(payload)
                pod = self.pod
                if isinstance(pod, _PodDatagrams):
                    if pod.transport is not None:
                        pod.transport.sendto(payload)
                elif pod is not None and pod.transport is not None:
                    pod.transport.write(payload)
            elif kind == EOF and self.state == "open" and not self.eof_in:
                self.eof_in = True
                pod = self.pod
                if isinstance(pod, _PodDatagrams):  # the session is over
                    self.pod_eof()
                elif (
                    pod is not None and pod.transport is not None and pod.transport.can_write_eof()
                ):
                    pod.transport.write_eof()
                self._maybe_done()
            else:
                self._broken(f"unexpected frame type {kind} while {self.state}")
                return

    def _broken(self, why: str) -> None:
        self._warn("protocol", why)
        self.abort()

    def _open(self, payload: bytes) -> None:
        self._reset_flow()
        snapshot = self.ctx.snapshot
        items = []
        for line in payload.decode("utf-8", "replace").split("\r\n"):
            name, sep, value = line.partition(":")
            if sep:
                items.append((name.strip(), value.strip()))
        self.caller = next((v for n, v in items if n.lower() == CALLER), "")
        protocols = [v for n, v in items if n.lower() == PROTOCOL]
        self.kind = protocols[0] if len(protocols) == 1 else "tcp"
        address, cluster = tunnel_target(items)
        if address is None or cluster is None or len(protocols) > 1 or self.kind not in _KINDS:
            self.ctx.metrics.count("bad_requests", "400")
            self._reply(
                "400 bad-request: an OPEN needs one Simmesh-Target, one Simmesh-Cluster "
                "and at most one Simmesh-Protocol (udp)"
            )
            return
        if snapshot is None:
            self._reply("503 no-config: the proxy has not received a config yet")
            return
        compiled = snapshot.router.clusters.get(cluster)
        if compiled is not None and compiled.protocol != self.kind:
            # a raw stream to an HTTP service's pod would pass by its per-request checks
            self.ctx.metrics.count("bad_requests", "400")
            self._reply(f"400 bad-request: {compiled.service} is not a {self.kind} service")
            return
        d = self.decision = snapshot.engine.decide_tunnel(
            cluster=cluster,
            ip=address[0],
            port=address[1],
            node=self.ctx.options.node,
            source=self.identity,
            request=None,
        )
        if not d.allowed:
            self.reason = d.reason.value
            self.ctx.metrics.deny(self.service, self.kind, d.reason.value)
            self._count()
            self._reply(f"{d.status or 403} {d.reason.value}: {d.detail}")
            return
        self.state = "connecting"
        self.ctx.metrics.opened(self.kind)
        self.task = asyncio.get_running_loop().create_task(self._connect(d))

    def _reply(self, text: str) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(frame(REPLY, text.encode()[:MAX_OPEN]))

    async def _connect(self, d: Decision) -> None:
        loop = asyncio.get_running_loop()
        timeout = self.ctx.options.connect_timeout
        snapshot = self.ctx.snapshot
        assert snapshot is not None

        async def connect(endpoint: Endpoint) -> _Pod | _PodDatagrams:
            if self.kind == "udp":
                try:
                    _, datagrams = await loop.create_datagram_endpoint(
                        lambda: _PodDatagrams(self), remote_addr=(endpoint.ip, endpoint.port)
                    )
                except OSError as exc:
                    raise UpstreamError(Failure.CONNECT, f"{endpoint.key}: {exc!r}") from exc
                return datagrams

            async def open_(slot: Slot) -> _Pod:
                async with asyncio.timeout(timeout):
                    _, pod = await loop.create_connection(
                        lambda: _Pod(self, slot), endpoint.ip, endpoint.port
                    )
                return pod

            try:
                return await self.ctx.upstreams.connect(open_, where=endpoint.key)
            except (OSError, TimeoutError) as exc:
                raise UpstreamError(Failure.CONNECT, f"{endpoint.key}: {exc!r}") from exc

        try:
            pod, self.life = await connect_flow(snapshot.engine, d, connect, rng=self.ctx.rng)
        except (UpstreamLimit, UpstreamError) as exc:
            limited = isinstance(exc, UpstreamLimit)
            self.reason = "upstream-connection-limit" if limited else "upstream-connect-failed"
            if not limited:
                self.ctx.metrics.failure(self.service, Failure.CONNECT.value)
            if self.state == "connecting":
                self.state = "idle"
                self._reply(f"{503 if limited else 502} {self.reason}: {exc}")
            self._count(closed=True)
            return
        if self.state != "connecting":  # the tunnel went away meanwhile
            if pod.transport is not None:
                pod.transport.abort()
            self.failure = Failure.RESET
            self.life.handle(Delivered(self.failure), time.monotonic())
            self._count(closed=True)
            return
        self.pod, self.endpoint = pod, self.life.endpoint
        self.state = "open"
        self.reason = "forwarded"
        self.connected = time.monotonic()
        self.ctx.flows.add(self)
        self._reply("200 connected")

    # -- the pod's side -----------------------------------------------------------------------

    def pod_eof(self) -> None:
        if not self.eof_out:
            self.eof_out = True
            if self.transport is not None:
                self.transport.write(frame(EOF))
            self._maybe_done()

    def pod_lost(self, pod: _Pod | _PodDatagrams, exc: Exception | None) -> None:
        if pod is not self.pod:
            return
        self.pod_gone = True
        if exc is not None:  # a reset: the source resets its client
            self.failure = Failure.RESET
            self._end_flow()
            if self.transport is not None:
                self.transport.abort()
            return
        if not self.eof_out:  # closed without a half-close first: both directions end
            self.pod_eof()
        self._maybe_done()

    def _maybe_done(self) -> None:
        """Both directions ended: the flow is over, the connection waits for the next."""
        if not (self.eof_in and self.eof_out):
            return
        pod = self.pod
        if pod is not None and pod.transport is not None and not self.pod_gone:
            pod.transport.close()
        self._end_flow()

    def _end_flow(self) -> None:
        if self.state != "open":
            return
        self.state = "idle"
        self.pod = None
        if self.life is not None and not self.life.done:
            self.life.handle(Delivered(self.failure), time.monotonic())
        self._count(closed=True)
        if self.retiring and self.transport is not None:
            self.transport.close()

    def retire(self) -> None:
        """The proxy stops accepting: an idle connection closes now, a busy one after its
        flow (the source proxy opens its next flow elsewhere or anew)."""
        self.retiring = True
        if self.state == "idle" and self.transport is not None:
            self.transport.abort()  # at a frame boundary: nothing is lost

    @property
    def busy(self) -> bool:
        return self.state in ("connecting", "open")

    # -- the tunnel connection ----------------------------------------------------------------

    def pause_writing(self) -> None:
        pod = self.pod
        if isinstance(pod, _Pod) and pod.transport is not None:
            pod.transport.pause_reading()

    def resume_writing(self) -> None:
        pod = self.pod
        if isinstance(pod, _Pod) and pod.transport is not None and not pod.transport.is_closing():
            pod.transport.resume_reading()

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        pod = self.pod
        if self.state == "open":  # the source went away under the flow: reset the pod
            if not (self.eof_in and self.eof_out):
                self.failure = Failure.RESET
            if pod is not None and pod.transport is not None:
                pod.transport.abort()
            self._end_flow()
        self.state = "closed"  # (a flow still connecting is ended by _connect)
        self.registry.discard(self)
        self.ctx.gate.leave(self.peer_ip)
        if self.on_close is not None:
            self.on_close()
            self.on_close = None

    def abort(self) -> None:
        if self.pod is not None and self.pod.transport is not None:
            self.pod.transport.abort()
        if self.transport is not None:
            self.transport.abort()

    # -- a flow (revocation, metrics) ---------------------------------------------------------

    @property
    def service(self) -> str:
        d = self.decision
        return d.route.service if d is not None and d.route is not None else "-"

    def readmitted(self, router: Router) -> bool:
        d, endpoint = self.decision, self.endpoint
        if d is None or d.cluster is None or endpoint is None:
            return True
        return router.readmits(
            cluster=d.cluster.key, endpoint=endpoint, source_ip="", identity=self.identity
        )

    def revoke(self) -> None:
        self.reason = "revoked"
        self.abort()

    def _count(self, *, closed: bool = False) -> None:
        self.ctx.flows.discard(self)
        metrics = self.ctx.metrics
        if closed:
            metrics.closed(self.kind)
            metrics.transferred(self.service, self.kind, self.rx, self.tx)
        d = self.decision
        if d is not None:
            metrics.called(self.service, self.kind, self.identity, self._code(d))
            if self.reason == "forwarded" and d.cluster is not None:
                metrics.served(d.cluster.service, time.monotonic() - self.connected)
        access = self.ctx.access_log
        if access is not None:
            access.write(self._record())

    def _code(self, d: Decision) -> int:
        if not d.allowed:
            return d.status or 403
        if self.reason in ("forwarded", "revoked"):
            return 200
        return 503 if self.reason == "upstream-connection-limit" else 502

    def _record(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "listener": self.port,
            "client": self.caller,
            "tunnel_from": self.peer_ip,
            "identity": self.identity,
            "service": self.service,
            "endpoint": self.endpoint.key if self.endpoint is not None else None,
            "reason": self.reason,
            "failure": self.failure.value if self.failure is not None else None,
            "bytes_in": self.rx,
            "bytes_out": self.tx,
            "duration_ms": round((time.monotonic() - self.started) * 1000.0, 3),
            "config": self.ctx.snapshot.version if self.ctx.snapshot is not None else None,
        }

    def _warn(self, reason: str, detail: str) -> None:
        log.warning(
            "stream tunnel from %s (%s): %s: %s", self.peer_ip, self.identity, reason, detail
        )
