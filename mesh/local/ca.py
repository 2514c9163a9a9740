"""The local mesh's certificate authority: what the controller and the CSR API are in a cluster.

With ``mtls: permissive`` or ``strict`` in a scenario's settings, the runner (run.py) is the
CA of the run:

- a root generated for the run (:func:`mesh.identity.ca.generate_root`, ECDSA P-256, for the
  scenario's trust domain), kept in the runner's memory only and gone with it;
- one random token per node proxy, written to a file (mode 0600) in a private directory on a
  memory-backed file system that only that proxy is given (``--ca-token-file``): the token
  says which node asks, as a pod-bound ServiceAccount token does in a cluster;
- a small HTTP endpoint on a loopback address of the run (:func:`serve`, a thread of the
  runner) that the proxies (``--certificates local``, mesh/proxy/localca.py) send their CSRs
  to. It issues an identity only to the proxy of a node where a live pod of that
  ServiceAccount runs, as the scenario places them and as the runner's manifests say now
  (:func:`mesh.identity.authorize.authorize`, the controller's own node authorizer), checks
  the CSR as the controller does (:func:`mesh.identity.ca.check_csr`: one SPIFFE ID of the
  trust domain, a valid signature, an allowed key) and signs for at most 24 hours. Keys are
  made by the proxies and never sent.

:meth:`LocalCA.answer` is the decision, free of I/O, so the tests call it directly;
:meth:`LocalCA.record` is what run.json keeps (the root's fingerprint, what was issued to
which node, what was denied and why).
"""

from __future__ import annotations

import json
import secrets
import threading
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from mesh.core.errors import InvalidObject
from mesh.core.parse import parse_pod
from mesh.identity import ca
from mesh.identity.authorize import LivePod, NodeRequest, authorize
from mesh.identity.spiffe import IdentityError, parse

__all__ = ["LocalCA", "live_pods", "serve"]

CERTIFICATES_PATH = "/v1/certificates"  # mesh/proxy/localca.py speaks these
BUNDLE_PATH = "/v1/trust-bundle"
MAX_BODY = 64 * 1024
LIFETIME = ca.DEFAULT_LIFETIME


def _now() -> datetime:
    return datetime.now(UTC)


def live_pods(docs: Iterable[dict[str, Any]]) -> list[LivePod]:
    """The Pods of the manifests as the node authorizer sees them (unreadable ones skipped:
    the controller reports them)."""
    pods = []
    for doc in docs:
        if doc.get("kind") != "Pod":
            continue
        try:
            pod = parse_pod(doc)
        except (InvalidObject, ValueError):
            continue
        uid = (doc.get("metadata") or {}).get("uid")
        pods.append(
            LivePod(
                pod.namespace,
                pod.name,
                str(uid) if uid else None,
                pod.service_account,
                pod.node,
                pod.phase,
                pod.host_network,
            )
        )
    return pods


class LocalCA:
    def __init__(
        self,
        *,
        trust_domain: str,
        nodes: Iterable[str],
        pods: Callable[[], list[LivePod]],
        now: Callable[[], datetime] = _now,
    ) -> None:
        self.trust_domain = trust_domain
        self.now = now
        self.pods = pods
        self.signer = ca.generate_root(trust_domain=trust_domain, now=now())
        self.tokens = {node: secrets.token_urlsafe(32) for node in nodes}
        self._nodes = {token: node for node, token in self.tokens.items()}
        self.issued: dict[str, dict[str, int]] = {}  # node -> identity -> certificates
        self.denied: list[dict[str, str]] = []
        self._lock = threading.Lock()

    def bundle(self) -> bytes:
        return ca.cert_pem(self.signer.certificate)

    def node_of(self, authorization: str | None) -> str | None:
        """The node whose token the ``Authorization`` header carries (None: no such token)."""
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            return None
        for known, node in self._nodes.items():
            if secrets.compare_digest(known, token.strip()):
                return node
        return None

    def answer(self, authorization: str | None, body: bytes) -> tuple[int, dict[str, Any]]:
        """(HTTP status, JSON answer) for a certificate request."""
        node = self.node_of(authorization)
        if node is None:
            return self._deny(401, "-", "Unauthenticated", "no valid node token")
        try:
            request = json.loads(body)
            if not isinstance(request, dict) or not isinstance(request.get("csr"), str):
                raise ValueError
        except ValueError:
            return self._deny(400, node, "InvalidRequest", 'expected JSON {"csr": PEM, ...}')
        try:
            wanted = None
            if isinstance(request.get("identity"), str):
                wanted = parse(request["identity"], "identity")
            checked = ca.check_csr(
                request["csr"].encode(), trust_domain=self.trust_domain, identity=wanted
            )
        except IdentityError as exc:
            return self._deny(400, node, "InvalidRequest", str(exc))
        identity = checked.identity
        decision = authorize(
            NodeRequest(node, identity.namespace, identity.service_account), self.pods()
        )
        if not decision.allowed:
            return self._deny(403, node, decision.verdict.value, decision.reason, identity.uri)
        lifetime = LIFETIME
        seconds = request.get("lifetimeSeconds")
        if isinstance(seconds, int) and not isinstance(seconds, bool) and seconds > 0:
            lifetime = max(ca.MIN_LIFETIME, min(LIFETIME, timedelta(seconds=seconds)))
        certificate = ca.sign(self.signer, checked, now=self.now(), lifetime=lifetime)
        with self._lock:
            held = self.issued.setdefault(node, {})
            held[identity.identity] = held.get(identity.identity, 0) + 1
        return 200, {"certificate": ca.cert_pem(certificate).decode()}

    def _deny(
        self, status: int, node: str, reason: str, message: str, identity: str = ""
    ) -> tuple[int, dict[str, Any]]:
        with self._lock:
            if len(self.denied) < 100:
                self.denied.append(
                    {"node": node, "identity": identity, "reason": reason, "message": message}
                )
        return status, {"reason": reason, "message": message}

    def record(self) -> dict[str, Any]:
        with self._lock:
            return {
                "trustDomain": self.trust_domain,
                "root": self.signer.fingerprint,
                "issued": {n: dict(sorted(i.items())) for n, i in sorted(self.issued.items())},
                "denied": list(self.denied),
            }


def serve(authority: LocalCA, host: str, port: int) -> ThreadingHTTPServer:
    """Serve ``authority`` on ``host:port`` from a daemon thread; ``shutdown()`` stops it."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _send(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _json(self, status: int, value: dict[str, Any]) -> None:
            self._send(status, json.dumps(value).encode(), "application/json")

        def do_GET(self) -> None:
            if self.path != BUNDLE_PATH:
                self._json(404, {"reason": "NotFound", "message": self.path[:100]})
            elif authority.node_of(self.headers.get("Authorization")) is None:
                self._json(401, {"reason": "Unauthenticated", "message": "no valid node token"})
            else:
                self._send(200, authority.bundle(), "application/x-pem-file")

        def do_POST(self) -> None:
            try:
                length = int(self.headers.get("Content-Length") or "0")
            except ValueError:
                length = -1
            if self.path != CERTIFICATES_PATH:
                self._json(404, {"reason": "NotFound", "message": self.path[:100]})
                return
            if not 0 < length <= MAX_BODY:
                self.close_connection = True
                self._json(413, {"reason": "InvalidRequest", "message": "body size"})
                return
            status, answer = authority.answer(
                self.headers.get("Authorization"), self.rfile.read(length)
            )
            self._json(status, answer)

        def log_message(self, format: str, *args: Any) -> None:
            del format, args  # quiet: run.json records what was issued and denied

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="local-ca", daemon=True).start()
    return server
