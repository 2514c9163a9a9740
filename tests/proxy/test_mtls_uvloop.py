"""The tunnel port on uvloop, the proxy's event loop in its image: every handshake completes.

Accepting plain TCP and then calling ``start_tls`` (as the tunnel port did) lost the
ClientHello on uvloop, whose transport read it into the plain protocol despite
``pause_reading``; the handshake then hung until the client's connect timeout, on about half
of the connections (on kind in strict mode: 48 of 84 tunnel handshakes, and 12 of the SMI
suite's 30 cases failed on 502s). The tests elsewhere run on asyncio's loop, which never did
this, so this one runs the two-node mesh on uvloop itself."""

from __future__ import annotations

import asyncio
import ssl
import time
from pathlib import Path

import pytest
import uvloop

from mesh.proxy.mtls import PROTOCOLS, sni_name
from tests.proxy.mtlsnet import CLIENT_IP, two_nodes

pytestmark = pytest.mark.timeout(60)


async def _scenario(tmp_path: Path) -> tuple[list[str], int]:
    from tests.proxy.harness import session
    from tests.proxy.mtlsnet import grant

    async with two_nodes(tmp_path, acl=True, objects=grant("client")) as net:
        loop = asyncio.get_running_loop()
        assert "uvloop" in type(loop).__module__
        context = net.authority.client_context("demo/client")
        context.minimum_version = ssl.TLSVersion.TLSv1_3
        context.set_alpn_protocols([PROTOCOLS[0]])

        async def handshake() -> str:
            start = time.monotonic()
            try:
                transport, _ = await asyncio.wait_for(
                    loop.create_connection(
                        asyncio.Protocol,
                        "127.0.0.2",
                        net.tunnel_b,
                        ssl=context,
                        server_hostname=sni_name("demo/server"),
                    ),
                    3,
                )
            except (OSError, TimeoutError) as exc:
                return f"failed after {time.monotonic() - start:.1f} s: {exc!r}"
            transport.abort()
            return "ok"

        seen = []
        for concurrency in (1, 1, 1, 4, 4, 8, 8):
            seen += await asyncio.gather(*(handshake() for _ in range(concurrency)))
        # and requests through the proxies: each a new tunnel connection's worth of work
        import aiohttp

        statuses = 0
        for _ in range(5):
            connector = aiohttp.TCPConnector(local_addr=(CLIENT_IP, 0), force_close=True)
            async with (
                session(connector=connector) as http,
                http.get(net.url("far", "/"), headers={"Host": "far.demo.mesh"}) as response,
            ):
                statuses += response.status == 200
        return seen, statuses


def test_every_tunnel_handshake_completes_on_uvloop(tmp_path: Path) -> None:
    seen, ok = uvloop.run(_scenario(tmp_path))
    assert seen == ["ok"] * len(seen), seen
    assert ok == 5
