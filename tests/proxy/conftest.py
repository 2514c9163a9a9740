"""Loopback harness for the proxy tests: coroutine tests run on a fresh event loop each.

No plugin is needed: ``async def test_...`` functions are run with ``asyncio.run`` by the hook
below, so every test starts and stops its own loop (and with it everything it started).
``SIMMESH_TEST_LOOP=uvloop`` runs them on uvloop instead (the loop ``simmesh proxy`` uses when
it is installed); the tests that start ``python -m mesh.proxy`` use it whenever it is there.
"""

from __future__ import annotations

import asyncio
import inspect
import os
from typing import Any

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: a longer loopback test (seconds, not minutes)")


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    if not inspect.iscoroutinefunction(pyfuncitem.obj):
        return None
    names = pyfuncitem._fixtureinfo.argnames
    kwargs: dict[str, Any] = {name: pyfuncitem.funcargs[name] for name in names}
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        runner.run(pyfuncitem.obj(**kwargs))
    return True


def _loop_factory() -> Any:
    if os.environ.get("SIMMESH_TEST_LOOP") == "uvloop":
        import uvloop

        return uvloop.new_event_loop
    return None
