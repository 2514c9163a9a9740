"""bench_core's decision loop, in the same build as the core it drives.

The proxy reads a request (method, target, header lines, authority) with its HTTP parser, then
its per-request path (mesh/proxy/forward.py, compiled with the core) calls
``parse_request`` and ``Engine.decide_http``: native calls, no argument parsing. A loop in
interpreted Python calling the compiled core pays, per decision, what the proxy never pays: the
interpreter's loop, the header list built again, keyword arguments parsed at the boundary of
the compiled module. So this loop is compiled with the core where the core is compiled (mesh/
build.py ``DRIVERS``; ``make compile``) and interpreted where it is not, as the proxy is. Each
request's header lines are built once, as the proxy's parser hands them over.
"""

from __future__ import annotations

from mesh.core.policies import Rng
from mesh.core.request import parse_request
from mesh.core.routing import Engine

__all__ = ["Inbound", "decide_round"]


class Inbound:
    """One request as the proxy's parser hands it over, and the caller's identity."""

    __slots__ = ("authority", "items", "method", "source", "target")

    def __init__(
        self,
        method: str,
        target: str,
        items: list[tuple[str, str]],
        authority: str | None,
        source: str | None,
    ) -> None:
        self.method = method
        self.target = target
        self.items = items
        self.authority = authority
        self.source = source


def decide_round(engine: Engine, requests: list[Inbound], listener: int, rng: Rng) -> int:
    """Every request read in its canonical form and decided once; how many were allowed."""
    allowed = 0
    for inbound in requests:
        request = parse_request(
            inbound.method, inbound.target, inbound.items, authority=inbound.authority
        )
        d = engine.decide_http(
            listener=listener, request=request, source=inbound.source, now=0.0, rng=rng
        )
        if d.allowed:
            allowed += 1
    return allowed
