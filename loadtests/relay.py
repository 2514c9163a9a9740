"""A minimal uvloop byte relay: what a Python proxy costs before it does any work of its own.

    python -m loadtests.relay LISTEN_HOST LISTEN_PORT TARGET_HOST TARGET_PORT

One upstream connection per client connection, bytes copied both ways with backpressure, no
parsing, no routing, no metrics. bench_proxy runs it beside simmesh and HAProxy: the event loop
and the system calls cost what this costs; what simmesh costs on top is its own L7 work.
"""

from __future__ import annotations

import asyncio
import sys
from typing import cast

import uvloop


class _Pipe(asyncio.Protocol):
    """One side of a relayed connection: what it reads goes to ``peer``'s transport."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.peer: _Pipe | None = None
        self.pending: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # (uvloop's is no subclass)

    def data_received(self, data: bytes) -> None:
        peer = self.peer
        if peer is None or peer.transport is None:
            self.pending.append(data)
        else:
            peer.transport.write(data)

    def eof_received(self) -> bool:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.write_eof()
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.close()

    def pause_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.resume_reading()


class _Downstream(_Pipe):
    def __init__(self, target: tuple[str, int]) -> None:
        super().__init__()
        self.target = target

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        asyncio.get_running_loop().create_task(self._connect())

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            _, upstream = await loop.create_connection(_Pipe, *self.target)
        except OSError:
            if self.transport is not None:
                self.transport.close()
            return
        upstream.peer, self.peer = self, upstream
        if upstream.transport is not None:
            for data in self.pending:
                upstream.transport.write(data)
        self.pending.clear()


async def serve(listen: tuple[str, int], target: tuple[str, int]) -> None:
    server = await asyncio.get_running_loop().create_server(
        lambda: _Downstream(target), *listen, backlog=1024
    )
    async with server:
        await server.serve_forever()


def main(argv: list[str]) -> int:
    host, port, target_host, target_port = argv
    uvloop.run(serve((host, int(port)), (target_host, int(target_port))))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
