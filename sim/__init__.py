"""The SimPy driver of mesh.core: what-if scenarios in simulated time."""
