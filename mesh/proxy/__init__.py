"""The asyncio node proxy: a thin driver of mesh.core.

One proxy runs per node. It performs I/O only; every routing decision and every policy state
(splits, access control, rate limits, circuit breakers, balancers, retries) comes from
:class:`mesh.core.routing.Engine` and :class:`mesh.core.lifecycle.Lifecycle`. The modules, from
the top down (import-linter's ``layers`` contract in pyproject.toml keeps that order):

- :mod:`.app`: the ``simmesh proxy`` command (``add_arguments``/``run``) and signal handling.
- :mod:`.proxy`: the :class:`~.proxy.Proxy`: builds the :class:`~.context.Context` every
  component is given, applies configs (one :class:`~.snapshot.Snapshot` swapped atomically),
  owns the listeners, the upstream clients, the admin port and draining.
- :mod:`.listeners`, :mod:`.admin`, :mod:`.sources`: the sockets of the applied config, the
  admin port, where configs come from (a watched file or the controller's long-poll API).
- :mod:`.http1` and :mod:`.h2server`: the HTTP/1.1 (asyncio Protocol on httptools) and h2c
  prior-knowledge front ends, sharing the HTTP listeners; :mod:`.tcp` and :mod:`.udp`:
  connection relays and per-client UDP sessions; :mod:`.tunnel`: WebSocket/Upgrade requests.
- :mod:`.context`: what the components share (snapshot, metrics, tracer, access log,
  forwarder, options, connection gate, flows registry).
- :mod:`.forward`: one HTTP request driven through the core: decide, then perform the
  lifecycle's commands; :mod:`.upstream_raw`, :mod:`.upstream_http`, :mod:`.upstream_h2`: the
  ``http``, ``https`` and ``h2c`` upstream clients.
- :mod:`.flows`, :mod:`.limits`, :mod:`.metrics`, :mod:`.tracing`, :mod:`.accesslog`,
  :mod:`.body`, :mod:`.headers`, :mod:`.h2common`, :mod:`.options`, :mod:`.addresses`: the
  pieces they share.
"""
