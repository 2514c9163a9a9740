"""The runner on a fake cluster: verdicts, what a failure says, exact counts, mode skips, and
namespaces deleted after a pass, a failure and Ctrl-C (or kept on request)."""

from __future__ import annotations

import _thread
import signal
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from conformance import manifests as m
from conformance.model import Allowed, App, Apply, Call, Case, Counts, Denied, Expect, Mode, http
from conformance.runner import Options, Runner
from tests.conformance.fake import FakeAdapter, FakeKube, results

pytestmark = pytest.mark.timeout(30)
A, B = App("a"), App("b")
TT = m.traffic_target("t", destination="b", sources=["a"], rules=[m.rule("TCPRoute", "r")])


def case(*steps: Any, needs: Mode | None = None, apps: tuple[App, ...] = (A, B)) -> Case:
    return Case("demo", "a demo", ("access",), apps, (http("b", "b"),), tuple(steps), needs)


def runner(kube: FakeKube, **kw: Any) -> Runner:
    return Runner(kube, FakeAdapter(), Options(image="x", timeout=0.5, parallel=2, **kw))  # type: ignore[arg-type]


def granted_after_apply(kube: FakeKube, body: dict[str, Any]) -> dict[str, Any]:
    """403 until a TrafficTarget was applied, then 200 from b."""
    if kube.changes:
        kube.received["b-pod"] = kube.received.get("b-pod", 0) + body["count"]
        return results(body["count"])
    return results(body["count"], status=403, pod=None, reason="not-granted")


def test_a_passing_case_reports_propagation_and_deletes_its_namespaces() -> None:
    kube = FakeKube(granted_after_apply)
    steps = (
        Expect("denied", Call("a", "b"), Denied()),
        Apply("grant", (TT,)),
        Expect("allowed", Call("a", "b"), Allowed(("b",))),
    )
    (result,) = runner(kube).run([case(*steps)], Mode.ACL)
    assert result.verdict == "pass", result
    assert list(result.propagation) == ["allowed"]
    assert kube.created == ["smi-demo"] and kube.namespaces == set()
    # the manifests were filled in: namespace placeholders replaced
    assert (
        kube.objects[("TrafficTarget", "smi-demo", "t")]["spec"]["destination"]["namespace"]
        == "smi-demo"
    )


def test_a_failure_says_what_was_expected_and_seen_and_still_cleans_up() -> None:
    kube = FakeKube(lambda k, body: results(body["count"]))  # a mesh that allows everything
    (result,) = runner(kube).run([case(Expect("denied", Call("a", "b"), Denied()))], Mode.ACL)
    assert result.verdict == "fail"
    step = result.failed_step()
    assert step is not None and step.what == "denied"
    assert "HTTP 403 from the mesh with a reason" in step.expected
    assert step.seen.startswith("HTTP 200 from b x1 (polled")
    assert kube.namespaces == set() and kube.deleted == ["smi-demo"]


def test_keep_namespaces_keeps_a_failed_case() -> None:
    kube = FakeKube(lambda k, body: results(body["count"]))
    (result,) = runner(kube, keep_failed=True).run(
        [case(Expect("denied", Call("a", "b"), Denied()))], Mode.ACL
    )
    assert result.kept and kube.namespaces == {"smi-demo"} and kube.deleted == []


def test_counts_are_the_backends_own_and_must_equal_what_the_caller_saw() -> None:
    def retried(kube: FakeKube, body: dict[str, Any]) -> dict[str, Any]:
        kube.received["b-pod"] = kube.received.get("b-pod", 0) + body["count"] + 1  # a retry
        return results(body["count"])

    kube = FakeKube(retried)
    (result,) = runner(kube).run([case(Expect("n", Call("a", "b"), Counts({"b": 10})))], Mode.ACL)
    assert result.verdict == "fail"
    step = result.failed_step()
    assert step is not None and "exactly what the caller saw" in step.expected
    assert "received b=11" in step.seen


def test_cases_for_the_other_mode_are_skipped_with_the_reason() -> None:
    kube = FakeKube(granted_after_apply)
    (result,) = runner(kube).run([case(needs=Mode.DEFAULT)], Mode.ACL)
    assert result.verdict == "skip" and "default mode" in result.message
    assert kube.created == []


@pytest.fixture
def ctrl_c_raises() -> Iterator[None]:
    """Ctrl-C raises KeyboardInterrupt here even when this process was started with SIGINT
    ignored (a background job of a shell without job control: `... &` in a script), where
    interrupt_main does nothing and the run below would wait for its setup timeout."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


@pytest.mark.usefixtures("ctrl_c_raises")
def test_ctrl_c_deletes_every_namespace_created() -> None:
    def never_meshed(kube: FakeKube, body: dict[str, Any]) -> dict[str, Any]:
        return results(body["count"], status=404, pod=None)

    kube = FakeKube(never_meshed)
    cases = [Case(f"c{i}", "t", ("x",), (A, B), (http("b", "b"),), ()) for i in range(3)]
    threading.Timer(0.5, _thread.interrupt_main).start()
    run = runner(kube, setup_timeout=20)
    with pytest.raises(KeyboardInterrupt):
        run.run(cases, Mode.ACL)
    assert sorted(kube.created) == ["smi-c0", "smi-c1"]  # two at once; the third never started
    assert kube.namespaces == set() and run.live == set()


def test_a_denial_is_a_403_with_a_reason_from_the_mesh_not_from_the_app() -> None:
    pods = {"b-0": "b"}
    mesh = {"status": 403, "reason": "no TrafficTarget grants a -> b"}
    assert Denied().ok([mesh], "http", pods)
    assert not Denied().ok([{"status": 403}], "http", pods)  # no reason given
    assert not Denied().ok([{**mesh, "pod": "b-0"}], "http", pods)  # b's own 403
    assert not Denied().ok([{"error": "reset"}], "http", pods)


def test_a_tcp_or_udp_call_is_labelled_without_a_method_or_path() -> None:
    assert Call("a", "b-udp").label("udp") == "a -> UDP b-udp"
    assert Call("a", "b", headers={"x-env": "prod"}).label() == "a -> GET b/echo x-env: prod"


def test_the_wait_for_a_reply_that_never_came_is_not_propagation() -> None:
    from conformance.runner import _waited

    silence = [{"error": "timeout", "elapsedMs": 3000.5}, {"status": 200, "elapsedMs": 40}]
    assert _waited(silence) == 3.0005
