"""What-if: a scenario as it is and with a proposed change, over several seeds, compared.

:func:`whatif` is the library function behind ``simmesh whatif`` and the admission gate
(mesh/gate): it runs the scenario before and after the change (sim/change.py) with the same
seeds, ``seed, seed + 1, ...`` from the scenario's seed, so ``simmesh sim DIR --seed S``
reproduces any one run. Each seed's pair shares its random numbers as far as the change lets
it, and the comparison is paired: for every service, backend and traffic source, the success
rate, p50, p99 and backend shares before and after (means across seeds) and the difference
with its 95% Student t interval over the per-seed differences (sim/stats.py).

SLO verdicts across seeds follow a majority rule: an SLO *holds* when it passes in more than
half of the seeds (3 of 5; 2 of 4 is not enough), and the change *breaks* it when it held
before and does not hold after. A single unlucky seed neither breaks an SLO nor makes a broken
one look fine, and the counts are shown. The verdict is BREAKS when the change breaks at least
one SLO, SAFE when it breaks none.

With a wall-time budget, runs still going when it is spent stop, and the verdict is taken from
the runs that finished when the majority is already certain for every SLO (or one SLO is
certainly broken); otherwise it is UNDECIDED: the what-if could not decide in time.
"""

from __future__ import annotations

import enum
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sim.change import Change
from sim.runs import Done, Source, Unit, run_units
from sim.scenario import Scenario
from sim.stats import Interval, interval, paired

RULE = "an SLO holds when it passes in more than half of the seeds"
INTERVAL = "95% Student t interval of the per-seed paired differences (after - before)"


class Verdict(enum.Enum):
    SAFE = "safe"  # no SLO that held before breaks
    BREAKS = "breaks"  # the change breaks at least one SLO that held before
    UNDECIDED = "undecided"  # the budget ran out before the runs could tell


@dataclass(frozen=True)
class SloOutcome:
    """One SLO over the seeds: how many runs passed it, before and after."""

    name: str
    seeds: int
    passes_before: int
    runs_before: int
    passes_after: int
    runs_after: int
    checks: tuple[dict[str, Any], ...]  # what, objective, mean measured before and after

    @property
    def held(self) -> bool | None:
        return holds(self.passes_before, self.runs_before, self.seeds)

    @property
    def holds(self) -> bool | None:
        return holds(self.passes_after, self.runs_after, self.seeds)

    @property
    def broken(self) -> bool | None:
        """Held before and not after; None while the runs cannot tell yet."""
        if self.held is False or self.holds is True:
            return False
        if self.held is True and self.holds is False:
            return True
        return None

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "before": {"passes": self.passes_before, "runs": self.runs_before},
            "after": {"passes": self.passes_after, "runs": self.runs_after},
            "held": self.held,
            "holds": self.holds,
            "broken": self.broken,
            "checks": list(self.checks),
        }


def holds(passes: int, runs: int, seeds: int) -> bool | None:
    """The majority rule: True once more than half of ``seeds`` passed, False once that can
    no longer happen, None while the runs still to come could decide it."""
    if 2 * passes > seeds:
        return True
    if 2 * (passes + seeds - runs) <= seeds:
        return False
    return None


@dataclass(frozen=True)
class WhatIf:
    scenario: str
    seeds: tuple[int, ...]
    actions: tuple[dict[str, str], ...]  # what the change does: add, replace, keep, delete
    before: tuple[dict[str, Any] | None, ...]  # each seed's results (None: not run in time)
    after: tuple[dict[str, Any] | None, ...]
    slos: tuple[SloOutcome, ...]
    comparison: dict[str, Any]
    warnings: tuple[str, ...]  # objects the mesh rejects after the change, not before
    budget: float | None = None

    @property
    def verdict(self) -> Verdict:
        broken = [s.broken for s in self.slos]
        if any(b is True for b in broken):
            return Verdict.BREAKS
        if all(b is False for b in broken):
            return Verdict.SAFE
        return Verdict.UNDECIDED

    @property
    def broken(self) -> list[SloOutcome]:
        return [s for s in self.slos if s.broken]

    @property
    def complete(self) -> bool:
        return all(r is not None for r in (*self.before, *self.after))

    def to_json(self) -> dict[str, Any]:
        """results.json: every run, the comparison and the verdict (the same inputs give the
        same mapping, whatever ran the units)."""
        return {
            "scenario": self.scenario,
            "seeds": list(self.seeds),
            "change": list(self.actions),
            "verdict": self.verdict.value,
            "broken": [s.name for s in self.broken],
            "rule": RULE,
            "interval": INTERVAL,
            "budgetSeconds": self.budget,
            "complete": self.complete,
            "slos": [s.to_json() for s in self.slos],
            "comparison": self.comparison,
            "warnings": list(self.warnings),
            "runs": {"before": list(self.before), "after": list(self.after)},
        }


def whatif(
    base: Scenario,
    change: Change,
    *,
    seeds: int = 5,
    budget_seconds: float | None = None,
    workers: int = 1,
    scheduler: str | None = None,
    done: Done | None = None,
) -> WhatIf:
    """Simulate ``base`` and ``base`` with ``change`` over ``seeds`` seeds and compare.

    Raises ChangeError (sim/change.py) before anything runs when the change cannot be applied,
    and RunError (sim/runs.py) when the scheduler cannot be reached. With ``budget_seconds``
    it returns when the budget is spent, possibly UNDECIDED."""
    if seeds < 1:
        raise ValueError(f"whatif: seeds must be at least 1, got {seeds}")
    deadline = None if budget_seconds is None else time.time() + budget_seconds
    source = Source.of(base)
    with tempfile.TemporaryDirectory(prefix="simmesh-whatif-") as tmp:
        source.load(Path(tmp), change=change)  # a change that cannot apply fails here
    numbers = tuple(base.seed + i for i in range(seeds))
    units = []
    for seed in numbers:  # pairs side by side: a budget cut leaves whole pairs behind
        units += [Unit((f"seed={seed}",), cpu=True), Unit((f"seed={seed}",), change, cpu=True)]
    results = run_units(
        source, units, workers=workers, scheduler=scheduler, deadline=deadline, done=done
    )
    before, after = tuple(results[0::2]), tuple(results[1::2])
    return WhatIf(
        scenario=base.name,
        seeds=numbers,
        actions=tuple(change.actions(base.docs)),
        before=before,
        after=after,
        slos=tuple(slo_outcomes([s.name for s in base.slos], before, after, len(numbers))),
        comparison=compare(before, after),
        warnings=tuple(new_errors(before, after)),
        budget=budget_seconds,
    )


# ---------------------------------------------------------------------------------------------
# SLOs


def slo_outcomes(
    names: Sequence[str],
    before: Sequence[dict[str, Any] | None],
    after: Sequence[dict[str, Any] | None],
    seeds: int,
) -> list[SloOutcome]:
    """The scenario's SLOs (``names``) over the runs that finished."""
    done_before = [r for r in before if r is not None]
    done_after = [r for r in after if r is not None]
    template = next(iter(done_before or done_after), None)
    out = []
    for i, name in enumerate(names):
        checks = []
        for j, check in enumerate(template["slos"][i]["checks"] if template else []):
            checks.append(
                {
                    "what": check["what"],
                    "objective": check["objective"],
                    "before": _measured(done_before, i, j),
                    "after": _measured(done_after, i, j),
                }
            )
        out.append(
            SloOutcome(
                name=name,
                seeds=seeds,
                passes_before=sum(r["slos"][i]["ok"] for r in done_before),
                runs_before=len(done_before),
                passes_after=sum(r["slos"][i]["ok"] for r in done_after),
                runs_after=len(done_after),
                checks=tuple(checks),
            )
        )
    return out


def _measured(runs: list[dict[str, Any]], slo: int, check: int) -> dict[str, Any] | None:
    values = [r["slos"][slo]["checks"][check]["measured"] for r in runs]
    return _interval([v for v in values if v is not None])


# ---------------------------------------------------------------------------------------------
# Metrics


def compare(
    before: Sequence[dict[str, Any] | None], after: Sequence[dict[str, Any] | None]
) -> dict[str, Any]:
    """Per service (with its backends' shares), per traffic source and overall: success
    rate, p50 and p99 before and after, and the paired difference, over the seeds whose
    both runs finished."""
    pairs = [(b, a) for b, a in zip(before, after, strict=True) if b is not None and a is not None]
    bs, as_ = [b for b, _ in pairs], [a for _, a in pairs]
    services = sorted({s for r in bs + as_ for s in r["services"]})
    out: dict[str, Any] = {"seeds": [b["seed"] for b in bs], "services": {}, "traffic": {}}
    for name in services:
        entry = _metrics(
            [r["services"].get(name) for r in bs], [r["services"].get(name) for r in as_]
        )
        backends = sorted({k for r in bs + as_ for k in _backends(r, name)})
        entry["backends"] = {
            b: {"share": _metric(_shares(bs, name, b), _shares(as_, name, b))} for b in backends
        }
        out["services"][name] = entry
    for name in sorted({t for r in bs + as_ for t in r["traffic"]}):
        out["traffic"][name] = _metrics(
            [r["traffic"].get(name) for r in bs], [r["traffic"].get(name) for r in as_]
        )
    out["overall"] = _metrics([r["overall"] for r in bs], [r["overall"] for r in as_])
    if any("proxyCpu" in r for r in bs + as_):
        out["proxyCpu"] = _metric(
            [_cpu(r) for r in bs], [_cpu(r) for r in as_]
        )  # CPU seconds of all proxies per 1,000 requests
    return out


def _cpu(results: dict[str, Any]) -> float | None:
    cpu = results.get("proxyCpu")
    return None if cpu is None else cpu["perThousandRequests"]


METRICS: dict[str, Callable[[dict[str, Any]], float | None]] = {
    "successRate": lambda s: s["successRate"],
    "p50": lambda s: s["latency"]["p50"],
    "p99": lambda s: s["latency"]["p99"],
}


def _metrics(
    before: list[dict[str, Any] | None], after: list[dict[str, Any] | None]
) -> dict[str, Any]:
    out = {}
    for key, get in METRICS.items():
        out[key] = _metric(
            [None if s is None else get(s) for s in before],
            [None if s is None else get(s) for s in after],
        )
    return out


def _backends(results: dict[str, Any], service: str) -> list[str]:
    entry = results["services"].get(service)
    return list(entry["backends"]) if entry is not None else []


def _shares(runs: list[dict[str, Any]], service: str, backend: str) -> list[float | None]:
    """Each run's share of ``backend`` in ``service`` (0 when it got nothing; None when the
    service got no request at all)."""
    out: list[float | None] = []
    for r in runs:
        entry = r["services"].get(service)
        if entry is None or not entry["backends"]:
            out.append(None)
        else:
            out.append(entry["backends"].get(backend, {}).get("share", 0.0))
    return out


def _metric(before: list[float | None], after: list[float | None]) -> dict[str, Any]:
    return {
        "before": _interval([v for v in before if v is not None]),
        "after": _interval([v for v in after if v is not None]),
        "difference": _as_json(paired(before, after)),
    }


def _interval(values: list[float]) -> dict[str, Any] | None:
    return _as_json(interval(values))


def _as_json(value: Interval | None) -> dict[str, Any] | None:
    if value is None:
        return None
    return {"n": value.n, "mean": _r(value.mean), "low": _r(value.low), "high": _r(value.high)}


def _r(value: float | None) -> float | None:
    return None if value is None else round(value, 6) + 0.0  # no -0.0


def new_errors(
    before: Sequence[dict[str, Any] | None], after: Sequence[dict[str, Any] | None]
) -> list[str]:
    """Objects the mesh rejects after the change but not before (the run leaves them out)."""
    b = next((r for r in before if r is not None), None)
    a = next((r for r in after if r is not None), None)
    if a is None:
        return []
    old = [] if b is None else b["configErrors"]
    return [
        f"{e['kind']} {e['namespace']}/{e['name']}: {e['field']}: {e['message']}"
        if e.get("field")
        else f"{e['kind']} {e['namespace']}/{e['name']}: {e['message']}"
        for e in a["configErrors"]
        if e not in old
    ]
