"""AdmissionReview in, AdmissionReview out: what the gate reads and answers (pure).

The API server sends an ``admission.k8s.io/v1`` AdmissionReview for each CREATE, UPDATE and
DELETE the webhook's rules select (docs/gate.md). :func:`parse` reads the parts the gate uses;
:func:`relevant` says whether the change can change routing at all (an SMI object whose spec
changes, a Service whose mesh annotations change, in a namespace the mesh watches);
:func:`change` is the change as the what-if applies it; :func:`answer` turns the what-if's
outcome into the response for the mode: ``warn`` allows with warnings, ``enforce`` denies a
change that breaks an SLO, naming it and the predicted numbers. Whatever could not be decided
(the budget ran out, the simulation failed, no SLOs) is allowed with a warning: the gate fails
open, as its ``failurePolicy: Ignore`` does when the controller is down.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from mesh.core.annotations import mesh_annotations
from mesh.core.model import Settings
from mesh.snapshot.objects import SMI_KINDS, strip

API_VERSION = "admission.k8s.io/v1"
OPERATIONS = ("CREATE", "UPDATE", "DELETE")
MAX_WARNING = 240  # characters: kubectl shows warnings as they are, the API server caps them
MAX_WARNINGS = 8


class BadReview(ValueError):
    """Not an AdmissionReview the gate can read (answered 400)."""


class Mode(enum.Enum):
    OFF = "off"
    WARN = "warn"
    ENFORCE = "enforce"


@dataclass(frozen=True)
class Review:
    uid: str
    kind: str
    operation: str
    namespace: str
    name: str
    new: Mapping[str, Any] | None  # the object after the change (None for DELETE)
    old: Mapping[str, Any] | None  # before (None for CREATE)
    dry_run: bool = False

    @property
    def what(self) -> str:
        return f"{self.kind} {self.namespace}/{self.name}"


def _mapping(value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise BadReview(f"{where}: expected an object")
    return value


def _text(body: Mapping[str, Any], key: str, where: str) -> str:
    value = body.get(key)
    if not isinstance(value, str):
        raise BadReview(f"{where}.{key}: expected a string")
    return value


def parse(body: Any) -> Review:
    """The review's request, or BadReview naming the field."""
    review = _mapping(body, "body")
    if review.get("apiVersion") != API_VERSION or review.get("kind") != "AdmissionReview":
        raise BadReview(f"expected an AdmissionReview of {API_VERSION}")
    request = _mapping(review.get("request"), "request")
    uid = _text(request, "uid", "request")
    kind = _text(_mapping(request.get("kind"), "request.kind"), "kind", "request.kind")
    operation = _text(request, "operation", "request")
    if operation not in (*OPERATIONS, "CONNECT"):
        raise BadReview(f"request.operation: expected one of {', '.join(OPERATIONS)}")
    new, old = request.get("object"), request.get("oldObject")
    for value, where in ((new, "request.object"), (old, "request.oldObject")):
        if value is not None and not isinstance(value, Mapping):
            raise BadReview(f"{where}: expected an object or null")
    name = request.get("name") or ((new or old or {}).get("metadata") or {}).get("name") or ""
    return Review(
        uid=uid,
        kind=kind,
        operation=operation,
        namespace=str(request.get("namespace") or "default"),
        name=str(name),
        new=new if operation != "DELETE" else None,
        old=old,
        dry_run=request.get("dryRun") is True,
    )


def _annotations(doc: Mapping[str, Any] | None) -> dict[str, tuple[str, str]]:
    meta = (doc or {}).get("metadata") or {}
    raw = meta.get("annotations") if isinstance(meta, Mapping) else None
    if not isinstance(raw, Mapping):
        return {}
    return mesh_annotations(tuple((str(k), str(v)) for k, v in raw.items()))


def relevant(review: Review, settings: Settings) -> str | None:
    """Why the change needs no simulation (None: it does)."""
    if review.operation not in OPERATIONS:
        return f"{review.operation} changes nothing the mesh reads"
    if not settings.watches(review.namespace):
        return f"the mesh does not watch namespace {review.namespace}"
    if review.kind == "Service":
        if _annotations(review.old) == _annotations(review.new):
            return "its simmesh.io/ annotations do not change"
        return None
    if review.kind not in SMI_KINDS:
        return f"the gate does not review {review.kind} objects"
    if review.old is not None and review.new is not None and _same(review.old, review.new):
        return "what the mesh reads of it does not change"
    return None


def _same(old: Mapping[str, Any], new: Mapping[str, Any]) -> bool:
    a, b = strip(old), strip(new)
    return bool(a.get("spec") == b.get("spec") and a.get("apiVersion") == b.get("apiVersion"))


@dataclass(frozen=True)
class Change:
    """The change as plain data (sim.change.Change is built from it in the worker)."""

    objects: tuple[dict[str, Any], ...] = ()
    deletions: tuple[tuple[str, str, str], ...] = ()  # kind, namespace, name

    def to_json(self) -> dict[str, Any]:
        return {"objects": list(self.objects), "deletions": [list(d) for d in self.deletions]}


def change(review: Review) -> Change:
    if review.operation == "DELETE":
        return Change(deletions=((review.kind, review.namespace, review.name),))
    assert review.new is not None
    doc = strip(review.new)
    doc.setdefault("metadata", {}).setdefault("namespace", review.namespace)
    doc["metadata"].setdefault("name", review.name)
    return Change(objects=(doc,))


# --------------------------------------------------------------------------------- answers


class Outcome(enum.Enum):
    SKIPPED = "skipped"  # nothing to simulate
    SAFE = "safe"  # no SLO that held before breaks
    BREAKS = "breaks"  # an SLO that held before breaks
    UNDECIDED = "undecided"  # out of time
    FAILED = "failed"  # the simulation could not run (no SLOs, no traffic, an error)


@dataclass(frozen=True)
class Verdict:
    outcome: Outcome
    reason: str = ""  # SKIPPED, UNDECIDED, FAILED: why; BREAKS: what each broken SLO says
    broken: tuple[str, ...] = ()  # a line per broken SLO
    notes: tuple[str, ...] = field(default=())  # warnings to pass on (objects the mesh rejects)
    details: dict[str, Any] = field(default_factory=dict)  # what was simulated, for the record


def broken_line(slo: Mapping[str, Any]) -> str:
    """One broken SLO of sim.whatif's results: its name and the predicted numbers."""
    parts = []
    for check in slo.get("checks") or []:
        before, after = check.get("before") or {}, check.get("after") or {}
        parts.append(
            f"{check.get('what')} {_num(before.get('mean'))} -> {_num(after.get('mean'))} "
            f"(objective {check.get('objective')})"
        )
    runs = slo.get("after") or {}
    seeds = f"passes in {runs.get('passes', '?')} of {runs.get('runs', '?')} simulated runs"
    return f"SLO {slo.get('name')!r}: {'; '.join(parts)}; {seeds}"


def _num(value: Any) -> str:
    if not isinstance(value, int | float):
        return "none"
    return f"{value:.4g}"


def decision(mode: Mode, verdict: Verdict) -> tuple[bool, str | None, list[str]]:
    """(allowed, the denial's message, warnings) for ``verdict`` in ``mode``."""
    notes = [f"simmesh gate: {n}" for n in verdict.notes]
    if verdict.outcome is Outcome.SKIPPED:
        return True, None, []
    if verdict.outcome is Outcome.SAFE:
        return True, None, notes
    if verdict.outcome is Outcome.BREAKS:
        if mode is Mode.ENFORCE:
            message = "simmesh gate: this change breaks " + " | ".join(verdict.broken)
            return False, message, notes
        return True, None, [f"simmesh gate: this change breaks {b}" for b in verdict.broken] + notes
    what = "could not decide" if verdict.outcome is Outcome.UNDECIDED else "did not simulate"
    return True, None, [f"simmesh gate: {what} ({verdict.reason}); allowed", *notes]


def answer(uid: str, allowed: bool, message: str | None, warnings: Sequence[str]) -> dict[str, Any]:
    """The AdmissionReview response."""
    response: dict[str, Any] = {"uid": uid, "allowed": allowed}
    if not allowed:
        response["status"] = {"code": 403, "reason": "Forbidden", "message": message or ""}
    shown = [_one_line(w)[:MAX_WARNING] for w in warnings[:MAX_WARNINGS]]
    if shown:
        response["warnings"] = shown
    return {"apiVersion": API_VERSION, "kind": "AdmissionReview", "response": response}


def _one_line(text: str) -> str:
    return " ".join(text.split())
