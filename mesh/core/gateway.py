"""Gateway API routes for the mesh (GAMMA): HTTPRoute and GRPCRoute read into model values.

A route is a mesh route when one of its ``parentRefs`` is a Service (group ``""`` or ``core``,
kind ``Service``; GEP-1294). Parents of other kinds (Gateways, for north-south traffic) are
not the mesh's and are skipped without a word; a route with no Service parent reads as a route
with no parents and attaches to nothing. ``spec.hostnames`` is not read: GEP-1294 says a mesh
SHOULD NOT infer anything from it.

What the route says is checked as the standard-channel CRDs of Gateway API v1.6 check it (their
CEL rules included), so a file-provider manifest gets the errors the API server would give:
path values, header names and values, one action per header name in a modifier, a redirect and
a rewrite never together, ``ReplacePrefixMatch`` only beside exactly one ``PathPrefix`` match,
durations in the GEP-2257 format, ``backendRequest`` no longer than ``request``. A value that
breaks them is an error on the route (kind, namespace/name, field path), and the route is left
out; other objects are not affected.

Read but not performed, so the route stays in use with a note: ``rules[].retry`` (experimental
in v1.6; simmesh's retry annotations on the parent Service apply) and ``sessionPersistence``.
Filters simmesh does not perform (``CORS``, ``ExtensionRef``, ``ExternalAuth``) make their rule
answer 500, as the spec requires of an ``ExtensionRef`` that cannot be resolved: a filter is
never skipped silently.

gRPC matches are read into path matches on ``/service/method`` (both exact: an ``Exact`` path;
a service only: a ``PathPrefix``; a method only, or regular expressions: a regular expression
over the whole path), keeping the service and method for GRPCRoute's own precedence.

Header modifiers may not touch what frames a hop or what the proxy itself sets: hop-by-hop
headers, ``Host``, ``Content-Length``, ``X-Forwarded-*``, ``traceparent`` (a Host rewrite is
URLRewrite's). Values are printable text: a line break in a value would be a header of its own.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from mesh.core import patterns
from mesh.core.errors import InvalidObject, describe
from mesh.core.fields import dns_label, dns_name, integer, mapping, object_meta, port_number, seq
from mesh.core.fields import string as text
from mesh.core.model import (
    GatewayRoute,
    HeaderEdits,
    MirrorFilter,
    ObjectReference,
    ParentRef,
    PathModifier,
    RedirectFilter,
    RejectedRoute,
    RewriteFilter,
    RouteBackend,
    RouteFilters,
    RouteMatch,
    RouteRule,
    ValueMatch,
)
from mesh.core.request import HOP_BY_HOP, PROXY_SET, BadRequest, normalize_path

GROUP = "gateway.networking.k8s.io"
VERSIONS: dict[str, tuple[str, ...]] = {
    "HTTPRoute": (f"{GROUP}/v1", f"{GROUP}/v1beta1"),
    "GRPCRoute": (f"{GROUP}/v1",),
}
METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH")
PATH_TYPES = ("Exact", "PathPrefix", "RegularExpression")
REDIRECT_CODES = (301, 302, 303, 307, 308)
MAX_WEIGHT = 1_000_000
# Filters simmesh reads but does not perform: the rule answers 500 instead of skipping them.
UNSUPPORTED = ("CORS", "ExtensionRef", "ExternalAuth")
_FILTERS = {
    "HTTPRoute": (
        "RequestHeaderModifier",
        "ResponseHeaderModifier",
        "RequestMirror",
        "RequestRedirect",
        "URLRewrite",
        *UNSUPPORTED,
    ),
    "GRPCRoute": (
        "RequestHeaderModifier",
        "ResponseHeaderModifier",
        "RequestMirror",
        "ExtensionRef",
    ),
}
_FIELD = {
    "RequestHeaderModifier": "requestHeaderModifier",
    "ResponseHeaderModifier": "responseHeaderModifier",
    "RequestMirror": "requestMirror",
    "RequestRedirect": "requestRedirect",
    "URLRewrite": "urlRewrite",
    "CORS": "cors",
    "ExtensionRef": "extensionRef",
    "ExternalAuth": "externalAuth",
}
_REPEATABLE = frozenset({"RequestMirror", "ExtensionRef"})
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # RFC 9110 section 5.6.2
_BAD_VALUE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")  # control characters but HTAB
_PATH_CHARS = re.compile(r"(?:[-A-Za-z0-9/._~!$&'()*+,;=:@]|%[0-9a-fA-F]{2})+")
_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_HOSTNAME = re.compile(rf"{_LABEL}(\.{_LABEL})*")
_DURATION = re.compile(r"([0-9]{1,5}(h|m|s|ms)){1,4}")
_DURATION_PART = re.compile(r"([0-9]{1,5})(ms|h|m|s)")
_UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
_GRPC_SERVICE = re.compile(r"(?i)\.?[a-z_][a-z_0-9]*(\.[a-z_][a-z_0-9]*)*")
_GRPC_METHOD = re.compile(r"[A-Za-z_][A-Za-z_0-9]*")
# Not for a header modifier: hop-by-hop (this hop's framing), Host (URLRewrite's), the length,
# and what the proxy sets itself.
_REQUEST_FIXED = HOP_BY_HOP | PROXY_SET | {"host", "content-length"}
_RESPONSE_FIXED = HOP_BY_HOP | {"content-length"}


def parse_gateway_route(doc: Mapping[str, Any]) -> GatewayRoute:
    """An HTTPRoute or GRPCRoute (the caller checked kind and apiVersion)."""
    namespace, name = object_meta(doc)
    kind = str(doc.get("kind"))
    meta = mapping(doc.get("metadata"), "metadata")
    created = _created(meta.get("creationTimestamp"))
    spec = mapping(doc.get("spec"), "spec")
    parents = _parents(spec.get("parentRefs"), namespace)
    notes: list[tuple[str, str]] = []
    raw_rules = spec.get("rules")
    if raw_rules is None and kind == "HTTPRoute":
        raw_rules = [{}]  # the CRD's default: one rule matching every request, no backends
    rules = []
    names: set[str] = set()
    for i, raw in enumerate(seq(raw_rules, "spec.rules")):
        rule = _rule(raw, f"spec.rules[{i}]", kind, namespace, notes)
        if rule.name is not None:
            if rule.name in names:
                raise InvalidObject(f"spec.rules[{i}].name", f"{rule.name!r} is not unique")
            names.add(rule.name)
        rules.append(rule)
    return GatewayRoute(
        kind, namespace, name, created, parents, tuple(rules), tuple(notes), _generation(meta)
    )


def rejected_route(doc: Mapping[str, Any], error: InvalidObject) -> RejectedRoute | None:
    """What a status entry needs of a route :func:`parse_gateway_route` rejected: its name,
    generation and Service parents, when those can be read (None otherwise: then nothing says
    which Services it names, and only its error is reported)."""
    try:
        namespace, name = object_meta(doc)
        meta = mapping(doc.get("metadata"), "metadata")
        spec = mapping(doc.get("spec"), "spec")
        parents = _parents(spec.get("parentRefs"), namespace)
        generation = _generation(meta)
    except InvalidObject:
        return None
    if not parents:
        return None
    kind = str(doc.get("kind"))
    return RejectedRoute(kind, namespace, name, generation, parents, error.field, error.message)


def _generation(meta: Mapping[str, Any]) -> int:
    """metadata.generation (set by the API server; 0 in a manifest without it)."""
    value = meta.get("generation")
    if value is None:
        return 0
    return integer(value, "metadata.generation", low=0, high=2**63 - 1)


def _created(value: Any) -> str:
    """creationTimestamp as sortable UTC text (YAML may have read it as a datetime)."""
    if value is None or value == "":
        return ""
    when: datetime
    if isinstance(value, datetime):
        when = value
    elif isinstance(value, str):
        try:
            when = datetime.fromisoformat(value)
        except ValueError:
            raise InvalidObject(
                "metadata.creationTimestamp",
                f"expected an RFC 3339 time such as 2024-05-01T12:00:00Z, got {describe(value)}",
            ) from None
    else:
        raise InvalidObject(
            "metadata.creationTimestamp", f"expected an RFC 3339 time, got {describe(value)}"
        )
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# -- parents -----------------------------------------------------------------------------------


def _parents(value: Any, namespace: str) -> tuple[ParentRef, ...]:
    out: list[ParentRef] = []
    seen: set[tuple[str, str, int | None, str | None]] = set()
    for i, raw in enumerate(seq(value, "spec.parentRefs")):
        path = f"spec.parentRefs[{i}]"
        item = mapping(raw, path)
        group = text(item.get("group"), f"{path}.group", required=False, default="")
        if item.get("group") is None:
            group = GROUP  # the CRD's default: a Gateway
        kind = text(item.get("kind"), f"{path}.kind", required=False, default="Gateway")
        if group not in ("", "core") or kind != "Service":
            continue  # a Gateway's route (north-south), or a parent the mesh does not serve
        name = dns_name(item.get("name"), f"{path}.name")
        parent_ns = dns_label(item.get("namespace"), f"{path}.namespace", required=False)
        port = None
        if item.get("port") is not None:
            port = port_number(item.get("port"), f"{path}.port")
        section = None
        if item.get("sectionName") not in (None, ""):
            section = _section_name(item.get("sectionName"), f"{path}.sectionName")
        key = (parent_ns or namespace, name, port, section)
        if key not in seen:
            seen.add(key)
            out.append(
                ParentRef(parent_ns or namespace, name, port, section, i, group, bool(parent_ns))
            )
    return tuple(out)


def _section_name(value: Any, path: str) -> str:
    name = text(value, path)
    if len(name) > 253 or not _HOSTNAME.fullmatch(name):
        raise InvalidObject(path, f"expected a section name (DNS subdomain), got {describe(name)}")
    return name


# -- rules -------------------------------------------------------------------------------------


def _rule(
    raw: Any, path: str, kind: str, namespace: str, notes: list[tuple[str, str]]
) -> RouteRule:
    item = mapping(raw, path)
    name = None
    if item.get("name") not in (None, ""):
        name = _section_name(item.get("name"), f"{path}.name")
    grpc = kind == "GRPCRoute"
    raw_matches = item.get("matches")
    if raw_matches is None and not grpc:
        raw_matches = [{}]  # the CRD's default: PathPrefix /
    matches = tuple(
        _grpc_match(m, f"{path}.matches[{j}]") if grpc else _http_match(m, f"{path}.matches[{j}]")
        for j, m in enumerate(seq(raw_matches, f"{path}.matches"))
    )
    if grpc and not matches:
        matches = (RouteMatch("PathPrefix", "/", grpc=("", "", False)),)
    one_prefix = len(matches) == 1 and matches[0].path_type == "PathPrefix" and not grpc
    filters = _filters(item.get("filters"), f"{path}.filters", kind, namespace, one_prefix)
    backends = tuple(
        _backend(b, f"{path}.backendRefs[{j}]", kind, namespace, one_prefix)
        for j, b in enumerate(seq(item.get("backendRefs"), f"{path}.backendRefs"))
    )
    if filters.redirect is not None and backends:
        raise InvalidObject(
            f"{path}.filters", "a RequestRedirect filter may not be used together with backendRefs"
        )
    request_timeout = backend_timeout = None
    if not grpc:
        request_timeout, backend_timeout = _timeouts(item.get("timeouts"), f"{path}.timeouts")
        for field in ("retry", "sessionPersistence"):
            if item.get(field) is not None:
                notes.append((f"{path}.{field}", _NOT_READ[field]))
    return RouteRule(name, matches, filters, backends, request_timeout, backend_timeout)


_NOT_READ = {
    "retry": "not read: retry is experimental in Gateway API v1.6; the parent Service's "
    "simmesh.io/retry-* annotations apply",
    "sessionPersistence": "not read: session persistence is experimental in Gateway API v1.6",
}


def _timeouts(value: Any, path: str) -> tuple[float | None, float | None]:
    item = mapping(value, path)
    request = backend = None
    if item.get("request") is not None:
        request = duration(item.get("request"), f"{path}.request")
    if item.get("backendRequest") is not None:
        backend = duration(item.get("backendRequest"), f"{path}.backendRequest")
    if request and backend is not None and backend > request:
        raise InvalidObject(
            f"{path}.backendRequest", "the backendRequest timeout cannot be longer than request"
        )
    return request, backend


YEAR = 86400.0 * 365  # the longest timeout a MeshConfig holds; GEP-2257 allows 99999h


def duration(value: Any, path: str) -> float:
    """A Gateway API duration (GEP-2257): ``10s``, ``500ms``, ``1h30m``; ``0s`` is zero. One
    longer than a year is a year: no request waits that long."""
    raw = text(value, path)
    if not _DURATION.fullmatch(raw):
        raise InvalidObject(
            path, f"expected a duration such as 10s, 500ms or 1h30m (GEP-2257), got {describe(raw)}"
        )
    seconds = sum(int(m.group(1)) * _UNITS[m.group(2)] for m in _DURATION_PART.finditer(raw))
    return min(seconds, YEAR)


# -- matches -----------------------------------------------------------------------------------


def _http_match(raw: Any, path: str) -> RouteMatch:
    item = mapping(raw, path)
    where = f"{path}.path"
    found = mapping(item.get("path"), where)
    path_type = text(found.get("type"), f"{where}.type", required=False, default="PathPrefix")
    if path_type not in PATH_TYPES:
        raise InvalidObject(
            f"{where}.type", f"expected one of {', '.join(PATH_TYPES)}, got {describe(path_type)}"
        )
    value = text(found.get("value"), f"{where}.value", required=False, default="/")
    if path_type == "RegularExpression":
        value = _regex(value, f"{where}.value", limit=1024)
    else:
        value = path_value(value, f"{where}.value")
    method = None
    if item.get("method") is not None:
        method = text(item.get("method"), f"{path}.method")
        if method not in METHODS:
            raise InvalidObject(
                f"{path}.method", f"expected one of {', '.join(METHODS)}, got {describe(method)}"
            )
    headers = _value_matches(item.get("headers"), f"{path}.headers", header=True)
    query = _value_matches(item.get("queryParams"), f"{path}.queryParams", header=False)
    return RouteMatch(path_type, value, method, headers, query)


def path_value(value: str, path: str) -> str:
    """An Exact or PathPrefix value, as the CRD's rules allow it, in the canonical form the
    request's path is matched in (mesh.core.request)."""
    problem = None
    if not value.startswith("/"):
        problem = "must start with '/'"
    elif len(value) > 1024:
        problem = "at most 1024 characters"
    elif not _PATH_CHARS.fullmatch(value):
        problem = "may hold only RFC 3986 path characters and %XX escapes"
    elif "//" in value or "/./" in value or "/../" in value:
        problem = "may not hold '//', '/./' or '/../'"
    elif value.endswith(("/..", "/.")):
        problem = "may not end with '/..' or '/.'"
    elif "%2f" in value.lower():
        problem = "may not hold an encoded '/'"
    if problem is None:
        try:
            return normalize_path(value)
        except BadRequest as exc:
            problem = exc.detail
    raise InvalidObject(path, f"expected an absolute path: {problem}, got {describe(value)}")


def _regex(value: str, path: str, *, limit: int) -> str:
    if len(value) > limit:
        raise InvalidObject(path, f"at most {limit} characters, got {len(value)}")
    try:
        patterns.check(value)
    except patterns.PatternError as exc:
        raise InvalidObject(path, f"expected an RE2 regular expression: {exc}") from None
    return value


def _value_matches(value: Any, path: str, *, header: bool) -> tuple[ValueMatch, ...]:
    """Header or query parameter matches; of several with one name only the first counts
    (header names case-insensitively), as the spec says."""
    out: list[ValueMatch] = []
    seen: set[str] = set()
    limit = 4096 if header else 1024
    for i, raw in enumerate(seq(value, path)):
        where = f"{path}[{i}]"
        item = mapping(raw, where)
        kind = text(item.get("type"), f"{where}.type", required=False, default="Exact")
        if kind not in ("Exact", "RegularExpression"):
            raise InvalidObject(
                f"{where}.type", f"expected Exact or RegularExpression, got {describe(kind)}"
            )
        name = _header_name(item.get("name"), f"{where}.name")
        raw_value = text(item.get("value"), f"{where}.value")
        if kind == "RegularExpression":
            raw_value = _regex(raw_value, f"{where}.value", limit=limit)
        elif len(raw_value) > limit:
            raise InvalidObject(f"{where}.value", f"at most {limit} characters")
        key = name.lower() if header else name
        if key in seen:
            continue
        seen.add(key)
        out.append(ValueMatch(key, raw_value, kind == "RegularExpression"))
    return tuple(out)


def _header_name(value: Any, path: str) -> str:
    name = text(value, path)
    if len(name) > 256 or not _TOKEN.fullmatch(name):
        raise InvalidObject(path, f"expected a header name (RFC 9110 token), got {describe(name)}")
    return name


def _grpc_match(raw: Any, path: str) -> RouteMatch:
    item = mapping(raw, path)
    headers = _value_matches(item.get("headers"), f"{path}.headers", header=True)
    if item.get("method") is None:
        return RouteMatch("PathPrefix", "/", headers=headers, grpc=("", "", False))
    where = f"{path}.method"
    found = mapping(item.get("method"), where)
    kind = text(found.get("type"), f"{where}.type", required=False, default="Exact")
    if kind not in ("Exact", "RegularExpression"):
        raise InvalidObject(
            f"{where}.type", f"expected Exact or RegularExpression, got {describe(kind)}"
        )
    service = text(found.get("service"), f"{where}.service", required=False)
    method = text(found.get("method"), f"{where}.method", required=False)
    if not service and not method:
        raise InvalidObject(where, "one or both of service and method must be given")
    if kind == "RegularExpression":
        service = _regex(service, f"{where}.service", limit=1024) if service else ""
        method = _regex(method, f"{where}.method", limit=1024) if method else ""
        whole = f"/(?:{service or '[^/]+'})/(?:{method or '[^/]+'})"
        value = _regex(whole, where, limit=4096)
        return RouteMatch("RegularExpression", value, headers=headers, grpc=(service, method, True))
    if service and (len(service) > 1024 or not _GRPC_SERVICE.fullmatch(service)):
        raise InvalidObject(f"{where}.service", f"expected a gRPC service, got {describe(service)}")
    if method and (len(method) > 1024 or not _GRPC_METHOD.fullmatch(method)):
        raise InvalidObject(f"{where}.method", f"expected a gRPC method, got {describe(method)}")
    grpc = (service, method, False)
    if service and method:
        return RouteMatch("Exact", f"/{service}/{method}", headers=headers, grpc=grpc)
    if service:
        return RouteMatch("PathPrefix", f"/{service}", headers=headers, grpc=grpc)
    return RouteMatch("RegularExpression", f"/[^/]+/{method}", headers=headers, grpc=grpc)


# -- filters -----------------------------------------------------------------------------------


def _filters(value: Any, path: str, kind: str, namespace: str, one_prefix: bool) -> RouteFilters:
    allowed = _FILTERS[kind]
    seen: set[str] = set()
    request = response = None
    redirect = None
    rewrite = None
    mirrors: list[MirrorFilter] = []
    unsupported = None
    for i, raw in enumerate(seq(value, path)):
        where = f"{path}[{i}]"
        item = mapping(raw, where)
        ftype = text(item.get("type"), f"{where}.type")
        if ftype not in allowed:
            raise InvalidObject(
                f"{where}.type", f"expected one of {', '.join(allowed)}, got {describe(ftype)}"
            )
        if ftype in seen and ftype not in _REPEATABLE:
            raise InvalidObject(f"{where}.type", f"a {ftype} filter cannot be repeated")
        seen.add(ftype)
        field = _FIELD[ftype]
        if item.get(field) is None:
            raise InvalidObject(f"{where}.{field}", f"required for a {ftype} filter")
        body = item.get(field)
        where = f"{where}.{field}"
        if ftype == "RequestHeaderModifier":
            request = _header_edits(body, where, _REQUEST_FIXED, "a request")
        elif ftype == "ResponseHeaderModifier":
            response = _header_edits(body, where, _RESPONSE_FIXED, "a response")
        elif ftype == "RequestRedirect":
            redirect = _redirect(body, where, one_prefix)
        elif ftype == "URLRewrite":
            rewrite = _rewrite(body, where, one_prefix)
        elif ftype == "RequestMirror":
            mirrors.append(_mirror(body, where, namespace))
        elif unsupported is None:
            unsupported = f"the {ftype} filter ({path}[{i}]) is not supported by simmesh"
    if redirect is not None and rewrite is not None:
        raise InvalidObject(path, "a RequestRedirect and a URLRewrite filter cannot be combined")
    return RouteFilters(request, response, redirect, rewrite, tuple(mirrors), unsupported)


def _header_edits(value: Any, path: str, fixed: frozenset[str], what: str) -> HeaderEdits:
    item = mapping(value, path)
    names: set[str] = set()

    def name_of(raw: Any, where: str) -> str:
        name = _header_name(raw, where)
        low = name.lower()
        if low in fixed:
            raise InvalidObject(where, f"{name} cannot be changed by {what} header modifier")
        if low in names:
            raise InvalidObject(where, f"only one action per header name; {name} has another")
        names.add(low)
        return name

    def pairs(key: str) -> tuple[tuple[str, str], ...]:
        out = []
        for i, raw in enumerate(seq(item.get(key), f"{path}.{key}")):
            where = f"{path}.{key}[{i}]"
            entry = mapping(raw, where)
            name = name_of(entry.get("name"), f"{where}.name")
            out.append((name, header_value(entry.get("value"), f"{where}.value")))
        return tuple(out)

    set_, add = pairs("set"), pairs("add")
    remove = tuple(
        name_of(raw, f"{path}.remove[{i}]")
        for i, raw in enumerate(seq(item.get("remove"), f"{path}.remove"))
    )
    return HeaderEdits(set_, add, remove)


def header_value(value: Any, path: str) -> str:
    found = text(value, path)
    if len(found) > 4096:
        raise InvalidObject(path, "at most 4096 characters")
    if _BAD_VALUE.search(found):
        raise InvalidObject(path, "a header value may not hold a line break or a control character")
    return found


def _path_modifier(value: Any, path: str, one_prefix: bool) -> PathModifier:
    item = mapping(value, path)
    kind = text(item.get("type"), f"{path}.type")
    fields = {"ReplaceFullPath": "replaceFullPath", "ReplacePrefixMatch": "replacePrefixMatch"}
    if kind not in fields:
        raise InvalidObject(
            f"{path}.type", f"expected ReplaceFullPath or ReplacePrefixMatch, got {describe(kind)}"
        )
    for other, field in fields.items():
        if other != kind and item.get(field) is not None:
            raise InvalidObject(f"{path}.{field}", f"only with type {other}")
    field = fields[kind]
    raw = item.get(field)
    if raw is None:
        raise InvalidObject(f"{path}.{field}", f"required when type is {kind}")
    if not isinstance(raw, str):
        raise InvalidObject(f"{path}.{field}", f"expected a string, got {describe(raw)}")
    if kind == "ReplacePrefixMatch" and not one_prefix:
        raise InvalidObject(
            f"{path}.type", "ReplacePrefixMatch needs exactly one PathPrefix match in its rule"
        )
    if raw == "" and kind == "ReplacePrefixMatch":
        return PathModifier(kind, "")
    return PathModifier(kind, path_value(raw, f"{path}.{field}"))


def _hostname(value: Any, path: str) -> str | None:
    if value is None or value == "":
        return None
    name = text(value, path)
    if len(name) > 253 or not _HOSTNAME.fullmatch(name):
        raise InvalidObject(path, f"expected a hostname (no IP, no wildcard), got {describe(name)}")
    return name


def _redirect(value: Any, path: str, one_prefix: bool) -> RedirectFilter:
    item = mapping(value, path)
    scheme = None
    if item.get("scheme") is not None:
        scheme = text(item.get("scheme"), f"{path}.scheme")
        if scheme not in ("http", "https"):
            raise InvalidObject(f"{path}.scheme", f"expected http or https, got {describe(scheme)}")
    modifier = None
    if item.get("path") is not None:
        modifier = _path_modifier(item.get("path"), f"{path}.path", one_prefix)
    port = None
    if item.get("port") is not None:
        port = port_number(item.get("port"), f"{path}.port")
    status = 302
    if item.get("statusCode") is not None:
        status = integer(item.get("statusCode"), f"{path}.statusCode", low=300, high=399)
        if status not in REDIRECT_CODES:
            raise InvalidObject(
                f"{path}.statusCode", f"expected 301, 302, 303, 307 or 308, got {status}"
            )
    hostname = _hostname(item.get("hostname"), f"{path}.hostname")
    return RedirectFilter(scheme, hostname, modifier, port, status)


def _rewrite(value: Any, path: str, one_prefix: bool) -> RewriteFilter:
    item = mapping(value, path)
    modifier = None
    if item.get("path") is not None:
        modifier = _path_modifier(item.get("path"), f"{path}.path", one_prefix)
    return RewriteFilter(_hostname(item.get("hostname"), f"{path}.hostname"), modifier)


def _mirror(value: Any, path: str, namespace: str) -> MirrorFilter:
    item = mapping(value, path)
    if item.get("backendRef") is None:
        raise InvalidObject(f"{path}.backendRef", "required, expected a Service reference")
    ref = object_reference(item.get("backendRef"), f"{path}.backendRef", namespace)
    numerator, denominator = 100, 100
    if item.get("percent") is not None and item.get("fraction") is not None:
        raise InvalidObject(path, "only one of percent and fraction may be given")
    if item.get("percent") is not None:
        numerator = integer(item.get("percent"), f"{path}.percent", low=0, high=100)
    elif item.get("fraction") is not None:
        fraction = mapping(item.get("fraction"), f"{path}.fraction")
        numerator = integer(
            fraction.get("numerator"), f"{path}.fraction.numerator", low=0, high=2**31 - 1
        )
        denominator = integer(
            fraction.get("denominator", 100), f"{path}.fraction.denominator", low=1, high=2**31 - 1
        )
        if numerator > denominator:
            raise InvalidObject(
                f"{path}.fraction", "the numerator may not be greater than the denominator"
            )
    return MirrorFilter(ref, numerator, denominator, path)


# -- backends ----------------------------------------------------------------------------------


def object_reference(value: Any, path: str, namespace: str) -> ObjectReference:
    item = mapping(value, path)
    group = text(item.get("group"), f"{path}.group", required=False, default="")
    kind = text(item.get("kind"), f"{path}.kind", required=False, default="Service")
    name = dns_name(item.get("name"), f"{path}.name")
    ref_ns = dns_label(item.get("namespace"), f"{path}.namespace", required=False) or namespace
    port = None
    if item.get("port") is not None:
        port = port_number(item.get("port"), f"{path}.port")
    return ObjectReference(group, kind, ref_ns, name, port)


def _backend(value: Any, path: str, kind: str, namespace: str, one_prefix: bool) -> RouteBackend:
    item = mapping(value, path)
    ref = object_reference(item, path, namespace)
    weight = 1
    if item.get("weight") is not None:
        weight = integer(item.get("weight"), f"{path}.weight", low=0, high=MAX_WEIGHT)
    filters = _filters(item.get("filters"), f"{path}.filters", kind, namespace, one_prefix)
    return RouteBackend(ref, weight, filters, path)


__all__ = [
    "GROUP",
    "VERSIONS",
    "duration",
    "header_value",
    "object_reference",
    "parse_gateway_route",
    "path_value",
    "rejected_route",
]
