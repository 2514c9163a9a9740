"""NetworkPolicies out: the proxies the only way into meshed pods (``--network-policies``).

The core decides the policies (:func:`mesh.core.netpol.network_policies`, one per meshed Service
with a selector); this writer makes the cluster hold exactly those: after a rebuild that
changed a meshed Service or its selector, and every ``resync`` seconds (a policy deleted or
edited by hand comes back, a failed write is retried), it lists the policies labelled
``simmesh.io/network-policy`` in every namespace, creates the missing ones, patches the ones
that differ and deletes the ones no Service wants any more. Beside the rebuild loop, like the
other writers: a slow API server never delays a config.

Each policy is owned by the controller's ClusterRole (an ownerReference to a cluster-scoped
object of the release): ``helm uninstall`` removes the ClusterRole and Kubernetes' garbage
collector the policies, so pods are never left isolated by a mesh that is gone. Without the
flag the controller deletes the policies a previous configuration left (:meth:`remove_all`;
``simmesh cleanup`` does the same), so turning the value off opens the pods again.

A stopping controller (``parting``) writes nothing, like every other writer of the controller.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Any

from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from mesh.controller.controller import Controller, Published
from mesh.core.netpol import POLICY_LABEL, SOURCE_ANNOTATION, differs, network_policies
from mesh.core.topology import Topology

log = logging.getLogger("simmesh.controller.netpol")
CONCURRENCY = 16  # API requests in flight
FIELD_MANAGER = "simmesh-controller"


async def existing_policies(api: client.ApiClient) -> list[dict[str, Any]]:
    """The policies the mesh wrote, in every namespace."""
    networking = client.NetworkingV1Api(api)
    response: Any = await networking.list_network_policy_for_all_namespaces(
        label_selector=f"{POLICY_LABEL}=true", _preload_content=False
    )
    return list(json.loads(await response.read()).get("items") or [])


async def delete_policies(api: client.ApiClient, policies: list[dict[str, Any]]) -> int:
    """Delete these policies; how many failed (a 404 is not a failure)."""
    networking = client.NetworkingV1Api(api)
    limit = asyncio.Semaphore(CONCURRENCY)

    async def one(doc: dict[str, Any]) -> bool:
        meta = doc["metadata"]
        async with limit:
            try:
                await networking.delete_namespaced_network_policy(meta["name"], meta["namespace"])
            except ApiException as exc:
                if exc.status != 404:
                    log.warning(
                        "NetworkPolicy %s/%s: delete failed: %s",
                        meta["namespace"],
                        meta["name"],
                        exc.reason,
                    )
                    return False
        return True

    results = await asyncio.gather(*(one(d) for d in policies))
    return sum(1 for ok in results if not ok)


class NetworkPolicyWriter:
    def __init__(
        self,
        api: client.ApiClient,
        controller: Controller,
        *,
        owner_cluster_role: str | None = "simmesh-controller",
        resync: float = 60.0,
    ) -> None:
        self.api = api
        self.controller = controller
        self.owner_cluster_role = owner_cluster_role
        self.resync = resync
        self.owner: dict[str, Any] | None = None
        self.writes = 0  # creates, patches and deletes done
        self.failures = 0
        self._lock = asyncio.Lock()
        self._applied: object = None  # what the last successful reconcile was computed from
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Read the owner (the ClusterRole) once, then follow every rebuild."""
        if self.owner_cluster_role:
            rbac = client.RbacAuthorizationV1Api(self.api)
            try:
                role = await rbac.read_cluster_role(self.owner_cluster_role)
            except ApiException as exc:
                log.warning(
                    "NetworkPolicies: cannot read ClusterRole %s (%s): the policies get no "
                    "owner, and outlive the release unless `simmesh cleanup` deletes them",
                    self.owner_cluster_role,
                    exc.reason,
                )
            else:
                self.owner = {
                    "apiVersion": "rbac.authorization.k8s.io/v1",
                    "kind": "ClusterRole",
                    "name": role.metadata.name,
                    "uid": role.metadata.uid,
                }
        self.controller.listeners.append(self.published)

    def published(self, published: Published) -> None:
        """Every rebuild (a selector can change with no change of the config): reconcile when
        what the policies are computed from changed since the last reconcile."""
        if self.controller.parting or _inputs(published.topology) == self._applied:
            return
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._follow())

    async def _follow(self) -> None:
        while (current := self.controller.current) is not None and not self.controller.parting:
            if _inputs(current.topology) == self._applied:
                return
            try:
                failed = await self.reconcile(current.topology)
            except Exception:  # the resync tries again
                log.exception("NetworkPolicies: reconcile failed")
                return
            if failed:
                return  # the resync tries again

    async def run(self) -> None:
        """Reconcile every ``resync`` seconds against what the cluster holds (policies deleted
        or edited by others come back, failed writes are retried)."""
        while True:
            await asyncio.sleep(self.resync)
            current = self.controller.current
            if current is not None and not self.controller.parting:
                try:
                    await self.reconcile(current.topology)
                except Exception:  # never stop for good
                    log.exception("NetworkPolicies: resync failed")

    async def reconcile(self, topology: Topology) -> int:
        """Make the cluster hold the policies ``topology`` wants; the number of failed writes."""
        async with self._lock:
            if self.controller.parting:
                return 0
            inputs = _inputs(topology)
            settings = self.controller.settings
            desired = network_policies(
                topology, proxy_namespace=settings.proxy_account[0], owner=self.owner
            )
            existing = {
                (d["metadata"]["namespace"], d["metadata"]["name"]): d
                for d in await existing_policies(self.api)
            }
            networking = client.NetworkingV1Api(self.api)
            limit = asyncio.Semaphore(CONCURRENCY)

            async def apply(key: tuple[str, str], doc: dict[str, Any]) -> str:
                namespace, name = key
                current = existing.get(key)
                async with limit:
                    if self.controller.parting:
                        return "ok"
                    try:
                        if current is None:
                            body: Any = doc  # the client sends dicts as they are
                            await networking.create_namespaced_network_policy(
                                namespace, body, field_manager=FIELD_MANAGER
                            )
                        elif differs(current, doc):
                            # replaced whole (a merge patch would keep selector keys and
                            # peers the policy must lose), at the version that was compared
                            meta = {
                                **doc["metadata"],
                                "resourceVersion": current["metadata"]["resourceVersion"],
                            }
                            replaced: Any = {**doc, "metadata": meta}
                            await networking.replace_namespaced_network_policy(
                                name, namespace, replaced, field_manager=FIELD_MANAGER
                            )
                        else:
                            return "ok"
                    except ApiException as exc:
                        if exc.status == 409 and current is None:
                            # a policy of that name without the mesh's label (someone else's,
                            # never replaced), or one a surge's other controller just wrote
                            # (listed, with its label, at the next resync)
                            log.warning(
                                "NetworkPolicy %s/%s exists without the label %s: not "
                                "replaced, so Service %s has no policy of the mesh",
                                namespace,
                                name,
                                POLICY_LABEL,
                                doc["metadata"]["annotations"][SOURCE_ANNOTATION],
                            )
                            return "taken"  # tried again at the resync, not at every rebuild
                        if exc.status != 409:  # (409 on replace: changed since listed)
                            log.warning(
                                "NetworkPolicy %s/%s: write failed: %s",
                                namespace,
                                name,
                                exc.reason,
                            )
                        return "failed"  # tried again at the next rebuild or resync
                self.writes += 1
                return "ok"

            results = await asyncio.gather(*(apply(k, d) for k, d in desired.items()))
            failed = results.count("failed")
            self.failures += results.count("taken")
            stale = [existing[k] for k in sorted(existing.keys() - desired.keys())]
            if stale and not self.controller.parting:
                failed_deletes = await delete_policies(self.api, stale)
                self.writes += len(stale) - failed_deletes
                failed += failed_deletes
            self.failures += failed
            if not failed:
                self._applied = inputs
            return failed

    async def close(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def remove_all(self) -> int:
        """Without ``--network-policies``: delete what an earlier configuration left."""
        try:
            left = await existing_policies(self.api)
        except ApiException as exc:
            log.warning("NetworkPolicies: cannot list them to remove them: %s", exc.reason)
            return 1
        if left:
            log.info("NetworkPolicies off: deleting the %d the mesh wrote before", len(left))
        return await delete_policies(self.api, left)


def _inputs(topology: Topology) -> tuple[tuple[str, str, tuple[tuple[str, str], ...]], ...]:
    """What the policies are computed from: each meshed Service's selector (cheap to compare
    at every rebuild)."""
    return tuple(
        (service.namespace, service.name, service.selector)
        for service in topology.services.values()
        if service.selector
    )
