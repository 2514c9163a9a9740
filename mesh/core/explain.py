"""Why a request is routed or denied, in data and plain words (``simmesh explain``).

The answer is computed with the same :class:`~mesh.core.routing.Router` and
:class:`~mesh.core.routing.Engine` the proxy and the simulator use: the plan lists every backend
the request may reach after splits, with the access verdict for each; one fresh engine decision
shows the endpoint a first request would get. For a Service port with GAMMA routes, it names
the route table that applies to the caller, the rule and match that picked the request, the
filters it applies (the request as each backend receives it), a redirect's Location, and each
backendRef with its weight and verdict.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import msgspec

from mesh.core.annotations import ServicePolicy
from mesh.core.gamma import EXACT, PREFIX, REGEX, Matcher
from mesh.core.request import BadRequest, Request, parse_request
from mesh.core.routing import (
    STATUS,
    Access,
    Cluster,
    Decision,
    Engine,
    Reason,
    Route,
    Router,
    RouteTable,
    Rule,
    RuleBackend,
)


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
    table = route.gamma.table(source) if route.gamma is not None else None
    if table is not None:
        result = _explain_rules(router, route, table, request, source)
        result["request"] = sent | {"target": request.target, "headers": request.headers}
        return result
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


def _explain_rules(
    router: Router, route: Route, table: RouteTable, request: Request, source: str | None
) -> dict[str, Any]:
    """A request to a Service port with GAMMA routes: the rule that matched, its filters, each
    backendRef with its weight and access verdict (on the request as its filters send it), and
    what a first request gets from a fresh engine (the first weighted pick)."""
    assert route.listener is not None
    decision = Engine(router).decide_http(
        listener=route.listener, request=request, source=source, now=0.0, rng=_FirstRng()
    )
    found = table.find(request)
    gamma: dict[str, Any] = {"table": table.describe(), "routes": list(table.routes)}
    backends: list[dict[str, Any]] = []
    if found is not None:
        rule, matcher = found
        gamma.update(
            route=f"{rule.kind} {rule.route}",
            rule={"index": rule.index, "name": rule.name},
            match=describe_match(matcher),
            filters=rule.filters.describe(),
            location=decision.location,
        )
        if rule.filters.redirect is None and rule.filters.unsupported is None:
            backends = [_rule_backend(router, rule, b, request, source) for b in rule.backends]
    weighted = [b for b in backends if b["weight"] > 0]
    denied = [b for b in weighted if not b["allowed"]]
    allowed = decision.allowed and not denied
    status: int | None
    if decision.allowed and denied:
        reason_code, reason = (
            denied[0]["reasonCode"],
            "; ".join(f"{b['service']}: {b['reason']}" for b in denied),
        )
        status = STATUS[Reason(reason_code)]
    else:
        reason_code = decision.reason.value
        status = decision.status
        reason = decision.detail
        if allowed and found is not None:
            reason = f"{found[0].describe()} matched; " + "; ".join(
                f"{b['service']}: {b['reason']}" for b in weighted
            )
    chosen = decision.cluster
    gamma["backend"] = f"{chosen.service}:{chosen.port}" if chosen is not None else None
    return {
        "allowed": allowed,
        "status": None if allowed else status,
        "reasonCode": reason_code,
        "reason": reason,
        "rule": next((b["rule"] for b in weighted if b["rule"]), None),
        "source": source,
        "route": _route_doc(route),
        "split": None,
        "gamma": gamma,
        "backends": backends,
        "policy": _policy(route, decision.policy if decision.matched is not None else None),
        "endpoint": _endpoint(decision.endpoint) if allowed else None,
    }


def _rule_backend(
    router: Router, rule: Rule, backend: RuleBackend, request: Request, source: str | None
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "service": backend.describe(),
        "weight": backend.weight,
        "filters": backend.filters.describe() if backend.filters is not None else [],
    }
    if backend.cluster is None:
        status = 503 if rule.grpc else 500
        return out | {
            "allowed": False,
            "reasonCode": Reason.INVALID_BACKEND.value,
            "reason": f"invalid ({status}): {backend.invalid}",
            "rule": None,
            "endpoints": [],
        }
    sent = rule.filters.apply(request, rule.prefix)
    if backend.filters is not None:
        sent = backend.filters.apply(sent, rule.prefix)
    access = router.access(backend.cluster, source, sent)
    return out | {
        "allowed": access.allowed,
        "reasonCode": access.reason.value,
        "reason": access.detail,
        "rule": access.rule,
        "endpoints": [f"{e.ip}:{e.port}" for e in access.endpoints],
        "sent": {"target": sent.target, "host": sent.host},
        "scheme": backend.scheme or backend.cluster.scheme,
    }


def describe_match(matcher: Matcher) -> str:
    """A match in words: ``PathPrefix /api, method GET, header x-a = 1``."""
    kinds = {EXACT: "Exact", REGEX: "RegularExpression", PREFIX: "PathPrefix"}
    path = matcher.path if matcher.kind != PREFIX else (matcher.path or "/")
    parts = [f"{kinds[matcher.kind]} {path}"]
    if matcher.method is not None:
        parts.append(f"method {matcher.method}")
    for what, found in (("header", matcher.headers), ("query", matcher.query)):
        parts += [f"{what} {name} {'~' if regex else '='} {value}" for name, value, regex in found]
    return ", ".join(parts)


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
        "route": _route_doc(route),
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


def _route_doc(route: Route) -> dict[str, Any]:
    return {
        "service": route.service,
        "port": route.port,
        "protocol": route.protocol,
        "listener": route.listener,
        "scheme": route.scheme,
    }


def _policy(route: Route, rule: ServicePolicy | None = None) -> dict[str, Any]:
    out: dict[str, Any] = msgspec.to_builtins(route.doc.policy)
    if rule is not None:  # a GAMMA rule's timeouts
        out["timeout"] = rule.timeout
        out["requestTimeout"] = rule.request_timeout
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


def explain_identity(
    router: Router,
    source: str | None,
    *,
    endpoint: Mapping[str, Any] | None = None,
    source_ip: str | None = None,
) -> dict[str, Any]:
    """Which identity the request would be authorised as, and what proves it.

    mTLS off: the source IP's ServiceAccount, from the config's pod map (``by``:
    ``source-ip``). mTLS on: from a pod on the endpoint's own node, the same (the hop from a
    pod to its node's proxy never leaves the node); from a pod of another node, the identity
    of the client certificate the caller's node proxy presents, ``spiffe://<trust
    domain>/ns/<ns>/sa/<name>``, which the endpoint's node proxy verifies and authorises
    (``by``: ``certificate``). The caller's nodes are the source IP's, or else those whose
    pods run as ``source`` (``settings.mtls.nodes``). No identity: ``by`` is ``none``."""
    mode = router.mtls
    mtls = router.config.settings.mtls
    target = endpoint.get("node") if endpoint is not None else None
    out: dict[str, Any] = {
        "mode": mode,
        "identity": source,
        "spiffeId": None,
        "sourceIp": source_ip,
        "sourceNodes": [],
        "endpointNode": target,
        "tunnel": None,
        "by": "none",
        "detail": "",
    }
    if source is None:
        why = (
            f"the source IP {source_ip} is no running pod's in this config"
            if source_ip is not None
            else "no caller given (--from or --from-ip)"
        )
        if source_ip is not None and not router.identities:
            why += " (outside ACL mode and mTLS the config carries no pod identities)"
        out["detail"] = f"no identity: {why}; in ACL mode such a caller is denied"
        return out
    if mode == "off" or mtls is None:
        out["by"] = "source-ip"
        out["detail"] = (
            f"{source}: the ServiceAccount of the source pod's IP in the config's pod map, "
            "on the node proxy the request reaches (mTLS off: nothing but the address proves it)"
        )
        return out
    namespace, _, name = source.partition("/")
    uri = f"spiffe://{router.trust_domain}/ns/{namespace}/sa/{name}"
    out["spiffeId"] = uri
    if source_ip is not None and source_ip in router.pod_nodes:
        nodes = [router.pod_nodes[source_ip]]
    else:
        nodes = sorted(node for node, ids in mtls.nodes.items() if source in ids)
    out["sourceNodes"] = nodes
    if not nodes:
        out["by"] = "certificate"
        refused = (
            "refused across nodes (502)" if mode == "strict" else "sent across nodes in the clear"
        )
        out["detail"] = (
            f"{uri} across nodes, but no pod of {source} runs on any node, so no node proxy "
            f"may hold its certificate: mTLS {mode} {refused}; on a pod's own node, by its IP"
        )
        return out
    if target is None:
        out["by"] = "certificate"
        out["detail"] = (
            f"from another node: {uri}, the client certificate its node proxy presents, "
            "verified and authorised by the endpoint's node proxy; from the endpoint's own "
            "node: the source pod's IP"
        )
        return out
    remote = [node for node in nodes if node != target]
    local = len(remote) < len(nodes)
    if remote:
        address = router.proxies.get(str(target))
        out["tunnel"] = f"{address[0]}:{address[1]}" if address is not None else None
        out["by"] = "certificate"
        via = (
            f"tunnel {out['tunnel']}"
            if address is not None
            else "no tunnel address for that node in this config: "
            + ("refused (502)" if mode == "strict" else "sent in the clear")
        )
        out["detail"] = (
            f"{uri}: the client certificate the proxy of {', '.join(remote)} presents, "
            f"verified and authorised by the proxy of {target} ({via})"
        )
        if local:
            out["detail"] += f"; from its pods on {target}: their IP, on that node's proxy"
        return out
    out["by"] = "source-ip"
    out["detail"] = (
        f"{source}: the source pod's IP on the proxy of {target}, its own node (same node: "
        f"no tunnel, no certificate); to an endpoint on another node: {uri}, its certificate"
    )
    return out
