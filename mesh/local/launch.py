"""Start a planned local mesh in its own process (run.py), in a network namespace when possible.

The runner is a child process (``python -m mesh.local.run WORKDIR``), started under
``unshare --net`` when this machine allows a network namespace (``--isolation auto``, the
default, or ``netns``), else on the machine's loopback. While it runs this process ignores
Ctrl-C: the terminal's SIGINT reaches the runner too, which stops everything it started and
writes run.json; the runner also dies (and cleans up) if this process is killed.

What the machine offers is probed before anything starts (:func:`choose_isolation`), and each
missing piece costs one line on stderr saying what it changes:

- a namespace of its own needs ``unshare --net`` to be allowed (root, or user namespaces) and
  the ``ip`` command (iproute2) to bring its loopback up; without either, the machine's
  loopback is used;
- a fault with ``failure: unreachable`` (a node that is gone: packets dropped, connects time
  out) needs ``iptables`` working inside the namespace; without it such faults are realised
  as ``refused`` in the real run, and :func:`realisable` makes the simulation of ``simmesh
  verify`` do the same, so the two still compare like for like.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from mesh.local.plan import CA_PORT, CONTROLLER_PORT, Addressing, Plan, PlanError, make_plan
from mesh.local.procs import _die_with_parent, netns_command
from sim.scenario import Event, Scenario

__all__ = ["ISOLATIONS", "Isolation", "choose_isolation", "plan_for", "realisable", "run_plan"]

ISOLATIONS = ("auto", "netns", "loopback")


@dataclass(frozen=True)
class Isolation:
    """Where a local mesh runs and what it can realise there."""

    kind: str  # netns or loopback
    prefix: list[str]  # runs a command there (empty: here)
    blackhole: bool  # an address can be made unreachable (iptables in the namespace)
    why: str = ""  # what is missing, when something is


def choose_isolation(wanted: str) -> Isolation:
    """The best isolation ``wanted`` allows on this machine; PlanError when ``netns`` is asked
    for and cannot be had."""
    if wanted == "loopback":
        return Isolation("loopback", [], blackhole=False, why="--isolation loopback")
    prefix = netns_command()
    missing = None
    if prefix is None:
        missing = "this machine allows no network namespace (unshare --net: not root?)"
    elif shutil.which("ip") is None:
        missing = "no ip command to set up a network namespace (Debian package iproute2)"
    if missing is not None:
        if wanted == "netns":
            raise PlanError(f"--isolation netns: {missing}")
        return Isolation("loopback", [], blackhole=False, why=missing)
    assert prefix is not None
    if shutil.which("iptables") is None:
        return Isolation("netns", prefix, blackhole=False, why="no iptables command")
    probe = subprocess.run(
        [*prefix, "iptables", "-w", "-L", "OUTPUT", "-n"], capture_output=True, check=False
    )
    if probe.returncode != 0:
        error = probe.stderr.decode(errors="replace").strip().splitlines()[-1:] or ["failed"]
        return Isolation("netns", prefix, blackhole=False, why=f"iptables: {error[0]}")
    return Isolation("netns", prefix, blackhole=True)


def realisable(scenario: Scenario, isolation: Isolation) -> list[str]:
    """Make the scenario's faults what ``isolation`` can realise (``unreachable`` becomes
    ``refused`` without a blackhole) and say what changed: the lines to show the user. The
    first line also says when the mesh runs on the machine's loopback."""
    notes = []
    if isolation.kind == "loopback" and isolation.why != "--isolation loopback":
        notes.append(f"running on this machine's loopback: {isolation.why}")
    if isolation.blackhole:
        return notes
    changed = [e for e in scenario.timeline if e.params.get("failure") == "unreachable"]
    if changed:
        scenario.timeline = [_refused(e) if e in changed else e for e in scenario.timeline]
        at = ", ".join(f"{e.action} at {e.at:g} s" for e in changed)
        notes.append(
            f"'unreachable' faults realised as 'refused' ({at}), simulated the same way: "
            f"making an address unreachable needs iptables in a network namespace "
            f"({isolation.why}; Debian package iptables)"
        )
    return notes


def _refused(event: Event) -> Event:
    return replace(event, params={**event.params, "failure": "refused"})


def _free_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def plan_for(scenario: Scenario, isolation: Isolation, options: dict[str, Any]) -> Plan:
    if isolation.kind == "netns":
        addressing = Addressing(base=100)
        port, ca_port = CONTROLLER_PORT, CA_PORT
    else:  # share the machine's loopback: a block of addresses per process, free ports
        addressing = Addressing(base=100 + (os.getpid() % 37) * 4)
        port, ca_port = _free_port(addressing.controller()), _free_port(addressing.ca())
    plan = make_plan(
        scenario,
        isolation=isolation.kind,
        addressing=addressing,
        controller_port=port,
        ca_port=ca_port,
    )
    plan.options.update(options, blackhole=isolation.blackhole)
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
