"""The what-if the gate runs for one change, as plain data for the worker process (pure).

The base scenario is the mesh as the controller holds it now (its stripped objects and
settings) with the traffic and workloads of the proxies' latest measured window, put together
exactly as ``simmesh snapshot`` does (mesh/snapshot/model.py), and simulated for
``duration`` seconds. The SLO ConfigMap (``gate.slosConfigMap``) holds ``slos.yaml``: the SLO
file of ``simmesh whatif --slos``. It may also hold ``traffic.yaml``: scenario.yaml keys
(``traffic``, ``workloads``, ``nodes``, ``proxyLatency``, ...) that replace the measured ones,
for meshes whose recent traffic is not the traffic to protect (a quiet night, a test). Without
SLOs or without any traffic there is nothing to check: :class:`JobError` says which.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import yaml

from mesh.core.model import Settings
from mesh.core.parse import settings_doc
from mesh.documents import DocumentError, load_yaml
from mesh.gate.review import Change
from mesh.snapshot import model
from mesh.snapshot.exposition import Table
from mesh.snapshot.objects import key

SLOS_KEY, TRAFFIC_KEY = "slos.yaml", "traffic.yaml"
NOT_REPLACED = ("name", "seed", "duration", "slos", "timeline")  # the gate sets these


class JobError(Exception):
    """Nothing to simulate; the message says why (the change is allowed with a warning)."""


@dataclass(frozen=True)
class Window:
    """The proxies' latest measured window: per node, the difference of two scrapes."""

    per_node: dict[str, Table]
    seconds: float
    ended: float  # epoch seconds

    @property
    def requests(self) -> float:
        return sum(
            v for table in self.per_node.values() for v in table.get(model.CALLS, {}).values()
        )


@dataclass(frozen=True)
class Inputs:
    docs: Sequence[Mapping[str, Any]]  # the controller's objects, stripped
    settings: Settings
    window: Window | None
    configmap: str  # namespace/name, for messages
    data: Mapping[str, str] | None  # the ConfigMap's data (None: there is none)
    seeds: int = 3
    duration: float = 30.0


def slos(inputs: Inputs) -> list[Any]:
    where = f"ConfigMap {inputs.configmap}"
    if inputs.data is None:
        raise JobError(f"no SLOs to check: no {where}")
    text = inputs.data.get(SLOS_KEY)
    if not text:
        raise JobError(f"no SLOs to check: {where} has no {SLOS_KEY}")
    try:
        raw = load_yaml(text, name=f"{where}: {SLOS_KEY}")
    except DocumentError as exc:
        raise JobError(str(exc)) from None
    if isinstance(raw, dict) and set(raw) == {"slos"}:
        raw = raw["slos"]
    if not isinstance(raw, list) or not raw:
        raise JobError(f"{where}: {SLOS_KEY}: expected a list of SLOs (as scenario.yaml's slos:)")
    return raw


def _overrides(inputs: Inputs) -> dict[str, Any]:
    text = (inputs.data or {}).get(TRAFFIC_KEY)
    if not text:
        return {}
    where = f"ConfigMap {inputs.configmap}: {TRAFFIC_KEY}"
    try:
        raw = load_yaml(text, name=where)
    except DocumentError as exc:
        raise JobError(str(exc)) from None
    if not isinstance(raw, dict):
        raise JobError(f"{where}: expected a mapping of scenario.yaml keys (traffic, ...)")
    return {k: v for k, v in raw.items() if k not in NOT_REPLACED}


def scenario(inputs: Inputs) -> dict[str, Any]:
    """scenario.yaml of the base: measured (or default) workloads and traffic, overridden."""
    window = inputs.window
    snap = model.snapshot(
        window.per_node if window is not None else {},
        seconds=window.seconds if window is not None else 1.0,
        docs=inputs.docs,
        settings=inputs.settings,
        name="gate",
        duration=inputs.duration,
        description="the live mesh as the controller holds it, with the proxies' latest window",
    )
    raw = snap.scenario
    overrides = _overrides(inputs)
    workloads = overrides.pop("workloads", None)
    if isinstance(workloads, dict):  # the measured ones, with the user's on top
        raw["workloads"] = {**raw["workloads"], **copy.deepcopy(workloads)}
    elif workloads is not None:
        raw["workloads"] = workloads  # the validator names what is wrong with it
    raw.update(copy.deepcopy(overrides))
    if not raw.get("traffic"):
        where = f"ConfigMap {inputs.configmap}: {TRAFFIC_KEY}"
        if window is None:
            raise JobError(f"no traffic to simulate: no window measured yet, none in {where}")
        raise JobError(
            f"no traffic to simulate: none through the mesh in the last {window.seconds:.0f} s "
            f"window, none in {where}"
        )
    return raw


def build(inputs: Inputs, change: Change, *, budget: float) -> dict[str, Any]:
    """The job for the worker (mesh/gate/worker.py); JobError when there is nothing to check."""
    objectives = slos(inputs)
    raw = scenario(inputs)
    docs = sorted((dict(d) for d in inputs.docs), key=key)
    return {
        "files": {
            "objects.yaml": yaml.safe_dump_all(docs, sort_keys=True) if docs else "",
            "mesh.yaml": yaml.safe_dump(settings_doc(inputs.settings), sort_keys=True),
        },
        "scenario": raw,
        "slos": objectives,
        "slosName": f"ConfigMap {inputs.configmap}: {SLOS_KEY}",
        "change": change.to_json(),
        "seeds": inputs.seeds,
        "budget": budget,
    }
