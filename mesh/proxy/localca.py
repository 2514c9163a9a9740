"""Certificates from the local mesh's CA: the node proxy's side of ``simmesh up``'s CA.

A local mesh (``simmesh up``, ``simmesh verify``: mesh/local) has no Kubernetes API server,
so no CSR API. Its runner is the CA instead (mesh/local/ca.py): a root generated for the run,
served over HTTP on a loopback address of the run, and one secret token per node proxy, which
the runner writes to a file only that proxy is told about (``--ca-token-file``). The token
says which node asks, as a pod-bound ServiceAccount token does in a cluster, so the CA issues
a proxy only the identities of its own node's pods (node authorization, the same
:func:`mesh.identity.authorize.authorize` the controller uses).

- ``POST /v1/certificates`` with ``Authorization: Bearer <token>`` and a JSON body
  ``{"csr": PEM, "identity": SPIFFE ID, "lifetimeSeconds": N}``: 200 ``{"certificate": PEM}``,
  or 4xx ``{"reason": ..., "message": ...}``, which is :class:`~mesh.proxy.certs.Denied`;
- ``GET /v1/trust-bundle`` with the same token: the PEM roots.

The key is made by the proxy (:class:`~mesh.proxy.certs.CertificateManager`) and only its CSR
is sent; the certificate is checked before it is held, as with the Kubernetes source.
"""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiohttp

from mesh.identity.spiffe import SpiffeId
from mesh.proxy.certs import Denied
from mesh.proxy.sources import read_token

CERTIFICATES_PATH = "/v1/certificates"
BUNDLE_PATH = "/v1/trust-bundle"


class LocalCaSource:
    """A :class:`~mesh.proxy.certs.CertificateSource` speaking to the local mesh's CA."""

    def __init__(self, *, url: str, token_file: Path, timeout: float = 10.0) -> None:
        self.url = url.rstrip("/")
        self.token_file = token_file
        self.timeout = timeout

    async def _call(self, method: str, path: str, body: Any = None) -> tuple[int, bytes]:
        """(status, body); OSError when the CA cannot be asked (the manager retries)."""
        try:
            token = read_token(str(self.token_file))  # re-read: the runner may rewrite it
        except (OSError, ValueError) as exc:
            raise OSError(f"--ca-token-file: {exc}") from None
        headers = {"Authorization": f"Bearer {token}"}
        timeout = aiohttp.ClientTimeout(total=self.timeout)
        try:
            async with (
                aiohttp.ClientSession(timeout=timeout) as session,
                session.request(
                    method, f"{self.url}{path}", json=body, headers=headers
                ) as response,
            ):
                return response.status, await response.read()
        except aiohttp.ClientError as exc:
            raise OSError(f"the local CA at {self.url}: {exc}") from None

    async def request(self, csr_pem: bytes, *, identity: SpiffeId, lifetime: timedelta) -> bytes:
        body = {
            "csr": csr_pem.decode(),
            "identity": identity.uri,
            "lifetimeSeconds": int(lifetime.total_seconds()),
        }
        status, raw = await self._call("POST", CERTIFICATES_PATH, body)
        answer = _json(raw)
        if status == 200 and isinstance(answer.get("certificate"), str):
            return str(answer["certificate"]).encode()
        if 400 <= status < 500:
            raise Denied(f"{answer.get('reason', status)}: {answer.get('message', '')}")
        raise OSError(f"the local CA answered {status}: {raw[:200]!r}")

    async def trust_bundle(self) -> bytes:
        status, raw = await self._call("GET", BUNDLE_PATH)
        if status != 200:
            raise OSError(f"reading the local CA's trust bundle: {status} {raw[:200]!r}")
        return raw


def _json(raw: bytes) -> dict[str, Any]:
    try:
        value = json.loads(raw)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}
