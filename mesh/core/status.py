"""Route status for GAMMA: what simmesh says about each HTTPRoute and GRPCRoute, per Service parent.

Gateway API routes carry ``status.parents``: one entry per parent and controller, each with the
``controllerName`` that wrote it and conditions (GEP-1294 for Service parents; the condition
types and reasons are those of ``apis/v1/shared_types.go``). This module decides the entries
from the topology (:func:`route_statuses`) and merges them into the entries a route already
has (:func:`merge_parents`); the controller (mesh/controller/status.py) only reads and writes.

Per Service parentRef (as written in ``spec.parentRefs``, duplicates once):

- ``Accepted``: True (``Accepted``) when the route governs at least one port of the Service for
  its callers; False with ``NoMatchingParent`` when the Service does not exist, is not meshed
  or has no port of that number or name; ``UnsupportedValue`` when the Service cannot carry a
  route (traffic type tcp or udp, headless); ``Conflicted`` (GEP-1294) when on every port it
  names a GRPCRoute for the same callers wins over this HTTPRoute.
- ``ResolvedRefs``: True (``ResolvedRefs``) when every backendRef and mirror backendRef resolves
  to a port of a meshed HTTP Service; else False with the first problem's reason:
  ``InvalidKind`` (not a Service), ``BackendNotFound`` (no such Service, port or a reference
  without a port), ``UnsupportedProtocol`` (a tcp or udp Service). ``RefNotPermitted`` is never
  given: mesh routes may reference Services in any namespace (no ReferenceGrant, GEP-1294).

Every condition's ``observedGeneration`` is the route's ``metadata.generation`` the decision
was made from; ``lastTransitionTime`` changes only when the condition's status does.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from mesh.core.model import ParentRef, RejectedRoute
from mesh.core.topology import Detached, Topology, TopoParent, TopoRoute, Unresolved

CONTROLLER_NAME = "simmesh.io/mesh-controller"
ACCEPTED = "Accepted"
RESOLVED_REFS = "ResolvedRefs"

UNSUPPORTED_VALUE = "UnsupportedValue"
# the spec's reasons (RouteConditionReason), and GEP-1294's Conflicted
_DETACHED = {
    Detached.NO_SERVICE: "NoMatchingParent",
    Detached.NO_PORT: "NoMatchingParent",
    Detached.NOT_HTTP: UNSUPPORTED_VALUE,
    Detached.HEADLESS: UNSUPPORTED_VALUE,
}
_UNRESOLVED = {
    Unresolved.KIND: "InvalidKind",
    Unresolved.NO_PORT: "BackendNotFound",
    Unresolved.NOT_FOUND: "BackendNotFound",
    Unresolved.NOT_HTTP: "UnsupportedProtocol",
}
CONFLICTED = "Conflicted"

RouteId = tuple[str, str, str]  # kind, namespace, name


@dataclass(frozen=True, slots=True)
class Condition:
    type: str
    status: bool
    reason: str
    message: str


@dataclass(frozen=True, slots=True)
class ParentStatus:
    parent: ParentRef
    conditions: tuple[Condition, ...]


@dataclass(frozen=True, slots=True)
class RouteStatus:
    kind: str
    namespace: str
    name: str
    generation: int
    parents: tuple[ParentStatus, ...]


def route_statuses(topology: Topology) -> dict[RouteId, RouteStatus]:
    """The status of every route with a Service parent in the topology, those rejected as a
    whole included."""
    governing = _governing(topology)
    statuses = {
        key: RouteStatus(
            route.kind,
            route.namespace,
            route.name,
            route.generation,
            tuple(
                ParentStatus(p.ref, (_accepted(route, p, governing), _resolved(route)))
                for p in route.parents
            ),
        )
        for key, route in sorted(topology.gateway_routes.items())
    }
    for key, rejected in sorted(topology.rejected_routes.items()):
        statuses[key] = _rejected(rejected)
    return dict(sorted(statuses.items()))


def _rejected(route: RejectedRoute) -> RouteStatus:
    """A route the core rejects as a whole: ``Accepted`` False with ``UnsupportedValue`` on each
    Service parent, naming the field and what was expected; no ``ResolvedRefs`` (its references
    were never resolved)."""
    where = f"{route.field}: " if route.field else ""
    condition = Condition(
        ACCEPTED,
        False,
        UNSUPPORTED_VALUE,
        f"{where}{route.message}; the route is not used",
    )
    parents = tuple(ParentStatus(parent, (condition,)) for parent in route.parents)
    return RouteStatus(route.kind, route.namespace, route.name, route.generation, parents)


def _governing(topology: Topology) -> set[tuple[str, str, str, int]]:
    """(kind, route key, service key, port) of every route that governs a port for a scope."""
    return {
        (route.kind, route.key, service, port)
        for (service, port), scopes in topology.routes.items()
        for routes in scopes.values()
        for route in routes
    }


def _accepted(
    route: TopoRoute, parent: TopoParent, governing: set[tuple[str, str, str, int]]
) -> Condition:
    if parent.detached is not None:
        return Condition(ACCEPTED, False, _DETACHED[parent.detached], parent.message)
    service = f"{parent.ref.namespace}/{parent.ref.name}"
    lost = [p for p in parent.ports if (route.kind, route.key, service, p) not in governing]
    if len(lost) == len(parent.ports):
        return Condition(
            ACCEPTED,
            False,
            CONFLICTED,
            f"a GRPCRoute is attached to Service {service} {_ports(lost)} for the same callers "
            "and wins over an HTTPRoute (GEP-1294): this route is not used",
        )
    message = f"attached to Service {service} {_ports(parent.ports)}"
    if lost:
        message += f"; not used on {_ports(lost)}, where a GRPCRoute wins (GEP-1294)"
    return Condition(ACCEPTED, True, "Accepted", message)


def _ports(ports: Sequence[int]) -> str:
    return ("port " if len(ports) == 1 else "ports ") + ", ".join(str(p) for p in ports)


def _resolved(route: TopoRoute) -> Condition:
    if not route.unresolved:
        return Condition(RESOLVED_REFS, True, RESOLVED_REFS, "all references resolved")
    first = route.unresolved[0]
    more = len(route.unresolved) - 1
    message = f"{first.path}: {first.message}"
    if more:
        message += f" (and {more} more unresolved reference{'s' if more > 1 else ''})"
    return Condition(RESOLVED_REFS, False, _UNRESOLVED[first.reason], message)


# -- the status document ---------------------------------------------------------------------


def parent_ref(parent: ParentRef) -> dict[str, Any]:
    """The parentRef of a status entry: the spec's, as written (what conformance compares)."""
    ref: dict[str, Any] = {"group": parent.group, "kind": "Service", "name": parent.name}
    if parent.namespace_given:
        ref["namespace"] = parent.namespace
    if parent.section is not None:
        ref["sectionName"] = parent.section
    if parent.port is not None:
        ref["port"] = parent.port
    return ref


def merge_parents(
    current: Sequence[Mapping[str, Any]],
    status: RouteStatus | None,
    *,
    controller_name: str,
    now: str,
) -> list[dict[str, Any]] | None:
    """``status.parents`` with this controller's entries replaced by ``status`` (None: the
    route has none any more); None when nothing changes, or when an entry of ours was written
    from a newer generation than ``status`` (a stale decision never overwrites a newer one).

    Entries of other controllers are kept as they are, in place; ours keep their place while
    their parent stays, new ones go last. A condition keeps its ``lastTransitionTime`` while
    its status stays the same; ``now`` (RFC 3339) is the time of a transition.
    """
    desired = {_ref_key(parent_ref(p.parent)): p for p in status.parents} if status else {}
    generation = status.generation if status is not None else 0
    out: list[dict[str, Any]] = []
    placed: set[tuple[Any, ...]] = set()
    for entry in current:
        if entry.get("controllerName") != controller_name:
            out.append(dict(entry))
            continue
        key = _ref_key(entry.get("parentRef") or {})
        if status is not None and _newer(entry, generation):
            return None
        if key in desired and key not in placed:
            placed.add(key)
            out.append(_entry(desired[key], entry, controller_name, generation, now))
    for key, parent in desired.items():
        if key not in placed:
            out.append(_entry(parent, {}, controller_name, generation, now))
    return None if out == [dict(e) for e in current] else out


def _ref_key(ref: Mapping[str, Any]) -> tuple[Any, ...]:
    return tuple(ref.get(k) for k in ("group", "kind", "namespace", "name", "sectionName", "port"))


def _newer(entry: Mapping[str, Any], generation: int) -> bool:
    for condition in entry.get("conditions") or []:
        seen = condition.get("observedGeneration") if isinstance(condition, Mapping) else None
        if isinstance(seen, int) and seen > generation:
            return True
    return False


def _entry(
    parent: ParentStatus,
    previous: Mapping[str, Any],
    controller_name: str,
    generation: int,
    now: str,
) -> dict[str, Any]:
    before = {c.get("type"): c for c in previous.get("conditions") or [] if isinstance(c, Mapping)}
    conditions = []
    for condition in parent.conditions:
        status = "True" if condition.status else "False"
        old = before.get(condition.type)
        since = now
        if old is not None and old.get("status") == status and old.get("lastTransitionTime"):
            since = old["lastTransitionTime"]
        conditions.append(
            {
                "type": condition.type,
                "status": status,
                "reason": condition.reason,
                "message": condition.message[:32768],
                "observedGeneration": generation,
                "lastTransitionTime": since,
            }
        )
    return {
        "parentRef": parent_ref(parent.parent),
        "controllerName": controller_name,
        "conditions": conditions,
    }


__all__ = [
    "ACCEPTED",
    "CONFLICTED",
    "CONTROLLER_NAME",
    "RESOLVED_REFS",
    "Condition",
    "ParentStatus",
    "RouteId",
    "RouteStatus",
    "merge_parents",
    "parent_ref",
    "route_statuses",
]
