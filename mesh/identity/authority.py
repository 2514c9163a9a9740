"""The signing root and the trust bundle, with rotation of the signing key.

An :class:`Authority` signs with one root (``signer``) and trusts it plus the roots it signed
with before (``retired``), each until the end of its overlap, and a root announced to sign
next (``pending``). Rotation has two steps. :meth:`Authority.announce` puts a new root in the
bundle while the old one still signs, until ``signs_from``: every proxy must trust a root
before any proxy presents a certificate of it, or a proxy that has not yet read the new bundle
refuses its peers' new certificates (the proxies re-read the bundle every 30 s; the delay is
the controller's ``--ca-publish-delay``). :meth:`Authority.advance` then makes it the signer
(:meth:`Authority.rotate`) and keeps the old root in the bundle until ``now + overlap``: an
overlap at least as long as a workload certificate's lifetime means every certificate the old
key signed still verifies until it expires, while every new one is signed by the new key
(proxies renew at half-life, so within the overlap they all hold new ones).
:meth:`Authority.prune` drops roots past their overlap or their own expiry.

:func:`verify_svid` is the check a receiver makes: the chain leads to a root of the bundle at
``now``, the certificate is for client (and server) use, and its only SAN is a SPIFFE ID of
the trust domain.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from mesh.identity import ca
from mesh.identity.spiffe import IdentityError, SpiffeId


@dataclass(frozen=True, slots=True)
class RetiredRoot:
    """A root no longer signing, trusted until ``until``."""

    certificate: x509.Certificate
    until: datetime


@dataclass(frozen=True, slots=True)
class PendingRoot:
    """A root trusted already, signing from ``signs_from``."""

    signer: ca.Signer
    signs_from: datetime


@dataclass(frozen=True, slots=True)
class Authority:
    trust_domain: str
    signer: ca.Signer
    retired: tuple[RetiredRoot, ...] = ()
    pending: PendingRoot | None = None

    def roots(self, now: datetime) -> tuple[x509.Certificate, ...]:
        """The trust bundle at ``now``: the signing root, the root announced to sign next,
        then the retired roots still in their overlap, newest first; none past its own
        expiry."""
        kept = [r.certificate for r in self.retired if now < r.until]
        coming = [] if self.pending is None else [self.pending.signer.certificate]
        every = [self.signer.certificate, *coming, *kept]
        seen: set[str] = set()
        out = []
        for certificate in every:
            fingerprint = ca.fingerprint(certificate)
            if fingerprint not in seen and now < certificate.not_valid_after_utc:
                seen.add(fingerprint)
                out.append(certificate)
        return tuple(out)

    def announce(self, signer: ca.Signer, *, now: datetime, delay: timedelta) -> Authority:
        """``signer`` (the root the Secret holds now) trusted from now, signing from ``now +
        delay`` (:meth:`advance`). The current signer: nothing pending any more (a Secret put
        back). Already pending: unchanged, its time kept."""
        if signer.fingerprint == self.signer.fingerprint:
            return self if self.pending is None else replace(self, pending=None)
        if self.pending is not None and self.pending.signer.fingerprint == signer.fingerprint:
            return self
        return replace(self, pending=PendingRoot(signer, now + delay))

    def advance(self, now: datetime, *, overlap: timedelta) -> Authority:
        """The pending root the signer once its time has come (:meth:`rotate`)."""
        if self.pending is None or now < self.pending.signs_from:
            return self
        return self.rotate(self.pending.signer, now=now, overlap=overlap)

    def bundle_pem(self, now: datetime) -> bytes:
        return b"".join(ca.cert_pem(c) for c in self.roots(now))

    def rotate(self, signer: ca.Signer, *, now: datetime, overlap: timedelta) -> Authority:
        """Sign with ``signer`` from now on; trust the old root until ``now + overlap``."""
        if signer.fingerprint == self.signer.fingerprint:
            return self
        old = RetiredRoot(self.signer.certificate, now + overlap)
        retired = tuple(
            r for r in self.retired if ca.fingerprint(r.certificate) != signer.fingerprint
        )
        return replace(self, signer=signer, retired=(old, *retired), pending=None).prune(now)

    def prune(self, now: datetime) -> Authority:
        """Without the roots past their overlap or their expiry."""
        kept = tuple(
            r for r in self.retired if now < r.until and now < r.certificate.not_valid_after_utc
        )
        return self if kept == self.retired else replace(self, retired=kept)

    def issue(
        self,
        request: ca.CheckedRequest,
        *,
        now: datetime,
        lifetime: timedelta = ca.DEFAULT_LIFETIME,
    ) -> x509.Certificate:
        """An SVID for a checked request, signed by the current root."""
        if request.identity.trust_domain != self.trust_domain:
            raise IdentityError(
                "request subjectAltName URI",
                f"trust domain {request.identity.trust_domain!r} is not the mesh's "
                f"({self.trust_domain!r})",
            )
        return ca.sign(self.signer, request, now=now, lifetime=lifetime)


def verify_svid(
    certificate: x509.Certificate,
    roots: tuple[x509.Certificate, ...] | list[x509.Certificate],
    *,
    now: datetime,
    trust_domain: str,
    intermediates: tuple[x509.Certificate, ...] = (),
) -> SpiffeId:
    """The SVID's SPIFFE ID once it verifies against ``roots`` at ``now``; IdentityError."""
    if not roots:
        raise IdentityError("trust bundle", "empty: no root to verify against")
    verifier = PolicyBuilder().store(Store(list(roots))).time(now).build_client_verifier()
    try:
        verifier.verify(certificate, list(intermediates))
    except VerificationError as exc:
        raise IdentityError(
            "certificate", f"does not verify against the trust bundle: {exc}"
        ) from None
    identity = ca.svid_identity(certificate)
    if identity.trust_domain != trust_domain:
        raise IdentityError(
            "certificate subjectAltName URI",
            f"trust domain {identity.trust_domain!r} is not {trust_domain!r}",
        )
    return identity
