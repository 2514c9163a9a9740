"""Reading fields of plain dicts (YAML manifests or API responses) with field paths.

Each function takes a value and the path it was found at, and returns it checked or raises
:class:`~mesh.core.errors.InvalidObject` naming the path and what was expected. The parsers of
:mod:`mesh.core.parse` (Kubernetes and SMI objects) and :mod:`mesh.core.gateway` (Gateway API
routes) share them, so every object error reads alike.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping
from typing import Any

from mesh.core.errors import InvalidObject, ObjectRef, describe

_DNS_NAME = re.compile(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?")
_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
DNS_1035_LABEL = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")


def mapping(value: Any, path: str) -> Mapping[str, Any]:
    if type(value) is dict:
        return value
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise InvalidObject(path, f"expected an object, got {describe(value)}")
    return value


def entries(value: Any, path: str) -> Iterable[tuple[object, Any]]:
    """The (key, value) pairs of an object, its keys as they are: YAML makes a bare ``on``,
    ``off``, ``yes``, ``no`` or a number a key that is no string, and a compiled loop over a
    ``Mapping[str, Any]`` would fail on it with a TypeError instead of the caller's error."""
    return mapping(value, path).items()


def seq(value: Any, path: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise InvalidObject(path, f"expected a list, got {describe(value)}")
    return value


def string(value: Any, path: str, *, required: bool = True, default: str = "") -> str:
    if type(value) is str and value:
        return value
    if value is None or value == "":
        if required:
            raise InvalidObject(path, "required, expected a non-empty string")
        return default
    if not isinstance(value, str):
        raise InvalidObject(path, f"expected a string, got {describe(value)}")
    return value


def integer(value: Any, path: str, *, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidObject(path, f"expected an integer in {low}..{high}, got {describe(value)}")
    if not low <= value <= high:
        raise InvalidObject(path, f"expected an integer in {low}..{high}, got {value}")
    return value


def port_number(value: Any, path: str) -> int:
    return integer(value, path, low=1, high=65535)


def ip_address(value: str, family: str, path: str) -> None:
    """An IPv4 or IPv6 address, as the slice's addressType says."""
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        raise InvalidObject(path, f"expected an {family} address, got {value[:60]!r}") from None
    if address.version != (4 if family == "IPv4" else 6):
        raise InvalidObject(path, f"expected an {family} address, got {value!r}")


def boolean(value: Any, path: str, default: bool) -> bool:
    if value is None:
        return default
    if not isinstance(value, bool):
        raise InvalidObject(path, f"expected true or false, got {describe(value)}")
    return value


def dns_name(value: Any, path: str) -> str:
    text = string(value, path)
    if len(text) > 253 or not _DNS_NAME.fullmatch(text):
        raise InvalidObject(path, f"expected a DNS-1123 name, got {describe(text)}")
    return text


def dns_label(value: Any, path: str, *, required: bool = True) -> str:
    """A DNS-1123 label (a namespace's name): at most 63 of a-z, 0-9 and '-'."""
    text = string(value, path, required=required)
    if (text or required) and (len(text) > 63 or not _DNS_LABEL.fullmatch(text)):
        raise InvalidObject(path, f"expected a DNS-1123 label, got {describe(text)}")
    return text


def domain(value: Any, path: str, default: str) -> str:
    """A DNS zone (``mesh``, ``cluster.local``); one trailing dot is allowed."""
    text = string(value, path, required=False, default=default)
    zone = text[:-1] if text.endswith(".") else text
    if len(zone) > 253 or not all(
        len(label) <= 63 and _DNS_LABEL.fullmatch(label) for label in zone.split(".")
    ):
        raise InvalidObject(path, f"expected a DNS domain like {default}, got {describe(text)}")
    return zone


def optional_name(value: Any, path: str) -> str | None:
    if value is None or value == "":
        return None
    return dns_name(value, path)


def string_map(value: Any, path: str) -> tuple[tuple[str, str], ...]:
    out = []
    for key, item in entries(value, path):
        if not isinstance(item, str):
            raise InvalidObject(f"{path}.{key}", f"expected a string, got {describe(item)}")
        out.append((str(key), item))
    return tuple(sorted(out))


def object_ref(doc: Any) -> ObjectRef:
    """Best-effort reference to an object, even a malformed one, for error messages."""
    if not isinstance(doc, Mapping):
        return ObjectRef("<unknown>", "", "<not an object>")
    kind = doc.get("kind") if isinstance(doc.get("kind"), str) else "<unknown>"
    raw_meta = doc.get("metadata")
    meta: Mapping[str, Any] = raw_meta if isinstance(raw_meta, Mapping) else {}
    name = (meta.get("name") if isinstance(meta.get("name"), str) else "") or "<unnamed>"
    if kind == "Node":
        return ObjectRef(str(kind), "", str(name))
    namespace = meta.get("namespace") if isinstance(meta.get("namespace"), str) else "default"
    return ObjectRef(str(kind), str(namespace or "default"), str(name))


def object_meta(doc: Mapping[str, Any]) -> tuple[str, str]:
    meta = mapping(doc.get("metadata"), "metadata")
    name = dns_name(meta.get("name"), "metadata.name")
    namespace = dns_label(meta.get("namespace"), "metadata.namespace", required=False)
    return (namespace or "default"), name
