"""Counters of the offline path's egress guards (see test_3_egress.py): packets dropped on the
host as they would leave the kind bridge, and in each node as they would leave its eth0."""

from __future__ import annotations

import re
import subprocess


class NoGuard(Exception):
    """The chain is not there: not the offline path, or the cluster was not made by up.sh."""


def _dropped(command: list[str]) -> int:
    done = subprocess.run(command, capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        raise NoGuard(f"{' '.join(command)}: {done.stderr.strip()}")
    rows = [line.split() for line in done.stdout.splitlines() if re.search(r"\bDROP\b", line)]
    if not rows:
        raise NoGuard(f"{' '.join(command)}: no DROP rule")
    return sum(int(row[0]) for row in rows)


def host_dropped() -> int:
    return sum(
        _dropped([tool, "-L", "SIMMESH-KIND-EGRESS", "-v", "-x", "-n"])
        for tool in ("iptables", "ip6tables")
    )


def node_dropped(node: str) -> int:
    # -n: listing must not resolve addresses (that would be DNS traffic of its own)
    listing = ["-t", "mangle", "-L", "SIMMESH-EGRESS", "-v", "-x", "-n"]
    return sum(
        _dropped(["docker", "exec", node, tool, *listing]) for tool in ("iptables", "ip6tables")
    )


def snapshot(nodes: list[str]) -> dict[str, int] | None:
    """{"host": n, node: n, ...}, or None without the guards."""
    try:
        return {"host": host_dropped(), **{node: node_dropped(node) for node in nodes}}
    except NoGuard:
        return None
