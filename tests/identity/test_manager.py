"""The proxy's certificate manager (mesh.proxy.certs) with an in-process CA and a clock the
test moves: on demand, renewal at half-life, dropped with the last local pod, a CA's wrong
answer refused, backoff after failures."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from mesh.identity import ca
from mesh.identity.authority import Authority
from mesh.identity.spiffe import SpiffeId, spiffe_id
from mesh.proxy.certs import CertificateManager, CertificateMetrics, Denied

TD = "cluster.local"
START = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> datetime:
        return self.now


class FakeCA:
    """The controller's decisions without Kubernetes: issues what ``allowed`` lists."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.authority = Authority(TD, ca.generate_root(trust_domain=TD, now=START))
        self.allowed: set[str] = set()
        self.requests: list[str] = []
        self.wrong_san = False
        self.down = False
        self.bundle_reads = 0

    async def request(self, csr_pem: bytes, *, identity: SpiffeId, lifetime: timedelta) -> bytes:
        self.requests.append(identity.identity)
        if self.down:
            raise OSError("connection refused")
        if identity.identity not in self.allowed:
            raise Denied("NoPodOnNode: no live pod")
        checked = ca.check_csr(csr_pem, trust_domain=TD, identity=identity)
        if self.wrong_san:
            checked = ca.CheckedRequest(spiffe_id(TD, "kube-system/admin"), checked.public_key)
        cert = self.authority.issue(checked, now=self.clock(), lifetime=lifetime)
        return ca.cert_pem(cert)

    async def trust_bundle(self) -> bytes:
        self.bundle_reads += 1
        if self.down:
            raise OSError("connection refused")
        return self.authority.bundle_pem(self.clock())


def setup(
    tmp: Path | None = None, *, bundle_refresh: float = 30.0
) -> tuple[Clock, FakeCA, CertificateManager]:
    clock = Clock()
    fake = FakeCA(clock)
    manager = CertificateManager(
        fake, node="node-a", now=clock, key_dir=tmp, bundle_refresh=bundle_refresh
    )
    return clock, fake, manager


def step(manager: CertificateManager) -> None:
    asyncio.run(manager.step())


def test_certificates_are_requested_on_demand_for_new_local_accounts() -> None:
    _clock, fake, manager = setup()
    fake.allowed = {"shop/web", "shop/db"}
    step(manager)
    assert fake.requests == [] and manager.held == {}  # nothing wanted, nothing asked
    manager.want(["shop/web"])
    step(manager)
    assert fake.requests == ["shop/web"] and list(manager.held) == ["shop/web"]
    step(manager)
    assert fake.requests == ["shop/web"]  # held: not asked again
    manager.want(["shop/web", "shop/db"])
    step(manager)
    assert fake.requests == ["shop/web", "shop/db"]
    assert ca.svid_identity(manager.held["shop/db"].certificate) == spiffe_id(TD, "shop/db")


def test_renewal_at_half_life_with_a_new_key() -> None:
    clock, fake, manager = setup(bundle_refresh=86400.0)  # only renewals due
    fake.allowed = {"shop/web"}
    manager.want(["shop/web"])
    step(manager)
    first = manager.held["shop/web"]
    assert first.renew_at == START + timedelta(hours=12)
    assert manager.next_due() == START + timedelta(hours=12)
    clock.now = START + timedelta(hours=11, minutes=59)
    step(manager)
    assert manager.held["shop/web"] is first and manager.counters.renewals == 0
    clock.now = START + timedelta(hours=12)
    step(manager)
    second = manager.held["shop/web"]
    assert second is not first and manager.counters.renewals == 1
    assert second.not_after == clock.now + timedelta(hours=24)
    assert second.key.public_key().public_numbers() != first.key.public_key().public_numbers()  # type: ignore[union-attr]


def test_a_configurable_renewal_fraction() -> None:
    clock = Clock()
    manager = CertificateManager(FakeCA(clock), node="n", now=clock, renew_fraction=0.8)
    manager.source.allowed = {"shop/web"}  # type: ignore[attr-defined]
    manager.want(["shop/web"])
    step(manager)
    assert manager.held["shop/web"].renew_at == START + timedelta(hours=24) * 0.8
    with pytest.raises(ValueError, match="renew_fraction"):
        CertificateManager(FakeCA(clock), node="n", renew_fraction=1.0)


def test_dropped_when_the_last_local_pod_leaves(tmp_path: Path) -> None:
    _clock, fake, manager = setup(tmp_path)
    fake.allowed = {"shop/web", "shop/db"}
    manager.want(["shop/web", "shop/db"])
    step(manager)
    cert, key = manager.paths("shop/web")  # type: ignore[misc]
    assert key.stat().st_mode & 0o777 == 0o600 and cert.exists()
    assert (tmp_path / "roots.pem").stat().st_mode & 0o777 == 0o600
    manager.want(["shop/db"])
    step(manager)
    assert list(manager.held) == ["shop/db"]
    assert not key.exists() and not cert.exists()
    assert manager.counters.dropped == 1


def test_a_certificate_for_another_identity_is_refused() -> None:
    _clock, fake, manager = setup()
    fake.allowed = {"shop/web"}
    fake.wrong_san = True
    manager.want(["shop/web"])
    step(manager)
    assert manager.held == {}
    assert manager.counters.failures == {"invalid-certificate": 1}


def test_a_certificate_from_another_root_is_refused() -> None:
    _clock, fake, manager = setup()
    fake.allowed = {"shop/web"}
    stranger = ca.generate_root(trust_domain=TD, now=START)

    async def bundle() -> bytes:
        return ca.cert_pem(stranger.certificate)

    fake.trust_bundle = bundle  # type: ignore[method-assign]
    manager.want(["shop/web"])
    step(manager)
    assert manager.held == {} and manager.counters.failures == {"invalid-certificate": 1}


def test_failures_back_off_and_are_counted() -> None:
    clock, fake, manager = setup()
    fake.down = True
    fake.allowed = {"shop/web"}
    manager.want(["shop/web"])
    step(manager)
    step(manager)  # within the backoff: not asked again
    assert fake.requests == ["shop/web"] and manager.counters.failures == {"unavailable": 1}
    clock.now += timedelta(seconds=1)
    step(manager)
    assert len(fake.requests) == 2
    clock.now += timedelta(seconds=1)
    step(manager)
    assert len(fake.requests) == 2  # the second wait is 2 s
    fake.down = False
    clock.now += timedelta(seconds=1)
    step(manager)
    assert list(manager.held) == ["shop/web"]
    fake.allowed = set()
    manager.want(["shop/db"])
    step(manager)
    assert manager.counters.failures == {"unavailable": 2, "denied": 1}


def test_state_and_metrics_show_what_is_held() -> None:
    clock, fake, manager = setup()
    fake.allowed = {"shop/web"}
    manager.want(["shop/web"])
    step(manager)
    clock.now += timedelta(hours=1)
    state = manager.state()
    assert state["held"]["shop/web"]["spiffeId"] == "spiffe://cluster.local/ns/shop/sa/web"
    assert state["soonestExpirySeconds"] == 23 * 3600
    assert state["roots"] == [fake.authority.signer.fingerprint]
    families = {m.name: m for m in CertificateMetrics(manager).collect()}
    assert families["simmesh_proxy_certificates"].samples[0].value == 1
    assert families["simmesh_proxy_certificate_expiry_seconds"].samples[0].value == 23 * 3600


def test_the_config_s_node_table_drives_it() -> None:
    from mesh.core.schema import Mtls

    _clock, fake, manager = setup()
    fake.allowed = {"shop/web"}
    manager.want_config(
        Mtls(
            mode="permissive",
            trust_domain=TD,
            nodes={"node-a": ["shop/web"], "node-b": ["shop/db"]},
        )
    )
    step(manager)
    assert list(manager.held) == ["shop/web"]
    manager.want_config(None)  # mTLS turned off
    step(manager)
    assert manager.held == {}


def test_roots_of_the_bundle_are_kept_in_order() -> None:
    _clock, fake, manager = setup()
    fake.allowed = {"shop/web"}
    second = ca.generate_root(trust_domain=TD, now=START)
    fake.authority = fake.authority.rotate(second, now=START, overlap=timedelta(days=2))
    manager.want(["shop/web"])
    step(manager)
    old = ca.fingerprint(fake.authority.retired[0].certificate)
    assert manager.state()["roots"] == [second.fingerprint, old]
    assert manager.held["shop/web"].certificate.issuer == second.certificate.subject


def test_the_tunnels_are_told_when_what_is_held_changes(tmp_path: Path) -> None:
    """Obtained, renewed and dropped certificates reach the tunnels (``changed``); a step that
    changes nothing does not reload them."""
    clock, fake, manager = setup(tmp_path)
    told: list[list[str]] = []
    manager.changed = lambda m: told.append(sorted(m.held))
    fake.allowed = {"shop/web", "shop/db"}
    manager.want(["shop/web", "shop/db"])
    step(manager)
    assert told == [["shop/db", "shop/web"]]
    step(manager)
    assert len(told) == 1
    manager.want(["shop/db"])
    step(manager)
    assert told[-1] == ["shop/db"]
    clock.now += timedelta(hours=13)  # past half of the 24 h lifetime: renewed
    step(manager)
    assert len(told) == 3 and manager.counters.renewals == 1


def test_a_root_announced_is_trusted_without_a_renewal(tmp_path: Path) -> None:
    """The controller publishes a new root before it signs: the proxy re-reads the bundle
    (every 30 s) and trusts it (files rewritten, the tunnels told) with its certificates
    unchanged, so a peer's certificate of the new root verifies before this proxy renews."""
    clock, fake, manager = setup(tmp_path)
    told: list[int] = []
    manager.changed = lambda m: told.append(m.generation)
    fake.allowed = {"shop/web"}
    manager.want(["shop/web"])
    step(manager)
    held = manager.held["shop/web"].certificate
    old = fake.authority.signer
    new = ca.generate_root(trust_domain=TD, now=START)
    fake.authority = fake.authority.announce(new, now=clock(), delay=timedelta(seconds=90))
    clock.now += timedelta(seconds=29)
    step(manager)
    assert [ca.fingerprint(c) for c in manager.roots] == [old.fingerprint]  # not due yet
    assert manager.next_due() == START + timedelta(seconds=30)
    clock.now += timedelta(seconds=1)
    step(manager)
    assert [ca.fingerprint(c) for c in manager.roots] == [old.fingerprint, new.fingerprint]
    assert manager.held["shop/web"].certificate is held and manager.counters.renewals == 0
    assert manager.counters.bundle_changes == 1 and len(told) == 2
    written = (tmp_path / "roots.pem").read_bytes()
    assert ca.cert_pem(new.certificate) in written and ca.cert_pem(old.certificate) in written
    reads = fake.bundle_reads
    step(manager)  # the same bundle again: nothing changes, nothing is re-read early
    assert fake.bundle_reads == reads and len(told) == 2
    # the same roots in the next read: no change counted
    clock.now += timedelta(seconds=30)
    step(manager)
    assert fake.bundle_reads == reads + 1 and manager.counters.bundle_changes == 1


def test_a_certificate_whose_root_left_the_bundle_is_renewed_at_once() -> None:
    clock, fake, manager = setup()
    fake.allowed = {"shop/web"}
    manager.want(["shop/web"])
    step(manager)
    new = ca.generate_root(trust_domain=TD, now=START)
    fake.authority = Authority(TD, new)  # the old root gone from the bundle
    clock.now += timedelta(seconds=30)
    step(manager)
    assert manager.counters.renewals == 1
    assert manager.held["shop/web"].certificate.issuer == new.certificate.subject
    assert [ca.fingerprint(c) for c in manager.roots] == [new.fingerprint]


def test_a_failed_bundle_read_keeps_the_roots_held() -> None:
    clock, fake, manager = setup()
    fake.allowed = {"shop/web"}
    manager.want(["shop/web"])
    step(manager)
    roots = manager.roots
    fake.down = True
    clock.now += timedelta(seconds=30)
    step(manager)
    assert manager.roots == roots and manager.counters.bundle_failures == 1
    assert "shop/web" in manager.held
    metrics = {m.name: m for m in CertificateMetrics(manager).collect()}
    assert metrics["simmesh_proxy_trust_bundle_failures"].samples[0].value == 1
    assert metrics["simmesh_proxy_trust_roots"].samples[0].value == 1


def test_nothing_held_reads_no_bundle() -> None:
    clock, fake, manager = setup()
    step(manager)
    clock.now += timedelta(hours=1)
    step(manager)
    assert fake.bundle_reads == 0 and manager.next_due() is None
