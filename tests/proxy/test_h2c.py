"""HTTP/2 cleartext: h2c upstreams (scheme annotation) and h2c prior-knowledge clients on the
HTTP listeners, including gRPC-style trailers end to end."""

from __future__ import annotations

import asyncio
import json

from mesh.proxy.body import Body
from mesh.proxy.upstream_h2 import H2Upstream
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
