"""Header rewriting for one proxied hop.

Hop-by-hop headers (RFC 9110 section 7.6.1, the core's ``HOP_BY_HOP``) describe one
connection, so they are dropped in both directions, with every name a ``Connection`` header
lists. Requests were read into their canonical form by the core (mesh.core.request), which
already dropped them: upstream goes exactly what access control matched, plus what this proxy
sets. ``TE: trailers`` is kept towards HTTP/2 upstreams because gRPC needs it. Towards the
upstream the proxy appends the client to ``X-Forwarded-For``, sets ``X-Forwarded-Proto``/
``-Host`` and replaces ``traceparent`` with its own hop's.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from http import HTTPStatus
from typing import Final

from mesh.core.gamma import Edits
from mesh.core.request import HOP_BY_HOP, PROXY_SET, Request
from mesh.proxy.body import Body

Items = Iterable[tuple[str, str]]
# Final: a compiled module reads these as C statics, not from its globals dict per use.
_NOT_FORWARDED: Final = PROXY_SET | {"content-length"}  # set here, or this hop's framing
NO_BODY_METHODS: Final = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})  # no Content-Length: 0
_HOP_BY_HOP: Final = frozenset(name.encode() for name in HOP_BY_HOP)
_HOP_LENGTHS: Final = frozenset(len(name) for name in HOP_BY_HOP)  # other names: no lower()
_STATUS_LINES: Final[dict[tuple[int, bytes | None], bytes]] = {}


def connection_tokens(items: Items) -> frozenset[str]:
    """Header names listed in ``Connection`` headers (these are hop-by-hop too)."""
    tokens: set[str] = set()
    for name, value in items:
        if name.lower() == "connection":
            tokens.update(t.strip().lower() for t in value.split(",") if t.strip())
    return frozenset(tokens)


def request_headers(
    request: Request, *, peer: str, proto: str, traceparent: str, h2: bool
) -> list[tuple[str, str]]:
    """The headers sent upstream: the canonical request's end-to-end headers (hop-by-hop ones
    are already gone, duplicates combined: exactly what access control read), less the ones
    this proxy sets. For HTTP/2 names are lowercased and Host is left out (it travels as
    ``:authority``)."""
    out: list[tuple[str, str]] = []
    for name, value in request.items:
        low = name.lower()
        if low in PROXY_SET or (h2 and low == "host"):
            continue
        out.append((low if h2 else name, value))
    forwarded_for = request.replaced.get("x-forwarded-for")
    xff = f"{forwarded_for}, {peer}" if forwarded_for else peer
    host = request.forwarded_host
    if h2:
        if request.te_trailers:
            out.append(("te", "trailers"))
        out += [("x-forwarded-for", xff), ("x-forwarded-proto", proto)]
        out += [("x-forwarded-host", host), ("traceparent", traceparent)]
    else:
        out += [("X-Forwarded-For", xff), ("X-Forwarded-Proto", proto)]
        out += [("X-Forwarded-Host", host), ("traceparent", traceparent)]
    return out


class Outgoing:
    """What one hop sends upstream: the canonical request's end-to-end headers (exactly what
    access control read) and the ones this proxy sets; each upstream client takes the form
    it needs (:meth:`pairs`, or :meth:`http1_head` built in one pass)."""

    __slots__ = ("peer", "proto", "request", "traceparent")

    def __init__(self, request: Request, *, peer: str, proto: str, traceparent: str) -> None:
        self.request = request
        self.peer = peer
        self.proto = proto
        self.traceparent = traceparent

    def pairs(self, *, h2: bool) -> list[tuple[str, str]]:
        return request_headers(
            self.request, peer=self.peer, proto=self.proto, traceparent=self.traceparent, h2=h2
        )

    def http1_head(self, method: str, path: str, body: Body) -> tuple[bytes, bool]:
        """The request line and headers for an HTTP/1.1 upstream, with this hop's body
        framing; and whether the body is streamed after the head."""
        request = self.request
        present = request.headers  # lower-case names, less hop-by-hop and proxy-set ones
        # One list of pieces joined once (not a string per line, then the lines joined);
        # appended one by one (compiled, a native append; += of a tuple is a generic call).
        parts = [method, " ", path, " HTTP/1.1\r\n"]
        if "host" not in present:
            parts.append("Host: ")
            parts.append(request.host)
            parts.append("\r\n")
        strip = bool(request.replaced) or "content-length" in present
        for name, value in request.items:
            if not strip or name.lower() not in _NOT_FORWARDED:
                parts.append(name)
                parts.append(": ")
                parts.append(value)
                parts.append("\r\n")
        forwarded_for = request.replaced.get("x-forwarded-for")
        parts.append("X-Forwarded-For: ")
        parts.append(f"{forwarded_for}, {self.peer}" if forwarded_for else self.peer)
        parts.append("\r\nX-Forwarded-Proto: ")
        parts.append(self.proto)
        parts.append("\r\nX-Forwarded-Host: ")
        parts.append(request.forwarded_host)
        parts.append("\r\ntraceparent: ")
        parts.append(self.traceparent)
        parts.append("\r\n")
        framing, stream = body_framing(method, body, "content-length" in present)
        if framing:
            parts.append(framing)
            parts.append("\r\n")
        parts.append("\r\n")
        # No line break can be in a value, nor whitespace in the method or target: llhttp
        # (HTTP/1.1) and h2 refuse line breaks, the core (parse_request) and the h2c front
        # end a method that is no token and whitespace in the target (request_head checks
        # other callers' heads).
        return "".join(parts).encode("utf-8", "surrogateescape"), stream


def body_framing(method: str, body: Body, had_length: bool) -> tuple[str, bool]:
    """This hop's framing header for ``body`` (or ""), and whether the body is streamed."""
    if body.empty:
        return ("Content-Length: 0" if had_length or method not in NO_BODY_METHODS else ""), False
    if body.buffered is not None:
        return f"Content-Length: {len(body.buffered)}", False
    if body.length is not None:
        return f"Content-Length: {body.length}", True
    return "Transfer-Encoding: chunked", True


def encode_head(text: str, lines: int) -> bytes:
    """The head as bytes; a line break inside a value would make a line of its own, and
    whitespace in the method or target another request line: refused."""
    if text.count("\n") != lines or text.count("\r") != lines:
        raise ValueError("a line break in the request line or a header")
    request_line = text[: text.find("\r")]
    if request_line.count(" ") != 2 or "\t" in request_line:
        raise ValueError(f"whitespace in the method or target: {request_line[:80]!r}")
    return text.encode("utf-8", "surrogateescape")


def status_line(status: int, reason: bytes | None = None) -> bytes:
    """``HTTP/1.1 <status> <reason>`` and CRLF (the standard phrase when ``reason`` is None)."""
    key = (status, reason)
    line = _STATUS_LINES.get(key)
    if line is None:
        if reason is None:
            try:
                reason = HTTPStatus(status).phrase.encode()
            except ValueError:
                reason = b"Client Closed Request" if status == 499 else b""
        line = b"HTTP/1.1 %d %b\r\n" % (status, reason)
        if len(_STATUS_LINES) < 1024:
            _STATUS_LINES[key] = line
    return line


def head_block(pairs: list[tuple[bytes, bytes]], first: bytes = b"") -> bytes:
    """HTTP/1.1 header lines from an HTTP/1.1 upstream's (name, value) bytes, less hop-by-hop
    ones and the names ``Connection`` lists: the bytes go back out as they came (after
    ``first``, e.g. the status line)."""
    parts = [first]  # joined once (not a line formatted per header)
    listed: set[bytes] | None = None
    for name, value in pairs:
        if len(name) in _HOP_LENGTHS:
            low = name.lower()
            if low in _HOP_BY_HOP:
                if low == b"connection":
                    tokens = {t.strip().lower() for t in value.split(b",")}
                    listed = tokens if listed is None else listed | tokens
                continue
        parts.append(name)
        parts.append(b": ")
        parts.append(value)
        parts.append(b"\r\n")
    if listed:
        parts = [first]
        for name, value in pairs:
            low = name.lower()
            if low not in _HOP_BY_HOP and low not in listed:
                parts += (name, b": ", value, b"\r\n")
    return b"".join(parts)


def response_head_lines(items: Items) -> list[bytes]:
    """The upstream's headers as HTTP/1.1 header lines for the client, less hop-by-hop ones
    (values go back out as the bytes they were read from)."""
    return [
        f"{name}: {value}\r\n".encode("utf-8", "surrogateescape")
        for name, value in response_headers(items)
    ]


def edited_head(status: int, items: Items, edits: Sequence[Edits]) -> bytes:
    """The status line and header lines for an HTTP/1.1 client of a response whose headers a
    GAMMA rule edits (ResponseHeaderModifier), hop-by-hop headers left out."""
    pairs = response_headers(items)
    for change in edits:
        pairs = change.apply(pairs)
    lines = [f"{name}: {value}\r\n".encode("utf-8", "surrogateescape") for name, value in pairs]
    return status_line(status) + b"".join(lines)


def response_headers(items: Items, *, lower: bool = False) -> list[tuple[str, str]]:
    """The headers sent downstream: the upstream's, less hop-by-hop ones."""
    pairs = list(items)
    listed = connection_tokens(pairs)
    out = []
    for name, value in pairs:
        low = name.lower()
        if low in HOP_BY_HOP or low in listed or low.startswith(":"):
            continue
        out.append((low if lower else name, value))
    return out
