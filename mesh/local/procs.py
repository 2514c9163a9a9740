"""The processes of a local mesh, and the network namespace they may run in.

:class:`Supervisor` starts each process in a session of its own (a Ctrl-C in the terminal
reaches only the supervisor, which then stops everything in order) with a parent-death signal
(if the supervisor is killed outright, the kernel sends its children SIGTERM), keeps their
output in log files, and stops them by pid: SIGTERM, then SIGKILL after a grace period.
Nothing is ever stopped by name.

Isolation: as root (or where unprivileged user namespaces are allowed), the mesh runs in a
network namespace of its own (``unshare --net``): its loopback addresses and ports cannot
clash with anything else on the machine, the namespace disappears with its last process, and
``iptables`` inside it can make a node unreachable (packets dropped, so connects time out)
without touching the machine's firewall. Elsewhere it runs on the machine's loopback.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

__all__ = ["Supervisor", "netns_command", "wait_http"]

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # runs in the child between fork and exec
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass
class Child:
    name: str
    process: subprocess.Popen[bytes]
    log: Path
    files: list[IO[Any]] = field(default_factory=list)

    @property
    def pid(self) -> int:
        return self.process.pid

    def running(self) -> bool:
        return self.process.poll() is None


class Supervisor:
    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.children: list[Child] = []
        logs.mkdir(parents=True, exist_ok=True)

    def start(
        self,
        name: str,
        argv: list[str],
        *,
        env: dict[str, str] | None = None,
        stdout: Path | None = None,
        cwd: Path | None = None,
    ) -> Child:
        log = self.logs / f"{name}.log"
        err = log.open("ab")
        out = stdout.open("ab") if stdout is not None else err
        process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            env={**os.environ, **(env or {})},
            cwd=cwd,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
        files: list[IO[Any]] = [err] if out is err else [err, out]
        child = Child(name, process, log, files)
        self.children.append(child)
        return child

    def stop(self, child: Child, *, grace: float = 5.0, sig: int = signal.SIGTERM) -> None:
        if child.running():
            with contextlib.suppress(ProcessLookupError):
                child.process.send_signal(sig)
            try:
                child.process.wait(grace)
            except subprocess.TimeoutExpired:
                child.process.kill()
                child.process.wait(5)
        for f in child.files:
            f.close()
        child.files = []

    def kill(self, child: Child) -> None:
        """SIGKILL at once (a pod or node that dies): open connections are reset."""
        self.stop(child, grace=0.0, sig=signal.SIGKILL)

    def stop_all(self, *, grace: float = 5.0) -> None:
        """Everything still running, the last started first; SIGTERM to all, then wait."""
        alive = [c for c in reversed(self.children) if c.running()]
        for child in alive:
            with contextlib.suppress(ProcessLookupError):
                child.process.terminate()
        deadline = time.monotonic() + grace
        for child in alive:
            try:
                child.process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.process.kill()
                child.process.wait(5)
        for child in self.children:
            for f in child.files:
                f.close()
            child.files = []

    def tail(self, child: Child, lines: int = 5) -> str:
        try:
            text = child.log.read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return " | ".join(text[-lines:])


def wait_http(url: str, *, timeout: float, child: Child | None = None) -> None:
    """Until ``url`` answers 200; RuntimeError naming the child when it exits first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if child is not None and not child.running():
            raise RuntimeError(f"{child.name} exited with {child.process.returncode}")
        with (
            contextlib.suppress(OSError, urllib.error.URLError),
            urllib.request.urlopen(url, timeout=1) as response,
        ):
            if response.status == 200:
                return
        time.sleep(0.05)
    raise RuntimeError(f"{url} did not answer 200 within {timeout:g} s")


def netns_command() -> list[str] | None:
    """The prefix that runs a command in a new network namespace, or None when this machine
    does not allow one (not root, no user namespaces, or no ``unshare``)."""
    unshare = shutil.which("unshare")
    if unshare is None:
        return None
    for prefix in ([unshare, "--net"], [unshare, "--map-root-user", "--net"]):
        try:
            probe = subprocess.run([*prefix, "true"], capture_output=True, timeout=10, check=False)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if probe.returncode == 0:
            return prefix
    return None
