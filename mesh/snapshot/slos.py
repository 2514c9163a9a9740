"""SLOs proposed from what a snapshot observed (``simmesh snapshot --propose-slos FILE``).

Per service that had requests in the window: a success rate and a p99 with a margin, in the
SLO file format of ``simmesh whatif --slos`` and the admission gate (docs/whatif.md): the
error budget is the observed error rate times ``1 + margin``, at least :data:`MIN_BUDGET`,
and the p99 objective the observed p99 times ``1 + margin``, rounded up to the millisecond.
With the default margin of 0.5, a service that answered 99.6% within 80 ms gets
``successRate: 0.994`` and ``p99: 0.12``. A starting point: objectives are promises to users,
so read them, and tighten or loosen them, before they gate anything.
"""

from __future__ import annotations

import math
from typing import Any

MIN_BUDGET = 0.001  # the smallest error budget proposed: 99.9%
MIN_REQUESTS = 10  # fewer requests in the window: no SLO proposed for the service


def propose(observed: dict[str, Any], *, margin: float = 0.5) -> list[dict[str, Any]]:
    """The proposed SLOs, one per service with at least :data:`MIN_REQUESTS` requests."""
    out = []
    for service, entry in sorted(observed.get("services", {}).items()):
        requests = entry.get("requests") or 0
        success = entry.get("successRate")
        if requests < MIN_REQUESTS or success is None:
            continue
        slo: dict[str, Any] = {"name": f"{service} as observed", "service": service}
        budget = max(MIN_BUDGET, (1.0 - success) * (1.0 + margin))
        slo["successRate"] = max(0.0, math.floor((1.0 - budget) * 10_000) / 10_000)
        p99 = (entry.get("latency") or {}).get("p99")
        if p99 is not None and success > 0:
            slo["latency"] = {"p99": math.ceil(p99 * (1.0 + margin) * 1000) / 1000}
        out.append(slo)
    return out
