"""``simmesh up`` and ``simmesh verify`` refuse bad input with one line and exit code 2,
before they start anything."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CANARY = str(ROOT / "scenarios" / "canary")


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["verify", "/nonexistent"], "not a directory"),
        (["verify", CANARY, "--scale", "0"], "--scale"),
        (["verify", CANARY, "--scale", "nan"], "--scale"),
        (["verify", CANARY, "--tolerance", "p90=1"], "--tolerance"),
        (["verify", CANARY, "--tolerance", "p50=-1"], "--tolerance"),
        (["verify", CANARY, "--isolation", "vm"], "--isolation"),
        (["verify", CANARY, "--kubeconfig", "k"], "--kubeconfig"),
        (["verify", CANARY, "--profile", "nope"], "no such profile"),
        (["verify", CANARY, "--set", "traffic[0].rate=-5"], "traffic[0].rate"),
        (["up", CANARY, "--for", "-1"], "--for"),
        (["up", CANARY, "--seed", "x"], "--seed"),
        (["up", "/nonexistent"], "not a directory"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(argv: list[str], expected: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "mesh.cli", *argv],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert done.returncode == 2, done.stdout + done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert expected in line and "Traceback" not in done.stderr
