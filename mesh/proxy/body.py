"""Request bodies as the upstream clients consume them: empty, buffered or streamed.

A small body with a Content-Length (up to ``--buffer-limit``, 64 KiB by default) is read
whole before the first attempt, so it can be replayed and a retry is possible; anything
larger, or chunked, is streamed once, chunk by chunk, with the front end's flow control, so a
200 MB upload never sits in memory. ``touched`` records whether a stream has been read from
(a request whose stream was read cannot count as never sent); ``client_error`` records that
the client went away while we read it, so the failure is not blamed on the upstream.

``timeout`` (``--body-timeout``, set by the forwarder for every request) bounds each wait for
the next chunk: a client that stops sending its body mid-way raises :class:`BodyTimeout`
(``timed_out``), which the forwarder answers with 408 (or, once the answer has started, by
cutting the connection or stream).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Protocol


class Reader(Protocol):
    async def readany(self) -> bytes: ...


class ClientGone(Exception):
    """The client closed or reset its connection while the request was in flight."""


class BodyTimeout(ClientGone):
    """The client sent no body bytes for ``Body.timeout`` seconds."""


class Body:
    __slots__ = (
        "_reader",
        "buffered",
        "chunked",
        "client_error",
        "length",
        "on_first_read",
        "received",
        "timed_out",
        "timeout",
        "touched",
    )

    def __init__(self, reader: Reader | None, length: int | None, *, chunked: bool) -> None:
        self._reader = reader
        self.length = length
        self.chunked = chunked
        self.buffered: bytes | None = None
        self.touched = False
        self.client_error = False
        self.received = 0
        self.on_first_read: Callable[[], None] | None = None  # e.g. send 100 Continue
        self.timeout: float | None = None  # seconds between chunks
        self.timed_out = False

    @property
    def reader(self) -> Reader | None:
        return self._reader

    @property
    def empty(self) -> bool:
        return (
            self._reader is None or self.length == 0 or (self.length is None and not self.chunked)
        )

    @property
    def replayable(self) -> bool:
        return self.empty or self.buffered is not None

    def wants_buffer(self, limit: int) -> bool:
        """Whether :meth:`buffer` would read anything (a small body with a known length)."""
        return (
            self._reader is not None
            and self.buffered is None
            and self.length is not None
            and 0 < self.length <= limit
        )

    async def buffer(self, limit: int) -> None:
        """Read a small body with a known length whole, so retries may replay it."""
        if self.empty or self.length is None or self.length > limit or self._reader is None:
            return
        parts = [chunk async for chunk in self._stream()]
        self.buffered = b"".join(parts)

    async def read_all(self) -> bytes:
        """The whole body (for the rare small request an HTTP/2 client sends in one go)."""
        if self.buffered is not None:
            return self.buffered
        if self.empty:
            return b""
        return b"".join([chunk async for chunk in self._stream()])

    def chunks(self) -> AsyncIterator[bytes]:
        """A fresh iteration over the body for one attempt."""
        if self.buffered is not None:
            return _once(self.buffered)
        return self._stream()

    async def _stream(self) -> AsyncIterator[bytes]:
        reader = self._reader
        if reader is None:
            return
        self.touched = True
        if self.on_first_read is not None:
            self.on_first_read()
            self.on_first_read = None
        while True:
            try:
                async with asyncio.timeout(self.timeout):
                    chunk = await reader.readany()
            except TimeoutError:
                self.client_error = self.timed_out = True
                raise BodyTimeout(f"no request body bytes for {self.timeout:g}s") from None
            except Exception as exc:
                self.client_error = True
                raise ClientGone(str(exc) or type(exc).__name__) from exc
            if not chunk:
                return
            self.received += len(chunk)
            yield chunk


async def _once(data: bytes) -> AsyncIterator[bytes]:
    yield data
