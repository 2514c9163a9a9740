"""Scenario directories: Kubernetes manifests plus ``scenario.yaml``.

``scenario.yaml`` describes what the manifests cannot: nodes, how each workload behaves,
the traffic, a timeline of faults and policy changes, SLOs, the duration and the seed.
Validation errors name the file and the field (``scenario.yaml: traffic[0].rate: ...``).

Workloads without EndpointSlices in the manifests get generated Pods and an EndpointSlice
(``replicas`` of them, placed round robin on ``nodes``), and a Service when none is given, so a
scenario may be as short as its SMI objects and a scenario.yaml. Generated objects go through
the same core parsing as hand-written ones.

``--set path=value`` edits scenario.yaml before validation (``traffic[0].rate=200``,
``policies.demo/backend.retry-attempts=3``); ``policies`` become ``simmesh.io/`` annotations on
the Services.
"""

from __future__ import annotations

import copy
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from mesh.core.model import PROXY_NAME, PROXY_NAME_LABEL, TUNNEL_PORT_NAME, MtlsMode, Settings
from mesh.core.request import BadRequest, Request, parse_request, split_target
from mesh.documents import DocumentError, load_yaml, read_yaml
from mesh.manifests import ManifestError, read_manifests, read_settings
from sim.distributions import DistributionError, Sampler, sampler
from sim.profile import DEFAULT_PROFILE, Profile, ProfileError, load_profile


class ScenarioError(Exception):
    pass


@dataclass(frozen=True)
class Workload:
    service: str  # namespace/name
    replicas: int
    nodes: tuple[str, ...]
    service_account: str
    latency: Sampler
    error_rate: float
    capacity: int | None  # concurrent requests per replica; None: unbounded
    port: int
    target_port: int
    latency_spec: Any = 0.01  # as written in scenario.yaml (the test app samples it too)
    contention: float = 0.0  # each request already in service makes a new one this much slower
    latency_mean: float = 0.0  # seconds, for the run's budget


@dataclass(frozen=True)
class RequestKind:
    method: str
    path: str
    weight: float
    headers: tuple[tuple[str, str], ...] = ()

    def request(self, authority: str) -> Request:
        """The canonical request (mesh.core.request), as the node proxy would read it."""
        return parse_request(self.method, self.path, list(self.headers), authority=authority)


@dataclass(frozen=True)
class Traffic:
    name: str
    source: str | None  # identity namespace/serviceaccount
    node: str
    protocol: str  # http, tcp or udp
    host: str
    port: int
    rate: float  # open loop, requests per second (0 with users)
    users: int  # closed loop
    think: float
    mix: tuple[RequestKind, ...]
    start: float
    stop: float


@dataclass(frozen=True)
class Event:
    at: float
    action: str
    params: dict[str, Any]


@dataclass(frozen=True)
class Slo:
    name: str
    service: str | None  # None: every request of the scenario
    traffic: str | None
    success_rate: float | None
    latency: tuple[tuple[float, float], ...]  # (percentile, max seconds)
    share: tuple[str, float, float] | None  # (backend, expected, tolerance)
    start: float
    end: float | None


@dataclass
class Scenario:
    directory: Path
    name: str
    description: str
    docs: list[dict[str, Any]]
    settings: Settings
    nodes: tuple[str, ...]
    workloads: dict[str, Workload]
    traffic: list[Traffic]
    timeline: list[Event]
    slos: list[Slo]
    duration: float
    seed: int
    proxy_latency: float  # fixed seconds added to each pass through a proxy (default 0)
    connect_failure_latency: float | None  # a refused connect; None: a network round trip
    connect_timeout: float = 5.0  # the proxy's --connect-timeout: an unreachable pod costs this
    profile: Profile = field(default_factory=Profile)  # costs of the machinery (profile.py)
    raw: dict[str, Any] = field(default_factory=dict)


ACTIONS = {
    "endpoint-down",
    "endpoint-up",
    "node-down",
    "node-up",
    "latency-spike",
    "error-burst",
    "apply",
    "delete",
    "set-split",
    "set-weights",
    "set-policy",
}
# Upper bounds of scenario values: beyond them a run is a mistake, not a simulation. What a
# valid scenario costs as a whole is bounded by the run's budget (see ``estimate``).
MAX_DURATION = 7 * 86400.0  # simulated seconds
MAX_RATE = 1_000_000.0  # requests per second, per traffic source
MAX_USERS = 100_000  # per traffic source
MAX_REPLICAS = 10_000  # per workload
MAX_NODES = 1_000
MAX_SECONDS = 86400.0  # latencies, think times, proxy latency
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")

TOP_KEYS = {
    "name",
    "description",
    "duration",
    "seed",
    "nodes",
    "workloads",
    "traffic",
    "timeline",
    "slos",
    "policies",
    "proxyLatency",
    "connectFailureLatency",
    "connectTimeout",
    "profile",
    "settings",
}
FAILURES = ("refused", "unreachable")  # how a pod that is down fails a connect
DEFAULT_FAILURE = {"endpoint-down": "refused", "node-down": "unreachable"}


# ---------------------------------------------------------------------------------------------
# --set


def apply_set(raw: dict[str, Any], assignment: str) -> None:
    """``a.b[0].c=value`` on the raw scenario mapping; the value is read as YAML."""
    path, sep, text = assignment.partition("=")
    if not sep or not path:
        raise ScenarioError(f"--set {assignment!r}: expected PATH=VALUE")
    try:
        value = load_yaml(text, name=f"--set {path}") if text else ""
    except DocumentError as exc:
        raise ScenarioError(str(exc)) from None
    steps = _steps(path)
    node: Any = raw
    for i, step in enumerate(steps[:-1]):
        nxt = steps[i + 1]
        if isinstance(step, int):
            if not isinstance(node, list) or step >= len(node):
                raise ScenarioError(f"--set {path}: no item {step} at {_render(steps[:i])}")
            node = node[step]
        else:
            if not isinstance(node, dict):
                raise ScenarioError(f"--set {path}: {_render(steps[:i])} is not a mapping")
            node = node.setdefault(step, [] if isinstance(nxt, int) else {})
    last = steps[-1]
    if isinstance(last, int):
        if not isinstance(node, list) or last >= len(node):
            raise ScenarioError(f"--set {path}: no item {last}")
        node[last] = value
    else:
        if not isinstance(node, dict):
            raise ScenarioError(f"--set {path}: parent is not a mapping")
        node[last] = value


def _steps(path: str) -> list[str | int]:
    steps: list[str | int] = []
    for part in path.split("."):
        name, _, rest = part.partition("[")
        if name:
            steps.append(name)
        while rest:
            index, _, rest = rest.partition("]")
            if not (index.isascii() and index.isdigit()):
                raise ScenarioError(f"--set {path}: bad index [{index}]")
            steps.append(int(index))
            rest = rest.lstrip("[")
    # Service keys contain no dots, annotation names may: keep "simmesh.io/x" style keys whole.
    merged: list[str | int] = []
    for step in steps:
        if (
            merged
            and isinstance(step, str)
            and isinstance(merged[-1], str)
            and (
                merged[-1].endswith(("simmesh", "mesh", "traefik", "maesh", "containo"))
                and step.startswith(("io/", "us/"))
            )
        ):
            merged[-1] = f"{merged[-1]}.{step}"
        else:
            merged.append(step)
    return merged


def _render(steps: list[str | int]) -> str:
    return "".join(f"[{s}]" if isinstance(s, int) else f".{s}" for s in steps).lstrip(".") or "."


# ---------------------------------------------------------------------------------------------
# --scale

_TIMES = {"traffic": ("start", "stop"), "timeline": ("at", "until"), "slos": ("from", "until")}


def scale_times(raw: dict[str, Any], factor: float) -> None:
    """Multiply every point in time of a raw scenario by ``factor`` (rates, latencies,
    timeouts and policy windows stay as they are). Values that are not numbers are left for
    validation to report."""
    if not factor > 0:
        raise ScenarioError(f"--scale: expected a number > 0, got {factor!r}")
    duration = raw.get("duration", 60.0)
    if _is_plain_number(duration):
        raw["duration"] = duration * factor
    for key, fields in _TIMES.items():
        items = raw.get(key)
        for item in items if isinstance(items, list) else []:
            for name in fields:
                if isinstance(item, dict) and _is_plain_number(item.get(name)):
                    item[name] = item[name] * factor


def _is_plain_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


# ---------------------------------------------------------------------------------------------
# Loading


Edit = Callable[[list[dict[str, Any]]], list[dict[str, Any]]]
SettingsEdit = Callable[[Settings], Settings]


@dataclass(frozen=True)
class SloFile:
    """SLOs kept apart from the scenario (``simmesh whatif --slos``): they replace its own."""

    name: str  # how errors name the file
    slos: Any  # the ``slos:`` list as read


def load_scenario(
    directory: Path,
    sets: list[str] | tuple[str, ...] = (),
    *,
    scale: float = 1.0,
    edit: Edit | None = None,
    slos: SloFile | None = None,
) -> Scenario:
    """The scenario of ``directory`` with ``--set`` edits applied; ``scale`` shortens (or
    stretches) its time line: duration, traffic start and stop, events and SLO windows.
    ``edit`` changes its objects (after ``policies``, before the generated pods and slices:
    sim/whatif.py applies a change with it); ``slos`` replaces its SLOs."""
    path = directory / "scenario.yaml"
    if not directory.is_dir():
        raise ScenarioError(f"{directory}: not a directory")
    if not path.exists() and not path.is_symlink():
        raise ScenarioError(f"{directory}: no scenario.yaml")
    try:
        raw = read_yaml(path) or {}
    except DocumentError as exc:
        raise ScenarioError(str(exc)) from None
    if not isinstance(raw, dict):
        raise ScenarioError(f"{path}: expected a mapping at the top")
    return scenario_from(directory, raw, sets, scale=scale, edit=edit, slos=slos)


def scenario_from(
    directory: Path,
    raw: dict[str, Any],
    sets: list[str] | tuple[str, ...] = (),
    *,
    scale: float = 1.0,
    edit: Edit | None = None,
    slos: SloFile | None = None,
    settings_edit: SettingsEdit | None = None,
) -> Scenario:
    """:func:`load_scenario` with scenario.yaml given as a mapping (left as it is): the
    manifests and mesh.yaml are still read from ``directory``; ``settings_edit`` changes the
    settings (a what-if's mesh.yaml)."""
    raw = copy.deepcopy(raw)
    try:
        manifests = read_manifests(directory)
        settings = read_settings(directory)
    except ManifestError as exc:
        raise ScenarioError(str(exc)) from None
    if raw.get("settings") is None and any(a.startswith("settings.") for a in sets):
        # scenario.yaml's settings replace mesh.yaml's: a --set of one setting edits the
        # directory's settings (`--set settings.mtls=strict` keeps mesh.yaml's `acl: true`)
        from mesh.core.parse import settings_doc

        raw["settings"] = settings_doc(settings)
    for assignment in sets:
        apply_set(raw, assignment)
    if scale != 1.0:
        scale_times(raw, scale)
    if manifests.problems:
        raise ScenarioError("; ".join(manifests.problems))
    path = directory / "scenario.yaml"
    validator = _Validator(path, directory, raw, manifests.docs, settings, edit, slos)
    validator.settings_edit = settings_edit
    return validator.scenario()


class _Validator:
    def __init__(
        self,
        path: Path,
        directory: Path,
        raw: dict[str, Any],
        docs: list[dict[str, Any]],
        settings: Settings,
        edit: Edit | None = None,
        slos: SloFile | None = None,
    ) -> None:
        self.path = path
        self.directory = directory
        self.raw = raw
        self.docs = docs
        self.settings = settings
        self.edit = edit
        self.settings_edit: SettingsEdit | None = None
        self.slo_file = slos

    def fail(self, where: str, message: str) -> ScenarioError:
        return ScenarioError(f"{self.path.name}: {where}: {message}")

    def number(
        self,
        value: Any,
        where: str,
        *,
        low: float = 0.0,
        high: float | None = None,
        default: float | None = None,
        integer: bool = False,
    ) -> float:
        if value is None and default is not None:
            return default
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.fail(where, f"expected a number, got {_show(value)}")
        if not math.isfinite(value):
            raise self.fail(where, f"expected a finite number, got {value!r}")
        if integer and not float(value).is_integer():
            raise self.fail(where, f"expected a whole number, got {value!r}")
        if value < low or (high is not None and value > high):
            bound = f"{low}..{high}" if high is not None else f">= {low}"
            raise self.fail(where, f"expected a number {bound}, got {value!r}")
        return float(value)

    def scenario(self) -> Scenario:
        raw = self.raw
        for key in raw:
            if key not in TOP_KEYS:
                raise self.fail(
                    str(key), f"unknown key; expected one of {', '.join(sorted(TOP_KEYS))}"
                )
        duration = self.number(
            raw.get("duration"), "duration", low=0.001, high=MAX_DURATION, default=60.0
        )
        seed = int(self.number(raw.get("seed"), "seed", default=1.0, integer=True))
        nodes = self.nodes(raw.get("nodes"))
        settings = self.settings
        if raw.get("settings") is not None:
            settings = self.override_settings(raw["settings"])
        if self.settings_edit is not None:
            settings = self.settings_edit(settings)
        workloads = self.workloads(raw.get("workloads"), nodes)
        docs = self.with_policies(self.docs, raw.get("policies"))
        if self.edit is not None:
            docs = self.edit(docs)
        docs = docs + generated_objects(docs, workloads)
        traffic = [
            self.traffic(t, f"traffic[{i}]", nodes, workloads, duration)
            for i, t in enumerate(self.seq(raw.get("traffic"), "traffic"))
        ]
        if not traffic:
            raise self.fail("traffic", "expected at least one traffic source")
        names = [t.name for t in traffic]
        if len(set(names)) != len(names):
            raise self.fail("traffic", "traffic names must be unique")
        docs = docs + client_pods(docs, traffic)
        if settings.mtls is not MtlsMode.OFF:
            docs = docs + proxy_pods(settings, nodes)
        timeline = [
            self.event(e, f"timeline[{i}]", nodes, workloads)
            for i, e in enumerate(self.seq(raw.get("timeline"), "timeline"))
        ]
        timeline.sort(key=lambda e: e.at)
        slos = self.slos(raw.get("slos"), names)
        scenario = Scenario(
            directory=self.directory,
            name=self.name(raw.get("name")),
            description=str(raw.get("description") or "").strip(),
            docs=docs,
            settings=settings,
            nodes=nodes,
            workloads=workloads,
            traffic=traffic,
            timeline=timeline,
            slos=slos,
            duration=duration,
            seed=seed,
            proxy_latency=self.number(
                raw.get("proxyLatency"), "proxyLatency", high=MAX_SECONDS, default=0.0
            ),
            connect_failure_latency=None
            if raw.get("connectFailureLatency") is None
            else self.number(
                raw["connectFailureLatency"], "connectFailureLatency", high=MAX_SECONDS
            ),
            connect_timeout=self.number(
                raw.get("connectTimeout"),
                "connectTimeout",
                low=0.001,
                high=MAX_SECONDS,
                default=5.0,
            ),
            profile=self.profile(raw.get("profile", DEFAULT_PROFILE)),
            raw=raw,
        )
        if math.isinf(estimate(scenario).requests):
            raise self.fail(
                "traffic",
                "closed-loop traffic with no think time and no latency never lets simulated "
                "time advance; give thinkTime, a workload latency or proxyLatency",
            )
        return scenario

    def name(self, value: Any) -> str:
        """The scenario's name; it names the output directory, so it is never a path."""
        if value is None or value == "":
            return _safe_name(self.directory.resolve().name)
        if not isinstance(value, str) or not NAME.fullmatch(value):
            raise self.fail(
                "name",
                "expected 1-63 letters, digits, '.', '_' or '-' starting with a letter or digit "
                f"(it names the output directory), got {_show(value)}",
            )
        return value

    def profile(self, value: Any) -> Profile:
        if not isinstance(value, str) or not value:
            raise self.fail("profile", f"expected a profile name or a path, got {value!r}")
        try:
            return load_profile(value, base=self.directory)
        except ProfileError as exc:
            raise self.fail("profile", str(exc)) from None

    def seq(self, value: Any, where: str) -> list[Any]:
        if value is None:
            return []
        if not isinstance(value, list):
            raise self.fail(where, f"expected a list, got {type(value).__name__}")
        return value

    def mapping(self, value: Any, where: str) -> dict[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise self.fail(where, f"expected a mapping, got {type(value).__name__}")
        return value

    def override_settings(self, raw: Any) -> Settings:
        from mesh.core.errors import InvalidObject
        from mesh.core.parse import parse_settings

        try:
            return parse_settings(self.mapping(raw, "settings"))
        except InvalidObject as exc:
            raise self.fail(f"settings.{exc.field}", exc.message) from None

    def nodes(self, value: Any) -> tuple[str, ...]:
        items = self.seq(value, "nodes") or ["node-a"]
        if len(items) > MAX_NODES:
            raise self.fail("nodes", f"expected at most {MAX_NODES} nodes, got {len(items)}")
        names = []
        for i, item in enumerate(items):
            name = item.get("name") if isinstance(item, dict) else item
            if not isinstance(name, str) or not name or len(name) > 253:
                raise self.fail(f"nodes[{i}]", f"expected a node name, got {_show(item)}")
            names.append(name)
        if len(set(names)) != len(names):
            raise self.fail("nodes", "node names must be unique")
        return tuple(names)

    def service_key(self, value: Any, where: str) -> str:
        if (
            not isinstance(value, str)
            or value.count("/") != 1
            or value.startswith("/")
            or value.endswith("/")
        ):
            raise self.fail(where, f"expected NAMESPACE/SERVICE, got {value!r}")
        return value

    def workloads(self, value: Any, nodes: tuple[str, ...]) -> dict[str, Workload]:
        out: dict[str, Workload] = {}
        for key, item in sorted(self.mapping(value, "workloads").items()):
            where = f"workloads.{key}"
            service = self.service_key(key, where)
            body = self.mapping(item, where)
            known = {
                "replicas",
                "nodes",
                "serviceAccount",
                "latency",
                "errorRate",
                "capacity",
                "port",
                "targetPort",
                "contention",
            }
            for k in body:
                if k not in known:
                    raise self.fail(
                        f"{where}.{k}", f"unknown key; expected one of {', '.join(sorted(known))}"
                    )
            placed = tuple(self.seq(body.get("nodes"), f"{where}.nodes")) or nodes
            for i, node in enumerate(placed):
                if node not in nodes:
                    raise self.fail(
                        f"{where}.nodes[{i}]",
                        f"unknown node {node!r}; nodes are {', '.join(nodes)}",
                    )
            try:
                latency_spec = body.get("latency", 0.01)
                latency, mean = sampler(latency_spec)
            except DistributionError as exc:
                raise self.fail(f"{where}.latency", str(exc)) from None
            capacity = body.get("capacity")
            port = int(
                self.number(
                    body.get("port"), f"{where}.port", low=1, high=65535, default=80, integer=True
                )
            )
            out[service] = Workload(
                service=service,
                replicas=int(
                    self.number(
                        body.get("replicas"),
                        f"{where}.replicas",
                        low=0,
                        high=MAX_REPLICAS,
                        default=1,
                        integer=True,
                    )
                ),
                nodes=placed,
                service_account=str(body.get("serviceAccount") or service.split("/")[1]),
                latency=latency,
                latency_spec=latency_spec,
                contention=self.number(body.get("contention"), f"{where}.contention", default=0.0),
                error_rate=self.number(
                    body.get("errorRate"), f"{where}.errorRate", high=1.0, default=0.0
                ),
                capacity=None
                if capacity is None
                else int(self.number(capacity, f"{where}.capacity", low=1, high=1e9, integer=True)),
                port=port,
                target_port=int(
                    self.number(
                        body.get("targetPort"),
                        f"{where}.targetPort",
                        low=1,
                        high=65535,
                        default=8080,
                        integer=True,
                    )
                ),
                latency_mean=mean,
            )
        return out

    def with_policies(self, docs: list[dict[str, Any]], value: Any) -> list[dict[str, Any]]:
        policies = self.mapping(value, "policies")
        if not policies:
            return docs
        docs = copy.deepcopy(docs)
        for key, wanted in policies.items():
            service = self.service_key(key, f"policies.{key}")
            body = self.mapping(wanted, f"policies.{key}")
            doc = _find(docs, "Service", service)
            if doc is None:
                doc = _service_doc(service, 80, 8080)
                docs.append(doc)
            annotate(doc, body)
        return docs

    def traffic(
        self,
        value: Any,
        where: str,
        nodes: tuple[str, ...],
        workloads: dict[str, Workload],
        duration: float,
    ) -> Traffic:
        body = self.mapping(value, where)
        known = {
            "name",
            "from",
            "node",
            "to",
            "rate",
            "users",
            "thinkTime",
            "mix",
            "start",
            "stop",
            "method",
            "path",
            "headers",
        }
        for k in body:
            if k not in known:
                raise self.fail(
                    f"{where}.{k}", f"unknown key; expected one of {', '.join(sorted(known))}"
                )
        source = body.get("from")
        if source is not None and (not isinstance(source, str) or source.count("/") != 1):
            raise self.fail(f"{where}.from", f"expected NAMESPACE/SERVICEACCOUNT, got {source!r}")
        target = body.get("to")
        if not isinstance(target, str):
            raise self.fail(
                f"{where}.to",
                "expected http://HOST[:PORT]/PATH, tcp://HOST:PORT or udp://HOST:PORT",
            )
        parts = urlsplit(target)
        if parts.scheme not in ("http", "tcp", "udp") or not parts.hostname:
            raise self.fail(
                f"{where}.to",
                "expected http://HOST[:PORT]/PATH, tcp://HOST:PORT or udp://HOST:PORT, "
                f"got {target!r}",
            )
        try:
            port = parts.port or 80
        except ValueError:
            raise self.fail(f"{where}.to", f"bad port in {target!r}") from None
        if parts.scheme != "http" and parts.port is None:
            raise self.fail(f"{where}.to", f"{parts.scheme} targets need a port")
        node = body.get("node")
        if node is None:
            node = self.source_node(source, workloads, nodes)
        if node not in nodes:
            raise self.fail(f"{where}.node", f"unknown node {node!r}; nodes are {', '.join(nodes)}")
        rate = self.number(body.get("rate"), f"{where}.rate", high=MAX_RATE, default=0.0)
        users = int(
            self.number(
                body.get("users"), f"{where}.users", high=MAX_USERS, default=0.0, integer=True
            )
        )
        if (rate > 0) == (users > 0):
            raise self.fail(
                where, "expected exactly one of rate (open loop) or users (closed loop)"
            )
        mix = self.mix(body, where, parts.path or "/")
        start = self.number(body.get("start"), f"{where}.start", default=0.0)
        stop = self.number(body.get("stop"), f"{where}.stop", default=duration)
        return Traffic(
            name=str(body.get("name") or where),
            source=source,
            node=str(node),
            protocol=parts.scheme,
            host=parts.hostname,
            port=port,
            rate=rate,
            users=users,
            think=self.number(
                body.get("thinkTime"), f"{where}.thinkTime", high=MAX_SECONDS, default=0.0
            ),
            mix=mix,
            start=start,
            stop=min(stop, duration),
        )

    def source_node(
        self, source: Any, workloads: dict[str, Workload], nodes: tuple[str, ...]
    ) -> str:
        if isinstance(source, str):
            namespace, _, account = source.partition("/")
            for workload in workloads.values():
                if (
                    workload.service.startswith(namespace + "/")
                    and workload.service_account == account
                ):
                    return workload.nodes[0]
        return nodes[0]

    def mix(self, body: dict[str, Any], where: str, default_path: str) -> tuple[RequestKind, ...]:
        items = self.seq(body.get("mix"), f"{where}.mix")
        if not items:
            items = [
                {
                    "method": body.get("method", "GET"),
                    "path": body.get("path", default_path),
                    "headers": body.get("headers"),
                }
            ]
        out = []
        for i, item in enumerate(items):
            w = f"{where}.mix[{i}]"
            spec = self.mapping(item, w)
            method = str(spec.get("method", "GET")).upper()
            path = spec.get("path", default_path)
            if not isinstance(path, str) or not path.startswith("/"):
                raise self.fail(f"{w}.path", f"expected a path starting with /, got {path!r}")
            try:
                split_target(method, path)
            except BadRequest as exc:
                raise self.fail(f"{w}.path", f"the proxy answers 400: {exc.detail}") from None
            headers = self.mapping(spec.get("headers"), f"{w}.headers")
            out.append(
                RequestKind(
                    method,
                    path,
                    self.number(spec.get("weight"), f"{w}.weight", low=0.0, default=1.0),
                    tuple(sorted((str(k).lower(), str(v)) for k, v in headers.items())),
                )
            )
        if sum(k.weight for k in out) <= 0:
            raise self.fail(f"{where}.mix", "weights must add up to more than 0")
        return tuple(out)

    def event(
        self, value: Any, where: str, nodes: tuple[str, ...], workloads: dict[str, Workload]
    ) -> Event:
        body = dict(self.mapping(value, where))
        at = self.number(body.pop("at", None), f"{where}.at")
        action = body.pop("action", None)
        if action not in ACTIONS:
            raise self.fail(
                f"{where}.action", f"expected one of {', '.join(sorted(ACTIONS))}, got {action!r}"
            )
        if action in ("node-down", "node-up") and body.get("node") not in nodes:
            raise self.fail(f"{where}.node", f"unknown node {body.get('node')!r}")
        if action in ("endpoint-down", "endpoint-up", "latency-spike", "error-burst"):
            service = self.service_key(body.get("service"), f"{where}.service")
            if service not in workloads:
                raise self.fail(f"{where}.service", f"no workload {service!r} in workloads")
        if action in DEFAULT_FAILURE:
            failure = body.setdefault("failure", DEFAULT_FAILURE[str(action)])
            if failure not in FAILURES:
                raise self.fail(
                    f"{where}.failure", f"expected refused or unreachable, got {failure!r}"
                )
        if "replica" in body:
            self.number(body["replica"], f"{where}.replica", integer=True)
        if "until" in body:
            until = self.number(body["until"], f"{where}.until")
            if until <= at:
                raise self.fail(f"{where}.until", "must be after at")
        if action == "latency-spike":
            self.number(body.get("factor"), f"{where}.factor", low=0.0, default=1.0)
            self.number(body.get("add"), f"{where}.add", default=0.0)
        if action == "error-burst":
            self.number(body.get("errorRate"), f"{where}.errorRate", high=1.0)
        if action == "apply":
            objects = self.seq(body.get("objects"), f"{where}.objects")
            if not objects or not all(
                isinstance(o, dict) and isinstance(o.get("kind"), str) for o in objects
            ):
                raise self.fail(f"{where}.objects", "expected a list of Kubernetes objects")
        if action == "delete":
            for i, item in enumerate(self.seq(body.get("objects"), f"{where}.objects")):
                ref = self.mapping(item, f"{where}.objects[{i}]")
                if not all(isinstance(ref.get(k), str) for k in ("kind", "name")):
                    raise self.fail(f"{where}.objects[{i}]", "expected {kind, namespace, name}")
        if action == "set-split":
            name = self.service_key(body.get("split"), f"{where}.split")
            if _find(self.docs, "TrafficSplit", name) is None:
                raise self.fail(f"{where}.split", f"no TrafficSplit {name} in the manifests")
            weights = self.mapping(body.get("weights"), f"{where}.weights")
            for k, v in weights.items():
                self.number(v, f"{where}.weights.{k}", integer=True)
        if action == "set-weights":
            self._set_weights(body, where)
        if action == "set-policy":
            self.service_key(body.get("service"), f"{where}.service")
            self.mapping(body.get("annotations"), f"{where}.annotations")
        return Event(at, str(action), body)

    def slos(self, value: Any, traffic_names: list[str]) -> list[Slo]:
        """The scenario's SLOs, or those of an SLO file (its errors name that file)."""
        if self.slo_file is None:
            return [
                self.slo(s, f"slos[{i}]", traffic_names)
                for i, s in enumerate(self.seq(value, "slos"))
            ]
        try:
            items = self.seq(self.slo_file.slos, "slos")
            slos = [self.slo(s, f"slos[{i}]", traffic_names) for i, s in enumerate(items)]
            self.raw["slos"] = copy.deepcopy(items)  # the scenario's raw mapping says it all
            return slos
        except ScenarioError as exc:
            text = str(exc).removeprefix(f"{self.path.name}: ")
            raise ScenarioError(f"{self.slo_file.name}: {text}") from None

    def _set_weights(self, body: dict[str, Any], where: str) -> None:
        """``{route: ns/name, rule: name or index (optional), weights: {backend: w}}``: the
        weights of an HTTPRoute's or GRPCRoute's backendRefs, by the referenced Service name."""
        key = self.service_key(body.get("route"), f"{where}.route")
        route = _route_doc(self.docs, key)
        if route is None:
            raise self.fail(f"{where}.route", f"no HTTPRoute or GRPCRoute {key} in the manifests")
        weights = self.mapping(body.get("weights"), f"{where}.weights")
        if not weights:
            raise self.fail(f"{where}.weights", "expected backend names and their weights")
        for k, v in weights.items():
            self.number(v, f"{where}.weights.{k}", integer=True)
        rules = _weighted_rules(route, body.get("rule"))
        if rules is None:
            raise self.fail(f"{where}.rule", f"no rule {body.get('rule')!r} in {key}")
        names = {
            b.get("name") for r in rules for b in r.get("backendRefs") or [] if isinstance(b, dict)
        }
        for name in weights:
            if name not in names:
                raise self.fail(f"{where}.weights.{name}", f"no backendRef {name!r} in {key}")

    def slo(self, value: Any, where: str, traffic_names: list[str]) -> Slo:
        body = self.mapping(value, where)
        known = {"name", "service", "traffic", "successRate", "latency", "share", "from", "until"}
        for k in body:
            if k not in known:
                raise self.fail(
                    f"{where}.{k}", f"unknown key; expected one of {', '.join(sorted(known))}"
                )
        service = body.get("service")
        if service is not None:
            service = self.service_key(service, f"{where}.service")
        traffic = body.get("traffic")
        if traffic is not None and traffic not in traffic_names:
            raise self.fail(f"{where}.traffic", f"no traffic named {traffic!r}")
        success = body.get("successRate")
        if success is not None:
            success = self.number(success, f"{where}.successRate", high=1.0)
        latency = []
        for key, limit in self.mapping(body.get("latency"), f"{where}.latency").items():
            text = str(key)
            if not text.startswith("p") or not _is_number(text[1:]):
                raise self.fail(f"{where}.latency.{key}", "expected keys like p50, p99, p99.9")
            latency.append((float(text[1:]), self.number(limit, f"{where}.latency.{key}")))
        share = None
        if body.get("share") is not None:
            s = self.mapping(body["share"], f"{where}.share")
            backend = self.service_key(s.get("backend"), f"{where}.share.backend")
            share = (
                backend,
                self.number(s.get("expected"), f"{where}.share.expected", high=1.0),
                self.number(s.get("tolerance"), f"{where}.share.tolerance", high=1.0, default=0.02),
            )
            if service is None:
                raise self.fail(f"{where}.service", "a share SLO needs the root service")
        if success is None and not latency and share is None:
            raise self.fail(where, "expected at least one of successRate, latency, share")
        end = body.get("until")
        return Slo(
            name=str(body.get("name") or where),
            service=service,
            traffic=traffic,
            success_rate=success,
            latency=tuple(sorted(latency)),
            share=share,
            start=self.number(body.get("from"), f"{where}.from", default=0.0),
            end=None if end is None else self.number(end, f"{where}.until"),
        )


def _show(value: Any) -> str:
    return repr(value) if len(repr(value)) <= 80 else repr(value)[:77] + "..."


def _safe_name(text: str) -> str:
    """A directory's name as a scenario name (output directories are named after it)."""
    name = re.sub(r"[^A-Za-z0-9._-]", "-", text).lstrip(".-_")[:63]
    return name or "scenario"


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _find(docs: list[dict[str, Any]], kind: str, key: str) -> dict[str, Any] | None:
    namespace, _, name = key.partition("/")
    for doc in docs:
        meta = doc.get("metadata") or {}
        if (
            doc.get("kind") == kind
            and meta.get("name") == name
            and (meta.get("namespace") or "default") == namespace
        ):
            return doc
    return None


def _route_doc(docs: list[dict[str, Any]], key: str) -> dict[str, Any] | None:
    return _find(docs, "HTTPRoute", key) or _find(docs, "GRPCRoute", key)


def _weighted_rules(route: dict[str, Any], rule: Any) -> list[dict[str, Any]] | None:
    """The rules ``set-weights`` changes: the one named (or at that index), else every rule."""
    spec = route.get("spec")
    found = spec.get("rules") if isinstance(spec, dict) else None
    rules = [r for r in found if isinstance(r, dict)] if isinstance(found, list) else []
    if rule is None:
        return rules
    if isinstance(rule, int) and not isinstance(rule, bool):
        return [rules[rule]] if 0 <= rule < len(rules) else None
    chosen = [r for r in rules if r.get("name") == rule]
    return chosen or None


def _service_doc(service: str, port: int, target_port: int) -> dict[str, Any]:
    namespace, _, name = service.partition("/")
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"ports": [{"name": "http", "port": port, "targetPort": target_port}]},
    }


def generated_objects(
    docs: list[dict[str, Any]], workloads: dict[str, Workload]
) -> list[dict[str, Any]]:
    """Pods, EndpointSlices (and Services) for workloads the manifests do not back with slices.

    Pod IPs come from 10.244.0.0/16 in workload order: deterministic for a scenario."""
    sliced = {
        f"{(d.get('metadata') or {}).get('namespace') or 'default'}/"
        f"{((d.get('metadata') or {}).get('labels') or {}).get('kubernetes.io/service-name')}"
        for d in docs
        if d.get("kind") == "EndpointSlice"
    }
    out: list[dict[str, Any]] = []
    counter = 0
    for key, workload in sorted(workloads.items()):
        namespace, _, name = key.partition("/")
        if _find(docs, "Service", key) is None:
            out.append(_service_doc(key, workload.port, workload.target_port))
        if key in sliced:
            continue
        endpoints = []
        for j in range(workload.replicas):
            counter += 1
            ip = f"10.244.{counter // 250}.{counter % 250 + 2}"
            pod = f"{name}-{j}"
            node = workload.nodes[j % len(workload.nodes)]
            out.append(
                {
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "metadata": {"name": pod, "namespace": namespace},
                    "spec": {"serviceAccountName": workload.service_account, "nodeName": node},
                    "status": {"podIP": ip},
                }
            )
            endpoints.append(
                {
                    "addresses": [ip],
                    "conditions": {"ready": True},
                    "nodeName": node,
                    "targetRef": {"kind": "Pod", "name": pod},
                }
            )
        service_doc = _find(docs, "Service", key) or _service_doc(
            key, workload.port, workload.target_port
        )
        ports = [
            {"name": p.get("name", ""), "port": _target(p)}
            for p in (service_doc.get("spec") or {}).get("ports") or []
        ]
        out.append(
            {
                "apiVersion": "discovery.k8s.io/v1",
                "kind": "EndpointSlice",
                "metadata": {
                    "name": f"{name}-sim",
                    "namespace": namespace,
                    "labels": {"kubernetes.io/service-name": name},
                },
                "addressType": "IPv4",
                "ports": ports,
                "endpoints": endpoints,
            }
        )
    return out


TUNNEL_PORT = 15008  # the proxies' tunnel port (mesh.proxy.mtls), as the chart sets it


def proxy_pods(settings: Settings, nodes: tuple[str, ...]) -> list[dict[str, Any]]:
    """With mTLS on, the node proxy of each of the scenario's nodes, as the controller reads
    them (kind ``ProxyPod``): the core then gives each node its tunnel address
    (mesh.core.topology.tunnel_addresses), and the simulator takes a request to a pod of
    another node through it (Router.tunnel_peer), as the proxy does. IPs from 10.245.0.0/16."""
    namespace, account = settings.proxy_account
    return [
        {
            "apiVersion": "v1",
            "kind": "ProxyPod",
            "metadata": {
                "name": f"simmesh-proxy-{i}",
                "namespace": namespace,
                "labels": {PROXY_NAME_LABEL: PROXY_NAME},
            },
            "spec": {
                "nodeName": node,
                "serviceAccountName": account,
                "containers": [
                    {
                        "name": "proxy",
                        "ports": [{"name": TUNNEL_PORT_NAME, "containerPort": TUNNEL_PORT}],
                    }
                ],
            },
            "status": {
                "podIP": f"10.245.{i // 250}.{i % 250 + 1}",
                "phase": "Running",
                "conditions": [{"type": "Ready", "status": "True"}],
            },
        }
        for i, node in enumerate(nodes)
    ]


def client_pods(docs: list[dict[str, Any]], traffic: list[Traffic]) -> list[dict[str, Any]]:
    """A Pod for each traffic source identity that no pod has, on the traffic's node, so the
    local mesh has an address to send from with that identity (the simulator passes the
    identity itself; the extra pod only adds the address to the config's identities)."""
    known = set()
    for doc in docs:
        if doc.get("kind") == "Pod":
            meta, spec = doc.get("metadata") or {}, doc.get("spec") or {}
            known.add(f"{meta.get('namespace') or 'default'}/{spec.get('serviceAccountName')}")
    out: list[dict[str, Any]] = []
    for t in traffic:
        if t.source is None or t.source in known:
            continue
        known.add(t.source)
        namespace, _, account = t.source.partition("/")
        out.append(
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": f"client-{account}", "namespace": namespace},
                "spec": {"serviceAccountName": account, "nodeName": t.node},
                "status": {"podIP": f"10.244.254.{len(out) + 2}"},
            }
        )
    return out


def _target(port: dict[str, Any]) -> int:
    target = port.get("targetPort", port.get("port"))
    return (
        int(str(target))
        if isinstance(target, int) or (str(target).isascii() and str(target).isdigit())
        else int(str(port.get("port", 80)))
    )


def with_event_objects(docs: list[dict[str, Any]], event: Event) -> list[dict[str, Any]]:
    """The manifests after a policy event (apply, delete, set-split, set-weights,
    set-policy)."""
    docs = copy.deepcopy(docs)
    params = event.params
    if event.action == "apply":
        for obj in params["objects"]:
            meta = obj.get("metadata") or {}
            key = f"{meta.get('namespace') or 'default'}/{meta.get('name')}"
            old = _find(docs, obj["kind"], key)
            if old is not None:
                docs.remove(old)
            docs.append(copy.deepcopy(obj))
    elif event.action == "delete":
        for ref in params["objects"]:
            old = _find(docs, ref["kind"], f"{ref.get('namespace') or 'default'}/{ref['name']}")
            if old is not None:
                docs.remove(old)
    elif event.action == "set-split":
        split = _find(docs, "TrafficSplit", params["split"])
        weights = params.get("weights") or {}
        # The split may be gone (deleted on the timeline or by a what-if change), or be a
        # replacement of a different shape: then there is nothing to set.
        backends = ((split or {}).get("spec") or {}).get("backends")
        for backend in backends if isinstance(backends, list) else []:
            if isinstance(backend, dict) and backend.get("service") in weights:
                backend["weight"] = int(weights[backend["service"]])
    elif event.action == "set-weights":
        route = _route_doc(docs, params["route"])
        assert route is not None
        weights = params.get("weights") or {}
        for rule in _weighted_rules(route, params.get("rule")) or []:
            for backend in rule.get("backendRefs") or []:
                if backend.get("name") in weights:
                    backend["weight"] = int(weights[backend["name"]])
    elif event.action == "set-policy":
        service = _find(docs, "Service", params["service"])
        if service is not None:
            annotate(service, params.get("annotations") or {})
    return docs


def annotate(service: dict[str, Any], policies: dict[str, Any]) -> None:
    """Policies as Service annotations: short names get the ``simmesh.io/`` prefix."""
    target = service.setdefault("metadata", {}).setdefault("annotations", {})
    for name, value in policies.items():
        full = name if "/" in name else f"simmesh.io/{name}"
        target[full] = str(value).lower() if isinstance(value, bool) else str(value)


# ---------------------------------------------------------------------------------------------
# Budget


BYTES_PER_REQUEST = 120  # a recorded row (26 bytes) and its share of the final aggregation
BYTES_PER_INFLIGHT = 2048  # a request in flight: events, decision, timers
BYTES_PER_REPLICA = 4096  # generated Pod, endpoint, engine state


@dataclass(frozen=True)
class Budget:
    requests: float  # requests the run will simulate (an estimate, an upper bound for users)
    memory: float  # bytes, estimated


def estimate(scenario: Scenario) -> Budget:
    """What a run costs, from the traffic, the workloads' mean latencies and the replicas.

    Open loop: rate x active seconds. Closed loop: users x active seconds / (think time + the
    fastest workload's mean latency + the proxy's), so it errs on the side of more requests.
    In flight (Little's law): rate x the slowest mean latency, or the users."""
    means = [w.latency_mean for w in scenario.workloads.values()] or [0.0]
    fastest = min(means) + scenario.proxy_latency
    slowest = max(means) + scenario.proxy_latency
    requests = inflight = 0.0
    for traffic in scenario.traffic:
        span = max(0.0, traffic.stop - traffic.start)
        if traffic.rate > 0:
            requests += traffic.rate * span
            inflight += traffic.rate * slowest
        else:
            cycle = traffic.think + fastest
            requests += math.inf if cycle <= 0 else traffic.users * span / cycle
            inflight += traffic.users
    replicas = sum(w.replicas for w in scenario.workloads.values())
    memory = (
        requests * BYTES_PER_REQUEST + inflight * BYTES_PER_INFLIGHT + replicas * BYTES_PER_REPLICA
    )
    return Budget(requests, memory)
