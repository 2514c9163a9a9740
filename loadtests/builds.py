"""The compiled and the interpreted build side by side, in one benchmark run.

A benchmark measures a function in a child process, once per build and in alternation
(compiled, interpreted, compiled, ...), so a machine that gets busier or quieter during the
run affects both alike. The compiled build is this checkout after ``make compile``; the
interpreted one is a copy of its sources without any compiled module (``python -m`` in that
copy imports it). Each child prints one JSON line: what it measured and which build ran.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mesh.build import describe

ROOT = Path(__file__).resolve().parents[1]
BUILDS = ("compiled", "interpreted")

__all__ = ["BUILDS", "child_result", "interpreted_tree", "run_child"]


@contextlib.contextmanager
def interpreted_tree() -> Iterator[Path]:
    """A temporary copy of the packages (and scenarios) without compiled modules."""
    with tempfile.TemporaryDirectory(prefix="simmesh-interpreted-") as directory:
        copy = Path(directory)
        ignore = shutil.ignore_patterns("*.so", "__pycache__")
        for name in ("mesh", "sim", "loadtests", "tests", "scenarios"):
            shutil.copytree(ROOT / name, copy / name, ignore=ignore)
        yield copy


def run_child(tree: Path, module: str, args: list[str], *, timeout: float = 3600) -> dict[str, Any]:
    """``python -m module args`` in ``tree``; the JSON object of its last stdout line."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if done.returncode != 0:
        raise RuntimeError(f"{module} {' '.join(args)} in {tree}: {done.stderr.strip()[-2000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def child_result(measured: dict[str, Any]) -> str:
    """The line a child prints: what it measured, and the build it ran on."""
    return json.dumps({**measured, "build": describe()}, sort_keys=True)
