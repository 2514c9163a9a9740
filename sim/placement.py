"""Which workload behaves behind each endpoint address.

An address can be an endpoint of several Services (``backend`` and ``backend-v1`` in a split):
its behaviour is the most specific workload's, the Service with the fewest endpoints (ties by
name). The simulator places its pods with this, and the local mesh (mesh.local) starts one test
app per address with the same answer, so both run the same pods.
"""

from __future__ import annotations

from collections.abc import Collection

from mesh.core.routing import Router


def pod_owners(router: Router, services: Collection[str]) -> dict[str, tuple[str, str | None]]:
    """Endpoint IP -> (workload service, node), for endpoints of the given services."""
    owners: dict[str, tuple[int, str, str | None]] = {}
    for cluster in router.clusters.values():
        if cluster.service not in services:
            continue
        size = len(cluster.endpoints)
        for endpoint in cluster.endpoints:
            best = owners.get(endpoint.ip)
            if best is None or (size, cluster.service) < best[:2]:
                owners[endpoint.ip] = (size, cluster.service, endpoint.node)
    return {ip: (service, node) for ip, (_, service, node) in sorted(owners.items())}
