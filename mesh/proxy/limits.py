"""Who may open a downstream connection: the proxy-wide, per-source and identity limits.

Every downstream connection (HTTP/1.1, h2c, TCP, and HTTP connections whose first bytes are
still awaited) and every UDP session holds a file descriptor, an upstream one more, and memory.
:class:`ConnectionGate` counts them (the ``simmesh_proxy_active_connections`` gauge plus the
connections still being sniffed) and, per source IP, how many each source holds. A new
connection is admitted (:meth:`ConnectionGate.admit`, called by the listener's protocol as soon
as the peer's address is known; a UDP listener before it opens a session) unless:

- ``max-connections``: the proxy holds ``--max-connections`` already;
- ``per-source``: its source holds ``--max-connections-per-source`` already (by default a tenth
  of ``--max-connections``, at least 100), so one client cannot take every connection;
- ``unidentified``: in ACL mode, its source has no identity in the applied config (so every
  request it makes is denied) and the sources without one hold every connection but the
  ``--reserved-connections`` (a tenth of ``--max-connections``) kept for sources with an
  identity. Without ACLs identities are not used and every source counts as one with.

A refused connection is reset at once (a UDP datagram that would open a session is dropped),
counted in ``simmesh_proxy_connections_refused_total{protocol,reason}`` and logged at most once
per ``log_every`` seconds per reason, with how many were refused since, so a flood does not
flood the log too. :meth:`ConnectionGate.leave` gives the place back when the connection ends.
The gate also counts and logs the h2c streams the front end refuses
(:meth:`ConnectionGate.stream_refused`).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from mesh.proxy.metrics import Metrics
from mesh.proxy.resources import Throttled

MAX_CONNECTIONS = "max-connections"
PER_SOURCE = "per-source"
UNIDENTIFIED = "unidentified"
_MESSAGES = {
    MAX_CONNECTIONS: "connection limit reached (--max-connections %d): refusing new connections"
    ", the last from %s",
    PER_SOURCE: "per-source limit reached (--max-connections-per-source %d): "
    "refusing new connections from %s",
    UNIDENTIFIED: "sources without identity hold all but the %d connections reserved for "
    "sources with one (--reserved-connections): refusing new connections, the last from %s",
}


def default_per_source(limit: int) -> int:
    """``--max-connections-per-source`` when not given: a tenth of the limit, at least 100."""
    return min(limit, max(100, limit // 10))


class ConnectionGate:
    def __init__(
        self,
        limit: int,
        metrics: Metrics,
        *,
        per_source: int | None = None,
        reserved: int | None = None,
        identified: Callable[[str], bool] = lambda ip: False,
        log_every: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limit = limit
        self.per_source = default_per_source(limit) if per_source is None else per_source
        self.reserved = limit // 10 if reserved is None else min(reserved, limit)
        self.metrics = metrics
        self.pending = 0  # accepted HTTP connections whose protocol is not known yet
        self.refused = 0
        self.sources: dict[str, int] = {}  # open connections per source IP
        self.unidentified = 0  # of which admitted while their source had no identity
        self._anonymous: dict[str, int] = {}
        self._identified = identified
        self._log_every = log_every
        self._clock = clock
        self._warnings: dict[str, Throttled] = {}

    def count(self) -> int:
        return sum(self.metrics.active.values()) + self.pending

    def admit(self, ip: str, protocol: str) -> bool:
        """Whether a new connection (or UDP session) from ``ip`` may open; counts it if so,
        counts and logs the refusal if not."""
        known = self._identified(ip)
        reason = self._refusal(ip, known)
        if reason is not None:
            self._refuse(protocol, reason, ip)
            return False
        self.sources[ip] = self.sources.get(ip, 0) + 1
        if not known:
            self._anonymous[ip] = self._anonymous.get(ip, 0) + 1
            self.unidentified += 1
        return True

    def _refusal(self, ip: str, known: bool) -> str | None:
        if self.count() >= self.limit:
            return MAX_CONNECTIONS
        if self.sources.get(ip, 0) >= self.per_source:
            return PER_SOURCE
        if not known and self.unidentified >= self.limit - self.reserved:
            return UNIDENTIFIED
        return None

    def leave(self, ip: str) -> None:
        """A connection (or UDP session) from ``ip`` ended."""
        held = self.sources.get(ip, 0)
        if held <= 1:
            self.sources.pop(ip, None)
        else:
            self.sources[ip] = held - 1
        anonymous = self._anonymous.get(ip, 0)
        if anonymous:
            self.unidentified -= 1
            if anonymous == 1:
                del self._anonymous[ip]
            else:
                self._anonymous[ip] = anonymous - 1

    def _refuse(self, protocol: str, reason: str, ip: str) -> None:
        self.refused += 1
        self.metrics.count("connections_refused", protocol, reason)
        limit = {MAX_CONNECTIONS: self.limit, PER_SOURCE: self.per_source}.get(
            reason, self.reserved
        )
        self._warning(reason).warn(_MESSAGES[reason], limit, ip)

    def _warning(self, key: str) -> Throttled:
        warning = self._warnings.get(key)
        if warning is None:
            warning = self._warnings[key] = Throttled(self._log_every, self._clock)
        return warning

    def stream_refused(self, reason: str, peer: str) -> None:
        """Count and log an h2c stream refused (``max-concurrent-streams``, ``draining``)."""
        self.metrics.count("streams_refused", reason)
        warning = self._warning(f"stream {reason}")
        warning.warn("h2c stream refused (%s), the last from %s", reason, peer)
