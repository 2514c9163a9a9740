"""The node proxy's certificates: one X.509-SVID per ServiceAccount with a pod on this node.

The config says which identities the node's pods have (``settings.mtls.nodes[<node>]``, built
by the controller from its live Pod store). :meth:`CertificateManager.want` takes that set;
the manager then, one step at a time (:meth:`CertificateManager.step`):

- requests a certificate for each wanted identity it does not hold: a fresh ECDSA P-256 key
  made here (it never leaves the process; on disk only when ``key_dir`` is set, mode 0600, on
  a memory-backed volume in the chart), a CSR sent through the :class:`CertificateSource`
  (the Kubernetes CSR API in a cluster, :mod:`mesh.proxy.kubecsr`);
- checks what comes back before holding it: it verifies against the trust bundle, names the
  identity asked for and certifies this key (a CA answering with another SAN or key is refused);
- renews each at ``renew_fraction`` (half) of its lifetime, with a new key;
- drops an identity as soon as no local pod has it any more (key and files deleted);
- after a failure, tries again after a backoff (1 s doubling to 60 s) and counts it;
- while it holds any, re-reads the trust bundle every ``bundle_refresh`` seconds (30): a root
  the controller announced is trusted (the tunnels reload) before any peer presents a
  certificate of it, and a certificate whose root left the bundle is renewed at once.

Time comes from an injected clock (``now``), so the tests step through a day in no time.
:meth:`CertificateManager.state` is what ``/metrics`` (and later ``simmesh check``) show:
identities held, their expiry and renewal times, the trust roots, the counters.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from mesh.identity import ca
from mesh.identity.authority import verify_svid
from mesh.identity.spiffe import IdentityError, SpiffeId, spiffe_id

log = logging.getLogger("simmesh.proxy.certs")

BACKOFF_START = 1.0
BACKOFF_MAX = 60.0


class Denied(Exception):
    """The CA refused the request; the message says why (its reason and message)."""


class CertificateSource(Protocol):
    """Where certificates come from (the CA's transport)."""

    async def request(self, csr_pem: bytes, *, identity: SpiffeId, lifetime: timedelta) -> bytes:
        """The PEM certificate (chain) for the CSR; Denied, or OSError/TimeoutError."""
        ...

    async def trust_bundle(self) -> bytes:
        """The PEM roots to verify certificates with."""
        ...


@dataclass(slots=True)
class Held:
    identity: SpiffeId
    key: ca.PrivateKey
    certificate: x509.Certificate
    received: datetime
    renew_at: datetime

    @property
    def not_after(self) -> datetime:
        return self.certificate.not_valid_after_utc


@dataclass(slots=True)
class Counters:
    issued: int = 0
    renewals: int = 0
    failures: dict[str, int] = field(default_factory=dict)  # reason -> count
    dropped: int = 0
    bundle_changes: int = 0  # trust bundles read that differed from the roots held
    bundle_failures: int = 0  # trust bundle refreshes that failed (kept the roots held)


def _utcnow() -> datetime:
    return datetime.now(UTC)


class CertificateManager:
    def __init__(
        self,
        source: CertificateSource,
        *,
        node: str,
        trust_domain: str = "cluster.local",
        now: Callable[[], datetime] = _utcnow,
        renew_fraction: float = 0.5,
        lifetime: timedelta = ca.DEFAULT_LIFETIME,
        key_dir: Path | None = None,
        bundle_refresh: float = 30.0,
    ) -> None:
        if not 0.0 < renew_fraction < 1.0:
            raise ValueError(f"renew_fraction: expected a fraction in (0, 1), got {renew_fraction}")
        if not bundle_refresh > 0.0:
            raise ValueError(f"bundle_refresh: expected seconds > 0, got {bundle_refresh}")
        self.source = source
        self.node = node
        self.trust_domain = trust_domain
        self.now = now
        self.renew_fraction = renew_fraction
        self.lifetime = lifetime
        self.key_dir = key_dir
        self.bundle_refresh = timedelta(seconds=bundle_refresh)
        self._bundle_due: datetime | None = None  # the next re-read of the trust bundle
        self.wanted: set[str] = set()
        self.held: dict[str, Held] = {}
        self.roots: tuple[x509.Certificate, ...] = ()
        self.counters = Counters()
        self._retry_at: dict[str, datetime] = {}
        self._backoff: dict[str, float] = {}
        self._last_error: dict[str, str] = {}  # identity -> why its last request failed
        self._wake = asyncio.Event()
        self.generation = 0  # bumped whenever what is held changes
        self.changed: Callable[[CertificateManager], None] | None = None  # told after a step

    # -- what the config says -----------------------------------------------------------------

    def want(self, identities: Iterable[str], *, trust_domain: str | None = None) -> None:
        """The identities (``namespace/serviceaccount``) of this node's pods now."""
        if trust_domain is not None and trust_domain != self.trust_domain:
            self.trust_domain = trust_domain
            self.held.clear()  # certificates of another trust domain are no use
        self.wanted = set(identities)
        self._wake.set()

    def want_config(self, settings_mtls: Any) -> None:
        """From a MeshConfig's ``settings.mtls`` (None: mTLS off, hold nothing)."""
        if settings_mtls is None:
            self.want(())
            return
        self.want(settings_mtls.nodes.get(self.node, ()), trust_domain=settings_mtls.trust_domain)

    # -- one step -----------------------------------------------------------------------------

    async def step(self) -> None:
        """Drop what no local pod needs, then request or renew what is due; tell ``changed``
        when what is held changed (the tunnels load the new files)."""
        before = self.generation
        await self._step()
        if self.generation != before and self.changed is not None:
            self.changed(self)

    async def _step(self) -> None:
        now = self.now()
        for name in sorted(set(self.held) - self.wanted):
            self._drop(name)
        for name in sorted(set(self._retry_at) - self.wanted):
            self._retry_at.pop(name, None)
            self._backoff.pop(name, None)
            self._last_error.pop(name, None)
        if self.held and (self._bundle_due is None or now >= self._bundle_due):
            await self.refresh_roots()
        for name in sorted(self.wanted):
            held = self.held.get(name)
            due = held is None or now >= held.renew_at
            if due and now >= self._retry_at.get(name, now):
                await self._obtain(name, renewal=held is not None)

    def next_due(self) -> datetime | None:
        """When the next request, renewal or re-read of the bundle is due (None: nothing
        wanted)."""
        times = [h.renew_at for n, h in self.held.items() if n in self.wanted]
        times += [self._retry_at.get(n, self.now()) for n in self.wanted if n not in self.held]
        if self.held and self._bundle_due is not None:
            times.append(self._bundle_due)
        return min(times) if times else None

    async def refresh_roots(self) -> None:
        """Re-read the trust bundle; when its roots changed, trust them (written out, the
        generation bumped: the tunnels reload) and renew at once a certificate that no longer
        verifies against them. A failed or empty read keeps the roots held."""
        now = self.now()
        self._bundle_due = now + self.bundle_refresh
        try:
            roots = tuple(x509.load_pem_x509_certificates(await self.source.trust_bundle()))
        except (OSError, TimeoutError, ValueError) as exc:  # ValueError: empty or unreadable
            self.counters.bundle_failures += 1
            log.warning(
                "trust bundle: %s: %s; keeping the %d roots held, again in %.0fs",
                type(exc).__name__,
                exc,
                len(self.roots),
                self.bundle_refresh.total_seconds(),
            )
            return
        if not self._trust(roots):
            return
        for name, held in sorted(self.held.items()):
            try:
                verify_svid(held.certificate, roots, now=now, trust_domain=self.trust_domain)
            except IdentityError as exc:
                held.renew_at = now
                log.info("certificate for %s renewed now: %s", name, exc)

    def _trust(self, roots: tuple[x509.Certificate, ...]) -> bool:
        """Trust ``roots`` from now; whether they changed the roots held (the first ones do
        not count as a change)."""
        changed = bool(self.roots) and [ca.fingerprint(c) for c in roots] != [
            ca.fingerprint(c) for c in self.roots
        ]
        self.roots = roots
        self._bundle_due = self.now() + self.bundle_refresh
        if not changed:
            return False
        self.counters.bundle_changes += 1
        self.generation += 1
        if self.key_dir is not None:
            _write_private(self.key_dir / "roots.pem", b"".join(ca.cert_pem(c) for c in roots))
        log.info("trust bundle changed: %s", ", ".join(ca.fingerprint(c) for c in roots))
        return True

    async def run(self, *, sleep: Callable[[float], Any] = asyncio.sleep) -> None:
        """Step whenever something is due or the wanted set changes."""
        while True:
            self._wake.clear()
            await self.step()
            due = self.next_due()
            delay = 3600.0 if due is None else max(0.05, (due - self.now()).total_seconds())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), min(delay, 3600.0))

    async def _obtain(self, name: str, *, renewal: bool) -> None:
        try:
            identity = spiffe_id(self.trust_domain, name)
            key = ca.new_key()
            pem = await self.source.request(
                ca.make_csr(key, identity), identity=identity, lifetime=self.lifetime
            )
            roots = x509.load_pem_x509_certificates(await self.source.trust_bundle())
            certificate = self._check(pem, key, identity, roots)
        except Denied as exc:
            self._failed(name, "denied", str(exc))
            return
        except IdentityError as exc:
            self._failed(name, "invalid-certificate", str(exc))
            return
        except ValueError as exc:  # unreadable PEM
            self._failed(name, "invalid-certificate", f"unreadable: {exc}")
            return
        except (OSError, TimeoutError) as exc:
            self._failed(name, "unavailable", f"{type(exc).__name__}: {exc}")
            return
        if name not in self.wanted:  # the last pod left while we asked
            return
        received = self.now()
        span = certificate.not_valid_after_utc - received
        self._trust(tuple(roots))
        self.held[name] = Held(
            identity, key, certificate, received, received + span * self.renew_fraction
        )
        self._retry_at.pop(name, None)
        self._backoff.pop(name, None)
        self._last_error.pop(name, None)
        self.counters.issued += 1
        self.generation += 1
        if renewal:
            self.counters.renewals += 1
        self._write(name)
        log.info(
            "certificate for %s %s, valid until %s",
            identity.uri,
            "renewed" if renewal else "obtained",
            certificate.not_valid_after_utc.isoformat(),
        )

    def _check(
        self, pem: bytes, key: ca.PrivateKey, identity: SpiffeId, roots: list[x509.Certificate]
    ) -> x509.Certificate:
        chain = x509.load_pem_x509_certificates(pem)
        certificate = chain[0]
        got = verify_svid(
            certificate,
            tuple(roots),
            now=self.now(),
            trust_domain=self.trust_domain,
            intermediates=tuple(chain[1:]),
        )
        if got != identity:
            raise IdentityError(
                "certificate subjectAltName URI", f"expected {identity.uri}, got {got.uri}"
            )
        if _spki(certificate.public_key()) != _spki(key.public_key()):
            raise IdentityError("certificate public key", "is not the key this proxy asked for")
        return certificate

    def _failed(self, name: str, reason: str, message: str) -> None:
        self.counters.failures[reason] = self.counters.failures.get(reason, 0) + 1
        backoff = self._backoff.get(name, BACKOFF_START / 2) * 2
        self._backoff[name] = min(BACKOFF_MAX, backoff)
        self._retry_at[name] = self.now() + timedelta(seconds=self._backoff[name])
        self._last_error[name] = f"{reason}: {message}"[:300]
        log.warning(
            "certificate for %s: %s: %s; again in %.0fs", name, reason, message, self._backoff[name]
        )

    def _drop(self, name: str) -> None:
        self.held.pop(name, None)
        self.generation += 1
        self.counters.dropped += 1
        if self.key_dir is not None:
            for suffix in (".key", ".crt"):
                with contextlib.suppress(FileNotFoundError):
                    (self.key_dir / f"{_file_name(name)}{suffix}").unlink()
        log.info("certificate for %s dropped: no pod of it on node %s", name, self.node)

    # -- files ----------------------------------------------------------------------------------

    def _write(self, name: str) -> None:
        """Key, certificate and roots as files (``ssl.load_cert_chain`` takes files only)."""
        if self.key_dir is None:
            return
        held = self.held[name]
        base = self.key_dir / _file_name(name)
        _write_private(base.with_suffix(".key"), ca.key_pem(held.key))
        _write_private(base.with_suffix(".crt"), ca.cert_pem(held.certificate))
        _write_private(self.key_dir / "roots.pem", b"".join(ca.cert_pem(c) for c in self.roots))

    def paths(self, name: str) -> tuple[Path, Path] | None:
        """The (certificate, key) files of an identity held, when written to files."""
        if self.key_dir is None or name not in self.held:
            return None
        base = self.key_dir / _file_name(name)
        return base.with_suffix(".crt"), base.with_suffix(".key")

    # -- state ----------------------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        now = self.now()
        held = {
            name: {
                "spiffeId": h.identity.uri,
                "notAfter": h.not_after.isoformat(),
                "renewAt": h.renew_at.isoformat(),
                "secondsToExpiry": round((h.not_after - now).total_seconds(), 3),
                "secondsToRenewal": round((h.renew_at - now).total_seconds(), 3),
            }
            for name, h in sorted(self.held.items())
        }
        soonest = min((h.not_after for h in self.held.values()), default=None)
        return {
            "node": self.node,
            "trustDomain": self.trust_domain,
            "wanted": sorted(self.wanted),
            "held": held,
            "roots": [ca.fingerprint(c) for c in self.roots],
            "issued": self.counters.issued,
            "renewals": self.counters.renewals,
            "bundleChanges": self.counters.bundle_changes,
            "bundleFailures": self.counters.bundle_failures,
            "failures": dict(sorted(self.counters.failures.items())),
            "dropped": self.counters.dropped,
            "soonestExpirySeconds": None if soonest is None else (soonest - now).total_seconds(),
            # identities whose last request failed: why, and when the next one goes
            "pending": {
                name: {
                    "error": self._last_error.get(name, ""),
                    "retryAt": self._retry_at[name].isoformat(),
                }
                for name in sorted(self._retry_at)
                if name in self.wanted
            },
        }


def _file_name(identity: str) -> str:
    namespace, _, name = identity.partition("/")
    return f"{namespace}_{name}"  # neither may hold '_' (DNS names)


def _write_private(path: Path, data: bytes) -> None:
    """Written whole (a reader never sees half a key), mode 0600 from the start."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, data)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def _spki(key: object) -> bytes:
    encode = getattr(key, "public_bytes", None)
    if encode is None:
        return b""
    data = encode(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return data if isinstance(data, bytes) else b""


class CertificateMetrics(Collector):
    """The manager's state as metric families, for the proxy's /metrics."""

    def __init__(self, manager: CertificateManager) -> None:
        self.manager = manager

    def collect(self) -> Iterator[Metric]:
        state = self.manager.state()
        held = GaugeMetricFamily("simmesh_proxy_certificates", "Workload certificates held")
        held.add_metric([], len(state["held"]))
        yield held
        renewals = CounterMetricFamily(
            "simmesh_proxy_certificate_renewals", "Certificates renewed before expiry"
        )
        renewals.add_metric([], state["renewals"])
        yield renewals
        failures = CounterMetricFamily(
            "simmesh_proxy_certificate_failures",
            "Certificate requests that failed (denied, invalid-certificate, unavailable)",
            labels=["reason"],
        )
        for reason, count in state["failures"].items():
            failures.add_metric([reason], count)
        yield failures
        bundle = CounterMetricFamily(
            "simmesh_proxy_trust_bundle_changes",
            "Trust bundles read with other roots than those held (a root announced or retired)",
        )
        bundle.add_metric([], state["bundleChanges"])
        yield bundle
        bundle_failures = CounterMetricFamily(
            "simmesh_proxy_trust_bundle_failures",
            "Re-reads of the trust bundle that failed (the roots held were kept)",
        )
        bundle_failures.add_metric([], state["bundleFailures"])
        yield bundle_failures
        roots = GaugeMetricFamily("simmesh_proxy_trust_roots", "Roots in the trust bundle held")
        roots.add_metric([], len(state["roots"]))
        yield roots
        expiry = GaugeMetricFamily(
            "simmesh_proxy_certificate_expiry_seconds",
            "Seconds until the soonest certificate held expires (absent when none is held)",
        )
        if state["soonestExpirySeconds"] is not None:
            expiry.add_metric([], state["soonestExpirySeconds"])
        yield expiry
