"""The controller's HTTP API.

- ``GET /api/v1/config``: the current MeshConfig. Long-poll: with ``?version=V`` (or
  ``If-None-Match: "V"``) the answer waits up to ``?wait=`` seconds (default 30) for a different
  version and is ``304 Not Modified`` if none comes. ``?node=NAME`` records that the proxy on
  NAME has applied version V (what ``/api/v1/nodes`` and ``simmesh check`` report).
  With ``?delta=1`` and a version V that is one of the controller's last configs, the answer
  is a delta (``Content-Type: application/vnd.simmesh.meshconfig-delta+json``,
  mesh.core.schema.ConfigDelta): what changed from V to the current config; otherwise the
  full config, as without ``delta`` (docs/proxy.md, "Delta answers").
- ``GET /api/v1/topology``: services, endpoints, splits, GAMMA routes, grants, object errors.
- ``GET /api/v1/nodes``: each proxy, the version it applied, and when it was last seen.
- ``/healthz``, ``/readyz`` (ready after the first build while every watcher runs),
  ``/metrics`` (Prometheus).

Query values are checked (400 with the reason): ``node`` is a Kubernetes node name (a DNS
subdomain, at most 253 characters), ``version`` at most 64 characters of ``[A-Za-z0-9._-]``,
``wait`` finite seconds. With a proxy token (``--token-file``), a poll that names a node must
carry ``Authorization: Bearer <token>`` (401 otherwise): only proxies holding the token, which
the chart keeps in a Secret, can mark nodes in sync. Polls without ``node`` are served and not
recorded (debugging, ``curl``).

While the controller stops (:meth:`~mesh.controller.controller.Controller.part`) every answer
says ``Connection: close``, so a proxy's next poll takes a new connection, which the
controller's Service sends to the controller that replaces this one.
"""

from __future__ import annotations

import hmac
import json
import math
import re
import time

from aiohttp import web
from aiohttp.typedefs import Handler
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from mesh.argtypes import is_dns_subdomain
from mesh.controller.controller import Controller, Published
from mesh.core import schema

MAX_WAIT = 300.0
_VERSION = re.compile(r"[A-Za-z0-9._-]{1,64}")


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.rebuilds = Counter(
            "simmesh_controller_rebuilds", "Config rebuilds", registry=self.registry
        )
        self.rebuild_seconds = Histogram(
            "simmesh_controller_rebuild_seconds",
            "Time to rebuild the MeshConfig",
            buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10),
            registry=self.registry,
        )
        self.objects = Gauge(
            "simmesh_controller_objects", "Objects in the store", ["kind"], registry=self.registry
        )
        self.errors = Gauge(
            "simmesh_controller_object_errors", "Objects with errors", registry=self.registry
        )
        self.services = Gauge(
            "simmesh_controller_services", "Meshed services", registry=self.registry
        )
        self.proxies = Gauge(
            "simmesh_controller_proxies", "Proxies seen", ["state"], registry=self.registry
        )
        self.version = Gauge(
            "simmesh_controller_config_info",
            "Current config version",
            ["version"],
            registry=self.registry,
        )
        self.polls = Counter(
            "simmesh_controller_config_polls",
            "Config polls answered",
            ["code"],
            registry=self.registry,
        )
        self.deltas = Counter(
            "simmesh_controller_config_delta_polls",
            "Polls asking for a delta answered with one (delta) or with the full config (full: "
            "their version is not among the last configs, or the delta is as large)",
            ["answer"],
            registry=self.registry,
        )

    def refresh(self, controller: Controller) -> None:
        controller.expire_nodes(every=0.0)
        for kind, n in controller.store.counts().items():
            self.objects.labels(kind).set(n)
        current = controller.current
        if current is None:
            return
        self.errors.set(len(current.config.errors))
        self.services.set(len(current.topology.services))
        self.version.clear()
        self.version.labels(current.config.version).set(1)
        synced = sum(1 for n in controller.nodes.values() if n.version == current.config.version)
        self.proxies.labels("synced").set(synced)
        self.proxies.labels("behind").set(len(controller.nodes) - synced)


METRICS = web.AppKey("metrics", Metrics)


def _requested_version(request: web.Request) -> str | None:
    version = request.query.get("version")
    if version:
        return version
    etag = request.headers.get("If-None-Match", "").strip()
    if etag.startswith("W/"):
        etag = etag[2:]
    return etag.strip('"') or None


class BadQuery(Exception):
    pass


def _poll_query(request: web.Request) -> tuple[str | None, str | None, float]:
    """(version, node, wait) of a config poll, or BadQuery naming the bad parameter."""
    version = _requested_version(request)
    if version is not None and not _VERSION.fullmatch(version):
        raise BadQuery("version: expected at most 64 characters of A-Z a-z 0-9 . _ -")
    node = request.query.get("node") or None
    if node is not None and not is_dns_subdomain(node):
        raise BadQuery("node: expected a node name (a DNS subdomain of at most 253 characters)")
    try:
        wait = float(request.query.get("wait", "30"))
    except ValueError:
        wait = math.nan
    if not math.isfinite(wait):
        raise BadQuery("wait: expected seconds")
    return version, node, min(MAX_WAIT, max(0.0, wait))


def _authorized(request: web.Request, token: str | None) -> bool:
    if token is None:
        return True
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    # As bytes: compare_digest refuses str with non-ASCII characters (a TypeError, once a 500).
    presented = given.strip().encode("utf-8", "surrogateescape")
    return scheme.lower() == "bearer" and hmac.compare_digest(presented, token.encode())


def make_app(controller: Controller, *, token: str | None = None) -> web.Application:
    metrics = Metrics()

    def observe(published: Published) -> None:
        metrics.rebuilds.inc()
        metrics.rebuild_seconds.observe(published.duration)

    controller.listeners.append(observe)

    async def config(request: web.Request) -> web.StreamResponse:
        try:
            version, node, wait = _poll_query(request)
        except BadQuery as exc:
            metrics.polls.labels("400").inc()
            return web.json_response({"error": str(exc)}, status=400)
        if node is not None and not _authorized(request, token):
            metrics.polls.labels("401").inc()
            return web.json_response(
                {"error": "a poll naming a node needs the proxy token (Authorization: Bearer)"},
                status=401,
                headers={"WWW-Authenticate": "Bearer"},
            )
        if node and version:
            controller.report_node(node, version)
        current = controller.current
        if current is None or current.config.version == version:
            current = await controller.wait_for_change(version, wait)
            if node and version and not controller.closing:
                controller.report_node(node, version)  # still polling: still alive
        if current is None:
            metrics.polls.labels("304" if version else "503").inc()
            if version:
                return web.Response(status=304, headers={"ETag": f'"{version}"'})
            return web.json_response({"error": "no config built yet"}, status=503)
        metrics.polls.labels("200").inc()
        if version and request.query.get("delta") == "1":
            delta = controller.delta(version)
            metrics.deltas.labels("full" if delta is None else "delta").inc()
            if delta is not None:
                return web.Response(
                    body=delta,
                    content_type=schema.DELTA_CONTENT_TYPE,
                    headers={"ETag": f'"{current.config.version}"'},
                )
        body = current.body or schema.encode(current.config)
        return web.Response(
            body=body,
            content_type="application/json",
            headers={"ETag": f'"{current.config.version}"'},
        )

    async def topology(_: web.Request) -> web.Response:
        return web.json_response(
            controller.topology_view(), dumps=lambda d: json.dumps(d, sort_keys=True)
        )

    async def nodes(_: web.Request) -> web.Response:
        controller.expire_nodes(every=0.0)
        current = controller.current
        return web.json_response(
            {
                "version": current.config.version if current else None,
                "nodes": [
                    {
                        "node": name,
                        "version": n.version,
                        "lastSeen": round(n.last_seen, 3),
                        "current": current is not None and n.version == current.config.version,
                        "ageSeconds": round(time.time() - n.last_seen, 3),
                    }
                    for name, n in sorted(controller.nodes.items())
                ],
            }
        )

    async def healthz(_: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def readyz(_: web.Request) -> web.Response:
        if controller.ready:
            return web.Response(text="ready\n")
        why = controller.failure or "no config built yet"
        return web.Response(status=503, text=f"{why}\n")

    async def prometheus(_: web.Request) -> web.Response:
        metrics.refresh(controller)
        return web.Response(
            body=generate_latest(metrics.registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    @web.middleware
    async def closing(request: web.Request, handler: Handler) -> web.StreamResponse:
        response = await handler(request)
        if controller.parting:
            response.force_close()
        return response

    app = web.Application(middlewares=[closing])
    app[METRICS] = metrics
    app.router.add_get("/api/v1/config", config)
    app.router.add_get("/api/v1/topology", topology)
    app.router.add_get("/api/v1/nodes", nodes)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", prometheus)
    return app
