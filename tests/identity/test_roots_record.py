"""The trust bundle's record (the ConfigMap annotation ``simmesh.io/roots``) and what a
restarted controller restores from it, announced roots included."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

from mesh.controller.identity import BUNDLE_KEY, ROOTS_ANNOTATION, bundle_record, restore
from mesh.identity import ca
from mesh.identity.authority import Authority

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
TD = "cluster.local"
OVERLAP = timedelta(hours=48)
DELAY = timedelta(seconds=90)


def configmap(authority: Authority, now: datetime) -> dict[str, Any]:
    record = json.dumps(bundle_record(authority, now))
    return {
        "metadata": {"annotations": {ROOTS_ANNOTATION: record}},
        "data": {BUNDLE_KEY: authority.bundle_pem(now).decode()},
    }


def test_the_record_names_the_signer_the_announced_root_and_the_retired() -> None:
    first, second, third = (ca.generate_root(trust_domain=TD, now=NOW) for _ in range(3))
    authority = (
        Authority(TD, first)
        .rotate(second, now=NOW, overlap=OVERLAP)
        .announce(third, now=NOW, delay=DELAY)
    )
    assert bundle_record(authority, NOW) == {
        second.fingerprint: "signing",
        first.fingerprint: (NOW + OVERLAP).isoformat(),
        third.fingerprint: "signs-from " + (NOW + DELAY).isoformat(),
    }


def test_a_restart_keeps_the_overlap_and_the_signer_of_the_secret() -> None:
    first, second = (ca.generate_root(trust_domain=TD, now=NOW) for _ in range(2))
    published = configmap(Authority(TD, first).rotate(second, now=NOW, overlap=OVERLAP), NOW)
    later = NOW + timedelta(hours=1)
    restored = restore(Authority(TD, second), published, now=later, overlap=OVERLAP)
    assert restored.signer is second and restored.pending is None
    assert [(ca.fingerprint(r.certificate), r.until) for r in restored.retired] == [
        (first.fingerprint, NOW + OVERLAP)
    ]


def test_a_restart_during_the_announcement_signs_with_the_secrets_root() -> None:
    """The Secret holds the announced root only (the old key went with the replaced
    Secret): it signs at once and the old root is trusted for the overlap from now."""
    first, second = (ca.generate_root(trust_domain=TD, now=NOW) for _ in range(2))
    published = configmap(Authority(TD, first).announce(second, now=NOW, delay=DELAY), NOW)
    later = NOW + timedelta(seconds=10)
    restored = restore(Authority(TD, second), published, now=later, overlap=OVERLAP)
    assert restored.signer is second and restored.pending is None
    assert [(ca.fingerprint(r.certificate), r.until) for r in restored.retired] == [
        (first.fingerprint, later + OVERLAP)
    ]


def test_a_restart_after_the_secret_was_put_back_drops_the_announced_root() -> None:
    first, second = (ca.generate_root(trust_domain=TD, now=NOW) for _ in range(2))
    published = configmap(Authority(TD, first).announce(second, now=NOW, delay=DELAY), NOW)
    restored = restore(Authority(TD, first), published, now=NOW, overlap=OVERLAP)
    assert restored.signer is first and restored.retired == () and restored.pending is None
    assert [ca.fingerprint(c) for c in restored.roots(NOW)] == [first.fingerprint]
