"""GAMMA capture (issue 16): which Service ports are captured at their ClusterIP, on which
proxy listener, and the nftables ruleset a node's capture agent applies. Pure: data in, data
(and text) out.

Why capture at all: a GAMMA route's parent is a Service *frontend*, its name and ClusterIP
(GEP-1294). Clients (and the official conformance suite) call ``http://echo/`` through the
cluster DNS, which answers the ClusterIP; no opt-in mesh name is involved, and the Host they
send may name another Service. So for each (ClusterIP, port) of a Service port that has GAMMA
routes, the node's agent DNATs TCP from the node's pods to the node proxy pod, to a listener
dedicated to that Service port (the DNAT happens in the node's network namespace, so the proxy
cannot read the original destination with SO_ORIGINAL_DST in its own). The proxy routes what
arrives there by that listener, never by Host. Pod-IP traffic is never captured.

Listener ports come from ``capturePorts``. The controller is stateless, so the assignment is
made to survive both a rebuild and a restart (:func:`assign_capture_ports`): ports of the
previous config are kept; a new Service port takes its *home* port, a hash of its key in the
range, or the next free one above it (wrapping). After a controller restart (no previous
config) the same home ports come back, so only keys that collided may move. A full range
leaves the port uncaptured with an error on the Service (its traffic goes on to the Service
unrouted, as without capture), never a crash.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Mapping, Sequence

from mesh.core import schema
from mesh.core.model import PortRange

__all__ = ["TABLE", "assign_capture_ports", "home_port", "remove_nft", "render_nft"]

TABLE = "simmesh"  # the agent's own nftables table, in the ip and ip6 families
PRIORITY = "dstnat - 10"  # before kube-proxy's DNAT: the first NAT binding of a connection wins
_FAMILIES = ("ip", "ip6")


def home_port(key: str, pool: PortRange) -> int:
    """Where ``key`` (``ns/name:port``) goes when its port is free: a stable hash into the
    range, the same in every controller process."""
    digest = hashlib.sha256(key.encode()).digest()
    return pool.start + int.from_bytes(digest[:8], "big") % pool.size


def assign_capture_ports(
    keys: Sequence[str], pool: PortRange, previous: Mapping[str, int]
) -> tuple[dict[str, int], list[str]]:
    """Capture listener per key: the previous one (``capture:<key>`` in ``previous``) if it is
    still in the range and not taken; else the home port or the next free one after it
    (wrapping). Keys are taken in sorted order, so the result does not depend on input order.
    Returns the assignment and the keys left without a port (the range is full)."""
    ordered = sorted(set(keys))
    assigned: dict[str, int] = {}
    used: set[int] = set()
    for key in ordered:
        number = previous.get(f"capture:{key}")
        in_range = number is not None and pool.start <= number < pool.start + pool.size
        if number is not None and in_range and number not in used:
            assigned[key] = number
            used.add(number)
    overflow: list[str] = []
    for key in ordered:
        if key in assigned:
            continue
        if len(used) >= pool.size:
            overflow.append(key)
            continue
        offset = home_port(key, pool) - pool.start
        while pool.start + offset in used:
            offset = (offset + 1) % pool.size
        assigned[key] = pool.start + offset
        used.add(pool.start + offset)
    return assigned, overflow


def _family(ip: str) -> str:
    return "ip6" if ipaddress.ip_address(ip).version == 6 else "ip"


def _target(ip: str, port: int) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def remove_nft() -> str:
    """A ruleset that removes the agent's tables (if they exist) in one transaction: adding an
    empty table first makes the delete succeed when it was not there."""
    lines = []
    for family in _FAMILIES:
        lines += [f"table {family} {TABLE}", f"delete table {family} {TABLE}"]
    return "\n".join(lines) + "\n"


def render_nft(capture: schema.Capture | None, node: str) -> str:
    """The whole ruleset of ``node``'s capture agent, for one ``nft -f`` transaction: its
    tables deleted, then re-added with one DNAT rule per captured ClusterIP:port to the
    node's proxy pod. Packets from the proxy pod itself are never captured (the proxy reaches
    endpoints by pod IP, but a backend given as a ClusterIP must not loop back). No capture,
    or no Ready proxy on the node: only the deletes (nothing is captured). A ClusterIP of
    another family than the proxy pod's IP cannot be redirected to it and is left out (a
    comment says so)."""
    text = remove_nft()
    proxy = capture.proxies.get(node) if capture is not None else None
    if capture is None or proxy is None:
        return text
    family = _family(proxy)
    rules = [f"{family} saddr {proxy} return"]
    skipped = []
    for each in sorted(capture.listeners, key=lambda c: (c.ip, c.service_port)):
        if _family(each.ip) != family:
            skipped.append(f"# not captured: {each.route} at {each.ip} (not {family})")
            continue
        rules.append(
            f"{family} daddr {each.ip} tcp dport {each.service_port} "
            f'dnat to {_target(proxy, each.port)} comment "{each.route}"'
        )
    body = "\n".join(f"\t\t{line}" for line in rules)
    text += "\n".join(skipped) + ("\n" if skipped else "")
    text += (
        f"table {family} {TABLE} {{\n"
        f"\tchain capture {{\n"
        f"\t\ttype nat hook prerouting priority {PRIORITY}; policy accept;\n"
        f"{body}\n"
        f"\t}}\n"
        f"}}\n"
    )
    return text
