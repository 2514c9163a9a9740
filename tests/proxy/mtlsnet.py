"""Two nodes on loopback with mTLS between their proxies (certificates from mesh.identity's CA).

Node ``node-a``: proxy on 127.0.0.1, the client pod ``demo/client`` at 127.0.1.1 and the pod
``demo/local`` (service ``near``) at 127.0.3.1. Node ``node-b``: proxy on 127.0.0.2 and the pod
``demo/server`` (service ``far``) at 127.0.2.1; with ``flows``, that pod also serves the TCP
service ``db`` (an echo, :class:`~tests.proxy.harness.TcpWorkload`) and the h2c service
``grpc`` (:class:`~tests.proxy.harness.H2Backend`) and the UDP service ``dns`` (answers
``u0:<datagram>``), and ``demo/local`` the TCP service ``neardb``. Pod addresses are real
loopback addresses, so a test client binds 127.0.1.1 to be the client pod. A :class:`Tap` can
sit between the proxies and keep every byte that passes.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import msgspec
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from mesh.core.model import MtlsMode, Settings
from mesh.core.schema import MeshConfig
from mesh.identity import ca
from mesh.identity.spiffe import spiffe_id
from mesh.proxy.mtls import ALPN_PIPE, ALPN_STREAM, sni_name
from mesh.proxy.proxy import Proxy
from mesh.proxy.streams import HEADER, OPEN, REPLY, frame
from tests.proxy.harness import (
    backends,
    build,
    free_port,
    free_range,
    h2_backend,
    running_proxy,
    service,
    tcp_workload,
    udp_workload,
)

CLIENT_IP = "127.0.1.1"
FAR_IP = "127.0.2.1"  # demo/server on node-b
NEAR_IP = "127.0.3.1"  # demo/local on node-a
TRUST = "cluster.local"


class Authority:
    """A CA of ``trust_domain`` that writes certificate and key files into ``directory``."""

    def __init__(self, directory: Path, trust_domain: str = TRUST) -> None:
        self.directory = directory
        self.trust_domain = trust_domain
        self.now = datetime.now(UTC)
        self.signer = ca.generate_root(trust_domain=trust_domain, now=self.now)
        self.roots = directory / f"roots-{id(self)}.pem"
        self.roots.write_bytes(ca.cert_pem(self.signer.certificate))

    def issue(
        self, identity: str, *, lifetime: timedelta = timedelta(hours=1), uri: str | None = None
    ) -> tuple[Path, Path]:
        """Files of a certificate for ``identity`` (or with the URI SAN ``uri``, as the CA
        itself would never sign)."""
        key = ca.new_key()
        if uri is None:
            csr = ca.check_csr(
                ca.make_csr(key, spiffe_id(self.trust_domain, identity)),
                trust_domain=self.trust_domain,
            )
            certificate = ca.sign(self.signer, csr, now=datetime.now(UTC), lifetime=lifetime)
        else:
            certificate = self._forge(key, uri)
        base = self.directory / f"{identity.replace('/', '_')}-{id(certificate)}"
        cert_file, key_file = base.with_suffix(".crt"), base.with_suffix(".key")
        cert_file.write_bytes(ca.cert_pem(certificate))
        key_file.write_bytes(ca.key_pem(key))
        key_file.chmod(0o600)
        return cert_file, key_file

    def _forge(self, key: ca.PrivateKey, uri: str) -> x509.Certificate:
        now = datetime.now(UTC)
        return (
            x509.CertificateBuilder()
            .subject_name(x509.Name([]))
            .issuer_name(self.signer.certificate.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5))
            .not_valid_after(now + timedelta(hours=1))
            .add_extension(
                x509.SubjectAlternativeName([x509.UniformResourceIdentifier(uri)]), critical=True
            )
            .sign(self.signer.key, hashes.SHA256())
        )

    def client_context(self, identity: str, **issue: Any) -> ssl.SSLContext:
        """What a proxy holding ``identity`` would tunnel with (for rogue clients)."""
        cert, key = self.issue(identity, **issue)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.load_verify_locations(cafile=str(self.roots))
        context.load_cert_chain(str(cert), str(key))
        return context


def _pod(name: str, ip: str, account: str, node: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "demo", "labels": {"app": name}},
        "spec": {"serviceAccountName": account, "nodeName": node},
        "status": {"podIP": ip, "phase": "Running"},
    }


def _slice(
    service_name: str,
    ip: str,
    port: int,
    pod: str,
    node: str,
    port_name: str = "http",
    protocol: str = "TCP",
) -> dict[str, Any]:
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": f"{service_name}-0",
            "namespace": "demo",
            "labels": {"kubernetes.io/service-name": service_name},
        },
        "addressType": "IPv4",
        "ports": [{"name": port_name, "port": port, "protocol": protocol}],
        "endpoints": [
            {
                "addresses": [ip],
                "conditions": {"ready": True},
                "nodeName": node,
                "targetRef": {"kind": "Pod", "name": pod},
            }
        ],
    }


def grant(source: str, destination: str = "server", path: str = "/.*") -> list[dict[str, Any]]:
    """A TrafficTarget letting ServiceAccount ``source`` reach ``destination`` (any path, or
    those ``path`` starts: a grant that depends on the request)."""
    return [
        {
            "apiVersion": "specs.smi-spec.io/v1alpha4",
            "kind": "HTTPRouteGroup",
            "metadata": {"name": "all", "namespace": "demo"},
            "spec": {"matches": [{"name": "all", "pathRegex": path}]},
        },
        {
            "apiVersion": "access.smi-spec.io/v1alpha3",
            "kind": "TrafficTarget",
            "metadata": {"name": f"{source}-{destination}", "namespace": "demo"},
            "spec": {
                "destination": {"kind": "ServiceAccount", "name": destination, "namespace": "demo"},
                "sources": [{"kind": "ServiceAccount", "name": source, "namespace": "demo"}],
                "rules": [{"kind": "HTTPRouteGroup", "name": "all", "matches": ["all"]}],
            },
        },
    ]


@dataclass
class Net:
    config: MeshConfig
    a: Proxy
    b: Proxy
    http: int  # the HTTP listener port (both proxies)
    far: int  # the far and near backends' ports
    near: int
    authority: Authority
    tunnel_b: int  # node-b's tunnel port (the real one, behind any tap)
    extra: dict[str, Any] = field(default_factory=dict)

    def url(self, host: str, path: str = "/", proxy: str = "127.0.0.1") -> str:
        return f"http://{proxy}:{self.http}{path}"

    async def reconfigure(self, objects: Iterable[dict[str, Any]]) -> bool:
        """Apply the config of the same nodes with ``objects`` instead to both proxies."""
        self.config = self.extra["make"](objects)
        return bool(await self.b.apply(self.config)) and bool(await self.a.apply(self.config))

    def listener(self, service_name: str, protocol: str = "tcp") -> int:
        """The TCP (or UDP) listener port of ``demo/<service_name>`` (both proxies)."""
        return next(
            item.port
            for item in self.config.listeners
            if item.protocol == protocol
            and item.route is not None
            and f"/{service_name}:" in item.route
        )


@contextlib.asynccontextmanager
async def two_nodes(
    tmp: Path,
    *,
    mode: MtlsMode = MtlsMode.STRICT,
    acl: bool = False,
    objects: Iterable[dict[str, Any]] = (),
    tap: bool = False,
    held_a: dict[str, tuple[Path, Path]] | None = None,
    held_b: dict[str, tuple[Path, Path]] | None = None,
    authority: Authority | None = None,
    flows: bool = False,
    certificate_wait: float = 0.0,
    mtls_capable: bool = False,
    far_port: int | None = None,
    pipes: bool = True,
) -> AsyncIterator[Net]:
    """``far_port``: the far pod's backend already serves on FAR_IP at that port (run by
    another process: a benchmark measures the proxies' process alone)."""
    authority = authority or Authority(tmp)
    http = free_range(1)
    tcp = free_range(4)
    tunnel_a, tunnel_b = free_port(), free_port()
    async with contextlib.AsyncExitStack() as stack:
        if far_port is None:
            [(_, far)] = await stack.enter_async_context(backends(FAR_IP, name="far"))
        else:
            far = far_port
        [(_, near)] = await stack.enter_async_context(backends(NEAR_IP, name="near"))
        docs = [
            service("far"),
            service("near"),
            _pod("client", CLIENT_IP, "client", "node-a"),
            _pod("far", FAR_IP, "server", "node-b"),
            _pod("near", NEAR_IP, "local", "node-a"),
            _slice("far", FAR_IP, far, "far", "node-b"),
            _slice("near", NEAR_IP, near, "near", "node-a"),
        ]
        extra: dict[str, Any] = {}
        if flows:
            (_, db) = await stack.enter_async_context(tcp_workload(FAR_IP))
            (_, neardb) = await stack.enter_async_context(tcp_workload(NEAR_IP))
            (_, grpc) = await stack.enter_async_context(h2_backend(FAR_IP, name="grpc0"))
            (_, dns) = await stack.enter_async_context(udp_workload(FAR_IP, "u0"))
            extra.update(db=db, neardb=neardb, grpc=grpc, dns=dns)
            tcp_type = {"simmesh.io/traffic-type": "tcp"}
            docs += [
                service("db", ports=[("pg", 5432)], annotations=tcp_type),
                service("neardb", ports=[("pg", 5432)], annotations=tcp_type),
                service("grpc", annotations={"simmesh.io/scheme": "h2c"}),
                _slice("db", FAR_IP, db, "far", "node-b", "pg"),
                _slice("neardb", NEAR_IP, neardb, "near", "node-a", "pg"),
                _slice("grpc", FAR_IP, grpc, "far", "node-b"),
                service(
                    "dns",
                    ports=[("dns", 53)],
                    annotations={"simmesh.io/traffic-type": "udp"},
                    protocol="UDP",
                ),
                _slice("dns", FAR_IP, dns, "far", "node-b", "dns", "UDP"),
            ]
        settings = Settings(acl=acl, mtls=mode, trust_domain=authority.trust_domain)
        from mesh.core.model import PortRange

        settings = replace(
            settings,
            http_ports=PortRange(http, 1),
            tcp_ports=PortRange(tcp, 4),
            udp_ports=PortRange(free_range(2), 2),
        )
        b_address = tunnel_b
        taps: list[Tap] = []
        if tap:
            relay = Tap("127.0.0.2", tunnel_b)
            b_address = await relay.start()
            stack.push_async_callback(relay.stop)
            taps.append(relay)

        def make(objects: Iterable[dict[str, Any]]) -> MeshConfig:
            config = build([*docs, *objects], settings)
            assert config.settings.mtls is not None
            mtls = msgspec.structs.replace(
                config.settings.mtls,
                proxies={"node-a": f"127.0.0.1:{tunnel_a}", "node-b": f"127.0.0.2:{b_address}"},
            )
            return msgspec.structs.replace(
                config, settings=msgspec.structs.replace(config.settings, mtls=mtls)
            )

        config = make(objects)
        a = await stack.enter_async_context(
            running_proxy(
                None,
                node="node-a",
                bind="127.0.0.1",
                tunnel_port=tunnel_a,
                tunnel_pipes=pipes,
                certificate_wait=certificate_wait,
                mtls_capable=mtls_capable,
            )
        )
        b = await stack.enter_async_context(
            running_proxy(
                None,
                node="node-b",
                bind="127.0.0.2",
                tunnel_port=tunnel_b,
                certificate_wait=certificate_wait,
                mtls_capable=mtls_capable,
            )
        )
        a.load_certificates(
            trust_domain=authority.trust_domain,
            roots=authority.roots,
            held=held_a if held_a is not None else {"demo/client": authority.issue("demo/client")},
        )
        b.load_certificates(
            trust_domain=authority.trust_domain,
            roots=authority.roots,
            held=held_b if held_b is not None else {"demo/server": authority.issue("demo/server")},
        )
        await a.apply(config)
        await b.apply(config)
        net = Net(config, a, b, http, far, near, authority, tunnel_b)
        net.extra["taps"] = taps
        net.extra["make"] = make
        net.extra.update(extra)
        yield net


class Tap:
    """A TCP relay that keeps what passes from the client side to ``host:port``."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.seen = bytearray()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._relay, "127.0.0.2", 0)
        return int(self._server.sockets[0].getsockname()[1])

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(self.host, self.port)

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter, keep: bool) -> None:
            with contextlib.suppress(ConnectionError):
                while data := await src.read(65536):
                    if keep:
                        self.seen.extend(data)
                    dst.write(data)
                    await dst.drain()
            with contextlib.suppress(ConnectionError, RuntimeError):
                dst.close()

        await asyncio.gather(pipe(reader, up_writer, True), pipe(up_reader, writer, False))

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()


async def tunnel_request(
    port: int,
    context: ssl.SSLContext,
    *,
    identity: str = "demo/server",
    target: str,
    cluster: str,
    path: str = "/hello",
    extra: str = "",
    host: str = "127.0.0.2",
) -> bytes:
    """One request straight to a tunnel port, as a (possibly rogue) source proxy sends it;
    what came back (b"" when the connection was refused)."""
    reader, writer = await asyncio.open_connection(
        host, port, ssl=context, server_hostname=sni_name(identity)
    )
    head = (
        f"GET {path} HTTP/1.1\r\nHost: far.demo.mesh\r\nSimmesh-Target: {target}\r\n"
        f"Simmesh-Cluster: {cluster}\r\n{extra}Connection: close\r\n\r\n"
    )
    try:
        writer.write(head.encode())
        return await asyncio.wait_for(reader.read(-1), 5)
    except (ConnectionError, ssl.SSLError):
        return b""
    finally:
        writer.close()


async def pipe_requests(
    port: int,
    context: ssl.SSLContext,
    *,
    target: str,
    cluster: str,
    paths: list[str],
    identity: str = "demo/server",
    host: str = "127.0.0.2",
) -> list[bytes]:
    """A pipe opened straight at a tunnel port, as a (possibly rogue) source proxy opens one:
    the answer line, then one GET per path, each with the target's lines when the answer is
    per request (``=``); the answer line and each response, in order."""
    context.set_alpn_protocols([ALPN_PIPE])
    reader, writer = await asyncio.open_connection(
        host, port, ssl=context, server_hostname=sni_name(identity)
    )
    try:
        writer.write(f"{cluster} {target}\r\n".encode())
        answer = await asyncio.wait_for(reader.readline(), 5)
        lines = (
            ""
            if answer == b"+\r\n"
            else f"Simmesh-Target: {target}\r\nSimmesh-Cluster: {cluster}\r\n"
        )
        out = [answer]
        for path in paths:
            writer.write(f"GET {path} HTTP/1.1\r\nHost: far.demo.mesh\r\n{lines}\r\n".encode())
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            length = next(
                int(line.split(b":", 1)[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            )
            out.append(head + await asyncio.wait_for(reader.readexactly(length), 5))
        return out
    finally:
        writer.close()


async def stream_open(
    port: int,
    context: ssl.SSLContext,
    *,
    target: str,
    cluster: str,
    identity: str = "demo/server",
    host: str = "127.0.0.2",
    udp: bool = False,
) -> tuple[str, asyncio.StreamReader, asyncio.StreamWriter]:
    """OPEN a raw stream (``udp``: a UDP session) straight at a tunnel port, as a (possibly
    rogue) source proxy does; the REPLY and the connection."""
    context.set_alpn_protocols([ALPN_STREAM])
    reader, writer = await asyncio.open_connection(
        host, port, ssl=context, server_hostname=sni_name(identity)
    )
    head = f"Simmesh-Target: {target}\r\nSimmesh-Cluster: {cluster}\r\n".encode()
    if udp:
        head += b"Simmesh-Protocol: udp\r\n"
    writer.write(frame(OPEN, head))
    kind, length = HEADER.unpack(await asyncio.wait_for(reader.readexactly(5), 5))
    assert kind == REPLY
    return (await reader.readexactly(length)).decode(), reader, writer
