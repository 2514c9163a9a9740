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


# Count-only rules put before each node's DROP (no target: a packet goes on to the DROP as
# before), so a packet the guard dropped says what it was: CI once counted one on a worker
# during the first tests, and nothing more was known of it.
_KINDS = (
    ("iptables", ["-d", "10.96.0.0/12"], "why-service-cidr"),
    ("iptables", ["-p", "udp", "--dport", "53"], "why-dns"),
    ("iptables", ["-p", "tcp"], "why-tcp"),
    ("iptables", ["-p", "udp"], "why-udp"),
    ("iptables", ["-p", "icmp"], "why-icmp"),
    ("ip6tables", ["-p", "ipv6-icmp"], "why-icmpv6"),
    ("ip6tables", ["-p", "udp"], "why-udp6"),
    ("ip6tables", ["-p", "tcp"], "why-tcp6"),
)


def classify(nodes: list[str]) -> None:
    """Add the count-only rules to each node's guard (once; errors ignored: diagnostics)."""
    for node in nodes:
        for tool, match, name in _KINDS:
            rule = [*match, "-m", "comment", "--comment", name]
            base = ["docker", "exec", node, tool, "-t", "mangle"]
            try:
                if subprocess.run(
                    [*base, "-C", "SIMMESH-EGRESS", *rule], capture_output=True, timeout=30
                ).returncode:
                    rows = subprocess.run(
                        [*base, "-S", "SIMMESH-EGRESS"], capture_output=True, text=True, timeout=30
                    ).stdout.count("-A SIMMESH-EGRESS")
                    if rows:  # before the last rule, the DROP
                        subprocess.run(
                            [*base, "-I", "SIMMESH-EGRESS", str(rows), *rule],
                            capture_output=True,
                            timeout=30,
                        )
            except (OSError, subprocess.TimeoutExpired):
                return


def describe(node: str) -> str:
    """The node's guard chains with their counters (what the count-only rules saw)."""
    out = []
    for tool in ("iptables", "ip6tables"):
        done = subprocess.run(
            [
                "docker",
                "exec",
                node,
                tool,
                "-t",
                "mangle",
                "-L",
                "SIMMESH-EGRESS",
                "-v",
                "-x",
                "-n",
            ],
            capture_output=True,
            text=True,
            timeout=30,
        )
        out.append(f"{tool}: {done.stdout.strip() or done.stderr.strip()}")
    return "\n".join(out)


def snapshot(nodes: list[str]) -> dict[str, int] | None:
    """{"host": n, node: n, ...}, or None without the guards."""
    try:
        return {"host": host_dropped(), **{node: node_dropped(node) for node in nodes}}
    except NoGuard:
        return None
