"""Mutual TLS between node proxies: the TLS material, the hop to another node, the peer's identity.

A request whose endpoint is a pod of another node travels from this proxy to that node's proxy
over mutual TLS 1.3 on the tunnel port (``--tunnel-port``, 15008 as Istio's HBONE), and is
delivered there to the pod (:mod:`mesh.proxy.inbound`). What travels is the HTTP/1.1 request
the proxy would have sent the pod, with two header lines the destination takes off again:
``Simmesh-Target: <pod ip>:<port>`` and ``Simmesh-Cluster: <cluster key>``; connections are
kept alive and pooled (:mod:`mesh.proxy.upstream_raw`), one pool per (destination node,
calling identity, destination identity), so a handshake is paid once per pool connection,
not per request.

- **Client certificate**: the *calling* workload's (the source-IP identity of the local pod
  that called, one certificate per local ServiceAccount): the destination learns the caller
  from the certificate's URI SAN, never from an address or a header.
- **Server certificate**: the destination workload's, chosen by SNI (a digest of its SPIFFE
  ID, :func:`sni_name`): the source checks that the peer proved the identity the config
  gives the endpoint, so a proxy of another node cannot pose as the pod's.
- **Verification**: chain against the trust bundle (both roots during a rotation), TLS 1.3
  only, exactly one URI SAN, a ServiceAccount's SPIFFE ID of this trust domain
  (:meth:`TunnelTls.peer_identity`).

:class:`TunnelTls` holds the contexts (rebuilt whole by :meth:`TunnelTls.load` at each
certificate change: new connections use the new certificates, open ones keep the session they
authenticated) and counts handshakes, failures by reason and open tunnels for ``/metrics``.
"""

from __future__ import annotations

import asyncio
import hashlib
import ssl
from collections.abc import Awaitable, Callable, Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol, TypeVar, cast

from mesh.core.policies import Failure
from mesh.core.routing import Endpoint, Router
from mesh.identity.spiffe import IdentityError, parse, spiffe_id
from mesh.proxy.metrics import Metrics
from mesh.proxy.upstream import TunnelHop, UpstreamError

TUNNEL_PORT = 15008
# What a tunnel connection carries, chosen by ALPN when it is opened (docs/security.md):
ALPN = "simmesh-tunnel/1"  # HTTP/1.1 requests, each with the target's two header lines
ALPN_H2 = "simmesh-h2/1"  # HTTP/2 (h2c and gRPC upstreams): the target's lines on each stream
ALPN_STREAM = "simmesh-stream/1"  # one raw byte stream (a TCP flow) at a time (mesh.proxy.streams)
ALPN_PIPE = "simmesh-pipe/1"  # HTTP/1.1 to one pod, its target named once (mesh.proxy.pipe)
PROTOCOLS = (ALPN, ALPN_H2, ALPN_STREAM, ALPN_PIPE)
TARGET = "simmesh-target"  # header names, lower case: the destination takes them off
CLUSTER = "simmesh-cluster"
_SNI_SUFFIX = ".id.simmesh.invalid"

# ssl.SSLError reasons -> bounded metric labels
_REASONS = {
    "WRONG_VERSION_NUMBER": "not-tls",
    "HTTP_REQUEST": "not-tls",
    "UNEXPECTED_EOF_WHILE_READING": "closed",
    "CERTIFICATE_VERIFY_FAILED": "untrusted-certificate",
    "TLSV1_ALERT_UNKNOWN_CA": "untrusted-certificate",
    "SSLV3_ALERT_BAD_CERTIFICATE": "untrusted-certificate",
    "TLSV13_ALERT_CERTIFICATE_REQUIRED": "no-client-certificate",
    "PEER_DID_NOT_RETURN_A_CERTIFICATE": "no-client-certificate",
    "UNSUPPORTED_PROTOCOL": "tls-version",
    "TLSV1_ALERT_PROTOCOL_VERSION": "tls-version",
    "TLSV1_UNRECOGNIZED_NAME": "unknown-identity",
    "TLSV1_ALERT_UNRECOGNIZED_NAME": "unknown-identity",
}


def sni_name(identity: str) -> str:
    """The SNI that asks a destination proxy for ``identity``'s certificate."""
    return hashlib.sha256(identity.encode()).hexdigest()[:32] + _SNI_SUFFIX


def failure_reason(exc: BaseException) -> str:
    """A bounded label for why a handshake failed."""
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, ssl.SSLError):
        return _REASONS.get(str(exc.reason), "handshake")
    if isinstance(exc, ConnectionError):
        return "closed"
    return "other"


class PeerRefused(Exception):
    """The peer's certificate does not prove an acceptable identity; ``reason`` is the label."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


# what the destination proxy answers when it could not reach its pod: the failure the source
# proxy records (and retries by its rules) instead of relaying the answer
_TUNNEL_FAILURES = {
    "upstream-connect-failed": Failure.CONNECT,
    "upstream-reset": Failure.RESET,
    "upstream-timeout": Failure.TIMEOUT,
}


def _signed_by(certificate: Any, roots: Iterable[Any]) -> str | None:
    """The fingerprint of the root among ``roots`` that signed ``certificate`` (None: none)."""
    from cryptography.exceptions import InvalidSignature

    from mesh.identity.ca import fingerprint

    for root in roots:
        if root.subject != certificate.issuer:
            continue
        try:
            certificate.verify_directly_issued_by(root)
        except (ValueError, TypeError, InvalidSignature):
            continue
        return fingerprint(root)
    return None


def tunnel_failure(status: int, items: Iterable[tuple[str, str]]) -> Failure | None:
    """The failure a destination proxy's own 5xx answer reports (None: a pod's answer)."""
    if status < 502:
        return None
    for name, value in items:
        if name.lower() == "x-simmesh-reason":
            return _TUNNEL_FAILURES.get(value)
    return None


class _Material:
    __slots__ = (
        "certificate",
        "clients",
        "fingerprint",
        "key",
        "not_after",
        "not_before",
        "pem",
        "root",
        "server",
        "spiffe_id",
    )

    def __init__(
        self,
        certificate: Path,
        key: Path,
        not_before: datetime,
        not_after: datetime,
        *,
        spiffe_id: str = "",
        fingerprint: str = "",
    ) -> None:
        self.certificate = certificate
        self.key = key
        self.not_before = not_before  # when it was issued (its notBefore is back-dated)
        self.not_after = not_after
        self.spiffe_id = spiffe_id  # its URI SAN
        self.fingerprint = fingerprint  # sha256:<hex> of the DER certificate
        self.root: str | None = None  # the fingerprint of the trust root that signed it
        self.pem = b""  # the certificate file's bytes its contexts were built from
        self.clients: dict[str, ssl.SSLContext] = {}  # per ALPN protocol
        self.server: ssl.SSLContext | None = None


class Root:
    """A trust root the tunnels verify with (public facts only, for /certificates)."""

    __slots__ = ("fingerprint", "not_after", "subject")

    def __init__(self, fingerprint: str, subject: str, not_after: datetime) -> None:
        self.fingerprint = fingerprint
        self.subject = subject
        self.not_after = not_after


class TunnelTls:
    """The certificates this proxy tunnels with, and the tunnels' counters."""

    def __init__(self, metrics: Metrics, *, node: str, port: int = TUNNEL_PORT) -> None:
        self.metrics = metrics
        self.node = node
        self.port = port
        self.trust_domain = ""
        self.roots: Path | None = None
        self._held: dict[str, _Material] = {}
        self.trust_roots: tuple[Root, ...] = ()
        self._by_sni: dict[str, ssl.SSLContext] = {}
        self.server: ssl.SSLContext | None = None
        self.open = {"client": 0, "server": 0}
        self.loads = 0
        self.built = 0  # identities whose contexts were built, counted over every load
        self._roots_pem = b""
        # hop's answers for the router of the moment and these contexts (a hop is read only)
        self._hops: dict[tuple[str, str, str, str, bool], TunnelHop | str | None] = {}
        self._hops_router: Router | None = None

    # -- material -----------------------------------------------------------------------------

    def load(
        self, *, trust_domain: str, roots: Path, held: Mapping[str, tuple[Path, Path]]
    ) -> None:
        """Take the certificates held now (identity -> certificate and key files) and the
        roots file. An identity's contexts are built again only when its certificate (renewed)
        or the roots changed: five TLS contexts cost about 3 ms each (OpenSSL 3), and a node
        of a busy cluster holds dozens of identities while one of them changes at a time (a
        full rebuild per change kept the event loop busy for seconds, and tunnel handshakes
        timed out, on kind)."""
        # cryptography (8-9 MB resident) only once there are certificates: a proxy with mTLS
        # off never imports it
        from cryptography import x509

        from mesh.identity.ca import CLOCK_SKEW, fingerprint

        roots_pem = roots.read_bytes()
        same_roots = roots_pem == self._roots_pem and roots == self.roots
        root_certificates: list[x509.Certificate] | None = None  # parsed when needed
        material = {}
        for identity, (cert_file, key_file) in sorted(held.items()):
            pem = cert_file.read_bytes()
            old = self._held.get(identity)
            if (
                same_roots
                and old is not None
                and (old.pem, old.certificate, old.key) == (pem, cert_file, key_file)
            ):
                material[identity] = old
                continue
            first = x509.load_pem_x509_certificates(pem)[0]
            item = _Material(
                cert_file,
                key_file,
                first.not_valid_before_utc + CLOCK_SKEW,
                first.not_valid_after_utc,
                spiffe_id=_uri_san(first),
                fingerprint=fingerprint(first),
            )
            if root_certificates is None:
                root_certificates = x509.load_pem_x509_certificates(roots_pem)
            item.root = _signed_by(first, root_certificates)
            item.clients = {
                alpn: self._context(ssl.PROTOCOL_TLS_CLIENT, roots, item, alpn)
                for alpn in PROTOCOLS
            }
            item.server = self._context(ssl.PROTOCOL_TLS_SERVER, roots, item)
            item.pem = pem
            material[identity] = item
            self.built += 1
        server = self.server
        if server is None or not same_roots:
            server = self._context(ssl.PROTOCOL_TLS_SERVER, roots, None)
            server.sni_callback = self._sni
        self.trust_domain = trust_domain
        self.roots = roots
        self._by_sni = {
            sni_name(identity): item.server
            for identity, item in material.items()
            if item.server is not None
        }
        self._held = material
        if not same_roots or not self.trust_roots:
            self.trust_roots = tuple(
                Root(fingerprint(c), c.subject.rfc4514_string(), c.not_valid_after_utc)
                for c in x509.load_pem_x509_certificates(roots_pem)
            )
        self._roots_pem = roots_pem
        self.server = server
        self._hops = {}
        self.loads += 1

    def clear(self) -> None:
        self._hops = {}
        self._held = {}
        self._roots_pem = b""
        self.trust_roots = ()
        self._by_sni = {}
        self.server = None
        self.trust_domain = ""

    @staticmethod
    def _context(
        protocol: int, roots: Path, item: _Material | None, alpn: str | None = None
    ) -> ssl.SSLContext:
        context = ssl.SSLContext(protocol)
        context.minimum_version = ssl.TLSVersion.TLSv1_3
        if protocol == ssl.PROTOCOL_TLS_CLIENT:
            context.check_hostname = False  # the peer's SPIFFE ID is checked instead
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(cafile=str(roots))
        # a client asks for one protocol; a server offers them all
        context.set_alpn_protocols([alpn] if alpn is not None else list(PROTOCOLS))
        if item is not None:
            context.load_cert_chain(str(item.certificate), str(item.key))
        return context

    def _sni(self, sock: ssl.SSLObject | ssl.SSLSocket, name: str | None, _: Any) -> int | None:
        context = self._by_sni.get(name or "")
        if context is None:
            return ssl.ALERT_DESCRIPTION_UNRECOGNIZED_NAME
        sock.context = context
        return None

    def holds(self, identity: str) -> bool:
        return identity in self._held

    @property
    def identities(self) -> list[str]:
        return sorted(self._held)

    def certificate_age(self, now: datetime | None = None) -> float | None:
        """Seconds since the oldest certificate held was issued (None: none held)."""
        if not self._held:
            return None
        now = now or datetime.now(UTC)
        oldest = min(item.not_before for item in self._held.values())
        return max(0.0, (now - oldest).total_seconds())

    def certificates(self, now: datetime | None = None) -> dict[str, Any]:
        """What the tunnels hold, as public facts (no key, no file path): per identity its
        SPIFFE ID, when it was issued and expires, its age and the time left; the roots."""
        now = now or datetime.now(UTC)
        return {
            "trustDomain": self.trust_domain or None,
            "identities": [
                {
                    "identity": identity,
                    "spiffeId": item.spiffe_id,
                    "fingerprint": item.fingerprint,
                    "root": item.root,  # which trust root signed it (a rotation's progress)
                    "issued": item.not_before.isoformat(),
                    "notAfter": item.not_after.isoformat(),
                    "lifetimeSeconds": round((item.not_after - item.not_before).total_seconds()),
                    "ageSeconds": round(max(0.0, (now - item.not_before).total_seconds()), 3),
                    "secondsToExpiry": round((item.not_after - now).total_seconds(), 3),
                }
                for identity, item in sorted(self._held.items())
            ],
            "roots": [
                {
                    "fingerprint": root.fingerprint,
                    "subject": root.subject,
                    "notAfter": root.not_after.isoformat(),
                    "secondsToExpiry": round((root.not_after - now).total_seconds(), 3),
                }
                for root in self.trust_roots
            ],
        }

    def expiries(self, now: datetime | None = None) -> list[tuple[str, float, float]]:
        """(identity, seconds since issued, seconds to expiry) per certificate held."""
        now = now or datetime.now(UTC)
        return [
            (
                identity,
                max(0.0, (now - item.not_before).total_seconds()),
                (item.not_after - now).total_seconds(),
            )
            for identity, item in sorted(self._held.items())
        ]

    def root_expiries(self, now: datetime | None = None) -> list[tuple[str, float]]:
        """(fingerprint, seconds to expiry) per trust root."""
        now = now or datetime.now(UTC)
        return [(r.fingerprint, (r.not_after - now).total_seconds()) for r in self.trust_roots]

    # -- the hop ------------------------------------------------------------------------------

    def plan(
        self,
        router: Router,
        *,
        endpoint: Endpoint,
        source: str | None,
        cluster: str,
        protocol: str = ALPN,
        pipe: bool = False,
    ) -> TunnelHop | None:
        """:meth:`hop`, with the mode applied: None to go plaintext (counted when it crosses
        nodes, in permissive mode); UpstreamError (a connect failure) when strict mode
        forbids it."""
        planned = self.hop(
            router, endpoint=endpoint, source=source, cluster=cluster, protocol=protocol, pipe=pipe
        )
        if not isinstance(planned, str):
            return planned
        if router.mtls == "strict":
            why = f"strict mTLS: {endpoint.key} is on node {endpoint.node}: {planned}"
            raise UpstreamError(Failure.CONNECT, why)
        self.metrics.count("plaintext", "sent")  # permissive: across nodes in the clear
        return None

    def hop(
        self,
        router: Router,
        *,
        endpoint: Endpoint,
        source: str | None,
        cluster: str,
        protocol: str = ALPN,
        pipe: bool = False,
    ) -> TunnelHop | str | None:
        """How an attempt to ``endpoint`` travels: None when it stays plaintext (same node,
        mTLS off), a :class:`TunnelHop` to the endpoint's node carrying ``protocol`` (an
        ALPN name), or why it cannot tunnel. ``pipe``: an HTTP/1.1 request that may go on a
        pipe (mesh.proxy.pipe) when this config lets ``source`` send the pod any request
        over plain ``http``; pipes are pooled per pod. The answers are kept until the router
        or the certificates change (per request, this is one dictionary lookup)."""
        if router.mtls == "off" or endpoint.node is None or endpoint.node == self.node:
            return None
        if router is not self._hops_router:
            self._hops = {}
            self._hops_router = router
        key = (source or "", endpoint.key, cluster, protocol, pipe)
        hops = self._hops
        if key in hops:
            return hops[key]
        planned = self._plan(router, endpoint, source, cluster, protocol, pipe)
        if len(hops) >= 4096:
            hops.clear()
        hops[key] = planned
        return planned

    def _plan(
        self,
        router: Router,
        endpoint: Endpoint,
        source: str | None,
        cluster: str,
        protocol: str,
        pipe: bool,
    ) -> TunnelHop | str | None:
        assert endpoint.node is not None
        address = router.proxies.get(endpoint.node)
        if address is None:
            return f"no tunnel address for node {endpoint.node}"
        if source is None:
            return "the caller has no identity to present"
        item = self._held.get(source)
        context = item.clients.get(protocol) if item is not None else None
        if context is None:
            return f"this proxy holds no certificate for the caller {source}"
        if endpoint.identity is None:
            return f"the identity of {endpoint.key} is not known"
        extra = f"Simmesh-Target: {endpoint.key}\r\nSimmesh-Cluster: {cluster}\r\n".encode()
        pipes = item.clients.get(ALPN_PIPE) if pipe and item is not None else None
        if pipes is not None:
            compiled = router.clusters.get(cluster)
            if (
                compiled is not None
                and compiled.scheme == "http"
                and router.whole_access(compiled, endpoint, source)
            ):
                return TunnelHop(
                    address[0],
                    address[1],
                    pipes,
                    sni_name(endpoint.identity),
                    endpoint.identity,
                    extra,
                    f"{source} {endpoint.identity} {cluster} {endpoint.key}",
                    [(TARGET, endpoint.key), (CLUSTER, cluster)],
                    f"{cluster} {endpoint.key}\r\n".encode(),
                )
        return TunnelHop(
            address[0],
            address[1],
            context,
            sni_name(endpoint.identity),
            endpoint.identity,
            extra,
            f"{source} {endpoint.identity}",
            [(TARGET, endpoint.key), (CLUSTER, cluster)],
        )

    # -- the peer -----------------------------------------------------------------------------

    def peer_identity(self, ssl_object: ssl.SSLObject | None) -> str:
        """The identity (``namespace/serviceaccount``) the peer's verified certificate
        proves; PeerRefused otherwise."""
        if ssl_object is None:
            raise PeerRefused("not-tls", "the connection is not TLS")
        if ssl_object.version() != "TLSv1.3":
            raise PeerRefused("tls-version", f"{ssl_object.version()}, expected TLSv1.3")
        cert = ssl_object.getpeercert()
        if not cert:
            raise PeerRefused("no-client-certificate", "the peer presented no certificate")
        sans = cast(tuple[tuple[str, str], ...], cert.get("subjectAltName", ()))
        uris = [value for kind, value in sans if kind == "URI"]
        if len(uris) != 1:
            raise PeerRefused("bad-identity", f"expected one URI SAN, got {len(uris)}")
        try:
            peer = parse(str(uris[0]), "certificate URI SAN")
        except IdentityError as exc:
            raise PeerRefused("bad-identity", str(exc)) from None
        if peer.trust_domain != self.trust_domain:
            raise PeerRefused(
                "trust-domain", f"{peer.uri} is not of trust domain {self.trust_domain}"
            )
        return peer.identity

    # -- counters -----------------------------------------------------------------------------

    def handshake(self, side: str) -> None:
        self.metrics.count("tunnel_handshakes", side)
        self.open[side] += 1

    def failed(self, side: str, reason: str) -> None:
        self.metrics.count("tunnel_handshake_failures", side, reason)

    def closed(self, side: str) -> None:
        self.open[side] -= 1

    def state(self) -> dict[str, Any]:
        return {
            "tunnels": dict(self.open),
            "certificate_age": self.certificate_age(),
            "identities": self.identities,
            "certificates": self.expiries(),
            "roots": self.root_expiries(),
        }


def _uri_san(certificate: Any) -> str:
    """The certificate's URI SANs, comma-separated ("" when it has none)."""
    from cryptography import x509

    try:
        names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return ""
    return ",".join(
        str(uri) for uri in names.value.get_values_for_type(x509.UniformResourceIdentifier)
    )


def expect_identity(tls: TunnelTls, ssl_object: ssl.SSLObject | None, expected: str) -> None:
    """The destination proved ``expected`` (its certificate for the endpoint's identity)."""
    got = tls.peer_identity(ssl_object)
    if got != expected:
        raise PeerRefused("wrong-identity", f"the peer proved {got}, expected {expected}")


T = TypeVar("T")
P = TypeVar("P", bound=asyncio.BaseProtocol)


class Gate(Protocol):
    """Where a connection gets its place (mesh.proxy.resources.UpstreamGate)."""

    async def connect(self, open_: Callable[[Any], Awaitable[T]], *, where: str) -> T: ...


async def dial(
    tls: TunnelTls,
    hop: TunnelHop,
    gate: Gate,
    factory: Callable[[Any], P],
    timeout: float,
    *,
    alpn: str | None = None,
) -> tuple[asyncio.Transport, P]:
    """A new tunnel connection to ``hop``'s proxy, under ``gate`` (``factory`` gets the
    connection's slot), whose peer proved ``hop.expect`` (and negotiated ``alpn`` when one
    is required); counted as a handshake, or as a failure by reason and UpstreamError
    (CONNECT)."""
    loop = asyncio.get_running_loop()
    where = f"tunnel {hop.host}:{hop.port} ({hop.expect})"

    async def open_(slot: Any) -> tuple[asyncio.Transport, P]:
        async with asyncio.timeout(timeout):
            transport, protocol = await loop.create_connection(
                lambda: factory(slot),
                hop.host,
                hop.port,
                ssl=hop.context,
                server_hostname=hop.server_name,
                ssl_handshake_timeout=timeout,
            )
        return transport, protocol

    try:
        transport, protocol = await gate.connect(open_, where=where)
    except UpstreamError:
        raise
    except (OSError, TimeoutError) as exc:
        reason = failure_reason(exc)
        if isinstance(exc, ssl.SSLError) or reason == "timeout":
            tls.failed("client", reason)
        raise UpstreamError(Failure.CONNECT, f"{where}: {reason}: {exc}") from exc
    ssl_object = transport.get_extra_info("ssl_object")
    try:
        expect_identity(tls, ssl_object, hop.expect)
        got = ssl_object.selected_alpn_protocol() if ssl_object is not None else None
        if alpn is not None and got != alpn:
            raise PeerRefused("alpn", f"the peer does not speak {alpn} (ALPN {got!r})")
    except PeerRefused as exc:
        tls.failed("client", exc.reason)
        transport.abort()
        raise UpstreamError(Failure.CONNECT, f"{where}: {exc}") from None
    tls.handshake("client")
    return transport, protocol


__all__ = [
    "ALPN",
    "ALPN_H2",
    "ALPN_PIPE",
    "ALPN_STREAM",
    "CLUSTER",
    "TARGET",
    "TUNNEL_PORT",
    "PeerRefused",
    "TunnelTls",
    "spiffe_id",
]
