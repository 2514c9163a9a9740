"""What the request driver needs from an upstream client, whatever the protocol.

:class:`Upstream` sends one attempt and returns a :class:`Response` once the response headers
arrived, or raises :class:`UpstreamError` carrying the core's :class:`~mesh.core.policies.Failure`
kind: CONNECT (never sent), RESET (closed or reset before a complete response) or TIMEOUT (no
response in time). Body chunks are read with :meth:`Response.read` (``b""`` at the end), which
raises UpstreamError too when the stream breaks half-way.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from mesh.core.policies import Failure
from mesh.proxy.body import Body


class UpstreamError(Exception):
    def __init__(self, failure: Failure, detail: str) -> None:
        super().__init__(detail)
        self.failure = failure
        self.detail = detail


class Response(Protocol):
    status: int
    reason: str
    content_length: int | None

    def header_items(self) -> Iterable[tuple[str, str]]: ...

    def trailers(self) -> list[tuple[str, str]] | None: ...

    async def read(self) -> bytes: ...

    def release(self) -> None: ...

    def close(self) -> None: ...


class Upstream(Protocol):
    async def send(
        self,
        *,
        scheme: str,
        ip: str,
        port: int,
        method: str,
        authority: str,
        path: str,
        headers: list[tuple[str, str]],
        body: Body,
        timeout: float | None,
        server_name: str | None,
    ) -> Response: ...

    async def close(self) -> None: ...
