"""The file provider: the controller fed by a manifests directory that it watches.

For the local mesh (``simmesh up``) and for users without a cluster. The directory is polled
(cheap: one ``stat`` per file); when a file changes, only that file is read again. A file that
cannot be read within the limits of :mod:`mesh.documents` (not valid YAML, too large, nested
too deeply, an anchor bomb, NaN) keeps its previous objects and its problem is logged once per
change and kept in ``problems``, so a half-saved edit never empties the mesh.

Reading and parsing YAML is the heavy part, so :meth:`FileProvider.run` does it in a worker
thread (:meth:`collect`); only the store update runs on the event loop, which keeps answering
long-polls meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mesh.controller.controller import Controller
from mesh.manifests import ManifestError, manifest_files, read_manifest_file

log = logging.getLogger("simmesh.controller.files")


@dataclass
class Changes:
    """What one pass over the directory found (made off the event loop)."""

    read: dict[Path, list[dict[str, Any]]] = field(default_factory=dict)  # new contents
    failed: dict[Path, str] = field(default_factory=dict)  # unreadable: previous objects kept
    gone: list[Path] = field(default_factory=list)
    signatures: dict[Path, tuple[int, int]] = field(default_factory=dict)


class FileProvider:
    def __init__(self, controller: Controller, directory: Path, *, interval: float = 0.5) -> None:
        self.controller = controller
        self.directory = directory
        self.interval = interval
        self.signatures: dict[Path, tuple[int, int]] = {}
        self.docs: dict[Path, list[dict[str, Any]]] = {}
        self.problems: dict[Path, str] = {}

    def collect(self) -> Changes:
        """Stat every file and read the changed ones; touches no shared state but reads
        ``signatures`` and ``docs`` (safe in a worker thread while the loop waits for it)."""
        paths = manifest_files(self.directory)
        changes = Changes()
        for path in paths:
            try:
                stat = path.stat()
            except OSError:
                continue
            signature = (stat.st_mtime_ns, stat.st_size)
            if self.signatures.get(path) == signature:
                continue
            changes.signatures[path] = signature
            docs, problems = read_manifest_file(path)
            if problems and not docs:
                changes.failed[path] = "; ".join(problems)
            else:
                changes.read[path] = docs
                if problems:
                    changes.failed[path] = "; ".join(problems)
        present = set(paths)
        changes.gone = [p for p in self.docs if p not in present]
        return changes

    def apply(self, changes: Changes) -> bool:
        """Put what :meth:`collect` found into the store (on the event loop); True if changed."""
        self.signatures.update(changes.signatures)
        changed = False
        for path, problem in changes.failed.items():
            if self.problems.get(path) != problem:
                log.warning("%s (keeping its previous objects)", problem)
            self.problems[path] = problem
        for path, docs in changes.read.items():
            if path not in changes.failed:
                self.problems.pop(path, None)
            changed |= self.docs.get(path) != docs
            self.docs[path] = docs
        for path in changes.gone:
            del self.docs[path]
            self.signatures.pop(path, None)
            self.problems.pop(path, None)
            changed = True
        if changed:
            docs = [doc for path in sorted(self.docs) for doc in self.docs[path]]
            kinds = {str(d.get("kind")) for d in docs} | {
                k for k, _, _ in self.controller.store.entries
            }
            self.controller.store.replace_kind(kinds, docs)
            self.controller.poke()
        return changed

    def scan(self) -> bool:
        """One pass on the calling thread (start-up and tests); True when the store changed."""
        return self.apply(self.collect())

    async def run(self) -> None:
        while True:
            try:
                changes = await asyncio.to_thread(self.collect)
            except (OSError, ManifestError) as exc:
                log.warning("cannot read %s: %s (keeping what was read)", self.directory, exc)
            else:
                self.apply(changes)
            await asyncio.sleep(self.interval)
