"""A proxy's tunnel contexts are built once per certificate: a node of a busy cluster holds
dozens of identities and gets them one at a time, so building every identity's four TLS
contexts again on each change (about 3 ms each with OpenSSL 3) kept the event loop busy for
seconds on kind, and tunnel handshakes timed out. Only a renewed certificate, a new identity
or new roots are built again; the handshake still works with what was kept."""

from __future__ import annotations

import contextlib
import ssl
from pathlib import Path

from mesh.proxy.metrics import Metrics
from mesh.proxy.mtls import TunnelTls, sni_name
from tests.proxy.mtlsnet import Authority


def contexts(tls: TunnelTls, identity: str) -> list[int]:
    item = tls._held[identity]
    return [id(c) for c in (*item.clients.values(), item.server)]


def test_only_a_changed_certificate_or_new_roots_are_built_again(tmp_path: Path) -> None:
    authority = Authority(tmp_path)
    tls = TunnelTls(Metrics(dict), node="n")
    held = {f"demo/sa{i}": authority.issue(f"demo/sa{i}") for i in range(3)}
    tls.load(trust_domain="cluster.local", roots=authority.roots, held=held)
    assert tls.built == 3
    before = {identity: contexts(tls, identity) for identity in held}
    server = tls.server

    held["demo/sa3"] = authority.issue("demo/sa3")  # a new local pod's identity
    tls.load(trust_domain="cluster.local", roots=authority.roots, held=held)
    assert tls.built == 4
    assert all(contexts(tls, identity) == ids for identity, ids in before.items())
    assert tls.server is server and tls.identities == sorted(held)

    held["demo/sa1"] = authority.issue("demo/sa1")  # renewed: new files
    tls.load(trust_domain="cluster.local", roots=authority.roots, held=held)
    assert tls.built == 5
    assert contexts(tls, "demo/sa1") != before["demo/sa1"]
    assert contexts(tls, "demo/sa0") == before["demo/sa0"]
    assert tls._by_sni[sni_name("demo/sa1")] is tls._held["demo/sa1"].server

    cert, key = held["demo/sa2"]
    new_cert, new_key = authority.issue("demo/sa2")  # renewed in place: same file names
    cert.write_bytes(new_cert.read_bytes())
    key.write_bytes(new_key.read_bytes())
    tls.load(trust_domain="cluster.local", roots=authority.roots, held=held)
    assert tls.built == 6 and contexts(tls, "demo/sa2") != before["demo/sa2"]

    del held["demo/sa0"]  # its last local pod left
    tls.load(trust_domain="cluster.local", roots=authority.roots, held=held)
    assert tls.built == 6 and not tls.holds("demo/sa0")
    assert sni_name("demo/sa0") not in tls._by_sni

    rotated = Authority(tmp_path)  # the bundle changes (a new root): everything again
    authority.roots.write_bytes(authority.roots.read_bytes() + rotated.roots.read_bytes())
    tls.load(trust_domain="cluster.local", roots=authority.roots, held=held)
    assert tls.built == 6 + len(held) and tls.server is not server
    assert len(tls.trust_roots) == 2


def test_a_kept_context_still_completes_a_mutual_handshake(tmp_path: Path) -> None:
    """The server context kept across loads picks the identity by SNI; the client's verifies."""
    authority = Authority(tmp_path)
    tls = TunnelTls(Metrics(dict), node="n")
    held = {"demo/server": authority.issue("demo/server")}
    tls.load(trust_domain="cluster.local", roots=authority.roots, held=held)
    held["demo/client"] = authority.issue("demo/client")
    tls.load(trust_domain="cluster.local", roots=authority.roots, held=held)
    assert tls.built == 2
    server_side = tls.server
    assert server_side is not None
    client_side = next(iter(tls._held["demo/client"].clients.values()))
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    client = client_side.wrap_bio(c_in, c_out, server_hostname=sni_name("demo/server"))
    server = server_side.wrap_bio(s_in, s_out, server_side=True)
    for _ in range(10):
        for side in (client, server):
            with contextlib.suppress(ssl.SSLWantReadError):
                side.do_handshake()
        s_in.write(c_out.read())
        c_in.write(s_out.read())
    assert tls.peer_identity(server) == "demo/client"
    assert tls.peer_identity(client) == "demo/server"


def _handshake(client_side: ssl.SSLContext, server_side: ssl.SSLContext, sni: str) -> bool:
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    client = client_side.wrap_bio(c_in, c_out, server_hostname=sni)
    server = server_side.wrap_bio(s_in, s_out, server_side=True)
    try:
        for _ in range(10):
            for side in (client, server):
                with contextlib.suppress(ssl.SSLWantReadError):
                    side.do_handshake()
            s_in.write(c_out.read())
            c_in.write(s_out.read())
        client.do_handshake()
        server.do_handshake()
    except ssl.SSLError:
        return False
    return True


def test_a_peer_of_an_announced_root_is_trusted_once_the_bundle_is_reloaded(
    tmp_path: Path,
) -> None:
    """A signing-key rotation: node-b renewed from the new root while node-a still holds a
    certificate of the old one. node-a refuses node-b until it loads the bundle with both
    roots (the certificate manager re-reads it before the new root signs), then accepts it
    with its own certificate unchanged; /certificates names the root of each."""
    old = Authority(tmp_path)
    new = Authority(tmp_path)
    a = TunnelTls(Metrics(dict), node="node-a")
    held_a = {"demo/a": old.issue("demo/a")}
    a.load(trust_domain="cluster.local", roots=old.roots, held=held_a)
    both = tmp_path / "both.pem"
    both.write_bytes(old.roots.read_bytes() + new.roots.read_bytes())
    b = TunnelTls(Metrics(dict), node="node-b")
    b.load(trust_domain="cluster.local", roots=both, held={"demo/b": new.issue("demo/b")})
    b_client = b._held["demo/b"].clients[next(iter(b._held["demo/b"].clients))]
    assert a.server is not None
    assert not _handshake(b_client, a.server, sni_name("demo/a"))

    a.load(trust_domain="cluster.local", roots=both, held=held_a)
    assert a.server is not None
    assert _handshake(b_client, a.server, sni_name("demo/a"))
    state_a, state_b = a.certificates(), b.certificates()
    fingerprints = [root["fingerprint"] for root in state_a["roots"]]
    assert [i["root"] for i in state_a["identities"]] == [fingerprints[0]]  # the old root
    assert [i["root"] for i in state_b["identities"]] == [fingerprints[1]]  # the new one
