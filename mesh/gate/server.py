"""The gate beside the controller: the webhook over TLS, the worker, the measurements.

:class:`Gate` answers one AdmissionReview: read it (mesh/gate/review.py), skip what cannot
change routing, read the SLO ConfigMap, build the what-if (mesh/gate/job.py) and hand it to
the waiting worker process (mesh/gate/worker.py) with what is left of the budget, then answer
for the mode. Reviews are simulated one at a time; one that waits past its budget for the one
before is undecided. The total stays within ``budget`` plus a second or two of overhead, below
the webhook's ``timeoutSeconds`` (the chart keeps them apart). Every review is counted
(``simmesh_controller_gate_reviews_total{outcome,decision}``) and the last ones are listed,
with the measured window, at ``GET /api/v1/gate`` on the controller's API.

:class:`GateExtension` plugs all of it into ``simmesh controller`` (mesh/controller/main.py):
it makes the store keep documents, starts the measurements and the first worker, adds
``/api/v1/gate`` and serves ``POST /validate`` on its own TLS port.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import ssl
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from prometheus_client import Counter, Gauge, Histogram

from mesh.controller.api import METRICS
from mesh.controller.controller import Controller
from mesh.dns.kube import ApiKube, KubeError, KubeUnreachable
from mesh.gate import job, review
from mesh.gate.measure import Measurer, scrape_direct
from mesh.gate.worker import READY
from mesh.snapshot.cluster import ProxyPod, proxy_pods
from mesh.snapshot.model import CALLS

log = logging.getLogger("simmesh.gate")
OVERHEAD = 1.0  # seconds of a review spent outside the simulation (ConfigMap, job, answer)
RECENT = 20


@dataclass(frozen=True)
class Options:
    mode: review.Mode
    listen: tuple[str, int]
    cert_dir: Path
    configmap: str  # name, in the mesh namespace
    budget: float
    seeds: int
    duration: float  # simulated seconds
    window: float  # measurement interval
    history: float = 300.0  # seconds of windows simulated together (mesh/gate/measure.py)


class Workers:
    """One worker process kept started (the simulator imported), used once, replaced after."""

    def __init__(self) -> None:
        self._next: asyncio.Task[asyncio.subprocess.Process] | None = None
        self._lock = asyncio.Lock()
        self._processes: set[asyncio.subprocess.Process] = set()

    def warm(self) -> None:
        if self._next is None:
            self._next = asyncio.create_task(self._spawn())

    async def _spawn(self) -> asyncio.subprocess.Process:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "mesh.gate.worker",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        self._processes.add(process)
        assert process.stdout is not None
        line = await process.stdout.readline()
        if line.decode().strip() != READY:
            await self._end(process)
            raise RuntimeError("the gate's worker did not start")
        return process

    async def run(self, work: dict[str, Any], deadline: float) -> dict[str, Any] | None:
        """The worker's answer to ``work``, or None when ``deadline`` (monotonic) passes."""
        try:
            async with asyncio.timeout_at(_loop_time(deadline)), self._lock:
                return await self._run(work)
        except TimeoutError:
            return None

    async def _run(self, work: dict[str, Any]) -> dict[str, Any]:
        self.warm()
        task, self._next = self._next, None
        assert task is not None
        try:
            process = await asyncio.shield(task)
        except asyncio.CancelledError:
            if self._next is None and not task.done():
                self._next = task  # still starting: the next review takes it
            raise
        except (RuntimeError, OSError) as exc:
            return {"error": str(exc)}
        try:
            assert process.stdin is not None and process.stdout is not None
            process.stdin.write(json.dumps(work).encode() + b"\n")
            await process.stdin.drain()
            line = await process.stdout.readline()
            answer: dict[str, Any] = json.loads(line) if line.strip() else {"error": "no answer"}
            return answer
        finally:
            await self._end(process)
            self.warm()

    async def _end(self, process: asyncio.subprocess.Process) -> None:
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
        with contextlib.suppress(Exception):
            await process.wait()
        self._processes.discard(process)

    async def close(self) -> None:
        if self._next is not None:
            self._next.cancel()
            with contextlib.suppress(BaseException):
                await self._next
            self._next = None
        for process in list(self._processes):
            await self._end(process)


def _loop_time(deadline: float) -> float:
    loop = asyncio.get_running_loop()
    return loop.time() + (deadline - time.monotonic())


class GateMetrics:
    def __init__(self, registry: Any) -> None:
        self.reviews = Counter(
            "simmesh_controller_gate_reviews",
            "Admission reviews: outcome (skipped, safe, breaks, undecided: out of time, failed: "
            "not simulated) and decision (allowed, warned, denied)",
            ["outcome", "decision"],
            registry=registry,
        )
        self.seconds = Histogram(
            "simmesh_controller_gate_review_seconds",
            "Time to answer an admission review that was simulated",
            buckets=(0.1, 0.25, 0.5, 1, 2, 3, 5, 8, 13, 20, 30),
            registry=registry,
        )
        self.window = Gauge(
            "simmesh_controller_gate_window_requests",
            "Requests and flows in the proxies' latest measured window with traffic",
            registry=registry,
        )


class Gate:
    def __init__(
        self,
        controller: Controller,
        options: Options,
        *,
        kube: ApiKube | None,
        measurer: Measurer | None,
        workers: Workers,
        metrics: GateMetrics | None = None,
    ) -> None:
        self.controller = controller
        self.options = options
        self.kube = kube
        self.measurer = measurer
        self.workers = workers
        self.metrics = metrics
        self.recent: collections.deque[dict[str, Any]] = collections.deque(maxlen=RECENT)

    @property
    def configmap(self) -> str:
        return f"{self.controller.settings.mesh_namespace}/{self.options.configmap}"

    async def handle(self, body: Any) -> dict[str, Any]:
        """The AdmissionReview response for ``body`` (BadReview for one it cannot read)."""
        started = time.monotonic()
        request = review.parse(body)
        skip = review.relevant(request, self.controller.settings)
        if skip is not None:
            verdict = review.Verdict(review.Outcome.SKIPPED, skip)
        else:
            verdict = await self._simulate(request, started + self.options.budget)
        allowed, message, warnings = review.decision(self.options.mode, verdict)
        self._record(request, verdict, allowed, message, warnings, time.monotonic() - started)
        return review.answer(request.uid, allowed, message, warnings)

    async def _simulate(self, request: review.Review, deadline: float) -> review.Verdict:
        try:
            data = await self._configmap()
        except (KubeUnreachable, KubeError) as exc:
            return review.Verdict(review.Outcome.FAILED, f"cannot read the SLOs: {exc}")
        documents = self.controller.store.documents or {}
        inputs = job.Inputs(
            docs=list(documents.values()),
            settings=self.controller.settings,
            window=self.measurer.latest if self.measurer is not None else None,
            configmap=self.configmap,
            data=data,
            seeds=self.options.seeds,
            duration=self.options.duration,
        )
        budget = deadline - time.monotonic() - OVERHEAD
        try:
            work = job.build(inputs, review.change(request), budget=max(0.1, budget))
        except job.JobError as exc:
            return review.Verdict(review.Outcome.FAILED, str(exc))
        answer = await self.workers.run(work, deadline + OVERHEAD)
        return interpret(answer, self.options.budget)

    async def _configmap(self) -> dict[str, str] | None:
        if self.kube is None:
            return None
        path = f"/api/v1/namespaces/{self.controller.settings.mesh_namespace}/configmaps/"
        config = await self.kube.get(path + self.options.configmap)
        if config is None:
            return None
        return {str(k): str(v) for k, v in (config.get("data") or {}).items()}

    def _record(
        self,
        request: review.Review,
        verdict: review.Verdict,
        allowed: bool,
        message: str | None,
        warnings: list[str],
        seconds: float,
    ) -> None:
        decided = "denied" if not allowed else "warned" if warnings else "allowed"
        if self.metrics is not None:
            self.metrics.reviews.labels(verdict.outcome.value, decided).inc()
            if verdict.outcome is not review.Outcome.SKIPPED:
                self.metrics.seconds.observe(seconds)
        if verdict.outcome is review.Outcome.SKIPPED:
            return
        entry = {
            "at": round(time.time(), 3),
            "object": request.what,
            "operation": request.operation,
            "dryRun": request.dry_run,
            "outcome": verdict.outcome.value,
            "decision": decided,
            "message": message,
            "warnings": warnings,
            "seconds": round(seconds, 3),
            "reason": verdict.reason,
            **verdict.details,
        }
        self.recent.append(entry)
        log.info(
            "%s %s: %s, %s in %.2fs%s",
            request.operation,
            request.what,
            verdict.outcome.value,
            decided,
            seconds,
            f": {message or '; '.join(warnings)}" if message or warnings else "",
        )

    def view(self) -> dict[str, Any]:
        """``GET /api/v1/gate``."""
        window = self.measurer.latest if self.measurer is not None else None
        last = self.measurer.last if self.measurer is not None else None
        return {
            "mode": self.options.mode.value,
            "budgetSeconds": self.options.budget,
            "seeds": self.options.seeds,
            "simulatedSeconds": self.options.duration,
            "configMap": self.configmap,
            "window": _window(window),
            "lastWindow": _window(last),
            "recent": list(self.recent),
        }


def _window(window: job.Window | None) -> dict[str, Any] | None:
    if window is None:
        return None
    services: dict[str, float] = {}
    for table in window.per_node.values():
        for labels, value in table.get(CALLS, {}).items():
            service = dict(labels).get("service", "-")
            services[service] = services.get(service, 0.0) + value
    return {
        "seconds": round(window.seconds, 3),
        "endedAt": round(window.ended, 3),
        "ageSeconds": round(time.time() - window.ended, 3),
        "requests": window.requests,
        "services": dict(sorted(services.items())),
        "nodes": sorted(window.per_node),
    }


def interpret(answer: dict[str, Any] | None, budget: float) -> review.Verdict:
    """The worker's answer as a verdict."""
    if answer is None:
        return review.Verdict(review.Outcome.UNDECIDED, f"the simulation ran past {budget:g} s")
    if "error" in answer:
        return review.Verdict(review.Outcome.FAILED, str(answer["error"]))
    notes = tuple(f"the mesh would reject {w}" for w in answer.get("warnings") or [])
    details = {
        "slos": answer.get("slos") or [],  # name: passes/runs before -> after
        "traffic": answer.get("sources") or [],
        "runs": f"{answer.get('runs', 0)} of {answer.get('of', 0)}",
    }
    verdict = answer.get("verdict")
    if verdict == "breaks":
        broken = tuple(review.broken_line(s) for s in answer.get("broken") or [])
        return review.Verdict(review.Outcome.BREAKS, broken=broken, notes=notes, details=details)
    if verdict == "safe":
        return review.Verdict(review.Outcome.SAFE, notes=notes, details=details)
    runs = f"{answer.get('runs', 0)} of {answer.get('of', 0)} simulated runs in {budget:g} s"
    return review.Verdict(review.Outcome.UNDECIDED, runs, notes=notes, details=details)


# --------------------------------------------------------------------------------- serving


def tls_context(cert_dir: Path) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert_dir / "tls.crt", cert_dir / "tls.key")
    return context


def webhook_app(gate: Gate) -> web.Application:
    async def validate(request: web.Request) -> web.Response:
        try:
            body = await request.json()
            return web.json_response(await gate.handle(body))
        except (ValueError, review.BadReview) as exc:
            return web.json_response({"error": " ".join(str(exc).split())}, status=400)

    async def healthz(_: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    app = web.Application(client_max_size=3 * 1024 * 1024)  # the API server's request limit
    app.router.add_post("/validate", validate)
    app.router.add_get("/healthz", healthz)
    return app


class GateExtension:
    """The gate in ``simmesh controller`` (mesh/controller/main.py's Extension)."""

    def __init__(self, options: Options) -> None:
        self.options = options
        self.tasks: list[asyncio.Task[None]] = []
        self.runner: web.AppRunner | None = None
        self.session: aiohttp.ClientSession | None = None
        self.workers = Workers()
        self.gate: Gate | None = None

    def prepare(self, controller: Controller) -> None:
        controller.store.keep_documents()

    async def start(self, controller: Controller, app: web.Application, api: Any) -> None:
        context = tls_context(self.options.cert_dir)  # a bad certificate fails the start
        kube = ApiKube(api) if api is not None else None
        self.session = aiohttp.ClientSession()
        measurer = None
        if kube is not None:
            namespace = controller.settings.mesh_namespace
            session = self.session

            async def lister() -> tuple[ProxyPod, ...]:
                return await proxy_pods(kube, namespace)

            async def scraper(pod: ProxyPod) -> Any:
                return await scrape_direct(session, pod)

            measurer = Measurer(
                lister, scraper, interval=self.options.window, history=self.options.history
            )
            self.tasks.append(asyncio.create_task(measurer.run(), name="gate measurements"))
        metrics = GateMetrics(app[METRICS].registry)
        gate = self.gate = Gate(
            controller,
            self.options,
            kube=kube,
            measurer=measurer,
            workers=self.workers,
            metrics=metrics,
        )

        async def view(_: web.Request) -> web.Response:
            if measurer is not None and measurer.latest is not None:
                metrics.window.set(measurer.latest.requests)
            return web.json_response(gate.view(), dumps=lambda d: json.dumps(d, sort_keys=True))

        app.router.add_get("/api/v1/gate", view)
        self.workers.warm()
        self.runner = web.AppRunner(webhook_app(gate), access_log=None, shutdown_timeout=2.0)
        await self.runner.setup()
        host, port = self.options.listen
        try:
            await web.TCPSite(self.runner, host, port, ssl_context=context).start()
        except OSError:
            await self.stop()  # the controller stops only the extensions that started
            raise
        log.info(
            "admission gate (%s) on https://%s:%d/validate, SLOs from ConfigMap %s",
            self.options.mode.value,
            host,
            port,
            gate.configmap,
        )

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        if self.runner is not None:
            await self.runner.cleanup()
        await self.workers.close()
        if self.session is not None:
            await self.session.close()
