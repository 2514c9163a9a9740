"""Where a request's time goes outside its pod's latency: event loops and the network.

Each node proxy is one asyncio event loop, the load generator (Locust) one gevent loop and
each test app one asyncio loop: single-threaded servers that do one piece of work at a time.
A :class:`Loop` is such a server, first come first served, computed with Lindley's recursion
(a piece of work starts when it arrives or when the previous one ends, whichever is later), so
a visit costs O(1) and no simulation event: the time a piece of work is done is known as soon
as it is queued. Work that finds its loop asleep first waits for the process to be woken and
get a core (the profile's wake-up distribution, sampled from a table of its quantiles, measured
after 2 ms sleeps: a loop asleep for less pays one in proportion, see Resources._visit).

Work is queued in the order the simulator reaches it, which is the order of simulated time,
except that a request's next steps (the client's send, the hop to the proxy, the proxy's
decision, the hop to the pod) are queued when the request starts or its answer comes back, a
fraction of a millisecond early: within that fraction a later request can find a loop a little
busier than it really was.

A request visits, in order (profile.py gives the costs):

1. the client's loop (half its per-request cost), the network to its node's proxy;
2. the proxy's loop: half the per-request cost (read, decide) and, in the same turn, the
   first attempt's cost (connect, send, read the answer; a retry's later, in a turn of its
   own); the network to the pod's node, the pod's app loop (half its cost), its capacity and
   latency (model.py; the sleep ends on a timer tick), a wake-up and the other half of the
   app's cost, the network back;
3. the proxy's loop again: the other half of the per-request cost and the response's bytes;
   the network back, the client's loop (the other half of its cost).

With mTLS on, an attempt to a pod of another node goes through that node's proxy
(:meth:`Resources.tunnel_in`, :meth:`Resources.tunnel_out`): the source proxy seals the
request (half the profile's ``tls.request``; on a new tunnel connection also the client's
handshake, ``tls.connect``, then the TCP and TLS 1.3 round trips, the destination's
``tls.accept`` on its loop between them); the network between the nodes; the destination
proxy's loop: half its per-request cost, one attempt's cost and opening the record; the
network within the node to the pod. On the way back the destination proxy seals the answer
(half its per-request cost, half ``tls.request``, the bytes at ``proxy.byte + tls.byte``)
and the source proxy opens it (half ``tls.request``, the bytes at ``tls.byte``): CPU counted
on both loops and time on the answer's path, not queued (like the app's answer, that work
lies in the future of the loops' queues).

:class:`Network` gives the one-way delay between two nodes (within a node, between nodes, or a
given pair); a refused connect costs a round trip, an unreachable one the connect timeout.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from mesh.core.distributions import sampler
from sim.profile import Profile

__all__ = ["Loop", "Network", "Resources"]

SLEPT = 0.002  # seconds asleep before each wake-up the profile's distribution was measured on


class Loop:
    """A single-threaded server (FIFO): ``visit`` returns when the work is done.

    ``free`` is when the work queued so far is done; ``awake`` the last moment the loop was
    doing something, so a visit after it finds the process asleep and pays a wake-up, during
    which the process cannot run anything else either (a stall hits every request that comes
    meanwhile, as a descheduled process does). Work that takes no time waits its turn but
    holds nobody up."""

    __slots__ = ("awake", "busy", "free")

    def __init__(self) -> None:
        self.free = 0.0
        self.awake = 0.0
        self.busy = 0.0  # total work done: utilisation = busy / elapsed

    def visit(self, at: float, work: float, wake: float = 0.0) -> float:
        start = (at + wake if at > self.awake else at) if at > self.free else self.free
        if start > self.free and wake:
            self.free = start  # waking: whatever arrives meanwhile waits too
        done = start + work
        if done > self.awake:
            self.awake = done
        if work:
            self.free = done
            self.busy += work
        return done


@dataclass(frozen=True, slots=True)
class Network:
    local: float = 0.0
    remote: float = 0.0
    pairs: tuple[tuple[frozenset[str], float], ...] = ()

    @property
    def uniform(self) -> float | None:
        """The one delay between any two places, when there is just one."""
        return self.local if self.local == self.remote and not self.pairs else None

    def delay(self, a: str | None, b: str | None) -> float:
        """One-way seconds from node ``a`` to node ``b`` (unknown nodes: remote)."""
        if a == b and a is not None:
            return self.local
        for pair, seconds in self.pairs:
            if a in pair and b in pair:
                return seconds
        return self.remote


class Resources:
    """The loops of a simulation and the costs of visiting them."""

    __slots__ = (
        "apps",
        "client",
        "half_app",
        "half_client",
        "half_request",
        "local",
        "network",
        "per_attempt",
        "per_byte",
        "profile",
        "proxies",
        "random",
        "relay_half",
        "rng",
        "tls_accept",
        "tls_byte",
        "tls_connect",
        "tls_half",
        "wakes",
    )

    # Quantiles of the wake-up distribution kept for sampling (see _visit): enough that the
    # table reaches p99.99, where a run's stalls are (a process not scheduled for 100 ms is one
    # wake-up in tens of thousands, and one such stall can start a retry storm).
    WAKES = 8192

    def __init__(self, profile: Profile, nodes: tuple[str, ...], *, seed: int = 1) -> None:
        self.profile = profile
        self.client = Loop()
        self.proxies = {node: Loop() for node in nodes}
        self.apps: dict[str, Loop] = {}
        self.half_client = profile.client_request / 2
        self.half_request = profile.proxy_request / 2
        self.per_attempt = profile.proxy_attempt
        self.per_byte = profile.proxy_byte
        self.half_app = profile.app_request / 2
        self.rng = random.Random(f"{seed}:wakeups")
        self.random = self.rng.random
        self.wakes = _quantiles(profile.wakeup, self.WAKES, self.rng)
        self.network = Network(
            profile.network_local, profile.network_remote, tuple(profile.network_pairs.items())
        )
        self.local = profile.network_local
        self.tls_connect = profile.tls_connect
        self.tls_accept = profile.tls_accept
        self.tls_half = profile.tls_request / 2
        self.tls_byte = profile.tls_byte
        self.relay_half = profile.tls_relay / 2

    def _visit(self, loop: Loop, at: float, work: float) -> float:
        """Loop.visit with a wake-up sample drawn only when the loop is asleep (this runs
        several times per request: it is kept to plain attribute work).

        The wake-up distribution is measured after sleeps of :data:`SLEPT` (the probe's and
        the calibration's 2 ms). A loop asleep for a shorter ``gap`` pays a wake-up with
        probability ``gap / SLEPT``: its core is given to another task while it sleeps the
        less often the shorter it sleeps (a loop visited 1,000 times a second is not
        descheduled between every two visits). One draw decides both whether and which."""
        free = loop.free
        if at > free:
            if at > loop.awake and self.wakes:
                gap = at - loop.awake
                u = self.random()
                if gap < SLEPT:
                    u = u * SLEPT / gap  # uniform in [0, 1) when it is below 1
                if u < 1.0:
                    at += self.wakes[int(u * 8192)]
                    loop.free = at  # not running yet: whatever arrives meanwhile waits too
            done = at + work
        else:
            done = free + work
        if done > loop.awake:
            loop.awake = done
        if work:
            loop.free = done
            loop.busy += work
        return done

    def arrive(self, node: str, now: float, *, attempt: bool) -> float:
        """When the node's proxy has read and decided a request a client sent at ``now`` and,
        with ``attempt``, sent its first attempt (in the same turn of its loop)."""
        visit = self._visit
        sent = visit(self.client, now, self.half_client)
        work = self.half_request + self.per_attempt if attempt else self.half_request
        return visit(self.proxies[node], sent + self.local, work)

    def send(self, node: str, at: float) -> float:
        """When a retry the proxy starts at ``at`` leaves it."""
        return self._visit(self.proxies[node], at, self.per_attempt)

    def serve(self, ip: str, at: float) -> float:
        """When the pod's app has read a request that reached it at ``at``."""
        loop = self.apps.get(ip)
        if loop is None:
            loop = self.apps[ip] = Loop()
        return self._visit(loop, at, self.half_app)

    def tunnel_in(
        self, node: str, peer: str, at: float, *, handshake: bool, pipe: bool = False
    ) -> float:
        """When the proxy of ``peer`` has sent on to its pod an attempt that the proxy of
        ``node`` tunnels at ``at`` (over a new connection with ``handshake``; on a spliced
        ``pipe``, which the destination relays instead of handling as a request)."""
        visit = self._visit
        source, destination = self.proxies[node], self.proxies[peer]
        hop = self.network.delay(node, peer)
        work = self.tls_half + self.tls_connect if handshake else self.tls_half
        out = visit(source, at, work)
        if handshake:  # SYN, SYN-ACK, ACK + ClientHello; the server's flight back, Finished
            out = visit(destination, out + 3 * hop, self.tls_accept) + hop
        if pipe:  # relayed, its TLS record opened: the profile's relay, half each way
            return visit(destination, out + hop, self.relay_half)
        return visit(destination, out + hop, self.half_request + self.per_attempt + self.tls_half)

    def tunnel_out(self, node: str, peer: str, size: int, *, pipe: bool = False) -> float:
        """The CPU time the answer (``size`` bytes) takes in the two proxies of a tunnel,
        counted on both loops (not queued: see the module's notes)."""
        if pipe:
            sealed = self.relay_half + size * self.tls_byte
        else:
            sealed = self.half_request + self.tls_half + size * (self.per_byte + self.tls_byte)
        opened = self.tls_half + size * self.tls_byte
        self.proxies[peer].busy += sealed
        self.proxies[node].busy += opened
        return sealed + opened

    def deliver(self, node: str, at: float, size: int) -> float:
        """When the client has the answer the proxy starts sending at ``at``."""
        work = self.half_request + size * self.per_byte if size else self.half_request
        visit = self._visit
        out = visit(self.proxies[node], at, work)
        return visit(self.client, out + self.local, self.half_client)


def _quantiles(spec: object, count: int, rng: random.Random) -> list[float]:
    """``count`` evenly spaced quantiles of a latency spec ([] when it is always 0): exact for
    an empirical spec (its own interpolation at the middle of each ``1/count`` of the
    probability), estimated from ``16 * count`` samples otherwise."""
    sample, mean = sampler(spec)
    if mean == 0:
        return []
    if isinstance(spec, dict) and spec.get("dist") == "empirical":
        return [sample(_At((2 * i + 1) / (2 * count))) for i in range(count)]
    values = sorted(sample(rng) for _ in range(count * 16))
    return [values[(2 * i + 1) * len(values) // (2 * count)] for i in range(count)]


class _At:
    """A "random" source that always draws ``u``: an empirical spec's quantile function."""

    __slots__ = ("u",)

    def __init__(self, u: float) -> None:
        self.u = u

    def random(self) -> float:
        return self.u

    def expovariate(self, lambd: float, /) -> float:
        raise NotImplementedError

    def gauss(self, mu: float = 0.0, sigma: float = 1.0) -> float:
        raise NotImplementedError
