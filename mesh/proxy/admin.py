"""The admin port: health, readiness, Prometheus metrics and the applied config's summary.

``/healthz`` answers 200 while the process runs; ``/readyz`` 200 only once a config has been
applied and while the listeners accept, that is also during a drain's delay (a Kubernetes
readiness probe keeps new traffic away until then, and kube-proxy uses a terminating proxy,
while no other on its node is ready, only as long as it passes); ``/metrics`` is the proxy's
registry (with ``--workers``, every worker's, added up); ``/config`` is JSON: version,
listeners (open or why not), counts, and the config source's state; ``/certificates`` is
JSON: the mTLS mode, the identities of the node's pods, the workload certificates held for
them (SPIFFE ID, issue and expiry times, fingerprint: never a key or a file path), the ones
missing and the trust roots (what ``simmesh check`` shows per proxy). What it serves comes from
a :class:`Status`: one proxy process, or the supervisor of several (:mod:`mesh.proxy.workers`).
"""

from __future__ import annotations

from typing import Any, Protocol

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST


class Status(Protocol):
    @property
    def ready(self) -> bool: ...

    @property
    def draining(self) -> bool: ...

    @property
    def version(self) -> str | None: ...

    async def metrics_text(self) -> bytes: ...

    async def summary(self) -> dict[str, Any]: ...

    async def certificates(self) -> dict[str, Any]: ...


def admin_app(status: Status) -> web.Application:
    async def healthz(request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def readyz(request: web.Request) -> web.Response:
        if status.ready:
            note = " (draining: still accepting)" if status.draining else ""
            return web.Response(text=f"ready {status.version or ''}{note}\n")
        why = getattr(status, "unready_reason", None) or (
            "draining" if status.draining else "no config applied yet"
        )
        return web.Response(status=503, text=f"not ready: {why}\n")

    async def metrics(request: web.Request) -> web.Response:
        body = await status.metrics_text()
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def config(request: web.Request) -> web.Response:
        return web.json_response(await status.summary())

    async def certificates(request: web.Request) -> web.Response:
        return web.json_response(await status.certificates())

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/config", config)
    app.router.add_get("/certificates", certificates)
    return app


async def start_admin(status: Status, host: str, port: int) -> tuple[web.AppRunner, int]:
    """Serve ``status`` on ``host:port`` (0: any free port); the runner and the bound port."""
    runner = web.AppRunner(admin_app(status), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_address=True)
    try:
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    addresses = runner.addresses
    return runner, int(addresses[0][1]) if addresses else port
