"""Profiles: what the machinery around the pods costs, measured on a machine.

A profile is a small YAML file (``sim/profiles/NAME.yaml``, or a path) that the simulator's
resource model (resources.py) and network model (network.py) read:

```yaml
proxy:   {request: 0.00012, attempt: 0.00006, byte: 2.0e-09}  # CPU seconds in a node proxy
client:  {request: 0.00018}    # CPU seconds in the load generator (Locust), per request
app:     {request: 0.00025, timer: 0.001}  # CPU seconds in a workload's server around its
                               # latency; its sleeps end on the next tick of this timer
network: {local: 0.00003, remote: 0.00003}   # one-way seconds within a node, between nodes
wakeup:  {dist: empirical, percentiles: {50: 0.0001, 99: 0.0005}}  # an idle process's wait
                               # for a CPU when work arrives (a latency spec, scenario format)
configDelay: 0.15              # seconds from a policy change to every proxy applying it
responseBytes: 800             # body bytes of an answer
tls: {connect: 0.0006, accept: 0.0008, request: 0.00003, byte: 1.0e-09, relay: 0.00002}
                               # mTLS tunnels: CPU seconds of a proxy per handshake as the
                               # client (connect) and as the server (accept), per request and
                               # per byte it seals or opens (each of the two proxies of a
                               # tunnelled request pays request and byte), and per request the
                               # destination relays on a spliced pipe (relay: both ways, its
                               # TLS records included); read only when the scenario's mtls is on
```

Timers: asyncio rounds a sleep up to whole milliseconds (the epoll timeout), so a test app asked
for 20.1 ms answers after 21 ms; the simulator rounds a pod's service time up the same way.
Wake-ups: a process that sleeps waits for a core when it is woken, the longer the busier the
machine; every visit to an idle event loop (resources.py) pays one sample.

The ``tls`` costs are measured by ``python -m loadtests.calibrate --tls`` (``tls_costs``: mutual
TLS 1.3 handshakes with the mesh's own ECDSA workload certificates and records of the profile's
answer size and of 64 KiB, through ``ssl`` memory BIOs in one process, CPU per side; ``relay``:
the CPU of a process relaying requests and answers from mutual TLS to plaintext like
mesh/proxy/pipe.py, at 400 requests/s); a profile without ``tls`` prices TLS at 0. A spliced
pipe's destination proxy is priced ``relay`` per request instead of a proxy's request, attempt
and TLS record (sim/model.py says when an attempt goes on a pipe); a profile without
``relay`` prices that relay at 0.

``local`` is written by ``python -m loadtests.bench_proxy --profile`` from measurements on this
machine (the proxy's CPU per request, per attempt and per byte with fortio, the test app's and
Locust's per request, the loopback round trip, the controller's propagation) and is the
default. ``ideal`` costs nothing: the mesh as a pure routing function, for queueing theory.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mesh.core.distributions import DistributionError, sampler

__all__ = ["DEFAULT_PROFILE", "PROFILES", "Profile", "ProfileError", "load_profile"]

PROFILES = Path(__file__).with_name("profiles")
DEFAULT_PROFILE = "local"


class ProfileError(ValueError):
    """A profile that cannot be read; the message names the file and the field."""


@dataclass(frozen=True, slots=True)
class Profile:
    name: str = "ideal"
    proxy_request: float = 0.0
    proxy_attempt: float = 0.0
    proxy_byte: float = 0.0
    client_request: float = 0.0
    app_request: float = 0.0
    network_local: float = 0.0
    network_remote: float = 0.0
    network_pairs: dict[frozenset[str], float] = field(default_factory=dict)
    app_timer: float = 0.0
    wakeup: Any = 0.0  # a latency spec (mesh.core.distributions)
    config_delay: float = 0.0
    response_bytes: int = 0
    tls_connect: float = 0.0  # CPU of one mTLS handshake, client side (the source proxy)
    tls_accept: float = 0.0  # server side (the destination proxy)
    tls_request: float = 0.0  # per request and proxy: sealing and opening its records
    tls_byte: float = 0.0  # per body byte and proxy
    tls_relay: float = 0.0  # per request at a spliced pipe's destination proxy, TLS aside
    source: str = ""  # where it was measured, as the file says

    @property
    def ideal(self) -> bool:
        return self == Profile(name=self.name, source=self.source)


_FIELDS = {
    ("proxy", "request"): "proxy_request",
    ("proxy", "attempt"): "proxy_attempt",
    ("proxy", "byte"): "proxy_byte",
    ("client", "request"): "client_request",
    ("app", "request"): "app_request",
    ("app", "timer"): "app_timer",
    ("network", "local"): "network_local",
    ("network", "remote"): "network_remote",
    ("tls", "connect"): "tls_connect",
    ("tls", "accept"): "tls_accept",
    ("tls", "request"): "tls_request",
    ("tls", "byte"): "tls_byte",
    ("tls", "relay"): "tls_relay",
}
_TOP = {
    "proxy",
    "client",
    "app",
    "network",
    "wakeup",
    "configDelay",
    "responseBytes",
    "tls",
    "name",
    "measured",
}


def load_profile(name: str, *, base: Path | None = None) -> Profile:
    """The profile called ``name`` (in sim/profiles), or at the path ``name`` (relative to
    ``base``, a scenario directory); ``ideal`` is built in."""
    if name == "ideal":
        return Profile()
    path = Path(name)
    if path.suffix not in (".yaml", ".yml"):
        path = PROFILES / f"{name}.yaml"
    elif base is not None and not path.is_absolute():
        path = base / path
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError:
        known = ", ".join(sorted(["ideal", *(p.stem for p in PROFILES.glob("*.yaml"))]))
        raise ProfileError(f"profile {name!r}: no such profile (known: {known})") from None
    except yaml.YAMLError as exc:
        raise ProfileError(f"{path}: not valid YAML: {' '.join(str(exc).split())[:200]}") from None
    return parse_profile(raw, str(path), name=path.stem)


def _seconds(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ProfileError(f"{where}: expected seconds, got {value!r}")
    if value < 0:
        raise ProfileError(f"{where}: expected seconds >= 0, got {value!r}")
    return float(value)


def parse_profile(raw: Any, where: str, *, name: str) -> Profile:
    if not isinstance(raw, dict):
        raise ProfileError(f"{where}: expected a mapping")
    for key in raw:
        if key not in _TOP:
            raise ProfileError(f"{where}: {key}: unknown key; expected one of {sorted(_TOP)}")
    values: dict[str, Any] = {}
    for section in sorted({s for s, _ in _FIELDS}):
        body = raw.get(section) or {}
        if not isinstance(body, dict):
            raise ProfileError(f"{where}: {section}: expected a mapping")
        known = sorted(k for s, k in _FIELDS if s == section)
        extra = sorted(str(k) for k in body if k not in known)
        if section == "tls" and extra:  # a typo would price TLS at 0 without a word
            raise ProfileError(f"{where}: tls.{extra[0]}: unknown key; expected one of {known}")
    for (section, key), attribute in _FIELDS.items():
        body = raw.get(section) or {}
        if key in body:
            values[attribute] = _seconds(body[key], f"{where}: {section}.{key}")
    network = raw.get("network") or {}
    pairs: dict[frozenset[str], float] = {}
    for pair, value in (network.get("between") or {}).items():
        a, sep, b = str(pair).partition("/")
        if not sep or not a or not b:
            raise ProfileError(f"{where}: network.between.{pair}: expected NODE/NODE")
        pairs[frozenset((a, b))] = _seconds(value, f"{where}: network.between.{pair}")
    if "wakeup" in raw:
        try:
            sampler(raw["wakeup"])
        except DistributionError as exc:
            raise ProfileError(f"{where}: wakeup: {exc}") from None
        values["wakeup"] = raw["wakeup"]
    if "configDelay" in raw:
        values["config_delay"] = _seconds(raw["configDelay"], f"{where}: configDelay")
    if "responseBytes" in raw:
        values["response_bytes"] = int(_seconds(raw["responseBytes"], f"{where}: responseBytes"))
    return Profile(
        name=str(raw.get("name") or name),
        network_pairs=pairs,
        source=str(raw.get("measured") or ""),
        **values,
    )
