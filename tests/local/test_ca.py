"""The local mesh's CA (mesh/local/ca.py) and the proxy's source for it (mesh/proxy/localca.py):
a node proxy gets the identities of its own node's pods and no other, its key stays its own."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from mesh.identity import ca
from mesh.identity.spiffe import spiffe_id
from mesh.local.ca import LocalCA, live_pods, serve
from mesh.proxy.certs import CertificateManager, Denied
from mesh.proxy.localca import LocalCaSource
from tests.core.builders import pod

TRUST = "cluster.local"
DOCS = [
    pod("web-0", sa="web", ip="10.244.0.2", ns="t", node="node-a"),
    pod("api-0", sa="api", ip="10.244.1.2", ns="t", node="node-b"),
    pod("api-1", sa="api", ip="10.244.0.3", ns="t", node="node-a"),
    pod("db-0", sa="db", ip="10.244.1.3", ns="t", node="node-b"),
]


def authority() -> LocalCA:
    return LocalCA(trust_domain=TRUST, nodes=["node-a", "node-b"], pods=lambda: live_pods(DOCS))


def ask(
    local: LocalCA, node: str | None, identity: str, *, trust: str = TRUST, token: str = ""
) -> tuple[int, dict[str, Any], ca.PrivateKey]:
    key = ca.new_key()
    csr = ca.make_csr(key, spiffe_id(trust, identity)).decode()
    bearer = f"Bearer {local.tokens[node]}" if node is not None else f"Bearer {token}"
    status, answer = local.answer(bearer, json.dumps({"csr": csr}).encode())
    return status, answer, key


def test_a_node_gets_the_identities_of_its_own_pods_and_no_other() -> None:
    local = authority()
    status, answer, key = ask(local, "node-a", "t/web")
    assert status == 200
    certificate = x509.load_pem_x509_certificate(answer["certificate"].encode())
    assert ca.svid_identity(certificate).uri == "spiffe://cluster.local/ns/t/sa/web"
    assert certificate.public_key() == key.public_key()
    assert ask(local, "node-a", "t/api")[0] == 200  # api has a pod on both nodes
    status, answer, _ = ask(local, "node-a", "t/db")  # db runs on node-b only
    assert (status, answer["reason"]) == (403, "NoPodOnNode")
    assert "node-b" in answer["message"]
    assert ask(local, "node-b", "t/web")[1]["reason"] == "NoPodOnNode"
    record = local.record()
    assert record["issued"] == {"node-a": {"t/api": 1, "t/web": 1}}
    assert [(d["node"], d["reason"]) for d in record["denied"]] == [
        ("node-a", "NoPodOnNode"),
        ("node-b", "NoPodOnNode"),
    ]


def test_no_token_another_trust_domain_or_garbage_gets_nothing() -> None:
    local = authority()
    assert ask(local, None, "t/web", token="guess")[0] == 401
    assert local.answer(None, b"{}")[0] == 401
    status, answer, _ = ask(local, "node-a", "t/web", trust="evil.example")
    assert (status, answer["reason"]) == (400, "InvalidRequest")
    assert local.answer(f"Bearer {local.tokens['node-a']}", b"not json")[0] == 400
    assert local.record()["issued"] == {}


def test_the_tokens_and_roots_are_the_runs_own() -> None:
    one, two = authority(), authority()
    assert one.tokens["node-a"] != one.tokens["node-b"] != two.tokens["node-b"]
    assert one.signer.fingerprint != two.signer.fingerprint
    assert one.signer.certificate.not_valid_after_utc > datetime.now(UTC)


def test_a_proxys_manager_holds_only_its_nodes_identities_over_http(tmp_path: Path) -> None:
    """The proxy's side end to end over HTTP: the manager asks for the identities of its
    node's pods and for one it should not have; it holds the first, its keys never sent."""
    asyncio.run(_over_http(tmp_path))


async def _over_http(tmp_path: Path) -> None:
    local = authority()
    server = serve(local, "127.0.0.1", 0)
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        token = tmp_path / "node-a.token"
        token.write_text(local.tokens["node-a"] + "\n")
        keys = tmp_path / "keys"
        keys.mkdir()
        source = LocalCaSource(url=url, token_file=token)
        assert x509.load_pem_x509_certificates(await source.trust_bundle())[0] == (
            local.signer.certificate
        )
        manager = CertificateManager(source, node="node-a", key_dir=keys)
        manager.want(["t/web", "t/api", "t/db"])
        await manager.step()
        assert sorted(manager.held) == ["t/api", "t/web"]
        assert "NoPodOnNode" in manager.state()["pending"]["t/db"]["error"]
        assert manager.counters.failures == {"denied": 1}
        # the keys are the proxy's own files (the CA got CSRs: public keys only)
        assert sorted(p.name for p in keys.iterdir()) == [
            "roots.pem",
            "t_api.crt",
            "t_api.key",
            "t_web.crt",
            "t_web.key",
        ]
        with pytest.raises(Denied, match="NoPodOnNode"):
            key = ca.new_key()
            await source.request(
                ca.make_csr(key, spiffe_id(TRUST, "t/db")),
                identity=spiffe_id(TRUST, "t/db"),
                lifetime=ca.DEFAULT_LIFETIME,
            )
        token.write_text("not-a-token\n")
        with pytest.raises(Denied, match="Unauthenticated"):
            await source.request(
                ca.make_csr(key, spiffe_id(TRUST, "t/web")),
                identity=spiffe_id(TRUST, "t/web"),
                lifetime=ca.DEFAULT_LIFETIME,
            )
    finally:
        server.shutdown()
        server.server_close()
    with pytest.raises(OSError, match="local CA"):  # gone: unavailable, retried later
        await asyncio.wait_for(source.trust_bundle(), 10)
