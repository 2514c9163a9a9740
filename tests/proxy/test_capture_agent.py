"""The GAMMA capture agent for real (``simmesh capture``, mesh/proxy/capture.py): real nftables
rules in a real network namespace, real TCP connections.

Three network namespaces stand for a node: ``node`` (the node's own, where the agent runs and
routes between its pods), ``client`` (a pod) and ``proxy`` (the node proxy's pod, which also
plays a backend pod listening on its pod IP), joined to ``node`` by veth pairs. A connection
from the client to the fake ClusterIP:port must arrive at the proxy's capture listener with the
client's own IP as its source; one to the pod IP must not be captured; the proxy's own
connections to the ClusterIP are left alone; the rules follow the config, survive a bad one,
and are gone when the agent stops. Everything the test creates it deletes.

Needs root, ``ip`` (iproute2) and ``nft`` (nftables): skipped without them on a developer's
machine, failed under CI=true (.ci/run installs both).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from mesh.core.model import PortRange, Settings
from mesh.core.schema import MeshConfig
from tests.core.builders import app, compile_docs, exact, http_route, parent
from tests.core.test_tunnel_addresses import proxy as proxy_pod

ROOT = Path(__file__).resolve().parents[2]
SIMMESH = str(Path(sys.executable).with_name("simmesh"))


def _missing() -> str:
    if os.geteuid() != 0:
        return "network namespaces and nftables need root"
    if shutil.which("ip") is None:
        return "no ip command (Debian package iproute2)"
    if shutil.which("nft") is None:
        return "no nft command (Debian package nftables)"
    return ""


MISSING = _missing()
pytestmark = pytest.mark.skipif(
    bool(MISSING) and os.environ.get("CI") != "true", reason=MISSING or "runs"
)

CLIENT, NODE_C, PROXY, NODE_P = "10.250.1.2", "10.250.1.1", "10.250.2.2", "10.250.2.1"
CLUSTER_IP, OTHER_IP = "10.96.0.10", "10.96.0.11"
POOL = PortRange(12000, 4)

SERVER = textwrap.dedent(
    """
    import socket, selectors, sys
    sel = selectors.DefaultSelector()
    for port in [int(p) for p in sys.argv[1:]]:
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("0.0.0.0", port))
        s.listen(16)
        sel.register(s, selectors.EVENT_READ, port)
    print("ready", flush=True)
    while True:
        for key, _ in sel.select():
            conn, peer = key.fileobj.accept()
            conn.sendall(f"{key.data} {peer[0]}\\n".encode())
            conn.close()
    """
)
CLIENT_CODE = textwrap.dedent(
    """
    import socket, sys
    try:
        s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=2)
        print(s.recv(100).decode().strip())
    except OSError as exc:
        print(f"error {type(exc).__name__}")
    """
)


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, check=check, timeout=30)


@pytest.fixture
def netns() -> Iterator[dict[str, str]]:
    assert not MISSING, f"under CI=true this test must run: {MISSING}"
    tag = f"smc{os.getpid() % 100000}"
    names = {role: f"{tag}-{role}" for role in ("node", "client", "proxy")}
    try:
        for name in names.values():
            sh("ip", "netns", "add", name)
        node = ["ip", "netns", "exec", names["node"]]
        for role, (inner, outer), (ip, gw) in (
            ("client", ("c0", f"{tag}c"), (CLIENT, NODE_C)),
            ("proxy", ("p0", f"{tag}p"), (PROXY, NODE_P)),
        ):
            ns = ["ip", "netns", "exec", names[role]]
            sh("ip", "link", "add", inner, "netns", names[role], "type", "veth", "peer", "name",
               outer, "netns", names["node"])  # fmt: skip
            sh(*ns, "ip", "addr", "add", f"{ip}/24", "dev", inner)
            sh(*ns, "ip", "link", "set", inner, "up")
            sh(*ns, "ip", "link", "set", "lo", "up")
            sh(*ns, "ip", "route", "add", "default", "via", gw)
            sh(*node, "ip", "addr", "add", f"{gw}/24", "dev", outer)
            sh(*node, "ip", "link", "set", outer, "up")
        sh(*node, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        yield names
    finally:
        for name in names.values():
            sh("ip", "netns", "del", name, check=False)


def config(*parents: str) -> MeshConfig:
    """Services web (ClusterIP 10.96.0.10) and api (10.96.0.11); a route on each parent."""
    docs = [
        *app("web", ips=["10.250.2.2"], cluster_ip=CLUSTER_IP),
        *app("api", ips=["10.250.2.2"], cluster_ip=OTHER_IP),
        proxy_pod("simmesh-proxy-a", node="node-a", ip=PROXY),
    ]
    docs += [
        http_route(f"r-{name}", [parent(name)], [{"matches": [exact("/")]}]) for name in parents
    ]
    return compile_docs(docs, replace(Settings(capture=True), capture_ports=POOL))


def connect(names: dict[str, str], role: str, ip: str, port: int) -> str:
    run = sh("ip", "netns", "exec", names[role], sys.executable, "-c", CLIENT_CODE, ip, str(port))
    return run.stdout.strip()


def rules(names: dict[str, str]) -> str:
    listed = sh("ip", "netns", "exec", names["node"], "nft", "list", "table", "ip", "simmesh",
                check=False)  # fmt: skip
    return listed.stdout if listed.returncode == 0 else ""


def wait_for(check: Callable[[], bool], seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.1)
    return False


def test_the_agent_captures_cluster_ip_traffic_into_the_proxy_pod(
    netns: dict[str, str], tmp_path: Path
) -> None:
    first = config("web")
    capture = first.settings.capture
    assert capture is not None
    (web,) = capture.listeners
    path = tmp_path / "config.json"
    path.write_text(first.to_json())
    ports = [str(p) for p in POOL.ports()] + ["80"]
    server = subprocess.Popen(
        ["ip", "netns", "exec", netns["proxy"], sys.executable, "-c", SERVER, *ports],
        stdout=subprocess.PIPE,
        text=True,
    )
    agent = subprocess.Popen(
        [
            "ip",
            "netns",
            "exec",
            netns["node"],
            SIMMESH,
            "capture",
            "--config",
            str(path),
            "--node",
            "node-a",
        ],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        assert wait_for(lambda: f"dnat to {PROXY}:{web.port}" in rules(netns)), rules(netns)
        # the ClusterIP: at the capture listener, from the client's own IP
        assert connect(netns, "client", CLUSTER_IP, 80) == f"{web.port} {CLIENT}"
        # the pod IP: never captured
        assert connect(netns, "client", PROXY, 80) == f"80 {CLIENT}"
        # another Service's ClusterIP, another port: not captured (nothing answers there)
        assert connect(netns, "client", OTHER_IP, 80).startswith("error")
        assert connect(netns, "client", CLUSTER_IP, 81).startswith("error")
        # the proxy's own connections to a ClusterIP are left alone
        assert connect(netns, "proxy", CLUSTER_IP, 80).startswith("error")

        # the config changes: api is captured instead of web
        second = config("api")
        assert second.settings.capture is not None
        (api,) = second.settings.capture.listeners
        path.write_text(second.to_json())
        assert wait_for(lambda: OTHER_IP in rules(netns) and CLUSTER_IP not in rules(netns))
        assert connect(netns, "client", OTHER_IP, 80) == f"{api.port} {CLIENT}"
        assert connect(netns, "client", CLUSTER_IP, 80).startswith("error")

        # a config that cannot be read: the last good rules stay
        before = rules(netns)
        path.write_text('{"kind": "MeshConfig", "listeners": 3}')
        time.sleep(1.5)  # three polls of the file
        assert rules(netns) == before
        assert connect(netns, "client", OTHER_IP, 80) == f"{api.port} {CLIENT}"
        assert agent.poll() is None

        # stopped: its table is removed
        agent.send_signal(signal.SIGTERM)
        assert agent.wait(timeout=10) == 0
        assert rules(netns) == ""
        assert connect(netns, "client", OTHER_IP, 80).startswith("error")
        assert agent.stderr is not None
        log = agent.stderr.read()
        assert "not a usable MeshConfig" in log and "removed the capture rules" in log
    finally:
        for proc in (agent, server):
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=10)
            for stream in (proc.stdout, proc.stderr):
                if stream is not None:
                    stream.close()
