"""Listeners: one socket per (port, protocol) of the applied config, reconciled on reload.

:class:`ListenerSet` diffs the wanted set against the open one: a reload opens only added
listeners and closes only removed ones; the others keep their sockets and connections. A
closed listener stops accepting at once; its open connections finish what they are doing
(HTTP keep-alive connections close after their current request; TCP flows and UDP sessions
run to their end). A port that cannot be bound is reported (log, metric, ``/config``) and
tried again on the next reload.

An HTTP listener serves HTTP/1.1 and h2c prior knowledge on one port: :class:`Sniffer` reads
the first bytes of a connection and hands it to the HTTP/2 or the HTTP/1.1 protocol. It first
asks the connection gate (:mod:`mesh.proxy.limits`) whether the peer may connect at all; the
protocol it hands the connection to gives the place back when the connection ends.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Protocol, cast

from mesh.proxy.context import Context
from mesh.proxy.h2common import PREFACE
from mesh.proxy.h2server import H2Server
from mesh.proxy.http1 import H1Server
from mesh.proxy.tcp import TcpListener
from mesh.proxy.udp import UdpListener

log = logging.getLogger("simmesh.proxy")


class Listener(Protocol):
    port: int
    protocol: str

    async def open(self, host: str) -> None: ...

    def close(self) -> None: ...

    def active(self) -> int: ...

    def abort(self) -> None: ...


class Sniffer(asyncio.Protocol):
    """The first bytes of an HTTP listener's connection: HTTP/2 preface or HTTP/1.x?"""

    __slots__ = ("_buffer", "_timer", "admitted", "listener", "peer_ip", "transport")

    def __init__(self, listener: HttpListener) -> None:
        self.listener = listener
        self.transport: asyncio.Transport | None = None
        self.peer_ip = ""
        self.admitted = False
        self._buffer = b""
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        self.peer_ip = peer[0] if peer else ""
        if not self.listener.ctx.gate.admit(self.peer_ip, "http"):
            self.transport.abort()
            return
        self.admitted = True
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(self.listener.header_timeout, self._timeout)
        self.listener.pending.add(self)
        self.listener.ctx.gate.pending += 1

    def _timeout(self) -> None:
        self._timer = None
        phase = "h2c-preface" if self._buffer else "headers"
        self.listener.ctx.metrics.count("client_timeouts", phase)
        if self.transport is not None:
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        buffered = self._buffer + data
        if len(buffered) < len(PREFACE) and PREFACE.startswith(buffered):
            self._buffer = buffered
            return
        self._stop()
        transport = self.transport
        assert transport is not None
        protocol: asyncio.Protocol
        if buffered.startswith(PREFACE):
            protocol = self.listener.h2.connection()
        else:
            protocol = self.listener.h1.connection()
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
        protocol.data_received(buffered)

    def _stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self in self.listener.pending:
            self.listener.pending.discard(self)
            self.listener.ctx.gate.pending -= 1

    def connection_lost(self, exc: Exception | None) -> None:
        """Closed before its protocol was known (afterwards that protocol is told)."""
        self._stop()
        if self.admitted:
            self.listener.ctx.gate.leave(self.peer_ip)

    def retire(self) -> None:
        if self.transport is not None:
            self.transport.close()


class HttpListener:
    """HTTP/1.1 and h2c prior knowledge on one port."""

    protocol = "http"

    def __init__(self, ctx: Context, port: int) -> None:
        self.ctx = ctx
        self.port = port
        self.header_timeout = ctx.options.header_timeout
        self.pending: set[Sniffer] = set()
        self.h1 = H1Server(ctx, port)
        self.h2 = H2Server(ctx, port)
        self.h2_conns = self.h2.connections
        self._server: asyncio.Server | None = None

    async def open(self, host: str) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: Sniffer(self),
            host,
            self.port,
            reuse_address=True,
            reuse_port=self.ctx.options.workers > 1 or None,
            backlog=1024,
        )

    def part(self) -> None:
        """The proxy drains but still accepts: h2c connections get GOAWAY once idle (HTTP/1.1
        answers say ``Connection: close`` by themselves, see ``H1Connection.closing``)."""
        self.h2.part_all()

    def close(self) -> None:
        if self._server is not None:
            self._server.close()
        self.h1.retire_all()
        self.h2.retire_all()
        for sniffer in list(self.pending):
            sniffer.retire()

    def active(self) -> int:
        return self.h1.active() + self.h2.active()

    def abort(self) -> None:
        self.h1.abort_all()
        self.h2.abort_all()


class ListenerSet:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.open: dict[tuple[int, str], Listener] = {}
        self.failed: dict[tuple[int, str], str] = {}
        self.retired: list[Listener] = []
        self._lock = asyncio.Lock()

    def _make(self, port: int, protocol: str) -> Listener:
        if protocol == "http":
            return HttpListener(self.ctx, port)
        if protocol == "tcp":
            return TcpListener(self.ctx, port)
        return UdpListener(self.ctx, port)

    async def reconcile(self, wanted: tuple[tuple[int, str], ...]) -> None:
        async with self._lock:
            keys = set(wanted)
            for key in sorted(set(self.open) - keys):
                listener = self.open.pop(key)
                listener.close()
                self.retired.append(listener)
                log.info("closed %s listener on port %d", key[1], key[0])
            self.failed = {k: v for k, v in self.failed.items() if k in keys}
            self.retired = [item for item in self.retired if item.active()]
            for key in sorted(keys - set(self.open)):
                listener = self._make(*key)
                try:
                    await listener.open(self.ctx.options.bind)
                except OSError as exc:
                    self.failed[key] = str(exc)
                    self.ctx.metrics.count("listener_errors", key[1])
                    log.error("cannot open %s listener on port %d: %s", key[1], key[0], exc)
                    continue
                self.failed.pop(key, None)
                self.open[key] = listener
                log.info("opened %s listener on port %d", key[1], key[0])

    def part(self) -> None:
        for listener in self.open.values():
            if isinstance(listener, HttpListener):
                listener.part()

    def stop_accepting(self) -> None:
        for listener in self.open.values():
            listener.close()

    def active(self) -> int:
        listeners = [*self.open.values(), *self.retired]
        return sum(listener.active() for listener in listeners)

    def abort(self) -> None:
        for listener in [*self.open.values(), *self.retired]:
            listener.abort()
        self.open.clear()
        self.retired.clear()
