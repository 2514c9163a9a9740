"""Writing a snapshot's scenario directory, and nothing outside it.

Files: ``scenario.yaml`` (nodes, workloads, traffic: mesh/snapshot/model.py), ``mesh.yaml``
(the ``simmesh-settings`` ConfigMap's, as it is), one manifest file per kind
(``services.yaml``, ``endpointslices.yaml``, ``pods.yaml``, and the SMI kinds present) and
``snapshot.json`` (what was observed in the window, which the manifest reader leaves alone).
Everything is sorted, so two snapshots of the same state and window differ only where the
cluster did. The directory must be new or empty: a snapshot never mixes with other files.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from mesh.snapshot.objects import KINDS, key

OBSERVED = "snapshot.json"


class OutputError(Exception):
    pass


def check_out(out: Path) -> None:
    """``out`` may be written: it does not exist, or is an empty directory."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise OutputError(f"--out {out}: exists and is not an empty directory")


def _dump_all(docs: Sequence[Mapping[str, Any]]) -> str:
    return yaml.safe_dump_all(list(docs), sort_keys=False, default_flow_style=False)


def write(
    out: Path,
    *,
    scenario: dict[str, Any],
    settings_text: str,
    docs: Sequence[Mapping[str, Any]],
    observed: dict[str, Any],
    header: str,
) -> list[Path]:
    """Write the directory; the files written."""
    check_out(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    comment = "".join(f"# {line}\n" if line else "#\n" for line in header.splitlines())
    path = out / "scenario.yaml"
    path.write_text(comment + yaml.safe_dump(scenario, sort_keys=False, width=100))
    written.append(path)
    path = out / "mesh.yaml"
    path.write_text(settings_text if settings_text.endswith("\n") else settings_text + "\n")
    written.append(path)
    for kind in KINDS:
        of_kind = sorted((d for d in docs if d.get("kind") == kind.kind), key=key)
        if not of_kind:
            continue
        path = out / f"{kind.plural}.yaml"
        path.write_text(_dump_all(of_kind))
        written.append(path)
    path = out / OBSERVED
    path.write_text(json.dumps(observed, indent=2, sort_keys=True) + "\n")
    written.append(path)
    return written


def write_slos(path: Path, slos: list[dict[str, Any]], *, header: str) -> None:
    comment = "".join(f"# {line}\n" if line else "#\n" for line in header.splitlines())
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(comment + yaml.safe_dump({"slos": slos}, sort_keys=False, width=100))
