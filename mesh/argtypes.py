"""Command-line value types shared by every ``simmesh`` subcommand.

Each is an argparse ``type=`` callable: it returns the parsed value or raises
``argparse.ArgumentTypeError`` with what was expected, so a bad value is one line on stderr
(``simmesh proxy: error: argument --admin-port: expected a port 0..65535, got '70000'``) and
exit code 2, never a traceback and never a silently wrapped value (port 70000 is not 4464).
Checks that need the system (``--bind`` must resolve, ``--upstream-ca`` must load) are made
before anything starts, by :func:`resolvable` and the commands themselves.
"""

from __future__ import annotations

import argparse
import math
import re
import socket
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn
from urllib.parse import urlsplit

_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?")


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``simmesh explain: error: ...`` and exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())[:300]}\n")


def _bad(expected: str, text: str) -> argparse.ArgumentTypeError:
    shown = text if len(text) <= 60 else text[:57] + "..."
    return argparse.ArgumentTypeError(f"expected {expected}, got {shown!r}")


def seconds(
    *, low: float = 0.0, high: float = 86400.0, zero: bool = False
) -> Callable[[str], float]:
    """A finite number of seconds in ``(low, high]`` (``[low, high]`` with ``zero``)."""

    def parse(text: str) -> float:
        expected = f"seconds in {'[' if zero else '('}{low:g}, {high:g}]"
        try:
            value = float(text)
        except ValueError:
            raise _bad(expected, text) from None
        if not math.isfinite(value) or value > high or value < low or (value == low and not zero):
            raise _bad(expected, text)
        return value

    return parse


_DURATION = re.compile(r"([0-9]{1,9}(?:\.[0-9]{1,6})?)(ms|s|m|h)?")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def duration(*, low: float = 1.0, high: float = 86400.0) -> Callable[[str], float]:
    """A time span as ``90``, ``90s``, ``5m``, ``1h`` or ``500ms``, in seconds in
    ``[low, high]``."""

    def parse(text: str) -> float:
        expected = f"a duration such as 30s, 5m or 1h, from {low:g} s to {high:g} s"
        match = _DURATION.fullmatch(text.strip())
        if match is None:
            raise _bad(expected, text)
        value = float(match.group(1)) * _UNITS[match.group(2)]
        if not low <= value <= high:
            raise _bad(expected, text)
        return value

    return parse


def integer(*, low: int, high: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        if not re.fullmatch(r"[0-9]{1,12}", text.strip()) or not low <= int(text) <= high:
            raise _bad(f"a whole number in {low}..{high}", text)
        return int(text)

    return parse


def port(text: str) -> int:
    """A TCP/UDP port, 0 meaning any free one."""
    if not re.fullmatch(r"[0-9]{1,5}", text.strip()) or int(text) > 65535:
        raise _bad("a port 0..65535", text)
    return int(text)


def host_port(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` for IPv6; an empty host means every address)."""
    host, sep, number = text.rpartition(":")
    if not sep:
        raise _bad("HOST:PORT", text)
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise _bad("HOST:PORT, with [brackets] around an IPv6 address", text)
    if any(c.isspace() for c in host):
        raise _bad("HOST:PORT", text)
    try:
        return host, port(number)
    except argparse.ArgumentTypeError:
        raise _bad("HOST:PORT with a port 0..65535", text) from None


def resolvable(host: str, what: str) -> str | None:
    """None when ``host`` resolves to an address this machine can use, else why not."""
    try:
        socket.getaddrinfo(host or None, 0, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (OSError, UnicodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        return f"{what} {host!r}: cannot be resolved ({reason})"
    return None


def dns_label(text: str) -> str:
    """A Kubernetes name of one DNS label (namespaces): lowercase, at most 63 characters."""
    if not _LABEL.fullmatch(text):
        raise _bad("a DNS label (a-z, 0-9, '-', at most 63 characters)", text)
    return text


def dns_subdomain(text: str) -> str:
    """A Kubernetes object name such as a node's: lowercase DNS subdomain, at most 253."""
    if not is_dns_subdomain(text):
        raise _bad("a DNS subdomain name (a-z, 0-9, '-', '.', at most 253 characters)", text)
    return text


def is_dns_subdomain(text: str) -> bool:
    return (
        len(text) <= 253
        and _SUBDOMAIN.fullmatch(text) is not None
        and all(_LABEL.fullmatch(part) for part in text.split("."))
    )


_CONTROLLER_PATH = re.compile(r"[A-Za-z0-9/\-._~%!$&'()*+,;=:]+")


def controller_name(text: str) -> str:
    """A Gateway API controller name, DOMAIN/PATH (``simmesh.io/mesh-controller``)."""
    domain_part, slash, path = text.partition("/")
    if (
        not slash
        or len(text) > 253
        or not is_dns_subdomain(domain_part)
        or not _CONTROLLER_PATH.fullmatch(path)
    ):
        raise _bad("a controller name DOMAIN/PATH such as simmesh.io/mesh-controller", text)
    return text


def domain(text: str) -> str:
    """A DNS zone or cluster domain (``mesh``, ``cluster.local``); a trailing dot is dropped."""
    return dns_subdomain(text.rstrip("."))


def http_url(text: str) -> str:
    """An ``http(s)://HOST[:PORT][/PATH]`` URL with a valid port."""
    try:
        parts = urlsplit(text)
        valid = parts.scheme in ("http", "https") and bool(parts.hostname)
        parts.port  # noqa: B018 - raises ValueError when out of range or not a number
    except ValueError:
        valid = False
    if not valid or any(c.isspace() for c in text):
        raise _bad("a URL such as http://HOST:PORT", text)
    return text


def existing_file(text: str) -> str:
    path = Path(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} is a directory, expected a file")
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"{text!r}: no such file")
    return text


def existing_dir(text: str) -> Path:
    path = Path(text)
    if not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r}: no such directory")
    return path
