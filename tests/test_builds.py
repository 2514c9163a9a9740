"""The compiled build and the interpreted one give the same bytes.

The same scenario and seed run by the simulator on the compiled modules (this checkout, after
``make compile``) and on a copy of the sources without any compiled module must write the
same results.json, byte for byte: mypyc changes how fast the core decides, never what.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mesh.build import compiled_modules

ROOT = Path(__file__).resolve().parents[1]


def _simmesh(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run(
        [sys.executable, "-m", "mesh.cli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.fixture(scope="module")
def interpreted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the sources with no compiled module; ``python -m`` there imports it."""
    copy = tmp_path_factory.mktemp("interpreted")
    ignore = shutil.ignore_patterns("*.so", "__pycache__")
    for name in ("mesh", "sim", "scenarios"):
        shutil.copytree(ROOT / name, copy / name, ignore=ignore)
    return copy


def test_the_version_says_which_build_runs(interpreted: Path) -> None:
    pure = _simmesh(interpreted, "--version")
    assert pure.returncode == 0 and pure.stdout.strip().endswith(", interpreted"), pure
    here = _simmesh(ROOT, "--version")
    if compiled_modules():
        assert "compiled (mypyc" in here.stdout, here


@pytest.mark.skipif(
    not compiled_modules() and os.environ.get("SIMMESH_EXPECT_BUILD") != "compiled",
    reason="nothing is compiled here (make compile needs mypyc and a C compiler)",
)
@pytest.mark.parametrize("scenario", ["canary", "retry-storm"])
def test_compiled_and_interpreted_write_the_same_results(
    interpreted: Path, tmp_path: Path, scenario: str
) -> None:
    assert compiled_modules(), "SIMMESH_EXPECT_BUILD=compiled, and nothing is compiled"
    outputs = {}
    for name, cwd in (("compiled", ROOT), ("interpreted", interpreted)):
        out = tmp_path / name
        done = _simmesh(cwd, "sim", f"scenarios/{scenario}", "--out", str(out), "--quiet")
        assert done.returncode in (0, 1), done.stderr
        outputs[name] = (out / "results.json").read_bytes()
    assert len(outputs["compiled"]) > 10_000
    assert outputs["compiled"] == outputs["interpreted"]
