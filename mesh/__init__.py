"""simmesh: a sidecar-free, simulation-first service mesh for Kubernetes."""

__version__ = "0.1.0"
