"""A proposed change to a scenario's objects: what ``simmesh whatif --apply/--delete`` reads.

A change is plain data (so it travels to worker processes and Dask workers as it is): objects
to apply and references of objects to delete. Applying follows ``kubectl replace`` and
``kubectl delete``: an object replaces the scenario's object of the same kind, namespace and
name whole (annotations included; a missing namespace is ``default``), or is added when there
is none; a deletion of an object the scenario does not have is an error. An object that
carries the annotation ``simmesh.io/whatif: delete`` is a deletion, so a pull request can say
"this object goes" in a manifest. Objects of kinds the mesh does not read (a Deployment in the
same directory) are ignored and listed. A file named ``mesh.yaml`` (given itself, or at the top
of a directory given) changes the mesh's settings instead: each key it gives replaces the
scenario's (``mtls: strict`` turns mutual TLS on and leaves every other setting as it was).

The change is applied to the scenario's manifests with its ``policies`` (so the change wins
over them), before the simulator generates the pods, slices and Services of the workloads
(so a changed Service's ports reach its generated slice): see :func:`sim.scenario.load_scenario`.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mesh.core.errors import InvalidObject
from mesh.core.model import Settings
from mesh.core.parse import PARSERS, object_ref, parse_object, parse_settings, settings_doc
from mesh.documents import DocumentError, read_yaml
from mesh.manifests import ManifestError, manifest_files, read_manifest_file
from sim.scenario import ScenarioError

DELETE_ANNOTATION = "simmesh.io/whatif"


class ChangeError(ScenarioError):
    """A change that cannot be read or applied (bad input: exit code 2)."""


@dataclass(frozen=True, order=True)
class Ref:
    kind: str
    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.kind} {self.namespace}/{self.name}"

    @staticmethod
    def of(doc: dict[str, Any]) -> Ref:
        ref = object_ref(doc)
        return Ref(ref.kind, ref.namespace, ref.name)

    @staticmethod
    def parse(text: str) -> Ref:
        """``Kind/namespace/name`` (``--delete``)."""
        parts = text.split("/")
        if len(parts) != 3 or not all(parts):
            raise ChangeError(f"--delete {text!r}: expected KIND/NAMESPACE/NAME")
        return Ref(*parts)


@dataclass(frozen=True)
class Change:
    objects: tuple[dict[str, Any], ...] = ()  # applied: added, or replacing one of the same ref
    deletions: tuple[Ref, ...] = ()
    ignored: tuple[Ref, ...] = ()  # kinds the mesh does not read
    settings: tuple[tuple[str, Any], ...] = ()  # mesh.yaml keys that replace the scenario's

    def apply(self, docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The scenario's objects after the change (raises ChangeError for a deletion of an
        object it does not have)."""
        docs = list(docs)
        index = {Ref.of(d): i for i, d in enumerate(docs)}
        for ref in self.deletions:
            if ref not in index:
                raise ChangeError(f"cannot delete {ref}: the scenario has no such object")
        gone = {index[ref] for ref in self.deletions}
        for obj in self.objects:
            ref = Ref.of(obj)
            if ref in index:
                docs[index[ref]] = copy.deepcopy(obj)
            else:
                docs.append(copy.deepcopy(obj))
        return [d for i, d in enumerate(docs) if i not in gone]

    def actions(self, docs: list[dict[str, Any]]) -> list[dict[str, str]]:
        """What the change does to ``docs``: add, replace, keep (the same object) or delete."""
        known = {Ref.of(d): d for d in docs}
        out = []
        for obj in self.objects:
            ref = Ref.of(obj)
            old = known.get(ref)
            action = "add" if old is None else "keep" if old == obj else "replace"
            out.append(_action(action, ref))
        out += [_action("delete", ref) for ref in self.deletions]
        out += [_action("ignore", ref) for ref in self.ignored]
        out += [
            {"action": "set", "kind": "setting", "namespace": "", "name": f"{k}={_show(v)}"}
            for k, v in self.settings
        ]
        return out


def _show(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)


def _action(action: str, ref: Ref) -> dict[str, str]:
    return {"action": action, "kind": ref.kind, "namespace": ref.namespace, "name": ref.name}


def load_change(paths: Sequence[Path], deletes: Sequence[str] = ()) -> Change:
    """The change in ``paths`` (files or directories of manifests) and ``deletes``
    (``Kind/namespace/name``). Every problem is a ChangeError naming the file or option."""
    objects: list[dict[str, Any]] = []
    deletions = [Ref.parse(text) for text in deletes]
    ignored: list[Ref] = []
    seen: dict[Ref, str] = {r: "--delete" for r in deletions}
    settings: dict[str, Any] = {}
    for path in paths:
        for file in _settings_files(path):
            for key, value in _settings(file).items():
                if key in settings:
                    raise ChangeError(f"{file}: setting {key} is also in another --apply")
                settings[key] = value
        for file, doc in _documents(path):
            ref = Ref.of(doc)
            if ref in seen:
                raise ChangeError(f"{file}: {ref} is also in {seen[ref]}: one change per object")
            seen[ref] = str(file)
            if _marked_for_deletion(doc, file):
                deletions.append(ref)
            elif doc.get("kind") not in PARSERS:
                ignored.append(ref)
            else:
                _check(doc, file)
                objects.append(doc)
    if len(set(deletions)) != len(deletions):
        raise ChangeError("--delete: the same object twice")
    if not objects and not deletions and not settings:
        shown = ", ".join(str(r) for r in ignored[:3]) or "no objects"
        raise ChangeError(f"nothing to apply or delete: no object the mesh reads ({shown})")
    return Change(tuple(objects), tuple(deletions), tuple(ignored), tuple(sorted(settings.items())))


def _settings_files(path: Path) -> list[Path]:
    if path.name == "mesh.yaml" and not path.is_dir():
        return [path]
    top = path / "mesh.yaml"
    return [top] if path.is_dir() and top.exists() else []


def _settings(file: Path) -> dict[str, Any]:
    """A mesh.yaml of the change: its keys, checked as the mesh reads them."""
    try:
        raw = read_yaml(file)
    except DocumentError as exc:
        raise ChangeError(f"--apply {exc}") from None
    if not isinstance(raw, dict) or not raw:
        raise ChangeError(
            f"{file}: expected a mapping of settings (as mesh.yaml), e.g. mtls: strict"
        )
    try:
        parse_settings(raw)
    except InvalidObject as exc:
        raise ChangeError(f"{file}: {exc.field}: {exc.message}") from None
    return {str(k): v for k, v in raw.items()}


def with_settings(settings: Settings, change: tuple[tuple[str, Any], ...]) -> Settings:
    """``settings`` with the change's keys replacing theirs."""
    if not change:
        return settings
    try:
        return parse_settings(settings_doc(settings) | dict(change))
    except InvalidObject as exc:
        raise ChangeError(f"--apply mesh.yaml: {exc.field}: {exc.message}") from None


def _documents(path: Path) -> list[tuple[Path, dict[str, Any]]]:
    if not path.exists():
        raise ChangeError(f"--apply {path}: no such file or directory")
    if path.name == "mesh.yaml" and not path.is_dir():
        return []  # settings (_settings)
    try:
        files = manifest_files(path) if path.is_dir() else [path]
    except ManifestError as exc:
        raise ChangeError(f"--apply {exc}") from None
    out = []
    for file in files:
        docs, problems = read_manifest_file(file)
        if problems:
            raise ChangeError(problems[0])
        out += [(file, doc) for doc in docs]
    return out


def _marked_for_deletion(doc: dict[str, Any], file: Path) -> bool:
    meta = doc.get("metadata")
    annotations = meta.get("annotations") if isinstance(meta, dict) else None
    value = annotations.get(DELETE_ANNOTATION) if isinstance(annotations, dict) else None
    if value is not None and value != "delete":
        raise ChangeError(
            f"{file}: {Ref.of(doc)}: metadata.annotations.{DELETE_ANNOTATION}: expected "
            f"'delete', got {value!r}"
        )
    return value == "delete"


def _check(doc: dict[str, Any], file: Path) -> None:
    """The object parses as the mesh reads it (its references are checked by the run)."""
    try:
        parse_object(doc)
    except InvalidObject as exc:
        where = f": {exc.field}" if exc.field else ""
        raise ChangeError(f"{file}: {Ref.of(doc)}{where}: {exc.message}") from None
