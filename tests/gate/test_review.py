"""The gate's AdmissionReview handling (mesh/gate/review.py): pure functions, no cluster."""

from __future__ import annotations

import copy

import pytest

from mesh.core.model import Settings
from mesh.gate import review
from mesh.gate.review import Mode, Outcome, Verdict
from tests.gate.reviews import admission, annotated, find, harmless, lockout

ACL = Settings(acl=True)


def test_parse_reads_what_the_gate_uses() -> None:
    request = review.parse(lockout())
    assert (request.kind, request.operation, request.namespace, request.name) == (
        "TrafficTarget",
        "DELETE",
        "shop",
        "frontend-to-web",
    )
    assert request.new is None and request.old is not None and not request.dry_run
    assert review.parse(admission("CREATE", new=find("TCPRoute", "pg"), dry_run=True)).dry_run


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ([], "body: expected an object"),
        ({"apiVersion": "admission.k8s.io/v1beta1", "kind": "AdmissionReview"}, "v1"),
        ({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"}, "request"),
        (
            {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {}},
            "request.uid",
        ),
    ],
)
def test_parse_refuses_what_is_not_a_review(body: object, expected: str) -> None:
    with pytest.raises(review.BadReview, match=expected):
        review.parse(body)


def test_bad_operation_and_object() -> None:
    body = lockout()
    body["request"]["operation"] = "PATCH"
    with pytest.raises(review.BadReview, match="operation"):
        review.parse(body)
    body = lockout()
    body["request"]["oldObject"] = "a string"
    with pytest.raises(review.BadReview, match="oldObject"):
        review.parse(body)


def test_what_is_simulated_and_what_is_not() -> None:
    def why(body: dict[str, object], settings: Settings = ACL) -> str | None:
        return review.relevant(review.parse(body), settings)

    assert why(lockout()) is None
    assert why(harmless()) is None
    assert why(annotated({"simmesh.io/retry-attempts": "2"})) is None
    assert why(annotated({"mesh.traefik.io/retry-attempts": "2"})) is None  # an alias
    assert "annotations do not change" in str(why(annotated({"team": "shop"})))
    tcp = find("Service", "db")  # simmesh.io/traffic-type: tcp
    assert why(admission("CREATE", new=tcp)) is None
    assert why(admission("DELETE", old=tcp)) is None
    plain = find("Service", "web")  # no mesh annotation: created or deleted, nothing to check
    assert "annotations do not change" in str(why(admission("CREATE", new=plain)))
    assert "does not watch" in str(why(lockout(), Settings(acl=True, ignore_namespaces=("shop",))))
    tt = find("TrafficTarget", "web-to-db")
    relabelled = copy.deepcopy(tt)
    relabelled["metadata"]["labels"] = {"team": "shop"}
    assert "does not change" in str(why(admission("UPDATE", new=relabelled, old=tt)))
    deployment = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "x"}}
    assert "does not review Deployment" in str(why(admission("CREATE", new=deployment)))


def test_the_change_is_the_object_after_or_the_deletion() -> None:
    assert review.change(review.parse(lockout())).deletions == (
        ("TrafficTarget", "shop", "frontend-to-web"),
    )
    changed = review.change(review.parse(harmless()))
    (doc,) = changed.objects
    assert len(doc["spec"]["sources"]) == 2 and "status" not in doc


BROKEN = {
    "name": "the frontend can use web",
    "after": {"passes": 0, "runs": 3},
    "checks": [
        {
            "what": "successRate",
            "objective": ">= 0.9",
            "before": {"mean": 0.98},
            "after": {"mean": 0.0},
        }
    ],
}


def test_a_broken_slo_is_named_with_its_numbers() -> None:
    line = review.broken_line(BROKEN)
    assert line == (
        "SLO 'the frontend can use web': successRate 0.98 -> 0 (objective >= 0.9); "
        "passes in 0 of 3 simulated runs"
    )


@pytest.mark.parametrize(
    ("mode", "outcome", "allowed", "denial", "warned"),
    [
        (Mode.ENFORCE, Outcome.BREAKS, False, True, False),
        (Mode.WARN, Outcome.BREAKS, True, False, True),
        (Mode.ENFORCE, Outcome.SAFE, True, False, False),
        (Mode.WARN, Outcome.SAFE, True, False, False),
        (Mode.ENFORCE, Outcome.UNDECIDED, True, False, True),
        (Mode.ENFORCE, Outcome.FAILED, True, False, True),
        (Mode.ENFORCE, Outcome.SKIPPED, True, False, False),
    ],
)
def test_decisions_per_mode(
    mode: Mode, outcome: Outcome, allowed: bool, denial: bool, warned: bool
) -> None:
    verdict = Verdict(outcome, "out of time", broken=(review.broken_line(BROKEN),))
    ok, message, warnings = review.decision(mode, verdict)
    assert ok is allowed and bool(message) is denial and bool(warnings) is warned
    if denial:
        assert message is not None and "breaks SLO 'the frontend can use web'" in message
        assert "0.98 -> 0" in message
    if outcome is Outcome.UNDECIDED:
        assert warnings == ["simmesh gate: could not decide (out of time); allowed"]


def test_the_answer_is_an_admission_review() -> None:
    out = review.answer("uid-1", False, "simmesh gate: this change breaks x", ["a\nb", "c" * 500])
    assert out["apiVersion"] == "admission.k8s.io/v1" and out["kind"] == "AdmissionReview"
    response = out["response"]
    assert response["uid"] == "uid-1" and response["allowed"] is False
    assert response["status"] == {
        "code": 403,
        "reason": "Forbidden",
        "message": "simmesh gate: this change breaks x",
    }
    assert response["warnings"][0] == "a b" and len(response["warnings"][1]) == review.MAX_WARNING
    allowed = review.answer("uid-2", True, None, [])["response"]
    assert allowed == {"uid": "uid-2", "allowed": True}
