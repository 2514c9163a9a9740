"""A fake API server (and Prometheus) for ``simmesh snapshot``, on a thread of its own.

It serves what the snapshot asks for: the mesh namespace, the ``simmesh-settings`` ConfigMap,
the proxy pods, each proxy's ``/metrics`` through the pod proxy subresource (empty at the
first scrape, the world's traffic after), the lists of every kind the mesh reads (with noise in
namespaces the mesh does not watch) and ``/prom/api/v1/query`` as a Prometheus would answer
``increase(...)``. It records every path asked for (no Secret may ever be).
"""

from __future__ import annotations

import asyncio
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from mesh.snapshot import exposition
from mesh.snapshot.objects import KINDS
from tests.snapshot import world

PROXIES = [("simmesh-proxy-a", "node-a", "10.244.1.2"), ("simmesh-proxy-b", "node-b", "10.244.2.2")]


@dataclass
class Fake:
    installed: bool = True
    window: float = 60.0  # seconds of the world's traffic in the second scrape
    traffic: bool = True
    paths: list[str] = field(default_factory=list)
    scrapes: dict[str, int] = field(default_factory=dict)
    port: int = 0

    def objects(self) -> list[dict[str, Any]]:
        dns = world.service("kube-dns", 53)
        dns["metadata"] = {"name": "kube-dns", "namespace": "kube-system"}
        shadow = world.service("web-6d61657368-shop", 5000)
        shadow["metadata"] = {"name": "web-6d61657368-shop", "namespace": "simmesh"}
        noise = [dns, shadow]
        return world.objects() + noise

    def metrics(self, pod: str) -> str:
        n = self.scrapes[pod] = self.scrapes.get(pod, 0) + 1
        if n == 1 or not self.traffic:
            return world.empty_metrics()
        node = next(node for name, node, _ in PROXIES if name == pod)
        return world.metrics(self.window)[0][node]

    def prometheus(self, promql: str) -> list[dict[str, Any]]:
        match = re.fullmatch(r"increase\((\w+)\[(\d+)s\]\)", promql)
        assert match, promql
        name = match.group(1)
        texts = world.metrics(float(match.group(2)))[0] if self.traffic else {}
        out = []
        for _, node, ip in PROXIES:
            if node not in texts:
                continue
            table = exposition.parse(texts[node])
            for labels, value in exposition.rows(table, name):
                metric = {**labels, "instance": f"{ip}:9901", "job": "simmesh-proxies"}
                out.append({"metric": metric, "value": [0, str(value)]})
        return out


def app(fake: Fake) -> web.Application:
    async def handle(request: web.Request) -> web.StreamResponse:
        path = request.path
        fake.paths.append(path)
        if path == "/prom/api/v1/query":
            result = fake.prometheus(request.query["query"])
            return web.json_response(
                {"status": "success", "data": {"resultType": "vector", "result": result}}
            )
        if not fake.installed and path.startswith("/api/v1/namespaces/simmesh"):
            return web.json_response({"message": "not found"}, status=404)
        if path == "/api/v1/namespaces/simmesh":
            return web.json_response({"metadata": {"name": "simmesh"}})
        if path == "/api/v1/namespaces/simmesh/configmaps/simmesh-settings":
            return web.json_response({"data": {"mesh.yaml": world.MESH_YAML}})
        if path == "/api/v1/namespaces/simmesh/pods":
            items = [
                {
                    "metadata": {"name": name, "namespace": "simmesh"},
                    "spec": {"nodeName": node},
                    "status": {"phase": "Running", "podIP": ip},
                }
                for name, node, ip in PROXIES
            ]
            return web.json_response({"items": items})
        proxied = re.fullmatch(r"/api/v1/namespaces/simmesh/pods/([^/:]+):9901/proxy/metrics", path)
        if proxied:
            return web.Response(text=fake.metrics(proxied.group(1)))
        for kind in KINDS:
            if path == kind.path():
                if kind.kind == "UDPRoute":  # its CRD is not installed
                    return web.json_response({"message": "not found"}, status=404)
                items = [d for d in fake.objects() if d["kind"] == kind.kind]
                return web.json_response({"kind": f"{kind.kind}List", "items": items})
        return web.json_response({"message": f"no {path}"}, status=404)

    application = web.Application()
    application.router.add_route("*", "/{tail:.*}", handle)
    return application


@contextmanager
def serving(fake: Fake) -> Iterator[Fake]:
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    runner = web.AppRunner(app(fake), access_log=None)

    def run() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(runner.setup())
        site = web.TCPSite(runner, "127.0.0.1", 0)
        loop.run_until_complete(site.start())
        fake.port = runner.addresses[0][1]
        ready.set()
        loop.run_forever()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    ready.wait(10)
    try:
        yield fake
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.run_until_complete(runner.cleanup())
        loop.close()


def kubeconfig(directory: Path, port: int) -> Path:
    path = directory / "kubeconfig"
    path.write_text(
        f"""apiVersion: v1
kind: Config
clusters:
- name: fake
  cluster: {{server: "http://127.0.0.1:{port}"}}
users:
- name: me
  user: {{token: not-a-secret}}
contexts:
- name: fake
  context: {{cluster: fake, user: me}}
current-context: fake
"""
    )
    return path
