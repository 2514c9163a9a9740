"""The tunnel port: requests from other nodes' proxies, over mutual TLS, for this node's pods.

A connection is accepted as plain TCP and then upgraded with ``loop.start_tls`` (server side,
the :class:`~mesh.proxy.mtls.TunnelTls` context: TLS 1.3, a client certificate required and
verified against the trust bundle, this node's certificate chosen by SNI), so every failed
handshake is seen here and counted by reason (plaintext, an untrusted or missing client
certificate, an old TLS version...). Once the peer's certificate proves a workload identity
of the trust domain (:meth:`~mesh.proxy.mtls.TunnelTls.peer_identity`), the connection is
handed, with that identity, to what its ALPN protocol names: the HTTP/1.1 front end
(:class:`~mesh.proxy.http1.H1Connection`, ``simmesh-tunnel/1`` or none), the h2 front end
(``simmesh-h2/1``) or the stream server (:mod:`mesh.proxy.streamserver`,
``simmesh-stream/1``, TCP flows). Every request, stream or flow on it is decided by the
core's ``Engine.decide_tunnel`` (the target must be a pod of this node the identity is
granted) and delivered to the pod, plaintext, on the node.

The tunnel port is opened while the config has mTLS on and this proxy holds certificates;
it never speaks plaintext, in permissive mode either.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from typing import cast

from mesh.proxy.context import Context
from mesh.proxy.h2server import H2Server
from mesh.proxy.http1 import H1Server
from mesh.proxy.mtls import ALPN_H2, ALPN_STREAM, PeerRefused, TunnelTls, failure_reason
from mesh.proxy.streamserver import StreamServer

log = logging.getLogger("simmesh.proxy.tunnel")


class _Accept(asyncio.Protocol):
    """A tunnel connection until its handshake and the peer's identity are checked."""

    def __init__(self, server: TunnelServer) -> None:
        self.server = server
        self.peer_ip = ""
        self.transport: asyncio.Transport | None = None
        self.task: asyncio.Task[None] | None = None
        self.early: list[bytes] = []  # decrypted before the front end took over
        self.eof = False
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        self.peer_ip = peer[0] if peer else ""
        self.transport.pause_reading()  # the ClientHello is start_tls's to read
        self.task = asyncio.get_running_loop().create_task(self._handshake())
        self.server.pending.add(self)

    async def _handshake(self) -> None:
        server = self.server
        tls = server.tls
        transport = self.transport
        assert transport is not None
        context = tls.server
        try:
            if context is None:
                raise PeerRefused("no-certificates", "this proxy holds no certificates yet")
            secured = await asyncio.get_running_loop().start_tls(
                transport,
                self,
                context,
                server_side=True,
                ssl_handshake_timeout=server.ctx.options.header_timeout,
            )
            if secured is None:
                raise ConnectionError("closed during the handshake")
            identity = tls.peer_identity(secured.get_extra_info("ssl_object"))
        except PeerRefused as exc:
            self._refuse(exc.reason, str(exc))
            return
        except (OSError, TimeoutError, ssl.SSLError) as exc:
            self._refuse(failure_reason(exc), str(exc))
            return
        finally:
            server.pending.discard(self)
        if self.lost:
            return
        if not server.ctx.gate.admit(self.peer_ip, "tunnel"):
            secured.abort()
            return
        tls.handshake("server")
        ssl_object = secured.get_extra_info("ssl_object")
        alpn = ssl_object.selected_alpn_protocol() if ssl_object is not None else None
        conn: asyncio.Protocol
        if alpn == ALPN_STREAM:
            conn = StreamServer(
                server.ctx, identity, self.peer_ip, server.port, server.streams, server.closed
            )
        else:
            front = server.h2.connection() if alpn == ALPN_H2 else server.h1.connection()
            front.peer_identity = identity
            front.on_close = server.closed
            conn = front
        secured.set_protocol(conn)
        conn.connection_made(secured)
        for data in self.early:
            conn.data_received(data)
        self.early = []
        if self.eof:
            conn.eof_received()

    def data_received(self, data: bytes) -> None:
        self.early.append(data)  # the request that followed the handshake at once

    def eof_received(self) -> bool | None:
        self.eof = True
        return True

    def _refuse(self, reason: str, detail: str) -> None:
        self.server.tls.failed("server", reason)
        self.server.warn(reason, self.peer_ip, detail)
        if self.transport is not None:
            self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.server.pending.discard(self)


class TunnelServer:
    """The tunnel port's listener."""

    protocol = "tunnel"

    def __init__(self, ctx: Context, tls: TunnelTls) -> None:
        self.ctx = ctx
        self.tls = tls
        self.port = tls.port
        self.h1 = H1Server(ctx, tls.port)
        self.h2 = H2Server(ctx, tls.port)
        self.streams: set[StreamServer] = set()
        self.pending: set[_Accept] = set()
        self._server: asyncio.Server | None = None
        self._warned: dict[str, float] = {}

    async def open(self, host: str) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _Accept(self), host, self.port, reuse_address=True, backlog=1024
        )
        if self.port == 0:
            self.port = self._server.sockets[0].getsockname()[1]

    @property
    def is_open(self) -> bool:
        return self._server is not None

    def closed(self) -> None:
        self.tls.closed("server")

    def warn(self, reason: str, peer: str, detail: str) -> None:
        """At most a line per 10 s per reason."""
        now = asyncio.get_running_loop().time()
        if now - self._warned.get(reason, -1e9) >= 10.0:
            self._warned[reason] = now
            log.warning("tunnel from %s refused: %s: %s", peer, reason, detail)

    def close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        self.h1.retire_all()
        self.h2.retire_all()
        for stream in list(self.streams):
            stream.retire()
        for accept in list(self.pending):
            if accept.transport is not None:
                accept.transport.abort()

    def active(self) -> int:
        return self.h1.active() + self.h2.active() + sum(s.busy for s in self.streams)

    def abort(self) -> None:
        self.h1.abort_all()
        self.h2.abort_all()
        for stream in list(self.streams):
            stream.abort()
