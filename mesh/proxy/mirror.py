"""RequestMirror: copies of a request sent and forgotten.

The core decides which requests are mirrored and to which endpoint
(``Decision.mirrors``, mesh.core.routing); this module only sends the copies. A copy is sent
as the main request goes upstream (its headers and rewritten target, its body when that is
empty or buffered whole, see below), in a task of its own: it never delays the main request
and its outcome never reaches the client. Its response is read to the end and discarded.

Bounded: at most ``limit`` copies are in flight per process (``--max-mirrors``); beyond, the
copy is dropped. A copy waits for its answer no longer than the request's per-try timeout, and
never longer than ``--upstream-timeout``. A request whose body is streamed (over
``--buffer-limit``, or without a length) is not mirrored: copying it would mean holding it or
slowing the main request to the mirror's pace. Each outcome is counted in
``simmesh_proxy_mirrors_total{service,result}``: ``sent`` (any answer), ``failed`` (connect
error, reset, timeout), ``dropped`` (over the limit), ``streamed`` (not copied: a streamed
body), ``refused`` (strict mTLS: the copy could not be tunnelled, so it was not sent in the
clear). Mirrors never touch the in-flight counts or circuit breakers of the endpoints they go
to.

With mTLS on, a copy to a pod of another node travels like any request: through a tunnel to
that node's proxy, with the caller's certificate (the caller ``hops`` plans for it, as the
forwarder plans an attempt). Strict mode never sends one in the clear; permissive sends the
copies it cannot tunnel in plaintext and counts them.
"""

from __future__ import annotations

import asyncio
import logging

from mesh.core.routing import MirrorShot
from mesh.proxy.body import Body
from mesh.proxy.headers import Outgoing
from mesh.proxy.metrics import Metrics
from mesh.proxy.upstream import TunnelHop, Upstream, UpstreamError, UpstreamRequest

log = logging.getLogger("simmesh.proxy")


class Mirrors:
    """The copies in flight of one proxy process."""

    def __init__(self, *, http: Upstream, h2c: Upstream, metrics: Metrics, limit: int) -> None:
        self.http = http
        self.h2c = h2c
        self.metrics = metrics
        self.limit = limit
        self.tasks: set[asyncio.Task[None]] = set()

    def send(
        self,
        shots: tuple[MirrorShot, ...],
        *,
        service: str,
        method: str,
        authority: str,
        target: str,
        headers: Outgoing,
        body: Body,
        timeout: float,
        server_name: str | None,
        hops: tuple[TunnelHop | UpstreamError | None, ...] = (),
    ) -> None:
        """Send a copy to each shot's endpoint, without waiting for anything; ``hops``: per
        shot, its tunnel to the endpoint's node (None: plaintext; UpstreamError: refused)."""
        for index, shot in enumerate(shots):
            if not body.replayable:
                self.metrics.count("mirrors", service, "streamed")
                continue
            if len(self.tasks) >= self.limit:
                self.metrics.count("mirrors", service, "dropped")
                continue
            hop = hops[index] if index < len(hops) else None
            if isinstance(hop, UpstreamError):
                self.metrics.count("mirrors", service, "refused")
                log.debug("mirror to %s refused: %s", shot.endpoint.key, hop)
                continue
            # An empty or buffered body is read afresh by every attempt: shared as it is.
            attempt = self._one(
                shot,
                service=service,
                method=method,
                authority=authority,
                target=target,
                headers=headers,
                body=body,
                timeout=timeout,
                server_name=server_name,
                hop=hop,
            )
            task = asyncio.get_running_loop().create_task(attempt)
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def _one(
        self,
        shot: MirrorShot,
        *,
        service: str,
        method: str,
        authority: str,
        target: str,
        headers: Outgoing,
        body: Body,
        timeout: float,
        server_name: str | None,
        hop: TunnelHop | None,
    ) -> None:
        # through a tunnel, HTTP/1.1 to the node's proxy, which delivers with the scheme
        # (h2c keeps its own pool: its tunnels carry HTTP/2)
        upstream = self.h2c if shot.scheme == "h2c" else self.http
        endpoint = shot.endpoint
        try:
            async with asyncio.timeout(timeout):
                response = await upstream.send(
                    UpstreamRequest(
                        shot.scheme,
                        endpoint.ip,
                        endpoint.port,
                        method,
                        authority,
                        target,
                        headers,
                        body,
                        timeout,
                        server_name,
                        hop,
                    )
                )
                try:
                    while await response.read():
                        pass
                    response.release()
                except BaseException:
                    response.close()
                    raise
        except (UpstreamError, TimeoutError, OSError) as exc:
            self.metrics.count("mirrors", service, "failed")
            log.debug("mirror to %s failed: %s", endpoint.key, exc)
            return
        self.metrics.count("mirrors", service, "sent")

    async def close(self) -> None:
        """Cancel the copies still in flight (the proxy is closing)."""
        tasks = list(self.tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
