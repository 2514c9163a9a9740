"""SPIFFE IDs of ServiceAccounts: ``spiffe://<trust domain>/ns/<namespace>/sa/<name>``.

The form Istio and Linkerd use, so certificates mean the same to other SPIFFE-aware tools.
Parsing is strict (no query, fragment, port, user info, percent-encoding, or path segments
beyond the four): the URI in a certificate is compared as a whole, so two spellings of one
identity must not exist.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

DEFAULT_TRUST_DOMAIN = "cluster.local"
SCHEME = "spiffe://"

# A trust domain is a DNS-like name: lower-case letters, digits, '.', '-', '_' (SPIFFE-ID 2.1).
_TRUST_DOMAIN = re.compile(r"^[a-z0-9._-]{1,255}$")
# Namespaces are DNS-1123 labels, ServiceAccount names DNS-1123 subdomains.
_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")


class IdentityError(ValueError):
    """A bad identity, request or certificate: ``field`` says where, the message what was
    expected. ``str()`` is one line: ``<field>: <message>``."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def check_trust_domain(text: str, field: str = "trust domain") -> str:
    if not _TRUST_DOMAIN.match(text) or text.startswith(".") or text.endswith("."):
        raise IdentityError(
            field, f"expected a DNS-like name (a-z, 0-9, '.', '-', '_'), got {text[:80]!r}"
        )
    return text


@dataclass(frozen=True, slots=True, order=True)
class SpiffeId:
    trust_domain: str
    namespace: str
    service_account: str

    @property
    def uri(self) -> str:
        return f"{SCHEME}{self.trust_domain}/ns/{self.namespace}/sa/{self.service_account}"

    @property
    def identity(self) -> str:
        """The mesh's name for the ServiceAccount: ``namespace/name``."""
        return f"{self.namespace}/{self.service_account}"

    def __str__(self) -> str:
        return self.uri


def spiffe_id(trust_domain: str, identity: str) -> SpiffeId:
    """The SPIFFE ID of ``namespace/name`` in ``trust_domain``; IdentityError if malformed."""
    namespace, slash, name = identity.partition("/")
    if not slash:
        raise IdentityError("identity", f"expected namespace/serviceaccount, got {identity!r}")
    return _checked(check_trust_domain(trust_domain), namespace, name)


def parse(uri: str, field: str = "URI") -> SpiffeId:
    """A ServiceAccount's SPIFFE ID from its URI; IdentityError naming ``field`` otherwise."""
    if not uri.startswith(SCHEME):
        raise IdentityError(field, f"expected a spiffe:// URI, got {uri[:120]!r}")
    trust_domain, slash, path = uri[len(SCHEME) :].partition("/")
    parts = path.split("/")
    if not slash or len(parts) != 4 or parts[0] != "ns" or parts[2] != "sa":
        raise IdentityError(
            field, f"expected spiffe://<trust domain>/ns/<namespace>/sa/<name>, got {uri[:120]!r}"
        )
    check_trust_domain(trust_domain, f"{field} trust domain")
    return _checked(trust_domain, parts[1], parts[3], field)


def _checked(trust_domain: str, namespace: str, name: str, field: str = "identity") -> SpiffeId:
    if not _LABEL.match(namespace):
        raise IdentityError(field, f"namespace {namespace[:80]!r} is not a DNS-1123 label")
    if len(name) > 253 or not _SUBDOMAIN.match(name):
        raise IdentityError(field, f"ServiceAccount {name[:80]!r} is not a DNS-1123 subdomain")
    return SpiffeId(trust_domain, namespace, name)
