"""Pure edits of CoreDNS configuration: the mesh zone's server block, added and removed.

Why: clients opt in by calling ``<svc>.<ns>.<zone>``. CoreDNS answers that name with the
ClusterIP of the shadow Service ``<svc>-6d61657368-<ns>`` in the mesh namespace (see
:mod:`mesh.core.shadow`), and rewrites the answer's name back, so resolvers that compare the
question and the answer accept it. This is Maesh's design; the edit must be safe to repeat and
to undo, because ``simmesh prepare`` and ``simmesh cleanup`` run against a cluster's live DNS.

How: the block sits between two marker lines, ``# simmesh:begin zone=<zone>`` and
``# simmesh:end``. The region a block owns is the line ending before its begin marker plus
every byte up to the end of its end marker (without that line's ending); at the very start of
a file it owns the line ending after its end marker instead. So:

- :func:`cleanup` deletes exactly the owned regions: ``cleanup(prepare(x)) == x`` byte for
  byte, whatever x's line endings (LF or CRLF), indentation or trailing newline;
- :func:`prepare` is ``cleanup`` then one fresh block, so preparing twice equals preparing
  once, and a stale block (another zone or namespace) is replaced;
- a Corefile without markers is returned unchanged by :func:`cleanup`.

The new block copies the file's line ending and indentation unit and listens on the port of
the root (``.``) server block, so it joins whatever port CoreDNS already serves.

AKS does not let users edit the ``coredns`` ConfigMap; it imports ``*.server`` keys of the
``coredns-custom`` ConfigMap instead. There the block is the value of the ``simmesh.server``
key (:func:`prepare_custom`, :func:`cleanup_custom`).

Nothing here performs I/O: strings and mappings in, strings and dicts out.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from mesh.core.shadow import SEPARATOR

BEGIN = "# simmesh:begin"
END = "# simmesh:end"
NOTE = "# Written by `simmesh prepare`; `simmesh cleanup` removes it. Edits here are lost."
CUSTOM_KEY = "simmesh.server"
DEFAULT_PORT = "53"

_LABEL = r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?"
_DNS_NAME = re.compile(rf"^{_LABEL}(\.{_LABEL})*$")
_DNS_LABEL = re.compile(rf"^{_LABEL}$")
_LINE = re.compile(r"[^\n]*\n|[^\n]+")
_TOKEN = re.compile(r'"(?:\\.|[^"\\])*"|`[^`]*`|[^\s"`]+')
_SCHEME = re.compile(r"^[a-z0-9+]+://")
_ZONE_ATTR = re.compile(r"\bzone=(\S+)")


class CorefileError(ValueError):
    """The Corefile cannot be edited safely; the message says where and what was expected."""


class BlockState(enum.Enum):
    """Whether a configuration holds the mesh block: none, the one prepare writes, or another."""

    ABSENT = "absent"
    CURRENT = "current"
    STALE = "stale"


@dataclass(frozen=True, slots=True)
class DnsSettings:
    """What the DNS block needs to know; validated so it can be pasted into a regex."""

    zone: str = "mesh"
    mesh_namespace: str = "simmesh"
    cluster_domain: str = "cluster.local"

    def __post_init__(self) -> None:
        _require(_DNS_NAME, self.zone, "zone", "a lowercase DNS name such as mesh")
        _require(_DNS_LABEL, self.mesh_namespace, "namespace", "a namespace name")
        _require(_DNS_NAME, self.cluster_domain, "cluster domain", "a DNS name (cluster.local)")
        if _within(self.zone, self.cluster_domain):
            raise CorefileError(
                f"zone {self.zone!r}: expected a zone outside the cluster domain "
                f"{self.cluster_domain!r} (it would hide the cluster's own names)"
            )


def _require(pattern: re.Pattern[str], value: str, what: str, expected: str) -> None:
    if not pattern.match(value):
        raise CorefileError(f"{what} {value!r}: expected {expected}")


def _within(name: str, zone: str) -> bool:
    return name == zone or name.endswith("." + zone)


# --------------------------------------------------------------------------- the block


def rewrite_rules(settings: DnsSettings) -> tuple[str, str]:
    """The two rewrite lines: the question to the shadow Service, the answer back."""
    zone_re = re.escape(settings.zone)
    shadow_suffix = f"{settings.mesh_namespace}.svc.{settings.cluster_domain}"
    name = (
        f"name regex ^([a-z0-9-]+)\\.([a-z0-9-]+)\\.{zone_re}\\.$ "
        f"{{1}}-{SEPARATOR}-{{2}}.{shadow_suffix}."
    )
    answer = (
        f"answer name ^([a-z0-9-]+)-{SEPARATOR}-([a-z0-9-]+)\\.{re.escape(shadow_suffix)}\\.$ "
        f"{{1}}.{{2}}.{settings.zone}."
    )
    return name, answer


def server_block(
    settings: DnsSettings,
    *,
    port: str | None = DEFAULT_PORT,
    indent: str = "    ",
    extra: tuple[str, ...] = (),
) -> list[str]:
    """The mesh zone's server block as lines (no line endings). ``port=None`` leaves the port
    to CoreDNS's default; ``extra`` directives (health, ready) follow ``errors``."""
    name_rule, answer_rule = rewrite_rules(settings)
    key = settings.zone if port is None else f"{settings.zone}:{port}"
    body = [
        "errors",
        *extra,
        "rewrite stop {",
        f"{indent}{name_rule}",
        f"{indent}{answer_rule}",
        "}",
        f"kubernetes {settings.cluster_domain}",
        # A name of the zone that is not <service>.<namespace>.<zone> is no mesh name: it is
        # answered NXDOMAIN here, never forwarded (a .mesh question must not leave the cluster).
        # The template runs before kubernetes (CoreDNS's plugin order), on the name as
        # rewritten: a rewritten name is no longer in the zone, so it reaches kubernetes.
        f"template ANY ANY {settings.zone} {{",
        f"{indent}rcode NXDOMAIN",
        "}",
        "cache 30",
        "reload",
    ]
    return [f"{key} {{", *(f"{indent}{line}" for line in body), "}"]


def marked_block(settings: DnsSettings, *, port: str | None, indent: str) -> list[str]:
    """The block between its markers, as lines."""
    return [
        f"{BEGIN} zone={settings.zone}",
        NOTE,
        *server_block(settings, port=port, indent=indent),
        END,
    ]


# --------------------------------------------------------------------------- Corefile edits


def prepare(corefile: str, settings: DnsSettings) -> str:
    """The Corefile with exactly one current mesh block, appended at the end."""
    base = cleanup(corefile)
    _refuse_foreign_zone(base, settings)
    eol = line_ending(base)
    block = eol.join(marked_block(settings, port=root_port(base), indent=indent_unit(base)))
    if not base:
        return block
    if base.endswith(eol):  # the block owns the ending of the last line; its own follows
        return base + block + eol
    return base + eol + block


def cleanup(corefile: str) -> str:
    """The Corefile without any simmesh block, byte for byte as it was before prepare."""
    out = corefile
    for start, end in reversed(_owned_spans(corefile)):
        out = out[:start] + out[end:]
    return out


def state(corefile: str, settings: DnsSettings) -> BlockState:
    """ABSENT without markers; CURRENT when prepare would change nothing but whitespace."""
    if not _owned_spans(corefile):
        return BlockState.ABSENT
    if prepare(corefile, settings).split() == corefile.split():
        return BlockState.CURRENT
    return BlockState.STALE


def block_zones(corefile: str) -> list[str]:
    """The zones named by the begin markers present (for messages about stale blocks)."""
    zones = []
    for _, _, line in _lines(corefile):
        if line.strip().startswith(BEGIN):
            match = _ZONE_ATTR.search(line)
            zones.append(match.group(1) if match else "?")
    return zones


def _owned_spans(text: str) -> list[tuple[int, int]]:
    """(start, end) of each marked block plus the line ending it owns; raises on bad markers."""
    spans: list[tuple[int, int]] = []
    begin: tuple[int, int] | None = None  # (offset, line number)
    for lineno, offset, line in _lines(text):
        marker = line.strip()
        if marker.startswith(BEGIN):
            if begin is not None:
                raise CorefileError(
                    f"line {lineno}: {BEGIN!r} inside the block opened at line {begin[1]}; "
                    f"expected {END!r} first"
                )
            begin = (offset, lineno)
        elif marker.startswith(END):
            if begin is None:
                raise CorefileError(f"line {lineno}: {END!r} without a {BEGIN!r} before it")
            content_end = offset + len(line.rstrip("\r\n"))
            spans.append(_with_owned_eol(text, begin[0], content_end, offset + len(line)))
            begin = None
    if begin is not None:
        raise CorefileError(f"line {begin[1]}: {BEGIN!r} is never closed by {END!r}")
    return spans


def _with_owned_eol(text: str, start: int, content_end: int, line_end: int) -> tuple[int, int]:
    for eol in ("\r\n", "\n"):
        if text.endswith(eol, 0, start):
            return start - len(eol), content_end
    return start, line_end


def _lines(text: str) -> Iterator[tuple[int, int, str]]:
    """(line number, offset, line with its ending); only LF ends a line, as in CoreDNS."""
    for lineno, match in enumerate(_LINE.finditer(text), 1):
        yield lineno, match.start(), match.group()


# --------------------------------------------------------------------------- reading a Corefile


def line_ending(text: str) -> str:
    """CRLF when the file uses it (or ends in a lone CR, which a bare LF would turn into one)."""
    return "\r\n" if "\r\n" in text or text.endswith("\r") else "\n"


def indent_unit(text: str) -> str:
    """The leading whitespace of the first indented line (one level, as the file is written)."""
    for _, _, line in _lines(text):
        content = line.rstrip("\r\n")
        stripped = content.lstrip(" \t")
        if stripped and stripped != content and not stripped.startswith("#"):
            return content[: len(content) - len(stripped)]
    return "    "


def server_keys(text: str) -> list[tuple[str, str | None, int]]:
    """(zone, port or None, line number) of every server block key, outside snippets."""
    keys: list[tuple[str, str | None, int]] = []
    depth, pending = 0, list[tuple[str, int]]()
    for lineno, _, line in _lines(text):
        for token in _tokens(line):
            if token == "{" or (token.endswith("{") and not token.startswith("{$")):
                if depth == 0:
                    pending.append((token[:-1], lineno))
                    keys += [(*_zone_port(key), n) for key, n in pending if key]
                pending = []
                depth += 1
            elif token == "}":
                depth = max(0, depth - 1)
            elif depth == 0:
                pending.append((token.rstrip(","), lineno))
        if not line.rstrip().endswith(","):  # keys continue on the next line only after a comma
            pending = []
    return [key for key in keys if key[0]]


def _tokens(line: str) -> Iterator[str]:
    for match in _TOKEN.finditer(line):
        token = match.group()
        if token.startswith("#"):
            return
        yield token


def _zone_port(key: str) -> tuple[str, str | None]:
    if key.startswith("("):  # a snippet definition, not a server
        return "", None
    bare = _SCHEME.sub("", key.lower())
    zone, sep, port = bare.rpartition(":")
    if not sep:
        zone, port = bare, ""
    zone = zone.rstrip(".") or "."
    return zone, port or None


def root_port(text: str) -> str | None:
    """The port of the root server block (``.:53`` -> "53", ``. {`` -> None); 53 if none."""
    for zone, port, _ in server_keys(text):
        if zone == ".":
            return port
    return DEFAULT_PORT


def _refuse_foreign_zone(text: str, settings: DnsSettings) -> None:
    wanted = root_port(text) or DEFAULT_PORT
    for zone, port, lineno in server_keys(text):
        if zone == settings.zone and (port or DEFAULT_PORT) == wanted:
            raise CorefileError(
                f"line {lineno}: a server block for zone {zone!r} on port {wanted} already "
                "exists and was not written by simmesh; expected none (choose another --zone "
                "or remove that block)"
            )


# --------------------------------------------------------------------------- AKS coredns-custom


def custom_server(settings: DnsSettings) -> str:
    """The value of the ``simmesh.server`` key: a note and the block (AKS imports it as is)."""
    return "\n".join([NOTE, *server_block(settings)]) + "\n"


def prepare_custom(data: Mapping[str, str] | None, settings: DnsSettings) -> dict[str, str]:
    """coredns-custom data with the ``simmesh.server`` key set; other keys untouched."""
    return {**(data or {}), CUSTOM_KEY: custom_server(settings)}


def cleanup_custom(data: Mapping[str, str] | None) -> dict[str, str]:
    return {key: value for key, value in (data or {}).items() if key != CUSTOM_KEY}


def custom_state(data: Mapping[str, str] | None, settings: DnsSettings) -> BlockState:
    value = (data or {}).get(CUSTOM_KEY)
    if value is None:
        return BlockState.ABSENT
    if value.split() == custom_server(settings).split():
        return BlockState.CURRENT
    return BlockState.STALE
