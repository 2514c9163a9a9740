"""Operating mTLS (issue 17 part 5): what a proxy's admin port tells about its certificates
(``/certificates``, never a key), the per-identity metrics, and ``simmesh check`` reading real
proxies. Two real proxies on loopback (tests/proxy/mtlsnet.py), certificates from a real CA."""

from __future__ import annotations

import asyncio
import json
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import msgspec

from mesh.dns import check
from mesh.identity import ca
from mesh.identity.spiffe import SpiffeId, spiffe_id
from mesh.proxy.app import _load
from mesh.proxy.certs import CertificateManager, Denied
from mesh.proxy.proxy import Proxy
from tests.proxy.harness import metric, session, until
from tests.proxy.mtlsnet import TRUST, Authority, two_nodes

HOST = {"Host": "far.demo.mesh"}


def admin(proxy: Proxy) -> str:
    return f"http://{proxy.options.bind}:{proxy.admin_port}"


async def certificates(proxy: Proxy) -> tuple[dict[str, Any], str]:
    async with session() as client, client.get(f"{admin(proxy)}/certificates") as resp:
        assert resp.status == 200
        text = await resp.text()
    return json.loads(text), text


def issue_at(
    authority: Authority, identity: str, *, issued: datetime, lifetime: timedelta
) -> tuple[Path, Path]:
    """A certificate issued at ``issued`` (in the past) for ``lifetime``, as files."""
    key = ca.new_key()
    csr = ca.check_csr(ca.make_csr(key, spiffe_id(TRUST, identity)), trust_domain=TRUST)
    certificate = ca.sign(authority.signer, csr, now=issued, lifetime=lifetime)
    base = authority.directory / f"{identity.replace('/', '_')}-{issued.timestamp():.0f}"
    cert_file, key_file = base.with_suffix(".crt"), base.with_suffix(".key")
    cert_file.write_bytes(ca.cert_pem(certificate))
    key_file.write_bytes(ca.key_pem(key))
    return cert_file, key_file


def old_authority(tmp: Path) -> Authority:
    """A CA whose root was made two hours ago (so certificates may be issued in the past)."""
    authority = Authority(tmp)
    authority.signer = ca.generate_root(
        trust_domain=TRUST, now=datetime.now(UTC) - timedelta(hours=2)
    )
    authority.roots.write_bytes(ca.cert_pem(authority.signer.certificate))
    return authority


async def test_the_admin_port_shows_each_certificate_and_root_and_never_a_key(
    tmp_path: Path,
) -> None:
    async with two_nodes(tmp_path) as net:
        state, text = await certificates(net.a)
        assert state["node"] == "node-a" and state["mtls"] == "strict"
        assert state["version"] == net.config.version
        assert state["trustDomain"] == TRUST
        # node-a runs demo/client and demo/local; the harness gave it demo/client only
        assert state["wanted"] == ["demo/client", "demo/local"]
        assert state["missing"] == ["demo/local"]
        [held] = state["identities"]
        assert held["identity"] == "demo/client"
        assert held["spiffeId"] == "spiffe://cluster.local/ns/demo/sa/client"
        assert held["lifetimeSeconds"] == 3600
        assert 3500 < held["secondsToExpiry"] <= 3600
        assert 0 <= held["ageSeconds"] < 100
        cert_file, _ = net.a.tls._held["demo/client"].certificate, None
        from cryptography import x509

        on_disk = x509.load_pem_x509_certificate(Path(cert_file).read_bytes())
        assert held["fingerprint"] == ca.fingerprint(on_disk)
        [root] = state["roots"]
        assert root["fingerprint"] == ca.fingerprint(net.authority.signer.certificate)
        assert held["root"] == root["fingerprint"]  # signed by it
        assert root["secondsToExpiry"] > 9 * 365 * 86400
        assert state["manager"] is None  # files loaded by the test, no certificate manager
        # public facts only: no key, no file name
        assert "PRIVATE" not in text and ".key" not in text and str(tmp_path) not in text
        state_b, _ = await certificates(net.b)
        assert (state_b["wanted"], state_b["missing"]) == (["demo/server"], [])


async def test_per_identity_metrics_and_handshakes_by_outcome(tmp_path: Path) -> None:
    authority = old_authority(tmp_path)
    now = datetime.now(UTC)
    held_a = {
        "demo/client": authority.issue("demo/client"),
        "demo/local": issue_at(
            authority, "demo/local", issued=now - timedelta(minutes=50), lifetime=timedelta(hours=1)
        ),
    }
    async with two_nodes(tmp_path, authority=authority, held_a=held_a) as net:
        expiry = "simmesh_proxy_identity_certificate_expiry_seconds"
        age = "simmesh_proxy_identity_certificate_age_seconds"
        assert 3500 < metric(net.a, expiry, identity="demo/client") <= 3600
        assert 500 < metric(net.a, expiry, identity="demo/local") <= 600
        assert 2950 < metric(net.a, age, identity="demo/local") < 3100
        assert metric(net.a, age, identity="demo/client") < 100
        assert metric(net.b, expiry, identity="demo/client") == 0.0  # b holds demo/server only
        assert 3500 < metric(net.b, expiry, identity="demo/server") <= 3600
        root = ca.fingerprint(authority.signer.certificate)
        left = metric(net.a, "simmesh_proxy_trust_root_expiry_seconds", fingerprint=root)
        assert left > 9 * 365 * 86400
        text = net.a.metrics.render().decode()
        assert text.count(f'{expiry}{{identity="') == 2  # one series per identity held
        # handshakes: one that worked, one that failed with its reason
        connector = aiohttp.TCPConnector(local_addr=("127.0.1.1", 0))
        async with (
            session(connector=connector) as client,
            client.get(net.url("far"), headers=HOST) as resp,
        ):
            assert resp.status == 200
        assert metric(net.a, "simmesh_proxy_tunnel_handshakes_total", side="client") == 1
        assert metric(net.b, "simmesh_proxy_tunnel_handshakes_total", side="server") == 1
        reader, writer = await asyncio.open_connection("127.0.0.2", net.tunnel_b)
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        await reader.read()
        writer.close()
        failures = "simmesh_proxy_tunnel_handshake_failures_total"
        for _ in range(40):
            if metric(net.b, failures, side="server", reason="not-tls"):
                break
            await asyncio.sleep(0.05)
        assert metric(net.b, failures, side="server", reason="not-tls") == 1
        # what simmesh check makes of it: demo/local has 10 of 60 minutes left: a warning
        [row_a, row_b, roots] = await check.check_certificates(
            [check.HttpProxy(admin(net.a)), check.HttpProxy(admin(net.b))]
        )
        assert (row_a.ok, row_a.warn) == (True, True), row_a
        assert "demo/local expires in 9m" in row_a.detail
        assert (row_b.ok, row_b.warn) == (True, False), row_b
        assert (roots.name, roots.ok, roots.warn) == ("trust roots", True, False), roots


async def test_check_fails_a_proxy_missing_a_local_identity_until_it_holds_it(
    tmp_path: Path,
) -> None:
    async with two_nodes(tmp_path) as net:
        proxies = [check.HttpProxy(admin(net.a)), check.HttpProxy(admin(net.b))]
        row_a, row_b, roots = await check.check_certificates(proxies)
        assert row_a.name == "certificates node-a" and not row_a.ok
        assert roots.name == "trust roots" and roots.ok and not roots.warn
        assert row_a.detail == (
            "mTLS strict, trust domain cluster.local, 1/2 identities of the node's pods held: "
            "no certificate for demo/local"
        )
        assert row_a.lines[0].startswith("spiffe://cluster.local/ns/demo/sa/client  expires in ")
        assert row_a.lines[1].startswith("root sha256:")
        assert (
            row_b.ok
            and not row_b.warn
            and row_b.detail.endswith("1/1 identities of the node's pods held")
        )
        table = check.render([row_a, row_b])
        assert "certificates node-a  FAIL" in table and "certificates node-b  OK" in table
        assert "hint: a proxy asks the controller's CA" in table
        net.a.load_certificates(
            trust_domain=TRUST,
            roots=net.authority.roots,
            held={
                "demo/client": net.authority.issue("demo/client"),
                "demo/local": net.authority.issue("demo/local"),
            },
        )
        row_a, _, _ = await check.check_certificates(proxies)
        assert row_a.ok and not row_a.warn, row_a
        # the command, as a user runs it: no cluster, the proxies' admin ports given
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "mesh.cli",
            "check",
            "--kubeconfig",
            str(tmp_path / "none"),
            "--controller",
            "http://127.0.0.1:9",
            "--proxy",
            admin(net.a),
            "--proxy",
            admin(net.b),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(process.communicate(), 60)
        assert process.returncode == 1, err  # the API server and controller rows fail
        lines = out.decode().splitlines()
        [a_row] = [x for x in lines if x.startswith("certificates node-a")]
        assert a_row.split()[2] == "OK" and a_row.endswith("2/2 identities of the node's pods held")
        assert any(x.strip().startswith("spiffe://cluster.local/ns/demo/sa/local") for x in lines)
        # a proxy that does not answer is a failure of its own row, the others still shown
        gone = check.HttpProxy("http://127.0.0.1:9")
        rows = await check.check_certificates([gone, *proxies])
        assert [r.ok for r in rows] == [False, True, True, True]  # the last: trust roots
        assert rows[0].name == "certificates http://127.0.0.1:9"


async def readyz(proxy: Proxy) -> tuple[int, str]:
    async with session() as client, client.get(f"{admin(proxy)}/readyz") as resp:
        return resp.status, await resp.text()


async def test_ready_only_once_the_nodes_certificates_are_held_and_then_for_good(
    tmp_path: Path,
) -> None:
    """A proxy is published as its node's tunnel address once Ready: with mTLS on it is not
    Ready before it holds a certificate for every identity of its node's pods (a tunnel to it
    would fail meanwhile), for at most --certificate-wait."""
    authority = Authority(tmp_path)
    only_client = {"demo/client": authority.issue("demo/client")}
    async with two_nodes(
        tmp_path, authority=authority, held_a=only_client, certificate_wait=60.0
    ) as net:
        assert net.a.missing_certificates() == ["demo/local"]
        status, text = await readyz(net.a)
        assert status == 503, text
        assert "waiting for the certificates of demo/local" in text, text
        assert await readyz(net.b) == (200, f"ready {net.b.snapshot.version}\n")  # type: ignore[union-attr]
        both = {**only_client, "demo/local": authority.issue("demo/local")}
        net.a.load_certificates(trust_domain=TRUST, roots=authority.roots, held=both)
        assert (await readyz(net.a))[0] == 200
        # once Ready, for good: an identity missing later (a new pod's, not yet issued) must
        # not unpublish the node's tunnels to its other pods
        net.a.load_certificates(trust_domain=TRUST, roots=authority.roots, held=only_client)
        assert net.a.missing_certificates() == ["demo/local"]
        assert net.a.ready and (await readyz(net.a))[0] == 200
    # never more than the wait: then Ready anyway (its node's own traffic needs no certificate)
    short = tmp_path / "short"
    short.mkdir()
    async with two_nodes(short, held_a={}, certificate_wait=0.5) as net:
        assert not net.a.ready
        assert await until(lambda: net.a.ready, seconds=3.0)
        assert net.a.missing_certificates() == ["demo/client", "demo/local"]


async def test_deployed_for_mtls_not_ready_on_a_config_without_it(tmp_path: Path) -> None:
    """During the upgrade that turns mTLS on, a new proxy may first poll the previous
    release's controller, whose config has mTLS off and so names no identity to wait for:
    a proxy deployed for mTLS is not Ready on it (it would be published without
    certificates), until a config with mTLS on and its certificates are there."""
    async with two_nodes(tmp_path, certificate_wait=60.0, mtls_capable=True) as net:
        settings = msgspec.structs.replace(net.config.settings, mtls=None)
        assert await net.b.apply(
            msgspec.structs.replace(net.config, settings=settings, version="mtls-off")
        )
        status, text = await readyz(net.b)
        assert status == 503 and "waiting for a config with mTLS on" in text, text
        assert await net.b.apply(net.config)  # back to the mTLS config: b holds demo/server
        assert (await readyz(net.b))[0] == 200


class _Source:
    """A CA for the certificate manager: issues what ``allowed`` lists, denies the rest."""

    def __init__(self, authority: Authority, allowed: set[str]) -> None:
        self.authority = authority
        self.allowed = allowed

    async def request(self, csr_pem: bytes, *, identity: SpiffeId, lifetime: timedelta) -> bytes:
        if identity.identity not in self.allowed:
            raise Denied("NoPodOnNode: no live pod of demo/local on node node-a")
        checked = ca.check_csr(csr_pem, trust_domain=TRUST, identity=identity)
        certificate = ca.sign(self.authority.signer, checked, now=datetime.now(UTC))
        return ca.cert_pem(certificate)

    async def trust_bundle(self) -> bytes:
        return self.authority.roots.read_bytes()


async def test_with_the_certificate_manager_renewal_times_and_why_one_is_missing(
    tmp_path: Path,
) -> None:
    async with two_nodes(tmp_path) as net:
        keys = tmp_path / "keys"
        keys.mkdir()
        manager = CertificateManager(
            _Source(net.authority, {"demo/client"}), node="node-a", key_dir=keys
        )
        manager.changed = lambda held: _load(net.a, held)
        net.a.certificate_manager = manager.state
        manager.want_config(net.config.settings.mtls)
        await manager.step()
        state, text = await certificates(net.a)
        [held] = state["identities"]
        assert held["identity"] == "demo/client"
        assert 43000 < held["secondsToRenewal"] <= 43200  # half of the 24 h lifetime
        assert held["renewAt"] == manager.held["demo/client"].renew_at.isoformat()
        manager_state = state["manager"]
        assert isinstance(manager_state, dict)
        assert manager_state["issued"] == 1 and manager_state["failures"] == {"denied": 1}
        assert "NoPodOnNode" in manager_state["pending"]["demo/local"]["error"]
        assert "PRIVATE" not in text and str(keys) not in text
        [row] = await check.check_certificates([check.HttpProxy(admin(net.a))])
        assert not row.ok
        assert row.detail.endswith(
            "no certificate for demo/local (denied: NoPodOnNode: no live pod of demo/local on "
            "node node-a)"
        )
        assert "renewal in 11h" in row.lines[0]


def test_with_workers_the_certificate_series_come_from_the_supervisors_process() -> None:
    from mesh.proxy.metrics import Metrics, render_merged

    held = {
        "breakers": {},
        "certificates": [("demo/client", 10.0, 3590.0)],
        "roots": [("sha256:ab", 1e8)],
        "certificate_age": 10.0,
    }
    first = Metrics(lambda: held).export(held)
    second = Metrics(lambda: {"breakers": {}}).export({"breakers": {}})  # a worker: none
    text = render_merged([first, second]).decode()
    assert (
        'simmesh_proxy_identity_certificate_expiry_seconds{identity="demo/client"} 3590.0' in text
    )
    assert 'simmesh_proxy_trust_root_expiry_seconds{fingerprint="sha256:ab"} 1e+08' in text
