"""Checking a MeshConfig document before a proxy compiles it.

A proxy receives its config as JSON from the controller or from a file a user may have edited.
:func:`check_config` checks every field the :class:`~mesh.core.routing.Router` and the proxy
read, so a bad document is one :class:`ConfigError` with its field path (``listeners[3].port:
expected a port 1..65535, got 70000``) and the last good config keeps serving, instead of a
KeyError half-way through compiling, a NaN policy, or a listener on port 70000 that the
operating system would silently open on 4464. Fields the proxy does not read are not checked,
so newer controllers may add some.
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Callable, Mapping
from typing import Any

from mesh.core.annotations import LOAD_BALANCERS, parse_circuit_breaker_expression
from mesh.core.config import API_VERSION

PROTOCOLS = ("http", "tcp", "udp")
SCHEMES = ("http", "https", "h2c")
MAX_SECONDS = 86400.0 * 365


class ConfigError(ValueError):
    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}" if path else message)
        self.path = path
        self.message = message


Check = Callable[[Any, str], object]


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _mapping(value: Any, path: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ConfigError(path, f"expected a mapping, got {type(value).__name__}")
    return value


def _list(value: Any, path: str) -> list[Any]:
    if not isinstance(value, list):
        raise ConfigError(path, f"expected a list, got {type(value).__name__}")
    return value


def _str(value: Any, path: str) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(path, f"expected a non-empty string, got {_show(value)}")
    return value


def _optional_str(value: Any, path: str) -> None:
    if value is not None:
        _str(value, path)


def _bool(value: Any, path: str) -> None:
    if not isinstance(value, bool):
        raise ConfigError(path, f"expected true or false, got {_show(value)}")


def _int(value: Any, path: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ConfigError(path, f"expected an integer {low}..{high}, got {_show(value)}")
    return value


def _port(value: Any, path: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise ConfigError(path, f"expected a port 1..65535, got {_show(value)}")
    return value


def _number(value: Any, path: str, *, low: float, high: float, zero: bool = False) -> None:
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    if not ok or not math.isfinite(value) or not low <= value <= high or (value == 0 and not zero):
        raise ConfigError(
            path, f"expected a finite number in {low:g}..{high:g}, got {_show(value)}"
        )


def _choice(value: Any, path: str, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise ConfigError(path, f"expected one of {', '.join(allowed)}, got {_show(value)}")
    return str(value)


def _regex(value: Any, path: str) -> None:
    try:
        re.compile(_str(value, path))
    except (re.error, RecursionError, OverflowError) as exc:
        raise ConfigError(path, f"not a valid regular expression: {exc}") from None


def _ip(value: Any, path: str) -> None:
    try:
        ipaddress.ip_address(_str(value, path))
    except ValueError:
        raise ConfigError(path, f"expected an IP address, got {_show(value)}") from None


def _key_in(value: Any, path: str, table: Mapping[str, Any], what: str) -> None:
    if not isinstance(value, str) or value not in table:
        raise ConfigError(path, f"expected the key of one of the {what}, got {_show(value)}")


def _each(value: Any, path: str, check: Check) -> None:
    for i, item in enumerate(_list(value, path)):
        check(item, f"{path}[{i}]")


def _entries(value: Any, path: str, check: Check) -> None:
    for key, item in _mapping(value, path).items():
        check(item, f"{path}[{_str(key, path)}]")


# -- the document ---------------------------------------------------------------------------


def check_config(data: Any) -> None:
    """Raise ConfigError naming the first field of ``data`` the proxy could not use."""
    doc = _mapping(data, "")
    if doc.get("apiVersion") != API_VERSION:
        raise ConfigError(
            "apiVersion", f"expected {API_VERSION}, got {_show(doc.get('apiVersion'))}"
        )
    version = _str(doc.get("version"), "version")
    if len(version) > 64:
        raise ConfigError("version", "expected at most 64 characters")
    settings = _mapping(doc.get("settings"), "settings")
    for key in ("zone", "clusterDomain"):
        _str(settings.get(key), f"settings.{key}")
    _bool(settings.get("acl"), "settings.acl")
    clusters = _mapping(doc.get("clusters"), "clusters")
    _entries(clusters, "clusters", _cluster)
    routes = _mapping(doc.get("routes"), "routes")
    _entries(routes, "routes", lambda item, path: _route(item, path, clusters))
    for port, table in _mapping(doc.get("hosts"), "hosts").items():
        if not isinstance(port, str) or not port.isascii() or not port.isdigit():
            raise ConfigError("hosts", f"expected listener ports as keys, got {_show(port)}")
        _port(int(port), f"hosts[{port}]")
        for host, route in _mapping(table, f"hosts[{port}]").items():
            _key_in(route, f"hosts[{port}][{host}]", routes, "routes")
    _each(doc.get("listeners"), "listeners", lambda item, path: _listener(item, path, routes))
    for key, identity in _mapping(doc.get("identities", {}), "identities").items():
        _str(identity, f"identities[{key}]")


def _listener(value: Any, path: str, routes: Mapping[str, Any]) -> None:
    item = _mapping(value, path)
    _port(item.get("port"), f"{path}.port")
    if _choice(item.get("protocol"), f"{path}.protocol", PROTOCOLS) != "http":
        _key_in(item.get("route"), f"{path}.route", routes, "routes")


def _route(value: Any, path: str, clusters: Mapping[str, Any]) -> None:
    item = _mapping(value, path)
    _str(item.get("service"), f"{path}.service")
    _port(item.get("port"), f"{path}.port")
    _choice(item.get("protocol"), f"{path}.protocol", PROTOCOLS)
    _choice(item.get("scheme"), f"{path}.scheme", SCHEMES)
    if "listener" not in item:
        raise ConfigError(f"{path}.listener", "expected a port or null, got nothing")
    if item["listener"] is not None:
        _port(item["listener"], f"{path}.listener")
    _key_in(item.get("cluster"), f"{path}.cluster", clusters, "clusters")
    if item.get("split"):
        _split(item["split"], f"{path}.split", clusters)
    _policy(item.get("policy"), f"{path}.policy")


def _split(value: Any, path: str, clusters: Mapping[str, Any]) -> None:
    item = _mapping(value, path)
    _str(item.get("name"), f"{path}.name")

    def backend(raw: Any, where: str) -> None:
        entry = _mapping(raw, where)
        _str(entry.get("service"), f"{where}.service")
        _int(entry.get("weight"), f"{where}.weight", 0, 2**53)
        _key_in(entry.get("cluster"), f"{where}.cluster", clusters, "clusters")

    _each(item.get("backends"), f"{path}.backends", backend)
    if not any(b["weight"] > 0 for b in item["backends"]):  # the balancer could pick nothing
        raise ConfigError(f"{path}.backends", "expected a backend with a positive weight")
    _each(item.get("matches", []), f"{path}.matches", _match)


def _policy(value: Any, path: str) -> None:
    item = _mapping(value, path)
    retry = item.get("retry")
    if retry is not None:
        entry = _mapping(retry, f"{path}.retry")
        _int(entry.get("attempts"), f"{path}.retry.attempts", 0, 2**53)
        _bool(entry.get("nonIdempotent"), f"{path}.retry.nonIdempotent")
        _each(
            entry.get("onStatuses"),
            f"{path}.retry.onStatuses",
            lambda status, where: _int(status, where, 100, 599),
        )
        _number(entry.get("backoff"), f"{path}.retry.backoff", low=0.0, high=MAX_SECONDS, zero=True)
        if entry.get("budget") is not None:
            _number(entry["budget"], f"{path}.retry.budget", low=0.0, high=1.0)
    if item.get("timeout") is not None:
        _number(item["timeout"], f"{path}.timeout", low=0.0, high=MAX_SECONDS)
    if item.get("requestTimeout") is not None:
        _number(item["requestTimeout"], f"{path}.requestTimeout", low=0.0, high=MAX_SECONDS)
    limit = item.get("rateLimit")
    if limit is not None:
        entry = _mapping(limit, f"{path}.rateLimit")
        _number(entry.get("average"), f"{path}.rateLimit.average", low=0.0, high=2.0**53)
        _int(entry.get("burst"), f"{path}.rateLimit.burst", 1, 2**53)


def _cluster(value: Any, path: str) -> None:
    item = _mapping(value, path)
    _str(item.get("service"), f"{path}.service")
    _port(item.get("port"), f"{path}.port")
    _choice(item.get("protocol"), f"{path}.protocol", PROTOCOLS)
    _choice(item.get("scheme"), f"{path}.scheme", SCHEMES)
    _choice(item.get("loadBalancer"), f"{path}.loadBalancer", LOAD_BALANCERS)
    _each(item.get("endpoints"), f"{path}.endpoints", _endpoint)
    if item.get("circuitBreaker") is not None:
        _breaker(item["circuitBreaker"], f"{path}.circuitBreaker")
    _each(item.get("access", []), f"{path}.access", _grant)


def _endpoint(value: Any, path: str) -> None:
    item = _mapping(value, path)
    _ip(item.get("ip"), f"{path}.ip")
    _port(item.get("port"), f"{path}.port")
    _optional_str(item.get("node"), f"{path}.node")
    _optional_str(item.get("identity"), f"{path}.identity")


def _breaker(value: Any, path: str) -> None:
    item = _mapping(value, path)
    try:
        parse_circuit_breaker_expression(_str(item.get("expression"), f"{path}.expression"))
    except ValueError as exc:
        raise ConfigError(f"{path}.expression", str(exc)) from None
    _number(item.get("window"), f"{path}.window", low=0.0, high=MAX_SECONDS)
    _number(item.get("openDuration"), f"{path}.openDuration", low=0.0, high=MAX_SECONDS, zero=True)
    _int(item.get("minRequests"), f"{path}.minRequests", 0, 2**53)
    _number(item.get("checkPeriod"), f"{path}.checkPeriod", low=0.0, high=MAX_SECONDS)


def _grant(value: Any, path: str) -> None:
    item = _mapping(value, path)
    for key in ("target", "destination", "kind", "route"):
        _str(item.get(key), f"{path}.{key}")
    _each(item.get("sources"), f"{path}.sources", _str)
    if item.get("match"):
        _match(item["match"], f"{path}.match")
    _each(item.get("ports") or [], f"{path}.ports", _port)


def _match(value: Any, path: str) -> None:
    item = _mapping(value, path)
    _str(item.get("name"), f"{path}.name")
    if item.get("pathRegex"):
        _regex(item["pathRegex"], f"{path}.pathRegex")
    if item.get("methods") is not None:
        _each(item["methods"], f"{path}.methods", _str)

    def header(raw: Any, where: str) -> None:
        pair = _list(raw, where)
        if len(pair) != 2:
            raise ConfigError(where, "expected [name, regex]")
        _str(pair[0], f"{where}[0]")
        _regex(pair[1], f"{where}[1]")

    _each(item.get("headers", []), f"{path}.headers", header)
