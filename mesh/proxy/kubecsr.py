"""Certificates from the Kubernetes CSR API: the node proxy's side of the controller's CA.

The proxy creates a ``certificates.k8s.io/v1`` CertificateSigningRequest for signer
``simmesh.io/workload`` with its pod's projected ServiceAccount token (re-read for every
request: the kubelet rotates it). That token is bound to the proxy's pod, so the API server
writes the pod's node into the request (``spec.extra``) and the controller's node authorizer
knows which node asks. The proxy then reads the request until it carries a certificate, a
``Denied`` or a ``Failed`` condition (:class:`~mesh.proxy.certs.Denied` with the reason), or
``timeout`` passes. The trust bundle is read from the ConfigMap ``simmesh-trust-bundle`` of the
mesh namespace, over the same authenticated TLS connection: never from the controller's
plain-HTTP API, which anyone on the network could pretend to be.
"""

from __future__ import annotations

import asyncio
import base64
import json
import ssl
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiohttp

from mesh.identity import ca
from mesh.identity.spiffe import SpiffeId
from mesh.proxy.certs import Denied

SIGNER_NAME = "simmesh.io/workload"
BUNDLE_CONFIGMAP = "simmesh-trust-bundle"
BUNDLE_KEY = "roots.pem"
IN_CLUSTER = Path("/var/run/secrets/kubernetes.io/serviceaccount")
CSR_PATH = "/apis/certificates.k8s.io/v1/certificatesigningrequests"
MIN_EXPIRATION = 600  # the API's minimum expirationSeconds


class KubeCsrSource:
    def __init__(
        self,
        *,
        server: str,
        token_file: Path,
        ca_file: Path | None,
        namespace: str,
        node: str,
        timeout: float = 30.0,
        poll: float = 0.25,
    ) -> None:
        self.server = server.rstrip("/")
        self.token_file = token_file
        self.namespace = namespace
        self.node = node
        self.timeout = timeout
        self.poll = poll
        self._ssl = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)

    @classmethod
    def in_cluster(cls, *, namespace: str, node: str) -> KubeCsrSource:
        import os

        host = os.environ.get("KUBERNETES_SERVICE_HOST", "kubernetes.default.svc")
        port = os.environ.get("KUBERNETES_SERVICE_PORT", "443")
        if ":" in host:
            host = f"[{host}]"
        return cls(
            server=f"https://{host}:{port}",
            token_file=IN_CLUSTER / "token",
            ca_file=IN_CLUSTER / "ca.crt",
            namespace=namespace,
            node=node,
        )

    async def _call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        token = self.token_file.read_text().strip()
        headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
        timeout = aiohttp.ClientTimeout(total=10.0)
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.request(
                method, f"{self.server}{path}", json=body, headers=headers, ssl=self._ssl
            ) as response,
        ):
            text = await response.text()
        try:
            return response.status, json.loads(text) if text else None
        except ValueError:
            return response.status, text

    async def request(self, csr_pem: bytes, *, identity: SpiffeId, lifetime: timedelta) -> bytes:
        doc = {
            "apiVersion": "certificates.k8s.io/v1",
            "kind": "CertificateSigningRequest",
            "metadata": {
                "generateName": f"simmesh-{self.node[:40]}-",
                "labels": {"app.kubernetes.io/managed-by": "simmesh"},
                "annotations": {"simmesh.io/identity": identity.uri},
            },
            "spec": {
                "request": base64.b64encode(csr_pem).decode(),
                "signerName": SIGNER_NAME,
                "usages": list(ca.SVID_USAGES),
                "expirationSeconds": max(MIN_EXPIRATION, int(lifetime.total_seconds())),
            },
        }
        status, created = await self._call("POST", CSR_PATH, doc)
        if status != 201:
            raise OSError(f"creating a CSR: {status} {_message(created)}")
        name = created["metadata"]["name"]
        deadline = time.monotonic() + self.timeout
        while True:
            status, current = await self._call("GET", f"{CSR_PATH}/{name}")
            if status != 200:
                raise OSError(f"reading CSR {name}: {status} {_message(current)}")
            outcome = _outcome(current)
            if outcome is not None:
                return outcome
            if time.monotonic() > deadline:
                raise TimeoutError(f"CSR {name}: no answer within {self.timeout:g}s")
            await asyncio.sleep(self.poll)

    async def trust_bundle(self) -> bytes:
        path = f"/api/v1/namespaces/{self.namespace}/configmaps/{BUNDLE_CONFIGMAP}"
        status, configmap = await self._call("GET", path)
        if status != 200:
            raise OSError(f"reading the trust bundle {path}: {status} {_message(configmap)}")
        return str((configmap.get("data") or {}).get(BUNDLE_KEY) or "").encode()


def _outcome(csr: dict[str, Any]) -> bytes | None:
    """The certificate, Denied for a refusal, None while the CA has not answered."""
    for condition in (csr.get("status") or {}).get("conditions") or []:
        if condition.get("type") in ("Denied", "Failed"):
            raise Denied(f"{condition.get('reason')}: {condition.get('message')}")
    certificate = (csr.get("status") or {}).get("certificate")
    return base64.b64decode(certificate) if certificate else None


def _message(body: Any) -> str:
    return str(body.get("message")) if isinstance(body, dict) else str(body)[:200]
