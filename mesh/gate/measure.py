"""The proxies' traffic as the gate knows it: the last few minutes that saw any.

Every ``interval`` seconds the controller lists the proxy pods of its namespace (through the
API server) and scrapes each one's ``/metrics`` directly on the pod network
(``http://POD_IP:9901/metrics``); the difference of two consecutive scrapes, per node, is a
window (mesh/gate/job.py :class:`~mesh.gate.job.Window`), read as ``simmesh snapshot`` reads
its own (mesh/snapshot/model.py). The gate simulates the windows of the last ``history``
seconds added up (5 minutes by default, as ``simmesh snapshot --window``), so a caller that
paused for one interval is still protected; when none of them saw traffic, the last such sum
that did, so a quiet spell does not leave it with nothing to protect. ``GET /api/v1/gate``
shows its span, age and requests per service. A proxy that does not answer is left out of a
window; a restarted one counts from zero.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Awaitable, Callable, Iterable

import aiohttp

from mesh.gate.job import Window
from mesh.snapshot.cluster import ADMIN_PORT, ProxyPod
from mesh.snapshot.exposition import ExpositionError, Table, add, difference, parse

log = logging.getLogger("simmesh.gate")
SCRAPE_TIMEOUT = 5.0

Lister = Callable[[], Awaitable[tuple[ProxyPod, ...]]]
Scraper = Callable[[ProxyPod], Awaitable[Table | None]]


async def scrape_direct(session: aiohttp.ClientSession, pod: ProxyPod) -> Table | None:
    url = f"http://{pod.ip}:{ADMIN_PORT}/metrics"
    try:
        async with session.get(url, timeout=aiohttp.ClientTimeout(total=SCRAPE_TIMEOUT)) as resp:
            if resp.status != 200:
                return None
            return parse(await resp.text())
    except (aiohttp.ClientError, TimeoutError, OSError, ExpositionError):
        return None


def combined(windows: Iterable[Window]) -> Window | None:
    """Consecutive windows as one: their tables added per node, their spans together."""
    parts = list(windows)
    if not parts:
        return None
    nodes = sorted({node for w in parts for node in w.per_node})
    per_node = {node: add(w.per_node[node] for w in parts if node in w.per_node) for node in nodes}
    return Window(per_node, sum(w.seconds for w in parts), parts[-1].ended)


class Measurer:
    def __init__(
        self, lister: Lister, scraper: Scraper, *, interval: float, history: float = 300.0
    ) -> None:
        self.lister = lister
        self.scraper = scraper
        self.interval = interval
        self.history = history
        self.previous: dict[str, tuple[str, Table]] = {}  # pod -> (node, table)
        self.previous_at = 0.0
        self.windows: collections.deque[Window] = collections.deque()  # the last history s
        self.latest: Window | None = None  # what the gate simulates (see the module)
        self.last: Window | None = None  # the latest window, with traffic or not

    async def tick(self) -> Window | None:
        """Scrape every proxy; the window since the previous scrape (None the first time)."""
        pods = await self.lister()
        tables = await asyncio.gather(*(self.scraper(p) for p in pods))
        now = time.time()
        current = {p.name: (p.node, t) for p, t in zip(pods, tables, strict=True) if t is not None}
        window = None
        if self.previous:
            per_node: dict[str, list[Table]] = {}
            for name, (node, table) in current.items():
                old = self.previous.get(name, (node, {}))[1]
                per_node.setdefault(node, []).append(difference(old, table))
            merged = {node: add(parts) for node, parts in per_node.items()}
            window = Window(merged, now - self.previous_at, now)
            self.last = window
            self.windows.append(window)
            oldest = now - self.history - self.interval / 2  # when the kept windows may start
            while (
                len(self.windows) > 1 and self.windows[0].ended - self.windows[0].seconds < oldest
            ):
                self.windows.popleft()
            recent = combined(self.windows)
            if recent is not None and recent.requests > 0:
                self.latest = recent
        self.previous, self.previous_at = current, now
        return window

    async def run(self) -> None:
        while True:
            try:
                await self.tick()
            except asyncio.CancelledError:
                raise
            except Exception:  # the next tick tries again; the last window stays
                log.exception("measuring the proxies failed")
            await asyncio.sleep(self.interval)
