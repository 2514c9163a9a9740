"""Which modules are compiled with mypyc, and whether this process runs them compiled.

setup.py compiles :data:`COMPILED` when a C compiler and mypyc are there (``SIMMESH_COMPILE``:
``auto`` by default, ``0`` for a pure-Python install, ``1`` to fail without them). A compiled
module is a C extension beside its source; Python imports the extension first. The behaviour
is the same either way (tests/test_builds.py runs the simulator both ways and compares the
bytes); the speed is not. ``simmesh --version`` and the proxy's ``simmesh_proxy_build_info``
say which one runs.

This module is read by setup.py before anything is installed: standard library only.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import sys

__all__ = ["COMPILED", "DRIVERS", "compiled_modules", "describe", "is_compiled"]

# The hot paths: every decision of the core, the simulator's model, the proxy's request path.
# Not mesh.core.schema: its msgspec Structs take class keywords (frozen, rename) that a
# compiled class loses. Not mesh.proxy.bodystream: mypyc has no async generators. Not the proxy's
# start-up (app, proxy, workers, admin, sources): run once, not per request. Not
# mesh.proxy.options and .addresses: the Options pickled to each worker, which compiled
# classes refuse.
COMPILED: tuple[str, ...] = (
    "mesh.core.annotations",
    "mesh.core.config",
    "mesh.core.distributions",
    "mesh.core.errors",
    "mesh.core.explain",
    "mesh.core.fields",
    "mesh.core.gamma",
    "mesh.core.gateway",
    "mesh.core.lifecycle",
    "mesh.core.model",
    "mesh.core.parse",
    "mesh.core.patterns",
    "mesh.core.policies",
    "mesh.core.request",
    "mesh.core.routing",
    "mesh.core.shadow",
    "mesh.core.topology",
    "mesh.proxy.accesslog",
    "mesh.proxy.body",
    "mesh.proxy.context",
    "mesh.proxy.flows",
    "mesh.proxy.forward",
    "mesh.proxy.h2common",
    "mesh.proxy.h2server",
    "mesh.proxy.headers",
    "mesh.proxy.http1",
    "mesh.proxy.limits",
    "mesh.proxy.listeners",
    "mesh.proxy.metrics",
    "mesh.proxy.pipe",
    "mesh.proxy.mirror",
    "mesh.proxy.resources",
    "mesh.proxy.snapshot",
    "mesh.proxy.tcp",
    "mesh.proxy.tracing",
    "mesh.proxy.tunnel",
    "mesh.proxy.udp",
    "mesh.proxy.upstream",
    "mesh.proxy.upstream_h2",
    "mesh.proxy.upstream_http",
    "mesh.proxy.upstream_raw",
    "sim.distributions",
    "sim.metrics",
    "sim.model",
    "sim.outages",
    "sim.placement",
    "sim.resources",
)


# Benchmark drivers, compiled with the modules above (one group: their calls into the core are
# native calls, as the proxy's are) by a build in the source tree (``make compile``: setup.py
# build_ext --inplace), never installed: loadtests/core_loop.py says why.
# fmt: off
DRIVERS: tuple[str, ...] = (  # one name a line, as above: the Makefile reads them
    "loadtests.core_loop",
)
# fmt: on


def _is_extension(name: str) -> bool:
    module = sys.modules.get(name)
    origin = getattr(module, "__file__", None) if module is not None else None
    if origin is None:
        spec = importlib.util.find_spec(name)
        origin = spec.origin if spec is not None else None
    suffixes = tuple(importlib.machinery.EXTENSION_SUFFIXES)
    return origin is not None and origin.endswith(suffixes)


def is_compiled(name: str) -> bool:
    """Whether this process imports (or would import) module ``name`` compiled."""
    return _is_extension(name)


def compiled_modules() -> list[str]:
    """The modules of :data:`COMPILED` this process imports (or would import) compiled."""
    return [name for name in COMPILED if _is_extension(name)]


def describe() -> str:
    """``compiled (mypyc, 14/14 modules)``, ``interpreted``, or what is partly compiled."""
    compiled = compiled_modules()
    if not compiled:
        return "interpreted"
    if len(compiled) == len(COMPILED):
        return f"compiled (mypyc, {len(compiled)}/{len(COMPILED)} modules)"
    missing = ", ".join(sorted(set(COMPILED) - set(compiled)))
    return f"partly compiled (mypyc, {len(compiled)}/{len(COMPILED)} modules; not: {missing})"
