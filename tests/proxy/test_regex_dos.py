"""A catastrophic regex does not stall the node proxy (issue 19).

With Python's backtracking ``re``, ``GET /r/`` + 28 ``a`` + ``!`` against a ``pathRegex`` of
``/r/(a+)+$`` held the proxy's event loop for 8.6 s, twice as long per extra ``a``: every
namespace on the node waited, health probes included. Through a TrafficSplit's ``matches`` a
source without identity could do it, since the split's match runs before access control. On
RE2 (mesh/core/patterns.py) the proxy answers the attacker at once, and another client's
request and the admin ``/healthz`` are answered promptly while the attack goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import pytest

from tests.proxy.harness import (
    LOCAL,
    backends,
    build,
    endpoints,
    free_range,
    pod,
    route_group,
    running_proxy,
    service,
    settings,
    traffic_target,
)

EVIL = "/r/(a+)+$"
CLIENT, FRIEND, NOBODY = "127.0.0.5", "127.0.0.7", "127.0.0.1"


def evil_path(count: int) -> str:
    return "/r/" + "a" * count + "!"


@contextlib.asynccontextmanager
async def mesh() -> AsyncIterator[tuple[int, int]]:
    """ACL mode: client may use web and shop by the evil group, shop is split by it, friend
    may GET /health on other. Yields the HTTP listener and the admin port."""
    http = free_range(1)
    hosts = ("127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.8")
    async with backends(*hosts) as (web, shop, shop_v2, other):
        docs = [
            *[service(name) for name in ("web", "shop", "shop-v2", "other")],
            *endpoints("web", [web], pods=["web-0"]),
            *endpoints("shop", [shop], pods=["shop-0"]),
            *endpoints("shop-v2", [shop_v2], pods=["shop-v2-0"]),
            *endpoints("other", [other], pods=["other-0"]),
            pod("web-0", web[0], "web"),
            pod("shop-0", shop[0], "shop"),
            pod("shop-v2-0", shop_v2[0], "shop"),
            pod("other-0", other[0], "other"),
            pod("client-0", CLIENT, "client"),
            pod("friend-0", FRIEND, "friend"),
            route_group("evil", [{"name": "r", "pathRegex": EVIL}]),
            route_group("health", [{"name": "h", "pathRegex": "/health", "methods": ["GET"]}]),
            *[
                traffic_target(
                    f"client-to-{name}",
                    destination=name,
                    sources=["client"],
                    rules=[{"kind": "HTTPRouteGroup", "name": "evil"}],
                )
                for name in ("web", "shop")
            ],
            traffic_target(
                "friend-to-other",
                destination="other",
                sources=["friend"],
                rules=[{"kind": "HTTPRouteGroup", "name": "health"}],
            ),
            {
                "apiVersion": "split.smi-spec.io/v1alpha4",
                "kind": "TrafficSplit",
                "metadata": {"name": "shop", "namespace": "demo"},
                "spec": {
                    "service": "shop",
                    "backends": [{"service": "shop-v2", "weight": 1}],
                    "matches": [{"kind": "HTTPRouteGroup", "name": "evil"}],
                },
            },
        ]
        async with running_proxy(build(docs, settings(http=http, acl=True))) as proxy:
            assert proxy.admin_port is not None
            yield http, proxy.admin_port


async def get(port: int, path: str, *, source: str, host: str) -> tuple[int, str | None]:
    """One HTTP/1.1 GET from ``source``: (status, X-Simmesh-Reason or X-Backend)."""
    reader, writer = await asyncio.open_connection(LOCAL, port, local_addr=(source, 0))
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        raw = await asyncio.wait_for(reader.read(), 60)
    finally:
        writer.close()
    head = raw.partition(b"\r\n\r\n")[0].decode("latin-1").split("\r\n")
    fields = dict(line.split(": ", 1) for line in head[1:])
    return int(head[0].split(" ")[1]), fields.get("X-Simmesh-Reason", fields.get("X-Backend"))


async def timed_get(port: int, path: str, *, source: str, host: str) -> tuple[int, float]:
    start = time.monotonic()
    status, _ = await get(port, path, source=source, host=host)
    return status, time.monotonic() - start


@pytest.mark.parametrize(
    ("source", "host", "reason"),
    [
        (CLIENT, "web.demo.mesh", "no-matching-route"),  # a granted client, the grant's match
        (NOBODY, "shop.demo.mesh", "no-source-identity"),  # no identity: the split's match
    ],
)
async def test_an_attacker_on_the_evil_path_does_not_stall_others(
    source: str, host: str, reason: str
) -> None:
    async with mesh() as (http, admin):
        paths = [evil_path(28), evil_path(5000)] * 10
        attack = [asyncio.create_task(get(http, p, source=source, host=host)) for p in paths]
        await asyncio.sleep(0.05)  # the attacker's requests are in the proxy first
        friend = await timed_get(http, "/health", source=FRIEND, host="other.demo.mesh")
        probe = await timed_get(admin, "/healthz", source=LOCAL, host="proxy")
        answers = await asyncio.wait_for(asyncio.gather(*attack), 30)
        assert friend[0] == 200 and friend[1] < 1.0, friend
        assert probe[0] == 200 and probe[1] < 1.0, probe
        assert set(answers) == {(403, reason)}
        # what the evil group admits still goes through, and is split to shop-v2 (b2)
        assert await get(http, "/r/aaa", source=CLIENT, host="shop.demo.mesh") == (200, "b2")
