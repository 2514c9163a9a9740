"""The node authorizer: which identities a node proxy may obtain.

A node proxy may hold the certificate of a ServiceAccount only while a live pod of that account
(scheduled on the node, Pending or Running, on the pod network) runs on the proxy's own node,
as Istio's CA does for ztunnel. The decision is a pure function of the request (the node the
proxy proved it runs on, the identity it asks for, optionally the pod it asks for) and the pods
the controller's store holds; the controller supplies both.

"Live" is the core's rule (:attr:`mesh.core.model.Pod.holds_identity`), which also lists each
node's identities in the MeshConfig (``settings.mtls.nodes``): a proxy asks for exactly what it
may get. A request that names a pod UID is refused unless that very pod is one of the live
ones: a pod deleted and recreated under the same name has a new UID, and a request made for
the old one is stale.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum

from mesh.core.model import LIVE_PHASES


@dataclass(frozen=True, slots=True)
class LivePod:
    namespace: str
    name: str
    uid: str | None
    service_account: str
    node: str | None
    phase: str
    host_network: bool = False

    @property
    def live(self) -> bool:
        return self.node is not None and self.phase in LIVE_PHASES and not self.host_network


@dataclass(frozen=True, slots=True)
class NodeRequest:
    node: str
    namespace: str
    service_account: str
    pod_uid: str | None = None


class Verdict(Enum):
    ISSUED = "issued"
    NO_POD_ON_NODE = "NoPodOnNode"
    STALE_POD = "StalePod"


@dataclass(frozen=True, slots=True)
class Decision:
    verdict: Verdict
    reason: str
    pod: str | None = None  # the pod (namespace/name) that justifies the identity

    @property
    def allowed(self) -> bool:
        return self.verdict is Verdict.ISSUED


def authorize(request: NodeRequest, pods: Iterable[LivePod]) -> Decision:
    identity = f"{request.namespace}/{request.service_account}"
    mine = [
        p
        for p in pods
        if p.live
        and p.namespace == request.namespace
        and p.service_account == request.service_account
    ]
    local = sorted((p for p in mine if p.node == request.node), key=lambda p: p.name)
    if request.pod_uid is not None:
        named = [p for p in local if p.uid == request.pod_uid]
        if not named:
            return Decision(
                Verdict.STALE_POD,
                f"no live pod with uid {request.pod_uid} and ServiceAccount {identity} runs on "
                f"node {request.node} (deleted, finished, or another node's)",
            )
        local = named
    if not local:
        elsewhere = sorted({p.node for p in mine if p.node is not None})
        where = f" (it has pods on {', '.join(elsewhere[:5])})" if elsewhere else ""
        return Decision(
            Verdict.NO_POD_ON_NODE,
            f"no live pod with ServiceAccount {identity} runs on node {request.node}{where}",
        )
    pod = local[0]
    return Decision(
        Verdict.ISSUED,
        f"pod {pod.namespace}/{pod.name} runs on node {request.node}",
        f"{pod.namespace}/{pod.name}",
    )
