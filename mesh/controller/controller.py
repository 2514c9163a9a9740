"""The controller: watch -> store -> one debounced, level-triggered rebuild -> publish.

Providers put objects into the :class:`~mesh.controller.store.Store` and call :meth:`poke`.
:meth:`Controller.run` waits for pokes, lets a burst of events settle (``debounce``, at most
``max_delay``), snapshots the store and rebuilds the MeshConfig through the core in a worker
thread, so the API keeps answering. Each rebuild that changes the config publishes it:
long-polling proxies wake up, and the ``on_publish`` hooks run (shadow Services, Events).

The rebuild is incremental and gives what a build from nothing gives: each Service whose
inputs are unchanged since the last rebuild (the same parsed Service and EndpointSlices, since
the store keeps an object's parsed value until the object changes; equal settings, pod
identities, split, GAMMA routes and, with ACL, grants) keeps its part of the topology and of
the config (mesh.core.topology.TopologyCache, mesh.core.config.ConfigCache). The JSON is
encoded once, version included, and every proxy's poll gets those bytes. At 10,000 Services a
change rebuilds in a fraction of a full build (BENCHMARKS.md, the controller section).

Delta answers: the controller keeps the parts of its last ``history`` configs (each route's
and cluster's JSON, which the next builds share where they did not change), so a proxy
polling with one of those versions can be sent only what changed (:meth:`Controller.delta`,
mesh.core.config.config_delta; docs/proxy.md, "Delta answers").

Port assignments are stable across rebuilds (the previous config's) and across restarts (the
assignments read back from the shadow Services before the first build).

The first config waits until every provider has read each of its kinds once
(``pending_sync``): built from a partial store (Services listed, TrafficTargets or
EndpointSlices not yet), it would deny or drop traffic on every proxy that applied it, which is
what a restarted controller must never do.

Readiness: ready once a config is built and while every supervised task (:meth:`supervise`:
the providers' watchers, the rebuild loop) runs; a task that ends or dies makes the controller
unready for good (``/readyz`` 503 with the reason, logged with its traceback), so Kubernetes
stops sending it proxies and restarts it instead of it serving a config that no longer follows
the cluster.

Proxies report the version they applied (:meth:`report_node`); an entry expires when its proxy
has not polled for ``node_ttl`` seconds, and at most ``max_nodes`` are kept.

Stopping (SIGTERM) is in two steps, so that a controller can be replaced by a newer one
rolled out beside it (the chart's Deployment surges): :meth:`part` at once, after which the
controller writes nothing more to the cluster (no publish hooks: the shadow Services are the
new controller's to keep) while still answering proxies, then :meth:`close`, which answers
every waiting long-poll. Two controllers running side by side build the same config from the
same objects (the version is a digest of the config, and listener ports are read back from
the shadow Services), so a proxy may poll either.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import gc
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec

from mesh.controller.store import Store
from mesh.core import schema
from mesh.core.config import ConfigCache, ConfigParts, MeshConfig, build_config_parts, config_delta
from mesh.core.model import Settings
from mesh.core.topology import Topology, TopologyCache, build_topology

log = logging.getLogger("simmesh.controller")

Hook = Callable[[MeshConfig, Topology], Awaitable[None]]


@dataclass
class NodeStatus:
    version: str
    last_seen: float


@dataclass
class Published:
    config: MeshConfig
    topology: Topology
    built_at: float
    duration: float
    body: bytes = b""  # the config's compact JSON, encoded once for every proxy's poll
    parts: ConfigParts | None = None  # its routes' and clusters' JSON, for deltas


@dataclass
class Controller:
    settings: Settings
    store: Store = field(default_factory=Store)
    debounce: float = 0.05
    max_delay: float = 0.5
    previous_ports: dict[str, int] = field(default_factory=dict)
    hooks: list[Hook] = field(default_factory=list)  # run after each new config is published
    listeners: list[Callable[[Published], None]] = field(default_factory=list)  # every rebuild
    node_ttl: float = 120.0  # seconds without a poll before a proxy's entry is dropped
    max_nodes: int = 10_000
    history: int = 8  # recent configs a delta answer can start from (see :meth:`delta`)

    def __post_init__(self) -> None:
        self.current: Published | None = None
        self.nodes: dict[str, NodeStatus] = {}
        self.rebuilds = 0
        self.last_error: str | None = None
        self.failure: str | None = None  # why a supervised task stopped: unready for good
        self.pending_sync: set[str] = set()  # kinds a provider has not listed yet: no build
        self._full_logged = 0.0
        self._expired_at = 0.0
        self._poked = asyncio.Event()
        self._published = asyncio.Condition()
        self._built_changes = -1
        self.closing = False
        self.parting = False  # stopping: no more writes to the cluster (publish hooks)
        self._hooks_pending = False
        self._hook_task: asyncio.Task[None] | None = None
        # what the last rebuild made of each Service, reused by the next where its inputs
        # are the same (mesh.core.topology.TopologyCache, mesh.core.config.ConfigCache)
        self._caches = (TopologyCache(), ConfigCache())
        # the last configs' parts by version, oldest first; and the delta answers from each
        # to the current config, encoded once for every proxy that polls with that version
        self._history: dict[str, ConfigParts] = {}
        self._deltas: dict[str, bytes | None] = {}
        self.delta_answers = {"delta": 0, "full": 0}

    # -- providers ------------------------------------------------------------------------

    def poke(self) -> None:
        self._poked.set()

    @property
    def ready(self) -> bool:
        return self.current is not None and self.failure is None

    def supervise(self, task: asyncio.Task[Any], name: str) -> None:
        """A task that must run as long as the controller does (a watcher, the rebuild loop)."""

        def done(task: asyncio.Task[Any]) -> None:
            if task.cancelled() or self.closing:
                return
            exc = task.exception()
            reason = f"{name} stopped: {exc!r}" if exc is not None else f"{name} returned"
            if self.failure is None:
                self.failure = reason
            log.error("%s; the controller is not ready any more", reason, exc_info=exc)

        task.add_done_callback(done)

    # -- rebuild --------------------------------------------------------------------------

    async def run(self) -> None:
        while True:
            await self._poked.wait()
            await self._settle()
            self._poked.clear()
            if self.pending_sync:
                continue
            if self.store.changes == self._built_changes and self.current is not None:
                continue
            await self.rebuild()

    async def _settle(self) -> None:
        start = time.monotonic()
        seen = self.store.changes
        while time.monotonic() - start < self.max_delay:
            await asyncio.sleep(self.debounce)
            if self.store.changes == seen:
                return
            seen = self.store.changes

    async def rebuild(self) -> Published:
        changes = self.store.changes
        state = self.store.snapshot()
        previous = dict(self.previous_ports)
        if self.current is not None:
            previous.update(self.current.config.port_assignments())
        start = time.perf_counter()
        topology, config, body, parts = await asyncio.to_thread(
            _build_parts, state, self.settings, previous, self._caches
        )
        published = Published(
            config, topology, time.time(), time.perf_counter() - start, body, parts
        )
        self._built_changes = changes
        self.rebuilds += 1
        changed = self.current is None or self.current.config.version != config.version
        self.current = published  # the previous config is freed here (no cycles)
        if changed:
            self._remember(parts)
        for listener in self.listeners:
            listener(published)
        if changed:
            log.info(
                "config %s built in %.3fs (%d services, %d errors)",
                config.version,
                published.duration,
                len(topology.services),
                len(config.errors),
            )
            async with self._published:
                self._published.notify_all()
            self._run_hooks()
        _release_memory()
        return published

    def _remember(self, parts: ConfigParts) -> None:
        self._deltas = {}
        self._history.pop(parts.config.version, None)
        self._history[parts.config.version] = parts
        while len(self._history) > max(1, self.history):
            del self._history[next(iter(self._history))]

    def delta(self, base: str) -> bytes | None:
        """A delta answer (mesh.core.schema.ConfigDelta, JSON) from the config ``base`` to the
        current one; None when ``base`` is not one of the last ``history`` configs, or when
        the delta would be at least half the size of the full config (send that instead)."""
        current = self.current
        if current is None or current.parts is None or base == current.config.version:
            return None
        if base in self._deltas:
            answer = self._deltas[base]
        else:
            old = self._history.get(base)
            answer = None
            if old is not None:
                answer = schema.encode_value(config_delta(old, current.parts))
                if len(answer) * 2 >= len(current.body):
                    answer = None
            if len(self._deltas) < 4 * max(1, self.history):
                self._deltas[base] = answer
        self.delta_answers["full" if answer is None else "delta"] += 1
        return answer

    def _run_hooks(self) -> None:
        """Hooks (shadow Services, Events) run beside the rebuild loop, never in its way: a
        slow API server must not delay the next config. They always work on the latest one."""
        if self.parting:
            return
        self._hooks_pending = True
        if self._hook_task is None or self._hook_task.done():
            self._hook_task = asyncio.create_task(self._hook_loop())

    async def _hook_loop(self) -> None:
        while self._hooks_pending and self.current is not None and not self.parting:
            self._hooks_pending = False
            current = self.current
            for hook in self.hooks:
                try:
                    await hook(current.config, current.topology)
                except Exception:  # a failing hook must not stop publishing
                    log.exception("publish hook failed")

    async def hooks_idle(self) -> None:
        """Wait until the hooks have caught up with the current config (for tests)."""
        while self._hook_task is not None and not self._hook_task.done():
            await asyncio.shield(self._hook_task)

    async def wait_for_change(self, version: str | None, timeout: float) -> Published | None:
        """The current config once its version differs from ``version`` (None on timeout)."""
        deadline = time.monotonic() + timeout
        async with self._published:
            while self.current is None or self.current.config.version == version:
                if self.closing:
                    return None
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                try:
                    await asyncio.wait_for(self._published.wait(), remaining)
                except TimeoutError:
                    return None
        return self.current

    def part(self) -> None:
        """Stopping: write nothing more to the cluster (a hook run in progress finishes);
        keep building and serving configs until :meth:`close`."""
        self.parting = True

    async def close(self) -> None:
        """Answer every waiting long-poll now (304): shutting down must not wait for them."""
        self.closing = True
        async with self._published:
            self._published.notify_all()
        if self._hook_task is not None and not self._hook_task.done():
            self._hook_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._hook_task

    def report_node(self, node: str, version: str) -> bool:
        """Record that ``node``'s proxy applied ``version``; False when the table is full."""
        now = time.time()
        self.expire_nodes(now)
        if node not in self.nodes and len(self.nodes) >= self.max_nodes:
            self.expire_nodes(now, every=0.0)
        if node not in self.nodes and len(self.nodes) >= self.max_nodes:
            if now - self._full_logged > 60.0:
                self._full_logged = now
                log.warning("%d proxies recorded: not recording %s", self.max_nodes, node)
            return False
        self.nodes[node] = NodeStatus(version, now)
        return True

    def expire_nodes(self, now: float | None = None, *, every: float = 1.0) -> None:
        now = time.time() if now is None else now
        if now - self._expired_at < every:
            return
        self._expired_at = now
        cutoff = now - self.node_ttl
        for name in [n for n, status in self.nodes.items() if status.last_seen < cutoff]:
            del self.nodes[name]

    def topology_view(self) -> dict[str, Any]:
        if self.current is None:
            return {"ready": False}
        topology = self.current.topology
        return {
            "ready": True,
            "version": self.current.config.version,
            "builtAt": self.current.built_at,
            "buildSeconds": round(self.current.duration, 6),
            "services": {
                key: {
                    "trafficType": s.options.traffic_type.value,
                    "scheme": s.options.scheme.value,
                    "ports": [
                        {
                            "name": p.name,
                            "port": p.port,
                            "targetPort": p.target_port,
                            "endpoints": [
                                {"ip": e.ip, "port": e.port, "node": e.node, "identity": e.identity}
                                for e in p.endpoints
                            ],
                        }
                        for p in s.ports
                    ],
                }
                for key, s in sorted(topology.services.items())
            },
            "splits": {
                key: {
                    "name": f"{s.namespace}/{s.name}",
                    "backends": [{"service": b, "weight": w} for b, w in s.backends],
                }
                for key, s in sorted(topology.splits.items())
            },
            "routes": {  # GAMMA: the routes attached to each Service port, per caller scope
                f"{service}:{port}": {
                    scope or "producer": [f"{r.kind} {r.key}" for r in routes]
                    for scope, routes in sorted(scopes.items())
                }
                for (service, port), scopes in sorted(topology.routes.items())
            },
            "grants": [
                {
                    "target": g.target,
                    "destination": g.destination,
                    "sources": list(g.sources),
                    "kind": g.kind,
                    "route": g.route,
                    "match": g.match.name if g.match else None,
                }
                for g in topology.grants
            ],
            "errors": msgspec.to_builtins(self.current.config.errors),
            "objects": self.store.counts(),
        }


def _release_memory() -> None:
    """Hand the previous config's memory back to the OS: a rebuild at 10,000 Services frees
    hundreds of MB that glibc would otherwise keep mapped (RSS only ever grows)."""
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


def _load_libc() -> Any:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim  # noqa: B018 - glibc only
    except (OSError, AttributeError):
        return None
    return libc


_LIBC = _load_libc()


def _build(
    state: Any,
    settings: Settings,
    previous: dict[str, int],
    caches: tuple[TopologyCache, ConfigCache] | None = None,
) -> tuple[Topology, MeshConfig, bytes]:
    topology, config, body, _ = _build_parts(state, settings, previous, caches)
    return topology, config, body


def _build_parts(
    state: Any,
    settings: Settings,
    previous: dict[str, int],
    caches: tuple[TopologyCache, ConfigCache] | None = None,
) -> tuple[Topology, MeshConfig, bytes, ConfigParts]:
    """The core's rebuild and its JSON, with the collector paused: a rebuild allocates millions
    of small objects that all stay alive, so generational collections during it are pure
    overhead. With ``caches``, each Service whose inputs did not change since the last
    rebuild is taken from it (the same config as a build from nothing)."""
    topology_cache, config_cache = caches if caches is not None else (None, None)
    enabled = gc.isenabled()
    gc.disable()
    try:
        topology = build_topology(state, settings, topology_cache)
        config, body, parts = build_config_parts(topology, settings, previous, config_cache)
        return topology, config, body, parts
    finally:
        if enabled:
            gc.enable()
