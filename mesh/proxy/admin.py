"""The admin port: health, readiness, Prometheus metrics and the applied config's summary.

``/healthz`` answers 200 while the process runs; ``/readyz`` 200 only once a config has been
applied and while not draining (a Kubernetes readiness probe keeps new traffic away until
then); ``/metrics`` is this proxy's own registry; ``/config`` is JSON: version, listeners
(open or why not), counts, and the config source's state.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

if TYPE_CHECKING:
    from mesh.proxy.proxy import Proxy


def admin_app(proxy: Proxy) -> web.Application:
    async def healthz(request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def readyz(request: web.Request) -> web.Response:
        if proxy.ready:
            return web.Response(text=f"ready {proxy.snapshot.version if proxy.snapshot else ''}\n")
        why = "draining" if proxy.draining else "no config applied yet"
        return web.Response(status=503, text=f"not ready: {why}\n")

    async def metrics(request: web.Request) -> web.Response:
        return web.Response(
            body=proxy.metrics.render(), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    async def config(request: web.Request) -> web.Response:
        return web.json_response(proxy.summary())

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/config", config)
    return app


async def start_admin(proxy: Proxy, host: str, port: int) -> tuple[web.AppRunner, int]:
    runner = web.AppRunner(admin_app(proxy), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_address=True)
    await site.start()
    server = site._server
    sockets = getattr(server, "sockets", None) or []
    actual = sockets[0].getsockname()[1] if sockets else port
    return runner, int(actual)
