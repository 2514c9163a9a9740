"""One HTTP request as the mesh reads it: the form that is matched is the form that is sent.

A proxy that matches one reading of a request and forwards another can be bypassed: a grant for
``GET /api/.*`` must not admit ``GET /api/../admin`` that the backend resolves to ``/admin``,
and a header match must not see ``x-role: user`` while the backend also receives
``X-Role: admin``. So no driver matches or forwards the raw request: :func:`parse_request`
builds one canonical :class:`Request`, the access decision reads it and the proxy sends it.

Path (RFC 3986 section 6.2.2, with the choices below), see :func:`normalize_path`:

- the target splits at the first ``?``: the path is normalised, the query is kept as sent;
- percent-encoded unreserved characters are decoded (``%61`` -> ``a``, ``%2E`` -> ``.``), the
  other escapes are kept with upper-case hex digits;
- dot segments are removed (RFC 3986 section 5.2.4) and empty segments merged (``//`` ->
  ``/``), so no ``.``, ``..`` or empty segment is left for a backend to resolve differently;
- characters outside RFC 3986's ``pchar`` (space, ``"``, ``<``, ``>``, ``^``, backtick,
  ``{``, ``|``, ``}``, non-ASCII as UTF-8) are percent-encoded;
- the query may hold no whitespace, ``#`` or control character (it is sent on the request
  line as it came);
- rejected (400) because backends disagree on what they mean: an encoded ``/`` or ``\\``
  (``%2F``, ``%5C``), a raw ``\\``, a raw or encoded control character (NUL included), ``#``,
  a malformed escape, an escape encoded twice (``%252e``: one decoding too many makes it a
  dot), a segment that is a dot segment once its ``;`` parameters are dropped (``..;x``:
  Tomcat's reading), a path not starting with ``/`` (``*`` is kept for OPTIONS,
  ``host:port`` for CONNECT).

A segment's ``;`` parameters stay, but Tomcat, Jetty and Spring drop them before routing, so a
path with parameters has two readings (:attr:`Request.readings`) and a path match must hold
for both (``/files/secret.key;.txt`` is not a ``.txt`` file to them).

Headers, see :func:`parse_request`: hop-by-hop headers (the fixed set and every name a
``Connection`` header lists) describe one connection, so they are neither matched nor
forwarded. A header sent several times is combined into one line, its values joined with
``, `` (``; `` for Cookie, RFC 9110 section 5.3 and RFC 9113 section 8.2.3): matches see the
combined value and the backend receives exactly that line. Several ``Host`` or differing
``Content-Length`` headers are rejected. The headers the proxy sets itself
(``X-Forwarded-For``/``-Proto``/``-Host``, ``traceparent``) and ``Expect`` (answered by the
proxy) are not in the view matches read: a match on them never matches.

Upgrades, see :func:`websocket_upgrade`: the only protocol the mesh switches a connection to
is WebSocket. Once a connection is switched, what follows is not HTTP to the proxy, so requests
sent through it would reach the backend without being read or decided; a request offering any
other protocol (``h2c``, or a made-up one a backend might accept) is served as a plain request,
its ``Upgrade`` header dropped like every hop-by-hop header (RFC 9110 section 7.8 lets a server
ignore it).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Final, cast, final

# Final: a compiled module reads these as C globals, not from its globals dict per use.
HOP_BY_HOP: Final = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "transfer-encoding",
        "te",
        "trailer",
        "upgrade",
        "proxy-authenticate",
        "proxy-authorization",
        "http2-settings",
    }
)
# Set (or answered) by the proxy: never matched with the client's value.
PROXY_SET: Final = frozenset(
    {"x-forwarded-for", "x-forwarded-proto", "x-forwarded-host", "traceparent", "expect"}
)
_SINGLE: Final = frozenset({"host", "content-length"})

_UNRESERVED: Final = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_PCHAR: Final = _UNRESERVED | frozenset("!$&'()*+,;=:@")
_REJECTED_BYTES: Final = frozenset({0x2F, 0x5C, 0x7F, *range(0x20)})
# A path that needs no work: pchar and '/' only, no escape, no dot or empty segment. Checked
# on its ASCII bytes with a table that maps exactly these bytes to themselves: the path is
# plain when translating changes nothing (one C loop, and no copy when nothing changes; a
# regex match, lstrip or issuperset with these characters cost several times as much, and
# translate's delete argument builds its table on every call).
_PLAIN_BYTES = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_~!$&'()*+,;=:@/."
_PLAIN_TABLE: Final = bytes(c if c in _PLAIN_BYTES else c ^ 1 for c in range(256))
_ESCAPE: Final = re.compile(r"%([0-9A-Fa-f]{2})")
_PARAMS: Final = re.compile(r";|%3B")
# read as an escape by a backend that decodes twice
_DOUBLE: Final = re.compile(r"%25[0-9A-Fa-f]{2}")
_BAD_QUERY: Final = re.compile(r"[#\x00-\x20\x7f]")
_TOKEN: Final = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # RFC 9110 section 5.6.2
_AUTHORITY: Final = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-.]+):[0-9]{1,5}")


class BadRequest(ValueError):
    """A request the mesh refuses to read (400): ``detail`` says what is wrong."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


# The registered methods are tokens: a set lookup for nearly every request, not a regex.
_METHODS: Final = frozenset(
    ["GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"]
)


def is_token(text: str) -> bool:
    """Whether ``text`` is an RFC 9110 token (what a method must be)."""
    return text in _METHODS or _TOKEN.fullmatch(text) is not None


def normalize_path(path: str) -> str:
    """The canonical form of a request path (without the query); raises BadRequest."""
    # Its UTF-8 bytes (non-ASCII ones are never plain); the first byte read from them, not by
    # startswith, and no isascii (a compiled build calls both as methods by name).
    try:
        octets = path.encode()
    except UnicodeEncodeError:  # a lone surrogate (decoded with surrogateescape): not plain
        octets = b""
    if (
        len(octets) > 0
        and octets[0] == 0x2F
        and octets.translate(_PLAIN_TABLE) == octets
        and "//" not in path
        and ("." not in path or "/." not in path)  # most paths have no dot (one memchr)
    ):
        return path
    if not path.startswith("/"):
        raise BadRequest(f"the request path must start with '/': {_show(path)}")
    stack: list[str] = []
    segments = path[1:].split("/")
    last = len(segments) - 1
    trailing = False
    for i, raw in enumerate(segments):
        segment = _segment(raw, path)
        if segment in ("", ".", ".."):
            if segment == ".." and stack:
                stack.pop()
            trailing = i == last
            continue
        if ";" in segment and segment.split(";", 1)[0] in (".", ".."):
            raise BadRequest(f"a dot segment with parameters is ambiguous: {_show(path)}")
        stack.append(segment)
        trailing = False
    if not stack:
        return "/"
    return "/" + "/".join(stack) + ("/" if trailing else "")


def _segment(raw: str, path: str) -> str:
    out: list[str] = []
    i = 0
    n = len(raw)
    while i < n:
        c = raw[i]
        if c == "%":
            m = _ESCAPE.match(raw, i)
            if m is None:
                raise BadRequest(f"malformed percent-escape in the path: {_show(path)}")
            byte = int(m.group(1), 16)
            if byte in _REJECTED_BYTES:
                raise BadRequest(
                    f"the path encodes {_BYTE_NAMES.get(byte, 'a control character')} "
                    f"(%{byte:02X}), which backends read differently: {_show(path)}"
                )
            char = chr(byte)
            out.append(char if char in _UNRESERVED else f"%{byte:02X}")
            i += 3
            continue
        if c in _PCHAR:
            out.append(c)
        elif c == "\\" or c == "#" or ord(c) < 0x20 or ord(c) == 0x7F:
            what = _BYTE_NAMES.get(ord(c), "a control character")
            raise BadRequest(f"the path contains {what}, which backends read differently")
        else:
            out.append("".join(f"%{b:02X}" for b in c.encode("utf-8", "surrogateescape")))
        i += 1
    segment = "".join(out)
    if "%25" in segment and _DOUBLE.search(segment):
        raise BadRequest(f"the path encodes a percent-escape twice: {_show(path)}")
    return segment


_BYTE_NAMES: Final = {0x2F: "'/'", 0x5C: "a backslash", 0x00: "NUL", 0x23: "'#'"}


def _show(text: str) -> str:
    return repr(text if len(text) <= 80 else text[:77] + "...")


def _plain_query(query: str) -> bool:
    """Whether ``query`` has none of what :data:`_BAD_QUERY` finds (False: it may)."""
    return " " not in query and "#" not in query and query.isprintable()


def split_target(method: str, target: str) -> tuple[str, str]:
    """(normalised path, query with its '?' or ''): the origin-form target of a request."""
    if "?" in target:  # (a one-character search: cheaper than find's)
        cut = target.find("?")
        path, query = target[:cut], target[cut:]
    else:
        path, query = target, ""
    # (a printable query without ' ' or '#' cannot match: two memchr and one C loop first)
    if query and not _plain_query(query) and _BAD_QUERY.search(query):
        raise BadRequest("the query contains '#', whitespace or a control character")
    if path == "*" and method == "OPTIONS" and not query:
        return path, ""
    if method == "CONNECT" and not query and _AUTHORITY.fullmatch(path):
        return path, ""
    return normalize_path(path), query


class Request:
    """A canonical HTTP request: what access control matches and what the proxy forwards.

    ``headers`` maps lower-case names to the combined value (the view matches read);
    ``items`` are the end-to-end header lines to forward, in their first position and with
    their first spelling; they still hold the proxy-set headers, whose client values are
    also in ``replaced`` (lower-case names): the proxy replaces or extends them.
    """

    __slots__ = (
        "forwarded_host",
        "headers",
        "host",
        "items",
        "method",
        "path",
        "query",
        "replaced",
        "te_trailers",
    )

    def __init__(
        self,
        *,
        method: str,
        path: str,
        query: str,
        host: str,
        headers: dict[str, str],
        items: list[tuple[str, str]],
        replaced: dict[str, str] | None = None,
        te_trailers: bool = False,
    ) -> None:
        self.method = method
        self.path = path
        self.query = query
        self.host = host
        self.forwarded_host = host  # the Host the client sent (a rewrite changes ``host``)
        self.headers = headers
        self.items = items
        self.replaced = replaced if replaced is not None else {}
        self.te_trailers = te_trailers

    @property
    def plain_path(self) -> bool:
        """Whether no segment has parameters: then :attr:`readings` is the path alone (access
        control matches it directly, without building the tuple)."""
        path = self.path
        # one-character searches first (memchr): most paths have no '%' at all
        return ";" not in path and ("%" not in path or "%3B" not in path)

    @property
    def readings(self) -> tuple[str, ...]:
        """The paths a backend may read this request as: the canonical path, and when a
        segment has ``;`` parameters, the path without them (Tomcat, Jetty and Spring drop
        them; an encoded ``%3B`` counts too, for backends that decode first). Access control
        admits a request only when its match holds for each."""
        path = self.path
        if self.plain_path:
            return (path,)
        out = [path]
        for params in (";", _PARAMS):  # ';' only, then ';' or '%3B'
            segments = path.split("/")
            if params == ";":
                stripped = "/".join(s.split(";", 1)[0] for s in segments)
            else:
                stripped = "/".join(_PARAMS.split(s, 1)[0] for s in segments)
            reading = normalize_path(stripped)
            if reading not in out:
                out.append(reading)
        return tuple(out)

    @property
    def target(self) -> str:
        """The request target sent upstream."""
        return self.path + self.query

    def __repr__(self) -> str:
        return f"Request({self.method} {self.host}{self.target})"


def offers_websocket(upgrade: str) -> bool:
    """Whether an ``Upgrade`` header value lists the ``websocket`` protocol (ASCII
    case-insensitive, a ``/version`` ignored)."""
    return any(
        token.split("/", 1)[0].strip().lower() == "websocket" for token in upgrade.split(",")
    )


def websocket_upgrade(items: Iterable[tuple[str, str]]) -> bool:
    """Whether a request asks to switch its connection to WebSocket: ``Connection`` lists
    ``upgrade`` and ``Upgrade`` lists ``websocket`` (RFC 9110 section 7.8, RFC 6455 section
    4.1). Only then does a driver switch protocols; any other upgrade offer is ignored."""
    connection = upgrade = False
    for name, value in items:
        low = name.lower()
        if low == "connection":
            connection = connection or any(
                token.strip().lower() == "upgrade" for token in value.split(",")
            )
        elif low == "upgrade":
            upgrade = upgrade or offers_websocket(value)
    return connection and upgrade


# What parse_request does with a header, by its lower-case name.
_ORDINARY: Final = 0
_HOST: Final = 1
_PROXY_SET: Final = 2  # in PROXY_SET
_CONTENT_LENGTH: Final = 3
_COOKIE: Final = 4
_HOP: Final = 5  # hop-by-hop (this and the kinds after it)
_CONNECTION: Final = 6
_TE: Final = 7
_KINDS: Final[dict[str, int]] = {
    **{low: _HOP for low in HOP_BY_HOP},
    **{low: _PROXY_SET for low in PROXY_SET},
    "host": _HOST,
    "content-length": _CONTENT_LENGTH,
    "cookie": _COOKIE,
    "connection": _CONNECTION,
    "te": _TE,
}


@final
class _Name:
    """A header name as parse_request reads it: its lower-case form (one shared string, its
    hash computed once) and its kind."""

    __slots__ = ("kind", "low")

    def __init__(self, low: str, kind: int) -> None:
        self.low = low
        self.kind = kind


# The usual header names, in the spellings clients send (lower case as HTTP/2 requires, and
# each word capitalised, as HTTP/1 clients write them; the short hop-by-hop ones in capitals):
# looked up as sent, so a known name is neither lower-cased (a new string per line) nor
# looked up in the sets above. Any other name takes ``name.lower()`` and ``_KINDS``.
_USUAL: Final = (
    *_KINDS,
    "accept",
    "accept-encoding",
    "accept-language",
    "authorization",
    "cache-control",
    "content-type",
    "if-modified-since",
    "if-none-match",
    "origin",
    "pragma",
    "range",
    "referer",
    "user-agent",
    "x-request-id",
    "x-real-ip",
    "b3",
    "x-b3-traceid",
    "x-b3-spanid",
    "x-b3-parentspanid",
    "x-b3-sampled",
    "tracestate",
    "baggage",
    "grpc-timeout",
)


def _known_names() -> dict[str, _Name]:
    known: dict[str, _Name] = {}
    for low in _USUAL:
        name = _Name(low, _KINDS.get(low, _ORDINARY))
        title = "-".join(word.capitalize() for word in low.split("-"))
        for spelling in (low, title, low.upper()):
            known[spelling] = name
    return known


_KNOWN: Final = _known_names()


def parse_request(
    method: str, target: str, items: Iterable[tuple[str, str]], *, authority: str | None = None
) -> Request:
    """The canonical form of a request; raises BadRequest (answered 400).

    ``authority`` (HTTP/2's ``:authority``, or the host of an absolute-form target) takes
    precedence over a ``Host`` header, and replaces its value in what is forwarded. The method
    must be a token: it is sent on a request line (``GET /admin`` is not a method).
    """
    if not is_token(method):
        raise BadRequest(f"the method is not a token: {_show(method)}")
    path, query = split_target(method, target)
    # The lines go on as the same tuple objects (a compiled build reads a line typed as a pair
    # into two values and would build a new tuple to store it again): held as objects.
    out: list[object] = []
    headers: dict[str, str] = {}
    listed: set[str] | None = None
    te_trailers = False
    proxy_set = False
    host = ""  # headers["host"] as it ends
    host_at = -1  # the Host line's index in ``out``
    lines = items if isinstance(items, list) else list(items)
    for line in cast("list[object]", lines):  # one pass: this runs for every request served
        name, value = cast("tuple[str, str]", line)
        known = _KNOWN.get(name)
        if known is not None:
            low = known.low
            kind = known.kind
        else:
            low = name.lower()
            kind = _KINDS.get(low, _ORDINARY)
        if kind >= _HOP:
            if kind == _CONNECTION:
                tokens = {t.strip().lower() for t in value.split(",")}
                listed = tokens if listed is None else listed | tokens
            elif kind == _TE:
                te_trailers = value.strip().lower() == "trailers"
            continue
        stored = authority if authority and kind == _HOST else value
        count = len(headers)
        first = headers.setdefault(low, stored)  # one lookup: stored unless seen before
        if len(headers) > count:  # the first line of this name
            if kind == _HOST:
                host_at = len(out)
                if authority:  # the request's own authority wins, and is what is forwarded
                    line = (name, authority)
                host = stored
            elif kind == _PROXY_SET:
                proxy_set = True
            out.append(line)
            continue
        if kind in (_HOST, _CONTENT_LENGTH):
            if kind == _CONTENT_LENGTH and first.strip() == value.strip():
                continue
            raise BadRequest(f"several {low.title()} headers")
        combined = headers[low] = f"{first}{'; ' if kind == _COOKIE else ', '}{value}"
        for at in range(len(out)):
            spelled = _line(out[at])[0]
            if spelled.lower() == low:
                out[at] = (spelled, combined)
                break
    if listed is not None and listed - _SINGLE:
        # Host and Content-Length stay: they are not this hop's to drop.
        kept: list[object] = []
        for line in out:
            low = _line(line)[0].lower()
            if low not in listed or low in _SINGLE:
                if low == "host":
                    host_at = len(kept)
                kept.append(line)
        out = kept
        for low in listed - _SINGLE:
            headers.pop(low, None)
    if authority and host_at < 0:  # no Host line: the authority is sent as one
        out.insert(0, ("Host", authority))
        headers["host"] = host = authority
    replaced = _NOT_REPLACED
    if proxy_set:
        replaced = {}
        for low in PROXY_SET:
            if low in headers:
                replaced[low] = headers.pop(low)
    return Request(
        method=method,
        path=path,
        query=query,
        host=host,
        headers=headers,
        items=cast("list[tuple[str, str]]", out),
        replaced=replaced,
        te_trailers=te_trailers,
    )


# ``Request.replaced`` of every request without a proxy-set header: one empty dict, which
# nothing writes to (read-only by contract: the proxy reads it, the core copies it along).
_NOT_REPLACED: Final[dict[str, str]] = {}


def _line(line: object) -> tuple[str, str]:
    """A header line of parse_request's ``out``, as the pair it is."""
    return cast("tuple[str, str]", line)


__all__ = [
    "HOP_BY_HOP",
    "PROXY_SET",
    "BadRequest",
    "Request",
    "is_token",
    "normalize_path",
    "offers_websocket",
    "parse_request",
    "split_target",
    "websocket_upgrade",
]
