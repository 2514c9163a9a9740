"""Header rewriting for one proxied hop.

Hop-by-hop headers (RFC 9110 section 7.6.1) describe one connection, so they are dropped in
both directions: the fixed set below plus every name a ``Connection`` header lists. ``TE:
trailers`` is the one exception, kept towards HTTP/2 upstreams because gRPC needs it.
Towards the upstream the proxy appends the client to ``X-Forwarded-For``, sets
``X-Forwarded-Proto``/``-Host`` and replaces ``traceparent`` with its own hop's.
"""

from __future__ import annotations

from collections.abc import Iterable

HOP_BY_HOP = frozenset(
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
# Replaced by the proxy, or answered by it (Expect: 100-continue is answered downstream).
_REPLACED = frozenset({"x-forwarded-for", "x-forwarded-proto", "x-forwarded-host", "traceparent"})
_DROP_UP = HOP_BY_HOP | _REPLACED | {"expect"}

Items = Iterable[tuple[str, str]]


def connection_tokens(items: Items) -> frozenset[str]:
    """Header names listed in ``Connection`` headers (these are hop-by-hop too)."""
    tokens: set[str] = set()
    for name, value in items:
        if name.lower() == "connection":
            tokens.update(t.strip().lower() for t in value.split(",") if t.strip())
    return frozenset(tokens)


def request_headers(
    items: Items, *, peer: str, host: str, proto: str, traceparent: str, h2: bool
) -> list[tuple[str, str]]:
    """The headers sent upstream. For HTTP/2 names are lowercased and Host is left out
    (it travels as ``:authority``)."""
    pairs = list(items)
    listed = connection_tokens(pairs)
    out: list[tuple[str, str]] = []
    forwarded_for = ""
    for name, value in pairs:
        low = name.lower()
        if low in _DROP_UP or low in listed or low.startswith(":"):
            if low == "x-forwarded-for":
                forwarded_for = f"{forwarded_for}, {value}" if forwarded_for else value
            elif h2 and low == "te" and value.strip().lower() == "trailers":
                out.append(("te", "trailers"))
            continue
        if h2:
            if low == "host":
                continue
            name = low
        out.append((name, value))
    xff = f"{forwarded_for}, {peer}" if forwarded_for else peer
    if h2:
        out += [("x-forwarded-for", xff), ("x-forwarded-proto", proto)]
        out += [("x-forwarded-host", host), ("traceparent", traceparent)]
    else:
        out += [("X-Forwarded-For", xff), ("X-Forwarded-Proto", proto)]
        out += [("X-Forwarded-Host", host), ("traceparent", traceparent)]
    return out


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
