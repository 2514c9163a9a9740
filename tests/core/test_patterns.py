"""User-supplied regexes run on RE2 (mesh/core/patterns.py): linear time, bounded, anchored as
before, and what RE2 cannot run is an error on the object, with its field path.

Issue 19: ``/r/(a+)+$`` on ``/r/`` + 28 ``a`` + ``!`` stalled a proxy for 8.6 s on Python's
backtracking ``re``, twice as long per extra ``a``.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
import re2
from hypothesis import given
from hypothesis import strategies as st

from mesh.core import patterns
from mesh.core.model import Settings
from mesh.core.parse import parse_objects
from mesh.core.routing import Reason
from mesh.core.schema import ConfigError, check, decode
from tests.core.builders import (
    Client,
    app,
    backend_of,
    compile_docs,
    error_texts,
    http_match,
    route_group,
    rule,
    traffic_split,
    traffic_target,
    wire,
)

EVIL = r"/r/(a+)+$"
ACL = Settings(acl=True)


def evil_path(count: int) -> str:
    return "/r/" + "a" * count + "!"


def timed(call: Any, *args: Any, **kwargs: Any) -> tuple[Any, float]:
    start = time.perf_counter()
    result = call(*args, **kwargs)
    return result, time.perf_counter() - start


def evil_world(path: str = EVIL, headers: Any = None) -> list[dict[str, Any]]:
    """web grants client the route group; shop is split by it (v2 gets the matches)."""
    evil = [rule("HTTPRouteGroup", "evil")]
    return [
        *app("web", ips=["10.0.0.1"]),
        *app("client", ips=["10.0.9.1"]),
        *app("shop", ips=["10.0.1.1"]),
        *app("shop-v2", sa="shop", ips=["10.0.1.2"]),
        route_group("evil", [http_match("r", path=path, headers=headers)]),
        traffic_target("client-to-web", dest="web", sources=["client"], rules=evil),
        traffic_target(
            "client-to-shop",
            dest="shop",
            sources=["client"],
            rules=[rule("HTTPRouteGroup", "evil")],
        ),
        traffic_split("shop", "shop", [("shop-v2", 1)], matches=["evil"]),
    ]


# -- time ---------------------------------------------------------------------------------------


def test_the_evil_pattern_compiles_and_matches_5000_characters_in_milliseconds() -> None:
    matcher = patterns.prefix(EVIL)
    answer, seconds = timed(matcher, evil_path(5000))
    assert answer is False
    assert seconds < 0.5
    assert matcher("/r/aaa") is True


def test_the_router_decides_the_evil_path_promptly_through_a_grant_and_a_split() -> None:
    client = Client(compile_docs(evil_world(), ACL))
    for count in (28, 5000):
        granted, seconds = timed(client.http, "web.demo.mesh", evil_path(count))
        assert seconds < 0.5
        assert not granted.allowed
        # the split's match runs before access control, for a source without identity too
        split, seconds = timed(client.http, "shop.demo.mesh", evil_path(count))
        assert seconds < 0.5
        assert split.reason is Reason.NO_IDENTITY
    allowed = client.http("web.demo.mesh", "/r/aaa", source="demo/client")
    assert allowed.allowed
    assert backend_of(client.http("shop.demo.mesh", "/r/aaa", source="demo/client")) == (
        "demo/shop-v2"
    )


def test_an_evil_header_pattern_is_linear_too() -> None:
    world = evil_world(path="/", headers=[{"x-r": "(a|aa)+$"}])
    client = Client(compile_docs(world, ACL))
    decision, seconds = timed(
        client.http, "web.demo.mesh", "/", headers={"x-r": "a" * 5000 + "!"}, source="demo/client"
    )
    assert seconds < 0.5
    assert decision.reason is Reason.NO_MATCHING_ROUTE
    ok = client.http("web.demo.mesh", "/", headers={"x-r": "aaa"}, source="demo/client")
    assert ok.allowed


# -- errors on the object -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "expected"),
    [
        (r"/(a)\1", r"invalid escape sequence: \1 (RE2 has no backreferences)"),
        (r"/(?P<x>a)(?P=x)", "RE2 has no backreferences"),
        ("/(?=admin)", "RE2 has no lookahead"),
        ("/(?!admin)", "RE2 has no lookahead"),
        ("/x(?<=x)", "RE2 has no lookbehind"),
        ("/x(?<!y)", "RE2 has no lookbehind"),
        ("/a*+", "RE2 has no possessive quantifiers"),
        ("/(?>a)", "RE2 has no atomic groups"),
        (r"/a\Z", r"RE2 has no \Z: use \z or $"),
        ("/(?#c)", "RE2 has no comments"),
        ("/(?x) a", "RE2 has no verbose mode"),
        ("/a{,3}", "{,3} is text to RE2 but a repetition to Python's re"),
        ("/a{01}", "{01} is text to RE2 but a repetition to Python's re"),
        ("/a{4294967296}", "is text to RE2 but a repetition"),
        ("/a{1001}", "invalid repetition size"),
        ("/" + "a" * 4096, "at most 4096 characters, got 4097"),
        ("/" + "[a-z]x" * 600, "compiles to 1205 RE2 instructions, more than the 1000 allowed"),
        ("(?i)" + r"\pL" * 600, "too large"),
        ("/\ud800", "not valid Unicode"),
        ("/(" + "a" * 3000, "missing ): /(aaaaaaaa"),
        ("/a{" + "1" * 3000 + "}", "{111111111111... is text to RE2"),
    ],
)
def test_what_re2_cannot_run_is_an_error_on_the_object(pattern: str, expected: str) -> None:
    state = parse_objects([route_group("evil", [http_match("r", path=pattern)]), *app("web")])
    [error] = state.errors
    assert (error.ref.kind, error.ref.namespace, error.ref.name) == (
        "HTTPRouteGroup",
        "demo",
        "evil",
    )
    assert error.field == "spec.matches[0].pathRegex"
    assert error.message.startswith("expected an RE2 regular expression: ")
    assert expected in error.message
    assert len(error.message) < 250  # RE2 quotes the rest of the pattern: cut short
    assert "demo/web" in state.services  # one bad object never affects others


def test_a_bad_header_pattern_names_its_header() -> None:
    doc = route_group("evil", [http_match("r", headers=[{"x-a": "ok"}, {"x-b": r"(x)\1"}])])
    [error] = parse_objects([doc]).errors
    assert error.field == "spec.matches[0].headers[1].x-b"
    assert "RE2 has no backreferences" in error.message


def test_rules_on_a_rejected_group_grant_nothing_and_the_rest_compiles() -> None:
    config = compile_docs(evil_world(path=r"/(a)\1"), ACL)
    texts = error_texts(config)
    assert any("HTTPRouteGroup demo/evil: spec.matches[0].pathRegex" in t for t in texts)
    client = Client(config)
    assert client.http("web.demo.mesh", "/aa", source="demo/client").reason is Reason.NOT_GRANTED
    assert "demo/web:80" in wire(config)["clusters"]


def test_the_config_checker_refuses_a_pattern_re2_cannot_run() -> None:
    document = wire(compile_docs(evil_world(), ACL))
    split = document["routes"]["demo/shop:80"]["split"]
    split["matches"][0]["pathRegex"] = r"(a)\1"  # a config from a file or another controller
    with pytest.raises(ConfigError) as caught:
        check(decode(json.dumps(document)))
    assert caught.value.path == "routes[demo/shop:80].split.matches[0].pathRegex"
    assert "RE2 has no backreferences" in caught.value.message


# -- anchoring and dialect, as docs/semantics.md states them -------------------------------------


@pytest.mark.parametrize(
    ("pattern", "subject", "prefix", "whole"),
    [
        ("/metrics", "/metrics", True, True),
        ("/metrics", "/metrics/x", True, False),
        ("/metrics", "/metricsX", True, False),
        ("/metrics", "/x/metrics", False, False),
        ("/api|/web", "/web/x", True, False),  # the anchor covers every alternative
        ("[a-z]+", "abc", True, True),
        ("[a-z]+", "abc1", True, False),
        (r"/a\z", "/a", True, True),
        ("/a$", "/a", True, True),
        (r"(?P<v>v[0-9])/(?<w>x)", "v1/x", True, True),  # both named-group spellings
        (r"\d+", "١٢", False, False),  # \d, \w, \s, \b are ASCII in RE2
        (r"\pN+", "١٢", True, True),  # Unicode classes are \p{...}
        ("[[:digit:]]+", "12", True, True),  # POSIX classes inside brackets
        (r"\Q/a.b\E", "/a.b", True, True),
        (r"\Q/a.b\E", "/axb", False, False),
        (r"a\{,3}", "a{,3}", True, True),  # the text {,3}, written unambiguously
        ("(?i)/API", "/api", True, True),
        (".*", "caf\udce9", True, True),  # an undecodable header byte is U+FFFD
        ("caf.", "caf\udce9", True, True),
        ("caf\ufffd", "caf\udce9", True, True),
    ],
)
def test_anchoring_and_dialect(pattern: str, subject: str, prefix: bool, whole: bool) -> None:
    assert patterns.prefix(pattern)(subject) is prefix
    assert patterns.whole(pattern)(subject) is whole


def test_a_subject_longer_than_the_bound_matches_no_regex() -> None:
    limit = patterns.MAX_SUBJECT_LENGTH
    for pattern in (".*", "/", "/a+"):
        assert patterns.prefix(pattern)("/" + "a" * (limit - 1))
        assert not patterns.prefix(pattern)("/" + "a" * limit)
        assert patterns.whole(".*")("a" * limit)
        assert not patterns.whole(".*")("a" * (limit + 1))


# Literal patterns take a fast path (startswith / ==): it must answer exactly what RE2 answers.
LITERAL = st.text(st.sampled_from("/aZ9-_~:;, %#\"'<>=&!@`"), max_size=6)
SUBJECT = st.text(st.sampled_from("/aZ9-_~:;, %#é\udcff\ufffd\n"), max_size=8)


@given(LITERAL, SUBJECT)
def test_literal_fast_path_answers_what_re2_answers(literal: str, subject: str) -> None:
    options = re2.Options()
    options.log_errors = False
    engine = re2.compile(literal, options)
    data = subject.encode("utf-8", "surrogateescape").decode("utf-8", "replace").encode()
    if not literal:
        return  # an empty pathRegex is "any path" before it gets here
    assert patterns.prefix(literal)(subject) is (engine.match(data) is not None)
    assert patterns.whole(literal)(subject) is (engine.fullmatch(data) is not None)


def test_the_same_pattern_compiles_once() -> None:
    assert patterns.prefix("/cached/(x|y)") is patterns.prefix("/cached/(x|y)")


@pytest.mark.parametrize(
    "pattern",
    [
        "/a{}",
        "/a{2,}",
        "/a{2,5}",
        "/[{,3}]",
        r"/\{,3}",
        r"/\Q{,3}\E",
        "/[[:alpha:]{,3}]",
        r"/\\{2}",
    ],
)
def test_braces_both_engines_read_alike_are_accepted(pattern: str) -> None:
    patterns.check(pattern)


# Non-literal patterns run through google-re2's binding of RE2::Match when it has one (a third
# of the cost of its public method): both must answer alike, and without it the public one runs.
REGEXES = ["/r/(a+)+$", "[a-z]+", "(?i)/A%", ".*", "caf.", r"\d+", "a|ab", "/(x|)$", "é+"]


@given(st.sampled_from(REGEXES), SUBJECT, st.booleans())
def test_the_binding_answers_what_the_public_method_answers(
    pattern: str, subject: str, to_end: bool
) -> None:
    compiled = patterns._compile(pattern)
    fast = patterns._regex(compiled, to_end=to_end)
    assert fast(subject) is patterns._public(compiled, to_end=to_end)(subject)


def test_without_the_binding_the_public_method_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(patterns, "_ANCHORS", None)
    matcher = patterns._regex(patterns._compile(EVIL), to_end=False)
    assert matcher("/r/aaa") and not matcher(evil_path(5000))
