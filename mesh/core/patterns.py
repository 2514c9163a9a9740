"""User-supplied regular expressions, compiled and matched in bounded, linear time.

Every regex a user writes reaches the data plane through here and nowhere else: HTTPRouteGroup
``pathRegex`` and header values, which TrafficTargets (access control) and TrafficSplit
``matches`` (backend choice) use. The parser validates them with :func:`check` (an error on the
object), the MeshConfig checker does again (a config from a file or another controller), and
:class:`~mesh.core.routing.Router` compiles them with :func:`prefix` and :func:`whole`.

Why: Python's ``re`` backtracks, so ``/r/(a+)+$`` takes seconds on ``/r/aaaa...a!``, twice as
long for each extra ``a``, on the proxy's event loop, for every namespace on the node. RE2
(google-re2; Go-based meshes give SMI regexes the same dialect) runs in time linear in the input
and in the pattern's program, and refuses what cannot run that way (backreferences,
lookarounds, possessive quantifiers, atomic groups): such a pattern is an error, never a slow
match.

Bounds, so that linear is also small (docs/semantics.md, "Regular expressions"):

- a pattern has at most :data:`MAX_PATTERN_LENGTH` characters and compiles to at most
  :data:`MAX_PROGRAM_SIZE` RE2 instructions, within :data:`MAX_MEMORY` bytes for RE2 (program
  and DFA cache; a match whose DFA would need more runs on RE2's NFA: slower, still linear).
  More is an error on the object holding the pattern.
- a path or header value longer than :data:`MAX_SUBJECT_LENGTH` characters matches no regex
  (fail closed: a grant does not admit it, a split match does not select it). The proxy's
  default request-line and header-line limit (8190 bytes) is below it: only a path that grows
  when percent-encoded, or a header sent many times and combined, can be longer.

Subjects are matched as UTF-8. Header values keep undecodable bytes as lone surrogates
(``surrogateescape``): each is read as U+FFFD, as Go reads an invalid byte, so ``.`` matches it.

Cost of an ordinary match: a pattern of printable ASCII without metacharacters (``/metrics``,
most ``pathRegex`` values) is matched with ``startswith`` or ``==``, which answers what RE2
would; the others call google-re2's binding of ``RE2::Match`` directly, at half the cost of its
public ``match``, which builds a match object per call (the public method is the fallback;
tests/core/test_patterns.py checks that all of them agree).
"""

from __future__ import annotations

import functools
import re
from typing import Any, Final, Protocol, cast

import re2

MAX_PATTERN_LENGTH: Final = 4096
MAX_PROGRAM_SIZE: Final = 1000
MAX_MEMORY: Final = 256 << 10
MAX_SUBJECT_LENGTH: Final = 8192

# What RE2's error messages mean to someone who wrote the pattern for Python's re or PCRE.
_HINTS = (
    ("invalid escape sequence: \\Z", "RE2 has no \\Z: use \\z or $"),
    ("invalid perl operator: (?P", "RE2 has no backreferences"),  # (?P=name)
    ("invalid perl operator: (?=", "RE2 has no lookahead"),
    ("invalid perl operator: (?!", "RE2 has no lookahead"),
    ("invalid perl operator: (?<=", "RE2 has no lookbehind"),
    ("invalid perl operator: (?<!", "RE2 has no lookbehind"),
    ("invalid perl operator: (?>", "RE2 has no atomic groups"),
    ("invalid perl operator: (?#", "RE2 has no comments"),
    ("invalid perl operator: (?x", "RE2 has no verbose mode"),
)
_BACKREFERENCE = re.compile(r"invalid escape sequence: \\[1-9]")
_POSSESSIVE = re.compile(r"bad repetition operator: .*\+$")
# Our own patterns over the user's text: none can backtrack more than linearly.
_PYTHON_REPEAT = re.compile(r"\{([0-9]*)(?:,([0-9]*))?\}")
_ASCII_LITERAL = re.compile(r"[\x20-\x7e]*")
_METACHARACTERS = frozenset("\\^$.|?*+()[]{}")
_SURROGATES: Final = {code: "\ufffd" for code in range(0xD800, 0xE000)}


class PatternError(ValueError):
    """A pattern RE2 refuses or that exceeds a bound; the message says what was expected."""


class Matcher(Protocol):
    """A compiled pattern: whether it matches ``text`` (a path or a header value)."""

    def __call__(self, text: str) -> bool: ...


class _Compiled(Protocol):
    """What is used of google-re2's compiled pattern (the package ships no type stubs)."""

    @property
    def programsize(self) -> int: ...

    def match(self, text: bytes) -> object | None: ...

    def fullmatch(self, text: bytes) -> object | None: ...


class _Binding(Protocol):
    """google-re2's binding of an RE2 object: spans of the match and its groups, or (-1, -1)."""

    def Match(
        self, anchor: object, text: bytes, pos: int, endpos: int, /
    ) -> list[tuple[int, int]]: ...


def check(pattern: str) -> None:
    """Raise :class:`PatternError` unless ``pattern`` compiles within the bounds."""
    _compile(pattern)


def prefix(pattern: str) -> Matcher:
    """Anchored at the start only (``pathRegex``: ``/metrics`` matches ``/metricsX``)."""
    return _matcher(pattern, to_end=False)


def whole(pattern: str) -> Matcher:
    """Anchored at both ends (header values: ``[a-z]+`` must match the whole value)."""
    return _matcher(pattern, to_end=True)


def literal(pattern: str) -> str | None:
    """The text a pattern stands for when it has no metacharacters (printable ASCII): what
    :func:`prefix` then matches with ``startswith`` (a caller may do so inline); else None."""
    if _ASCII_LITERAL.fullmatch(pattern) and not _METACHARACTERS.intersection(pattern):
        return pattern
    return None


@functools.lru_cache(maxsize=4096)
def _matcher(pattern: str, *, to_end: bool) -> Matcher:
    compiled = _compile(pattern)
    if literal(pattern) is not None:
        return _equals(pattern) if to_end else _starts_with(pattern)
    return _regex(compiled, to_end=to_end)


@functools.lru_cache(maxsize=4096)
def _compile(pattern: str) -> _Compiled:
    if len(pattern) > MAX_PATTERN_LENGTH:
        raise PatternError(f"at most {MAX_PATTERN_LENGTH} characters, got {len(pattern)}")
    _refuse_python_repeat(pattern)
    try:
        compiled = cast(_Compiled, re2.compile(pattern, _OPTIONS))
    except re2.error as exc:
        raise PatternError(_explain(exc)) from None
    except UnicodeEncodeError:
        raise PatternError("not valid Unicode (it holds a lone surrogate)") from None
    if compiled.programsize > MAX_PROGRAM_SIZE:
        raise PatternError(
            f"compiles to {compiled.programsize} RE2 instructions, more than the "
            f"{MAX_PROGRAM_SIZE} allowed (shorten it, or split alternatives into several matches)"
        )
    return compiled


def _options() -> object:
    options = re2.Options()
    options.max_mem = MAX_MEMORY
    options.log_errors = False  # RE2 would print each error on stderr
    options.never_capture = True  # only whether it matches is asked
    return cast(object, options)


_OPTIONS: Final = _options()
_ANCHORS: Any = getattr(re2, "_Anchor", None)  # RE2::Anchor, as google-re2's binding names it


def _explain(exc: Exception) -> str:
    raw = exc.args[0] if exc.args else exc
    message = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
    if "pattern too large" in message:
        return f"too large: RE2 compiles it to more than its budget of {MAX_MEMORY} bytes"
    hint = next((hint for needle, hint in _HINTS if message.startswith(needle)), None)
    if hint is None and _BACKREFERENCE.match(message):
        hint = "RE2 has no backreferences"
    if hint is None and _POSSESSIVE.match(message):
        hint = "RE2 has no possessive quantifiers"
    what, colon, fragment = message.partition(": ")  # RE2 quotes the rest of the pattern
    message = what + colon + _short(fragment)
    return f"{message} ({hint})" if hint else message


def _short(text: str, limit: int = 40) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _refuse_python_repeat(pattern: str) -> None:
    """``a{,3}``, ``a{01}`` and ``a{4294967296}`` are repetitions to Python's re but text to
    RE2 (and Go): a pattern written for simmesh before RE2 would silently change meaning, so
    it is refused."""
    found = _python_repeat(pattern) if "{" in pattern else None
    if found is not None:
        text = _short(found, 16)
        raise PatternError(
            f"{text} is text to RE2 but a repetition to Python's re: write a repetition as "
            f"{{min}}, {{min,}} or {{min,max}} with counts 0..1000 and no leading zeros, "
            f"or \\{text} for the text"
        )


def _python_repeat(pattern: str) -> str | None:
    """The first repetition of Python's re that RE2 reads as text, in an operator position
    (not escaped, not in ``[...]`` or ``\\Q...\\E``), in one pass over the pattern."""
    i, n, in_class = 0, len(pattern), False
    while i < n:
        c = pattern[i]
        if c == "\\" and pattern.startswith("Q", i + 1):  # \Q...\E: text up to \E
            end = pattern.find("\\E", i + 2)
            i = n if end < 0 else end + 2
        elif c == "\\":
            i += 2
        elif in_class and pattern.startswith("[:", i) and ":]" in pattern[i + 2 :]:
            i = pattern.index(":]", i + 2) + 2  # [:alpha:]
        elif in_class:
            in_class = c != "]"
            i += 1
        elif c == "[":
            in_class = True
            i += 1
            i += pattern.startswith("^", i)
            i += pattern.startswith("]", i)
        else:
            found = _PYTHON_REPEAT.match(pattern, i) if c == "{" else None
            if found is not None and _text_to_re2(found.group(1), found.group(2)):
                return found.group()
            i += 1
    return None


def _text_to_re2(low: str, high: str | None) -> bool:
    """Whether RE2 reads ``{low}`` or ``{low,high}`` (a repetition to Python) as text."""
    if not low:
        return high is not None  # {,n} and {,}; {} is text to both
    # RE2 reads no leading zeros, nor counts of 10 digits or more (9 are a size error)
    return any(len(n) > 9 or (len(n) > 1 and n[0] == "0") for n in (low, high or ""))


def _subject(text: str) -> bytes:
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        return text.translate(_SURROGATES).encode("utf-8")


def _regex(compiled: _Compiled, *, to_end: bool) -> Matcher:
    """RE2's ``Match`` through google-re2's binding when it has it: a third of the cost of the
    public method, which builds a match object per call (tests/core/test_patterns.py checks
    that both answer alike); the public method otherwise."""
    binding = getattr(compiled, "_regexp", None)
    if binding is None or _ANCHORS is None or not hasattr(binding, "Match"):
        return _public(compiled, to_end=to_end)
    match = cast(_Binding, binding).Match
    anchor = _ANCHORS.ANCHOR_BOTH if to_end else _ANCHORS.ANCHOR_START

    def matcher(text: str) -> bool:
        if len(text) > MAX_SUBJECT_LENGTH:
            return False
        data = _subject(text)
        return match(anchor, data, 0, len(data))[0][0] >= 0

    return matcher


def _public(compiled: _Compiled, *, to_end: bool) -> Matcher:
    match = compiled.fullmatch if to_end else compiled.match

    def matcher(text: str) -> bool:
        return len(text) <= MAX_SUBJECT_LENGTH and match(_subject(text)) is not None

    return matcher


def _starts_with(literal: str) -> Matcher:
    def matcher(text: str) -> bool:
        return len(text) <= MAX_SUBJECT_LENGTH and text.startswith(literal)

    return matcher


def _equals(literal: str) -> Matcher:
    def matcher(text: str) -> bool:
        return len(text) <= MAX_SUBJECT_LENGTH and text == literal

    return matcher
