"""Route status out: ``status.parents`` of HTTPRoutes and GRPCRoutes, written as the core decides.

The core decides each route's entries (:func:`mesh.core.status.route_statuses`, from the
topology of the rebuild) and how they merge into the route's current ``status.parents``
(:func:`mesh.core.status.merge_parents`). This module keeps the routes' current status as the
watch delivers it (:meth:`RouteStatusWriter.observe`, fed by the Kubernetes provider), and
after every rebuild writes the routes whose status differs, beside the rebuild loop like the
publish hooks: a slow or failing API server never delays a config.

``status.parents`` is an atomic list shared with other controllers (Gateways' routes name both
kinds of parent), so a write is a read-modify-write: a JSON merge patch of the status
subresource carrying the ``resourceVersion`` it was computed from. A conflict (409: someone
wrote in between) reads the route again and merges again; other failures are logged and
retried with backoff. Entries of other controllers are never changed; ours are removed from a
route that no longer names the Service, or no longer has any (a deleted route needs nothing).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import UTC, datetime
from typing import Any

from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from mesh.controller.controller import Controller, Published
from mesh.core.gateway import GROUP
from mesh.core.status import RouteId, RouteStatus, merge_parents, route_statuses

log = logging.getLogger("simmesh.controller.status")
KINDS = {"HTTPRoute": "httproutes", "GRPCRoute": "grpcroutes"}
VERSION = "v1"
FIELD_MANAGER = "simmesh-controller"
CONCURRENCY = 16  # status writes in flight
ATTEMPTS = 3  # merges per route and round when others write in between (409)


class RouteStatusWriter:
    """Writes route status after each rebuild; fed the routes as watched."""

    def __init__(
        self,
        api: client.ApiClient,
        controller: Controller,
        *,
        controller_name: str,
        backoff_max: float = 30.0,
    ) -> None:
        self.custom = client.CustomObjectsApi(api)
        self.controller = controller
        self.controller_name = controller_name
        self.backoff_max = backoff_max
        self.backoff = 0.5
        # (kind, namespace, name) -> (resourceVersion, status.parents) as last seen
        self.seen: dict[RouteId, tuple[str, list[dict[str, Any]]]] = {}
        self.writes = 0
        self.failures = 0
        self._latest: Published | None = None
        self._pending = False
        self._task: asyncio.Task[None] | None = None
        self._retry: asyncio.TimerHandle | None = None
        controller.listeners.append(self.published)

    # -- fed by the watches -------------------------------------------------------------------

    def listed(self, kind: str, docs: list[dict[str, Any]]) -> None:
        """A relist of ``kind`` (an empty one when its CRD is not installed)."""
        if kind not in KINDS:
            return
        for key in [k for k in self.seen if k[0] == kind]:
            del self.seen[key]
        for doc in docs:
            self.observe(kind, "ADDED", doc)

    def observe(self, kind: str, event: str, doc: dict[str, Any]) -> None:
        if kind not in KINDS:
            return
        meta = doc.get("metadata") or {}
        key = (kind, str(meta.get("namespace") or ""), str(meta.get("name") or ""))
        if event == "DELETED":
            self.seen.pop(key, None)
            return
        parents = (doc.get("status") or {}).get("parents") or []
        self.seen[key] = (str(meta.get("resourceVersion") or ""), list(parents))

    # -- after each rebuild ---------------------------------------------------------------------

    def published(self, published: Published) -> None:
        self._latest = published
        self.kick()

    def kick(self) -> None:
        if self.controller.parting:
            return
        self._pending = True
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._loop())

    async def idle(self) -> None:
        """Wait until the writes have caught up with the latest rebuild (for tests)."""
        while self._task is not None and not self._task.done():
            await asyncio.shield(self._task)

    async def _loop(self) -> None:
        while self._pending and self._latest is not None and not self.controller.parting:
            self._pending = False
            try:
                failed = await self.reconcile(route_statuses(self._latest.topology))
            except Exception:  # never stop writing status for good
                log.exception("route status: reconcile failed")
                failed = 1
            if failed:
                self._schedule_retry()
            else:
                self.backoff = 0.5

    def _schedule_retry(self) -> None:
        if self._retry is not None:
            self._retry.cancel()
        delay, self.backoff = self.backoff, min(self.backoff_max, self.backoff * 2)
        self._retry = asyncio.get_running_loop().call_later(delay, self.kick)

    async def reconcile(self, statuses: dict[RouteId, RouteStatus]) -> int:
        """Write every route whose status differs; the number of routes that failed."""
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")  # seconds: as stored
        limit = asyncio.Semaphore(CONCURRENCY)
        keys = sorted(set(self.seen) | set(statuses))

        async def one(key: RouteId) -> bool:
            async with limit:
                return await self._write(key, statuses.get(key), now)

        results = await asyncio.gather(*(one(k) for k in keys if k in self.seen))
        return sum(1 for ok in results if not ok)

    async def _write(self, key: RouteId, status: RouteStatus | None, now: str) -> bool:
        kind, namespace, name = key
        for _ in range(ATTEMPTS):
            seen = self.seen.get(key)
            if seen is None:
                return True  # deleted meanwhile
            version, current = seen
            parents = merge_parents(current, status, controller_name=self.controller_name, now=now)
            if parents is None or self.controller.parting:
                return True
            patch = {
                "metadata": {"resourceVersion": version},
                "status": {"parents": parents},
            }
            # its typed signature omits the request options (_content_type) it takes
            write: Any = self.custom.patch_namespaced_custom_object_status
            try:
                doc = await write(
                    GROUP,
                    VERSION,
                    namespace,
                    KINDS[kind],
                    name,
                    patch,
                    field_manager=FIELD_MANAGER,
                    _content_type="application/merge-patch+json",
                )
            except ApiException as exc:
                if exc.status == 404:
                    self.seen.pop(key, None)  # deleted: nothing to write
                    return True
                if exc.status == 409 and await self._reread(key):
                    continue
                self.failures += 1
                log.warning("%s %s/%s: status write failed: %s", kind, namespace, name, exc.reason)
                return False
            self.writes += 1
            self.observe(kind, "MODIFIED", doc)
            return True
        return False

    async def _reread(self, key: RouteId) -> bool:
        """The route as it is now, after a conflict; False when it cannot be read."""
        kind, namespace, name = key
        try:
            doc = await self.custom.get_namespaced_custom_object_status(
                GROUP, VERSION, namespace, KINDS[kind], name
            )
        except ApiException as exc:
            if exc.status == 404:
                self.seen.pop(key, None)
                return True
            return False
        self.observe(kind, "MODIFIED", doc)
        return True

    async def close(self) -> None:
        if self._retry is not None:
            self._retry.cancel()
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
