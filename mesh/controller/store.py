"""The controller's store: the latest version of every watched object, parsed once.

Providers (Kubernetes watches, a manifests directory) only put and delete objects here; each
object is parsed by the core when it arrives and kept as its parsed value or its error. The raw
document is not kept (at 10,000 Services the raw JSON would be most of the controller's
memory): a fingerprint (the resourceVersion, or a digest of the document when it has none)
tells whether a put changes anything, and the object's apiVersion and uid are kept for Events.

A rebuild reads a :class:`~mesh.core.parse.ClusterState` snapshot (:meth:`Store.snapshot`), so
one malformed object only ever costs that object. ``changes`` counts mutations, for the
level-triggered rebuild loop.

With :meth:`Store.keep_documents` (the admission gate, mesh/gate) the store also keeps each
object as the mesh reads it (mesh/snapshot/objects.py: status, managed fields and a Pod's
containers left out), so the gate can simulate a change against the objects as they are.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from mesh.core.errors import InvalidObject, ObjectError
from mesh.core.parse import ClusterState, object_ref, parse_object, rejected_value
from mesh.snapshot.objects import strip

Key = tuple[str, str, str]  # kind, namespace, name


@dataclass(frozen=True, slots=True)
class Entry:
    # parsed value; None when the object is of a kind not read or has an error (but for a GAMMA
    # route rejected as a whole: what its status needs, a RejectedRoute)
    value: Any
    error: ObjectError | None
    fingerprint: str
    api_version: str
    uid: str | None


def key_of(doc: Mapping[str, Any]) -> Key:
    ref = object_ref(doc)
    return (ref.kind, ref.namespace, ref.name)


def fingerprint(doc: Mapping[str, Any]) -> str:
    meta = doc.get("metadata")
    version = meta.get("resourceVersion") if isinstance(meta, Mapping) else None
    if isinstance(version, str) and version:
        return f"rv:{version}"
    text = json.dumps(doc, sort_keys=True, default=str)
    return "sha:" + hashlib.sha256(text.encode()).hexdigest()


class Store:
    def __init__(self) -> None:
        self.entries: dict[Key, Entry] = {}
        self.changes = 0
        self.documents: dict[Key, dict[str, Any]] | None = None  # see keep_documents

    def keep_documents(self) -> None:
        """From now on keep every object (stripped) beside its parsed value."""
        if self.documents is None:
            self.documents = {}

    def put(self, doc: Mapping[str, Any]) -> Key:
        key = key_of(doc)
        mark = fingerprint(doc)
        old = self.entries.get(key)
        if old is not None and old.fingerprint == mark:
            kept = old.value is not None or old.error is not None
            if self.documents is not None and kept and key not in self.documents:
                self.documents[key] = strip(doc)
            return key
        try:
            value = parse_object(doc)
            error = None
        except InvalidObject as exc:
            value, error = (
                rejected_value(doc, exc),
                ObjectError(object_ref(doc), exc.field, exc.message),
            )
        meta = doc.get("metadata")
        uid = meta.get("uid") if isinstance(meta, Mapping) else None
        self.entries[key] = Entry(
            value,
            error,
            mark,
            str(doc.get("apiVersion", "")),
            uid if isinstance(uid, str) else None,
        )
        if self.documents is not None and (value is not None or error is not None):
            self.documents[key] = strip(doc)  # rejected ones too: the simulator rejects them
        self.changes += 1
        return key

    def delete(self, doc: Mapping[str, Any]) -> None:
        key = key_of(doc)
        if self.documents is not None:
            self.documents.pop(key, None)
        if self.entries.pop(key, None) is not None:
            self.changes += 1

    def replace_kind(self, kinds: Iterable[str], docs: Iterable[Mapping[str, Any]]) -> None:
        """Replace every object of ``kinds`` with ``docs`` (a relist), counting real changes."""
        wanted = set(kinds)
        seen = {self.put(doc) for doc in docs}
        for key in [k for k in self.entries if k[0] in wanted and k not in seen]:
            del self.entries[key]
            if self.documents is not None:
                self.documents.pop(key, None)
            self.changes += 1

    def counts(self) -> dict[str, int]:
        """Objects per kind, sorted by kind."""
        counts: dict[str, int] = {}
        for kind, _, _ in self.entries:
            counts[kind] = counts.get(kind, 0) + 1
        return dict(sorted(counts.items()))

    def snapshot(self) -> ClusterState:
        state = ClusterState()
        for entry in self.entries.values():
            if entry.error is not None:
                state.errors.append(entry.error)
            if entry.value is not None:
                state.add(entry.value)
        return state
