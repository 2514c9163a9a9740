"""The simulator against queueing theory: one pod behind the mesh is a textbook queue.

With no proxy cost and no network delay (``profile: ideal``), a workload with
``capacity: c``, Poisson arrivals and a latency distribution is an M/G/c FIFO queue, and
closed-loop users with think time are the delay station of a closed network. Each test
compares the simulated mean (and where theory gives it, quantiles) with the formula.

Tolerances: the runs are deterministic (fixed seeds), so these tests never flake; the
tolerances are what a correct model meets for runs of this length (a few standard errors of
the estimate, which grow with utilisation: 3% at rho = 0.5, 5% at rho = 0.8) and what a
wrong model (a missing queue, a wrong number of servers or users) misses by far more.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import yaml

from sim.model import run_scenario
from sim.scenario import load_scenario


def scenario(
    tmp: Path,
    *,
    latency: Any,
    capacity: int | None,
    traffic: dict[str, Any],
    duration: float,
    seed: int = 1,
) -> dict[str, Any]:
    workload: dict[str, Any] = {"replicas": 1, "latency": latency}
    if capacity is not None:
        workload["capacity"] = capacity
    body = {
        "duration": duration,
        "seed": seed,
        "profile": "ideal",
        "workloads": {"q/server": workload, "q/client": {"replicas": 1}},
        "traffic": [{"name": "load", "from": "q/client", "to": "http://server.q.mesh/", **traffic}],
    }
    (tmp / "scenario.yaml").write_text(yaml.safe_dump(body))
    return run_scenario(load_scenario(tmp))


def erlang_c(c: int, load: float) -> float:
    """Probability that an arrival waits in an M/M/c queue with offered load a = lambda/mu."""
    top = load**c / math.factorial(c) * c / (c - load)
    return top / (sum(load**k / math.factorial(k) for k in range(c)) + top)


def test_mm1_mean_and_quantiles(tmp_path: Path) -> None:
    lam, mu = 500.0, 1000.0  # rho = 0.5
    results = scenario(
        tmp_path,
        latency={"dist": "exponential", "mean": 1 / mu},
        capacity=1,
        traffic={"rate": lam},
        duration=200,
    )
    latency = results["overall"]["latency"]
    # The sojourn time of M/M/1 FIFO is exponential with rate mu - lambda.
    assert latency["mean"] == pytest.approx(1 / (mu - lam), rel=0.03)
    assert latency["p50"] == pytest.approx(math.log(2) / (mu - lam), rel=0.03)
    assert latency["p99"] == pytest.approx(math.log(100) / (mu - lam), rel=0.05)


def test_mm1_at_high_utilisation(tmp_path: Path) -> None:
    lam, mu = 800.0, 1000.0  # rho = 0.8: the mean is 5x the service time
    results = scenario(
        tmp_path,
        latency={"dist": "exponential", "mean": 1 / mu},
        capacity=1,
        traffic={"rate": lam},
        duration=300,
    )
    assert results["overall"]["latency"]["mean"] == pytest.approx(1 / (mu - lam), rel=0.05)


@pytest.mark.parametrize(("c", "lam", "duration"), [(4, 3000.0, 60.0), (8, 6000.0, 20.0)])
def test_mmc_erlang_c(tmp_path: Path, c: int, lam: float, duration: float) -> None:
    mu = 1000.0
    results = scenario(
        tmp_path,
        latency={"dist": "exponential", "mean": 1 / mu},
        capacity=c,
        traffic={"rate": lam},
        duration=duration,
    )
    wait = erlang_c(c, lam / mu) / (c * mu - lam)
    assert results["overall"]["latency"]["mean"] == pytest.approx(wait + 1 / mu, rel=0.04)


def test_md1_pollaczek_khinchine(tmp_path: Path) -> None:
    service, lam = 0.001, 700.0
    rho = lam * service
    results = scenario(tmp_path, latency=service, capacity=1, traffic={"rate": lam}, duration=150)
    expected = service + rho * service / (2 * (1 - rho))
    assert results["overall"]["latency"]["mean"] == pytest.approx(expected, rel=0.03)
    assert results["overall"]["latency"]["p50"] >= service  # never faster than the service


def mva(users: int, service: float, think: float) -> tuple[float, float]:
    """Exact mean value analysis of one FIFO exponential server and a delay (think) station:
    (throughput, mean response time) with ``users`` customers."""
    queue = 0.0
    throughput = response = 0.0
    for n in range(1, users + 1):
        response = service * (1 + queue)
        throughput = n / (response + think)
        queue = throughput * response
    return throughput, response


@pytest.mark.parametrize("users", [5, 10, 30])
def test_closed_loop_users_follow_mva_and_the_response_time_law(tmp_path: Path, users: int) -> None:
    service, think, duration = 0.010, 0.100, 200.0
    results = scenario(
        tmp_path,
        latency={"dist": "exponential", "mean": service},
        capacity=1,
        traffic={"users": users, "thinkTime": think},
        duration=duration,
    )
    throughput = results["overall"]["requests"] / duration
    response = results["overall"]["latency"]["mean"]
    expected_x, expected_r = mva(users, service, think)
    # Interactive response time law X = N / (R + Z): holds for any closed system.
    assert throughput == pytest.approx(users / (response + think), rel=0.02)
    # And the values themselves are the product-form network's.
    assert throughput == pytest.approx(expected_x, rel=0.03)
    assert response == pytest.approx(expected_r, rel=0.06)


def test_closed_loop_without_queueing_is_users_over_cycle_time(tmp_path: Path) -> None:
    # The example: 10 users, 0.1 s think time, a 10 ms server with room for all.
    results = scenario(
        tmp_path,
        latency=0.010,
        capacity=None,
        traffic={"users": 10, "thinkTime": 0.1},
        duration=300,
    )
    throughput = results["overall"]["requests"] / 300
    assert throughput == pytest.approx(10 / 0.110, rel=0.02)
