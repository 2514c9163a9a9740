"""TCP and UDP echo, with a way to ask which pod answered.

TCP is line-oriented: every line received is sent back unchanged, except a line that is exactly
``whoami`` (``\\r`` allowed), which is answered with one JSON line: ``{"name", "namespace",
"node", "protocol": "tcp", "client": {"ip", "port"}}``. Bytes after the last newline are echoed
when the client half-closes; lines longer than 64 KiB are echoed in pieces. UDP is per
datagram: a datagram ``whoami`` (optionally ending in a newline) gets that JSON (``"protocol":
"udp"``), any other datagram comes back unchanged. Each TCP connection and each UDP datagram is
recorded once in the Recorder (``/calls``). TCP lines are answered after the app's service time
(latency, capacity: see api.py); UDP datagrams at once.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from mesh.testapp.record import Identity, Recorder

__all__ = ["TcpEcho", "UdpEcho", "whoami"]

LINE_LIMIT = 64 * 1024
log = logging.getLogger("simmesh.testapp")


def whoami(identity: Identity, protocol: str, peer: Any) -> bytes:
    ip, port = (peer[0], peer[1]) if isinstance(peer, tuple) else ("", 0)
    body = {**identity.to_json(), "protocol": protocol, "client": {"ip": ip, "port": port}}
    return json.dumps(body, sort_keys=True).encode() + b"\n"


def _is_whoami(data: bytes) -> bool:
    return data.rstrip(b"\r\n") == b"whoami"


class TcpEcho:
    """``serve`` is awaited before each answer: the app's service time and capacity (api.py),
    so a TCP workload behaves like an HTTP one."""

    def __init__(
        self,
        identity: Identity,
        recorder: Recorder,
        serve: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.identity = identity
        self.recorder = recorder
        self.serve = serve
        self.server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self, host: str, port: int) -> int:
        self.server = await asyncio.start_server(self._handle, host, port, limit=LINE_LIMIT)
        return int(self.server.sockets[0].getsockname()[1])

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        peer = writer.get_extra_info("peername")
        self.recorder.add(protocol="tcp", source=peer, method="TCP", path="")
        try:
            while line := await self._read(reader):
                if self.serve is not None:
                    await self.serve()
                writer.write(whoami(self.identity, "tcp", peer) if _is_whoami(line) else line)
                await writer.drain()
            if writer.can_write_eof():
                writer.write_eof()
        except (ConnectionError, OSError) as exc:
            log.debug("tcp echo %s: %s", peer, exc)
        finally:
            writer.close()
            if task is not None:
                self._tasks.discard(task)

    @staticmethod
    async def _read(reader: asyncio.StreamReader) -> bytes:
        try:
            return await reader.readuntil(b"\n")
        except asyncio.IncompleteReadError as exc:
            return exc.partial  # EOF: whatever followed the last newline (maybe nothing)
        except asyncio.LimitOverrunError as exc:
            return await reader.read(exc.consumed)

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


class UdpEcho(asyncio.DatagramProtocol):
    def __init__(self, identity: Identity, recorder: Recorder) -> None:
        self.identity = identity
        self.recorder = recorder
        self.transport: asyncio.DatagramTransport | None = None

    async def start(self, host: str, port: int) -> int:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(lambda: self, local_addr=(host, port))
        self.transport = transport
        return int(transport.get_extra_info("sockname")[1])

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        self.recorder.add(protocol="udp", source=(str(addr[0]), addr[1]), method="UDP", path="")
        answer = whoami(self.identity, "udp", addr) if _is_whoami(data) else data
        if self.transport is not None:
            self.transport.sendto(answer, addr)

    async def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
