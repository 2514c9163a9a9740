"""A request body's bytes as an async iterator: the part of :mod:`mesh.proxy.body` that mypyc
cannot compile (it has no async generators), so it stays interpreted while the
:class:`~mesh.proxy.body.Body` every request makes is a compiled class.

:func:`stream` reads a body's reader chunk by chunk, each wait bounded by ``body.timeout``,
and records what happened on the body (``touched``, ``received``, ``client_error``,
``timed_out``); :func:`once` yields a buffered body whole. The exceptions a stream raises and
the :class:`Reader` protocol are defined here and re-exported by :mod:`mesh.proxy.body`,
where everyone imports them from.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Protocol


class Reader(Protocol):
    async def readany(self) -> bytes: ...


class Streamed(Protocol):
    """What :func:`stream` reads and records: a :class:`~mesh.proxy.body.Body` (which
    imports this module, not the reverse)."""

    touched: bool
    client_error: bool
    timed_out: bool
    received: int
    timeout: float | None
    on_first_read: Callable[[], None] | None

    @property
    def reader(self) -> Reader | None: ...


class ClientGone(Exception):
    """The client closed or reset its connection while the request was in flight."""


class BodyTimeout(ClientGone):
    """The client sent no body bytes for ``Body.timeout`` seconds."""


async def stream(body: Streamed) -> AsyncIterator[bytes]:
    """The body's chunks as they arrive from its reader."""
    reader = body.reader
    if reader is None:
        return
    body.touched = True
    if body.on_first_read is not None:
        body.on_first_read()
        body.on_first_read = None
    while True:
        try:
            async with asyncio.timeout(body.timeout):
                chunk = await reader.readany()
        except TimeoutError:
            body.client_error = body.timed_out = True
            raise BodyTimeout(f"no request body bytes for {body.timeout:g}s") from None
        except Exception as exc:
            body.client_error = True
            raise ClientGone(str(exc) or type(exc).__name__) from exc
        if not chunk:
            return
        body.received += len(chunk)
        yield chunk


async def once(data: bytes) -> AsyncIterator[bytes]:
    yield data
