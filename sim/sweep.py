"""Sweeps: a grid of scenario variants, each over several seeds, with confidence intervals.

``simmesh sim DIR --sweep PATH=V1,V2 [--sweep PATH2=...] --seeds N`` runs every point of the
grid (the product of the values, the first ``--sweep`` varying slowest) with the seeds
``seed, seed + 1, ..., seed + N - 1`` from the scenario's seed. The work unit is one (point,
seed): it runs on local cores or a Dask cluster (sim/runs.py) and sends back a small summary
(the overall requests, success rate, p50, p99, retries and each SLO's verdict). Each point is
then the mean of its seeds with a 95% Student t interval (sim/stats.py) for the success rate,
p50, p99 and the number of SLOs passed, and each SLO's pass count.

The summaries are put together in the grid's order whatever order they finished in, so the
same grid and seeds give the same sweep.json serially, in parallel and on a cluster.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sim.runs import Done, Source, Unit, run_units
from sim.scenario import ScenarioError
from sim.stats import interval


@dataclass(frozen=True)
class Axis:
    path: str
    values: tuple[str, ...]

    @staticmethod
    def parse(text: str) -> Axis:
        """``PATH=V1,V2,...`` (values as ``--set`` reads them: YAML)."""
        path, sep, values = text.partition("=")
        items = tuple(values.split(",")) if values else ()
        if not sep or not path.strip() or not items or any(not v.strip() for v in items):
            raise ScenarioError(f"--sweep {text[:80]!r}: expected PATH=V1,V2,...")
        if len(set(items)) != len(items):
            raise ScenarioError(f"--sweep {path}: a value given twice")
        return Axis(path, items)


def grid(axes: Sequence[Axis]) -> list[tuple[str, ...]]:
    """Every point: one value per axis, the first axis varying slowest."""
    if len({a.path for a in axes}) != len(axes):
        raise ScenarioError("--sweep: the same path twice")
    return list(itertools.product(*(a.values for a in axes)))


def point_sets(axes: Sequence[Axis], point: Sequence[str]) -> tuple[str, ...]:
    return tuple(f"{a.path}={v}" for a, v in zip(axes, point, strict=True))


@dataclass(frozen=True)
class Sweep:
    scenario: str
    axes: tuple[Axis, ...]
    seeds: tuple[int, ...]
    points: tuple[dict[str, Any], ...]  # see aggregate()

    @property
    def ok(self) -> bool:
        """Every SLO passed in every run of every point."""
        return all(s["passes"] == s["runs"] for p in self.points for s in p["slos"])

    def to_json(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario,
            "axes": [{"path": a.path, "values": list(a.values)} for a in self.axes],
            "seeds": list(self.seeds),
            "interval": "95% Student t interval across seeds",
            "points": list(self.points),
        }


def sweep(
    source: Source,
    axes: Sequence[Axis],
    seeds: Sequence[int],
    *,
    workers: int = 1,
    scheduler: str | None = None,
    done: Done | None = None,
) -> Sweep:
    """Run every (point, seed) and aggregate each point over its seeds."""
    points = grid(axes)
    units = [
        Unit((*point_sets(axes, point), f"seed={seed}"), summary=True)
        for point in points
        for seed in seeds
    ]
    results = run_units(source, units, workers=workers, scheduler=scheduler, done=done)
    runs = [r for r in results if r is not None]
    assert len(runs) == len(units)  # no deadline: every unit ran
    n = len(seeds)
    return Sweep(
        scenario=source.name,
        axes=tuple(axes),
        seeds=tuple(seeds),
        points=tuple(
            aggregate(axes, point, runs[i * n : (i + 1) * n]) for i, point in enumerate(points)
        ),
    )


def aggregate(
    axes: Sequence[Axis], point: Sequence[str], runs: list[dict[str, Any]]
) -> dict[str, Any]:
    """One point: its runs, and means with intervals across them."""
    out: dict[str, Any] = {
        "values": {a.path: v for a, v in zip(axes, point, strict=True)},
        "runs": runs,
    }
    for key in ("requests", "successRate", "p50", "p99", "retries"):
        out[key] = _interval([r[key] for r in runs if r[key] is not None])
    out["slosPassed"] = _interval([sum(s["ok"] for s in r["slos"]) for r in runs])
    out["slos"] = [
        {"name": slo["name"], "passes": sum(r["slos"][i]["ok"] for r in runs), "runs": len(runs)}
        for i, slo in enumerate(runs[0]["slos"] if runs else [])
    ]
    return out


def _interval(values: list[float]) -> dict[str, Any] | None:
    found = interval(values)
    if found is None:
        return None
    return {
        "n": found.n,
        "mean": _r(found.mean),
        "low": _r(found.low),
        "high": _r(found.high),
    }


def _r(value: float | None) -> float | None:
    return None if value is None else round(value, 6) + 0.0
