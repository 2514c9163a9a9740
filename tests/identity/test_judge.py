"""The controller's verdict on a CertificateSigningRequest (mesh.controller.identity.judge),
pure: who asks, from which node, for what."""

from __future__ import annotations

import base64
from datetime import timedelta
from typing import Any

from mesh.controller.identity import CaOptions, judge, pending
from mesh.identity import ca
from mesh.identity.authorize import LivePod
from mesh.identity.spiffe import spiffe_id

PROXY = "system:serviceaccount:simmesh:simmesh-proxy"
OPTIONS = CaOptions(trust_domain="cluster.local", proxy_users=frozenset({PROXY}))
PODS = [LivePod("shop", "web-1", "uid-1", "web", "node-a", "Running")]


def csr(identity: str = "shop/web", **spec: Any) -> dict[str, Any]:
    pem = ca.make_csr(ca.new_key(), spiffe_id("cluster.local", identity))
    body = {
        "username": PROXY,
        "extra": {"authentication.kubernetes.io/node-name": ["node-a"]},
        "signerName": "simmesh.io/workload",
        "usages": ["digital signature", "client auth"],
        "request": base64.b64encode(pem).decode(),
    }
    body.update(spec)
    return {"metadata": {"name": "x"}, "spec": body}


def test_a_proxy_on_the_pod_s_node_is_approved_for_the_configured_lifetime() -> None:
    verdict = judge(csr(), options=OPTIONS, pods=PODS)
    assert verdict.approve and verdict.reason == "NodeAuthorized"
    assert verdict.lifetime == ca.DEFAULT_LIFETIME
    shorter = judge(csr(expirationSeconds=3600), options=OPTIONS, pods=PODS)
    assert shorter.lifetime == timedelta(hours=1)
    longer = judge(csr(expirationSeconds=10**7), options=OPTIONS, pods=PODS)
    assert longer.lifetime == ca.DEFAULT_LIFETIME  # never beyond --cert-lifetime


def test_refusals_name_the_field() -> None:
    cases = {
        "RequesterNotProxy": csr(username="system:serviceaccount:shop:web"),
        "NoNodeBinding": csr(extra={}),
        "InvalidRequest": csr(usages=["digital signature", "cert sign"]),
        "NoPodOnNode": csr("shop/db"),
    }
    for reason, request in cases.items():
        verdict = judge(request, options=OPTIONS, pods=PODS)
        assert not verdict.approve and verdict.reason == reason, verdict
    bad64 = judge(csr(request="%%%"), options=OPTIONS, pods=PODS)
    assert bad64.message.startswith("spec.request: expected base64")
    garbage = judge(csr(request=base64.b64encode(b"nope").decode()), options=OPTIONS, pods=PODS)
    assert garbage.message.startswith("request: expected a PEM certificate signing request")
    stale = csr()
    stale["metadata"]["annotations"] = {"simmesh.io/pod-uid": "uid-old"}
    assert judge(stale, options=OPTIONS, pods=PODS).reason == "StalePod"


def test_only_pending_requests_of_our_signer_are_answered() -> None:
    assert pending(csr())
    assert not pending(csr(signerName="kubernetes.io/kube-apiserver-client"))
    denied = csr()
    denied["status"] = {"conditions": [{"type": "Denied"}]}
    assert not pending(denied)
    issued = csr()
    issued["status"] = {"conditions": [{"type": "Approved"}], "certificate": "AAAA"}
    assert not pending(issued)
    approved_only = csr()  # a controller stopped between approving and signing
    approved_only["status"] = {"conditions": [{"type": "Approved"}]}
    assert pending(approved_only)
