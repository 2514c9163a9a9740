"""mTLS pipes: tunnel connections to one pod, authorised once for every request they carry.

A source proxy opens a pipe (ALPN ``simmesh-pipe/1``) instead of a per-request tunnel
connection when its own config says that the calling identity may send the pod *any* request
(``Router.whole_access``: access control off, or a grant with no route match, or one every
request meets) and the service is plain ``http``. Its first line names the target once::

    <cluster> <pod ip>:<port>\\r\\n

and it waits for this proxy's one-line answer before it sends a request:

- ``+``: **spliced**. The core (``Engine.decide_pipe``) admitted the connection as a whole:
  the pod is a ready endpoint of the cluster on this node and the certificate's identity may
  send it every request. This proxy connects to the pod once and from then on copies bytes
  both ways without reading them (the source proxy made every routing decision and reads the
  responses itself), with backpressure each way. The connection is a flow: every new config
  judges it again and ends it at once when the pod left, the grant narrowed to some requests
  or went away (``simmesh_proxy_revoked_flows_total``); a request in flight on it fails
  (reset) at the source, which retries by the service's rules.
- ``=``: **per request**. Anything else (the grants depend on the request, the cluster is
  ``https``, the pod is not this node's, no config yet, the pod refused the connection): the
  connection is handed to the HTTP/1.1 front end, and the source proxy sends each request with
  its ``Simmesh-Target`` and ``Simmesh-Cluster`` lines, each decided here by
  ``Engine.decide_tunnel`` exactly as on a ``simmesh-tunnel/1`` connection.

Why: on a tunnel connection every request is parsed, decided and forwarded a second time by
the destination proxy, which made mTLS cost 2.6-3.7x the CPU of plaintext per request
(BENCHMARKS.md). When the decision cannot depend on the request, making it per request buys
nothing; a spliced pipe costs the destination proxy a relay. What the destination proxy no
longer does for a spliced pipe's requests: count them in its own request metrics, log them or
trace them (the source proxy does all three, with the caller's identity); and it cannot take
a pod's ``X-Simmesh-Reason`` off its responses, so the source proxy does not read that header
on a spliced pipe (the pod's answers are the pod's, as in plaintext).

Retirement (the proxy stops): a pipe that is opening is aborted (the source proxy never sent
it a request); a spliced one closes once it has been quiet since the pod's last bytes
(between responses), checked every :data:`QUIET` seconds; the drain deadline aborts the rest.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Callable
from typing import Final, cast

from mesh.core.routing import Decision, Engine, Router
from mesh.core.schema import host_port
from mesh.proxy.context import Context
from mesh.proxy.http1 import H1Server
from mesh.proxy.resources import Slot, UpstreamLimit

log = logging.getLogger("simmesh.proxy.tunnel")

SPLICED: Final = b"+\r\n"
PER_REQUEST: Final = b"=\r\n"
MAX_OPEN: Final = 512  # bytes of the first line: a cluster key and an address
QUIET: Final = 0.25  # a retiring pipe closes after this long with no bytes since the pod's
_HIGH_WATER: Final = 1 << 20
_WARNED: dict[str, float] = {}  # identity -> when a broken pipe of it was last logged


class _Pod(asyncio.Protocol):
    """The pipe's connection to its pod."""

    def __init__(self, pipe: Pipe, slot: Slot) -> None:
        self.pipe = pipe
        self.slot = slot
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.transport.set_write_buffer_limits(high=_HIGH_WATER)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        pipe = self.pipe
        pipe.tx += len(data)
        pipe.answered = True
        transport = pipe.transport
        if transport is not None:
            transport.write(data)

    def eof_received(self) -> bool:
        return False  # the transport closes: connection_lost closes the pipe

    def pause_writing(self) -> None:
        transport = self.pipe.transport
        if transport is not None:
            transport.pause_reading()

    def resume_writing(self) -> None:
        transport = self.pipe.transport
        if transport is not None and not transport.is_closing():
            transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.slot.release()
        self.pipe.pod_lost(exc)


class Pipe(asyncio.Protocol):
    """One pipe connection (TLS, authenticated as ``identity``): see the module docstring."""

    kind = "http"  # a Flow (mesh.proxy.flows): revoked as HTTP

    def __init__(
        self,
        ctx: Context,
        identity: str,
        peer_ip: str,
        h1: H1Server,
        registry: set[Pipe],
        on_close: Callable[[], None],
    ) -> None:
        self.ctx = ctx
        self.identity = identity
        self.peer_ip = peer_ip
        self.h1 = h1
        self.registry = registry
        self.on_close: Callable[[], None] | None = on_close
        self.transport: asyncio.Transport | None = None
        self.state = "opening"  # opening, connecting, open, closed (or handed to h1)
        self.buffer = b""
        self.cluster = ""
        self.address = ""
        self.decision: Decision | None = None
        self.pod: _Pod | None = None
        self.task: asyncio.Task[None] | None = None
        self.rx = self.tx = 0  # bytes to and from the pod
        self.answered = True  # the last bytes came from the pod (or none yet)
        self.retiring = False
        self._seen = -1  # rx + tx at the last quiet check
        self._timer: asyncio.TimerHandle | None = None

    # -- the tunnel connection ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.transport.set_write_buffer_limits(high=_HIGH_WATER)
        self.registry.add(self)
        self._timer = asyncio.get_running_loop().call_later(
            self.ctx.options.header_timeout, self._opening_timeout
        )

    def data_received(self, data: bytes) -> None:
        if self.state == "open":
            self.rx += len(data)
            self.answered = False
            pod = self.pod
            if pod is not None and pod.transport is not None:
                pod.transport.write(data)
            return
        if self.state != "opening":  # a request before the answer: the source must wait
            self._broken("bytes before the pipe's answer")
            return
        buffer = self.buffer = self.buffer + data
        end = buffer.find(b"\r\n")
        if end < 0:
            if len(buffer) > MAX_OPEN:
                self._broken(f"no line in the first {MAX_OPEN} bytes")
            return
        if end + 2 != len(buffer):
            self._broken("bytes before the pipe's answer")
            return
        self.buffer = b""
        self._open(buffer[:end])

    def _open(self, line: bytes) -> None:
        _stop(self._timer)
        self._timer = None
        cluster, _, address = line.decode("utf-8", "replace").partition(" ")
        try:
            ip, port = host_port(address)
        except ValueError:
            ip, port = "", 0
        if not cluster or not ip:
            self.ctx.metrics.count("bad_requests", "400")
            self._broken(f"expected '<cluster> <ip>:<port>', got {line[:100]!r}")
            return
        self.cluster, self.address = cluster, address
        snapshot = self.ctx.snapshot
        if snapshot is None:
            self._per_request()
            return
        d = snapshot.engine.decide_pipe(
            cluster=cluster, ip=ip, port=port, node=self.ctx.options.node, source=self.identity
        )
        if not d.allowed:
            self._per_request()
            return
        self.decision = d
        self.state = "connecting"
        self.task = asyncio.get_running_loop().create_task(self._connect(d))

    async def _connect(self, d: Decision) -> None:
        endpoint = d.endpoint
        assert endpoint is not None
        loop = asyncio.get_running_loop()
        timeout = self.ctx.options.connect_timeout

        async def open_(slot: Slot) -> _Pod:
            async with asyncio.timeout(timeout):
                _, pod = await loop.create_connection(
                    lambda: _Pod(self, slot), endpoint.ip, endpoint.port
                )
            return pod

        try:
            pod = await self.ctx.upstreams.connect(open_, where=endpoint.key)
        except (OSError, TimeoutError, UpstreamLimit):
            # the per-request path reports it request by request (502 or 503, with the reason
            # the source proxy reads), as on a tunnel connection
            if self.state == "connecting":
                self._per_request()
            return
        if self.state != "connecting":  # the source went away meanwhile
            if pod.transport is not None:
                pod.transport.abort()
            return
        self.pod = pod
        self.state = "open"
        self.ctx.flows.add(self)
        self.ctx.metrics.count("tunnel_pipes", "spliced")
        self.ctx.metrics.opened("pipe")
        if self.transport is not None:
            self.transport.write(SPLICED)
        if self.retiring:
            self._check_quiet()

    def _per_request(self) -> None:
        """Hand the connection to the HTTP/1.1 front end: each request is decided here."""
        transport = self.transport
        self.state = "closed"
        self.registry.discard(self)
        if transport is None or transport.is_closing():
            return
        self.ctx.metrics.count("tunnel_pipes", "per-request")
        transport.write(PER_REQUEST)
        front = self.h1.connection()
        front.peer_identity = self.identity
        front.on_close, self.on_close = self.on_close, None
        transport.set_protocol(front)
        front.connection_made(transport)
        if self.retiring:
            front.retire()

    def _opening_timeout(self) -> None:
        self._timer = None
        if self.state == "opening":
            self._broken("no target line in time")

    def _broken(self, why: str) -> None:
        now = asyncio.get_running_loop().time()
        if now - _WARNED.get(self.identity, -1e9) >= 10.0:  # a line per 10 s per identity
            _WARNED[self.identity] = now
            if len(_WARNED) > 1024:
                _WARNED.clear()
            log.warning("pipe from %s (%s) aborted: %s", self.peer_ip, self.identity, why)
        self.abort()

    def pause_writing(self) -> None:
        pod = self.pod
        if pod is not None and pod.transport is not None:
            pod.transport.pause_reading()

    def resume_writing(self) -> None:
        pod = self.pod
        if pod is not None and pod.transport is not None and not pod.transport.is_closing():
            pod.transport.resume_reading()

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        was_open = self.state == "open"
        self.state = "closed"
        _stop(self._timer)
        self._timer = None
        pod = self.pod
        if pod is not None and pod.transport is not None:
            if exc is None:
                pod.transport.close()
            else:
                pod.transport.abort()
        self._done(was_open)
        self.ctx.gate.leave(self.peer_ip)
        if self.on_close is not None:
            self.on_close()
            self.on_close = None

    def _done(self, was_open: bool) -> None:
        self.registry.discard(self)
        if was_open:
            self.ctx.flows.discard(self)
            self.ctx.metrics.closed("pipe")
            self.ctx.metrics.transferred(self.service, "http", self.rx, self.tx)

    def pod_lost(self, exc: Exception | None) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if exc is None:
            transport.close()  # what the pod sent is flushed first
        else:
            transport.abort()  # a reset: the source resets its request

    # -- a flow (revocation, metrics) ---------------------------------------------------------

    @property
    def service(self) -> str:
        d = self.decision
        if d is not None and d.route is not None:
            return d.route.service
        return d.cluster.service if d is not None and d.cluster is not None else "-"

    def readmitted(self, router: Router) -> bool:
        """Whether the new config still admits the pipe as a whole."""
        try:
            ip, port = host_port(self.address)
        except ValueError:
            return False
        d = Engine(router).decide_pipe(
            cluster=self.cluster, ip=ip, port=port, node=self.ctx.options.node, source=self.identity
        )
        return d.allowed

    def revoke(self) -> None:
        log.info(
            "pipe from %s (%s) to %s ended: the new config no longer admits it as a whole",
            self.peer_ip,
            self.identity,
            self.address,
        )
        self.abort()

    # -- the proxy stops ----------------------------------------------------------------------

    def retire(self) -> None:
        self.retiring = True
        if self.state == "opening":
            self.abort()
        elif self.state == "open":
            self._check_quiet()

    def _check_quiet(self) -> None:
        self._timer = None
        if self.state != "open":
            return
        seen = self.rx + self.tx
        if seen == self._seen and self.answered:
            if self.transport is not None:
                self.transport.close()
            return
        self._seen = seen
        self._timer = asyncio.get_running_loop().call_later(QUIET, self._check_quiet)

    def abort(self) -> None:
        pod = self.pod
        if pod is not None and pod.transport is not None:
            pod.transport.abort()
        if self.task is not None and not self.task.done():
            self.task.cancel()
        if self.transport is not None:
            self.transport.abort()


def _stop(timer: asyncio.TimerHandle | None) -> None:
    if timer is not None:
        timer.cancel()
