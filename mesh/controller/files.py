"""The file provider: the controller fed by a manifests directory that it watches.

For the local mesh (``simmesh up``) and for users without a cluster. The directory is polled
(cheap: one ``stat`` per file); when a file changes, only that file is read again. A file that is
not valid YAML keeps its previous objects and its problem is reported, so a half-saved edit never
empties the mesh.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import yaml

from mesh.controller.controller import Controller
from mesh.manifests import manifest_files

log = logging.getLogger("simmesh.controller.files")


class FileProvider:
    def __init__(self, controller: Controller, directory: Path, *, interval: float = 0.5) -> None:
        self.controller = controller
        self.directory = directory
        self.interval = interval
        self.signatures: dict[Path, tuple[int, int]] = {}
        self.docs: dict[Path, list[dict[str, Any]]] = {}
        self.problems: dict[Path, str] = {}

    def scan(self) -> bool:
        """Read what changed; True when the store was updated."""
        paths = manifest_files(self.directory)
        changed = False
        for path in paths:
            try:
                stat = path.stat()
            except OSError:
                continue
            signature = (stat.st_mtime_ns, stat.st_size)
            if self.signatures.get(path) == signature:
                continue
            self.signatures[path] = signature
            changed |= self._read(path)
        for path in [p for p in self.docs if p not in paths]:
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

    def _read(self, path: Path) -> bool:
        try:
            loaded = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
        except (OSError, yaml.YAMLError, UnicodeDecodeError) as exc:
            self.problems[path] = f"{path}: not valid YAML: {' '.join(str(exc).split())[:200]}"
            log.warning("%s (keeping its previous objects)", self.problems[path])
            return False
        self.problems.pop(path, None)
        docs: list[dict[str, Any]] = []
        for doc in loaded:
            items = (
                doc.get("items")
                if isinstance(doc, dict) and str(doc.get("kind", "")).endswith("List")
                else [doc]
            )
            docs.extend(
                d for d in items or [] if isinstance(d, dict) and isinstance(d.get("kind"), str)
            )
        old = self.docs.get(path)
        self.docs[path] = docs
        return old != docs

    async def run(self) -> None:
        while True:
            try:
                self.scan()
            except OSError as exc:
                log.warning("cannot read %s: %s", self.directory, exc)
            await asyncio.sleep(self.interval)
