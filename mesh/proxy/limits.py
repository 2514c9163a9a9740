"""The proxy-wide connection limit (``--max-connections``, 10,000 by default).

Every downstream connection (HTTP/1.1, h2c, TCP, and HTTP connections whose first bytes are
still awaited) and every UDP session holds a file descriptor, an upstream one more, and memory.
:class:`ConnectionGate` counts them (the ``simmesh_proxy_active_connections`` gauge plus the
connections still being sniffed) and, at the limit, turns a new connection away at once: the
listeners build their protocols through :meth:`ConnectionGate.factory`, which hands out a
protocol that closes the connection; a UDP listener asks :meth:`ConnectionGate.full` before
opening a session. Each refusal is counted in ``simmesh_proxy_connections_refused_total`` by
protocol; the log says so at most once per ``log_every`` seconds, with how many were refused
since, so a flood does not flood the log too.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from mesh.proxy.metrics import Metrics
from mesh.proxy.resources import Throttled

log = logging.getLogger("simmesh.proxy")


class _Refuse(asyncio.Protocol):
    """A connection over the limit: reset at once, nothing read."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.abort()  # type: ignore[attr-defined]


class ConnectionGate:
    def __init__(
        self,
        limit: int,
        metrics: Metrics,
        *,
        log_every: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limit = limit
        self.metrics = metrics
        self.pending = 0  # accepted HTTP connections whose protocol is not known yet
        self.refused = 0
        self._log_every = log_every
        self._clock = clock
        self._logged_at: float | None = None
        self._unlogged = 0
        self._streams: dict[str, Throttled] = {}

    def count(self) -> int:
        return sum(self.metrics.active.values()) + self.pending

    def full(self, protocol: str) -> bool:
        """True (and counted as a refusal) when a new ``protocol`` connection must be refused."""
        if self.count() < self.limit:
            return False
        self.refused += 1
        self._unlogged += 1
        self.metrics.count("connections_refused", protocol)
        now = self._clock()
        if self._logged_at is None or now - self._logged_at >= self._log_every:
            log.warning(
                "connection limit reached (--max-connections %d): refusing new connections "
                "(%d refused since the last message; simmesh_proxy_connections_refused_total)",
                self.limit,
                self._unlogged,
            )
            self._logged_at = now
            self._unlogged = 0
        return True

    def stream_refused(self, reason: str, peer: str) -> None:
        """Count and log an h2c stream refused (``max-concurrent-streams``, ``draining``)."""
        self.metrics.count("streams_refused", reason)
        warning = self._streams.get(reason)
        if warning is None:
            warning = self._streams[reason] = Throttled(self._log_every, self._clock)
        warning.warn("h2c stream refused (%s), last from %s", reason, peer)

    def factory(
        self, protocol: str, make: Callable[[], asyncio.BaseProtocol]
    ) -> Callable[[], asyncio.BaseProtocol]:
        """A protocol factory for ``loop.create_server`` that refuses over the limit."""

        def build() -> asyncio.BaseProtocol:
            return _Refuse() if self.full(protocol) else make()

        return build
