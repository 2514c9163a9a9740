"""HTTP/2 cleartext: h2c upstreams (scheme annotation) and h2c prior-knowledge clients on the
HTTP listeners, including gRPC-style trailers end to end, flow control of the proxy's own
answers and the concurrent stream limit (frame by frame: tests/proxy/h2attack.py)."""

from __future__ import annotations

import asyncio
import json

from h2.settings import SettingCodes
from hyperframe.frame import DataFrame, HeadersFrame, PingFrame, RstStreamFrame, SettingsFrame

from mesh.proxy.body import Body
from mesh.proxy.upstream import UpstreamRequest
from mesh.proxy.upstream_h2 import H2Upstream
from tests.proxy.h2attack import REFUSED_STREAM, RawH2, request_headers
from tests.proxy.harness import (
    LOCAL,
    BytesReader,
    backends,
    build,
    endpoints,
    free_range,
    h2_backend,
    running_proxy,
    service,
    session,
    settings,
    url,
)

H2C = {"simmesh.io/scheme": "h2c"}


def body(data: bytes = b"") -> Body:
    return Body(BytesReader(data) if data else None, len(data), chunked=False)


async def h2_request(
    client: H2Upstream,
    port: int,
    path: str,
    *,
    data: bytes = b"",
    method: str = "GET",
    headers: list[tuple[str, str]] | None = None,
    host: str = "web.demo.mesh",
) -> tuple[int, dict[str, str], bytes, dict[str, str]]:
    resp = await client.send(
        UpstreamRequest(
            scheme="h2c",
            ip=LOCAL,
            port=port,
            method=method,
            authority=host,
            path=path,
            headers=headers or [],
            body=body(data),
            timeout=5.0,
            server_name=None,
        )
    )
    chunks = []
    while chunk := await resp.read():
        chunks.append(chunk)
    trailers = dict(resp.trailers() or [])
    result = resp.status, dict(resp.header_items()), b"".join(chunks), trailers
    resp.release()
    return result


async def test_http1_client_to_h2c_upstream() -> None:
    http = free_range(1)
    async with h2_backend("127.0.0.2") as target:
        config = build(
            [service("web", annotations=H2C), *endpoints("web", [target])], settings(http=http)
        )
        async with running_proxy(config), session() as client:
            headers = {"Host": "web.demo.mesh", "X-Custom": "yes", "Connection": "keep-alive"}
            async with client.get(url(http, "/h2?x=1"), headers=headers) as resp:
                assert resp.status == 200
                data = await resp.json()
            assert data["authority"] == "web.demo.mesh"
            assert data["path"] == "/h2?x=1"
            assert data["headers"]["x-custom"] == "yes"
            assert data["headers"]["x-forwarded-for"] == "127.0.0.1"
            assert "connection" not in data["headers"]
            async with client.post(
                url(http, "/up"), data=b"p" * 300000, headers={"Host": "web.demo.mesh"}
            ) as resp:
                assert (await resp.json())["body"] == 300000


async def test_h2c_client_to_http1_upstream_with_concurrent_streams() -> None:
    http = free_range(1)
    async with backends("127.0.0.2") as targets:
        config = build([service("web"), *endpoints("web", targets)], settings(http=http))
        async with running_proxy(config) as proxy:
            client = H2Upstream(connect_timeout=2.0)
            try:
                results = await asyncio.gather(
                    *(h2_request(client, http, f"/s/{i}") for i in range(20))
                )
                for i, (status, _, payload, _) in enumerate(results):
                    assert status == 200
                    assert json.loads(payload)["path"] == f"/s/{i}"
                status, _, payload, _ = await h2_request(
                    client, http, "/upload", data=b"q" * 500000, method="POST"
                )
                assert status == 200 and json.loads(payload)["received"] == 500000
                status, headers, payload, _ = await h2_request(client, http, "/", host="nope.mesh")
                assert status == 404 and headers["x-simmesh-reason"] == "unknown-host"
                assert len(proxy.listeners.open[(http, "http")].h2_conns) == 1  # type: ignore[attr-defined]
            finally:
                await client.close()


async def test_grpc_style_trailers_end_to_end() -> None:
    http = free_range(1)
    async with h2_backend("127.0.0.2", "grpc") as target:
        config = build(
            [service("web", annotations=H2C), *endpoints("web", [target])], settings(http=http)
        )
        async with running_proxy(config):
            client = H2Upstream(connect_timeout=2.0)
            try:
                message = b"\x00\x00\x00\x00\x05hello"
                status, headers, payload, trailers = await h2_request(
                    client,
                    http,
                    "/grpc.Echo/Say",
                    data=message,
                    method="POST",
                    headers=[("content-type", "application/grpc"), ("te", "trailers")],
                )
            finally:
                await client.close()
    assert status == 200 and headers["content-type"] == "application/grpc"
    assert payload == message
    assert trailers == {"grpc-status": "0", "grpc-message": "grpc ok"}


async def test_h2c_streams_finish_when_draining() -> None:
    http = free_range(1)
    async with backends("127.0.0.2") as targets:
        config = build([service("web"), *endpoints("web", targets)], settings(http=http))
        async with running_proxy(config) as proxy:
            client = H2Upstream(connect_timeout=2.0)
            try:
                assert (await h2_request(client, http, "/warm"))[0] == 200
                slow = asyncio.create_task(h2_request(client, http, "/stall?seconds=0.4"))
                await asyncio.sleep(0.1)
                drained = asyncio.create_task(proxy.drain(5.0))
                status, _, payload, _ = await slow
                assert (status, payload) == (200, b"late")
                assert await drained is True
            finally:
                await client.close()


async def test_local_answers_are_sent_within_the_clients_flow_control_window() -> None:
    """The proxy's own answers (here a 404) wait for window like relayed ones: with a window
    of one byte the body comes one byte per WINDOW_UPDATE, never a reset (h2spec 6.9.1)."""
    http = free_range(1)
    config = build([service("web"), *endpoints("web", [("127.0.0.2", 9)])], settings(http=http))
    async with running_proxy(config), RawH2.connect(http) as client:
        await client.send(client.settings({SettingCodes.INITIAL_WINDOW_SIZE: 1}))
        stream_id = client.stream()
        await client.send(client.headers(stream_id, request_headers(host="nope.mesh")))
        received = client.received
        body, seen = b"", 0
        while True:
            assert await client.until(
                lambda n=seen: (
                    len(received.of(DataFrame, stream_id)) > n
                    or bool(received.of(RstStreamFrame, stream_id))
                )
            )
            assert not received.of(RstStreamFrame, stream_id)
            frames = received.of(DataFrame, stream_id)
            new, seen = frames[seen:], len(frames)
            data = b"".join(f.data for f in new)  # type: ignore[attr-defined]
            assert all(len(f.data) <= 1 for f in new)  # type: ignore[attr-defined]
            body += data
            if any("END_STREAM" in f.flags for f in new):
                break
            await client.send(client.window_update(stream_id, 1) + client.window_update(0, 1))
        assert client.response_status(stream_id) == "404"
        assert body.startswith(b"404 Not Found: unknown-host")


async def test_streams_beyond_the_advertised_limit_are_refused_not_the_connection() -> None:
    """SETTINGS_MAX_CONCURRENT_STREAMS + 1 open streams (a window of 0 keeps them open): the
    last one is refused (RST_STREAM REFUSED_STREAM), the connection serves on (h2spec
    5.1.2)."""
    http = free_range(1)
    config = build([service("web"), *endpoints("web", [("127.0.0.2", 9)])], settings(http=http))
    async with running_proxy(config), RawH2.connect(http) as client:
        received = client.received
        assert await client.until(lambda: bool(received.of(SettingsFrame)))
        limit = received.of(SettingsFrame)[0].settings[SettingCodes.MAX_CONCURRENT_STREAMS]  # type: ignore[attr-defined]
        await client.send(client.settings({SettingCodes.INITIAL_WINDOW_SIZE: 0}))
        head = request_headers(host="nope.mesh")
        opened = [client.stream() for _ in range(limit + 1)]
        await client.send(b"".join(client.headers(s, head) for s in opened))
        assert await client.until(lambda: bool(received.of(RstStreamFrame)), 20.0)
        (refused,) = received.of(RstStreamFrame)
        assert (refused.stream_id, refused.error_code) == (opened[-1], REFUSED_STREAM)  # type: ignore[attr-defined]
        assert received.goaway is None
        await client.send(client.ping(b"stillok!"))
        assert await client.until(
            lambda: any(f.opaque_data == b"stillok!" for f in received.of(PingFrame))
        )  # type: ignore[attr-defined]


async def test_a_local_answer_to_head_has_no_body() -> None:
    http = free_range(1)
    config = build([service("web"), *endpoints("web", [("127.0.0.2", 9)])], settings(http=http))
    async with running_proxy(config), RawH2.connect(http) as client:
        stream_id = client.stream()
        await client.send(client.headers(stream_id, request_headers(method="HEAD", host="x.mesh")))
        received = client.received
        assert await client.until(lambda: bool(received.of(HeadersFrame, stream_id)))
        (head,) = received.of(HeadersFrame, stream_id)
        assert "END_STREAM" in head.flags
        assert client.response_status(stream_id) == "404"
        assert not received.of(DataFrame, stream_id)
