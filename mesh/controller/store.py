"""The controller's store: the latest version of every watched object, parsed once.

Providers (Kubernetes watches, a manifests directory) only put and delete objects here; each
object is parsed by the core when it arrives and kept with its error, if any. A rebuild reads a
:class:`~mesh.core.parse.ClusterState` snapshot (:meth:`Store.snapshot`), so one malformed object
only ever costs that object. ``changes`` counts mutations, for the level-triggered rebuild loop.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from mesh.core.errors import InvalidObject, ObjectError
from mesh.core.parse import ClusterState, object_ref, parse_object

Key = tuple[str, str, str]  # kind, namespace, name


@dataclass(frozen=True, slots=True)
class Entry:
    raw: Mapping[str, Any]
    value: Any  # parsed value, or None when the object has an error
    error: ObjectError | None


def key_of(doc: Mapping[str, Any]) -> Key:
    ref = object_ref(doc)
    return (ref.kind, ref.namespace, ref.name)


class Store:
    def __init__(self) -> None:
        self.entries: dict[Key, Entry] = {}
        self.changes = 0

    def put(self, doc: Mapping[str, Any]) -> Key:
        key = key_of(doc)
        old = self.entries.get(key)
        if old is not None and old.raw == doc:
            return key
        try:
            value = parse_object(doc)
            error = None
        except InvalidObject as exc:
            value, error = None, ObjectError(object_ref(doc), exc.field, exc.message)
        self.entries[key] = Entry(doc, value, error)
        self.changes += 1
        return key

    def delete(self, doc: Mapping[str, Any]) -> None:
        if self.entries.pop(key_of(doc), None) is not None:
            self.changes += 1

    def replace_kind(self, kinds: Iterable[str], docs: Iterable[Mapping[str, Any]]) -> None:
        """Replace every object of ``kinds`` with ``docs`` (a relist), counting real changes."""
        wanted = set(kinds)
        seen = {self.put(doc) for doc in docs}
        for key in [k for k in self.entries if k[0] in wanted and k not in seen]:
            del self.entries[key]
            self.changes += 1

    def snapshot(self) -> ClusterState:
        state = ClusterState()
        for entry in self.entries.values():
            if entry.error is not None:
                state.errors.append(entry.error)
            elif entry.value is not None:
                state.add(entry.value)
        return state

    def count(self, kind: str) -> int:
        return sum(1 for k in self.entries if k[0] == kind)
