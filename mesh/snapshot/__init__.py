"""``simmesh snapshot``: a scenario directory from a live cluster (docs/snapshot.md).

Pure parts, shared with the admission gate (mesh/gate): :mod:`.objects` strips the objects
the mesh reads down to what it reads, :mod:`.exposition` parses and differences the proxies'
metrics, :mod:`.model` turns the measured window into the scenario's workloads, traffic and
observed numbers, :mod:`.slos` proposes SLOs. The I/O: :mod:`.cluster` (the API server and the
proxies through it), :mod:`.prometheus` (a Prometheus server instead), :mod:`.write` (the
directory) and :mod:`.cli`. Nothing here imports a driver (proxy, controller, DNS, simulator).
"""
