"""mTLS between node proxies (issue 17 parts 2 and 3), on loopback with real TLS.

Two proxies act as nodes (tests/proxy/mtlsnet.py): a request from the client pod on node-a to
the pod of node-b goes through node-b's proxy over mutual TLS; node-b's proxy authorises the
identity the client certificate proves and delivers only to its own pods.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest

from mesh.core.model import MtlsMode
from mesh.proxy import mtls
from tests.proxy.harness import metric, session, until
from tests.proxy.mtlsnet import (
    CLIENT_IP,
    FAR_IP,
    NEAR_IP,
    Authority,
    Net,
    grant,
    pipe_requests,
    tunnel_request,
    two_nodes,
)


def _cluster(net: Net, name: str) -> str:
    return next(key for key in net.config.clusters if key.startswith(f"demo/{name}"))


async def _get(net: Net, host: str, path: str = "/", *, source: str = CLIENT_IP) -> Any:
    connector = aiohttp.TCPConnector(local_addr=(source, 0), force_close=True)
    async with (
        session(connector=connector) as http,
        http.get(net.url(host, path), headers={"Host": host}) as resp,
    ):
        body = await resp.read()
        return resp.status, dict(resp.headers), body


async def test_a_request_to_another_node_goes_over_mtls_and_same_node_stays_plaintext(
    tmp_path: Path,
) -> None:
    async with two_nodes(tmp_path, tap=True) as net:
        for _ in range(3):
            status, headers, _ = await _get(net, "far.demo.mesh", "/secret-path")
            assert status == 200 and headers["X-Backend"] == "far0"
        tap = net.extra["taps"][0]
        assert tap.seen[:1] == b"\x16"  # a TLS handshake record
        assert b"secret-path" not in tap.seen and b"far.demo.mesh" not in tap.seen
        # pooled: one handshake for three requests
        assert metric(net.a, "simmesh_proxy_tunnel_handshakes_total", side="client") == 1
        assert metric(net.b, "simmesh_proxy_tunnel_handshakes_total", side="server") == 1
        assert metric(net.a, "simmesh_proxy_tunnels_open", side="client") == 1
        assert metric(net.b, "simmesh_proxy_tunnel_certificate_age_seconds") >= 0
        # access control is off: a pipe to the pod, spliced by node-b, which counted no
        # request of its own; node-a counted them, with the caller's identity
        assert metric(net.b, "simmesh_proxy_tunnel_pipes_total", mode="spliced") == 1
        assert metric(net.b, "simmesh_proxy_tunnel_pipes_total", mode="per-request") == 0
        calls = {"service": "demo/far", "source": "demo/client", "code": "200"}
        assert metric(net.a, "simmesh_proxy_calls_total", **calls) == 3
        assert metric(net.b, "simmesh_proxy_calls_total", **calls) == 0
        status, headers, _ = await _get(net, "near.demo.mesh")
        assert status == 200 and headers["X-Backend"] == "near0"
        assert metric(net.a, "simmesh_proxy_tunnel_handshakes_total", side="client") == 1


async def test_trace_context_and_caller_travel_through_the_tunnel(tmp_path: Path) -> None:
    async with two_nodes(tmp_path) as net:
        connector = aiohttp.TCPConnector(local_addr=(CLIENT_IP, 0))
        trace = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
        async with (
            session(connector=connector) as http,
            http.get(
                net.url("far.demo.mesh", "/echo"),
                headers={"Host": "far.demo.mesh", "traceparent": trace},
            ) as resp,
        ):
            echoed = await resp.json()
        headers = {k.lower(): v for k, v in echoed["headers"].items()}
        assert headers["traceparent"].startswith("00-0af7651916cd43dd8448eb211c80319c-")
        assert CLIENT_IP in headers["x-forwarded-for"]
        assert "simmesh-target" not in headers and "simmesh-cluster" not in headers


async def test_the_destination_authorises_the_identity_of_the_certificate(tmp_path: Path) -> None:
    """ACL mode: demo/client is granted, demo/intruder is not. The tunnel's caller is the
    certificate's identity, whatever the source address or forwarding headers say."""
    async with two_nodes(tmp_path, acl=True, objects=grant("client")) as net:
        status, _, _ = await _get(net, "far.demo.mesh")
        assert status == 200
        cluster = _cluster(net, "far")
        target = f"{FAR_IP}:{net.far}"
        granted = net.authority.client_context("demo/client")
        answer = await tunnel_request(net.tunnel_b, granted, target=target, cluster=cluster)
        assert answer.startswith(b"HTTP/1.1 200")
        intruder = net.authority.client_context("demo/intruder")
        spoof = f"X-Forwarded-For: {CLIENT_IP}\r\nForwarded: for={CLIENT_IP}\r\n"
        answer = await tunnel_request(
            net.tunnel_b, intruder, target=target, cluster=cluster, extra=spoof
        )
        assert answer.startswith(b"HTTP/1.1 403") and b"not-granted" in answer


async def test_a_target_that_is_not_a_pod_of_the_node_is_refused(tmp_path: Path) -> None:
    async with two_nodes(tmp_path) as net:
        context = net.authority.client_context("demo/client")
        near = await tunnel_request(
            net.tunnel_b,
            context,
            target=f"{NEAR_IP}:{net.near}",  # a pod of node-a
            cluster=_cluster(net, "near"),
        )
        assert near.startswith(b"HTTP/1.1 403") and b"not-local-target" in near
        nowhere = await tunnel_request(
            net.tunnel_b, context, target="127.0.9.9:80", cluster=_cluster(net, "far")
        )
        assert nowhere.startswith(b"HTTP/1.1 404") and b"unknown-target" in nowhere
        malformed = await tunnel_request(
            net.tunnel_b, context, target="not-an-address", cluster=_cluster(net, "far")
        )
        assert malformed.startswith(b"HTTP/1.1 400")
        twice = await tunnel_request(
            net.tunnel_b,
            context,
            target=f"{FAR_IP}:{net.far}",
            cluster=_cluster(net, "far"),
            extra=f"Simmesh-Target: {NEAR_IP}:{net.near}\r\n",
        )
        assert twice.startswith(b"HTTP/1.1 400")


async def test_plaintext_to_the_tunnel_port_is_refused(tmp_path: Path) -> None:
    async with two_nodes(tmp_path, mode=MtlsMode.PERMISSIVE) as net:
        reader, writer = await asyncio.open_connection("127.0.0.2", net.tunnel_b)
        cluster = _cluster(net, "far")
        writer.write(
            f"GET / HTTP/1.1\r\nHost: far.demo.mesh\r\nSimmesh-Target: {FAR_IP}:{net.far}\r\n"
            f"Simmesh-Cluster: {cluster}\r\n\r\n".encode()
        )
        answer = await asyncio.wait_for(reader.read(-1), 5)
        writer.close()
        assert b"HTTP/1.1" not in answer
        assert (
            metric(
                net.b,
                "simmesh_proxy_tunnel_handshake_failures_total",
                side="server",
                reason="not-tls",
            )
            == 1
        )


async def test_a_client_certificate_of_another_trust_domain_is_refused(tmp_path: Path) -> None:
    async with two_nodes(tmp_path) as net:
        other = Authority(tmp_path, trust_domain="other.example")
        context = other.client_context("demo/client")
        context.load_verify_locations(cafile=str(net.authority.roots))  # it trusts node-b
        answer = await tunnel_request(
            net.tunnel_b, context, target=f"{FAR_IP}:{net.far}", cluster=_cluster(net, "far")
        )
        assert answer == b""
        reasons = ("untrusted-certificate", "handshake")
        failures = sum(
            metric(
                net.b,
                "simmesh_proxy_tunnel_handshake_failures_total",
                side="server",
                reason=reason,
            )
            for reason in reasons
        )
        assert failures == 1


async def test_a_client_certificate_without_a_serviceaccount_san_is_refused(
    tmp_path: Path,
) -> None:
    """Signed by the mesh's root (as the CA never would) but naming no ServiceAccount."""
    async with two_nodes(tmp_path) as net:
        forged = net.authority.client_context("demo/client", uri="spiffe://cluster.local/admin")
        answer = await tunnel_request(
            net.tunnel_b, forged, target=f"{FAR_IP}:{net.far}", cluster=_cluster(net, "far")
        )
        assert answer == b""
        assert (
            metric(
                net.b,
                "simmesh_proxy_tunnel_handshake_failures_total",
                side="server",
                reason="bad-identity",
            )
            == 1
        )


async def test_a_destination_proving_another_identity_than_the_pods_is_refused(
    tmp_path: Path,
) -> None:
    """node-b answers the SNI of demo/server with a certificate of demo/impostor."""
    authority = Authority(tmp_path)
    wrong = {"demo/server": authority.issue("demo/impostor")}
    async with two_nodes(tmp_path, authority=authority, held_b=wrong) as net:
        status, headers, _ = await _get(net, "far.demo.mesh")
        assert status == 502 and headers["X-Simmesh-Reason"] == "upstream-connect-failed"
        assert (
            metric(
                net.a,
                "simmesh_proxy_tunnel_handshake_failures_total",
                side="client",
                reason="wrong-identity",
            )
            >= 1
        )


async def test_strict_refuses_plaintext_from_another_nodes_pod_and_permissive_reports_it(
    tmp_path: Path,
) -> None:
    """A plaintext request at node-b's own listener from the client pod's address (a pod of
    node-a: it bypassed its proxy, or forged the address). The grant is for that identity:
    in permissive mode the address still counts (reported); in strict mode it grants nothing."""
    for mode, expected in ((MtlsMode.PERMISSIVE, 200), (MtlsMode.STRICT, 403)):
        async with two_nodes(tmp_path, mode=mode, acl=True, objects=grant("client")) as net:
            connector = aiohttp.TCPConnector(local_addr=(CLIENT_IP, 0))
            async with (
                session(connector=connector) as http,
                http.get(
                    f"http://127.0.0.2:{net.http}/", headers={"Host": "far.demo.mesh"}
                ) as resp,
            ):
                assert resp.status == expected, mode
                if expected == 403:
                    assert resp.headers["X-Simmesh-Reason"] == "plaintext-refused"
            received = metric(net.b, "simmesh_proxy_plaintext_requests_total", direction="received")
            assert received == 1


async def test_strict_mode_never_sends_a_callers_request_across_nodes_in_the_clear(
    tmp_path: Path,
) -> None:
    """node-a holds no certificate for the caller: strict answers 502 rather than sending
    plaintext to the other node; permissive sends it in the clear and counts it."""
    for mode, expected in ((MtlsMode.STRICT, 502), (MtlsMode.PERMISSIVE, 200)):
        async with two_nodes(tmp_path, mode=mode, held_a={}) as net:
            status, _, _ = await _get(net, "far.demo.mesh")
            assert status == expected, mode
            sent = metric(net.a, "simmesh_proxy_plaintext_requests_total", direction="sent")
            assert sent == (1 if mode is MtlsMode.PERMISSIVE else 0)


async def test_a_request_dependent_grant_is_decided_per_request_by_the_destination(
    tmp_path: Path,
) -> None:
    """ACL mode with a grant of some paths only: no pipe can be authorised as a whole, so
    node-a sends each request on a tunnel connection with its target, and node-b decides
    each on the certificate's identity (it learnt the caller from the certificate). A pipe
    opened anyway (a source proxy with another config, or a rogue one) is served per
    request: the granted path passes, another is refused by node-b itself."""
    objects = grant("client", path="/hello")
    async with two_nodes(tmp_path, acl=True, objects=objects) as net:
        for _ in range(3):
            status, headers, _ = await _get(net, "far.demo.mesh", "/hello")
            assert status == 200 and headers["X-Backend"] == "far0"
        assert metric(net.b, "simmesh_proxy_tunnel_pipes_total", mode="spliced") == 0
        assert metric(net.b, "simmesh_proxy_tunnel_pipes_total", mode="per-request") == 0
        calls = {"service": "demo/far", "source": "demo/client", "code": "200"}
        assert metric(net.b, "simmesh_proxy_calls_total", **calls) == 3
        status, _, _ = await _get(net, "far.demo.mesh", "/other")
        assert status == 403  # node-a's own decision
        # a source proxy that skipped its check: node-b refuses the path on the pipe
        context = net.authority.client_context("demo/client")
        cluster, target = _cluster(net, "far"), f"{FAR_IP}:{net.far}"
        answers = await pipe_requests(
            net.tunnel_b, context, target=target, cluster=cluster, paths=["/hello", "/other"]
        )
        assert answers[0] == b"=\r\n"
        assert answers[1].startswith(b"HTTP/1.1 200") and answers[2].startswith(b"HTTP/1.1 403")
        assert b"no-matching-route" in answers[2]
        assert metric(net.b, "simmesh_proxy_tunnel_pipes_total", mode="per-request") == 1


async def test_a_whole_grant_gets_a_spliced_pipe_and_a_narrowed_one_ends_it(
    tmp_path: Path,
) -> None:
    """ACL mode, a grant of every path: the pipe is spliced (node-b relays its bytes). A new
    config that narrows the grant to some paths ends the spliced pipe (node-b can no longer
    authorise it as a whole); the next requests go on a tunnel connection, decided by
    node-b one by one."""
    async with two_nodes(tmp_path, acl=True, objects=grant("client")) as net:
        status, _, _ = await _get(net, "far.demo.mesh", "/other")
        assert status == 200
        assert metric(net.b, "simmesh_proxy_tunnel_pipes_total", mode="spliced") == 1
        context = net.authority.client_context("demo/client")
        cluster, target = _cluster(net, "far"), f"{FAR_IP}:{net.far}"
        answers = await pipe_requests(
            net.tunnel_b, context, target=target, cluster=cluster, paths=["/other"]
        )
        assert answers[0] == b"+\r\n" and answers[1].startswith(b"HTTP/1.1 200")
        # an identity with no grant: served per request, refused there
        intruder = net.authority.client_context("demo/intruder")
        answers = await pipe_requests(
            net.tunnel_b, intruder, target=target, cluster=cluster, paths=["/other"]
        )
        assert answers[0] == b"=\r\n" and answers[1].startswith(b"HTTP/1.1 403")
        narrowed = await net.reconfigure(grant("client", path="/hello"))
        assert narrowed
        revoked = {"service": "demo/far", "protocol": "http"}
        await until(lambda: metric(net.b, "simmesh_proxy_revoked_flows_total", **revoked) >= 1)
        status, _, _ = await _get(net, "far.demo.mesh", "/hello")
        assert status == 200
        calls = {"service": "demo/far", "source": "demo/client", "code": "200"}
        assert metric(net.b, "simmesh_proxy_calls_total", **calls) == 1
        status, _, _ = await _get(net, "far.demo.mesh", "/other")
        assert status == 403


async def test_a_pipe_that_breaks_its_protocol_is_aborted(tmp_path: Path) -> None:
    """A pipe's source must name its target in one line and wait for the answer: a request
    sent with the line (before the answer), or no line in the first 512 bytes, aborts the
    connection, and nothing reaches the pod."""
    async with two_nodes(tmp_path) as net:
        cluster, target = _cluster(net, "far"), f"{FAR_IP}:{net.far}"
        for first in (
            f"{cluster} {target}\r\nGET / HTTP/1.1\r\nHost: far.demo.mesh\r\n\r\n".encode(),
            b"x" * 600,
            b"no-address-here\r\n",
        ):
            context = net.authority.client_context("demo/client")
            context.set_alpn_protocols([mtls.ALPN_PIPE])
            reader, writer = await asyncio.open_connection(
                "127.0.0.2", net.tunnel_b, ssl=context, server_hostname=mtls.sni_name("demo/server")
            )
            writer.write(first)
            try:
                answer = await asyncio.wait_for(reader.read(), 5)
            except TimeoutError:  # (an OSError: first)
                raise AssertionError(f"not aborted after {first[:40]!r}") from None
            except (ConnectionError, OSError):
                answer = b""
            writer.close()
            assert answer == b"", answer
        assert metric(net.b, "simmesh_proxy_tunnel_pipes_total", mode="spliced") == 0
        assert metric(net.b, "simmesh_proxy_tunnel_pipes_total", mode="per-request") == 0


async def test_a_destination_of_an_earlier_release_gets_a_tunnel_connection(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """During an upgrade, node-b's proxy may not know pipes yet: it offers the earlier ALPN
    protocols only, negotiates none with a pipe, and serves the connection as HTTP/1.1. The
    source proxy then sends no target line and adds the target's lines to each request."""
    async with two_nodes(tmp_path) as net:
        monkeypatch.setattr(mtls, "PROTOCOLS", (mtls.ALPN, mtls.ALPN_H2, mtls.ALPN_STREAM))
        net.b.tls.clear()
        net.b.load_certificates(
            trust_domain=net.authority.trust_domain,
            roots=net.authority.roots,
            held={"demo/server": net.authority.issue("demo/server")},
        )
        for _ in range(3):
            status, headers, _ = await _get(net, "far.demo.mesh", "/hello")
            assert status == 200 and headers["X-Backend"] == "far0"
        assert metric(net.b, "simmesh_proxy_tunnel_pipes_total", mode="spliced") == 0
        calls = {"service": "demo/far", "source": "demo/client", "code": "200"}
        assert metric(net.b, "simmesh_proxy_calls_total", **calls) == 3


async def test_a_pod_cannot_pass_its_own_failure_off_as_the_tunnel_s(tmp_path: Path) -> None:
    """The source proxy reads X-Simmesh-Reason from the destination proxy (it could not reach
    the pod); the pod's 502 with the same header reaches the client as the pod's answer, not
    as a connect failure of the proxy: on a spliced pipe the source proxy does not read the
    header (the bytes are the pod's), on a tunnel connection node-b drops it."""
    async with two_nodes(tmp_path) as net:
        path = "/status/502?reason=upstream-connect-failed"
        status, headers, body = await _get(net, "far.demo.mesh", path)
        assert status == 502 and body == b"far0 says 502", body
        assert headers["X-Backend"] == "far0"
        assert metric(net.b, "simmesh_proxy_tunnel_pipes_total", mode="spliced") == 1
    (tmp_path / "acl").mkdir()
    objects = grant("client", path="/status")
    async with two_nodes(tmp_path / "acl", acl=True, objects=objects) as net:
        status, headers, body = await _get(net, "far.demo.mesh", path)
        assert status == 502 and body == b"far0 says 502", body
        assert "X-Simmesh-Reason" not in headers
        assert headers["X-Backend"] == "far0"
        assert metric(net.b, "simmesh_proxy_tunnel_pipes_total", mode="spliced") == 0


async def test_a_proxy_deployed_for_mtls_keeps_its_tunnel_port_through_a_config_without_it(
    tmp_path: Path,
) -> None:
    """During an upgrade that turns mTLS on, the previous release's controller still serves
    configs with mTLS off; a proxy deployed with it on (``--certificates kubernetes``) that
    applies one keeps its tunnel port, so the other nodes' tunnels to it go on."""
    async with two_nodes(tmp_path, mode=MtlsMode.PERMISSIVE, mtls_capable=True) as net:
        status, headers, _ = await _get(net, "far.demo.mesh")
        assert status == 200 and headers["X-Backend"] == "far0"
        settings = msgspec.structs.replace(net.config.settings, mtls=None)
        off = msgspec.structs.replace(net.config, settings=settings, version="mtls-off")
        assert await net.b.apply(off)
        assert net.b.tunnel is not None
        for _ in range(3):
            status, headers, _ = await _get(net, "far.demo.mesh")
            assert status == 200 and headers["X-Backend"] == "far0"
        assert metric(net.b, "simmesh_proxy_tunnel_handshakes_total", side="server") >= 1
        # not deployed for mTLS: the tunnel port follows the config (closed with it off)
    (tmp_path / "plain").mkdir()
    async with two_nodes(tmp_path / "plain", mode=MtlsMode.PERMISSIVE) as net:
        settings = msgspec.structs.replace(net.config.settings, mtls=None)
        assert await net.b.apply(
            msgspec.structs.replace(net.config, settings=settings, version="mtls-off")
        )
        assert net.b.tunnel is None


def _mirror_route() -> dict[str, Any]:
    """GAMMA: requests to near copied to far (a pod of node-b)."""
    mirror = {"type": "RequestMirror", "requestMirror": {"backendRef": {"name": "far", "port": 80}}}
    return {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": "copy-to-far", "namespace": "demo"},
        "spec": {
            "parentRefs": [{"group": "", "kind": "Service", "name": "near", "port": 80}],
            "rules": [{"filters": [mirror], "backendRefs": [{"name": "near", "port": 80}]}],
        },
    }


async def test_a_mirror_copy_to_another_node_goes_through_the_tunnel(tmp_path: Path) -> None:
    """RequestMirror copies travel like requests: to a pod of another node over mutual TLS
    (with the caller's certificate, authorised on it there), never in the clear; strict
    mode refuses a copy it cannot tunnel and counts it, and the request still answers."""
    async with two_nodes(tmp_path, tap=True, objects=[_mirror_route()]) as net:
        status, headers, _ = await _get(net, "near.demo.mesh", "/mirrored-path")
        assert status == 200 and headers["X-Backend"] == "near0"
        assert await until(
            lambda: (
                metric(net.a, "simmesh_proxy_mirrors_total", service="demo/near", result="sent")
                == 1
            )
        )
        assert metric(net.a, "simmesh_proxy_tunnel_handshakes_total", side="client") == 1
        assert metric(net.a, "simmesh_proxy_plaintext_requests_total", direction="sent") == 0
        tap = net.extra["taps"][0]
        assert tap.seen[:1] == b"\x16" and b"mirrored-path" not in tap.seen
        # node-b delivered it, knowing the caller from its certificate
        calls = dict(service="demo/far", source="demo/client", code="200")
        assert metric(net.b, "simmesh_proxy_calls_total", **calls) == 1
    async with two_nodes(tmp_path, held_a={}, objects=[_mirror_route()]) as net:
        status, headers, _ = await _get(net, "near.demo.mesh")
        assert status == 200 and headers["X-Backend"] == "near0"
        refused = dict(service="demo/near", result="refused")
        assert await until(lambda: metric(net.a, "simmesh_proxy_mirrors_total", **refused) == 1)
        assert metric(net.a, "simmesh_proxy_plaintext_requests_total", direction="sent") == 0
        assert metric(net.b, "simmesh_proxy_calls_total", service="demo/far") == 0
