"""The canonical request (mesh.core.request): what access control matches is what the backend
reads. Unit tables for the path and header rules, and properties over generated paths against
models of how backends resolve paths."""

from __future__ import annotations

import re
from urllib.parse import unquote

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mesh.core.request import (
    BadRequest,
    Request,
    normalize_path,
    parse_request,
    split_target,
    websocket_upgrade,
)

# -- paths ------------------------------------------------------------------------------------

SAME = ["/", "/api/items", "/api/items/", "/a.b/c", "/~user/x", "/a;b=c/d", "/a:b@c!$&'()*+,="]


@pytest.mark.parametrize("path", SAME)
def test_plain_paths_are_unchanged(path: str) -> None:
    assert normalize_path(path) == path


NORMALISED = [
    ("/api/../admin/secret.txt", "/admin/secret.txt"),
    ("/api/%2e%2e/admin", "/admin"),
    ("/api/%2E%2e/admin", "/admin"),
    ("/api/.%2e/admin", "/admin"),
    ("/api/%2e./admin", "/admin"),
    ("/api/./../admin", "/admin"),
    ("/api/x/../../admin", "/admin"),
    ("/../../admin", "/admin"),
    ("/api/..", "/"),
    ("/api/.", "/api/"),
    ("/api/x/..", "/api/"),
    ("//admin", "/admin"),
    ("/api//x", "/api/x"),
    ("/api///", "/api/"),
    ("/api//../admin", "/admin"),
    ("/%61pi/%69tems", "/api/items"),
    ("/a%7eb%2d%5F", "/a~b-_"),
    ("/a%3fb", "/a%3Fb"),
    ("/a%25b", "/a%25b"),
    ("/a%25zz", "/a%25zz"),
    ("/a b", "/a%20b"),
    ('/a"<>^`{|}', "/a%22%3C%3E%5E%60%7B%7C%7D"),
    ("/caf\u00e9", "/caf%C3%A9"),
    ("/a\udc80b", "/a%80b"),  # a byte that was not UTF-8, decoded with surrogateescape
    ("/.well-known/x", "/.well-known/x"),
    ("/a/.hidden/..", "/a/"),
    ("/a/...", "/a/..."),
]


@pytest.mark.parametrize(("raw", "canonical"), NORMALISED)
def test_paths_are_normalised(raw: str, canonical: str) -> None:
    assert normalize_path(raw) == canonical


REJECTED = [
    ("/api/..;/admin", "dot segment with parameters"),
    ("/api/.;x/admin", "dot segment with parameters"),
    ("/api/%2e%2e;x/admin", "dot segment with parameters"),
    ("/api/%2F../admin", "'/'"),
    ("/api/%2f", "'/'"),
    ("/api/%5C..%5Cadmin", "backslash"),
    ("/api\\..\\admin", "backslash"),
    ("/api/%00", "NUL"),
    ("/api/%0d%0a", "control character"),
    ("/api/\x01", "control character"),
    ("/api/%7f", "control character"),
    ("/api/%zz", "malformed"),
    ("/api/%252e%252e/admin", "twice"),
    ("/a%2525b", "twice"),
    ("/a%25%41%42", "twice"),
    ("/api/%4", "malformed"),
    ("/api/%", "malformed"),
    ("/api#frag", "'#'"),
    ("api/items", "must start with '/'"),
    ("", "must start with '/'"),
]


@pytest.mark.parametrize(("raw", "why"), REJECTED)
def test_ambiguous_paths_are_rejected(raw: str, why: str) -> None:
    with pytest.raises(BadRequest) as caught:
        normalize_path(raw)
    assert why in caught.value.detail


def test_the_query_is_kept_as_sent_and_never_normalised() -> None:
    assert split_target("GET", "/api/../x?a=/../b&c=%2e") == ("/x", "?a=/../b&c=%2e")
    assert split_target("GET", "/x?") == ("/x", "?")
    with pytest.raises(BadRequest):
        split_target("GET", "/x?a=\x00")
    for query in ("?a= /admin", "?a=\t", "?a b"):  # would split the request line sent on
        with pytest.raises(BadRequest, match="whitespace"):
            split_target("GET", "/x" + query)


@pytest.mark.parametrize("method", ["GET /admin", "GET\t", "G ET", "", "GET\r\n", "G\u00e9T"])
def test_a_method_must_be_a_token(method: str) -> None:
    """HTTP/2 carries the method in a field of its own; upstream it starts a request line."""
    with pytest.raises(BadRequest, match="not a token"):
        parse_request(method, "/x", [])


def test_methods_are_any_token() -> None:
    for method in ("GET", "PROPFIND", "M-SEARCH", "X_CUSTOM!", "get"):
        assert parse_request(method, "/x", []).method == method


def test_asterisk_and_authority_forms_only_where_they_belong() -> None:
    assert split_target("OPTIONS", "*") == ("*", "")
    assert split_target("CONNECT", "db.demo.mesh:5432") == ("db.demo.mesh:5432", "")
    for method, target in [("GET", "*"), ("GET", "db:5432"), ("CONNECT", "/x/../y:1")]:
        if method == "CONNECT":
            assert split_target(method, target)[0] == "/y:1"
            continue
        with pytest.raises(BadRequest):
            split_target(method, target)


# -- backend models ---------------------------------------------------------------------------


def resolve(segments: list[str]) -> str:
    """RFC 3986 section 5.2.4 on a path's segments, merging empty ones; a trailing '', '.'
    or '..' leaves a trailing slash."""
    out: list[str] = []
    for segment in segments:
        if segment == "..":
            if out:
                out.pop()
        elif segment not in ("", "."):
            out.append(segment)
    trailing = bool(out) and segments[-1] in ("", ".", "..")
    return "/" + "/".join(out) + ("/" if trailing else "")


def rfc_backend(path: str) -> str:
    """Decodes every escape, then resolves dot segments and merges slashes (nginx-like)."""
    return resolve(unquote(path)[1:].split("/"))


def tomcat_backend(path: str) -> str:
    """Drops ';' parameters from each segment first, then decodes and resolves."""
    return resolve([unquote(s.split(";", 1)[0]) for s in path[1:].split("/")])


def resolve_first_backend(path: str) -> str:
    """Resolves dot segments on the raw path, then decodes (a router, then a file handler)."""
    return unquote(resolve(path[1:].split("/")))


def literal_backend(path: str) -> str:
    return unquote(path)


def double_decoding_backend(path: str) -> str:
    """Decodes twice (a chain of two decoders): %252e becomes '.'."""
    return tomcat_backend(unquote(path))


BACKENDS = [rfc_backend, tomcat_backend, resolve_first_backend, literal_backend]
BACKENDS += [double_decoding_backend]


ALPHABET = ["/", "/", ".", "..", "%2e", "%2E", "%2f", "%5c", "\\", ";", "a", "api", "admin"]
ALPHABET += [
    "%61",
    "%25",
    "%252e",
    "%2541",
    "%41dmin",
    "~",
    "%20",
    " ",
    "x;y",
    "%3b",
    "\u00e9",
    "//",
    "#",
    "?",
]
raw_paths = st.lists(st.sampled_from(ALPHABET), max_size=12).map(lambda parts: "/" + "".join(parts))


def _reading(raw: str) -> Request | None:
    try:
        return parse_request("GET", raw, [])
    except BadRequest:
        return None


@given(raw_paths)
@settings(max_examples=1500, deadline=None)
def test_every_backend_reads_the_canonical_path_as_one_of_its_readings(raw: str) -> None:
    """The property behind the ACL: whatever a backend does to resolve a path, it reads one
    of the request's readings (decoded) and nothing else, so deciding on every reading is
    deciding on the resource any backend serves."""
    request = _reading(raw)
    if request is None:
        return
    assert normalize_path(request.path) == request.path  # a fixed point: nothing to resolve
    readings = {unquote(r) for r in request.readings}
    for backend in BACKENDS:
        assert backend(request.path) in readings, (raw, backend.__name__)


GRANT = re.compile("/api/")  # pathRegex "/api/", anchored at the start


@given(raw_paths)
@settings(max_examples=1500, deadline=None)
def test_a_path_grant_admits_exactly_what_every_backend_serves_under_it(raw: str) -> None:
    request = _reading(raw)
    if request is None:
        return
    admitted = all(GRANT.match(path) for path in request.readings)
    served = {backend.__name__: backend(request.path) for backend in BACKENDS}
    assert admitted == all(p.startswith("/api/") for p in served.values()), (raw, served)


def test_a_parameter_that_hides_the_real_resource_is_read_both_ways() -> None:
    request = parse_request("GET", "/files/secret.key;.txt", [])
    assert request.readings == ("/files/secret.key;.txt", "/files/secret.key")
    assert parse_request("GET", "/a;x/b/", []).readings == ("/a;x/b/", "/a/b/")
    assert parse_request("GET", "/a/b", []).readings == ("/a/b",)


# -- headers ----------------------------------------------------------------------------------


def test_duplicate_headers_are_matched_and_sent_as_one_combined_line() -> None:
    request = parse_request("GET", "/", [("Host", "h"), ("x-role", "user"), ("X-Role", "admin")])
    assert request.headers["x-role"] == "user, admin"
    assert request.items == [("Host", "h"), ("x-role", "user, admin")]


def test_cookies_combine_with_semicolons() -> None:
    request = parse_request("GET", "/", [("cookie", "a=1"), ("cookie", "b=2")])
    assert request.headers["cookie"] == "a=1; b=2"


def test_hop_by_hop_and_connection_listed_headers_are_neither_matched_nor_sent() -> None:
    items = [
        ("Host", "h"),
        ("Connection", "keep-alive, X-Role"),
        ("X-Role", "admin"),
        ("Keep-Alive", "timeout=5"),
        ("Upgrade", "websocket"),
        ("Transfer-Encoding", "chunked"),
        ("X-Other", "1"),
    ]
    request = parse_request("GET", "/", items)
    assert request.headers == {"host": "h", "x-other": "1"}
    assert request.items == [("Host", "h"), ("X-Other", "1")]


def test_connection_cannot_drop_host() -> None:
    request = parse_request("GET", "/", [("Host", "h"), ("Connection", "host")])
    assert request.host == "h"
    assert request.items == [("Host", "h")]


def test_proxy_set_headers_are_not_matched_but_kept_for_the_proxy() -> None:
    items = [("X-Forwarded-For", "1.2.3.4"), ("traceparent", "00-ab-cd-01"), ("Expect", "x")]
    request = parse_request("GET", "/", items)
    assert request.headers == {}
    assert request.replaced == {
        "x-forwarded-for": "1.2.3.4",
        "traceparent": "00-ab-cd-01",
        "expect": "x",
    }


def test_several_hosts_or_differing_lengths_are_rejected() -> None:
    with pytest.raises(BadRequest, match="several Host"):
        parse_request("GET", "/", [("Host", "a"), ("host", "b")])
    with pytest.raises(BadRequest, match="several Content-Length"):
        parse_request("POST", "/", [("Content-Length", "1"), ("Content-Length", "2")])
    same = parse_request("POST", "/", [("Content-Length", "1"), ("Content-Length", " 1")])
    assert same.items == [("Content-Length", "1")]


def test_the_authority_wins_over_host_and_is_what_is_sent() -> None:
    request = parse_request("GET", "/", [("Host", "b.demo.mesh")], authority="a.demo.mesh")
    assert request.host == "a.demo.mesh"
    assert request.items == [("Host", "a.demo.mesh")]
    assert parse_request("GET", "/", [], authority="a").items == [("Host", "a")]


header_names = st.sampled_from(["x-role", "X-Role", "X-ROLE", "host", "connection", "x-a"])
header_values = st.sampled_from(["user", "admin", "x-role", "x-a", "close", ""])


@given(st.lists(st.tuples(header_names, header_values), max_size=8))
@settings(max_examples=500, deadline=None)
def test_what_is_matched_is_what_is_forwarded(items: list[tuple[str, str]]) -> None:
    """Every header the view shows is forwarded with exactly that value, once; nothing is
    forwarded that the view (or the proxy's own set) does not account for."""
    try:
        request = parse_request("GET", "/", items)
    except BadRequest:
        return
    forwarded: dict[str, list[str]] = {}
    for name, value in request.items:
        forwarded.setdefault(name.lower(), []).append(value)
    assert all(len(values) == 1 for values in forwarded.values())
    assert {k: v[0] for k, v in forwarded.items()} == request.headers


@pytest.mark.parametrize(
    ("items", "websocket"),
    [
        ([("Connection", "Upgrade"), ("Upgrade", "websocket")], True),
        ([("connection", "keep-alive, upgrade"), ("upgrade", "WebSocket")], True),
        ([("Connection", "Upgrade"), ("Upgrade", "h2c, websocket/13")], True),
        ([("Connection", "Upgrade"), ("Upgrade", "h2c")], False),
        ([("Connection", "Upgrade"), ("Upgrade", "websockets")], False),
        ([("Connection", "Upgrade"), ("Upgrade", "foo")], False),
        ([("Upgrade", "websocket")], False),  # Connection must list it: hop-by-hop
        ([("Connection", "upgraded"), ("Upgrade", "websocket")], False),
        ([], False),
    ],
)
def test_only_a_websocket_upgrade_switches_protocols(
    items: list[tuple[str, str]], websocket: bool
) -> None:
    assert websocket_upgrade(items) is websocket


# -- parse_request against the reading it replaced --------------------------------------------
# parse_request looks the usual header names up as sent (mesh.core.request._KNOWN) and takes
# shortcuts for speed; this model is the plain reading it replaced (every name lower-cased, the
# sets looked up, the authority applied at the end), and the two must agree on everything.


def _model_parse(
    method: str, target: str, items: list[tuple[str, str]], authority: str | None
) -> Request:
    from mesh.core.request import HOP_BY_HOP, PROXY_SET

    single = frozenset({"host", "content-length"})
    path, query = split_target(method, target)
    out: list[tuple[str, str]] = []
    headers: dict[str, str] = {}
    listed: set[str] | None = None
    te_trailers = False
    for name, value in items:
        low = name.lower()
        if low in HOP_BY_HOP:
            if low == "connection":
                tokens = {t.strip().lower() for t in value.split(",")}
                listed = tokens if listed is None else listed | tokens
            elif low == "te":
                te_trailers = value.strip().lower() == "trailers"
            continue
        first = headers.get(low)
        if first is None:
            headers[low] = value
            out.append((name, value))
            continue
        if low in single:
            if low == "content-length" and first.strip() == value.strip():
                continue
            raise BadRequest(f"several {low.title()} headers")
        combined = headers[low] = f"{first}{'; ' if low == 'cookie' else ', '}{value}"
        at = next(i for i, (n, _) in enumerate(out) if n.lower() == low)
        out[at] = (out[at][0], combined)
    if listed is not None and listed - single:
        out = [(n, v) for n, v in out if n.lower() not in listed or n.lower() in single]
        for low in listed - single:
            headers.pop(low, None)
    if authority:
        at = next((i for i, (n, _) in enumerate(out) if n.lower() == "host"), -1)
        if at >= 0:
            out[at] = (out[at][0], authority)
        else:
            out.insert(0, ("Host", authority))
        headers["host"] = authority
    replaced = {low: headers.pop(low) for low in PROXY_SET if low in headers}
    return Request(
        method=method,
        path=path,
        query=query,
        host=headers.get("host", ""),
        headers=headers,
        items=out,
        replaced=replaced,
        te_trailers=te_trailers,
    )


any_header_names = st.sampled_from(
    [
        "Host", "host", "HOST", "hOsT", "Content-Length", "content-length", "CONTENT-length",
        "Cookie", "cookie", "COOKIE", "Connection", "connection", "CONNECTION", "TE", "te", "Te",
        "Upgrade", "Keep-Alive", "X-Forwarded-For", "x-forwarded-for", "X-FORWARDED-FOR",
        "Traceparent", "Expect", "User-Agent", "user-agent", "USER-AGENT", "Accept", "x-role",
        "X-Role", "x-a", "X-Custom-Thing",
    ]
)  # fmt: skip
any_header_values = st.sampled_from(
    ["", "a", " 5", "5", "trailers", " Trailers ", "x-role, x-a", "close", "host", "cookie"]
)


@given(
    st.lists(st.tuples(any_header_names, any_header_values), max_size=8),
    st.sampled_from([None, "", "a.demo.mesh", "b:8080"]),
    st.booleans(),
)
@settings(max_examples=1000, deadline=None)
def test_parse_request_reads_headers_as_the_plain_model_does(
    items: list[tuple[str, str]], authority: str | None, as_tuple: bool
) -> None:
    """Same headers (values and order), lines, Host, replaced headers and TE, or the same
    refusal, whatever the names' spelling; the lines given as a list or any iterable."""
    try:
        want = _model_parse("GET", "/a", items, authority)
    except BadRequest as exc:
        with pytest.raises(BadRequest) as refused:
            parse_request("GET", "/a", tuple(items) if as_tuple else items, authority=authority)
        assert refused.value.detail == exc.detail
        return
    got = parse_request("GET", "/a", tuple(items) if as_tuple else items, authority=authority)
    assert list(got.headers.items()) == list(want.headers.items())
    assert got.items == want.items
    assert all(type(line) is tuple for line in got.items)
    assert (got.host, got.forwarded_host, got.te_trailers) == (
        want.host,
        want.forwarded_host,
        want.te_trailers,
    )
    assert list(got.replaced.items()) == list(want.replaced.items())
    assert (got.method, got.path, got.query) == (want.method, want.path, want.query)
