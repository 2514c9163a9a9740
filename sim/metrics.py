"""Recording simulated requests and turning them into results.

Every finished request is one row in columnar arrays (traffic, service, backend, status, start,
end, tries): cheap to append in the hot loop, and aggregated with numpy at the end into
per-service, per-backend and per-traffic statistics, time series and SLO verdicts. Every
request gets exactly one terminal row; requests still in flight when the run ends are counted
separately.
"""

from __future__ import annotations

from array import array
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from sim.scenario import Scenario, Slo

OUTCOMES = {
    403: "denied",
    404: "not-found",
    429: "rate-limited",
    500: "error",
    502: "unreachable",
    503: "unavailable",
    504: "timeout",
}
PERCENTILES = (50, 90, 99)


@dataclass(frozen=True)
class RunFacts:
    """What a run knows besides its requests: how many it started, the config it ran, the
    circuit breakers' openings per service, the events applied and the config's errors. The
    simulator fills it from its engines, the local mesh from its proxies."""

    started: int
    config_version: str
    breakers: dict[str, dict[str, int]]  # service -> {"opens", "endpointsOpenAtEnd"}
    events: list[dict[str, Any]] = field(default_factory=list)
    config_errors: list[Any] = field(default_factory=list)


def outcome_name(status: int) -> str:
    if 200 <= status < 400:
        return "ok"
    return OUTCOMES.get(status, f"http-{status}")


class Recorder:
    def __init__(self, scenario: Scenario) -> None:
        self.scenario = scenario
        self.names: dict[str | None, int] = {None: 0}
        self.traffic = array("H")
        self.service = array("H")
        self.backend = array("H")
        self.status = array("H")
        self.start = array("d")
        self.end = array("d")
        self.tries = array("H")
        self.count = 0

    def _id(self, name: str | None) -> int:
        index = self.names.get(name)
        if index is None:
            index = self.names[name] = len(self.names)
        return index

    def record(
        self,
        traffic: int,
        service: str | None,
        backend: str | None,
        status: int,
        start: float,
        end: float,
        tries: int,
    ) -> None:
        names = self.names
        self.traffic.append(traffic)
        self.service.append(names[service] if service in names else self._id(service))
        self.backend.append(names[backend] if backend in names else self._id(backend))
        self.status.append(status)
        self.start.append(start)
        self.end.append(end)
        self.tries.append(tries)
        self.count += 1

    # -- aggregation ----------------------------------------------------------------------------

    def results(self, facts: RunFacts) -> dict[str, Any]:
        scenario = self.scenario
        cols = _Columns(self)
        everything = np.ones(cols.n, dtype=bool)
        services: dict[str, Any] = {}
        for name, index in sorted((k, v) for k, v in self.names.items() if k is not None):
            mask = cols.service == index
            if not mask.any():
                continue
            stats = _stats(cols, mask)
            backends = {}
            routed = mask & (cols.backend != 0)
            total_routed = int(routed.sum())
            for bname, bindex in sorted((k, v) for k, v in self.names.items() if k is not None):
                bmask = routed & (cols.backend == bindex)
                if bmask.any():
                    b = _stats(cols, bmask)
                    b["share"] = _r(int(bmask.sum()) / total_routed)
                    backends[bname] = b
            stats["backends"] = backends
            services[name] = stats
        traffic = {t.name: _stats(cols, cols.traffic == i) for i, t in enumerate(scenario.traffic)}
        breakers = facts.breakers
        for name, stats in services.items():
            stats["circuitOpens"] = breakers.get(name, {}).get("opens", 0)
            for bname, b in stats["backends"].items():
                b["circuitOpens"] = breakers.get(bname, {}).get("opens", 0)
        results: dict[str, Any] = {
            "scenario": scenario.name,
            "description": scenario.description,
            "seed": scenario.seed,
            "duration": scenario.duration,
            "configVersion": facts.config_version,
            "requests": {
                "started": facts.started,
                "finished": cols.n,
                "inFlightAtEnd": facts.started - cols.n,
            },
            "overall": _stats(cols, everything),
            "services": services,
            "traffic": traffic,
            "circuitBreakers": dict(sorted(breakers.items())),
            "timeseries": _timeseries(cols, self.names, scenario.duration),
            "events": facts.events,
            "configErrors": facts.config_errors,
        }
        results["slos"] = [_slo(cols, self.names, s, scenario) for s in scenario.slos]
        return results


class _Columns:
    def __init__(self, rec: Recorder) -> None:
        self.n = rec.count
        self.traffic = (
            np.frombuffer(rec.traffic, dtype=np.uint16) if rec.count else np.zeros(0, np.uint16)
        )
        self.service = (
            np.frombuffer(rec.service, dtype=np.uint16) if rec.count else np.zeros(0, np.uint16)
        )
        self.backend = (
            np.frombuffer(rec.backend, dtype=np.uint16) if rec.count else np.zeros(0, np.uint16)
        )
        self.status = (
            np.frombuffer(rec.status, dtype=np.uint16) if rec.count else np.zeros(0, np.uint16)
        )
        self.start = np.frombuffer(rec.start, dtype=np.float64) if rec.count else np.zeros(0)
        end = np.frombuffer(rec.end, dtype=np.float64) if rec.count else np.zeros(0)
        self.latency = end - self.start
        self.tries = (
            np.frombuffer(rec.tries, dtype=np.uint16) if rec.count else np.zeros(0, np.uint16)
        )
        self.ok = (self.status >= 200) & (self.status < 400)


def _r(value: float) -> float:
    return round(float(value), 6)


def _latency(values: np.ndarray) -> dict[str, float | None]:
    if values.size == 0:
        empty: dict[str, float | None] = {f"p{p}": None for p in PERCENTILES}
        return empty | {"mean": None, "max": None}
    qs = np.percentile(values, PERCENTILES)
    out: dict[str, float | None] = {f"p{p}": _r(q) for p, q in zip(PERCENTILES, qs, strict=True)}
    out["mean"] = _r(values.mean())
    out["max"] = _r(values.max())
    return out


def _stats(cols: _Columns, mask: np.ndarray) -> dict[str, Any]:
    total = int(mask.sum())
    ok = int((mask & cols.ok).sum())
    statuses = cols.status[mask]
    outcomes: dict[str, int] = {}
    for status, count in zip(*np.unique(statuses, return_counts=True), strict=True):
        name = outcome_name(int(status))
        outcomes[name] = outcomes.get(name, 0) + int(count)
    tries = cols.tries[mask].astype(np.int64)
    return {
        "requests": total,
        "succeeded": ok,
        "successRate": _r(ok / total) if total else None,
        "latency": _latency(cols.latency[mask & cols.ok]),
        "outcomes": dict(sorted(outcomes.items())),
        "denied": outcomes.get("denied", 0),
        "rateLimited": outcomes.get("rate-limited", 0),
        "retries": int(np.clip(tries - 1, 0, None).sum()),
    }


def bucket_width(duration: float) -> float:
    for width in (0.1, 0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300, 600):
        if duration / width <= 120:
            return float(width)
    return duration / 120


def _timeseries(cols: _Columns, names: dict[str | None, int], duration: float) -> dict[str, Any]:
    """Per-bucket counts, success rates, p50/p99 and backend shares for every service, grouped
    with bincount and one sort (linear in the number of requests)."""
    width = bucket_width(duration)
    count = max(1, int(np.ceil(duration / width)))
    out: dict[str, Any] = {
        "bucket": width,
        "t": [_r(i * width) for i in range(count)],
        "services": {},
    }
    size = len(names)
    bucket = np.minimum((cols.start / width).astype(np.int64), count - 1)
    key = cols.service.astype(np.int64) * count + bucket
    requests = np.bincount(key, minlength=size * count).reshape(size, count)
    ok = np.bincount(key, weights=cols.ok, minlength=size * count).reshape(size, count)
    ok_rows = np.nonzero(cols.ok)[0]
    ok_keys = key[ok_rows]
    order = np.lexsort((cols.latency[ok_rows], ok_keys))
    sorted_keys = ok_keys[order]
    sorted_lat = cols.latency[ok_rows][order]
    groups = np.arange(size * count)
    starts = np.searchsorted(sorted_keys, groups, side="left")
    ends = np.searchsorted(sorted_keys, groups, side="right")
    pair = (cols.service.astype(np.int64) * size + cols.backend) * count + bucket
    by_backend = np.bincount(pair, minlength=size * size * count).reshape(size, size, count)
    for name, index in sorted((k, v) for k, v in names.items() if k is not None):
        if not requests[index].any():
            continue
        series: dict[str, Any] = {
            "requests": [int(n) for n in requests[index]],
            "successRate": [],
            "p50": [],
            "p99": [],
            "shares": {},
        }
        for b in range(count):
            n = int(requests[index, b])
            series["successRate"].append(_r(ok[index, b] / n) if n else None)
            g = index * count + b
            lat = sorted_lat[starts[g] : ends[g]]
            if lat.size:
                p50, p99 = np.percentile(lat, (50, 99))
                series["p50"].append(_r(p50))
                series["p99"].append(_r(p99))
            else:
                series["p50"].append(None)
                series["p99"].append(None)
        routed = by_backend[index, 1:, :].sum(axis=0)
        for bname, bindex in sorted((k, v) for k, v in names.items() if k is not None):
            counts = by_backend[index, bindex]
            if not counts.any():
                continue
            series["shares"][bname] = [
                _r(c / r) if r else None for c, r in zip(counts, routed, strict=True)
            ]
        out["services"][name] = series
    return out


def _slo(
    cols: _Columns, names: dict[str | None, int], slo: Slo, scenario: Scenario
) -> dict[str, Any]:
    mask = cols.start >= slo.start
    if slo.end is not None:
        mask &= cols.start < slo.end
    if slo.service is not None:
        mask &= cols.service == names.get(slo.service, -1)
    if slo.traffic is not None:
        index = [t.name for t in scenario.traffic].index(slo.traffic)
        mask &= cols.traffic == index
    total = int(mask.sum())
    checks = []
    if slo.success_rate is not None:
        value = float((mask & cols.ok).sum() / total) if total else 0.0
        checks.append(
            {
                "what": "successRate",
                "objective": f">= {slo.success_rate:g}",
                "measured": _r(value),
                "ok": total > 0 and value >= slo.success_rate,
            }
        )
    for percentile, limit in slo.latency:
        lat = cols.latency[mask & cols.ok]
        value = float(np.percentile(lat, percentile)) if lat.size else float("inf")
        checks.append(
            {
                "what": f"p{percentile:g} latency",
                "objective": f"<= {limit:g}s",
                "measured": _r(value) if lat.size else None,
                "ok": value <= limit,
            }
        )
    if slo.share is not None:
        backend, expected, tolerance = slo.share
        routed = mask & (cols.backend != 0)
        n = int(routed.sum())
        value = float((routed & (cols.backend == names.get(backend, -1))).sum() / n) if n else 0.0
        checks.append(
            {
                "what": f"share of {backend}",
                "objective": f"{expected:g} +/- {tolerance:g}",
                "measured": _r(value),
                "ok": n > 0 and abs(value - expected) <= tolerance,
            }
        )
    return {
        "name": slo.name,
        "service": slo.service,
        "traffic": slo.traffic,
        "window": [slo.start, slo.end],
        "requests": total,
        "checks": checks,
        "ok": all(c["ok"] for c in checks),
    }
