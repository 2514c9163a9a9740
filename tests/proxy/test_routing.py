"""The core's routing through real sockets: ACL denials (403 with the reason), traffic
splits, and the https and h2c upstream schemes."""

from __future__ import annotations

import contextlib
import ssl
import subprocess
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp

from tests.proxy.harness import (
    backend_app,
    backends,
    build,
    endpoints,
    free_range,
    pod,
    route_group,
    running_proxy,
    service,
    session,
    settings,
    traffic_target,
    url,
)

HOST = {"Host": "web.demo.mesh"}


def client_from(ip: str) -> aiohttp.ClientSession:
    return session(connector=aiohttp.TCPConnector(local_addr=(ip, 0)))


async def test_acl_answers_403_naming_the_reason() -> None:
    http = free_range(1)
    async with backends("127.0.0.2") as targets:
        docs = [
            service("web"),
            *endpoints("web", targets, pods=["web-0"]),
            pod("web-0", "127.0.0.2", "web"),
            pod("client-0", "127.0.0.5", "client"),
            pod("intruder-0", "127.0.0.6", "intruder"),
            route_group("web-routes", [{"name": "api", "pathRegex": "/api", "methods": ["GET"]}]),
            traffic_target(
                "client-to-web",
                destination="web",
                sources=["client"],
                rules=[{"kind": "HTTPRouteGroup", "name": "web-routes", "matches": ["api"]}],
            ),
        ]
        config = build(docs, settings(http=http, acl=True))
        async with running_proxy(config):
            cases = [
                ("127.0.0.5", "/api/items", 200, None),
                ("127.0.0.5", "/admin", 403, "no-matching-route"),
                ("127.0.0.6", "/api/items", 403, "not-granted"),
                ("127.0.0.1", "/api/items", 403, "no-source-identity"),
            ]
            for source, path, status, reason in cases:
                async with (
                    client_from(source) as client,
                    client.get(url(http, path), headers=HOST) as resp,
                ):
                    assert resp.status == status, (source, path)
                    assert resp.headers.get("X-Simmesh-Reason") == reason
                    if reason:
                        assert reason in await resp.text()


async def test_traffic_split_weights_are_honoured() -> None:
    http = free_range(1)
    async with backends("127.0.0.2", name="v1-") as one, backends("127.0.0.3", name="v2-") as two:
        docs = [
            service("web"),
            *endpoints("web", one + two),
            service("web-v1"),
            *endpoints("web-v1", one),
            service("web-v2"),
            *endpoints("web-v2", two),
            {
                "apiVersion": "split.smi-spec.io/v1alpha4",
                "kind": "TrafficSplit",
                "metadata": {"name": "canary", "namespace": "demo"},
                "spec": {
                    "service": "web",
                    "backends": [
                        {"service": "web-v1", "weight": 3},
                        {"service": "web-v2", "weight": 1},
                    ],
                },
            },
        ]
        config = build(docs, settings(http=http))
        async with running_proxy(config), session() as client:
            seen: Counter[str] = Counter()
            for _ in range(40):
                async with client.get(url(http), headers=HOST) as resp:
                    seen[(await resp.json())["backend"]] += 1
    assert seen == {"v1-0": 30, "v2-0": 10}


def make_certificate(directory: Path, name: str, san: str) -> tuple[Path, Path]:
    cert, key = directory / f"{name}.crt", directory / f"{name}.key"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-days",
            "1",
            "-subj",
            f"/CN={name}",
            "-addext",
            f"subjectAltName={san}",
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


@contextlib.asynccontextmanager
async def tls_backend(cert: Path, key: Path) -> AsyncIterator[tuple[str, int]]:
    from aiohttp import web

    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    runner = web.AppRunner(backend_app("tls"), access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.2", 0, ssl_context=context)
    await site.start()
    try:
        yield "127.0.0.2", int(runner.addresses[0][1])
    finally:
        await runner.cleanup()


async def test_https_upstreams_unverified_by_default_and_verified_with_a_ca(
    tmp_path: Path,
) -> None:
    http = free_range(1)
    cert, key = make_certificate(tmp_path, "web", "DNS:web.demo.svc.cluster.local,IP:127.0.0.2")
    other, _ = make_certificate(tmp_path, "other", "DNS:other.example")
    async with tls_backend(cert, key) as target:
        docs = [
            service("web", annotations={"simmesh.io/scheme": "https"}),
            *endpoints("web", [target]),
        ]
        config = build(docs, settings(http=http))
        for ca, status in ((None, 200), (str(cert), 200), (str(other), 502)):
            async with (
                running_proxy(config, upstream_ca=ca),
                session() as client,
                client.get(url(http, "/tls"), headers=HOST) as resp,
            ):
                assert resp.status == status, ca
                if status == 200:
                    assert (await resp.json())["backend"] == "tls"
