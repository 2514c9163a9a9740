"""The CA against a real kube-apiserver: the whole CSR flow of issue 17 part 1.

A node proxy (its pod-bound ServiceAccount token, its own key, mesh.proxy.kubecsr and
mesh.proxy.certs) asks the controller's CA for the identity of a pod on its node and gets an
X.509-SVID that verifies against the published trust bundle; asked for a pod elsewhere, for a
stale pod UID, or by anyone but the proxies' ServiceAccount, the CSR is denied with the reason
in its status conditions. The trust bundle is in the ConfigMap and a ClusterTrustBundle;
replacing the root's Secret rotates (both roots trusted, new certificates from the new root).
"""

from __future__ import annotations

import asyncio
import base64
import json
import ssl
import time
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from mesh.identity import ca
from mesh.identity.authority import verify_svid
from mesh.identity.spiffe import spiffe_id
from mesh.proxy.certs import CertificateManager, Denied
from mesh.proxy.kubecsr import CSR_PATH, KubeCsrSource
from tests.k8s import apiserver as harness
from tests.k8s.test_controller_k8s import ControllerProcess, namespace, wait_for

pytestmark = pytest.mark.k8s
MESH = "mesh-id"
APP = "id-app"
TD = "cluster.local"
PUBLISH_DELAY = 10  # seconds a new root is trusted before it signs


def ensure(cluster: harness.Cluster, path: str, obj: dict[str, Any]) -> dict[str, Any]:
    status, out = cluster.request("POST", path, obj)
    if status == 409:
        return cluster.get(f"{path}/{obj['metadata']['name']}")  # type: ignore[no-any-return]
    assert 200 <= status < 300, out
    return out  # type: ignore[no-any-return]


def pod(cluster: harness.Cluster, ns: str, name: str, account: str, node: str) -> dict[str, Any]:
    created = ensure(
        cluster,
        f"/api/v1/namespaces/{ns}/pods",
        {
            "metadata": {"name": name},
            "spec": {
                "serviceAccountName": account,
                "nodeName": node,
                "containers": [{"name": "c", "image": "example.invalid/app"}],
            },
        },
    )
    cluster.merge_patch(
        f"/api/v1/namespaces/{ns}/pods/{name}/status", {"status": {"phase": "Running"}}
    )
    return created


def account(cluster: harness.Cluster, ns: str, name: str) -> None:
    ensure(cluster, f"/api/v1/namespaces/{ns}/serviceaccounts", {"metadata": {"name": name}})


def bound_token(cluster: harness.Cluster, proxy: dict[str, Any], path: Path) -> Path:
    """A token bound to the proxy's pod, as the kubelet projects it."""
    review = cluster.create(
        f"/api/v1/namespaces/{MESH}/serviceaccounts/simmesh-proxy/token",
        {
            "spec": {
                "audiences": [],
                "expirationSeconds": 3600,
                "boundObjectRef": {
                    "kind": "Pod",
                    "apiVersion": "v1",
                    "name": proxy["metadata"]["name"],
                    "uid": proxy["metadata"]["uid"],
                },
            }
        },
    )
    path.write_text(review["status"]["token"])
    return path


def proxy_rbac(cluster: harness.Cluster) -> None:
    """What charts/simmesh grants the proxies with mTLS on (proxy-rbac.yaml): create and read
    CSRs, read the trust bundle ConfigMap. Nothing more: RBAC is enforced here."""
    subject = [{"kind": "ServiceAccount", "name": "simmesh-proxy", "namespace": MESH}]
    ensure(
        cluster,
        "/apis/rbac.authorization.k8s.io/v1/clusterroles",
        {
            "metadata": {"name": "simmesh-proxy-id-test"},
            "rules": [
                {
                    "apiGroups": ["certificates.k8s.io"],
                    "resources": ["certificatesigningrequests"],
                    "verbs": ["create", "get"],
                }
            ],
        },
    )
    ensure(
        cluster,
        "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings",
        {
            "metadata": {"name": "simmesh-proxy-id-test"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": "simmesh-proxy-id-test",
            },
            "subjects": subject,
        },
    )
    ensure(
        cluster,
        f"/apis/rbac.authorization.k8s.io/v1/namespaces/{MESH}/roles",
        {
            "metadata": {"name": "simmesh-proxy-id-test"},
            "rules": [
                {
                    "apiGroups": [""],
                    "resources": ["configmaps"],
                    "resourceNames": ["simmesh-trust-bundle"],
                    "verbs": ["get"],
                }
            ],
        },
    )
    ensure(
        cluster,
        f"/apis/rbac.authorization.k8s.io/v1/namespaces/{MESH}/rolebindings",
        {
            "metadata": {"name": "simmesh-proxy-id-test"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "Role",
                "name": "simmesh-proxy-id-test",
            },
            "subjects": subject,
        },
    )


@pytest.fixture(scope="module")
def mesh(apiserver: harness.Cluster, tmp_path_factory: pytest.TempPathFactory) -> Any:
    for ns in (MESH, APP):
        namespace(apiserver, ns)
    for node in ("node-a", "node-b"):
        ensure(apiserver, "/api/v1/nodes", {"metadata": {"name": node}})
    account(apiserver, MESH, "simmesh-proxy")
    proxy_rbac(apiserver)
    account(apiserver, APP, "web")
    account(apiserver, APP, "db")
    proxies = {
        node: pod(apiserver, MESH, f"proxy-{node}", "simmesh-proxy", node)
        for node in ("node-a", "node-b")
    }
    pods = {
        "web": pod(apiserver, APP, "web-0", "web", "node-a"),
        "db": pod(apiserver, APP, "db-0", "db", "node-b"),
    }
    tmp = tmp_path_factory.mktemp("identity")
    controller = ControllerProcess(
        apiserver,
        MESH,
        [APP],
        tmp / "controller.log",
        extra=(
            *("--mtls", "permissive", "--ca-check-interval", "1", "--cert-lifetime", "3600"),
            *("--ca-publish-delay", str(PUBLISH_DELAY)),
        ),
    ).start()
    try:
        yield {"proxies": proxies, "pods": pods, "controller": controller, "tmp": tmp}
    finally:
        controller.stop()


def source(cluster: harness.Cluster, mesh: Any, node: str) -> KubeCsrSource:
    token = bound_token(cluster, mesh["proxies"][node], mesh["tmp"] / f"token-{node}")
    return KubeCsrSource(
        server=cluster.url,
        token_file=token,
        ca_file=Path(cluster.ca),
        namespace=MESH,
        node=node,
        timeout=20.0,
        poll=0.1,
    )


def csrs(cluster: harness.Cluster, identity: str) -> list[dict[str, Any]]:
    items = cluster.get(CSR_PATH)["items"]
    return [
        c
        for c in items
        if c["metadata"].get("annotations", {}).get("simmesh.io/identity") == identity
    ]


def condition(csr: dict[str, Any]) -> dict[str, Any]:
    (only,) = (csr.get("status") or {}).get("conditions") or [{}]
    return only


def test_the_config_lists_each_node_s_identities(mesh: Any) -> None:
    def nodes() -> Any:
        config = mesh["controller"].config()
        mtls = config["settings"].get("mtls") or {}
        return mtls.get("nodes") if mtls.get("nodes", {}).get("node-b") else None

    assert wait_for(nodes, what="settings.mtls.nodes") == {
        "node-a": [f"{APP}/web"],
        "node-b": [f"{APP}/db"],
    }


def test_a_proxy_gets_the_identity_of_a_pod_on_its_node(
    apiserver: harness.Cluster, mesh: Any
) -> None:
    manager = CertificateManager(
        source(apiserver, mesh, "node-a"), node="node-a", key_dir=mesh["tmp"]
    )
    manager.want([f"{APP}/web"])
    asyncio.run(manager.step())
    assert manager.counters.failures == {}, manager.state()
    held = manager.held[f"{APP}/web"]
    assert ca.svid_identity(held.certificate) == spiffe_id(TD, f"{APP}/web")
    lifetime = held.certificate.not_valid_after_utc - held.certificate.not_valid_before_utc
    assert lifetime == timedelta(hours=1) + ca.CLOCK_SKEW  # --cert-lifetime 3600
    # the CSR says who approved it and why
    (csr,) = csrs(apiserver, f"spiffe://{TD}/ns/{APP}/sa/web")
    assert condition(csr)["type"] == "Approved" and condition(csr)["reason"] == "NodeAuthorized"
    assert csr["spec"]["extra"]["authentication.kubernetes.io/node-name"] == ["node-a"]
    # the key stayed here: on disk only in the key directory, mode 0600
    cert_path, key_path = manager.paths(f"{APP}/web")  # type: ignore[misc]
    assert key_path.stat().st_mode & 0o777 == 0o600
    assert "PRIVATE KEY" not in json.dumps(csr)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert_path, key_path)


def test_a_pod_on_another_node_is_denied_with_the_reason(
    apiserver: harness.Cluster, mesh: Any
) -> None:
    manager = CertificateManager(source(apiserver, mesh, "node-a"), node="node-a")
    manager.want([f"{APP}/db"])  # db-0 runs on node-b
    asyncio.run(manager.step())
    assert manager.held == {} and manager.counters.failures == {"denied": 1}
    (csr,) = csrs(apiserver, f"spiffe://{TD}/ns/{APP}/sa/db")
    assert condition(csr)["type"] == "Denied"
    assert condition(csr)["reason"] == "NoPodOnNode"
    assert "node-a" in condition(csr)["message"] and "node-b" in condition(csr)["message"]
    assert "certificate" not in (csr.get("status") or {})
    # node-b's proxy gets it
    other = CertificateManager(source(apiserver, mesh, "node-b"), node="node-b")
    other.want([f"{APP}/db"])
    asyncio.run(other.step())
    assert list(other.held) == [f"{APP}/db"]


def raw_csr(
    apiserver: harness.Cluster, token: Path | None, identity: str, annotations: dict[str, str]
) -> dict[str, Any]:
    """A CSR created as the token's holder (or the admin), then read until answered."""
    body = {
        "metadata": {"generateName": "raw-", "annotations": annotations},
        "spec": {
            "request": base64.b64encode(
                ca.make_csr(ca.new_key(), spiffe_id(TD, identity))
            ).decode(),
            "signerName": "simmesh.io/workload",
            "usages": ["digital signature", "key encipherment", "client auth", "server auth"],
        },
    }
    if token is None:
        created = apiserver.create(CSR_PATH, body)
    else:
        request = urllib.request.Request(
            f"{apiserver.url}{CSR_PATH}",
            data=json.dumps(body).encode(),
            headers={
                "Authorization": f"Bearer {token.read_text()}",
                "Content-Type": "application/json",
            },
        )
        context = ssl.create_default_context(cafile=apiserver.ca)
        with urllib.request.urlopen(request, context=context, timeout=10) as response:
            created = json.loads(response.read())
    name = created["metadata"]["name"]
    return wait_for(  # type: ignore[no-any-return]
        lambda: (lambda c: c if (c.get("status") or {}).get("conditions") else None)(
            apiserver.get(f"{CSR_PATH}/{name}")
        ),
        what=f"an answer to CSR {name}",
    )


def test_a_stale_pod_uid_is_denied(apiserver: harness.Cluster, mesh: Any) -> None:
    token = bound_token(apiserver, mesh["proxies"]["node-a"], mesh["tmp"] / "raw-a")
    live_uid = mesh["pods"]["web"]["metadata"]["uid"]
    good = raw_csr(apiserver, token, f"{APP}/web", {"simmesh.io/pod-uid": live_uid})
    assert condition(good)["type"] == "Approved"
    stale = raw_csr(apiserver, token, f"{APP}/web", {"simmesh.io/pod-uid": "0000-stale"})
    assert condition(stale)["type"] == "Denied" and condition(stale)["reason"] == "StalePod"
    assert "0000-stale" in condition(stale)["message"]


def test_only_the_proxies_service_account_is_answered(
    apiserver: harness.Cluster, mesh: Any
) -> None:
    del mesh
    csr = raw_csr(apiserver, None, f"{APP}/web", {})  # the admin, no pod-bound token
    assert condition(csr)["type"] == "Denied"
    assert condition(csr)["reason"] == "RequesterNotProxy"
    assert "simmesh-admin" in condition(csr)["message"]


def bundle(apiserver: harness.Cluster) -> list[x509.Certificate]:
    configmap = apiserver.get(f"/api/v1/namespaces/{MESH}/configmaps/simmesh-trust-bundle")
    return x509.load_pem_x509_certificates(configmap["data"]["roots.pem"].encode())


def _roots_record(apiserver: harness.Cluster) -> dict[str, str]:
    configmap = apiserver.get(f"/api/v1/namespaces/{MESH}/configmaps/simmesh-trust-bundle")
    record: dict[str, str] = json.loads(configmap["metadata"]["annotations"]["simmesh.io/roots"])
    return record


def test_roots_are_published_and_rotation_keeps_both_during_the_overlap(
    apiserver: harness.Cluster, mesh: Any
) -> None:
    """Rotation in two steps: the new root in the bundle while the old one still signs (a
    proxy holding an old certificate re-reads the bundle and trusts the new root without a
    renewal), then the new root signs and the old one stays trusted."""
    secret_path = f"/api/v1/namespaces/{MESH}/secrets/simmesh-ca"
    secret = apiserver.get(secret_path)
    old_root = x509.load_pem_x509_certificate(base64.b64decode(secret["data"]["tls.crt"]))
    assert [ca.fingerprint(c) for c in bundle(apiserver)] == [ca.fingerprint(old_root)]
    trust = apiserver.get(
        "/apis/certificates.k8s.io/v1beta1/clustertrustbundles/simmesh.io:workload:roots"
    )
    assert trust["spec"]["signerName"] == "simmesh.io/workload"
    assert ca.cert_pem(old_root).decode() in trust["spec"]["trustBundle"]

    # a certificate from the old root, then the root replaced (bring-your-own rotation)
    manager = CertificateManager(
        source(apiserver, mesh, "node-a"), node="node-a", bundle_refresh=0.5
    )
    manager.want([f"{APP}/web"])
    asyncio.run(manager.step())
    old_cert = manager.held[f"{APP}/web"].certificate
    new = ca.generate_root(trust_domain=TD, now=datetime.now(UTC))
    secret["data"] = {
        "tls.crt": base64.b64encode(ca.cert_pem(new.certificate)).decode(),
        "tls.key": base64.b64encode(ca.key_pem(new.key)).decode(),
    }
    apiserver.call("PUT", secret_path, secret)
    replaced = time.monotonic()
    wait_for(lambda: len(bundle(apiserver)) == 2, what="both roots in the trust bundle")
    # announced: trusted, the old root still signing
    assert [ca.fingerprint(c) for c in bundle(apiserver)] == [
        ca.fingerprint(old_root),
        new.fingerprint,
    ]
    record = _roots_record(apiserver)
    assert record[ca.fingerprint(old_root)] == "signing"
    assert record[new.fingerprint].startswith("signs-from ")
    during = CertificateManager(source(apiserver, mesh, "node-a"), node="node-a")
    during.want([f"{APP}/web"])
    asyncio.run(during.step())
    assert time.monotonic() - replaced < PUBLISH_DELAY, "too slow to see the announced step"
    assert during.held[f"{APP}/web"].certificate.issuer == old_root.subject
    # the proxy that holds the old certificate trusts the new root without renewing
    time.sleep(0.6)
    asyncio.run(manager.step())
    assert manager.counters.renewals == 0 and manager.counters.bundle_changes == 1
    assert {ca.fingerprint(c) for c in manager.roots} == {
        ca.fingerprint(old_root),
        new.fingerprint,
    }

    # then the new root signs; the old one stays trusted
    wait_for(
        lambda: _roots_record(apiserver).get(new.fingerprint) == "signing",
        what="the new root signing",
    )
    assert time.monotonic() - replaced >= PUBLISH_DELAY - 0.5
    roots = bundle(apiserver)
    assert [ca.fingerprint(c) for c in roots] == [new.fingerprint, ca.fingerprint(old_root)]
    renewed = CertificateManager(source(apiserver, mesh, "node-a"), node="node-a")
    renewed.want([f"{APP}/web"])
    asyncio.run(renewed.step())
    new_cert = renewed.held[f"{APP}/web"].certificate
    assert new_cert.issuer == new.certificate.subject
    now = datetime.now(UTC)
    for cert in (old_cert, new_cert):
        assert verify_svid(cert, tuple(roots), now=now, trust_domain=TD) == spiffe_id(
            TD, f"{APP}/web"
        )


def test_a_denial_reaches_the_client_as_denied(apiserver: harness.Cluster, mesh: Any) -> None:
    client = source(apiserver, mesh, "node-b")
    identity = spiffe_id(TD, f"{APP}/web")  # web-0 is on node-a
    with pytest.raises(Denied, match="NoPodOnNode"):
        asyncio.run(
            client.request(
                ca.make_csr(ca.new_key(), identity), identity=identity, lifetime=timedelta(hours=1)
            )
        )
