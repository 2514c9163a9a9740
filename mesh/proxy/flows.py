"""The registry of long-lived flows that a new config judges again (revocation).

Access is decided when a request or flow starts. TCP flows, UDP sessions and WebSocket tunnels
can outlive the grant that admitted them, so each registers here while it is open, and every
applied config asks the core (``Router.readmits``) about each: the ones it no longer admits
end at once (:meth:`Flows.revoke`), counted in ``simmesh_proxy_revoked_flows_total``.
"""

from __future__ import annotations

import logging
from typing import Protocol

from mesh.core.routing import Router
from mesh.proxy.metrics import Metrics

log = logging.getLogger("simmesh.proxy")


class Flow(Protocol):
    """A flow admitted once (TCP connection, UDP session, WebSocket tunnel)."""

    kind: str  # tcp, udp or websocket

    @property
    def service(self) -> str: ...

    def readmitted(self, router: Router) -> bool: ...

    def revoke(self) -> None: ...


class Flows:
    __slots__ = ("_metrics", "_open")

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics
        self._open: set[Flow] = set()

    def add(self, flow: Flow) -> None:
        self._open.add(flow)

    def discard(self, flow: Flow) -> None:
        self._open.discard(flow)

    def __len__(self) -> int:
        return len(self._open)

    def revoke(self, router: Router) -> int:
        """End the flows ``router``'s config no longer admits (a grant was removed, or the
        source's identity changed)."""
        revoked = [flow for flow in self._open if not flow.readmitted(router)]
        for flow in revoked:
            self._open.discard(flow)
            self._metrics.count("revoked", flow.service, flow.kind)
            flow.revoke()
        if revoked:
            log.info("ended %d flows that config %s no longer admits", len(revoked), router.version)
        return len(revoked)
