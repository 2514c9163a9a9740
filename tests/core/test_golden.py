"""Golden files: manifests (and mesh.yaml) in, MeshConfig JSON out, compared byte for byte.

Each case is a directory under ``golden/`` with ``manifests.yaml`` (multi-document, ``List``
kinds expanded), an optional ``mesh.yaml`` and the expected ``config.json``. After an intended
change, regenerate with ``UPDATE_GOLDEN=1 .venv/bin/pytest tests/core/test_golden.py`` and review
the diff by eye before committing it: that review is the point of a golden file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from mesh.core.config import build_config
from mesh.core.parse import parse_objects, parse_settings
from mesh.core.topology import build_topology

GOLDEN = Path(__file__).parent / "golden"
CASES = sorted(p.name for p in GOLDEN.iterdir() if (p / "manifests.yaml").is_file())
EXPECTED_CASES = {
    "default-http",
    "tcp",
    "udp",
    "acl-route-groups",
    "acl-tcp",
    "split",
    "split-matches",
    "annotations",
    "gamma-http",
    "gamma-consumer",
    "gamma-grpc",
}


def load_docs(path: Path) -> list[Any]:
    docs: list[Any] = []
    for doc in yaml.safe_load_all(path.read_text()):
        if isinstance(doc, dict) and str(doc.get("kind", "")).endswith("List"):
            docs.extend(doc.get("items") or [])
        elif doc is not None:
            docs.append(doc)
    return docs


def render(case: Path) -> str:
    settings_file = case / "mesh.yaml"
    raw = yaml.safe_load(settings_file.read_text()) if settings_file.exists() else {}
    settings = parse_settings(raw or {})
    state = parse_objects(load_docs(case / "manifests.yaml"))
    return build_config(build_topology(state, settings), settings).to_json()


def test_every_expected_case_exists() -> None:
    assert set(CASES) >= EXPECTED_CASES


@pytest.mark.parametrize("name", CASES)
def test_golden(name: str) -> None:
    case = GOLDEN / name
    expected = case / "config.json"
    got = render(case)
    if os.environ.get("UPDATE_GOLDEN") == "1":
        expected.write_text(got)
    assert expected.exists(), f"{expected} is missing: run with UPDATE_GOLDEN=1 and review it"
    assert got == expected.read_text(), f"{name}: config differs from {expected}"


@pytest.mark.parametrize("name", CASES)
def test_golden_is_stable(name: str) -> None:
    assert render(GOLDEN / name) == render(GOLDEN / name)
