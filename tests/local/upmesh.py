"""``simmesh up`` as a user starts it, for the tests of the real local mesh: started, read
until it prints the curl line it offers, and always stopped (its whole process group)."""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HINT = "curl --interface"


@dataclass
class Up:
    process: subprocess.Popen[str]
    lines: list[str]  # what it printed up to its curl line
    source: str  # the curl line's --interface (a pod's address)
    host: str  # its Host header
    url: str

    def interrupt(self) -> int:
        """What Ctrl-C in a terminal does; the exit code."""
        os.killpg(self.process.pid, signal.SIGINT)
        return self.process.wait(60)


@contextlib.contextmanager
def simmesh_up(directory: Path, out: Path, *args: str) -> Iterator[Up]:
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mesh.cli",
            "up",
            str(directory),
            *args,
            "--isolation",
            "loopback",
            "--out",
            str(out),
        ],
        cwd=ROOT,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        assert process.stderr is not None
        lines: list[str] = []
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            line = process.stderr.readline()
            lines.append(line)
            if HINT in line or not line:
                break
        command = shlex.split(next(x for x in lines if HINT in x))
        yield Up(process, lines, command[2], command[4].split(": ")[1], command[-1])
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        if process.stderr is not None:
            process.stderr.close()
