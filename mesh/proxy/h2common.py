"""What the h2c client and server share: an asyncio Protocol around h2's state machine.

h2 is sans-I/O: bytes go in with ``receive_data`` and come out of ``data_to_send``. This base
class owns that loop's I/O half: flushing, transport backpressure (``pause_writing``), waiting
for flow-control window, and :class:`Inbox`, the per-stream buffer of received DATA that is
acknowledged (handing window back to the peer) only as its consumer reads it.

With a ``write_timeout`` (the server side: ``--write-timeout``), :meth:`H2Protocol.send_data`
gives up on a stream that makes no progress for that long: waiting for the peer's window it
raises (the caller resets that stream and releases its upstream; the connection stays), and
waiting for the transport to drain it aborts the connection (the peer reads nothing at all).
The deadline runs from the stream's last progress, not from the last wake-up: a peer that
opens a byte of window now and then for one stream cannot hold the others.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import cast

import h2.config
import h2.connection
import h2.exceptions
import h2.settings

from mesh.core.policies import Failure
from mesh.proxy.upstream import UpstreamError

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
STREAM_WINDOW = 1 << 20
CONNECTION_WINDOW = 1 << 24
_DEFAULT_WINDOW = 65535


class Inbox:
    """DATA received on one stream, read by one consumer."""

    __slots__ = ("_ack", "_chunks", "_waiter", "ended", "error", "trailers")

    def __init__(self, ack: Callable[[int], None]) -> None:
        self._ack = ack
        self._chunks: deque[tuple[bytes, int]] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self.ended = False
        self.error: Exception | None = None
        self.trailers: list[tuple[bytes, bytes]] | None = None

    def push(self, data: bytes, flow: int) -> None:
        self._chunks.append((data, flow))
        self._wake()

    def end(self) -> None:
        self.ended = True
        self._wake()

    def fail(self, error: Exception) -> None:
        if not self.ended:
            self.error = error
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def read(self, timeout: float | None = None) -> bytes:
        while not self._chunks:
            if self.error is not None:
                raise self.error
            if self.ended:
                return b""
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                if timeout is None:
                    await self._waiter
                else:
                    await asyncio.wait_for(self._waiter, timeout)
            except TimeoutError:
                raise UpstreamError(Failure.TIMEOUT, "stream stalled") from None
            finally:
                self._waiter = None
        data, flow = self._chunks.popleft()
        if flow:
            self._ack(flow)
        return data


class H2Protocol(asyncio.Protocol):
    """The I/O half of one HTTP/2 connection (client or server side)."""

    def __init__(
        self, *, client_side: bool, write_timeout: float | None = None, max_streams: int = 100
    ) -> None:
        self._write_timeout = write_timeout  # the peer must open window / read within this
        config = h2.config.H2Configuration(client_side=client_side, header_encoding=None)
        self.h2 = h2.connection.H2Connection(config=config)
        values = {h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: STREAM_WINDOW}
        if client_side:
            values[h2.settings.SettingCodes.ENABLE_PUSH] = 0
        else:
            values[h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS] = max_streams
        self.h2.local_settings = h2.settings.Settings(client=client_side, initial_values=values)
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self._write_paused = False
        self._drain_waiters: list[asyncio.Future[None]] = []
        self._window_waiters: list[asyncio.Future[None]] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.h2.initiate_connection()
        self.h2.increment_flow_control_window(CONNECTION_WINDOW - _DEFAULT_WINDOW)
        self.flush()

    def flush(self) -> None:
        data = self.h2.data_to_send()
        if data and self.transport is not None and not self.closed:
            self.transport.write(data)

    def ack(self, stream_id: int, flow: int) -> None:
        if self.closed:
            return
        self.h2.acknowledge_received_data(flow, stream_id)
        self.flush()

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        _wake_all(self._drain_waiters)

    def wake_windows(self) -> None:
        _wake_all(self._window_waiters)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        _wake_all(self._drain_waiters)
        _wake_all(self._window_waiters)

    async def _wait(self, waiters: list[asyncio.Future[None]], deadline: float | None) -> bool:
        """Until woken (True) or ``deadline`` (loop time; None: none) passed (False)."""
        future = asyncio.get_running_loop().create_future()
        waiters.append(future)
        try:
            async with asyncio.timeout_at(deadline):
                await future
        except TimeoutError:
            return False
        finally:
            if future in waiters:
                waiters.remove(future)
        return True

    def write_timed_out(self) -> None:
        """A stream made no progress for ``write_timeout`` (a hook)."""

    async def send_data(self, stream_id: int, data: bytes, *, is_gone: Callable[[], bool]) -> None:
        """Send DATA within the peer's flow-control windows and our transport's buffer, each
        wait bounded by ``write_timeout`` from the last progress (see the module docstring)."""
        loop = asyncio.get_running_loop()
        timeout = self._write_timeout
        deadline = None if timeout is None else loop.time() + timeout
        view = memoryview(data)
        while view:
            if self.closed or is_gone():
                raise ConnectionResetError("HTTP/2 stream or connection closed")
            window = min(
                self.h2.local_flow_control_window(stream_id), self.h2.max_outbound_frame_size
            )
            if window <= 0:
                if not await self._wait(self._window_waiters, deadline):
                    self.write_timed_out()
                    raise ConnectionResetError("the peer opened no flow-control window in time")
                continue
            size = min(window, len(view))
            self.h2.send_data(stream_id, view[:size].tobytes())
            view = view[size:]
            self.flush()
            if timeout is not None:
                deadline = loop.time() + timeout
            if self._write_paused and not await self._wait(self._drain_waiters, deadline):
                self.write_timed_out()
                if self.transport is not None:
                    self.transport.abort()
                raise ConnectionResetError("the peer took nothing of what was sent in time")

    def reset(self, stream_id: int, code: int = 8) -> None:
        """RST_STREAM (CANCEL by default), ignoring streams h2 already closed."""
        if self.closed:
            return
        try:
            self.h2.reset_stream(stream_id, code)
        except h2.exceptions.H2Error:
            return
        self.flush()


def _wake_all(waiters: list[asyncio.Future[None]]) -> None:
    for future in waiters:
        if not future.done():
            future.set_result(None)
    waiters.clear()


def decode(headers: list[tuple[bytes, bytes]]) -> list[tuple[str, str]]:
    """Header bytes as text; :func:`encode` gives back the same bytes (as on HTTP/1.1)."""
    return [(n.decode("latin-1"), v.decode("utf-8", "surrogateescape")) for n, v in headers]


def encode(headers: list[tuple[str, str]]) -> list[tuple[bytes, bytes]]:
    return [(n.encode("latin-1"), v.encode("utf-8", "surrogateescape")) for n, v in headers]
