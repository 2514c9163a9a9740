"""Fuzz target: the manifest reader and the core behind it.

Bytes -> :func:`mesh.documents.load_yaml_all` (limits) -> Kubernetes objects -> the core's
parsing, topology and config compiler, in ACL mode and not -> the compiled MeshConfig's JSON
must decode through the schema (:func:`mesh.core.schema.decode`: what the compiler writes, a
proxy accepts) and compile into a Router. Allowed: a DocumentError for the file, per-object
errors. Anything else that escapes (a KeyError, a RecursionError, a config the schema refuses)
is a finding.
Settings are fuzzed too: the first document is also read as a ``mesh.yaml``.
"""

from __future__ import annotations

import contextlib
import sys
from dataclasses import replace

import atheris

with atheris.instrument_imports():
    from mesh.core.config import build_config
    from mesh.core.errors import InvalidObject
    from mesh.core.model import Settings
    from mesh.core.parse import parse_objects, parse_settings
    from mesh.core.routing import Router
    from mesh.core.schema import decode
    from mesh.core.topology import build_topology
    from mesh.documents import DocumentError, load_yaml_all
    from mesh.manifests import _expand


def test_one_input(data: bytes) -> None:
    try:
        loaded = load_yaml_all(data, name="fuzz.yaml")
    except DocumentError:
        return
    settings = Settings()
    if loaded and isinstance(loaded[0], dict) and "kind" not in loaded[0]:
        with contextlib.suppress(InvalidObject):
            settings = parse_settings(loaded[0])
    docs = [
        item
        for doc in loaded
        if doc is not None
        for item in _expand(doc)
        if isinstance(item, dict) and isinstance(item.get("kind"), str)
    ]
    state = parse_objects(docs)
    for acl in (False, True):
        chosen = replace(settings, acl=acl)
        config = build_config(build_topology(state, chosen), chosen)
        Router(decode(config.to_json(indent=None)))


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
