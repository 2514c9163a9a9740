"""Latency distributions: the implementation is mesh.core.distributions, shared with the test
app (mesh/testapp) so simulated and real workloads sample alike; re-exported for sim modules."""

from mesh.core.distributions import DistributionError, Rng, Sampler, sampler

__all__ = ["DistributionError", "Rng", "Sampler", "sampler"]
