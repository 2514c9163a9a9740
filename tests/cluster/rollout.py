"""Traffic through the mesh while part of it rolls (see test_2_upgrade.py).

:class:`Load` keeps test app pods calling each other through the mesh from inside their pods
(``/call``: ``count`` requests, ``concurrency`` at a time, one keep-alive pool per batch,
batch after batch) until it is stopped, and counts every request that did not answer 200 by
kind of failure. :class:`HeldFlow` is one long-lived TCP connection through the mesh (``/call``
with ``hold``: a line echoed every 0.5 s), which must not be cut. :class:`PodWatch` notes when
each pod of a selector was first seen terminating and when it was gone, for the drain times.

Everything goes through the API server (the pod proxy for ``/call``, ``kubectl get`` for the
pods); the runner never talks to a pod directly.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from tests.cluster import kube as k


@dataclass
class Tally:
    """What one caller's batches came back with."""

    batches: int = 0
    requests: int = 0
    failures: Counter[str] = field(default_factory=Counter)  # "refused", "503", ...
    examples: list[dict[str, Any]] = field(default_factory=list)  # a few failed results
    broken: list[str] = field(default_factory=list)  # /call itself failed (not the mesh)

    def add(self, results: list[dict[str, Any]]) -> None:
        self.batches += 1
        self.requests += len(results)
        for result in results:
            if result["error"] is None and result["status"] == 200:
                continue
            self.failures[str(result["error"] or result["status"])] += 1
            if len(self.examples) < 5:
                self.examples.append(result)


class Load:
    """Callers (a pod and a mesh URL each) calling in batches until :meth:`stop`."""

    def __init__(
        self, callers: list[tuple[k.App, str]], *, count: int = 300, concurrency: int = 2
    ) -> None:
        self.callers = callers
        self.count = count
        self.concurrency = concurrency
        self.tallies = [Tally() for _ in callers]
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._run, args=(app, url, tally), daemon=True)
            for (app, url), tally in zip(callers, self.tallies, strict=True)
        ]

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self, app: k.App, url: str, tally: Tally) -> None:
        while not self._stop.is_set():
            try:
                answer = app.call(url, count=self.count, concurrency=self.concurrency, timeout=5)
            except (k.KubeError, ValueError) as exc:  # the API server's pod proxy, not the mesh
                tally.broken.append(str(exc)[:300])
                time.sleep(0.5)
                continue
            tally.add(answer["results"])

    def stop(self) -> None:
        """Stop after the batches in progress (each is counted whole)."""
        self._stop.set()
        for thread in self._threads:
            if thread.is_alive():
                thread.join(timeout=120)

    @property
    def requests(self) -> int:
        return sum(t.requests for t in self.tallies)

    @property
    def failures(self) -> Counter[str]:
        total: Counter[str] = Counter()
        for tally in self.tallies:
            total.update(tally.failures)
        return total

    def report(self) -> str:
        lines = []
        for (app, url), tally in zip(self.callers, self.tallies, strict=True):
            lines.append(
                f"{app.namespace}/{app.pod} -> {url}: {tally.requests} requests in "
                f"{tally.batches} batches, failed {dict(tally.failures)} {tally.examples[:3]}"
                + (f", /call broken: {tally.broken[:2]}" if tally.broken else "")
            )
        return "\n".join(lines)


class HeldFlow:
    """One TCP connection through the mesh, held open for ``seconds`` (from ``app``)."""

    def __init__(self, app: k.App, url: str, seconds: float) -> None:
        self.app = app
        self.url = url
        self.seconds = seconds
        self.result: dict[str, Any] | None = None
        self.started = 0.0
        self.ended = 0.0
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        self.started = time.monotonic()
        try:
            answer = self.app.call(self.url, hold=self.seconds, timeout=5)
            self.result = answer["results"][0]
        except (k.KubeError, ValueError) as exc:
            self.result = {"error": "call", "message": str(exc)[:300]}
        self.ended = time.monotonic()

    def start(self) -> HeldFlow:
        self._thread.start()
        return self

    def wait(self) -> dict[str, Any]:
        self._thread.join(timeout=self.seconds + 120)
        assert self.result is not None, f"the held flow from {self.app.pod} did not end"
        return self.result

    @property
    def expected_echoes(self) -> int:
        return int(self.seconds / 0.5)


class PodWatch:
    """When each pod of ``selector`` in ``namespace`` was seen terminating, and gone."""

    def __init__(self, kube: k.Kube, namespace: str, selector: str) -> None:
        self.kube = kube
        self.namespace = namespace
        self.selector = selector
        self.nodes: dict[str, str] = {}
        self.terminating: dict[str, float] = {}
        self.gone: dict[str, float] = {}
        self._seen: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> PodWatch:
        self._poll()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            try:
                self._poll()
            except k.KubeError:
                continue

    def _poll(self) -> None:
        now = time.monotonic()
        items = self.kube.json("get", "pods", "-n", self.namespace, "-l", self.selector)["items"]
        present = set()
        for pod in items:
            name = pod["metadata"]["name"]
            present.add(name)
            self.nodes[name] = pod["spec"].get("nodeName", "")
            if pod["metadata"].get("deletionTimestamp") and name not in self.terminating:
                self.terminating[name] = now
        for name in self._seen - present:
            self.gone.setdefault(name, now)
        self._seen |= present

    def drained(self, names: set[str]) -> bool:
        return names <= set(self.gone)

    def drain_seconds(self, name: str) -> float:
        """From first seen terminating to gone (the polling's resolution: 0.5 s and a
        kubectl call)."""
        return self.gone[name] - self.terminating.get(name, self.gone[name])
