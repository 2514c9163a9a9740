"""The cases on how a split is resolved and on header maps, run on a fake mesh: each passes
against the rule in docs/semantics.md and fails, at the step that shows it, against a rule a
mesh could have instead: simmesh's before commit d238783 (a later split took the root over
when the first by name was unusable), splits chosen by creation or last by name, splits
followed hierarchically, weights all 0 read as all equal, header regexes matched as a prefix
or at the end of the value, or not read at all."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import pytest

from conformance.cases import CASES
from conformance.model import Mode
from conformance.runner import Options, Runner
from tests.conformance.fake import FakeAdapter, FakeKube

pytestmark = pytest.mark.timeout(30)
Doc = dict[str, Any]


def _splits(kube: FakeKube, ns: str, root: str, rule: str) -> list[Doc]:
    """The TrafficSplits on ``root``: by name, or as created (FakeKube keeps that order)."""
    found = [
        (name, doc["spec"])
        for (kind, n, name), doc in kube.objects.items()
        if kind == "TrafficSplit" and n == ns and doc["spec"]["service"] == root
    ]
    if rule != "first created":
        found.sort(key=lambda f: f[0])
    return [spec for _, spec in found]


def _weights(spec: Doc, rule: str) -> dict[str, int]:
    weights = {b["service"]: int(b["weight"]) for b in spec["backends"]}
    if rule == "all 0 equal" and not any(weights.values()):
        return dict.fromkeys(weights, 1)
    return weights


def _route(kube: FakeKube, ns: str, svc: str, rule: str, n: int) -> list[str]:
    """The apps ``n`` calls to ``svc`` reach: a split's backends, or the Service's own pod."""
    splits = _splits(kube, ns, svc, rule)
    if rule == "first usable by name":
        splits = [s for s in splits if any(_weights(s, rule).values())]
    chosen = (splits[-1] if rule == "last by name" else splits[0]) if splits else None
    pool = [b for b, w in (_weights(chosen, rule) if chosen else {}).items() for _ in range(w)]
    if not pool:  # no split, or an unusable one: the Service's own pod
        return [_own(kube, ns, svc)] * n
    picks = [pool[i % len(pool)] for i in range(n)]  # exact for the cases' weights 1 and 0
    if rule == "hierarchical":
        return [_route(kube, ns, b, rule, 1)[0] for b in picks]
    return [_own(kube, ns, b) for b in picks]


def _own(kube: FakeKube, ns: str, svc: str) -> str:
    return str(kube.objects[("Service", ns, svc)]["spec"]["selector"]["app"])


def _admitted(kube: FakeKube, path: str, headers: dict[str, str], find: Callable[..., Any]) -> bool:
    """Whether an HTTPRouteGroup's match admits the request (access-headers-map grants a the
    one group it applies), with header regexes judged by ``find``."""
    for (kind, _, _), doc in kube.objects.items():
        if kind != "HTTPRouteGroup":
            continue
        for match in doc["spec"]["matches"]:
            wanted = match.get("headers") or {}
            if isinstance(wanted, list):
                wanted = {k: v for one in wanted for k, v in one.items()}
            if re.match(match.get("pathRegex", ""), path) and all(
                k in headers and find(v, headers[k]) for k, v in wanted.items()
            ):
                return True
    return False


def fake_mesh(
    split_rule: str = "semantics", header_find: Callable[..., Any] = re.fullmatch
) -> Callable[[FakeKube, Doc], Doc]:
    """The test app's ``/call`` on a mesh with these rules. Only calls to ``/h`` (the header
    case's) are judged by access control; the split cases grant a everything anyway."""

    def answer(kube: FakeKube, body: Doc) -> Doc:
        url = urlsplit(body["url"])
        svc, ns = str(url.hostname).split(".")[:2]
        n = body["count"]
        if url.path == "/h" and not _admitted(kube, url.path, body["headers"], header_find):
            return {"results": [{"status": 403, "reason": "no-matching-route"}] * n}
        apps = _route(kube, ns, svc, split_rule, n)
        for app in apps:
            kube.received[f"{app}-pod"] = kube.received.get(f"{app}-pod", 0) + 1
        return {"results": [{"status": 200, "pod": f"{app}-pod"} for app in apps]}

    return answer


def run(name: str, mesh: Callable[[FakeKube, Doc], Doc]) -> str:
    """The verdict of case ``name`` on the fake mesh, and the step that failed."""
    case = next(c for c in CASES if c.name == name)
    options = Options(image="x", timeout=0.5)
    runner = Runner(FakeKube(mesh), FakeAdapter(), options)  # type: ignore[arg-type]
    (result,) = runner.run([case], Mode.ACL)
    step = result.failed_step()
    return f"{result.verdict}: {step.what}" if step else result.verdict


@pytest.mark.parametrize(
    ("case", "rule", "verdict"),
    [
        ("split-all-zero", "semantics", "pass"),
        ("split-all-zero", "all 0 equal", "fail: exactly 20 to the root's own pod b"),
        ("split-nested", "semantics", "pass"),
        (
            "split-nested",
            "hierarchical",
            "fail: calls to b: exactly 20 to b-v1's own pod (one hop)",
        ),
        ("split-conflict", "semantics", "pass"),
        ("split-conflict", "first created", "fail: b-split-1 wins: exactly 20 to b-v1"),
        ("split-conflict", "last by name", "fail: b-split-1 wins: exactly 20 to b-v1"),
        (
            "split-conflict",
            "first usable by name",  # simmesh before d238783
            "fail: b-split-1 still holds b: exactly 20 to the root's own pod, none to b-split-2's",
        ),
    ],
)
def test_a_split_case_fails_against_another_rule(case: str, rule: str, verdict: str) -> None:
    assert run(case, fake_mesh(split_rule=rule)) == verdict


@pytest.mark.parametrize(
    ("rule", "verdict"),
    [
        (re.fullmatch, "pass"),
        (re.match, "fail: x-team: opsx denied (not a prefix)"),
        (lambda p, v: re.search(f"(?:{p})$", v), "fail: x-team: devops denied (not a search)"),
        (lambda p, v: True, "fail: x-team: dev denied"),  # the map form not read: no condition
    ],
)
def test_the_header_map_case_fails_unless_the_regex_holds_the_whole_value(
    rule: Callable[[str, str], Any], verdict: str
) -> None:
    assert run("access-headers-map", fake_mesh(header_find=rule)) == verdict
