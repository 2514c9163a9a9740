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

:class:`Body` is compiled (mesh/build.py), as one is made for every request; the async
generators that read it are in :mod:`mesh.proxy.bodystream`, interpreted.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

from mesh.proxy.bodystream import BodyTimeout, ClientGone, Reader, once, stream

__all__ = ["Body", "BodyTimeout", "ClientGone", "Reader"]


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
        parts = []
        async for chunk in stream(self):
            parts.append(chunk)
        self.buffered = b"".join(parts)

    async def read_all(self) -> bytes:
        """The whole body (for the rare small request an HTTP/2 client sends in one go)."""
        if self.buffered is not None:
            return self.buffered
        if self.empty:
            return b""
        parts = []
        async for chunk in stream(self):
            parts.append(chunk)
        return b"".join(parts)

    def chunks(self) -> AsyncIterator[bytes]:
        """A fresh iteration over the body for one attempt."""
        if self.buffered is not None:
            return once(self.buffered)
        return stream(self)
