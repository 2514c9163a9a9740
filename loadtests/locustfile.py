"""Locust traffic through the mesh: a read-heavy API mix against one meshed service.

Clients call the node proxy's HTTP listener with the service's mesh name as Host, exactly as
pods do (``<svc>.<ns>.mesh``), so every request goes through the proxy's routing, policies and
metrics. Run it with ``python -m loadtests.run_locust`` (starts a backend and a proxy, runs
headless for a bounded time, writes CSV to out/loadtest/), or against any running proxy:

    SIMMESH_HOST=backend.demo.mesh locust -f loadtests/locustfile.py \\
        --host http://127.0.0.1:5000 --headless -u 20 -r 10 -t 30s

Tags select parts of the mix: ``--tags read``, ``--tags write``, ``--exclude-tags health``.
"""

from __future__ import annotations

import os
import random

from locust import HttpUser, between, tag, task

MESH_HOST = os.environ.get("SIMMESH_HOST", "web.demo.mesh")


class MeshUser(HttpUser):
    wait_time = between(0.01, 0.1)

    def on_start(self) -> None:
        self.client.headers["Host"] = MESH_HOST

    @tag("read")
    @task(10)
    def list_items(self) -> None:
        self.client.get("/api/items", name="GET /api/items")

    @tag("read")
    @task(6)
    def get_item(self) -> None:
        self.client.get(f"/api/items/{random.randint(1, 1000)}", name="GET /api/items/{id}")

    @tag("write")
    @task(3)
    def create_item(self) -> None:
        self.client.post(
            "/api/items",
            json={"name": "widget", "size": random.randint(1, 9)},
            name="POST /api/items",
        )

    @tag("write")
    @task(1)
    def update_item(self) -> None:
        self.client.put(
            f"/api/items/{random.randint(1, 1000)}", json={"size": 3}, name="PUT /api/items/{id}"
        )

    @tag("health")
    @task(1)
    def health(self) -> None:
        self.client.head("/healthz", name="HEAD /healthz")
