"""The pure routing core shared by the proxy, the simulator and the CLI.

Nothing in this package performs I/O, reads a clock or uses global randomness: Kubernetes
objects come in as plain dicts, time as ``now: float`` and randomness as an injected RNG.
The flow is ``parse`` -> ``build_topology`` -> ``build_config`` -> ``Router``/``Engine``.
"""
