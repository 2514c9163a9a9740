"""Build: the metadata is in pyproject.toml; this file only adds the compiled modules.

``SIMMESH_COMPILE``: ``auto`` (the default) compiles mesh/build.py's COMPILED modules with
mypyc when mypyc and a C compiler are there, and builds a pure-Python package otherwise;
``0`` never compiles; ``1`` compiles or fails. The compiled and the interpreted package behave
the same (tests/test_builds.py).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
import sysconfig
from pathlib import Path

from setuptools import setup

HERE = Path(__file__).resolve().parent


def _compiled_names() -> tuple[str, ...]:
    """mesh/build.py's COMPILED; with its DRIVERS in a build in the source tree (--inplace)."""
    spec = importlib.util.spec_from_file_location("_simmesh_build", HERE / "mesh" / "build.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    names = tuple(module.COMPILED)
    if "--inplace" in sys.argv:
        sources = {name: (HERE / Path(*name.split("."))).with_suffix(".py") for name in module.DRIVERS}
        names += tuple(name for name, source in sources.items() if source.exists())
    return names


def _compiler() -> str | None:
    command = (sysconfig.get_config_var("CC") or "cc").split()[0]
    return shutil.which(command)


def _extensions() -> list[object]:
    mode = os.environ.get("SIMMESH_COMPILE", "auto")
    if mode not in ("auto", "0", "1"):
        sys.exit(f"SIMMESH_COMPILE={mode!r}: expected auto, 0 or 1")
    if mode == "0":
        return []
    try:
        from mypyc.build import mypycify
    except ImportError:
        if mode == "1":
            raise
        print("simmesh: mypyc is not installed: building the pure-Python package", file=sys.stderr)
        return []
    if _compiler() is None:
        if mode == "1":
            sys.exit("SIMMESH_COMPILE=1: no C compiler")
        print("simmesh: no C compiler: building the pure-Python package", file=sys.stderr)
        return []
    paths = [str(Path(*name.split(".")).with_suffix(".py")) for name in _compiled_names()]
    # The project's mypy config names modules outside this build: not an error here.
    # One shared library inside the package (mesh/_native__mypyc.*.so), found wherever mesh is.
    return list(
        mypycify(["--no-warn-unused-configs", *paths], opt_level="3", group_name="mesh._native")
    )


setup(ext_modules=_extensions())
