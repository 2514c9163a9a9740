"""Session checks: the build under test is the one expected, and no compiled module is stale.

A compiled module (mesh/build.py) is a C extension beside its source, imported before it: one
built before the source last changed would test old code. ``make compile`` (run by ``make
test``) rebuilds them; a pytest run on a stale one stops here. ``SIMMESH_EXPECT_BUILD``
(``compiled`` or ``interpreted``) makes sure a CI step tests what it says it does.
"""

from __future__ import annotations

import importlib.machinery
import os
from pathlib import Path

import pytest

from mesh.build import COMPILED, compiled_modules


def _stale() -> list[str]:
    stale = []
    for name in compiled_modules():
        source = Path(*name.split(".")).with_suffix(".py")
        root = Path(__file__).resolve().parents[1]
        for suffix in importlib.machinery.EXTENSION_SUFFIXES:
            extension = (root / source).with_suffix(suffix)
            if extension.exists() and extension.stat().st_mtime < (root / source).stat().st_mtime:
                stale.append(str(source))
    return stale


def pytest_sessionstart(session: pytest.Session) -> None:
    stale = _stale()
    if stale:
        raise pytest.UsageError(
            f"compiled modules older than their sources: {', '.join(stale)} (run make compile)"
        )
    expected = os.environ.get("SIMMESH_EXPECT_BUILD")
    compiled = compiled_modules()
    if expected == "compiled" and len(compiled) != len(COMPILED):
        missing = sorted(set(COMPILED) - set(compiled))
        raise pytest.UsageError(f"SIMMESH_EXPECT_BUILD=compiled, but not compiled: {missing}")
    if expected == "interpreted" and compiled:
        raise pytest.UsageError(f"SIMMESH_EXPECT_BUILD=interpreted, but compiled: {compiled}")
