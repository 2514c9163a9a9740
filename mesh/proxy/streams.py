"""Raw byte streams (TCP flows) through the mTLS tunnel: the framing, and the source side.

A TCP flow to a pod of another node goes to that node's proxy over a tunnel connection opened
with ALPN ``simmesh-stream/1`` (:data:`~mesh.proxy.mtls.ALPN_STREAM`), which carries one flow
at a time as frames of a 5-byte header (type, then the payload's length, big-endian) and a
payload:

- ``OPEN`` (source -> destination): the flow's target as header lines, ``Simmesh-Target:
  <pod ip:port>``, ``Simmesh-Cluster: <cluster>``, ``Simmesh-Caller: <caller's address>``
  (telemetry only: the caller is the identity of the client certificate).
- ``REPLY`` (destination -> source): ``200 connected``, or ``<status> <reason>: <detail>``
  when the destination refused the target or could not connect to the pod. The source waits
  for it before it sends anything, so a refusal or a connect failure is a connect failure of
  the flow (retried by the core's rules, as a plaintext connect would be).
- ``DATA``: bytes of the flow, in the direction of the frame.
- ``EOF``: the sender's direction is done (a TCP half-close); the other direction goes on.

A UDP session travels the same way, its ``OPEN`` adding ``Simmesh-Protocol: udp``: each
``DATA`` frame is one datagram (boundaries kept), and the session's end is an ``EOF`` from the
source, after which the connection is closed, not pooled (sessions are long-lived).

A reset (of the client, the pod or either proxy) aborts the tunnel connection, which the other
side passes on as a reset. Why frames, not the TLS stream's own end: TLS has no half-close that
asyncio can send (an SSL transport cannot ``write_eof``), and frames also let a connection
outlive its flow: once both ``EOF`` have crossed, the connection is back at a frame boundary
and is pooled for the next flow to that node with the same pair of identities
(:class:`StreamPool`), so a handshake is paid once per pooled connection, not per flow. At
most :data:`_MAX_DIALS` handshakes per pool key are in progress at once: a flow beyond them
waits for a connection another flow releases, or for its turn to dial.

The flow's side of the relay (``mesh.proxy.tcp``'s upstream protocol) sees an ordinary
transport (:class:`FramedTransport`): ``write`` sends a ``DATA`` frame, ``write_eof`` an
``EOF``, the TLS transport's flow control pauses and resumes it.
"""

from __future__ import annotations

import asyncio
import struct
from collections import deque
from collections.abc import Callable
from typing import Any, cast

from mesh.core.policies import Failure
from mesh.core.routing import Cluster, Endpoint, Router
from mesh.proxy.mtls import ALPN_STREAM, TunnelTls, dial
from mesh.proxy.resources import Slot, UpstreamGate
from mesh.proxy.upstream import TunnelHop, UpstreamError

DATA, EOF, OPEN, REPLY = 0, 1, 2, 3
HEADER = struct.Struct("!BI")
MAX_FRAME = 1 << 20  # a larger length is a protocol error
MAX_OPEN = 4096  # an OPEN or REPLY payload
CALLER = "simmesh-caller"
PROTOCOL = "simmesh-protocol"  # "udp" for a UDP session; absent for a TCP flow
_KEEPALIVE = 60.0  # an idle pooled stream connection is closed after this
_MAX_IDLE = 64  # idle connections kept per pool key
# handshakes in progress per pool key: more flows wait for a connection that is released or
# for their turn to dial, so a burst of flows does not become a burst of handshakes
_MAX_DIALS = 4

Key = tuple[str, int, str]  # the destination proxy's address, the pool (identities)


class FrameError(Exception):
    """The peer broke the framing."""


def frame(kind: int, payload: bytes = b"") -> bytes:
    return HEADER.pack(kind, len(payload)) + payload


class Deframer:
    """Received bytes as whole frames, in order."""

    __slots__ = ("_rest",)

    def __init__(self) -> None:
        self._rest = b""

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        if self._rest:
            data = self._rest + data
            self._rest = b""
        frames = []
        pos, size = 0, len(data)
        while size - pos >= 5:
            kind, length = HEADER.unpack_from(data, pos)
            if kind > REPLY or length > MAX_FRAME:
                raise FrameError(f"bad frame: type {kind}, length {length}")
            end = pos + 5 + length
            if end > size:
                break
            frames.append((kind, data[pos + 5 : end]))
            pos = end
        if pos < size:
            self._rest = data[pos:]
        return frames


class StreamConn(asyncio.Protocol):
    """The source side of one stream tunnel connection (TLS), pooled between flows."""

    def __init__(self, pool: StreamPool, key: Key, slot: Slot) -> None:
        self.pool = pool
        self.key = key
        self.slot = slot  # given back when the connection closes
        self.transport: asyncio.Transport | None = None
        self.frames = Deframer()
        self.owner: asyncio.Protocol | None = None  # the flow's upstream side
        self.reply: asyncio.Future[str] | None = None
        self.sent_eof = self.got_eof = False
        self.closed = False
        self.counted = False  # its handshake was counted (an open tunnel)
        self.reused = True  # it carried a flow before (a new one: set False by the pool)
        self.idle_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        try:
            frames = self.frames.feed(data)
        except FrameError as exc:
            self._broken(str(exc))
            return
        for kind, payload in frames:
            owner = self.owner
            if kind == DATA and owner is not None and not self.got_eof:
                owner.data_received(payload)
            elif kind == EOF and owner is not None and not self.got_eof:
                self.got_eof = True
                owner.eof_received()
            elif kind == REPLY and self.reply is not None and not self.reply.done():
                self.reply.set_result(payload.decode("utf-8", "replace"))
            else:
                self._broken(f"unexpected frame type {kind}")
                return

    def _broken(self, why: str) -> None:
        if self.reply is not None and not self.reply.done():
            self.reply.set_exception(UpstreamError(Failure.RESET, why))
        if self.transport is not None:
            self.transport.abort()

    def pause_writing(self) -> None:
        if self.owner is not None:
            self.owner.pause_writing()

    def resume_writing(self) -> None:
        if self.owner is not None:
            self.owner.resume_writing()

    def eof_received(self) -> bool:
        return False  # the peer ended the TLS stream: close (a flow still open is reset)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.slot.release()
        if self.idle_timer is not None:
            self.idle_timer.cancel()
            self.idle_timer = None
        self.pool.forget(self)
        if self.counted:
            self.counted = False
            self.pool.tls.closed("client")
        if self.reply is not None and not self.reply.done():
            self.reply.set_exception(
                UpstreamError(Failure.RESET, f"tunnel closed before its reply: {exc!r}")
            )
        owner, self.owner = self.owner, None
        if owner is not None:  # the tunnel ended under a flow: a reset
            owner.connection_lost(exc or ConnectionResetError("the tunnel connection closed"))

    # -- one flow -----------------------------------------------------------------------------

    async def open(self, head: bytes, timeout: float) -> str:
        """Send OPEN and wait for the REPLY."""
        assert self.transport is not None
        self.reply = asyncio.get_running_loop().create_future()
        self.sent_eof = self.got_eof = False
        self.transport.write(frame(OPEN, head))
        try:
            async with asyncio.timeout(timeout):
                return await self.reply
        finally:
            self.reply = None

    def attach(self, owner: asyncio.Protocol) -> None:
        self.owner = owner
        owner.connection_made(FramedTransport(self))

    def finish(self, *, abort: bool) -> None:
        """The flow's side is done with the connection: pooled again when both directions
        ended cleanly, else closed (aborted: the peer sees a reset)."""
        owner, self.owner = self.owner, None
        transport = self.transport
        if owner is not None:
            asyncio.get_running_loop().call_soon(owner.connection_lost, None)
        if transport is None or self.closed:
            return
        if abort:
            transport.abort()
        elif self.sent_eof and self.got_eof:
            transport.resume_reading()
            self.pool.release(self)
        else:
            if not self.sent_eof:
                self.sent_eof = True
                transport.write(frame(EOF))
            transport.close()


class FramedTransport(asyncio.Transport):
    """What the flow's upstream side writes to: frames on the tunnel connection."""

    def __init__(self, conn: StreamConn) -> None:
        super().__init__()
        self._conn = conn
        self._closing = False

    def _tls(self) -> asyncio.Transport:
        transport = self._conn.transport
        assert transport is not None
        return transport

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if data:
            self.send_frame(data)

    def send_frame(self, data: bytes | bytearray | memoryview) -> None:
        """One DATA frame (a datagram of a UDP session: empty ones too)."""
        if self._closing or self._conn.sent_eof:
            return
        self._tls().write(b"".join((HEADER.pack(DATA, len(data)), data)))

    def write_eof(self) -> None:
        conn = self._conn
        if not self._closing and not conn.sent_eof:
            conn.sent_eof = True
            self._tls().write(frame(EOF))

    def can_write_eof(self) -> bool:
        return True

    def close(self) -> None:
        if not self._closing:
            self._closing = True
            self._conn.finish(abort=False)

    def abort(self) -> None:
        if not self._closing:
            self._closing = True
            self._conn.finish(abort=True)

    def is_closing(self) -> bool:
        return self._closing or self._conn.closed

    def pause_reading(self) -> None:
        if not self._closing:
            self._tls().pause_reading()

    def resume_reading(self) -> None:
        if not self._closing:
            self._tls().resume_reading()

    def is_reading(self) -> bool:
        return self._tls().is_reading()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._tls().set_write_buffer_limits(high, low)

    def get_write_buffer_size(self) -> int:
        return self._tls().get_write_buffer_size()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._tls().get_extra_info(name, default)


class TunnelDatagrams(asyncio.DatagramTransport):
    """What a UDP session sends to: each datagram a DATA frame of its tunnel connection."""

    def __init__(self, framed: FramedTransport) -> None:
        super().__init__()
        self._framed = framed

    def sendto(self, data: bytes | bytearray | memoryview, addr: Any = None) -> None:
        self._framed.send_frame(data)

    def close(self) -> None:
        self._framed.close()  # EOF, then the connection closes

    def abort(self) -> None:
        self._framed.abort()

    def is_closing(self) -> bool:
        return self._framed.is_closing()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._framed.get_extra_info(name, default)


class DatagramSide(asyncio.Protocol):
    """A UDP session's end of a tunnel connection: DATA frames in are datagrams from
    ``peer`` (the pod); the session gets a :class:`TunnelDatagrams` as its transport."""

    def __init__(self, session: asyncio.DatagramProtocol, peer: tuple[str, int]) -> None:
        self.session = session
        self.peer = peer

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.session.connection_made(TunnelDatagrams(cast(FramedTransport, transport)))

    def data_received(self, data: bytes) -> None:
        self.session.datagram_received(data, self.peer)

    def eof_received(self) -> bool:
        return True  # the destination ended the session: it ends at its idle timeout here

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is not None:
            self.session.error_received(exc)


class StreamPool:
    """Stream tunnel connections to other nodes' proxies, idle ones kept per (address,
    identities); each holds a slot of the upstream gate while it is open."""

    def __init__(self, tls: TunnelTls, gate: UpstreamGate, *, connect_timeout: float) -> None:
        self.tls = tls
        self._gate = gate
        self._connect_timeout = connect_timeout
        self._idle: dict[Key, list[StreamConn]] = {}
        self._dialing: dict[Key, int] = {}
        # flows waiting per key: given a released connection, or None (their turn to dial)
        self._waiting: dict[Key, deque[asyncio.Future[StreamConn | None]]] = {}
        gate.add_reclaimer(self._reclaim)

    async def open(
        self,
        hop: TunnelHop,
        caller: str,
        factory: Callable[[], asyncio.Protocol],
        *,
        udp: bool = False,
    ) -> asyncio.Protocol:
        """A flow (``udp``: a UDP session) to ``hop``'s target, through a pooled or new
        connection: the protocol ``factory`` makes, connected to a :class:`FramedTransport`.
        UpstreamError (CONNECT) when the tunnel, the destination's decision or its connect
        fails."""
        key = (hop.host, hop.port, hop.pool)
        where = f"tunnel {hop.host}:{hop.port} ({hop.expect})"
        head = hop.head + f"Simmesh-Caller: {caller}\r\n".encode()
        if udp:
            head += b"Simmesh-Protocol: udp\r\n"
        timeout = 2 * self._connect_timeout  # the destination connects within its own
        while True:
            conn = await self._connection(key, hop)
            reused = conn.reused
            conn.reused = True
            try:
                reply = await conn.open(head, timeout)
            except (UpstreamError, ConnectionError, TimeoutError) as exc:
                if reused and not isinstance(exc, TimeoutError):
                    continue  # the peer closed it while it was idle: a new one
                if conn.transport is not None:
                    conn.transport.abort()
                raise UpstreamError(Failure.CONNECT, f"{where}: no reply: {exc!r}") from exc
            break
        status, _, detail = reply.partition(" ")
        if status != "200":
            self.release(conn)  # at a frame boundary: nothing of the flow was sent
            raise UpstreamError(Failure.CONNECT, f"{where}: {status} {detail}")
        owner = factory()
        conn.attach(owner)
        return owner

    async def _connection(self, key: Key, hop: TunnelHop) -> StreamConn:
        """An idle connection, one another flow releases, or a new one (at most
        :data:`_MAX_DIALS` handshakes at once per key)."""
        while True:
            conn = self._take(key)
            if conn is not None:
                return conn
            if self._dialing.get(key, 0) < _MAX_DIALS:
                return await self._dial(key, hop)
            waiter: asyncio.Future[StreamConn | None] = asyncio.get_running_loop().create_future()
            self._waiting.setdefault(key, deque()).append(waiter)
            handed = await waiter
            if handed is not None and not handed.closed:
                return handed

    async def _dial(self, key: Key, hop: TunnelHop) -> StreamConn:
        self._dialing[key] = self._dialing.get(key, 0) + 1
        try:
            _, conn = await dial(
                self.tls,
                hop,
                self._gate,
                lambda slot: StreamConn(self, key, slot),
                self._connect_timeout,
                alpn=ALPN_STREAM,
            )
        finally:
            self._dialing[key] -= 1
            if not self._dialing[key]:
                del self._dialing[key]
            self._wake(key, None)  # a waiter may dial now
        conn.counted = True
        conn.reused = False
        return conn

    def _wake(self, key: Key, conn: StreamConn | None) -> bool:
        """Give ``conn`` (None: a turn to dial) to the first flow still waiting."""
        waiting = self._waiting.get(key)
        while waiting:
            waiter = waiting.popleft()
            if not waiter.done():
                waiter.set_result(conn)
                return True
        self._waiting.pop(key, None)
        return False

    def plan(
        self, router: Router, *, endpoint: Endpoint, source: str | None, cluster: Cluster | None
    ) -> TunnelHop | None:
        """How a flow or session to ``endpoint`` travels (:meth:`TunnelTls.plan`, on a
        stream tunnel): None in the clear, UpstreamError when strict mode forbids that."""
        if cluster is None:
            return None
        return self.tls.plan(
            router, endpoint=endpoint, source=source, cluster=cluster.key, protocol=ALPN_STREAM
        )

    def _take(self, key: Key) -> StreamConn | None:
        idle = self._idle.get(key)
        while idle:
            conn = idle.pop()
            if conn.idle_timer is not None:
                conn.idle_timer.cancel()
                conn.idle_timer = None
            if not conn.closed and conn.transport is not None and not conn.transport.is_closing():
                return conn
        return None

    def release(self, conn: StreamConn) -> None:
        """Back to the pool (closed when the pool is full or someone waits for a slot)."""
        transport = conn.transport
        if conn.closed or transport is None:
            return
        if self._wake(conn.key, conn):
            return  # straight to a flow that waited for one
        idle = self._idle.setdefault(conn.key, [])
        if len(idle) >= _MAX_IDLE or conn.slot.contended():
            transport.close()
            return
        idle.append(conn)
        conn.idle_timer = asyncio.get_running_loop().call_later(_KEEPALIVE, transport.close)

    def forget(self, conn: StreamConn) -> None:
        idle = self._idle.get(conn.key)
        if idle is not None and conn in idle:
            idle.remove(conn)

    def _reclaim(self) -> bool:
        for idle in self._idle.values():
            while idle:
                conn = idle.pop()
                if conn.transport is not None and not conn.closed:
                    conn.transport.close()
                    return True
        return False

    def close(self) -> None:
        """The proxy stops: idle connections are dropped at once (a TLS close would need
        the event loop for its close_notify)."""
        for idle in self._idle.values():
            for conn in idle:
                if conn.transport is not None:
                    conn.transport.abort()
        self._idle.clear()
