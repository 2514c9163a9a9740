"""The proxies' metrics as plain tables: parsed, differenced over a window, read as histograms.

A :data:`Table` maps a sample name (``simmesh_proxy_calls_total``, ``..._bucket``) to its
series, each keyed by its labels as a sorted tuple of pairs. A window is the difference of two
scrapes of one proxy: counters that went down were reset (the proxy restarted), and count
from zero, as Prometheus's ``increase`` does. :class:`Hist` is one histogram's buckets over the
window, with the percentiles Prometheus's ``histogram_quantile`` would give.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

Labels = tuple[tuple[str, str], ...]
Table = dict[str, dict[Labels, float]]
PREFIX = "simmesh_proxy_"


class ExpositionError(ValueError):
    """Metrics text that is not a Prometheus exposition."""


def labels_of(mapping: Mapping[str, str], *, drop: Iterable[str] = ()) -> Labels:
    gone = set(drop)
    return tuple(sorted((k, v) for k, v in mapping.items() if k not in gone))


def parse(text: str) -> Table:
    """The ``simmesh_proxy_*`` samples of an exposition (others are left out)."""
    table: Table = {}
    try:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name.startswith(PREFIX) and math.isfinite(sample.value):
                    table.setdefault(sample.name, {})[labels_of(sample.labels)] = sample.value
    except (ValueError, TypeError, IndexError) as exc:
        raise ExpositionError(f"not a Prometheus exposition: {exc}") from None
    return table


def difference(before: Table, after: Table) -> Table:
    """``after - before`` per series; a series that went down was reset and counts whole."""
    out: Table = {}
    for name, series in after.items():
        old = before.get(name, {})
        rows = out[name] = {}
        for labels, value in series.items():
            delta = value - old.get(labels, 0.0)
            rows[labels] = value if delta < 0 else delta
    return out


def add(tables: Iterable[Table]) -> Table:
    """Several tables summed series by series."""
    out: Table = {}
    for table in tables:
        for name, series in table.items():
            rows = out.setdefault(name, {})
            for labels, value in series.items():
                rows[labels] = rows.get(labels, 0.0) + value
    return out


def rows(table: Table, name: str) -> Iterator[tuple[dict[str, str], float]]:
    for labels, value in table.get(name, {}).items():
        yield dict(labels), value


@dataclass
class Hist:
    """One histogram over a window: upper bounds (the last one +Inf) and per-bucket counts."""

    bounds: list[float] = field(default_factory=list)
    counts: list[float] = field(default_factory=list)  # not cumulative
    sum: float = 0.0

    @property
    def count(self) -> float:
        return sum(self.counts)

    def merged(self, other: Hist) -> Hist:
        if not self.bounds:
            return Hist(list(other.bounds), list(other.counts), other.sum)
        if not other.bounds:
            return Hist(list(self.bounds), list(self.counts), self.sum)
        if other.bounds != self.bounds:
            raise ValueError("histograms with different buckets")
        counts = [a + b for a, b in zip(self.counts, other.counts, strict=True)]
        return Hist(list(self.bounds), counts, self.sum + other.sum)

    def quantile(self, q: float) -> float | None:
        """The q-quantile (0..1), linear within its bucket (Prometheus's histogram_quantile);
        in the +Inf bucket, the largest finite bound. None without observations."""
        total = self.count
        if total <= 0:
            return None
        rank = q * total
        seen = 0.0
        for i, (bound, count) in enumerate(zip(self.bounds, self.counts, strict=True)):
            if count > 0 and seen + count >= rank:
                if math.isinf(bound):
                    return self.finite_max()
                low = self.bounds[i - 1] if i > 0 else 0.0
                return low + (bound - low) * max(0.0, rank - seen) / count
            seen += count
        return self.finite_max()

    def finite_max(self) -> float:
        finite = [b for b in self.bounds if not math.isinf(b)]
        return finite[-1] if finite else 0.0

    def low_edge(self) -> float:
        """The lower bound of the first bucket that holds anything."""
        for i, count in enumerate(self.counts):
            if count > 0:
                return self.bounds[i - 1] if i > 0 else 0.0
        return 0.0

    def high_edge(self) -> float:
        """The upper bound of the last bucket that holds anything (finite)."""
        for i in range(len(self.counts) - 1, -1, -1):
            if self.counts[i] > 0:
                bound = self.bounds[i]
                return self.finite_max() if math.isinf(bound) else bound
        return 0.0


def histograms(table: Table, name: str, by: str) -> dict[str, Hist]:
    """The histograms ``name`` (``..._seconds``) per value of the label ``by``, other labels
    added up."""
    cumulative: dict[str, dict[float, float]] = {}
    for labels, value in rows(table, f"{name}_bucket"):
        le = labels.get("le")
        if le is None:
            continue
        bound = math.inf if le == "+Inf" else float(le)
        per = cumulative.setdefault(labels.get(by, ""), {})
        per[bound] = per.get(bound, 0.0) + value
    sums: dict[str, float] = {}
    for labels, value in rows(table, f"{name}_sum"):
        key = labels.get(by, "")
        sums[key] = sums.get(key, 0.0) + value
    out = {}
    for key, per in cumulative.items():
        bounds = sorted(per)
        counts, previous = [], 0.0
        for bound in bounds:
            counts.append(max(0.0, per[bound] - previous))
            previous = max(previous, per[bound])
        out[key] = Hist(bounds, counts, sums.get(key, 0.0))
    return out
