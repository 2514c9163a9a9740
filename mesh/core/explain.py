"""Why a request is routed or denied, in data and plain words (``simmesh explain``).

The answer is computed with the same :class:`~mesh.core.routing.Router` and
:class:`~mesh.core.routing.Engine` the proxy and the simulator use: the plan lists every backend
the request may reach after splits, with the access verdict for each; one fresh engine decision
shows the endpoint a first request would get.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import msgspec

from mesh.core.request import BadRequest, parse_request
from mesh.core.routing import STATUS, Access, Cluster, Decision, Engine, Reason, Route, Router


class _FirstRng:
    """Deterministic stand-in for an RNG: always the first choice."""

    def random(self) -> float:
        return 0.0


def explain_http(
    router: Router,
    *,
    host: str,
    port: int,
    method: str,
    path: str,
    headers: Iterable[tuple[str, str]] | Mapping[str, str],
    source: str | None,
) -> dict[str, Any] | None:
    """``path`` is the request target as sent (with its query); it is read in its canonical
    form (:mod:`mesh.core.request`), exactly as the proxy reads it."""
    route = router.find_route(host, port, "http")
    if route is None or route.listener is None:
        return None
    items = list(headers.items()) if isinstance(headers, Mapping) else list(headers)
    sent = {"method": method, "host": host, "port": port, "path": path}
    try:
        authority = host if port == 80 else f"{host}:{port}"  # the Host a client sends
        request = parse_request(method, path, items, authority=authority)
    except BadRequest as exc:
        return _bad_request(route, source, exc, sent)
    split_applies = route.split is not None and route.split.applies(
        method, request.path, request.headers
    )
    backends = _backends(route, split_applies)
    verdicts = [(c, w, router.access(c, source, request)) for c, w in backends]
    result = _summarise(route, verdicts, source, split_applies)
    if result["allowed"]:
        decision = Engine(router).decide_http(
            listener=route.listener, request=request, source=source, now=0.0, rng=_FirstRng()
        )
        result["endpoint"] = _endpoint(decision.endpoint)
        _refused(result, decision)
    result["request"] = sent | {"target": request.target, "headers": request.headers}
    return result


def _bad_request(
    route: Route, source: str | None, exc: BadRequest, sent: dict[str, Any]
) -> dict[str, Any]:
    result = _summarise(route, [], source, False)
    result.update(
        allowed=False,
        status=STATUS[Reason.BAD_REQUEST],
        reasonCode=Reason.BAD_REQUEST.value,
        reason=exc.detail,
        request=sent,
    )
    return result


def explain_flow(
    router: Router, *, host: str, port: int, protocol: str, source: str | None
) -> dict[str, Any] | None:
    route = router.find_route(host, port, protocol)
    if route is None or route.listener is None:
        return None
    backends = _backends(route, route.split is not None)
    verdicts = [(c, w, router.access(c, source)) for c, w in backends]
    result = _summarise(route, verdicts, source, route.split is not None)
    if result["allowed"]:
        decision = Engine(router).decide_flow(
            listener=route.listener, source=source, now=0.0, rng=_FirstRng()
        )
        result["endpoint"] = _endpoint(decision.endpoint)
        _refused(result, decision)
    result["request"] = {"protocol": protocol, "host": host, "port": port}
    return result


def _backends(route: Route, split_applies: bool) -> list[tuple[Cluster, int]]:
    if route.split is None or not split_applies:
        return [(route.cluster, 1)]
    return [(c, w) for c, w in zip(route.split.clusters, route.split.weights, strict=True)]


def _summarise(
    route: Route,
    verdicts: list[tuple[Cluster, int, Access]],
    source: str | None,
    split_applies: bool,
) -> dict[str, Any]:
    weighted = [(c, w, a) for c, w, a in verdicts if w > 0]
    denied = [(c, a) for c, _, a in weighted if not a.allowed]
    total = sum(w for _, w, _ in weighted)
    allowed = not denied
    if not weighted:
        reason_code, reason = Reason.BAD_REQUEST, ""
    elif allowed:
        reason_code = Reason.ALLOWED
        reason = weighted[0][2].detail
        if split_applies and route.split is not None:
            reason = f"split by TrafficSplit {route.split.name}; " + "; ".join(
                f"{c.service}: {a.detail}" for c, _, a in weighted
            )
    elif len(denied) == len(weighted):
        reason_code = denied[0][1].reason
        reason = denied[0][1].detail
    else:
        reason_code = denied[0][1].reason
        share = sum(w for c, w, a in weighted if not a.allowed) / total
        reason = (
            f"split by TrafficSplit {route.split.name if route.split else '?'}: "
            f"{share:.0%} of requests go to backends that deny them: "
            + "; ".join(f"{c.service}: {a.detail}" for c, a in denied)
        )
    rules = [a.rule for _, _, a in weighted if a.rule]
    if not allowed and reason_code is Reason.NO_ENDPOINTS:
        rules = []
    return {
        "allowed": allowed,
        "status": None if allowed else STATUS[reason_code],
        "reasonCode": reason_code.value,
        "reason": reason,
        "rule": rules[0] if rules else None,
        "source": source,
        "route": {
            "service": route.service,
            "port": route.port,
            "protocol": route.protocol,
            "listener": route.listener,
            "scheme": route.scheme,
        },
        "split": route.split.name if route.split is not None and split_applies else None,
        "backends": [
            {
                "service": c.service,
                "weight": w,
                "allowed": a.allowed,
                "reason": a.detail,
                "rule": a.rule,
                "endpoints": [f"{e.ip}:{e.port}" for e in a.endpoints],
            }
            for c, w, a in verdicts
        ],
        "policy": _policy(route),
        "endpoint": None,
    }


def _policy(route: Route) -> dict[str, Any]:
    out: dict[str, Any] = msgspec.to_builtins(route.doc.policy)
    breaker = route.cluster.breaker
    out["circuitBreaker"] = breaker.expression if breaker is not None else None
    out["loadBalancer"] = route.cluster.load_balancer
    return out


def _refused(result: dict[str, Any], decision: Decision) -> None:
    """Access allows it, but the data plane answers itself (503: no ready endpoint)."""
    if decision.status is not None:
        result["allowed"] = False
        result["status"] = decision.status
        result["reasonCode"] = decision.reason.value
        result["reason"] = decision.detail


def _endpoint(endpoint: Any) -> dict[str, Any] | None:
    if endpoint is None:
        return None
    return {
        "ip": endpoint.ip,
        "port": endpoint.port,
        "node": endpoint.node,
        "identity": endpoint.identity,
    }
