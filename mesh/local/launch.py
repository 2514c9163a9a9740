"""Start a planned local mesh in its own process (run.py), in a network namespace when possible.

The runner is a child process (``python -m mesh.local.run WORKDIR``), started under
``unshare --net`` when this machine allows a network namespace (``--isolation auto``, the
default, or ``netns``), else on the machine's loopback. While it runs this process ignores
Ctrl-C: the terminal's SIGINT reaches the runner too, which stops everything it started and
writes run.json; the runner also dies (and cleans up) if this process is killed.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from mesh.local.plan import CONTROLLER_PORT, Addressing, Plan, PlanError, make_plan
from mesh.local.procs import _die_with_parent, netns_command
from sim.scenario import Scenario

__all__ = ["ISOLATIONS", "choose_isolation", "plan_for", "run_plan"]

ISOLATIONS = ("auto", "netns", "loopback")


def choose_isolation(wanted: str) -> tuple[str, list[str]]:
    """(isolation, command prefix); PlanError when ``netns`` is asked for and unavailable."""
    prefix = netns_command() if wanted in ("auto", "netns") else None
    if prefix is not None:
        return "netns", prefix
    if wanted == "netns":
        raise PlanError("--isolation netns: this machine allows no network namespace (root?)")
    return "loopback", []


def _free_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def plan_for(scenario: Scenario, isolation: str, options: dict[str, Any]) -> Plan:
    if isolation == "netns":
        addressing = Addressing(base=100)
        port = CONTROLLER_PORT
    else:  # share the machine's loopback: a block of addresses per process, a free port
        addressing = Addressing(base=100 + (os.getpid() % 37) * 4)
        port = _free_port(addressing.controller())
    plan = make_plan(scenario, isolation=isolation, addressing=addressing, controller_port=port)
    plan.options.update(options)
    return plan


def run_plan(plan: Plan, workdir: Path, prefix: list[str]) -> int:
    """Run the plan to its end; the runner's exit code (0 ok, 1 failed, 130 interrupted).

    The run writes its logs in memory (/dev/shm when there is one: a disk that stalls a
    writer would stall the proxy or Locust with it) and they are moved to ``workdir`` after."""
    if workdir.exists():
        shutil.rmtree(workdir)
    workdir.parent.mkdir(parents=True, exist_ok=True)
    shm = Path("/dev/shm")
    scratch = Path(tempfile.mkdtemp(prefix="simmesh-run-", dir=shm if shm.is_dir() else None))
    (scratch / "plan.json").write_text(plan.to_json())
    argv = [*prefix, sys.executable, "-m", "mesh.local.run", str(scratch)]
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        process = subprocess.Popen(argv, preexec_fn=_die_with_parent)
        return process.wait()
    finally:
        signal.signal(signal.SIGINT, previous)
        shutil.move(scratch, workdir)
