"""The GAMMA cases and what they need of the runner, on a fake cluster: the route status a
controller writes is read from its own entry at the route's generation; the consumer-route and
access cases pass against docs/semantics.md and fail, at the step that shows it, against rules
a mesh could have instead (consumer routes merged with the producer's, applied to every caller;
access judged on the called Service, or before a rewrite); a missing CRD is a clear line."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import pytest

from conformance import cli
from conformance import manifests as m
from conformance.cases import CASES
from conformance.model import Answered, App, Apply, Call, Case, Expect, Mode, RouteStatus, http
from conformance.model import route_conditions as conditions_of
from conformance.runner import Options, Runner
from tests.conformance.fake import FakeAdapter, FakeKube, results

pytestmark = pytest.mark.timeout(30)
Doc = dict[str, Any]
CONTROLLER = "simmesh.io/mesh-controller"


def entry(
    name: str = "b", *, port: int | None = None, generation: int = 1, controller: str = CONTROLLER
) -> Doc:
    ref: Doc = {"group": "", "kind": "Service", "name": name}
    if port is not None:
        ref["port"] = port
    return {
        "parentRef": ref,
        "controllerName": controller,
        "conditions": [
            {"type": "Accepted", "status": "True", "reason": "Accepted", "message": "",
             "observedGeneration": generation},
            {"type": "ResolvedRefs", "status": "False", "reason": "BackendNotFound",
             "message": "spec.rules[0].backendRefs[0]: no Service nope",
             "observedGeneration": generation},
        ],
    }  # fmt: skip


def routed(*entries: Doc, generation: int = 1) -> Doc:
    meta = {"name": "r", "namespace": "ns", "generation": generation}
    return {"metadata": meta, "status": {"parents": list(entries)}}


def test_the_conditions_are_the_controllers_entry_for_that_parent() -> None:
    found, words = conditions_of(routed(entry(port=8080)), CONTROLLER, {"name": "b", "port": 8080})
    assert found == {
        "Accepted": ("True", "Accepted"),
        "ResolvedRefs": ("False", "BackendNotFound"),
    }
    assert "no Service nope" in words
    # the namespace of a parentRef without one is the route's
    parent = {"name": "b", "namespace": "ns", "port": 8080}
    assert conditions_of(routed(entry(port=8080)), CONTROLLER, parent)[0] == found


@pytest.mark.parametrize(
    ("route", "parent", "seen"),
    [
        (routed(entry(port=80)), {"name": "b", "port": 8080}, "no status entry of"),
        (routed(entry()), {"name": "b", "port": 8080}, "no status entry of"),
        (routed(entry("c")), {"name": "b"}, "no status entry of"),
        (routed(entry(), generation=2), {"name": "b"}, "of an older generation"),
        (
            routed(entry(controller="istio.io/mesh")),
            {"name": "b"},
            "(entries of: istio.io/mesh)",
        ),
        (routed(entry()), {"name": "b", "namespace": "other"}, "no status entry of"),
        (None, {"name": "b"}, "the route does not exist"),
    ],
)
def test_no_conditions_from_another_parent_controller_or_generation(
    route: Doc | None, parent: Doc, seen: str
) -> None:
    found, words = conditions_of(route, CONTROLLER, parent)
    assert found is None
    assert seen in words


class StatusKube(FakeKube):
    """A fake cluster whose "controller" writes ``status`` on every route applied."""

    def __init__(self, status: Callable[[Doc], list[Doc]]) -> None:
        super().__init__(lambda kube, body: results(body["count"]))
        self.status = status

    def apply(self, doc: Doc) -> None:
        super().apply(doc)
        if doc["kind"] in ("HTTPRoute", "GRPCRoute"):
            doc["metadata"]["generation"] = 1
            doc["status"] = {"parents": self.status(doc)}


class Adapter(FakeAdapter):
    def route_controller(self, kube: Any) -> str:
        return CONTROLLER


def status_case(*conditions: tuple[str, str, str]) -> Case:
    want = {kind: (status, reason) for kind, status, reason in conditions}
    route = m.http_route("r", [m.parent("b")], {"backendRefs": [m.backend("b")]})
    steps = (Apply("route", (route,)), RouteStatus("status", "r", "b", want))
    return Case("gamma", "demo", ("gamma",), (App("a"), App("b")), (http("b", "b"),), steps)


def run_status(kube: FakeKube, case: Case) -> Any:
    runner = Runner(kube, Adapter(), Options(image="x", timeout=0.5, setup_timeout=5))  # type: ignore[arg-type]
    (result,) = runner.run([case], Mode.ACL)
    return result


def test_a_route_status_step_passes_when_the_controller_wrote_it() -> None:
    kube = StatusKube(lambda doc: [entry()])
    case = status_case(
        ("Accepted", "True", "Accepted"), ("ResolvedRefs", "False", "BackendNotFound")
    )
    result = run_status(kube, case)
    assert result.verdict == "pass", result
    assert result.steps[-1].propagation is not None


def test_a_route_status_step_says_what_it_wanted_and_what_was_written() -> None:
    kube = StatusKube(lambda doc: [entry()])
    result = run_status(kube, status_case(("ResolvedRefs", "True", "ResolvedRefs")))
    assert result.verdict == "fail"
    step = result.failed_step()
    assert step.expected == (
        "HTTPRoute r status for Service b: ResolvedRefs True (ResolvedRefs)"
    ), step
    assert "ResolvedRefs False (BackendNotFound: spec.rules[0]" in step.seen
    assert "polled" in step.seen
    # another controller's entry never counts, whatever it says
    other = StatusKube(lambda doc: [entry(controller="other.io/x")])
    result = run_status(other, status_case(("Accepted", "True", "Accepted")))
    assert result.verdict == "fail"
    assert "entries of: other.io/x" in result.failed_step().seen


def test_an_answer_of_the_mesh_fails_when_a_pod_received_the_call() -> None:
    def answer(kube: FakeKube, body: Doc) -> Doc:
        kube.received["b-pod"] = kube.received.get("b-pod", 0) + body["count"]
        return results(body["count"], status=500, pod=None)

    steps = (Apply("route", ()), Expect("answered", Call("a", "b", path="/x"), Answered(500)))
    case = Case("gamma", "demo", ("gamma",), (App("a"), App("b")), (http("b", "b"),), steps)
    runner = Runner(
        FakeKube(answer), FakeAdapter(), Options(image="x", timeout=0.5, setup_timeout=5)
    )  # type: ignore[arg-type]
    (result,) = runner.run([case], Mode.ACL)
    assert result.verdict == "fail"
    step = result.failed_step()
    assert "no pod receives anything of a call the mesh answers" in step.expected
    assert "received: b=3" in step.seen
    assert Answered(404).ok([{"status": 404}], "http", {}) is True
    assert Answered(404).ok([{"status": 404, "pod": "b-pod"}], "http", {}) is False
    assert Answered(404).ok([], "http", {}) is False


# --------------------------------------------------------------------------- a fake GAMMA mesh


def _routes(kube: FakeKube) -> list[Doc]:
    return [doc for (kind, _, _), doc in list(kube.objects.items()) if kind == "HTTPRoute"]


def _applies(route: Doc, svc: str, svc_ns: str, caller_ns: str, rule: str) -> bool:
    """Whether ``route`` governs calls from ``caller_ns`` to ``svc_ns/svc``."""
    route_ns = route["metadata"]["namespace"]
    for ref in route["spec"]["parentRefs"]:
        if ref["name"] != svc or ref.get("namespace", route_ns) != svc_ns:
            continue
        if route_ns == svc_ns:
            return True  # a producer route
        return rule == "consumer for all" or route_ns == caller_ns
    return False


def _choose(kube: FakeKube, svc: str, svc_ns: str, caller_ns: str, path: str, rule: str) -> Any:
    """The chosen rule's (backend, its namespace, path sent on) of the routes that apply, or
    404 (none matches), or None (no route)."""
    routes = [r for r in _routes(kube) if _applies(r, svc, svc_ns, caller_ns, rule)]
    if not routes:
        return None
    consumer = [r for r in routes if r["metadata"]["namespace"] == caller_ns != svc_ns]
    if consumer and rule != "merged":
        routes = consumer
    ranked = []
    for r in routes:
        for rr in r["spec"]["rules"]:
            matches = rr.get("matches") or [{"path": {"type": "PathPrefix", "value": "/"}}]
            for match in matches:
                exact = match["path"]["type"] == "Exact"
                if (exact and path == match["path"]["value"]) or not exact:
                    ranked.append((not exact, rr, r))
    if not ranked:
        return 404
    rr, route = sorted(ranked, key=lambda x: x[0])[0][1:]
    sent = path
    for f in rr.get("filters", []):
        sent = f["urlRewrite"]["path"]["replaceFullPath"]
    ref = rr["backendRefs"][0]
    return ref["name"], ref.get("namespace", route["metadata"]["namespace"]), sent


def _granted(kube: FakeKube, caller: str, account: str, path: str) -> bool:
    objects = dict(kube.objects)
    groups = {name: doc for (kind, _, name), doc in objects.items() if kind == "HTTPRouteGroup"}
    for (kind, _, _), tt in objects.items():
        if kind != "TrafficTarget" or tt["spec"]["destination"]["name"] != account:
            continue
        if caller not in [s["name"] for s in tt["spec"]["sources"]]:
            continue
        for rule in tt["spec"]["rules"]:
            group = groups.get(rule["name"]) if rule["kind"] == "HTTPRouteGroup" else None
            if group and any(re.match(g["pathRegex"], path) for g in group["spec"]["matches"]):
                return True
    return False


def gamma_mesh(rule: str = "semantics") -> Callable[[FakeKube, Doc], Doc]:
    """The test app's ``/call`` on a mesh with these rules; the caller is the pod whose
    ``/call`` was asked (``CallerKube`` records it)."""

    def answer(kube: FakeKube, body: Doc) -> Doc:
        assert isinstance(kube, CallerKube)
        url = urlsplit(body["url"])
        svc, svc_ns = str(url.hostname).split(".")[:2]
        caller_ns, caller = kube.caller
        chosen = _choose(kube, svc, svc_ns, caller_ns, url.path, rule)
        n = body["count"]
        if chosen == 404:
            return {"results": [{"status": 404, "reason": "no-matching-rule"}] * n}
        backend, backend_ns, sent = chosen if chosen else (svc, svc_ns, url.path)
        if ("Service", backend_ns, backend) not in kube.objects:
            return {"results": [{"status": 500, "reason": "invalid-backend"}] * n}
        judged = (svc, url.path) if rule == "access on the parent" else (backend, sent)
        if rule == "access before the rewrite":
            judged = (backend, url.path)
        account = {"b-v1": "b", "b-v2": "b"}.get(judged[0], judged[0])
        if not _granted(kube, caller.removesuffix("-pod"), account, judged[1]):
            return {"results": [{"status": 403, "reason": "not-granted"}] * n}
        selector = kube.objects[("Service", backend_ns, backend)]["spec"]["selector"]
        app = str(selector.get("app", backend))
        kube.received[f"{app}-pod"] = kube.received.get(f"{app}-pod", 0) + n
        return {"results": [{"status": 200, "pod": f"{app}-pod"}] * n}

    return answer


class CallerKube(FakeKube):
    caller: tuple[str, str] = ("", "")

    def pod_http(self, ns: str, pod: str, port: int, method: str, path: str, **kw: Any) -> Any:
        if path == "/call":
            self.caller = (ns, pod)
        return super().pod_http(ns, pod, port, method, path, **kw)


def run(name: str, rule: str, mode: Mode = Mode.ACL) -> str:
    """The verdict of case ``name`` on the fake mesh, and the step that failed."""
    case = next(c for c in CASES if c.name == name)
    runner = Runner(
        CallerKube(gamma_mesh(rule)),
        FakeAdapter(),
        Options(image="x", timeout=0.5, setup_timeout=5),
    )  # type: ignore[arg-type]
    (result,) = runner.run([case], mode)
    step = result.failed_step()
    return f"{result.verdict}: {step.what}" if step else result.verdict


@pytest.mark.parametrize(
    ("case", "rule", "verdict"),
    [
        ("gamma-consumer", "semantics", "pass"),
        (
            "gamma-consumer",
            "merged",
            "fail: c: GET /marker 404, the producer route's rule is not merged in",
        ),
        (
            "gamma-consumer",
            "consumer for all",
            "fail: a: still served by b-v1 (the consumer route is not a's)",
        ),
        ("gamma-acl", "semantics", "pass"),
        (
            "gamma-acl",
            "access on the parent",
            "fail: GET /echo on b denied: the route chose d, where a has no grant",
        ),
        (
            "gamma-acl",
            "access before the rewrite",
            "fail: GET /open on b denied: d is asked for /admin, not granted",
        ),
        ("gamma-under-traffic", "semantics", "pass"),
    ],
)
def test_a_gamma_case_fails_against_another_rule(case: str, rule: str, verdict: str) -> None:
    assert run(case, rule) == verdict


def test_gamma_cases_need_the_gateway_api_crds() -> None:
    kube = FakeKube(lambda kube, body: {})
    gamma = [c for c in CASES if "gamma" in c.tags]
    (line,) = cli._gateway_api(kube, CASES)  # type: ignore[arg-type]
    assert "httproutes.gateway.networking.k8s.io, grpcroutes.gateway.networking.k8s.io" in line
    assert all(c.name in line for c in gamma)
    assert "--exclude gamma" in line
    assert cli._gateway_api(kube, [c for c in CASES if c not in gamma]) == []  # type: ignore[arg-type]
    for name in cli.GAMMA_CRDS:
        kube.objects[("CustomResourceDefinition", None, name)] = {}
    assert cli._gateway_api(kube, CASES) == []  # type: ignore[arg-type]


def test_exclude_leaves_out_cases_by_tag_or_name(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--list", "--exclude", "gamma", "-x", "split-*"]) == 0
    listed = [line.split()[0] for line in capsys.readouterr().out.splitlines()]
    assert listed == [
        c.name for c in CASES if "gamma" not in c.tags and not c.name.startswith("split-")
    ]
    assert "access-udp" in listed and "gamma-status" not in listed
