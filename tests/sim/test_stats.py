"""The intervals of what-ifs and sweeps (sim/stats.py) against published numbers."""

from __future__ import annotations

import pytest

from sim.stats import interval, paired, t_cdf, t_quantile
from sim.whatif import holds

# Student t quantiles from the standard tables (e.g. NIST/SEMATECH e-Handbook, table 1.3.6.7.2)
TABLE = [
    (0.975, 1, 12.706205),
    (0.975, 2, 4.302653),
    (0.975, 4, 2.776445),
    (0.975, 9, 2.262157),
    (0.975, 30, 2.042272),
    (0.975, 120, 1.979930),
    (0.995, 4, 4.604095),
    (0.95, 10, 1.812461),
    (0.90, 5, 1.475884),
]


@pytest.mark.parametrize(("p", "df", "expected"), TABLE)
def test_t_quantiles_match_the_tables(p: float, df: int, expected: float) -> None:
    assert t_quantile(p, df) == pytest.approx(expected, abs=1e-6)
    assert t_quantile(1 - p, df) == pytest.approx(-expected, abs=1e-6)
    assert t_cdf(expected, df) == pytest.approx(p, abs=1e-7)


def test_interval_of_one_to_five() -> None:
    """mean 3, s = sqrt(2.5), s/sqrt(5) = 0.707107, t(0.975, 4) = 2.776445: 3 +/- 1.963243."""
    found = interval([1, 2, 3, 4, 5])
    assert found is not None
    assert (found.n, found.mean) == (5, 3.0)
    assert found.low == pytest.approx(1.036757, abs=1e-6)
    assert found.high == pytest.approx(4.963243, abs=1e-6)


def test_paired_interval_of_success_rates() -> None:
    """Differences -0.01, -0.005, -0.02: mean -0.011667, s = 0.0076376, t(0.975, 2) = 4.302653,
    half width 4.302653 * 0.0076376 / sqrt(3) = 0.018973."""
    found = paired([0.99, 0.98, 0.97], [0.98, 0.975, 0.95])
    assert found is not None
    assert found.mean == pytest.approx(-0.011667, abs=1e-6)
    assert found.low == pytest.approx(-0.030640, abs=1e-6)
    assert found.high == pytest.approx(0.007306, abs=1e-6)


def test_unmeasured_seeds_are_left_out_and_one_seed_has_no_interval() -> None:
    found = paired([0.5, None, 0.7], [0.6, 0.9, None])
    assert found is not None and found.n == 1
    assert found.mean == pytest.approx(0.1)
    assert (found.low, found.high) == (None, None)
    assert paired([None], [0.1]) is None
    same = interval([2.0, 2.0, 2.0])
    assert same is not None and (same.low, same.high) == (2.0, 2.0)


@pytest.mark.parametrize(
    ("passes", "runs", "seeds", "expected"),
    [
        (3, 3, 5, True),  # a majority already
        (3, 5, 5, True),
        (2, 5, 5, False),
        (0, 3, 5, False),  # the two seeds left make 2 of 5 at best
        (2, 4, 5, None),  # the fifth seed decides
        (2, 4, 4, False),  # half is not a majority
        (1, 1, 1, True),
        (0, 0, 5, None),
    ],
)
def test_the_majority_rule(passes: int, runs: int, seeds: int, expected: bool | None) -> None:
    assert holds(passes, runs, seeds) is expected
