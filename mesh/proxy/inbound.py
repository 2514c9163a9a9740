"""The tunnel port: requests from other nodes' proxies, over mutual TLS, for this node's pods.

A connection is accepted and secured at once with ``loop.connect_accepted_socket`` (server
side, the :class:`~mesh.proxy.mtls.TunnelTls` context of that moment: TLS 1.3, a client
certificate required and verified against the trust bundle, this node's certificate chosen by
SNI), so every failed handshake is seen here and counted by reason (plaintext, an untrusted
or missing client certificate, an old TLS version...). Once the peer's certificate proves a
workload identity of the trust domain (:meth:`~mesh.proxy.mtls.TunnelTls.peer_identity`), the
connection is handed, with that identity, to what its ALPN protocol names: the HTTP/1.1 front end
(:class:`~mesh.proxy.http1.H1Connection`, ``simmesh-tunnel/1`` or none), a pipe
(:mod:`mesh.proxy.pipe`, ``simmesh-pipe/1``: HTTP/1.1 to one pod, spliced when its grant
does not depend on the request), the h2 front end (``simmesh-h2/1``) or the stream server
(:mod:`mesh.proxy.streamserver`, ``simmesh-stream/1``, TCP flows). Every request, stream or
flow on it, or a spliced pipe as a whole, is decided by the core's ``Engine.decide_tunnel``
(``decide_pipe``) (the target must be a pod of this node the identity is granted) and
delivered to the pod, plaintext, on the node.

The tunnel port is opened while the config has mTLS on and this proxy holds certificates;
it never speaks plaintext, in permissive mode either.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from typing import cast

from mesh.proxy.context import Context
from mesh.proxy.h2server import H2Server
from mesh.proxy.http1 import H1Server
from mesh.proxy.mtls import (
    ALPN_H2,
    ALPN_PIPE,
    ALPN_STREAM,
    PeerRefused,
    TunnelTls,
    failure_reason,
)
from mesh.proxy.pipe import Pipe
from mesh.proxy.streamserver import StreamServer

log = logging.getLogger("simmesh.proxy.tunnel")


class _Accept(asyncio.Protocol):
    """A tunnel connection whose TLS handshake completed: the peer's identity is checked and
    the connection handed, in ``connection_made`` itself (so no byte can arrive before), to
    the front end its ALPN protocol names."""

    def __init__(self, server: TunnelServer, peer_ip: str) -> None:
        self.server = server
        self.peer_ip = peer_ip

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        server, tls = self.server, self.server.tls
        secured = cast(asyncio.Transport, transport)
        ssl_object = secured.get_extra_info("ssl_object")
        try:
            identity = tls.peer_identity(ssl_object)
        except PeerRefused as exc:
            server.refuse(exc.reason, self.peer_ip, str(exc))
            secured.abort()
            return
        if not server.ctx.gate.admit(self.peer_ip, "tunnel"):
            secured.abort()
            return
        tls.handshake("server")
        alpn = ssl_object.selected_alpn_protocol() if ssl_object is not None else None
        conn: asyncio.Protocol
        if alpn == ALPN_PIPE:
            conn = Pipe(server.ctx, identity, self.peer_ip, server.h1, server.pipes, server.closed)
        elif alpn == ALPN_STREAM:
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
        self.pipes: set[Pipe] = set()
        self.pending: set[asyncio.Task[None]] = set()  # handshakes under way
        self._socket: socket.socket | None = None
        self._accepting: asyncio.Task[None] | None = None
        self._warned: dict[str, float] = {}

    async def open(self, host: str) -> None:
        """Listen, and accept in a task of its own. Each accepted socket is secured with the
        context of that moment by ``connect_accepted_socket``: TLS from the first byte.
        (Accepting plain TCP and calling ``start_tls`` lost the ClientHello on uvloop, whose
        transport read it into the plain protocol despite ``pause_reading``: the handshake
        then hung until the client gave up, on every other connection or so.)"""
        loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo(
            host, self.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
        family, _, _, _, address = infos[0]
        listener = socket.socket(family, socket.SOCK_STREAM)
        try:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind(address)
            listener.listen(1024)
            listener.setblocking(False)
        except OSError:
            listener.close()
            raise
        self._socket = listener
        self.port = listener.getsockname()[1]
        self._accepting = loop.create_task(self._accept(listener))

    async def _accept(self, listener: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                sock, peer = await loop.sock_accept(listener)
            except asyncio.CancelledError:
                raise
            except OSError as exc:  # out of descriptors, say: wait, never spin
                if self._socket is None:
                    return
                log.warning("tunnel port: accept failed: %s", exc)
                await asyncio.sleep(0.1)
                continue
            task = loop.create_task(self._secure(sock, str(peer[0])))
            self.pending.add(task)
            task.add_done_callback(self.pending.discard)

    async def _secure(self, sock: socket.socket, peer_ip: str) -> None:
        context = self.tls.server
        if context is None:
            sock.close()
            self.refuse("no-certificates", peer_ip, "this proxy holds no certificates yet")
            return
        try:
            await asyncio.get_running_loop().connect_accepted_socket(
                lambda: _Accept(self, peer_ip),
                sock,
                ssl=context,
                ssl_handshake_timeout=self.ctx.options.header_timeout,
            )
        except (OSError, TimeoutError, ssl.SSLError) as exc:
            sock.close()
            self.refuse(failure_reason(exc), peer_ip, str(exc))

    def refuse(self, reason: str, peer: str, detail: str) -> None:
        self.tls.failed("server", reason)
        self.warn(reason, peer, detail)

    @property
    def is_open(self) -> bool:
        return self._socket is not None

    def closed(self) -> None:
        self.tls.closed("server")

    def warn(self, reason: str, peer: str, detail: str) -> None:
        """At most a line per 10 s per reason."""
        now = asyncio.get_running_loop().time()
        if now - self._warned.get(reason, -1e9) >= 10.0:
            self._warned[reason] = now
            log.warning("tunnel from %s refused: %s: %s", peer, reason, detail)

    def close(self) -> None:
        if self._accepting is not None:
            self._accepting.cancel()
            self._accepting = None
        if self._socket is not None:
            self._socket.close()
            self._socket = None
        self.h1.retire_all()
        self.h2.retire_all()
        for stream in list(self.streams):
            stream.retire()
        for pipe in list(self.pipes):
            pipe.retire()
        for task in list(self.pending):
            task.cancel()

    def active(self) -> int:
        streams = sum(s.busy for s in self.streams)
        return self.h1.active() + self.h2.active() + streams + len(self.pipes)

    def abort(self) -> None:
        self.h1.abort_all()
        self.h2.abort_all()
        for stream in list(self.streams):
            stream.abort()
        for pipe in list(self.pipes):
            pipe.abort()
