"""What a GAMMA route does to one request: match precedence, matching, and the filters.

The config compiler orders every match of the routes attached to a Service port by
:func:`match_rank` (the spec's precedence), so the data plane takes the first match that holds
(:class:`Matcher`); :mod:`mesh.core.routing` then applies the matched rule's filters with the
functions here. All of it is pure and runs on the canonical request (mesh.core.request): the
request that is matched is the request that is rewritten, checked by access control and sent.

Precedence (HTTPRoute, "Matches" in the API reference; GRPCRoute likewise):

- HTTPRoute: an Exact path, then a RegularExpression path (implementation-specific in the spec:
  simmesh puts it between Exact and PathPrefix, longer patterns first, so a regex is not hidden
  by a catch-all ``PathPrefix /``), then the longest PathPrefix (a trailing ``/`` not counted),
  then a method match, then the most header matches, then the most query parameter matches;
- GRPCRoute: the longest service, then the longest method, then the most header matches
  (an exact match before a regular expression of the same length);
- then the oldest route (creationTimestamp; one without counts as the newest), the route first
  by ``namespace/name``, the first rule in the route, the first match in the rule.

Filters, as Gateway API v1.6 defines them:

- header modifiers (:class:`Edits`): ``set`` replaces the header or adds it, ``add`` appends to
  the value with ``,`` (a new line for Set-Cookie or when the header is absent), ``remove``
  drops it; names are case-insensitive;
- path modifiers (:func:`modify_path`): ``ReplaceFullPath``; ``ReplacePrefixMatch`` replaces
  the matched prefix segment-wise, by the table in the API reference (``/foo/bar`` with prefix
  ``/foo`` and ``/xyz`` -> ``/xyz/bar``; with ``""`` -> ``/bar``); the query is kept;
- a redirect (:func:`redirect_location`) keeps what the filter does not replace: the request's
  scheme (``http`` inside the mesh), its host without the port, its path and query; the port is
  the filter's, else the scheme's well-known port when the filter names a scheme, else the
  Service port the client called; a default port (80 for http, 443 for https) is left out;
- a rewrite (:func:`rewrite`) replaces the Host and the path sent upstream.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from urllib.parse import unquote

from mesh.core import patterns, schema
from mesh.core.model import RouteMatch
from mesh.core.request import Request

_PATH_RANK = {"Exact": 0, "RegularExpression": 1, "PathPrefix": 2}
EXACT, REGEX, PREFIX = 0, 1, 2


def match_rank(match: RouteMatch) -> tuple[int, int, int, int, int]:
    """The precedence of one match among those of a Service port's routes: smaller first."""
    if match.grpc is not None:
        service, method, regex = match.grpc
        return (-len(service), -len(method), -len(match.headers), int(regex), 0)
    return (
        _PATH_RANK[match.path_type],
        -path_length(match.path_type, match.path),
        0 if match.method is not None else 1,
        -len(match.headers),
        -len(match.query),
    )


def path_length(path_type: str, value: str) -> int:
    """Characters of a path match: a PathPrefix without its trailing ``/``."""
    return len(value.rstrip("/")) if path_type == "PathPrefix" else len(value)


def query_params(query: str) -> dict[str, str]:
    """The first value of each query parameter, percent-decoded (``+`` is kept)."""
    out: dict[str, str] = {}
    for part in query[1:].split("&"):
        if part:
            name, _, value = part.partition("=")
            out.setdefault(unquote(name, errors="replace"), unquote(value, errors="replace"))
    return out


class Matcher:
    """A compiled match: path (Exact, PathPrefix segment-wise, or an RE2 regex over the whole
    path), method, headers (exact or RE2 over the whole combined value), query parameters."""

    __slots__ = ("headers", "kind", "method", "path", "query", "regex", "rule")

    def __init__(self, doc: schema.RuleMatch) -> None:
        self.rule = doc.rule
        self.kind = _PATH_RANK[doc.path_type]
        self.path = doc.path.rstrip("/") if self.kind == PREFIX else doc.path
        self.regex = patterns.whole(doc.path) if self.kind == REGEX else None
        self.method = doc.method
        self.headers = tuple(_value_matcher(v) for v in doc.headers)
        self.query = tuple(_value_matcher(v) for v in doc.query)

    def matches(self, request: Request, query: dict[str, str] | None) -> bool:
        """Whether the request matches; ``query`` is its parsed query (None: not parsed yet,
        parsed here when this match has query parameters)."""
        path = request.path
        kind = self.kind
        if kind == EXACT:
            if path != self.path:
                return False
        elif kind == PREFIX:
            prefix = self.path
            if prefix and not (
                path.startswith(prefix) and (len(path) == len(prefix) or path[len(prefix)] == "/")
            ):
                return False
        elif self.regex is not None and not self.regex(path):
            return False
        if self.method is not None and request.method != self.method:
            return False
        if self.headers and not _all(self.headers, request.headers):
            return False
        if self.query:
            return _all(self.query, query if query is not None else query_params(request.query))
        return True


ValueMatcher = tuple[str, str, patterns.Matcher | None]


def _value_matcher(doc: schema.ValueMatch) -> ValueMatcher:
    return (doc.name, doc.value, patterns.whole(doc.value) if doc.regex else None)


def _all(wanted: Sequence[ValueMatcher], found: dict[str, str]) -> bool:
    for name, value, regex in wanted:
        got = found.get(name)
        if got is None:
            return False
        if regex is None:
            if got != value:
                return False
        elif not regex(got):
            return False
    return True


# -- filters ------------------------------------------------------------------------------------


class Edits:
    """A RequestHeaderModifier or ResponseHeaderModifier."""

    __slots__ = ("add", "adding", "remove", "set", "setting", "touched")

    def __init__(self, doc: schema.HeaderEdit) -> None:
        self.set = tuple((name, value) for name, value in doc.set)
        self.add = tuple((name, value) for name, value in doc.add)
        self.remove = frozenset(name.lower() for name in doc.remove)
        self.setting = {name.lower(): (name, value) for name, value in self.set}
        self.adding = {name.lower(): value for name, value in self.add}
        self.touched = frozenset(self.setting) | frozenset(self.adding) | self.remove

    def apply(self, items: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
        """Header lines after the edits, in their order; new ones at the end."""
        setting, adding = self.setting, self.adding
        out: list[tuple[str, str]] = []
        placed: set[str] = set()
        for name, value in items:
            low = name.lower()
            if low not in self.touched:
                out.append((name, value))
            elif low in setting:
                if low not in placed:
                    out.append(setting[low])
                    placed.add(low)
            elif low in adding and low not in placed and low != "set-cookie":
                out.append((name, f"{value},{adding[low]}"))
                placed.add(low)
            elif low not in self.remove:
                out.append((name, value))
        for low, pair in setting.items():
            if low not in placed:
                out.append(pair)
        for name, value in self.add:
            if name.lower() not in placed:
                out.append((name, value))
        return out

    def describe(self, what: str) -> list[str]:
        out = [f"{what} set {n}: {v}" for n, v in self.set]
        out += [f"{what} add {n}: {v}" for n, v in self.add]
        out += [f"{what} remove {n}" for n in sorted(self.remove)]
        return out


def edit_request(request: Request, edits: Edits) -> Request:
    """The request with its headers edited; what matches read (``headers``) follows."""
    items = edits.apply(request.items)
    headers = {k: v for k, v in request.headers.items() if k not in edits.touched}
    for name, value in items:
        low = name.lower()
        if low in edits.touched:
            headers[low] = value
    return _copy(request, items=items, headers=headers)


def modify_path(path: str, kind: str, value: str, prefix: str) -> str:
    """``ReplaceFullPath`` or ``ReplacePrefixMatch`` of ``prefix`` (the rule's PathPrefix)."""
    if kind == "ReplaceFullPath":
        return value
    rest = path[len(prefix.rstrip("/")) :]
    new = value.rstrip("/") + rest
    return new if new.startswith("/") else "/" + new


def rewrite(request: Request, doc: schema.Rewrite, prefix: str) -> Request:
    """URLRewrite: the Host and the path the upstream receives (the query is kept)."""
    path = request.path
    if doc.path is not None:
        path = modify_path(path, doc.path.type, doc.path.value, prefix)
    if doc.hostname is None:
        return _copy(request, path=path)
    items = [(n, doc.hostname if n.lower() == "host" else v) for n, v in request.items]
    if "host" not in request.headers:
        items.insert(0, ("Host", doc.hostname))
    headers = dict(request.headers)
    headers["host"] = doc.hostname
    return _copy(request, path=path, host=doc.hostname, items=items, headers=headers)


def redirect_location(request: Request, doc: schema.Redirect, *, port: int, prefix: str) -> str:
    """The Location of a RequestRedirect; ``port`` is the Service port the client called."""
    scheme = doc.scheme or "http"
    host = doc.hostname or host_without_port(request.host)
    if doc.port is not None:
        number = doc.port
    elif doc.scheme is not None:
        number = 443 if scheme == "https" else 80
    else:
        number = port
    path = request.path
    if doc.path is not None:
        path = modify_path(path, doc.path.type, doc.path.value, prefix)
    default = 443 if scheme == "https" else 80
    authority = host if number == default else f"{host}:{number}"
    return f"{scheme}://{authority}{path}{request.query}"


def host_without_port(host: str) -> str:
    if host.startswith("["):
        return host[: host.find("]") + 1] if "]" in host else host
    name, colon, number = host.rpartition(":")
    return name if colon and number.isdigit() else host


def _copy(
    request: Request,
    *,
    path: str | None = None,
    host: str | None = None,
    items: list[tuple[str, str]] | None = None,
    headers: dict[str, str] | None = None,
) -> Request:
    out = Request(
        method=request.method,
        path=request.path if path is None else path,
        query=request.query,
        host=request.host if host is None else host,
        headers=request.headers if headers is None else headers,
        items=request.items if items is None else items,
        replaced=request.replaced,
        te_trailers=request.te_trailers,
    )
    out.forwarded_host = request.forwarded_host
    return out


__all__ = [
    "Edits",
    "Matcher",
    "edit_request",
    "host_without_port",
    "match_rank",
    "modify_path",
    "path_length",
    "query_params",
    "redirect_location",
    "rewrite",
]
