"""The pure CA (mesh.identity.ca): every check of a request shown to refuse, and the SVID's
fields as the design says."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID

from mesh.identity import ca
from mesh.identity.spiffe import IdentityError, parse, spiffe_id

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
TD = "cluster.local"
WEB = spiffe_id(TD, "shop/web")


@pytest.fixture(scope="module")
def root() -> ca.Signer:
    return ca.generate_root(trust_domain=TD, now=NOW)


def csr(key: object, sans: list[x509.GeneralName]) -> bytes:
    builder = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([]))
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=True)
    algorithm = None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    return builder.sign(key, algorithm).public_bytes(serialization.Encoding.PEM)  # type: ignore[arg-type]


def uri(text: str) -> x509.UniformResourceIdentifier:
    return x509.UniformResourceIdentifier(text)


def refused(pem: bytes, field: str, words: str, **kw: object) -> IdentityError:
    with pytest.raises(IdentityError) as info:
        ca.check_csr(pem, trust_domain=TD, **kw)  # type: ignore[arg-type]
    assert info.value.field == field, str(info.value)
    assert words in info.value.message, str(info.value)
    assert "\n" not in str(info.value)
    return info.value


def test_a_good_request_gives_an_svid_with_the_design_s_fields(root: ca.Signer) -> None:
    key = ca.new_key()
    checked = ca.check_csr(ca.make_csr(key, WEB), trust_domain=TD, identity=WEB)
    cert = ca.sign(root, checked, now=NOW)
    assert cert.subject == x509.Name([])
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert san.critical and list(san.value) == [uri("spiffe://cluster.local/ns/shop/sa/web")]
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.digital_signature and usage.key_encipherment and not usage.key_cert_sign
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert cert.not_valid_before_utc == NOW - ca.CLOCK_SKEW
    assert cert.not_valid_after_utc == NOW + timedelta(hours=24)
    assert cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ) == key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert cert.issuer == root.certificate.subject
    assert ca.svid_identity(cert) == WEB


def test_the_lifetime_is_configurable_and_never_outlives_the_root() -> None:
    short_root = ca.generate_root(trust_domain=TD, now=NOW, lifetime=timedelta(hours=2))
    checked = ca.check_csr(ca.make_csr(ca.new_key(), WEB), trust_domain=TD)
    assert ca.sign(
        short_root, checked, now=NOW, lifetime=timedelta(minutes=10)
    ).not_valid_after_utc == NOW + timedelta(minutes=10)
    assert ca.sign(short_root, checked, now=NOW).not_valid_after_utc == NOW + timedelta(hours=2)
    with pytest.raises(IdentityError, match="lifetime: expected"):
        ca.sign(short_root, checked, now=NOW, lifetime=timedelta(days=90))


def test_rsa_2048_is_accepted() -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    assert ca.check_csr(ca.make_csr(key, WEB), trust_domain=TD).identity == WEB


def test_wrong_trust_domain_is_refused() -> None:
    other = spiffe_id("evil.example", "shop/web")
    error = refused(ca.make_csr(ca.new_key(), other), "request subjectAltName URI", "trust domain")
    assert "'evil.example'" in error.message and "'cluster.local'" in error.message


def test_two_sans_are_refused() -> None:
    key = ca.new_key()
    refused(
        csr(key, [uri(WEB.uri), x509.DNSName("web.shop.svc")]),
        "request subjectAltName",
        "exactly one URI",
    )
    refused(
        csr(key, [uri(WEB.uri), uri("spiffe://cluster.local/ns/kube-system/sa/admin")]),
        "request subjectAltName",
        "exactly one URI",
    )


def test_no_san_or_a_dns_san_only_is_refused() -> None:
    key = ca.new_key()
    refused(csr(key, []), "request subjectAltName", "got none")
    refused(csr(key, [x509.DNSName("web")]), "request subjectAltName", "DNSName")


def test_a_uri_that_is_no_serviceaccount_spiffe_id_is_refused() -> None:
    key = ca.new_key()
    refused(
        csr(key, [uri("https://cluster.local/ns/a/sa/b")]),
        "request subjectAltName URI",
        "spiffe://",
    )
    refused(
        csr(key, [uri("spiffe://cluster.local/ns/a/sa/b/extra")]),
        "request subjectAltName URI",
        "/ns/<namespace>/sa/<name>",
    )
    refused(
        csr(key, [uri("spiffe://cluster.local/ns/A/sa/b")]),
        "request subjectAltName URI",
        "DNS-1123",
    )


def test_another_identity_than_asked_is_refused() -> None:
    other = spiffe_id(TD, "shop/admin")
    error = refused(
        ca.make_csr(ca.new_key(), other), "request subjectAltName URI", "expected", identity=WEB
    )
    assert WEB.uri in error.message and other.uri in error.message


@pytest.mark.parametrize(
    ("key", "words"),
    [
        (rsa.generate_private_key(public_exponent=65537, key_size=1024), "got 1024"),
        (ec.generate_private_key(ec.SECP384R1()), "P-256 key, got curve secp384r1"),
        (ed25519.Ed25519PrivateKey.generate(), "ECDSA P-256 or RSA"),
    ],
    ids=["rsa-1024", "p-384", "ed25519"],
)
def test_weak_or_unexpected_keys_are_refused(key: object, words: str) -> None:
    refused(csr(key, [uri(WEB.uri)]), "request public key", words)


def test_a_bad_signature_is_refused() -> None:
    pem = ca.make_csr(ca.new_key(), WEB)
    der = bytearray(x509.load_pem_x509_csr(pem).public_bytes(serialization.Encoding.DER))
    der[-3] ^= 0x01  # inside the signature's last integer
    tampered = x509.load_der_x509_csr(bytes(der)).public_bytes(serialization.Encoding.PEM)
    refused(tampered, "request signature", "does not verify")


def test_garbage_and_oversized_requests_get_one_line() -> None:
    refused(b"not a request", "request", "PEM certificate signing request")
    refused(
        b"-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
        "request",
        "PEM",
    )
    refused(b"x" * (ca.MAX_REQUEST_BYTES + 1), "request", "at most")


def test_an_expired_root_signs_nothing_and_does_not_load() -> None:
    old = ca.generate_root(
        trust_domain=TD, now=NOW - timedelta(days=10), lifetime=timedelta(days=1)
    )
    checked = ca.check_csr(ca.make_csr(ca.new_key(), WEB), trust_domain=TD)
    with pytest.raises(IdentityError) as info:
        ca.sign(old, checked, now=NOW)
    assert info.value.field == "ca certificate" and "expired at" in info.value.message
    with pytest.raises(IdentityError, match="expired at"):
        ca.load_signer(ca.cert_pem(old.certificate), ca.key_pem(old.key), now=NOW)


def test_a_brought_root_is_checked(root: ca.Signer) -> None:
    loaded = ca.load_signer(ca.cert_pem(root.certificate), ca.key_pem(root.key), now=NOW)
    assert loaded.fingerprint == root.fingerprint
    other = ca.generate_root(trust_domain=TD, now=NOW)
    with pytest.raises(IdentityError, match="ca key: does not belong"):
        ca.load_signer(ca.cert_pem(root.certificate), ca.key_pem(other.key), now=NOW)
    leaf_key = ca.new_key()
    leaf = ca.sign(root, ca.check_csr(ca.make_csr(leaf_key, WEB), trust_domain=TD), now=NOW)
    with pytest.raises(IdentityError, match="expected a CA certificate"):
        ca.load_signer(ca.cert_pem(leaf), ca.key_pem(leaf_key), now=NOW)
    with pytest.raises(IdentityError, match="ca certificate: expected a PEM"):
        ca.load_signer(b"junk", ca.key_pem(root.key), now=NOW)
    with pytest.raises(IdentityError, match="ca key: expected an unencrypted PEM"):
        ca.load_signer(ca.cert_pem(root.certificate), b"junk", now=NOW)


def test_spiffe_ids_parse_strictly() -> None:
    assert parse("spiffe://cluster.local/ns/shop/sa/web") == WEB
    for bad in (
        "spiffe://cluster.local/ns/shop/sa/web?x=1",
        "spiffe://cluster.local/ns/shop/sa/we%62",
        "spiffe://Cluster.local/ns/shop/sa/web",
        "spiffe://cluster.local:443/ns/shop/sa/web",
        "spiffe:///ns/shop/sa/web",
        "spiffe://cluster.local/sa/web/ns/shop",
    ):
        with pytest.raises(IdentityError):
            parse(bad)
    with pytest.raises(IdentityError, match="expected namespace/serviceaccount"):
        spiffe_id(TD, "web")
