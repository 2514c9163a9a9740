"""What the strict-mode attack tests on kind send, and the certificates they send it with.

:data:`SCRIPT` runs inside a test app pod (``kubectl exec -i ... python3 -c SCRIPT``, its
parameters as JSON on stdin; the image has Python and nothing to install): it is a pod that
skips its node proxy and speaks to another node's proxy directly, at its tunnel port and at
its plaintext listener, with whatever certificate it is given. Each probe answers with the
status line and ``X-Simmesh-Reason`` of what came back, or how the connection ended.

The certificates are made here, on the test's side: with a CA of another trust domain, with a
CA of the right trust domain that is not the mesh's, and with the mesh's own root (read from
its Secret, as only the controller may; the tests are cluster-admin), which stands for a
certificate the mesh really issued: naming no ServiceAccount, naming an identity that is not
granted, naming one that is.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import ExtendedKeyUsageOID

from mesh.identity import ca
from mesh.identity.spiffe import spiffe_id

SCRIPT = r'''
import json, os, socket, ssl, sys

params = json.load(sys.stdin)


def pem_file(data):
    fd = os.memfd_create("pem")
    os.write(fd, data.encode())
    return f"/proc/self/fd/{fd}"


def outcome(sock, head):
    """The status line and reason of what came back, or how it ended."""
    sock.settimeout(5)
    try:
        sock.sendall(head.encode())
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    except ssl.SSLError as exc:
        return f"tls-error: {exc.reason or exc}"
    except ConnectionResetError:
        return "reset"
    except socket.timeout:
        return "timeout"
    finally:
        sock.close()
    if not data:
        return "closed"
    lines = data.split(b"\r\n\r\n")[0].decode(errors="replace").split("\r\n")
    reason = [
        line.split(":", 1)[1].strip()
        for line in lines[1:]
        if line.lower().startswith("x-simmesh-reason:")
    ]
    return " ".join([lines[0], *reason])


def request(target, cluster, extra=""):
    return (
        f"GET /echo HTTP/1.1\r\nHost: {params['host']}\r\nSimmesh-Target: {target}\r\n"
        f"Simmesh-Cluster: {cluster}\r\n{extra}Connection: close\r\n\r\n"
    )


def tunnel(probe):
    host, port = params["tunnel"].rsplit(":", 1)
    sock = socket.create_connection((host, int(port)), timeout=5)
    if probe.get("plaintext"):
        return outcome(sock, request(params["target"], params["cluster"]))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # a rogue source does not care who answers
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    if probe.get("cert"):
        context.load_cert_chain(pem_file(probe["cert"]), pem_file(probe["key"]))
    try:
        tls = context.wrap_socket(sock, server_hostname=params["sni"])
    except ssl.SSLError as exc:
        return f"tls-error: {exc.reason or exc}"
    except ConnectionResetError:
        return "reset"
    target = probe.get("target", params["target"])
    cluster = probe.get("cluster", params["cluster"])
    return outcome(tls, request(target, cluster, probe.get("extra", "")))


def listener(probe):
    host, port = params["listener"].rsplit(":", 1)
    sock = socket.create_connection((host, int(port)), timeout=5)
    extra = probe.get("extra", "")
    return outcome(
        sock,
        f"GET /echo HTTP/1.1\r\nHost: {params['host']}\r\n{extra}Connection: close\r\n\r\n",
    )


results = {}
for name, probe in params["probes"].items():
    try:
        results[name] = listener(probe) if probe.get("listener") else tunnel(probe)
    except OSError as exc:
        results[name] = f"error: {type(exc).__name__}: {exc}"
print(json.dumps(results))
'''


@dataclass(frozen=True)
class Issued:
    cert: str
    key: str


def mesh_root(secret: dict[str, Any]) -> ca.Signer:
    """The mesh's signing root from its Secret (``simmesh-ca``)."""
    data = secret["data"]
    return ca.load_signer(
        base64.b64decode(data["tls.crt"]), base64.b64decode(data["tls.key"]), now=datetime.now(UTC)
    )


def issue(signer: ca.Signer, identity: str, trust_domain: str = "cluster.local") -> Issued:
    """A certificate for ``identity`` (namespace/serviceaccount) of ``trust_domain`` signed by
    ``signer``, with a fresh key, as the mesh's CA signs one."""
    key = ca.new_key()
    spiffe = spiffe_id(trust_domain, identity)
    checked = ca.check_csr(ca.make_csr(key, spiffe), trust_domain=trust_domain)
    certificate = ca.sign(signer, checked, now=datetime.now(UTC), lifetime=timedelta(hours=1))
    return Issued(ca.cert_pem(certificate).decode(), ca.key_pem(key).decode())


def forge(signer: ca.Signer, uri: str) -> Issued:
    """A certificate signed by ``signer`` whose one URI SAN is ``uri``, which the mesh's CA
    would never sign (one naming no ServiceAccount, say)."""
    key = ca.new_key()
    now = datetime.now(UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([]))
        .issuer_name(signer.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH]
            ),
            critical=False,
        )
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(uri)]), critical=True
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(signer.key.public_key()),
            critical=False,
        )
        .sign(signer.key, hashes.SHA256())
    )
    return Issued(ca.cert_pem(certificate).decode(), ca.key_pem(key).decode())
