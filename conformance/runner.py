"""The runner: each case in its own namespaces, several at once, always cleaned up.

For one case (``CaseRun``): create its namespaces (``<prefix><case>``, ``...-b``), apply its
test app pods and Services, wait until the pods are ready and the mesh answers for the
Services, then run the steps in order. A change (``Apply``/``Delete``) starts a clock; the next
``Expect`` polls its call (``probe_count`` calls a time, short polls, no fixed sleeps) until
the wanted behaviour shows, and the time from the change to the end of the poll in which it
showed (less any wait for a reply that never came) is the step's propagation; then it confirms
(a ``RouteStatus`` polls the route's status until the controller's conditions show instead):

- ``Denied``/``Allowed``/``Answered``: three more calls, all as wanted; for a denial, or a
  status the mesh answers itself, no app of the case but the caller receives anything (its
  ``/calls`` stay empty: a route may have chosen a backend outside the called Service).
- ``Counts``/``Shares``: the backends' ``/calls`` are emptied, the calls made, and each
  backend's own count compared with the wanted one and with what the caller saw. The test app
  does not record probes or its control endpoints, and the caller makes each call once, so
  retries or probes anywhere would show as a difference.

Namespaces are deleted at the end of each case, on failure, on error and on Ctrl-C (``stop``
is set; every poll checks it), unless ``keep_failed`` keeps a failed case's namespaces.
"""

from __future__ import annotations

import threading
import time
import traceback
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from conformance import manifests as m
from conformance.adapter import Adapter
from conformance.kube import Kube, KubeError
from conformance.model import (
    HTTP_PORT,
    Allowed,
    Answered,
    Apply,
    Call,
    Case,
    Counts,
    Delete,
    Denied,
    Expect,
    Flowing,
    Mode,
    RouteStatus,
    Shares,
    Want,
    describe_results,
    route_conditions,
)

__all__ = ["CaseResult", "Options", "Runner", "StepResult"]

POLL = 0.2  # seconds between polls of a behaviour that has not shown yet
CONFIRM = 3  # calls that must all be as wanted once it has
# per call; on a loaded 2-core kind cluster an answered HTTP call took over 5 s (a denial is
# an immediate 403 or close, so only a hang waits this long); UDP's is the wait for no reply
CALL_TIMEOUT = {"http": 15.0, "tcp": 5.0, "udp": 3.0}


class Failed(Exception):
    def __init__(self, expected: str, seen: str) -> None:
        super().__init__(f"expected {expected}; saw {seen}")
        self.expected = expected
        self.seen = seen


class Interrupted(Exception):
    """Ctrl-C (or SIGTERM): the run is stopping."""


@dataclass(frozen=True, slots=True)
class Options:
    prefix: str = "smi-"
    timeout: float = 60.0  # for a behaviour to show after a change
    setup_timeout: float = 240.0  # pods ready and meshed
    keep_failed: bool = False
    parallel: int = 6
    image: str = ""
    pull_policy: str = "IfNotPresent"
    run_id: str = "run"


@dataclass(slots=True)
class StepResult:
    what: str
    verdict: str  # pass, fail, error, not run
    seconds: float = 0.0
    propagation: float | None = None
    expected: str = ""
    seen: str = ""


@dataclass(slots=True)
class CaseResult:
    name: str
    title: str
    tags: tuple[str, ...]
    verdict: str = "pass"  # pass, fail, error, skip
    seconds: float = 0.0
    setup_seconds: float = 0.0
    namespaces: tuple[str, ...] = ()
    kept: bool = False
    message: str = ""
    steps: list[StepResult] = field(default_factory=list)

    @property
    def propagation(self) -> dict[str, float]:
        return {s.what: s.propagation for s in self.steps if s.propagation is not None}

    def failed_step(self) -> StepResult | None:
        return next((s for s in self.steps if s.verdict in ("fail", "error")), None)


class Runner:
    """Runs cases in parallel against one cluster through one adapter."""

    def __init__(self, kube: Kube, adapter: Adapter, options: Options) -> None:
        self.kube = kube
        self.adapter = adapter
        self.options = options
        self.stop = threading.Event()
        self._lock = threading.Lock()
        self.live: set[str] = set()  # namespaces created and not yet deleted

    def run(
        self,
        cases: Sequence[Case],
        mode: Mode,
        on_done: Callable[[CaseResult], None] = lambda r: None,
    ) -> list[CaseResult]:
        results: dict[str, CaseResult] = {}
        runnable = []
        for case in cases:
            if case.needs is not None and case.needs != mode:
                results[case.name] = CaseResult(
                    case.name,
                    case.title,
                    case.tags,
                    verdict="skip",
                    message=f"needs the mesh in {case.needs} mode (it runs in {mode} mode)",
                )
                on_done(results[case.name])
            else:
                runnable.append(case)
        pool = ThreadPoolExecutor(max_workers=max(1, self.options.parallel))
        futures = {c.name: pool.submit(self._one, c, on_done) for c in runnable}
        try:
            for name, future in futures.items():
                while not future.done():
                    time.sleep(0.1)  # wakes for Ctrl-C (a bare wait() would not)
                results[name] = future.result()
        except KeyboardInterrupt:
            self.stop.set()
            pool.shutdown(wait=True, cancel_futures=True)
            raise
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
            self.cleanup_all()
        return [results[c.name] for c in cases]

    def cleanup_all(self) -> None:
        """Delete every namespace this run created and has not deleted yet (not kept)."""
        with self._lock:
            names = sorted(self.live)
        for name in names:
            self._delete_namespace(name)

    def _one(self, case: Case, on_done: Callable[[CaseResult], None]) -> CaseResult:
        result = CaseRun(self, case).run()
        on_done(result)
        return result

    # ------------------------------------------------------------------ namespaces

    def namespace_names(self, case: Case) -> dict[str, str]:
        base = f"{self.options.prefix}{case.name}"
        return {ns: base if ns == "A" else f"{base}-{ns.lower()}" for ns in case.namespaces()}

    def create_namespace(self, name: str) -> None:
        until = time.monotonic() + 120
        while self.kube.get("v1", "Namespace", None, name) is not None:  # left by a kept run
            self.kube.delete("v1", "Namespace", None, name)
            if time.monotonic() > until:
                raise KubeError(f"namespace {name} from an earlier run is still being deleted")
            self.sleep(1.0)
        with self._lock:
            self.live.add(name)
        self.kube.apply(m.namespace(name, self.options.run_id))

    def forget(self, name: str) -> None:
        with self._lock:
            self.live.discard(name)

    def _delete_namespace(self, name: str) -> None:
        try:
            self.kube.delete("v1", "Namespace", None, name)
        except KubeError:
            return
        self.forget(name)

    def delete_namespaces(self, names: Iterable[str]) -> None:
        for name in names:
            self._delete_namespace(name)

    def sleep(self, seconds: float) -> None:
        if self.stop.wait(seconds):
            raise Interrupted()


class CaseRun:
    """One case: setup, steps, cleanup."""

    def __init__(self, runner: Runner, case: Case) -> None:
        self.runner = runner
        self.kube = runner.kube
        self.adapter = runner.adapter
        self.options = runner.options
        self.case = case
        self.ns = runner.namespace_names(case)
        self.pods: dict[str, str] = {}  # pod -> app
        self.pod_of: dict[str, str] = {}  # app -> pod
        self.changed_at: float | None = None
        self.result = CaseResult(
            case.name, case.title, case.tags, namespaces=tuple(self.ns.values())
        )

    def run(self) -> CaseResult:
        start = time.monotonic()
        try:
            self.setup()
            self.result.setup_seconds = round(time.monotonic() - start, 2)
            for step in self.case.steps:
                self.step(step)
        except Failed as exc:
            self.result.verdict = "fail"
            self.result.message = str(exc)
        except Interrupted:
            self.result.verdict = "error"
            self.result.message = "interrupted"
        except Exception as exc:  # the cluster or the runner: reported, never a crash
            self.result.verdict = "error"
            self.result.message = f"{type(exc).__name__}: {exc}"
            if not isinstance(exc, KubeError | TimeoutError):
                self.result.message += "\n" + traceback.format_exc(limit=4)
        finally:
            self.result.seconds = round(time.monotonic() - start, 2)
            self.teardown()
        return self.result

    # ------------------------------------------------------------------ setup

    def fill(self, text: str) -> Any:
        if text.startswith("$port:"):
            svc = self.case.service(text.split(":", 1)[1])
            return self.adapter.route_port(svc.port, svc.target)
        return self.ns[text[1:]]

    def docs(self, docs: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
        return [m.substitute(d, self.fill) for d in docs]

    def setup(self) -> None:
        case, until = self.case, time.monotonic() + self.options.setup_timeout
        for name in self.ns.values():
            self.runner.create_namespace(name)
        objects: list[dict[str, Any]] = []
        for app in case.apps:
            objects += m.workload(
                app, self.ns[app.ns], image=self.options.image, pull_policy=self.options.pull_policy
            )
        for svc in case.services:
            annotations = self.adapter.service_annotations(svc.protocol)
            objects.append(m.service(svc, self.ns[svc.ns], annotations))
        for doc in m.unique(objects):
            self.kube.apply(doc)
        self.wait_pods(until)
        meshed = [(self.ns[s.ns], s.name) for s in case.services]
        self.adapter.wait_meshed(self.kube, meshed, until, self.runner.stop.is_set)
        self.wait_answering(until)

    def wait_pods(self, until: float) -> None:
        selector = m.APP_LABEL
        while True:
            ready: dict[str, str] = {}
            for ns in set(self.ns.values()):
                for pod in self.kube.pods(ns, selector):
                    statuses = pod.get("status", {}).get("containerStatuses") or []
                    if statuses and all(s.get("ready") for s in statuses):
                        ready[pod["metadata"]["labels"][m.APP_LABEL]] = pod["metadata"]["name"]
            if len(ready) == len(self.case.apps):
                self.pod_of = ready
                self.pods = {pod: app for app, pod in ready.items()}
                return
            if time.monotonic() > until:
                missing = sorted({a.name for a in self.case.apps} - set(ready))
                raise TimeoutError(
                    f"test app pods not ready in {self.options.setup_timeout:.0f}s:"
                    f" {', '.join(missing)}"
                )
            self.runner.sleep(0.5)

    def wait_answering(self, until: float) -> None:
        """Until the mesh answers for every HTTP Service (any status but 404/502/503)."""
        source = self.first_caller()
        for svc in self.case.services:
            if svc.protocol != "http":
                continue
            probe = Call(source, svc.name, ns=svc.ns)
            while True:
                (r,) = self.call(probe, 1)
                if r.get("status") not in (None, 404, 502, 503):
                    break
                if time.monotonic() > until:
                    raise TimeoutError(
                        f"the mesh did not answer for {self.host(probe)} in "
                        f"{self.options.setup_timeout:.0f}s: "
                        f"{describe_results([r], self.pods)}"
                    )
                self.runner.sleep(POLL)

    def first_caller(self) -> str:
        for step in self.case.steps:
            if isinstance(step, Expect | Flowing):
                return step.call.source
        return self.case.apps[0].name

    def teardown(self) -> None:
        if self.options.keep_failed and self.result.verdict in ("fail", "error"):
            self.result.kept = True
            for name in self.ns.values():
                self.runner.forget(name)
            return
        self.runner.delete_namespaces(self.ns.values())

    # ------------------------------------------------------------------ calls

    def host(self, c: Call) -> str:
        svc = self.case.service(c.service, c.ns)
        host = self.adapter.host(svc.name, self.ns[svc.ns])
        if svc.protocol == "http":
            return f"http://{host}:{svc.port}{c.path}"
        return f"{svc.protocol}://{host}:{svc.port}"

    def protocol(self, c: Call) -> str:
        return self.case.service(c.service, c.ns).protocol

    def call(self, c: Call, count: int, concurrency: int = 1) -> list[dict[str, Any]]:
        """``count`` calls made by the test app in ``c.source``'s pod (its ``/call``)."""
        timeout = CALL_TIMEOUT[self.protocol(c)]
        body = {
            "url": self.host(c),
            "method": c.method,
            "headers": dict(c.headers),
            "count": count,
            "concurrency": concurrency,
            "timeout": timeout,
        }
        if c.method in ("POST", "PUT", "PATCH"):
            body["body"] = "conformance"
        budget = timeout * count / concurrency + 30
        answer = self.kube.pod_http(
            self.ns[self.case.app(c.source).ns],
            self.pod_of[c.source],
            HTTP_PORT,
            "POST",
            "/call",
            body=body,
            timeout=budget,
        )
        results: list[dict[str, Any]] = answer["results"]
        return results

    def received(self, app: str) -> list[dict[str, Any]]:
        ns = self.ns[self.case.app(app).ns]
        answer = self.kube.pod_http(ns, self.pod_of[app], HTTP_PORT, "GET", "/calls")
        calls: list[dict[str, Any]] = answer["calls"]
        return calls

    def reset(self, apps: Iterable[str]) -> None:
        for app in apps:
            ns = self.ns[self.case.app(app).ns]
            self.kube.pod_http(ns, self.pod_of[app], HTTP_PORT, "DELETE", "/calls")

    # ------------------------------------------------------------------ steps

    def step(self, step: Any) -> None:
        record = StepResult(step.what, "error")
        self.result.steps.append(record)
        start = time.monotonic()
        try:
            if isinstance(step, Apply):
                for doc in self.docs(step.docs):
                    self.kube.apply(doc)
                self.changed_at = time.monotonic()
            elif isinstance(step, Delete):
                for doc in self.docs(step.docs):
                    self.kube.delete(*m.identity(doc))
                self.changed_at = time.monotonic()
            elif isinstance(step, Expect):
                protocol = self.protocol(step.call)
                record.expected = f"{step.call.label(protocol)}: {step.want.describe(protocol)}"
                record.propagation, record.seen = self.expect(step)
            elif isinstance(step, Flowing):
                record.expected = (
                    f"{step.call.label()}: every call 200, {step.before} then {step.after}"
                )
                record.propagation, record.seen = self.flowing(step)
            elif isinstance(step, RouteStatus):
                record.expected = f"{step.label()}: {step.describe()}"
                record.propagation, record.seen = self.route_status(step)
            record.verdict = "pass"
        except Failed as exc:
            record.verdict = "fail"
            label = (
                step.label()
                if isinstance(step, RouteStatus)
                else step.call.label(self.protocol(step.call))
            )
            record.expected = f"{label}: {exc.expected}"
            record.seen = exc.seen
            raise
        finally:
            record.seconds = round(time.monotonic() - start, 2)

    def expect(self, step: Expect) -> tuple[float | None, str]:
        want, protocol = step.want, self.protocol(step.call)
        started = time.monotonic()
        until = started + (self.options.timeout if step.wait else 0)
        last: list[dict[str, Any]] = []
        polls = in_a_row = 0
        shown_at = started
        seen: set[str] = set()  # apps that answered since this step began
        while True:
            last = self.call(step.call, want.probe_count)
            polls += 1
            seen |= {self.pods.get(str(r.get("pod")), "") for r in last}
            in_a_row = in_a_row + 1 if want.ok(last, protocol, self.pods) else 0
            if in_a_row == 1 or not want.shown(seen):
                shown_at = time.monotonic() - _waited(last)  # the behaviour showed by then
            if in_a_row >= want.probes_in_a_row and want.shown(seen):
                break
            if time.monotonic() >= until:
                waited = (
                    f" (polled {polls} times over {time.monotonic() - started:.1f}s)"
                    if step.wait
                    else " (it had to hold at once: a marker showed the change)"
                )
                raise Failed(want.describe(protocol), describe_results(last, self.pods) + waited)
            self.runner.sleep(POLL)
        propagation = None
        if self.changed_at is not None:
            propagation = round(shown_at - self.changed_at, 2)
            self.changed_at = None
        return propagation, self.confirm(step, want, protocol)

    def confirm(self, step: Expect, want: Want, protocol: str) -> str:
        if isinstance(want, Counts | Shares):
            return self.count(step, want, protocol)
        # a mesh answer: nobody but the caller receives anything (a route may have chosen a
        # backend of another Service, so every other app is watched, not only the called one)
        others = [a.name for a in self.case.apps if a.name != step.call.source]
        if isinstance(want, Denied | Answered):
            self.reset(others)
        results = self.call(step.call, CONFIRM, concurrency=CONFIRM)
        seen = describe_results(results, self.pods)
        if not want.ok(results, protocol, self.pods):
            raise Failed(want.describe(protocol), seen + " (after it had shown once)")
        if isinstance(want, Denied | Answered):
            got = {app: len(self.received(app)) for app in others}
            if any(got.values()):
                what = "a denied call" if isinstance(want, Denied) else "a call the mesh answers"
                raise Failed(
                    f"no pod receives anything of {what}",
                    f"{seen}, but received: " + _counts({a: n for a, n in got.items() if n}),
                )
        return seen

    def route_status(self, step: RouteStatus) -> tuple[float | None, str]:
        """Poll the route until the controller's entry for the parent has the conditions."""
        controller = self.adapter.route_controller(self.kube)
        parent: dict[str, Any] = {"name": step.parent, "port": step.port}
        if step.parent_ns is not None:
            parent["namespace"] = self.ns[step.parent_ns]
        started = time.monotonic()
        until = started + self.options.timeout
        polls = 0
        while True:
            route = self.kube.get(m.GATEWAY, step.kind, self.ns[step.ns], step.route)
            conditions, seen = route_conditions(route, controller, parent)
            polls += 1
            if conditions is not None and all(
                conditions.get(kind) == want for kind, want in step.conditions.items()
            ):
                break
            if time.monotonic() >= until or self.runner.stop.is_set():
                waited = f" (polled {polls} times over {time.monotonic() - started:.1f}s)"
                raise Failed(step.describe(), (seen or "no conditions") + waited)
            self.runner.sleep(POLL)
        propagation = None
        if self.changed_at is not None:
            propagation = round(time.monotonic() - self.changed_at, 2)
            self.changed_at = None
        return propagation, seen

    def count(self, step: Expect, want: Counts | Shares, protocol: str) -> str:
        apps = list(want.by)
        n = want.total if isinstance(want, Counts) else want.n
        self.reset(apps)
        results = self.call(step.call, n, concurrency=4)
        client: dict[str, int] = {app: 0 for app in apps}
        for r in results:
            app = self.pods.get(str(r.get("pod")), str(r.get("pod")))
            client[app] = client.get(app, 0) + 1
        received = {
            app: len([c for c in self.received(app) if c.get("path") == step.call.path])
            for app in apps
        }
        statuses = describe_results(results, self.pods)
        seen = f"received {_counts(received)} (the caller saw {statuses})"
        if not Allowed(tuple(apps)).ok(results, protocol, self.pods):
            raise Failed(f"{want.describe(protocol)}, every call answered 200", seen)
        if received != {app: client.get(app, 0) for app in apps}:
            raise Failed(
                f"{want.describe(protocol)}; each backend receives exactly what the "
                "caller saw (no retries, no probes)",
                seen,
            )
        if isinstance(want, Counts) and received != dict(want.by):
            raise Failed(want.describe(protocol), seen)
        if isinstance(want, Shares) and not want.within(received):
            raise Failed(want.describe(protocol), seen)
        return seen

    def flowing(self, step: Flowing) -> tuple[float | None, str]:
        """Batches of calls run in a thread while the change is applied."""
        batches: list[tuple[float, list[dict[str, Any]]]] = []
        errors: list[BaseException] = []
        done = threading.Event()
        self.reset([step.before, step.after])

        def traffic() -> None:
            try:
                while not done.is_set() and not self.runner.stop.is_set():
                    results = self.call(step.call, 20)
                    batches.append((time.monotonic(), results))
            except BaseException as exc:  # reported by the step
                errors.append(exc)

        thread = threading.Thread(target=traffic, name=f"traffic-{self.case.name}", daemon=True)
        thread.start()
        after_pod = self.pod_of[step.after]
        try:
            until = time.monotonic() + self.options.timeout
            while len(batches) < 2 and not errors:
                self._check_time(until, "traffic to start")
                self.runner.sleep(0.05)
            for doc in self.docs(step.docs):
                self.kube.apply(doc)
            changed = time.monotonic()
            switched: float | None = None
            while not errors:
                seen_after = [t for t, rs in batches if any(r.get("pod") == after_pod for r in rs)]
                if seen_after and switched is None:
                    switched = seen_after[0]
                    mark = len(batches)
                if switched is not None and len(batches) >= mark + 2:
                    break
                self._check_time(until, f"{step.after} to serve")
                self.runner.sleep(0.05)
        finally:
            done.set()
            thread.join(timeout=60)
        if errors:
            raise errors[0]
        return (round(switched - changed, 2) if switched else None), self._judge_flow(step, batches)

    def _check_time(self, until: float, what: str) -> None:
        if time.monotonic() > until:
            raise Failed(f"{what} within {self.options.timeout:.0f}s", "it did not")

    def _judge_flow(self, step: Flowing, batches: list[tuple[float, list[dict[str, Any]]]]) -> str:
        results = [r for _, rs in batches for r in rs]
        order = [self.pods.get(str(r.get("pod")), "?") for r in results]
        seen = describe_results(results, self.pods)
        if not Allowed((step.before, step.after)).ok(results, "http", self.pods):
            raise Failed("every call answered 200 by one of the two backends", seen)
        first_after = order.index(step.after)
        late = [i for i, app in enumerate(order) if app == step.before and i > first_after]
        if late:
            raise Failed(
                f"{step.before} no longer serves once {step.after} did",
                f"{len(late)} calls to {step.before} after the switch ({seen})",
            )
        client = {app: order.count(app) for app in (step.before, step.after)}
        received = {app: len(self.received(app)) for app in (step.before, step.after)}
        if received != client:
            raise Failed(
                "each backend receives exactly what the caller saw",
                f"received {_counts(received)}, the caller saw {_counts(client)}",
            )
        return f"{len(results)} calls, all 200: {_counts(client)}, switched once"


def _waited(results: Sequence[dict[str, Any]]) -> float:
    """Seconds the calls spent waiting for a reply that never came: a UDP or TCP denial is
    seen as silence, and the wait is part of seeing it, not of the change's propagation."""
    return sum(float(r.get("elapsedMs", 0)) for r in results if r.get("error") == "timeout") / 1e3


def _counts(counts: Mapping[str, int]) -> str:
    return ", ".join(f"{k}={v}" for k, v in counts.items())
