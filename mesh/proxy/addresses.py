"""Address maps: a pod network seen through local addresses.

A local cluster (the test harness, ``simmesh up``) runs its workloads as processes on loopback,
but the API server refuses loopback addresses in EndpointSlices, so pods get addresses from a
pod network such as 10.244.0.0/16 that nothing listens on. ``--address-map
10.244.0.0/16=127.1.0.0/16`` makes the proxy dial 10.244.0.10 at 127.1.0.10 and see a client
connecting from 127.1.0.20 as pod 10.244.0.20, so identities and access control work as in a
cluster. The map is applied to each MeshConfig before it is compiled: nothing on the request
path changes. Without a map, configs pass through untouched.
"""

from __future__ import annotations

import ipaddress

import msgspec

from mesh.core.config import MeshConfig

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class AddressMap:
    def __init__(self, pairs: list[tuple[Network, Network]]) -> None:
        self.pairs = pairs

    @classmethod
    def parse(cls, specs: list[str]) -> AddressMap:
        pairs = []
        for spec in specs:
            left, sep, right = spec.partition("=")
            try:
                cluster, local = ipaddress.ip_network(left), ipaddress.ip_network(right)
            except ValueError as exc:
                raise ValueError(f"--address-map {spec!r}: {exc}") from None
            if not sep or cluster.prefixlen != local.prefixlen or cluster.version != local.version:
                raise ValueError(
                    f"--address-map {spec!r}: expected CLUSTER_CIDR=LOCAL_CIDR of equal size"
                )
            pairs.append((cluster, local))
        return cls(pairs)

    def to_local(self, ip: str) -> str:
        return self._translate(ip, forward=True)

    def _translate(self, ip: str, *, forward: bool) -> str:
        try:
            address = ipaddress.ip_address(ip)
        except ValueError:
            return ip
        for cluster, local in self.pairs:
            src, dst = (cluster, local) if forward else (local, cluster)
            if address.version == src.version and address in src:
                offset = int(address) - int(src.network_address)
                return str(ipaddress.ip_address(int(dst.network_address) + offset))
        return ip

    def apply(self, config: MeshConfig) -> MeshConfig:
        """The config with endpoints at their local addresses, and identities and (with mTLS)
        the pods' nodes keyed by them."""
        if not self.pairs:
            return config
        clusters = {
            key: msgspec.structs.replace(
                cluster,
                endpoints=[
                    msgspec.structs.replace(e, ip=self.to_local(e.ip)) for e in cluster.endpoints
                ],
            )
            for key, cluster in config.clusters.items()
        }
        identities = {self.to_local(ip): who for ip, who in config.identities.items()}
        settings = config.settings
        mtls = settings.mtls
        if mtls is not None:  # which node a caller's address is on (strict refuses the others)
            pods = {self.to_local(ip): node for ip, node in mtls.pods.items()}
            settings = msgspec.structs.replace(
                settings, mtls=msgspec.structs.replace(mtls, pods=pods)
            )
        return msgspec.structs.replace(
            config, clusters=clusters, identities=identities, settings=settings
        )
