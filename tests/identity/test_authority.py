"""Rotation of the signing key: both roots trusted during the overlap, new certificates from
the new key, the old root gone after the overlap; verification against the bundle."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from mesh.identity import ca
from mesh.identity.authority import Authority, verify_svid
from mesh.identity.spiffe import IdentityError, spiffe_id

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
TD = "cluster.local"
WEB = spiffe_id(TD, "shop/web")
OVERLAP = timedelta(hours=24)


def request() -> ca.CheckedRequest:
    return ca.check_csr(ca.make_csr(ca.new_key(), WEB), trust_domain=TD)


def test_rotation_trusts_both_roots_during_the_overlap_and_drops_the_old_after() -> None:
    first = ca.generate_root(trust_domain=TD, now=NOW)
    authority = Authority(TD, first)
    old_cert = authority.issue(request(), now=NOW)

    later = NOW + timedelta(hours=1)
    second = ca.generate_root(trust_domain=TD, now=later)
    rotated = authority.rotate(second, now=later, overlap=OVERLAP)

    assert [ca.fingerprint(c) for c in rotated.roots(later)] == [
        second.fingerprint,
        first.fingerprint,
    ]
    new_cert = rotated.issue(request(), now=later)
    assert new_cert.issuer == second.certificate.subject
    assert new_cert.issuer != first.certificate.subject
    # during the overlap both verify against the bundle
    bundle = rotated.roots(later)
    assert verify_svid(old_cert, bundle, now=later, trust_domain=TD) == WEB
    assert verify_svid(new_cert, bundle, now=later, trust_domain=TD) == WEB
    # the new certificate does not verify against the old root alone
    with pytest.raises(IdentityError, match="does not verify"):
        verify_svid(new_cert, (first.certificate,), now=later, trust_domain=TD)

    after = later + OVERLAP + timedelta(seconds=1)
    pruned = rotated.prune(after)
    assert [ca.fingerprint(c) for c in pruned.roots(after)] == [second.fingerprint]
    assert pruned.retired == ()
    assert ca.cert_pem(first.certificate) not in pruned.bundle_pem(after)
    fresh = pruned.issue(request(), now=after)
    assert verify_svid(fresh, pruned.roots(after), now=after, trust_domain=TD) == WEB


def test_rotating_to_the_same_root_changes_nothing() -> None:
    first = ca.generate_root(trust_domain=TD, now=NOW)
    authority = Authority(TD, first)
    assert authority.rotate(first, now=NOW, overlap=OVERLAP) is authority


def test_rotating_back_does_not_list_a_root_twice() -> None:
    first = ca.generate_root(trust_domain=TD, now=NOW)
    second = ca.generate_root(trust_domain=TD, now=NOW)
    back = (
        Authority(TD, first)
        .rotate(second, now=NOW, overlap=OVERLAP)
        .rotate(first, now=NOW, overlap=OVERLAP)
    )
    prints = [ca.fingerprint(c) for c in back.roots(NOW)]
    assert prints == [first.fingerprint, second.fingerprint]


def test_an_expired_root_leaves_the_bundle_even_within_its_overlap() -> None:
    short = ca.generate_root(trust_domain=TD, now=NOW, lifetime=timedelta(hours=2))
    second = ca.generate_root(trust_domain=TD, now=NOW)
    rotated = Authority(TD, short).rotate(second, now=NOW, overlap=OVERLAP)
    assert len(rotated.roots(NOW)) == 2
    assert len(rotated.roots(NOW + timedelta(hours=3))) == 1


def test_verification_refuses_other_roots_other_domains_and_expired_svids() -> None:
    root = ca.generate_root(trust_domain=TD, now=NOW)
    cert = Authority(TD, root).issue(request(), now=NOW, lifetime=timedelta(hours=1))
    stranger = ca.generate_root(trust_domain=TD, now=NOW)
    with pytest.raises(IdentityError, match="does not verify"):
        verify_svid(cert, (stranger.certificate,), now=NOW, trust_domain=TD)
    with pytest.raises(IdentityError, match=r"trust domain 'cluster\.local' is not 'other\.org'"):
        verify_svid(cert, (root.certificate,), now=NOW, trust_domain="other.org")
    with pytest.raises(IdentityError, match="does not verify"):
        verify_svid(cert, (root.certificate,), now=NOW + timedelta(hours=2), trust_domain=TD)
    with pytest.raises(IdentityError, match="trust bundle: empty"):
        verify_svid(cert, (), now=NOW, trust_domain=TD)


def test_an_authority_refuses_a_request_of_another_trust_domain() -> None:
    root = ca.generate_root(trust_domain=TD, now=NOW)
    foreign = ca.check_csr(
        ca.make_csr(ca.new_key(), spiffe_id("other.org", "shop/web")), trust_domain="other.org"
    )
    with pytest.raises(IdentityError, match="is not the mesh's"):
        Authority(TD, root).issue(foreign, now=NOW)


def test_a_new_root_is_announced_before_it_signs() -> None:
    """Two steps: trusted at once, signing only from ``signs_from``; the old root signs
    meanwhile and stays trusted for the overlap counted from the switch."""
    first = ca.generate_root(trust_domain=TD, now=NOW)
    second = ca.generate_root(trust_domain=TD, now=NOW)
    delay = timedelta(seconds=90)
    announced = Authority(TD, first).announce(second, now=NOW, delay=delay)
    assert announced.pending is not None and announced.pending.signs_from == NOW + delay
    assert [ca.fingerprint(c) for c in announced.roots(NOW)] == [
        first.fingerprint,
        second.fingerprint,
    ]
    early = NOW + delay - timedelta(seconds=1)
    assert announced.advance(early, overlap=OVERLAP) is announced
    assert announced.issue(request(), now=early).issuer == first.certificate.subject
    # announced again by the next check: the time is kept
    assert announced.announce(second, now=early, delay=delay) is announced

    due = NOW + delay
    switched = announced.advance(due, overlap=OVERLAP)
    assert switched.pending is None and switched.signer is second
    assert switched.issue(request(), now=due).issuer == second.certificate.subject
    assert [(ca.fingerprint(r.certificate), r.until) for r in switched.retired] == [
        (first.fingerprint, due + OVERLAP)
    ]
    assert [ca.fingerprint(c) for c in switched.roots(due)] == [
        second.fingerprint,
        first.fingerprint,
    ]


def test_a_secret_put_back_before_the_switch_cancels_the_announced_root() -> None:
    first = ca.generate_root(trust_domain=TD, now=NOW)
    second = ca.generate_root(trust_domain=TD, now=NOW)
    announced = Authority(TD, first).announce(second, now=NOW, delay=timedelta(seconds=90))
    back = announced.announce(first, now=NOW, delay=timedelta(seconds=90))
    assert back.pending is None and back.signer is first and back.retired == ()
    assert [ca.fingerprint(c) for c in back.roots(NOW)] == [first.fingerprint]
    later = NOW + timedelta(hours=1)
    assert back.advance(later, overlap=OVERLAP) is back


def test_a_retired_root_announced_again_is_listed_once() -> None:
    first = ca.generate_root(trust_domain=TD, now=NOW)
    second = ca.generate_root(trust_domain=TD, now=NOW)
    rotated = Authority(TD, first).rotate(second, now=NOW, overlap=OVERLAP)
    again = rotated.announce(first, now=NOW, delay=timedelta(seconds=90))
    assert [ca.fingerprint(c) for c in again.roots(NOW)] == [
        second.fingerprint,
        first.fingerprint,
    ]
    done = again.advance(NOW + timedelta(seconds=90), overlap=OVERLAP)
    assert done.signer is first
    assert [ca.fingerprint(c) for c in done.roots(NOW + timedelta(seconds=90))] == [
        first.fingerprint,
        second.fingerprint,
    ]
