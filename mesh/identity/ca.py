"""The mesh's certificate authority: roots, certificate signing requests and X.509-SVIDs.

A root is a self-signed CA certificate and its key (:class:`Signer`), generated here
(:func:`generate_root`) or brought by the user (:func:`load_signer`, which checks that it is a
CA, may sign certificates, is valid now and that the key is the certificate's).

A node proxy makes its key itself (:func:`new_key`) and sends only a request (:func:`make_csr`)
naming one SPIFFE ID. The CA trusts nothing in the request but the public key and that ID:
:func:`check_csr` checks the signature (the requester holds the key), the key type and size
(ECDSA P-256, or RSA of 2048 to 8192 bits), that the only subject alternative name is one URI,
a ServiceAccount's SPIFFE ID, in the mesh's trust domain and (when given) the identity asked
for. :func:`sign` then builds the certificate from those two values alone: no subject (the SAN
is the identity, marked critical as RFC 5280 asks of a certificate without a subject), key
usage digitalSignature and keyEncipherment, extended key usage serverAuth and clientAuth, not a
CA, valid from a little before ``now`` (clocks differ) for ``lifetime`` (24 h by default) but
never beyond the root's own expiry. Every refusal is an :class:`IdentityError` naming the field
and what was expected.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from mesh.identity.spiffe import IdentityError, SpiffeId, check_trust_domain, parse

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
PublicKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey

DEFAULT_LIFETIME = timedelta(hours=24)
MIN_LIFETIME = timedelta(minutes=1)
MAX_LIFETIME = timedelta(days=30)
DEFAULT_ROOT_LIFETIME = timedelta(days=3650)
CLOCK_SKEW = timedelta(minutes=5)  # notBefore is back-dated this much
MAX_REQUEST_BYTES = 16 * 1024
MIN_RSA_BITS = 2048
MAX_RSA_BITS = 8192  # beyond this a request costs the CA more to check than it is worth
SVID_USAGES = ("digital signature", "key encipherment", "server auth", "client auth")


def new_key() -> ec.EllipticCurvePrivateKey:
    """A fresh ECDSA P-256 key: what proxies and generated roots use."""
    return ec.generate_private_key(ec.SECP256R1())


def key_pem(key: PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def cert_pem(certificate: x509.Certificate) -> bytes:
    return certificate.public_bytes(serialization.Encoding.PEM)


def fingerprint(certificate: x509.Certificate) -> str:
    """``sha256:<hex>`` of the DER certificate."""
    return (
        "sha256:" + hashlib.sha256(certificate.public_bytes(serialization.Encoding.DER)).hexdigest()
    )


def check_key(key: PublicKey | object, field: str) -> PublicKey:
    """The key if it is ECDSA P-256 or RSA of 2048..8192 bits, else IdentityError."""
    if isinstance(key, ec.EllipticCurvePublicKey):
        if key.curve.name != "secp256r1":
            raise IdentityError(field, f"expected an ECDSA P-256 key, got curve {key.curve.name}")
        return key
    if isinstance(key, rsa.RSAPublicKey):
        if not MIN_RSA_BITS <= key.key_size <= MAX_RSA_BITS:
            raise IdentityError(
                field,
                f"expected an RSA key of {MIN_RSA_BITS} to {MAX_RSA_BITS} bits, got {key.key_size}",
            )
        return key
    raise IdentityError(
        field, f"expected an ECDSA P-256 or RSA key, got {type(key).__name__.lstrip('_')}"
    )


def _spki(key: object) -> bytes:
    """The DER SubjectPublicKeyInfo of a public key, to compare keys of any type."""
    encode = getattr(key, "public_bytes", None)
    if encode is None:
        return b""
    data = encode(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return data if isinstance(data, bytes) else b""


def _hash(key: PrivateKey) -> hashes.SHA256:
    del key
    return hashes.SHA256()


# --------------------------------------------------------------------------------- roots


@dataclass(frozen=True, slots=True)
class Signer:
    """A root: its self-signed certificate and key."""

    certificate: x509.Certificate
    key: PrivateKey

    @property
    def not_after(self) -> datetime:
        return self.certificate.not_valid_after_utc

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.certificate)


def generate_root(
    *, trust_domain: str, now: datetime, lifetime: timedelta = DEFAULT_ROOT_LIFETIME
) -> Signer:
    """A new self-signed root for ``trust_domain`` (ECDSA P-256), valid from ``now``."""
    check_trust_domain(trust_domain)
    key = new_key()
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "simmesh"),
            x509.NameAttribute(
                NameOID.COMMON_NAME, f"simmesh root {now.strftime('%Y-%m-%dT%H:%M:%SZ')}"
            ),
        ]
    )
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + lifetime)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_usage(ca=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.UniformResourceIdentifier(f"spiffe://{trust_domain}")]
            ),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    return Signer(certificate, key)


def load_signer(cert_pem_bytes: bytes, key_pem_bytes: bytes, *, now: datetime) -> Signer:
    """A root brought by the user (PEM certificate and unencrypted PEM key), checked: a CA that
    may sign certificates, valid at ``now``, an allowed key that is the certificate's."""
    try:
        certificate = x509.load_pem_x509_certificate(cert_pem_bytes)
    except ValueError:
        raise IdentityError("ca certificate", "expected a PEM certificate") from None
    try:
        key = serialization.load_pem_private_key(key_pem_bytes, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise IdentityError("ca key", "expected an unencrypted PEM private key") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise IdentityError("ca key", f"expected an ECDSA or RSA key, got {type(key).__name__}")
    check_key(certificate.public_key(), "ca certificate key")
    if _spki(key.public_key()) != _spki(certificate.public_key()):
        raise IdentityError("ca key", "does not belong to the CA certificate (public keys differ)")
    _check_ca(certificate)
    signer = Signer(certificate, key)
    check_valid(signer, now)
    return signer


def _check_ca(certificate: x509.Certificate) -> None:
    try:
        basic = certificate.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        basic = None
    if basic is None or not basic.ca:
        raise IdentityError(
            "ca certificate", "expected a CA certificate (basicConstraints CA:TRUE)"
        )
    try:
        usage = certificate.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return  # no key usage: every usage allowed
    if not usage.key_cert_sign:
        raise IdentityError("ca certificate", "its key usage lacks keyCertSign")


def check_valid(signer: Signer, now: datetime) -> None:
    """IdentityError when the root is not valid at ``now`` (expired or not yet valid)."""
    certificate = signer.certificate
    if now >= certificate.not_valid_after_utc:
        raise IdentityError(
            "ca certificate",
            f"expired at {certificate.not_valid_after_utc.isoformat()} (now {now.isoformat()})",
        )
    if now < certificate.not_valid_before_utc:
        raise IdentityError(
            "ca certificate",
            f"not valid before {certificate.not_valid_before_utc.isoformat()} "
            f"(now {now.isoformat()})",
        )


# ------------------------------------------------------------------------------ requests


def make_csr(key: PrivateKey, identity: SpiffeId) -> bytes:
    """The PEM request a proxy sends for ``identity``: its URI SAN and nothing else."""
    request = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(identity.uri)]),
            critical=True,
        )
        .sign(key, _hash(key))
    )
    return request.public_bytes(serialization.Encoding.PEM)


@dataclass(frozen=True, slots=True)
class CheckedRequest:
    """What the CA takes from a request: the identity and the public key, nothing else."""

    identity: SpiffeId
    public_key: PublicKey


def check_csr(pem: bytes, *, trust_domain: str, identity: SpiffeId | None = None) -> CheckedRequest:
    """The request's identity and key, or IdentityError naming the field at fault."""
    if len(pem) > MAX_REQUEST_BYTES:
        raise IdentityError(
            "request", f"at most {MAX_REQUEST_BYTES} bytes expected, got {len(pem)}"
        )
    try:
        request = x509.load_pem_x509_csr(pem)
    except ValueError:
        raise IdentityError("request", "expected a PEM certificate signing request") from None
    try:
        key = check_key(request.public_key(), "request public key")
    except UnsupportedAlgorithm:
        raise IdentityError("request public key", "expected an ECDSA P-256 or RSA key") from None
    if not request.is_signature_valid:
        raise IdentityError("request signature", "does not verify with the request's public key")
    uri = _only_uri(request)
    wanted = parse(uri, "request subjectAltName URI")
    if wanted.trust_domain != trust_domain:
        raise IdentityError(
            "request subjectAltName URI",
            f"trust domain {wanted.trust_domain!r} is not the mesh's ({trust_domain!r})",
        )
    if identity is not None and wanted != identity:
        raise IdentityError(
            "request subjectAltName URI", f"expected {identity.uri}, got {wanted.uri}"
        )
    return CheckedRequest(wanted, key)


def _only_uri(request: x509.CertificateSigningRequest) -> str:
    try:
        sans = list(request.extensions.get_extension_for_class(x509.SubjectAlternativeName).value)
    except x509.ExtensionNotFound:
        raise IdentityError(
            "request subjectAltName", "expected exactly one URI (a SPIFFE ID), got none"
        ) from None
    except ValueError as exc:  # a malformed extension
        raise IdentityError("request extensions", f"unreadable: {exc}") from None
    if len(sans) != 1 or not isinstance(sans[0], x509.UniformResourceIdentifier):
        got = ", ".join(f"{type(s).__name__} {s.value!r}"[:100] for s in sans)
        raise IdentityError(
            "request subjectAltName", f"expected exactly one URI (a SPIFFE ID), got {got}"
        )
    return str(sans[0].value)


# ------------------------------------------------------------------------------- signing


def sign(
    signer: Signer,
    request: CheckedRequest,
    *,
    now: datetime,
    lifetime: timedelta = DEFAULT_LIFETIME,
) -> x509.Certificate:
    """The X.509-SVID for a checked request, valid from ``now`` - CLOCK_SKEW for ``lifetime``
    (never beyond the root's expiry)."""
    if not MIN_LIFETIME <= lifetime <= MAX_LIFETIME:
        raise IdentityError(
            "lifetime", f"expected {MIN_LIFETIME} to {MAX_LIFETIME}, got {lifetime}"
        )
    check_valid(signer, now)
    not_after = min(now + lifetime, signer.not_after)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([]))
        .issuer_name(signer.certificate.subject)
        .public_key(request.public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_usage(ca=False), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(request.identity.uri)]),
            critical=True,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(signer.key.public_key()),
            critical=False,
        )
    )
    return builder.sign(signer.key, _hash(signer.key))


def _usage(*, ca: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=not ca,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def svid_identity(certificate: x509.Certificate, field: str = "certificate") -> SpiffeId:
    """The SPIFFE ID of an SVID: its only subjectAltName, a URI."""
    try:
        sans = list(
            certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        )
    except x509.ExtensionNotFound:
        raise IdentityError(f"{field} subjectAltName", "missing") from None
    uris = [s for s in sans if isinstance(s, x509.UniformResourceIdentifier)]
    if len(sans) != 1 or len(uris) != 1:
        raise IdentityError(
            f"{field} subjectAltName", f"expected exactly one URI, got {len(sans)} names"
        )
    return parse(str(uris[0].value), f"{field} subjectAltName URI")
