"""A real CoreDNS answers ``web.shop.mesh`` with the shadow Service's ClusterIP.

For each DNS variant, ``simmesh prepare`` writes its configuration into the real apiserver; the
test reads it back, runs the ``coredns`` binary on it (on loopback, its ``kubernetes`` plugin
pointed at the test apiserver, its ``forward`` at a dead loopback port so nothing leaves the
machine) and sends real DNS queries over UDP:

- CoreDNS: the prepared Corefile of ConfigMap kube-system/coredns;
- coredns-custom (AKS, k3s): the cluster's Corefile importing ``custom/*.server`` files, one of
  them the ``simmesh.server`` key;
- kube-dns: the Corefile of the mesh-owned CoreDNS that kube-dns's stubDomain points at.
"""

from __future__ import annotations

import argparse
import re
import socket
import struct
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from mesh.dns import cli
from tests.dns.corefiles import KUBEADM

try:
    from . import apiserver as k8s_harness
except ImportError:
    import apiserver as k8s_harness  # type: ignore[no-redef]

pytestmark = pytest.mark.k8s

Cluster = k8s_harness.Cluster
KS = "kube-system"
CONTEXT = "simmesh-test"  # the harness's kubeconfig context
K3S = KUBEADM.replace(
    "    loadbalance\n}\n", "    loadbalance\n}\nimport /etc/coredns/custom/*.server\n"
)


# --------------------------------------------------------------------------- DNS on the wire


def dns_query(port: int, name: str, *, timeout: float = 2.0) -> tuple[int, list[tuple[str, str]]]:
    """One A query to 127.0.0.1:port over UDP: (rcode, [(answer name, IPv4)])."""
    query_id = int.from_bytes(uuid.uuid4().bytes[:2], "big")
    labels = b"".join(bytes([len(p)]) + p.encode() for p in name.rstrip(".").split("."))
    packet = struct.pack("!6H", query_id, 0x0100, 1, 0, 0, 0) + labels + b"\0" + b"\0\1\0\1"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        sock.sendto(packet, ("127.0.0.1", port))
        reply = sock.recv(4096)
    reply_id, flags, questions, answers = struct.unpack_from("!4H", reply)
    assert reply_id == query_id
    offset = 12
    for _ in range(questions):
        offset = _read_name(reply, offset)[1] + 4
    records = []
    for _ in range(answers):
        owner, offset = _read_name(reply, offset)
        rtype, _, _, length = struct.unpack_from("!HHIH", reply, offset)
        offset += 10
        if rtype == 1:
            records.append((owner, socket.inet_ntoa(reply[offset : offset + length])))
        offset += length
    return flags & 0xF, records


def _read_name(msg: bytes, offset: int) -> tuple[str, int]:
    """A possibly compressed name at offset: (dotted name, offset after it)."""
    labels: list[str] = []
    end = None
    while msg[offset]:
        if msg[offset] & 0xC0 == 0xC0:
            end = end or offset + 2
            offset = struct.unpack_from("!H", msg, offset)[0] & 0x3FFF
            continue
        length = msg[offset]
        labels.append(msg[offset + 1 : offset + 1 + length].decode())
        offset += 1 + length
    return ".".join(labels) + ".", end or offset + 1


# --------------------------------------------------------------------------- running CoreDNS


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def free_dns_port() -> int:
    """A loopback port free for UDP and TCP both (CoreDNS listens on both)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind(("127.0.0.1", 0))
            port = int(udp.getsockname()[1])
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
                try:
                    tcp.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port
    raise AssertionError("no loopback port free for both UDP and TCP")


def localize(corefile: str, *, port: int, kubeconfig: str, custom_dir: Path) -> tuple[str, int]:
    """The Corefile made to run here: every server on 127.0.0.1:port, the kubernetes plugin on
    the test apiserver, health/ready/prometheus on free loopback ports, forward to a dead
    loopback port. Returns it and the ready plugin's port (0: none)."""
    dead, ready, out = free_port(socket.SOCK_DGRAM), 0, []
    for line in corefile.replace("\r\n", "\n").splitlines():
        words, indent = line.split(), line[: len(line) - len(line.lstrip())]
        opens = " {" if words and words[-1] == "{" else ""
        if words and not indent and opens and not words[0].startswith(("#", "(")):
            out += [re.sub(r":53\b", f":{port}", line), f"{indent}    bind 127.0.0.1"]
            continue
        if words[:1] == ["kubernetes"]:
            config = f"{indent}   kubeconfig {kubeconfig} {CONTEXT}"
            out += [line, config] if opens else [line + " {", config, f"{indent}}}"]
            continue
        if words[:1] in (["health"], ["ready"], ["prometheus"]):
            plugin_port = free_port()
            ready = ready or (plugin_port if words[0] == "ready" else 0)
            line = f"{indent}{words[0]} 127.0.0.1:{plugin_port}{opens}"
        elif words[:2] == ["forward", "."]:
            line = f"{indent}forward . 127.0.0.1:{dead}{opens}"
        elif words[:1] == ["lameduck"]:  # stop at once, not after 5s of lame duck
            continue
        elif words[:1] == ["import"]:
            line = line.replace("/etc/coredns/custom", str(custom_dir))
        out.append(line)
    return "\n".join(out) + "\n", ready


class CoreDNS:
    """The coredns binary on loopback; stopped by stop() (the fixture makes sure)."""

    def __init__(self, binary: Path, workdir: Path) -> None:
        self.binary, self.workdir = binary, workdir
        self.port = 0
        self.log = workdir / "coredns.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, files: dict[str, str], kubeconfig: str, *, attempts: int = 3) -> None:
        """Run CoreDNS on ``files`` (the Corefile and any custom/*.server) until it answers.
        Another process may take a picked port before CoreDNS binds it: then new ports."""
        for _ in range(attempts):
            self.port = free_dns_port()
            ready = self._write(files, kubeconfig)
            argv = [str(self.binary), "-conf", "Corefile", "-dns.port", str(self.port)]
            with self.log.open("wb") as log:
                self.proc = subprocess.Popen(argv, cwd=self.workdir, stdout=log, stderr=log)
            if self._wait_serving(ready):
                return
        raise AssertionError(f"CoreDNS could not bind its ports:\n{self.tail()}")

    def _write(self, files: dict[str, str], kubeconfig: str) -> int:
        custom = self.workdir / "custom"
        custom.mkdir(exist_ok=True)
        ready = 0
        for name, text in files.items():
            local, port = localize(text, port=self.port, kubeconfig=kubeconfig, custom_dir=custom)
            if name == "Corefile":
                (self.workdir / "Corefile").write_text(local)
                ready = port
            else:
                (custom / name).write_text(local)
        assert ready, "the Corefile under test has no ready plugin"
        return ready

    def _wait_serving(self, ready: int, timeout: float = 30.0) -> bool:
        """True once /ready says 200 and DNS answers (CoreDNS reports ready before its DNS
        listeners are up); False when it exited because a port was taken."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                assert "address already in use" in self.tail(), self.tail()
                return False
            if self._ready(ready) and self._answers():
                return True
            time.sleep(0.1)
        raise AssertionError(f"CoreDNS not serving in {timeout}s:\n{self.tail()}")

    @staticmethod
    def _ready(port: int) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=1) as answer:
                return bool(answer.status == 200)
        except OSError:
            return False

    def _answers(self) -> bool:
        try:
            dns_query(self.port, "probe.probe.mesh", timeout=0.3)
        except OSError:  # TimeoutError included: not listening yet
            return False
        return True

    def resolve(self, name: str, *, timeout: float = 15.0) -> tuple[int, list[tuple[str, str]]]:
        """The first answer with records (the plugin may lag the apiserver), else the last one
        once ``timeout`` has passed."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                answer = dns_query(self.port, name, timeout=0.5)
            except TimeoutError:  # UDP: a lost datagram is asked again
                if time.monotonic() > deadline:
                    raise AssertionError(f"no DNS answer for {name}:\n{self.tail()}") from None
                continue
            if answer[1] or time.monotonic() > deadline:
                return answer
            time.sleep(0.1)

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


@pytest.fixture
def coredns(coredns_binary: Path, tmp_path: Path) -> Iterator[CoreDNS]:
    server = CoreDNS(coredns_binary, tmp_path)
    try:
        yield server
    finally:
        server.stop()


# --------------------------------------------------------------------------- the cluster side


@pytest.fixture
def shop(clean_dns: Cluster, dns_mesh_namespace: str) -> Iterator[dict[str, str]]:
    """Service shop/web and its shadow in the mesh namespace; their ClusterIPs. A shop/web
    another test left behind is used as it is, and left alone."""
    clean_dns.request("POST", "/api/v1/namespaces", {"metadata": {"name": "shop"}})
    ports = {"ports": [{"name": "http", "port": 80, "targetPort": 8080}]}
    status, web = clean_dns.request(
        "POST", "/api/v1/namespaces/shop/services", {"metadata": {"name": "web"}, "spec": ports}
    )
    if status == 409:
        web = clean_dns.get("/api/v1/namespaces/shop/services/web")
    labels = {"simmesh.io/shadow": "true", "app.kubernetes.io/managed-by": "simmesh"}
    shadow = clean_dns.create(
        f"/api/v1/namespaces/{dns_mesh_namespace}/services",
        {"metadata": {"name": "web-6d61657368-shop", "labels": labels}, "spec": ports},
    )
    try:
        yield {"web": web["spec"]["clusterIP"], "shadow": shadow["spec"]["clusterIP"]}
    finally:
        if status != 409:
            clean_dns.request("DELETE", "/api/v1/namespaces/shop/services/web")


def run_cli(
    add: Callable[[argparse.ArgumentParser], None],
    runner: Callable[[argparse.Namespace], int],
    cluster: Cluster,
    namespace: str,
) -> None:
    parser = argparse.ArgumentParser()
    add(parser)
    args = parser.parse_args(["--kubeconfig", cluster.kubeconfig, "--namespace", namespace])
    assert runner(args) == 0


def deployment(name: str, image: str) -> dict[str, Any]:
    labels = {"k8s-app": "kube-dns"}
    return {
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {"containers": [{"name": name, "image": image}]},
            },
        },
    }


def configmap(name: str, data: dict[str, str]) -> dict[str, Any]:
    return {"metadata": {"name": name}, "data": data}


def setup_coredns(cluster: Cluster) -> None:
    cluster.create(
        f"/api/v1/namespaces/{KS}/configmaps", configmap("coredns", {"Corefile": KUBEADM})
    )
    cluster.create(
        f"/apis/apps/v1/namespaces/{KS}/deployments", deployment("coredns", "coredns:1.11.3")
    )


def setup_custom(cluster: Cluster) -> None:
    cluster.create(f"/api/v1/namespaces/{KS}/configmaps", configmap("coredns", {"Corefile": K3S}))
    cluster.create(f"/api/v1/namespaces/{KS}/configmaps", configmap("coredns-custom", {}))
    cluster.create(
        f"/apis/apps/v1/namespaces/{KS}/deployments", deployment("coredns", "coredns:1.11.3")
    )


def setup_kube_dns(cluster: Cluster) -> None:
    image = "registry.k8s.io/dns/k8s-dns-kube-dns:1.22.28"
    cluster.create(f"/apis/apps/v1/namespaces/{KS}/deployments", deployment("kube-dns", image))


def files_coredns(cluster: Cluster, _: str) -> dict[str, str]:
    return {
        "Corefile": cluster.get(f"/api/v1/namespaces/{KS}/configmaps/coredns")["data"]["Corefile"]
    }


def files_custom(cluster: Cluster, _: str) -> dict[str, str]:
    custom = cluster.get(f"/api/v1/namespaces/{KS}/configmaps/coredns-custom")["data"]
    return {**files_coredns(cluster, _), **custom}


def files_kube_dns(cluster: Cluster, namespace: str) -> dict[str, str]:
    mesh = cluster.get(f"/api/v1/namespaces/{namespace}/configmaps/simmesh-coredns")["data"]
    return {"Corefile": mesh["Corefile"]}


VARIANTS = {
    "coredns": (setup_coredns, files_coredns),
    "coredns-custom": (setup_custom, files_custom),
    "kube-dns": (setup_kube_dns, files_kube_dns),
}


# --------------------------------------------------------------------------- the test


@pytest.mark.parametrize("variant", VARIANTS)
def test_mesh_names_resolve_to_the_shadow_service(
    variant: str,
    clean_dns: Cluster,
    dns_mesh_namespace: str,
    shop: dict[str, str],
    coredns: CoreDNS,
) -> None:
    setup, files = VARIANTS[variant]
    setup(clean_dns)
    run_cli(cli.add_prepare_arguments, cli.run_prepare, clean_dns, dns_mesh_namespace)
    try:
        coredns.start(files(clean_dns, dns_mesh_namespace), clean_dns.kubeconfig)
        assert coredns.resolve("web.shop.mesh") == (0, [("web.shop.mesh.", shop["shadow"])])
        assert coredns.resolve("WEB.Shop.Mesh.") == (0, [("web.shop.mesh.", shop["shadow"])])
        assert coredns.resolve("nope.shop.mesh", timeout=0) == (3, [])  # NXDOMAIN
        # Names of the zone that are no <svc>.<ns>.mesh: NXDOMAIN from the block itself, at
        # once (they were forwarded upstream, here to a dead port: no answer in time).
        for stray in ("mesh", "shop.mesh", "a.web.shop.mesh", "web_1.shop.mesh"):
            assert coredns.resolve(stray, timeout=0) == (3, []), stray
        if variant != "kube-dns":  # the cluster's own names still resolve beside the block
            assert coredns.resolve("web.shop.svc.cluster.local") == (
                0,
                [("web.shop.svc.cluster.local.", shop["web"])],
            )
    finally:
        coredns.stop()
        run_cli(cli.add_cleanup_arguments, cli.run_cleanup, clean_dns, dns_mesh_namespace)
