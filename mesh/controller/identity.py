"""The controller as the mesh's CA: CertificateSigningRequests in, X.509-SVIDs out.

Transport: the Kubernetes CSR API (``certificates.k8s.io/v1``) with the signer name
``simmesh.io/workload``. A node proxy creates a CertificateSigningRequest with its pod's
projected ServiceAccount token; the API server records who asked (``spec.username``) and, for a
pod-bound token, the pod and node the token is bound to (``spec.extra``:
``authentication.kubernetes.io/node-name``, ``pod-name``, ``pod-uid``). No client can set those
fields, so the node a request comes from is established by the API server, not claimed.

For each pending request of our signer, :func:`judge` (pure) decides: the requester must be the
proxies' ServiceAccount, its token bound to a node, the request a valid CSR for one SPIFFE ID of
the trust domain (:func:`mesh.identity.ca.check_csr`), with the usages an SVID has, and a live
pod of that ServiceAccount must run on that node (:func:`mesh.identity.authorize.authorize`,
against the controller's Pod store; a pod UID named in the annotation ``simmesh.io/pod-uid``
must be that of a live pod). Then :class:`KubeCA` writes the verdict: the condition
``Approved`` (through ``/approval``) and the certificate (through ``/status``), or the condition
``Denied`` with the reason, which the proxy reads.

Roots: the signing root is the Secret ``--ca-secret`` (``tls.crt``, ``tls.key``) in the mesh
namespace, brought by the user or generated and stored there by the controller on first start.
The trust bundle is published in the ConfigMap ``simmesh-trust-bundle`` (``roots.pem``) of the
mesh namespace, which the proxies read, and in a ClusterTrustBundle
``simmesh.io:workload:roots`` where the API server serves them (certificates.k8s.io/v1beta1).
The ConfigMap's annotation ``simmesh.io/roots`` records which root signs, which signs next
and from when, and until when each retired one is trusted, so a restarted controller keeps the
overlap. Replacing the Secret's root rotates, in two steps (:mod:`mesh.identity.authority`): it
is checked every ``check_interval`` seconds; a new root is first published beside the old one,
which still signs for ``publish_delay`` (the proxies re-read the bundle meanwhile, so each
trusts the new root before any presents a certificate of it); then the new root signs and the
old one stays in the bundle for ``overlap`` (at least a certificate's lifetime).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import random
from collections.abc import Awaitable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
from cryptography import x509
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from mesh.controller.store import Store
from mesh.core.model import Pod
from mesh.identity import ca
from mesh.identity.authority import Authority, RetiredRoot
from mesh.identity.authorize import LivePod, NodeRequest, authorize
from mesh.identity.spiffe import IdentityError

log = logging.getLogger("simmesh.controller.identity")

SIGNER_NAME = "simmesh.io/workload"
BUNDLE_CONFIGMAP = "simmesh-trust-bundle"
BUNDLE_KEY = "roots.pem"
ROOTS_ANNOTATION = "simmesh.io/roots"
TRUST_BUNDLE_NAME = "simmesh.io:workload:roots"  # a ClusterTrustBundle linked to the signer
POD_UID_ANNOTATION = "simmesh.io/pod-uid"
EXTRA = "authentication.kubernetes.io/"
SIGNING = "signing"
SIGNS_FROM = "signs-from "  # + ISO time: the root announced to sign next


@dataclass(frozen=True, slots=True)
class CaOptions:
    trust_domain: str
    proxy_users: frozenset[str]  # system:serviceaccount:<ns>:<name> of the node proxies
    lifetime: timedelta = ca.DEFAULT_LIFETIME
    overlap: timedelta = timedelta(hours=48)
    secret: str = "simmesh-ca"
    check_interval: float = 30.0
    # a new root is trusted this long before it signs (the proxies re-read the bundle every
    # 30 s by default: at least twice that)
    publish_delay: timedelta = timedelta(seconds=90)


@dataclass(frozen=True, slots=True)
class Judgement:
    approve: bool
    reason: str  # CamelCase, the condition's reason
    message: str
    request: ca.CheckedRequest | None = None
    lifetime: timedelta = ca.DEFAULT_LIFETIME


def ours(csr: Mapping[str, Any]) -> bool:
    return (csr.get("spec") or {}).get("signerName") == SIGNER_NAME


def conditions(csr: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    return {
        str(c.get("type")): c
        for c in ((csr.get("status") or {}).get("conditions") or [])
        if isinstance(c, Mapping)
    }


def pending(csr: Mapping[str, Any]) -> bool:
    """Ours, not denied or failed, and without a certificate yet."""
    if not ours(csr):
        return False
    if {"Denied", "Failed"} & conditions(csr).keys():
        return False
    return not (csr.get("status") or {}).get("certificate")


def _deny(reason: str, message: str) -> Judgement:
    return Judgement(False, reason, message)


def judge(csr: Mapping[str, Any], *, options: CaOptions, pods: Iterable[LivePod]) -> Judgement:
    """Whether to sign a pending request of our signer, and why (pure)."""
    spec = csr.get("spec") or {}
    user = str(spec.get("username") or "")
    if user not in options.proxy_users:
        return _deny(
            "RequesterNotProxy",
            f"spec.username: {user!r} is not the node proxies' ServiceAccount "
            f"({', '.join(sorted(options.proxy_users))})",
        )
    extra = spec.get("extra") or {}
    nodes = extra.get(f"{EXTRA}node-name") or []
    if not isinstance(nodes, list) or len(nodes) != 1 or not nodes[0]:
        return _deny(
            "NoNodeBinding",
            f"spec.extra[{EXTRA}node-name]: expected the node of the proxy's pod-bound token "
            "(use the pod's projected ServiceAccount token), got none",
        )
    node = str(nodes[0])
    usages = set(spec.get("usages") or [])
    if not usages <= set(ca.SVID_USAGES):
        return _deny(
            "InvalidRequest",
            f"spec.usages: expected only {', '.join(ca.SVID_USAGES)}, got "
            f"{', '.join(sorted(usages - set(ca.SVID_USAGES)))}",
        )
    try:
        pem = base64.b64decode(str(spec.get("request") or ""), validate=True)
        checked = ca.check_csr(pem, trust_domain=options.trust_domain)
    except binascii.Error:
        return _deny("InvalidRequest", "spec.request: expected base64 of a PEM CSR")
    except IdentityError as exc:
        return _deny("InvalidRequest", str(exc))
    annotations = (csr.get("metadata") or {}).get("annotations") or {}
    uid = annotations.get(POD_UID_ANNOTATION)
    identity = checked.identity
    decision = authorize(
        NodeRequest(node, identity.namespace, identity.service_account, pod_uid=uid), pods
    )
    if not decision.allowed:
        return _deny(decision.verdict.value, decision.reason)
    lifetime = options.lifetime
    seconds = spec.get("expirationSeconds")
    if isinstance(seconds, int) and not isinstance(seconds, bool) and seconds > 0:
        lifetime = max(ca.MIN_LIFETIME, min(lifetime, timedelta(seconds=seconds)))
    return Judgement(
        True,
        "NodeAuthorized",
        f"{identity.uri} for node {node}: {decision.reason}",
        checked,
        lifetime,
    )


def live_pods(store: Store) -> list[LivePod]:
    """The Pods of the controller's store (watched namespaces) as the authorizer sees them."""
    pods = []
    for (kind, _, _), entry in store.entries.items():
        if kind == "Pod" and isinstance(entry.value, Pod):
            pod = entry.value
            pods.append(
                LivePod(
                    pod.namespace,
                    pod.name,
                    entry.uid,
                    pod.service_account,
                    pod.node,
                    pod.phase,
                    pod.host_network,
                )
            )
    return pods


# -- the trust bundle's record ------------------------------------------------------------------


def bundle_record(authority: Authority, now: datetime) -> dict[str, str]:
    record = {authority.signer.fingerprint: SIGNING}
    for root in authority.prune(now).retired:
        record[ca.fingerprint(root.certificate)] = root.until.isoformat()
    if authority.pending is not None:
        pending = authority.pending
        record[pending.signer.fingerprint] = SIGNS_FROM + pending.signs_from.isoformat()
    return record


def restore(
    authority: Authority, configmap: Mapping[str, Any] | None, *, now: datetime, overlap: timedelta
) -> Authority:
    """The retired roots a published bundle records; its signing root, when it is not the
    current one, retired now (the Secret was replaced while no controller ran, or while the
    last one waited to sign with it: the old key is gone with the Secret, so the new root
    signs at once; logged)."""
    if not configmap:
        return authority
    data = configmap.get("data") or {}
    annotations = (configmap.get("metadata") or {}).get("annotations") or {}
    try:
        record = json.loads(annotations.get(ROOTS_ANNOTATION) or "{}")
        certificates = x509.load_pem_x509_certificates(str(data.get(BUNDLE_KEY) or "").encode())
    except ValueError:
        log.warning(
            "ConfigMap %s: unreadable record of roots; starting a new one", BUNDLE_CONFIGMAP
        )
        return authority
    retired = []
    for certificate in certificates:
        mark = record.get(ca.fingerprint(certificate)) if isinstance(record, dict) else None
        if ca.fingerprint(certificate) == authority.signer.fingerprint:
            if isinstance(mark, str) and mark.startswith(SIGNS_FROM):
                due = _time(mark.removeprefix(SIGNS_FROM))
                if due is not None and due > now:
                    log.warning(
                        "root %s was announced to sign from %s; signing with it now (the old "
                        "key left the Secret): a proxy that has not read the bundle since may "
                        "refuse its certificates until it does",
                        authority.signer.fingerprint,
                        due.isoformat(),
                    )
            continue
        if not isinstance(mark, str) or mark.startswith(SIGNS_FROM):
            continue  # a root announced and never signing: the Secret went back
        until = now + overlap if mark == SIGNING else _time(mark)
        if until is not None:
            retired.append(RetiredRoot(certificate, until))
    return Authority(authority.trust_domain, authority.signer, tuple(retired)).prune(now)


def _time(text: str) -> datetime | None:
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        return None
    return value if value.tzinfo is not None else None


def _now() -> datetime:
    return datetime.now(UTC)


# -- the Kubernetes side --------------------------------------------------------------------------


class KubeCA:
    """Loads or generates the root, publishes the bundle, watches and answers CSRs."""

    def __init__(
        self, api: client.ApiClient, store: Store, *, namespace: str, options: CaOptions
    ) -> None:
        self.api = api
        self.store = store
        self.namespace = namespace
        self.options = options
        self.authority: Authority | None = None
        self.issued = 0
        self.denied = 0
        self.failed = 0
        self.trust_bundles = True  # ClusterTrustBundle served; False after a 404
        self._published: bytes = b""

    # roots
    async def start(self) -> None:
        now = _now()
        signer = await self._signer(now)
        authority = Authority(self.options.trust_domain, signer)
        self.authority = restore(
            authority, await self._read_bundle(), now=now, overlap=self.options.overlap
        )
        await self.publish(now)
        log.info(
            "CA for %s: signing with %s (%d roots trusted)",
            self.options.trust_domain,
            signer.fingerprint,
            len(self.authority.roots(now)),
        )

    async def _signer(self, now: datetime) -> ca.Signer:
        core = client.CoreV1Api(self.api)
        try:
            response = await _raw(
                core.read_namespaced_secret(
                    self.options.secret, self.namespace, _preload_content=False
                )
            )
            return _signer_of(json.loads(await response.read()), self.options.secret, now)
        except ApiException as exc:
            if exc.status != 404:
                raise
        signer = ca.generate_root(trust_domain=self.options.trust_domain, now=now)
        secret = {
            "apiVersion": "v1",
            "kind": "Secret",
            "type": "kubernetes.io/tls",
            "metadata": {
                "name": self.options.secret,
                "namespace": self.namespace,
                "labels": {"app.kubernetes.io/managed-by": "simmesh"},
            },
            "data": {
                "tls.crt": base64.b64encode(ca.cert_pem(signer.certificate)).decode(),
                "tls.key": base64.b64encode(ca.key_pem(signer.key)).decode(),
            },
        }
        try:
            await core.create_namespaced_secret(self.namespace, _body(secret))
            log.info(
                "generated a root for %s, stored in Secret %s",
                self.options.trust_domain,
                self.options.secret,
            )
            return signer
        except ApiException as exc:
            if exc.status != 409:  # another controller made one first: use it
                raise
        response = await _raw(
            core.read_namespaced_secret(self.options.secret, self.namespace, _preload_content=False)
        )
        return _signer_of(json.loads(await response.read()), self.options.secret, now)

    async def _read_bundle(self) -> dict[str, Any] | None:
        core = client.CoreV1Api(self.api)
        try:
            response = await _raw(
                core.read_namespaced_config_map(
                    BUNDLE_CONFIGMAP, self.namespace, _preload_content=False
                )
            )
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        value: dict[str, Any] = json.loads(await response.read())
        return value

    async def check_rotation(self) -> None:
        """A new root in the Secret is trusted from now on and signs after the publish delay;
        the old one then stays trusted for the overlap. Prunes roots past their overlap and
        republishes when the bundle changed."""
        assert self.authority is not None
        now = _now()
        try:
            signer = await self._signer(now)
        except IdentityError as exc:
            log.error(
                "Secret %s: %s; still signing with %s",
                self.options.secret,
                exc,
                self.authority.signer.fingerprint,
            )
            signer = self.authority.signer
        before = self.authority
        announced = before.announce(signer, now=now, delay=self.options.publish_delay)
        if announced.pending is not None and announced.pending != before.pending:
            log.info(
                "new root %s in Secret %s: trusted now, signing from %s (%s still signs)",
                signer.fingerprint,
                self.options.secret,
                announced.pending.signs_from.isoformat(),
                before.signer.fingerprint,
            )
        elif before.pending is not None and announced.pending is None:
            log.info(
                "Secret %s holds %s again: %s will not sign",
                self.options.secret,
                signer.fingerprint,
                before.pending.signer.fingerprint,
            )
        self.authority = announced.advance(now, overlap=self.options.overlap).prune(now)
        if self.authority.signer.fingerprint != before.signer.fingerprint:
            log.info(
                "root rotated: signing with %s, trusting %s until %s",
                self.authority.signer.fingerprint,
                before.signer.fingerprint,
                (now + self.options.overlap).isoformat(),
            )
        await self.publish(now)

    async def publish(self, now: datetime) -> None:
        assert self.authority is not None
        pem = self.authority.bundle_pem(now)
        record = json.dumps(bundle_record(self.authority, now), sort_keys=True)
        if pem + record.encode() == self._published:
            return
        core = client.CoreV1Api(self.api)
        configmap = {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {
                "name": BUNDLE_CONFIGMAP,
                "namespace": self.namespace,
                "labels": {"app.kubernetes.io/managed-by": "simmesh"},
                "annotations": {ROOTS_ANNOTATION: record},
            },
            "data": {BUNDLE_KEY: pem.decode()},
        }
        try:
            await core.replace_namespaced_config_map(
                BUNDLE_CONFIGMAP, self.namespace, _body(configmap)
            )
        except ApiException as exc:
            if exc.status != 404:
                raise
            await core.create_namespaced_config_map(self.namespace, _body(configmap))
        await self._publish_trust_bundle(pem)
        self._published = pem + record.encode()

    async def _publish_trust_bundle(self, pem: bytes) -> None:
        if not self.trust_bundles:
            return
        beta = client.CertificatesV1beta1Api(self.api)
        bundle: dict[str, Any] = {
            "apiVersion": "certificates.k8s.io/v1beta1",
            "kind": "ClusterTrustBundle",
            "metadata": {
                "name": TRUST_BUNDLE_NAME,
                "labels": {"app.kubernetes.io/managed-by": "simmesh"},
            },
            "spec": {"signerName": SIGNER_NAME, "trustBundle": pem.decode()},
        }
        try:
            try:
                current = await _raw(
                    beta.read_cluster_trust_bundle(TRUST_BUNDLE_NAME, _preload_content=False)
                )
                bundle["metadata"]["resourceVersion"] = json.loads(await current.read())[
                    "metadata"
                ]["resourceVersion"]
                await beta.replace_cluster_trust_bundle(TRUST_BUNDLE_NAME, _body(bundle))
            except ApiException as exc:
                if exc.status != 404 or not await self._served():
                    raise
                await beta.create_cluster_trust_bundle(_body(bundle))
        except ApiException as exc:
            if exc.status == 404:
                self.trust_bundles = False
                log.info(
                    "ClusterTrustBundles are not served (certificates.k8s.io/v1beta1): "
                    "the trust bundle is in ConfigMap %s only",
                    BUNDLE_CONFIGMAP,
                )
            else:
                log.warning(
                    "ClusterTrustBundle %s: %s %s", TRUST_BUNDLE_NAME, exc.status, exc.reason
                )

    async def _served(self) -> bool:
        try:
            resources = await client.CertificatesV1beta1Api(self.api).get_api_resources()
        except ApiException as exc:
            if exc.status == 404:
                return False
            raise
        return any(r.name == "clustertrustbundles" for r in resources.resources or [])

    # requests
    async def run(self) -> None:
        """Watch CSRs (list, watch, relist) and answer each pending one of our signer; check
        the Secret for a new root every ``check_interval`` seconds."""
        await asyncio.gather(self._watch_loop(), self._maintain())

    async def _maintain(self) -> None:
        while True:
            delay = self.options.check_interval
            if self.authority is not None and self.authority.pending is not None:
                due = (self.authority.pending.signs_from - _now()).total_seconds()
                # switch on time, not up to a check late (at least 1 s apart: a check that
                # failed leaves the switch due)
                delay = min(delay, max(1.0, due))
            await asyncio.sleep(delay)
            try:
                await self.check_rotation()
            except (ApiException, aiohttp.ClientError, OSError) as exc:
                log.warning("checking the CA Secret: %s", exc)

    async def _watch_loop(self) -> None:
        certs = client.CertificatesV1Api(self.api)
        backoff = 0.2
        version: str | None = None
        while True:
            try:
                if version is None:
                    response = await _raw(
                        certs.list_certificate_signing_request(_preload_content=False)
                    )
                    data = json.loads(await response.read())
                    for item in data.get("items") or []:
                        await self.answer(item)
                    version = str((data.get("metadata") or {}).get("resourceVersion") or "")
                version = await self._watch(certs, version)
                backoff = 0.2
            except asyncio.CancelledError:
                raise
            except _Gone:
                version = None
            except (ApiException, aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
                if isinstance(exc, ApiException) and exc.status == 410:
                    version = None
                    continue
                log.warning("CSR watch: %s; retrying in %.1fs", exc, backoff)
                await asyncio.sleep(backoff * (0.5 + random.random()))
                backoff = min(30.0, backoff * 2)

    async def _watch(self, certs: client.CertificatesV1Api, version: str) -> str:
        response = await _raw(
            certs.list_certificate_signing_request(
                watch=True,
                resource_version=version,
                allow_watch_bookmarks=True,
                timeout_seconds=240,
                _preload_content=False,
            )
        )
        try:
            async for line in response.content:
                if not line.strip():
                    continue
                event = json.loads(line)
                obj = event.get("object") or {}
                if event.get("type") == "ERROR":
                    if obj.get("code") == 410:
                        raise _Gone()
                    raise ValueError(f"watch error: {obj.get('message')}")
                version = str((obj.get("metadata") or {}).get("resourceVersion") or version)
                if event.get("type") in ("ADDED", "MODIFIED"):
                    await self.answer(obj)
        finally:
            response.release()
        return version

    async def answer(self, csr: dict[str, Any]) -> None:
        """Approve and sign, or deny, one CSR (nothing when it is not a pending one of ours)."""
        if not pending(csr) or self.authority is None:
            return
        name = str((csr.get("metadata") or {}).get("name"))
        approved = "Approved" in conditions(csr)
        judgement = judge(csr, options=self.options, pods=live_pods(self.store))
        certs = client.CertificatesV1Api(self.api)
        try:
            if not judgement.approve:
                await self._condition(certs, csr, "Denied", judgement, approval=True)
                self.denied += 1
                log.info("CSR %s denied: %s: %s", name, judgement.reason, judgement.message)
                return
            assert judgement.request is not None
            now = _now()
            try:
                certificate = self.authority.issue(
                    judgement.request, now=now, lifetime=judgement.lifetime
                )
            except IdentityError as exc:
                await self._condition(
                    certs, csr, "Failed", _deny("SigningFailed", str(exc)), approval=False
                )
                self.failed += 1
                log.error("CSR %s: signing failed: %s", name, exc)
                return
            if not approved:
                csr = await self._condition(certs, csr, "Approved", judgement, approval=True)
            csr.setdefault("status", {})["certificate"] = base64.b64encode(
                ca.cert_pem(certificate)
            ).decode()
            await _raw(
                certs.replace_certificate_signing_request_status(
                    name, _body(csr), _preload_content=False
                )
            )
            self.issued += 1
            log.info(
                "CSR %s: issued %s until %s",
                name,
                judgement.request.identity.uri,
                certificate.not_valid_after_utc.isoformat(),
            )
        except ApiException as exc:
            if exc.status in (404, 409):  # gone, or changed meanwhile: the watch brings it again
                return
            raise

    async def _condition(
        self,
        certs: client.CertificatesV1Api,
        csr: dict[str, Any],
        kind: str,
        judgement: Judgement,
        *,
        approval: bool,
    ) -> dict[str, Any]:
        now = _now().strftime("%Y-%m-%dT%H:%M:%SZ")
        status = csr.setdefault("status", {})
        status["conditions"] = [
            *(status.get("conditions") or []),
            {
                "type": kind,
                "status": "True",
                "reason": judgement.reason,
                "message": judgement.message[:1000],
                "lastUpdateTime": now,
                "lastTransitionTime": now,
            },
        ]
        name = str(csr["metadata"]["name"])
        if approval:
            response = await _raw(
                certs.replace_certificate_signing_request_approval(
                    name, _body(csr), _preload_content=False
                )
            )
        else:
            response = await _raw(
                certs.replace_certificate_signing_request_status(
                    name, _body(csr), _preload_content=False
                )
            )
        value: dict[str, Any] = json.loads(await response.read())
        return value


async def _raw(call: Awaitable[Any]) -> Any:
    """The answer of a client call made with ``_preload_content=False``: the raw response,
    which the client does not check, so an error answer raises ApiException here."""
    response = await call
    if not 200 <= response.status <= 299:
        try:
            body = json.loads(await response.read())
            message = body.get("message") if isinstance(body, dict) else None
        except ValueError:
            message = None
        finally:
            response.release()
        raise ApiException(status=response.status, reason=str(message or "no message"))
    return response


def _body(document: Mapping[str, Any]) -> Any:
    """A request body as a plain dict (the client's signatures name model classes)."""
    return document


class _Gone(Exception):
    pass


def _signer_of(secret: Mapping[str, Any], name: str, now: datetime) -> ca.Signer:
    data = secret.get("data") or {}
    try:
        cert = base64.b64decode(str(data.get("tls.crt") or ""))
        key = base64.b64decode(str(data.get("tls.key") or ""))
    except binascii.Error:
        raise IdentityError(f"Secret {name}", "tls.crt and tls.key must be base64") from None
    if not cert or not key:
        raise IdentityError(
            f"Secret {name}", "expected tls.crt and tls.key (a CA's PEM certificate and key)"
        )
    try:
        return ca.load_signer(cert, key, now=now)
    except IdentityError as exc:
        raise IdentityError(f"Secret {name} {exc.field}", exc.message) from None
