"""NetworkPolicies are enforced on the kind cluster: a direct pod-IP call is refused by a
default-deny policy, let through by an allow policy, and refused again once the allow is gone.

The offline pod network (bridge CNI, deploy/kind/node/simmesh-node-init) enforces nothing by
itself; tools/kind/netpol.sh installs kube-router's policy controller (the DaemonSet
kube-system/simmesh-netpol; KIND_NETPOL=1 make kind-up does it; stock kind's kindnet enforces
policies itself). This is
the foundation of issue 17 part 4 ("no way around the mesh"): in strict mode meshed pods will
accept traffic only through the node proxies, by NetworkPolicy.

Independent of the simmesh deployment (no mesh fixture): a server pod in netpol-server on the
first worker, client pods in netpol-client on both workers (the call crosses nodes, routed,
and stays on one node, bridged), calling the server's pod IP, never a Service or a .mesh name.
Without an enforcer on the cluster the session's ``netpol_enforcer`` fixture (conftest.py)
installs one (tools/kind/netpol.sh, removed at the session's end); under CI=true a failed
install fails, never skips; elsewhere, without the built kube-router binary (make
netpol-bins), the test is skipped.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.cluster import kube as k
from tests.cluster.conftest import kind_binary, record

pytestmark = pytest.mark.timeout(600)
SERVER_NS, CLIENT_NS = "netpol-server", "netpol-client"
SETTLE = 60.0  # seconds a policy change may take to be enforced on every node


@dataclass
class Pods:
    kube: k.Kube
    server_ip: str
    clients: dict[str, k.App]  # "cross-node" / "same-node" -> client pod


@pytest.fixture(scope="module")
def pods(kube: k.Kube, image: str, netpol_enforcer: str) -> Iterator[Pods]:
    workers = kube.workers()
    assert len(workers) == 2, workers
    docs: list[dict[str, Any]] = [k.namespace(SERVER_NS), k.namespace(CLIENT_NS)]
    docs += [k.service_account(SERVER_NS, "server"), k.service_account(CLIENT_NS, "client")]
    docs.append(
        k.testapp(
            SERVER_NS,
            "server",
            account="server",
            node=workers[0],
            labels={"app": "server"},
            image=image,
        )
    )
    for name, node in (("cross-node", workers[1]), ("same-node", workers[0])):
        labels = {"app": "client", "placement": name}
        docs.append(
            k.testapp(
                CLIENT_NS, f"client-{name}", account="client", node=node, labels=labels, image=image
            )
        )
    start = time.monotonic()
    # the test app's image into the nodes (the mesh fixture's deploy does it for the other tests)
    cluster = os.environ.get("SIMMESH_CLUSTER", "simmesh")
    subprocess.run(
        [kind_binary(), "load", "docker-image", image, "--name", cluster],
        capture_output=True,
        check=True,
        timeout=300,
    )
    kube.apply(docs)
    try:
        for ns in (SERVER_NS, CLIENT_NS):
            kube.run("rollout", "status", "-n", ns, "deployment", "--timeout=180s", timeout=200)
        record("netpol: test pods ready", time.monotonic() - start)
        (server,) = kube.pods(SERVER_NS, "app=server")
        clients = {
            name: k.App(
                kube, CLIENT_NS, kube.pod_names(CLIENT_NS, f"app=client,placement={name}")[0]
            )
            for name in ("cross-node", "same-node")
        }
        yield Pods(kube=kube, server_ip=server["status"]["podIP"], clients=clients)
    finally:
        kube.run(
            "delete",
            "namespace",
            SERVER_NS,
            CLIENT_NS,
            "--ignore-not-found",
            "--timeout=120s",
            timeout=150,
        )


def _policy(name: str, ingress: list[dict[str, Any]] | None) -> dict[str, Any]:
    spec: dict[str, Any] = {"podSelector": {}, "policyTypes": ["Ingress"]}
    if ingress is not None:
        spec["ingress"] = ingress
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": name, "namespace": SERVER_NS},
        "spec": spec,
    }


DENY_ALL = _policy("default-deny", None)
ALLOW_CLIENTS = _policy(
    "allow-netpol-client",
    [
        {
            "from": [
                {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": CLIENT_NS}}}
            ],
            "ports": [{"protocol": "TCP", "port": k.HTTP_PORT}],
        }
    ],
)


def _outcome(app: k.App, url: str) -> str:
    """``200`` or the error class (``timeout``, ``refused``, ...) of one direct call."""
    result = app.call(url, timeout=2)["results"][0]
    return str(result["status"] if result["status"] is not None else result["error"])


def _all_become(pods: Pods, url: str, wanted: str) -> float:
    """Seconds until every client's call answers ``wanted`` (allowed: "200"; refused: not 200)."""
    start = time.monotonic()

    def settled() -> bool:
        outcomes = {name: _outcome(app, url) for name, app in pods.clients.items()}
        last.update(outcomes)
        return all((o == "200") == (wanted == "200") for o in outcomes.values())

    last: dict[str, str] = {}
    try:
        k.wait_for(f"direct calls to {url} -> {wanted}", settled, timeout=SETTLE, interval=0.5)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; last outcomes per client: {last}") from None
    return time.monotonic() - start


def test_default_deny_refuses_a_direct_pod_ip_call_until_an_allow_policy_admits_it(
    pods: Pods,
) -> None:
    kube, url = pods.kube, f"http://{pods.server_ip}:{k.HTTP_PORT}/echo"
    try:
        # no policy: the pod network lets everything through
        for name, app in pods.clients.items():
            assert _outcome(app, url) == "200", name

        kube.apply([DENY_ALL])
        record("netpol: default-deny applied -> refused", _all_become(pods, url, "refused"))
        refused = {name: _outcome(app, url) for name, app in pods.clients.items()}
        assert all(o != "200" for o in refused.values()), refused
        print(f"refused direct calls: {refused}")

        kube.apply([ALLOW_CLIENTS])
        record("netpol: allow policy applied -> 200", _all_become(pods, url, "200"))

        kube.delete([ALLOW_CLIENTS])
        record("netpol: allow policy removed -> refused", _all_become(pods, url, "refused"))
        # and it stays refused (not a blip while the rules were rewritten)
        time.sleep(3)
        for name, app in pods.clients.items():
            assert _outcome(app, url) != "200", name
    finally:
        kube.delete([ALLOW_CLIENTS, DENY_ALL])
    # with every policy gone, the calls go through again
    _all_become(pods, url, "200")
