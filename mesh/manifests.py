"""Reading a manifests directory: every ``*.yaml``/``*.yml``/``*.json`` file (recursively, in
sorted order), multi-document files and ``List`` kinds; ``mesh.yaml`` holds the settings and
``scenario.yaml`` belongs to the simulator, and ``snapshot.json`` holds what ``simmesh
snapshot`` observed (mesh/snapshot/write.py), so none of them is read as manifests.

A file that is not valid YAML, breaks a limit of :mod:`mesh.documents` (size, nesting, alias
expansion, NaN), or holds a document that is not a Kubernetes object, is a problem naming the
file: the caller decides whether that is fatal (the CLI) or reported and skipped (the file
provider). A bad ``mesh.yaml`` is a :class:`ManifestError`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mesh.core.errors import InvalidObject
from mesh.core.model import Settings
from mesh.core.parse import ClusterState, parse_objects, parse_settings
from mesh.documents import DocumentError, read_yaml, read_yaml_all

SPECIAL = ("mesh.yaml", "scenario.yaml", "snapshot.json")


class ManifestError(Exception):
    pass


@dataclass
class Manifests:
    docs: list[Any] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # file-level problems


def manifest_files(directory: Path) -> list[Path]:
    if not directory.is_dir():
        raise ManifestError(f"{directory}: not a directory")
    return sorted(
        p
        for p in directory.rglob("*")
        if not p.is_dir()  # FIFOs, sockets, broken links: reported as unreadable, never skipped
        and p.suffix in (".yaml", ".yml", ".json")
        and p.name not in SPECIAL
        and not any(part.startswith(".") for part in p.relative_to(directory).parts)
    )


def read_manifests(directory: Path) -> Manifests:
    out = Manifests()
    for path in manifest_files(directory):
        docs, problems = read_manifest_file(path)
        out.docs.extend(docs)
        out.problems.extend(problems)
    return out


def read_manifest_file(path: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """One file's Kubernetes objects (``List`` kinds expanded) and its problems."""
    try:
        loaded = read_yaml_all(path)
    except DocumentError as exc:
        return [], [str(exc)]
    docs: list[dict[str, Any]] = []
    problems: list[str] = []
    for index, doc in enumerate(loaded):
        if doc is None:
            continue
        for item in _expand(doc):
            if not isinstance(item, dict) or not isinstance(item.get("kind"), str):
                problems.append(
                    f"{path}: document {index + 1}: expected a Kubernetes object with a kind"
                )
                continue
            docs.append(item)
    return docs, problems


def _expand(doc: Any) -> list[Any]:
    if isinstance(doc, dict) and isinstance(doc.get("kind"), str) and doc["kind"].endswith("List"):
        items = doc.get("items")
        return list(items) if isinstance(items, list) else [doc]
    return [doc]


def read_settings(directory: Path, *, acl: bool | None = None) -> Settings:
    path = directory / "mesh.yaml"
    settings = Settings()
    if path.exists() or path.is_symlink():
        try:
            settings = parse_settings(read_yaml(path) or {})
        except DocumentError as exc:
            raise ManifestError(str(exc)) from None
        except InvalidObject as exc:
            where = f"{exc.field}: " if exc.field else ""
            raise ManifestError(f"{path}: {where}{exc.message}") from None
    if acl is not None:
        from dataclasses import replace

        settings = replace(settings, acl=acl)
    return settings


def load_state(directory: Path) -> tuple[ClusterState, list[str]]:
    manifests = read_manifests(directory)
    return parse_objects(manifests.docs), manifests.problems
