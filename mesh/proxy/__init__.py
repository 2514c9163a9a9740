"""The asyncio node proxy: a thin driver of mesh.core.

One proxy runs per node. It performs I/O only; every routing decision and every policy state
(splits, access control, rate limits, circuit breakers, balancers, retries) comes from
:class:`mesh.core.routing.Engine`. The pieces:

- :mod:`.app`: the ``simmesh proxy`` command (``add_arguments``/``run``) and signal handling.
- :mod:`.proxy`: the :class:`~.proxy.Proxy` object: the applied config as one snapshot that a
  reload swaps atomically, the listeners, the upstream clients, metrics and draining.
- :mod:`.sources`: where configs come from: a watched file or the controller's long-poll API.
- :mod:`.forward`: one HTTP request driven through the engine: decide, attempt, retry, report.
- :mod:`.http1` and :mod:`.h2server`: the HTTP/1.1 (aiohttp) and h2c prior-knowledge front ends,
  sharing the HTTP listeners; :mod:`.tunnel` passes WebSocket/Upgrade requests through.
- :mod:`.upstream_http` and :mod:`.upstream_h2`: pooled HTTP/1.1-or-HTTPS and h2c upstreams.
- :mod:`.tcp` and :mod:`.udp`: connection relays and per-client UDP sessions.
- :mod:`.admin`, :mod:`.metrics`, :mod:`.accesslog`, :mod:`.tracing`: observability.
"""
