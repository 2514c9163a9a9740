"""The side-by-side verdict: what is judged, against what, and when there is too little data."""

from __future__ import annotations

from typing import Any

from mesh.local.compare import MIN_REQUESTS, Tolerance, compare, side_by_side


def stats(requests: int, success: float, p50: float, p99: float, **extra: Any) -> dict[str, Any]:
    return {
        "requests": requests,
        "succeeded": int(requests * success),
        "successRate": success,
        "latency": {"p50": p50, "p99": p99},
        "retries": 0,
        "rateLimited": 0,
        "circuitOpens": 0,
        "backends": {},
        **extra,
    }


def results(services: dict[str, dict[str, Any]], ok: bool = True) -> dict[str, Any]:
    slo = {
        "name": "s",
        "ok": ok,
        "checks": [{"what": "successRate", "objective": ">= 0.9", "measured": 1.0, "ok": ok}],
    }
    return {"services": services, "slos": [slo]}


def test_within_and_outside_the_tolerance() -> None:
    real = results({"a/b": stats(5000, 0.99, 0.020, 0.100)})
    close = results({"a/b": stats(5000, 0.98, 0.024, 0.080)})  # -1 pt, +20%, -20%
    far = results({"a/b": stats(5000, 0.96, 0.026, 0.100)})  # -3 pt, +30%
    assert compare(close, real, Tolerance())["withinTolerance"]
    verdict = compare(far, real, Tolerance())
    assert not verdict["withinTolerance"] and verdict["missed"] == 2
    checks = verdict["rows"][0]["checks"]
    assert checks["success"]["ok"] is False and checks["p50"]["ok"] is False
    assert checks["p99"]["ok"] is True
    assert compare(far, real, Tolerance(success=0.05, p50=0.35))["withinTolerance"]


def test_too_few_requests_are_shown_not_judged() -> None:
    few = MIN_REQUESTS["p99"] - 1
    real = results({"a/b": stats(few, 1.0, 0.020, 0.100)})
    sim = results({"a/b": stats(few, 1.0, 0.020, 0.300)})  # p99 3x off
    verdict = compare(sim, real, Tolerance())
    assert verdict["rows"][0]["checks"]["p99"]["ok"] is None
    assert verdict["withinTolerance"]
    assert "(+200.0%)" in side_by_side(verdict, sim, real)


def test_a_row_in_one_run_only_is_a_miss() -> None:
    real = results({"a/b": stats(1000, 1.0, 0.02, 0.1), "a/c": stats(1000, 1.0, 0.02, 0.1)})
    sim = results({"a/b": stats(1000, 1.0, 0.02, 0.1)})
    verdict = compare(sim, real, Tolerance())
    assert not verdict["withinTolerance"]
    assert [r["row"] for r in verdict["rows"]] == ["a/b", "a/c"]


def test_split_backends_get_rows_and_slo_verdicts_are_paired() -> None:
    backends = {
        "a/v1": stats(900, 1.0, 0.02, 0.1, share=0.9),
        "a/v2": stats(100, 1.0, 0.02, 0.1, share=0.1),
    }
    sim = results({"a/b": stats(1000, 1.0, 0.02, 0.1, backends=backends)}, ok=True)
    real = results({"a/b": stats(1000, 1.0, 0.02, 0.1, backends=backends)}, ok=False)
    verdict = compare(sim, real, Tolerance())
    assert [r["row"] for r in verdict["rows"]] == ["a/b", "a/b -> a/v1", "a/b -> a/v2"]
    assert verdict["slosOk"] == {"simulated": True, "real": False}
    assert verdict["slos"][0]["agree"] is False
    assert "(verdicts differ)" in side_by_side(verdict, sim, real)
