"""``simmesh testapp``: a small workload for tests, conformance and demos.

One process serves an HTTP API (default port 8080) and, when asked, a TCP and a UDP echo port.
It knows which pod it is (``--name``/``--namespace``/``--node``, by default from the
``POD_NAME``, ``POD_NAMESPACE`` and ``NODE_NAME`` environment variables the manifests set
through the downward API) and says so in every answer.

HTTP (api.py): every path other than the reserved ones is an echo (``/echo`` by convention),
served after ``--latency`` (seconds or a distribution of the scenario format, sampled as the
simulator samples it; ``--contention`` makes it grow with the requests in service) with at
most ``--capacity`` requests at once, failing with ``--error-status`` at ``--error-rate``.
``/call`` makes requests from inside the pod (HTTP, TCP, UDP) and reports per call the status,
the mesh's reason, the answering pod and the error class. ``/calls`` lists and resets what the
app received; ``PUT /behaviour`` changes latency, errors and capacity at runtime; ``/healthz``
and ``/readyz`` are never delayed, failed or recorded.

TCP and UDP (echo.py): echo, and ``whoami`` answers one JSON line naming the pod.

It depends on aiohttp and mesh.core only (not on the proxy, the controller or the simulator),
so it can stand in for any workload: in pods (tests/cluster, conformance/) and on loopback.
"""

from mesh.testapp.main import Options, TestApp

__all__ = ["Options", "TestApp"]
