"""The case catalogue: well formed, every item of the issue covered, names the mesh can route."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from conformance import manifests as m
from conformance.adapter import Simmesh
from conformance.cases import CASES
from conformance.cli import select
from conformance.model import Counts, Expect, Flowing, Mode, Shares


def test_names_are_unique_and_short_enough_for_mesh_names() -> None:
    names = [c.name for c in CASES]
    assert len(names) == len(set(names))
    adapter = Simmesh()
    for case in CASES:
        for svc in case.services:
            ns = "smi-" + case.name + ("" if svc.ns == "A" else "-b")
            adapter.host(svc.name, ns)  # raises when simmesh could not route the name


def test_step_names_are_unique_within_a_case() -> None:
    """The reports key each step's propagation by its name."""
    for case in CASES:
        names = [s.what for s in case.steps]
        assert len(names) == len(set(names)), case.name


def test_every_call_and_count_names_an_app_and_a_service_of_its_case() -> None:
    for case in CASES:
        apps = {a.name for a in case.apps}
        for step in case.steps:
            if isinstance(step, Expect | Flowing):
                assert step.call.source in apps, (case.name, step.what)
                case.service(step.call.service, step.call.ns)
            if isinstance(step, Expect) and isinstance(step.want, Counts | Shares):
                assert set(step.want.by) <= apps, (case.name, step.what)


def test_placeholders_are_all_filled() -> None:
    fills = {"$A": "ns-a", "$B": "ns-b"}

    def fill(text: str) -> Any:
        return 9000 if text.startswith("$port:") else fills[text]

    for case in CASES:
        for step in case.steps:
            for doc in getattr(step, "docs", ()):
                assert not _placeholders(m.substitute(doc, fill)), (case.name, step.what)


def _placeholders(doc: Any) -> list[str]:
    if isinstance(doc, dict):
        return [p for v in doc.values() for p in _placeholders(v)]
    if isinstance(doc, list):
        return [p for v in doc for p in _placeholders(v)]
    return [doc] if isinstance(doc, str) and doc.startswith("$") else []


def test_the_issue_is_covered() -> None:
    tags = {t for c in CASES for t in c.tags}
    assert {"access", "spec", "split", "default-mode", "versions", "layer5", "tcp", "udp"} <= tags
    assert {c.needs for c in CASES} == {Mode.ACL, Mode.DEFAULT, None}
    written = {(doc["kind"], doc["apiVersion"]) for c in CASES for s in c.steps for doc in _docs(s)}
    for kind, group, versions in READ:  # ../shared/SMI.md: served and also read, per kind
        for v in versions:
            assert (kind, f"{group}.smi-spec.io/v1alpha{v}") in written, (kind, v)


READ = (
    ("TrafficTarget", "access", (1, 2, 3)),
    ("HTTPRouteGroup", "specs", (1, 2, 3, 4)),
    ("TCPRoute", "specs", (1, 3, 4)),
    ("UDPRoute", "specs", (4,)),
    ("TrafficSplit", "split", (1, 2, 3, 4)),
)


def _docs(step: Any) -> tuple[Any, ...]:
    return tuple(getattr(step, "docs", ()))


def test_select_by_name_glob_or_tag() -> None:
    assert [c.name for c in select(CASES, ["split-exact"])] == ["split-exact"]
    assert all("udp" in c.tags for c in select(CASES, ["udp"]))
    assert {c.name for c in select(CASES, ["access-t*"])} == {"access-tcp-ports"}
    assert select(CASES, []) == list(CASES)


def test_docs_list_every_case_and_the_readme_counts_them() -> None:
    root = Path(__file__).resolve().parents[2]
    section = (root / "docs/conformance.md").read_text().split("## The cases")[1].split("\n## ")[0]
    listed = re.findall(r"^\| `([a-z0-9-]+)` \|", section, re.M)
    assert listed == [c.name for c in CASES]
    assert f"{len(CASES)} cases (" in (root / "README.md").read_text()
