"""Draining (SIGTERM; docs/proxy.md#draining), phase by phase, on real sockets.

During the drain delay the proxy still accepts and stays ready (in Kubernetes, kube-proxy may
still send it new connections, and uses a terminating proxy only while it is ready) but sends
clients elsewhere: every HTTP/1.1 answer says ``Connection: close``, h2c connections get GOAWAY
as soon as no stream is open. Then it no longer accepts and is not ready: idle HTTP/1.1
connections get a FIN (a request that crosses it sees a closed connection, never a reset),
in-flight requests and TCP flows finish within the drain timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import aiohttp
import h2.config
import h2.connection
import h2.events

from mesh.core.config import MeshConfig
from mesh.proxy.proxy import Proxy
from tests.proxy.harness import (
    LOCAL,
    backends,
    build,
    endpoints,
    free_range,
    running_proxy,
    service,
    session,
    settings,
    tcp_workload,
    until,
    url,
)

HOST = {"Host": "web.demo.mesh"}
GET = b"GET %b HTTP/1.1\r\nHost: web.demo.mesh\r\n\r\n"


@contextlib.asynccontextmanager
async def web_mesh(**options: object) -> AsyncIterator[tuple[Proxy, int]]:
    http = free_range(1)
    async with backends("127.0.0.2") as targets:
        config = build([service("web"), *endpoints("web", targets)], settings(http=http))
        async with running_proxy(config, **options) as proxy:
            yield proxy, http


async def read_response(reader: asyncio.StreamReader) -> tuple[bytes, dict[str, str], bytes]:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    status, *lines = head.decode("latin-1").split("\r\n")[:-2]
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return status.encode(), headers, body


async def readyz(proxy: Proxy) -> tuple[int, str]:
    async with session() as client, client.get(f"http://{LOCAL}:{proxy.admin_port}/readyz") as r:
        return r.status, await r.text()


async def test_during_the_delay_new_connections_are_served_and_told_to_close() -> None:
    async with web_mesh(drain_delay=1.0) as (proxy, port):
        idle_reader, idle_writer = await asyncio.open_connection(LOCAL, port)
        idle_writer.write(GET % b"/before")
        _, headers, _ = await read_response(idle_reader)
        assert "connection" not in headers  # a keep-alive connection, idle from now on
        async with session() as client:
            slow = asyncio.create_task(client.get(url(port, "/stall?seconds=1.5"), headers=HOST))
            await asyncio.sleep(0.2)
            drained = asyncio.create_task(proxy.drain(5.0))
            await asyncio.sleep(0.1)

            # still ready: kube-proxy may still send this proxy connections for a while
            status, text = await readyz(proxy)
            assert status == 200 and "draining" in text
            # a new connection is accepted, answered, told to close, closed
            reader, writer = await asyncio.open_connection(LOCAL, port)
            writer.write(GET % b"/new")
            status_line, headers, _ = await read_response(reader)
            assert status_line.endswith(b"200 OK") and headers["connection"] == "close"
            assert await asyncio.wait_for(reader.read(), 2) == b""
            writer.close()
            # the idle keep-alive connection's next request too
            idle_writer.write(GET % b"/again")
            status_line, headers, _ = await read_response(idle_reader)
            assert status_line.endswith(b"200 OK") and headers["connection"] == "close"
            assert await asyncio.wait_for(idle_reader.read(), 2) == b""
            idle_writer.close()

            await asyncio.sleep(1.0)  # past the delay: no longer accepting, not ready
            status, text = await readyz(proxy)
            assert status == 503 and "draining" in text
            try:
                await asyncio.open_connection(LOCAL, port)
                raise AssertionError("a proxy past its drain delay accepted a connection")
            except ConnectionRefusedError:
                pass
            resp = await slow  # in flight all along: finishes
            assert resp.status == 200 and await resp.text() == "late"
            assert resp.headers["Connection"] == "close"  # (answered after the SIGTERM)
            resp.release()
        assert await drained is True


async def test_an_idle_connection_gets_a_fin_when_the_delay_ends_never_a_reset() -> None:
    async with web_mesh(drain_delay=0.3) as (proxy, port):
        reader, writer = await asyncio.open_connection(LOCAL, port)
        writer.write(GET % b"/before")
        await read_response(reader)
        drained = asyncio.create_task(proxy.drain(5.0))
        await asyncio.sleep(0.1)
        assert not reader.at_eof()  # idle, and kept through the delay
        assert await asyncio.wait_for(reader.read(), 2) == b""  # then a FIN
        # a request that crossed the FIN: read and dropped (no reset); the client sees its
        # connection closed before any answer, which clients retry on a new connection
        writer.write(GET % b"/crossed")
        await writer.drain()
        await asyncio.sleep(0.2)
        assert await asyncio.wait_for(reader.read(), 2) == b""
        writer.close()
        assert await drained is True
        assert proxy.inflight == 0


async def test_an_answer_that_began_before_the_sigterm_leaves_its_connection_open() -> None:
    """Its head went out without ``Connection: close``: closing after it would race the
    client's next request on that connection. It stays, idle, until the delay ends."""
    async with web_mesh(drain_delay=0.6) as (proxy, port):
        reader, writer = await asyncio.open_connection(LOCAL, port)
        writer.write(GET % b"/bytes/200000")  # a streamed answer, longer than one write
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert b"Connection: close" not in head
        drained = asyncio.create_task(proxy.drain(5.0))
        await asyncio.sleep(0.05)
        rest = await asyncio.wait_for(reader.readexactly(200000), 5)
        assert len(rest) == 200000
        await asyncio.sleep(0.1)
        writer.write(GET % b"/next")  # still within the delay: served, and told to close
        _, headers, _ = await read_response(reader)
        assert headers["connection"] == "close"
        writer.close()
        assert await drained is True


class H2Client:
    """h2c prior knowledge on one socket, seeing every event (GOAWAY included)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.conn = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
        )
        self.conn.initiate_connection()
        self.writer.write(self.conn.data_to_send())

    @classmethod
    async def open(cls, port: int) -> H2Client:
        return cls(*await asyncio.open_connection(LOCAL, port))

    def get(self, path: str) -> int:
        stream_id = self.conn.get_next_available_stream_id()
        headers = [
            (":method", "GET"),
            (":scheme", "http"),
            (":authority", "web.demo.mesh"),
            (":path", path),
        ]
        self.conn.send_headers(stream_id, headers, end_stream=True)
        self.writer.write(self.conn.data_to_send())
        return stream_id

    async def until_closed(self, seconds: float) -> list[h2.events.Event]:
        events: list[h2.events.Event] = []
        async with asyncio.timeout(seconds):
            while data := await self.reader.read(65536):
                for event in self.conn.receive_data(data):
                    events.append(event)
                    if isinstance(event, h2.events.DataReceived):
                        self.conn.acknowledge_received_data(
                            event.flow_controlled_length, event.stream_id
                        )
                self.writer.write(self.conn.data_to_send())
        self.writer.close()
        return events


def statuses(events: list[h2.events.Event]) -> dict[int, str]:
    return {
        e.stream_id: dict(e.headers)[":status"]
        for e in events
        if isinstance(e, h2.events.ResponseReceived)
    }


def goaway(events: list[h2.events.Event]) -> h2.events.ConnectionTerminated:
    (last,) = [e for e in events if isinstance(e, h2.events.ConnectionTerminated)]
    assert events[-1] is last  # nothing after it
    return last


async def test_h2c_gets_goaway_once_no_stream_is_open_and_is_served_until_then() -> None:
    async with web_mesh(drain_delay=2.0) as (proxy, port):
        busy = await H2Client.open(port)
        first = busy.get("/stall?seconds=0.6")
        await asyncio.sleep(0.2)
        drained = asyncio.create_task(proxy.drain(5.0))
        await asyncio.sleep(0.1)
        second = busy.get("/during")  # on the draining connection: served, not refused
        fresh = await H2Client.open(port)  # a connection opened during the delay
        third = fresh.get("/fresh")
        busy_events, fresh_events = await asyncio.gather(
            busy.until_closed(3), fresh.until_closed(3)
        )
        assert statuses(busy_events) == {first: "200", second: "200"}
        assert (goaway(busy_events).error_code, goaway(busy_events).last_stream_id) == (0, second)
        assert statuses(fresh_events) == {third: "200"}
        assert goaway(fresh_events).last_stream_id == third
        assert not drained.done()  # (both closed within the delay; the proxy still accepts)
        assert await drained is True


async def test_tcp_flows_outlive_the_delay_and_end_at_the_drain_timeout() -> None:
    http, tcp = free_range(1), free_range(4)
    async with tcp_workload("127.0.0.2") as target:
        docs = [
            service("db", ports=[("pg", 5432)], annotations={"simmesh.io/traffic-type": "tcp"}),
            *endpoints("db", [target], port_name="pg"),
        ]
        config: MeshConfig = build(docs, settings(http=http, tcp=tcp))
        async with running_proxy(config, drain_delay=0.4) as proxy:
            reader, writer = await asyncio.open_connection(LOCAL, tcp)
            writer.write(b"one")
            assert await asyncio.wait_for(reader.readexactly(3), 5) == b"one"
            drained = asyncio.create_task(proxy.drain(1.0))
            await asyncio.sleep(0.1)
            late_reader, late_writer = await asyncio.open_connection(LOCAL, tcp)  # accepted
            late_writer.write(b"late")
            assert await asyncio.wait_for(late_reader.readexactly(4), 5) == b"late"
            late_writer.close()
            await asyncio.sleep(0.6)  # past the delay: the flow still runs
            writer.write(b"two")
            assert await asyncio.wait_for(reader.readexactly(3), 5) == b"two"
            assert not drained.done()
            assert await drained is False  # the flow outlived the drain timeout
        assert await asyncio.wait_for(reader.read(), 2) == b""  # and was cut as the proxy ended
        writer.close()


async def test_readiness_turns_when_the_delay_ends_not_at_the_sigterm() -> None:
    async with web_mesh(drain_delay=0.5) as (proxy, port):
        drained = asyncio.create_task(proxy.drain(2.0))
        await asyncio.sleep(0.1)
        assert proxy.ready and proxy.draining
        assert await until(lambda: not proxy.ready, 2)
        assert await drained is True
        async with aiohttp.ClientSession() as client:
            try:
                await client.get(url(port))
                raise AssertionError("accepted after the delay")
            except aiohttp.ClientConnectorError:
                pass
