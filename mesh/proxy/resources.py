"""The proxy's own resources: file descriptors, and the upstream connections that spend them.

Every downstream connection holds a file descriptor, every upstream connection another, and a
process may hold at most ``RLIMIT_NOFILE`` of them. Past that limit nothing works: ``accept``
fails (asyncio stops accepting for a second), ``connect`` fails and the request becomes a 502
that says nothing of why. So the proxy divides its descriptors up front (:func:`fd_budget`):
a fixed reserve (:data:`RESERVED_FDS`: listeners, the admin port, the config source, logs), up
to ``--max-connections`` downstream, and the rest for upstream connections
(``--max-upstream-connections``), which :class:`UpstreamGate` counts.

An upstream connection takes a :class:`Slot` from the gate before it connects and gives it back
when its socket closes: pooled HTTP/1.1 connections (busy or idle), h2c connections (one per
endpoint, however many streams they carry), WebSocket tunnels and TCP flows; https requests
(aiohttp's own pool) while they run. When no slot is free the gate first asks the pools to
close an idle connection (:meth:`UpstreamGate.add_reclaimer`); otherwise the caller waits, first
come first served, up to ``wait`` seconds (``--connect-timeout``), and a connection that turns
idle meanwhile is closed instead of pooled (:meth:`UpstreamGate.contended`), its slot going to
the first in line. A caller still waiting after ``wait`` seconds gets
:class:`UpstreamLimit`: the request is answered 503 ``upstream-connection-limit`` (a TCP flow
is closed), never retried and never blamed on the endpoint. A connect that fails with EMFILE or
ENFILE anyway (descriptors spent elsewhere) is the same refusal. Each refusal is logged here,
at most one line per 10 s (:class:`Throttled`); the callers count it by service.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import resource
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from mesh.core.policies import Failure
from mesh.proxy.upstream import UpstreamError

log = logging.getLogger("simmesh.proxy")

T = TypeVar("T")
RESERVED_FDS = 128  # listeners, admin port, config source, logs, the event loop's own
_OUT_OF_FDS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
_NO_LIMIT = 1 << 20  # RLIM_INFINITY, as a number of descriptors


class Throttled:
    """A warning logged at most once per ``every`` seconds, saying how many happened since."""

    __slots__ = ("_at", "_clock", "_every", "_unlogged")

    def __init__(self, every: float = 10.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._every = every
        self._clock = clock
        self._at: float | None = None
        self._unlogged = 0

    def warn(self, message: str, *args: object) -> None:
        self._unlogged += 1
        now = self._clock()
        if self._at is not None and now - self._at < self._every:
            return
        log.warning(message + " (%d since the last message)", *args, self._unlogged)
        self._at = now
        self._unlogged = 0


# -- the descriptor budget ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FdBudget:
    """What one process may open: ``downstream`` connections, ``upstream`` connections."""

    nofile: int
    downstream: int
    upstream: int

    @property
    def overcommitted(self) -> bool:
        return self.downstream + self.upstream > max(self.nofile - RESERVED_FDS, 0)


def open_file_limit() -> int:
    """This process's soft ``RLIMIT_NOFILE``."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return _NO_LIMIT if soft == resource.RLIM_INFINITY else soft


def raise_open_file_limit() -> int:
    """Raise the soft ``RLIMIT_NOFILE`` to the hard one (as nginx, HAProxy and Go do); the
    limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = _NO_LIMIT if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (OSError, ValueError) as exc:
            log.warning("cannot raise RLIMIT_NOFILE from %d to %d: %s", soft, target, exc)
    return open_file_limit()


def fd_budget(*, nofile: int, max_connections: int, max_upstream: int | None) -> FdBudget:
    """Divide ``nofile`` descriptors: :data:`RESERVED_FDS`, downstream, upstream.

    With ``max_upstream`` given, both limits are taken as they are. Otherwise upstream
    connections get what ``max_connections`` leaves, but never less than half of what is not
    reserved; when that does not fit, the downstream limit is lowered to the other half (a
    limit the descriptors cannot honour would only turn into failed accepts)."""
    spare = max(nofile - RESERVED_FDS, 2)
    if max_upstream is not None:
        return FdBudget(nofile, max_connections, max_upstream)
    upstream = max(spare - max_connections, spare // 2)
    return FdBudget(nofile, min(max_connections, spare - upstream), upstream)


# -- upstream connection slots ------------------------------------------------------------------


class UpstreamLimit(UpstreamError):
    """No upstream connection could be had: the proxy's own limit, not the upstream's failure
    (answered 503, not retried, not counted against the endpoint)."""

    def __init__(self, detail: str) -> None:
        super().__init__(Failure.CONNECT, detail)


class Slot:
    """One upstream connection's place under the limit; :meth:`release` is idempotent."""

    __slots__ = ("_gate",)

    def __init__(self, gate: UpstreamGate | None) -> None:
        self._gate: UpstreamGate | None = gate  # None: holds no place (a flow in a tunnel)

    def release(self) -> None:
        gate, self._gate = self._gate, None
        if gate is not None:
            gate._release()

    def contended(self) -> bool:
        """Whether someone waits for a slot (so an idle connection should close)."""
        return self._gate is not None and self._gate.contended()


class UpstreamGate:
    """Counts upstream connections against ``limit``; see the module docstring."""

    def __init__(self, limit: int, *, wait: float) -> None:
        self.limit = limit
        self.wait = wait
        self.open = 0
        self.refused = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._reclaimers: list[Callable[[], bool]] = []
        self._warning = Throttled()

    def add_reclaimer(self, reclaim: Callable[[], bool]) -> None:
        """``reclaim()`` closes one idle connection (its slot comes back when it has closed)
        and says whether it found one."""
        self._reclaimers.append(reclaim)

    def contended(self) -> bool:
        """Whether someone waits for a slot (an idle connection should close, not pool)."""
        waiters = self._waiters
        while waiters and waiters[0].done():
            waiters.popleft()  # gave up waiting
        return bool(waiters)

    async def acquire(self) -> Slot:
        """A slot, at once or after waiting in line up to ``wait`` seconds; raises
        :class:`UpstreamLimit`."""
        waiters = self._waiters
        if self.open < self.limit and not self.contended():
            self.open += 1
            return Slot(self)
        for reclaim in self._reclaimers:
            if reclaim():
                break
        waiter = asyncio.get_running_loop().create_future()
        waiters.append(waiter)
        try:
            async with asyncio.timeout(self.wait):
                await waiter
        except TimeoutError:
            if not waiter.cancelled():  # handed a slot just as the wait ran out: keep it
                return Slot(self)
            raise self.refuse(
                f"no upstream connection free within {self.wait:g}s "
                f"(--max-upstream-connections {self.limit})"
            ) from None
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                self._release()
            raise
        return Slot(self)

    def _release(self) -> None:
        """A connection closed: its slot goes to the first live waiter, or back."""
        waiters = self._waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self.open -= 1

    def refuse(self, detail: str) -> UpstreamLimit:
        """Count and log a refusal; the error to raise."""
        self.refused += 1
        self._warning.warn(
            "upstream connection limit: %s; answering 503 upstream-connection-limit "
            "(simmesh_proxy_upstream_limited_total)",
            detail,
        )
        return UpstreamLimit(detail)

    async def connect(self, open_: Callable[[Slot], Awaitable[T]], *, where: str) -> T:
        """``open_(slot)`` with a slot taken first; the slot is given back when it fails (else
        the connection owns it). EMFILE and the like become :class:`UpstreamLimit`."""
        slot = await self.acquire()
        try:
            return await open_(slot)
        except BaseException as exc:
            slot.release()
            if isinstance(exc, OSError) and exc.errno in _OUT_OF_FDS:
                detail = f"out of file descriptors connecting to {where}: {exc.strerror}"
                raise self.refuse(detail) from exc
            raise

    @classmethod
    def unlimited(cls) -> UpstreamGate:
        return cls(1 << 62, wait=0.0)
