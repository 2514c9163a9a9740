"""Fuzz target: the proxy's config decoder.

Bytes -> :func:`mesh.proxy.sources.parse_config` (document limits, then the field-by-field
check); a ValueError naming the document is the only allowed refusal. A config it accepts
must compile into a Router and answer requests and flows: the checker and the Router must
agree on what a usable MeshConfig is (a KeyError or TypeError in the Router means the
checker let something through).
"""

from __future__ import annotations

import random
import sys

import atheris

with atheris.instrument_imports():
    from mesh.core.request import parse_request
    from mesh.core.routing import Engine, Router
    from mesh.proxy.sources import parse_config

RNG = random.Random(1)


def test_one_input(data: bytes) -> None:
    try:
        config = parse_config(data, name="fuzz.json")
    except ValueError:
        return
    router = Router(config)
    engine = Engine(router)
    for port, protocol in router.listeners:
        if protocol == "http":
            for host in list(router.hosts.get(port, {}))[:3]:
                request = parse_request("GET", "/api/x?y=1", [("x-role", "a")], authority=host)
                engine.decide_http(listener=port, request=request, source=None, now=1.0, rng=RNG)
        else:
            engine.decide_flow(listener=port, source=None, now=1.0, rng=RNG)


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
