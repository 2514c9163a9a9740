"""``simmesh check``: a preflight table of what the mesh needs, each row OK or FAIL with a hint.

Why: most "the mesh does not work" reports (MAESH.md: #208, #218, #648) come down to one of a
few facts: the API server is not the one expected, the SMI CRDs are missing, DNS was never
prepared (or prepared for another zone), the controller has no config, or a proxy is stuck on an
old one. Each row checks one fact and says what to do when it does not hold.

How: every check is a small async function returning a :class:`Row`; it catches its own errors
so one failure never hides the other rows. Rows that need the API server are marked failed
without a request when it is unreachable. The controller is reached at ``--controller URL``, or
else through the API server's service proxy (``services/simmesh-controller:9000/proxy``), so
``check`` works from a laptop without a port-forward. With mTLS on, a row per node proxy
shows the certificates it holds, read from its admin port's ``/certificates`` (through the API
server's pod proxy, or at ``--proxy URL``), and fails when one of its node's identities has
none or one expired (:func:`certificate_row`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp

from mesh.dns import corefile as cf
from mesh.dns import kubedns as kd
from mesh.dns.apply import KUBE_SYSTEM, DnsError, Mode, detect, mesh_coredns_ip
from mesh.dns.kube import (
    Kube,
    KubeError,
    KubeUnreachable,
    cluster_scoped,
    configmap,
    namespaced,
)

SMI_CRDS = (
    "httproutegroups.specs.smi-spec.io",
    "tcproutes.specs.smi-spec.io",
    "trafficsplits.split.smi-spec.io",
    "traffictargets.access.smi-spec.io",
    "udproutes.specs.smi-spec.io",
)
CONTROLLER_SERVICE = "simmesh-controller"
CONTROLLER_PORT = 9000
PREPARE_HINT = "run `simmesh prepare` with the controller's --zone, --namespace, --cluster-domain"
CONTROLLER_HINT = (
    "is the controller running? kubectl -n {ns} logs deploy/simmesh-controller; or pass "
    "--controller http://HOST:9000"
)
DNS_HINT = (
    "simmesh supports CoreDNS (ConfigMap coredns, or coredns-custom on AKS) and kube-dns, in "
    "namespace kube-system"
)
PROXY_SELECTOR = "app.kubernetes.io/name=simmesh-proxy"  # the chart's DaemonSet pods
PROXY_HINT = (
    "proxies apply a new config within seconds; if this persists see that node's proxy logs "
    "(kubectl -n {ns} logs -l app.kubernetes.io/name=simmesh-proxy)"
)


@dataclass(frozen=True, slots=True)
class Row:
    """One fact: OK or FAIL (``ok``); an OK row with ``warn`` is shown as WARN (with its hint)
    and does not fail the check; ``lines`` are printed under it (a proxy's certificates)."""

    name: str
    ok: bool
    detail: str
    hint: str = ""
    warn: bool = False
    lines: tuple[str, ...] = ()


class Controller(Protocol):
    """The controller's HTTP API, reached directly or through the API server."""

    where: str

    async def get(self, path: str) -> tuple[int, str]: ...


class HttpController:
    def __init__(self, url: str, *, timeout: float = 5.0) -> None:
        self.where = url.rstrip("/")
        self.timeout = aiohttp.ClientTimeout(total=timeout)

    async def get(self, path: str) -> tuple[int, str]:
        async with (
            aiohttp.ClientSession(timeout=self.timeout) as session,
            session.get(self.where + path) as response,
        ):
            return response.status, await response.text()


class ProxiedController:
    """The controller Service through the API server's service proxy."""

    def __init__(self, kube: Kube, namespace: str) -> None:
        self.kube = kube
        self.base = (
            f"/api/v1/namespaces/{namespace}/services/"
            f"http:{CONTROLLER_SERVICE}:{CONTROLLER_PORT}/proxy"
        )
        self.where = f"Service {namespace}/{CONTROLLER_SERVICE}:{CONTROLLER_PORT} (API proxy)"

    async def get(self, path: str) -> tuple[int, str]:
        return await self.kube.get_text(self.base + path)


# --------------------------------------------------------------------------- the checks


async def run_checks(
    kube: Kube | None,
    controller: Controller | None,
    settings: cf.DnsSettings,
    *,
    kube_problem: str = "",
    now: float | None = None,
    proxies: Sequence[ProxyAdmin] | None = None,
) -> list[Row]:
    """Every row, in order. ``kube`` is None when no client could be built (``kube_problem``
    says why); ``controller`` None means it cannot be reached at all. ``proxies``: the
    proxies' admin ports to read certificates from (``--proxy``); None: the proxy pods, through
    the API server."""
    rows = [await check_apiserver(kube, kube_problem)]
    kube_ok = kube is not None and rows[0].ok
    for name, check in _kube_checks(settings):
        rows.append(await check(kube) if kube_ok and kube else _skipped(name))
    rows.append(await check_controller(controller, settings.mesh_namespace))
    clock = time.time() if now is None else now
    rows.append(
        await check_proxies(
            controller, settings.mesh_namespace, now=clock, kube=kube if kube_ok else None
        )
    )
    if proxies is not None:
        rows += await check_certificates(proxies)
    elif kube_ok and kube is not None:
        rows += await check_proxy_pod_certificates(kube, settings.mesh_namespace)
    return rows


def _kube_checks(
    settings: cf.DnsSettings,
) -> list[tuple[str, Callable[[Kube], Awaitable[Row]]]]:
    return [
        ("SMI CRDs", check_crds),
        ("mesh namespace", lambda kube: check_namespace(kube, settings.mesh_namespace)),
        ("DNS", lambda kube: check_dns(kube, settings)),
    ]


def _skipped(name: str) -> Row:
    return Row(name, False, "not checked: the API server is unreachable", "fix the first row")


async def check_apiserver(kube: Kube | None, problem: str = "") -> Row:
    hint = "check --kubeconfig / --context, the network path and your credentials"
    if kube is None:
        return Row("API server", False, problem or "no client", hint)
    try:
        version = await kube.get("/version") or {}
    except (KubeError, KubeUnreachable) as exc:
        return Row("API server", False, str(exc), hint)
    return Row("API server", True, f"{kube.server}, Kubernetes {version.get('gitVersion', '?')}")


async def check_crds(kube: Kube) -> Row:
    try:
        missing = [name for name in SMI_CRDS if not await _established(kube, name)]
    except (KubeError, KubeUnreachable) as exc:
        return Row("SMI CRDs", False, str(exc), "check that you may read CRDs")
    if missing:
        detail = f"{len(SMI_CRDS) - len(missing)}/{len(SMI_CRDS)} established; missing: "
        hint = "install the chart (its crds/ directory) or kubectl apply -f charts/simmesh/crds"
        return Row("SMI CRDs", False, detail + ", ".join(missing), hint)
    return Row("SMI CRDs", True, f"{len(SMI_CRDS)}/{len(SMI_CRDS)} established")


async def _established(kube: Kube, name: str) -> bool:
    path = cluster_scoped("apiextensions.k8s.io/v1", "customresourcedefinitions", name)
    crd = await kube.get(path)
    conditions = ((crd or {}).get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Established" and c.get("status") == "True" for c in conditions)


async def check_namespace(kube: Kube, namespace: str) -> Row:
    try:
        found = await kube.get(cluster_scoped("v1", "namespaces", namespace))
    except (KubeError, KubeUnreachable) as exc:
        return Row("mesh namespace", False, str(exc))
    if found is None:
        hint = "helm install ... --namespace {ns} --create-namespace (or pass --namespace)"
        return Row("mesh namespace", False, f"{namespace} not found", hint.format(ns=namespace))
    return Row("mesh namespace", True, namespace)


async def check_dns(kube: Kube, settings: cf.DnsSettings) -> Row:
    try:
        dns = await detect(kube)
        state, detail = await _dns_state(kube, dns.mode, dns.configmap, settings)
    except (DnsError, cf.CorefileError, KubeError, KubeUnreachable) as exc:
        return Row("DNS", False, str(exc), DNS_HINT)
    where = f"{dns.mode.value}, ConfigMap {KUBE_SYSTEM}/{dns.configmap_name}"
    if state is cf.BlockState.CURRENT:
        return Row("DNS", True, f"{where}: {detail}")
    return Row("DNS", False, f"{where}: {detail}", PREPARE_HINT)


async def _dns_state(
    kube: Kube, mode: Mode, cm: dict[str, Any] | None, settings: cf.DnsSettings
) -> tuple[cf.BlockState, str]:
    data = (cm or {}).get("data") or {}
    if mode is Mode.COREDNS_CUSTOM:
        state = cf.custom_state(data, settings)
        return state, _describe(state, settings, f"key {cf.CUSTOM_KEY}")
    if mode is Mode.COREDNS:
        corefile = data.get("Corefile", "")
        state = cf.state(corefile, settings)
        detail = _describe(state, settings, "server block")
        if state is cf.BlockState.STALE:
            detail += f" (simmesh blocks for zones: {', '.join(cf.block_zones(corefile))})"
        return state, detail
    return await _kube_dns_state(kube, cm, settings)


async def _kube_dns_state(
    kube: Kube, cm: dict[str, Any] | None, settings: cf.DnsSettings
) -> tuple[cf.BlockState, str]:
    parts = kd.ConfigMapParts.of(cm) if cm is not None else None
    try:
        ip = await mesh_coredns_ip(kube, settings.mesh_namespace)
    except DnsError as exc:
        return cf.BlockState.ABSENT, str(exc)
    state = kd.kubedns_state(parts, zone=settings.zone, server_ip=ip)
    servers = kd.delegated_to(parts, settings.zone)
    target = ", ".join(servers) or "nothing"
    what = f"stubDomains {settings.zone} -> {target} (mesh CoreDNS at {ip})"
    if state is cf.BlockState.CURRENT:
        return state, await _mesh_corefile_state(kube, settings, what)
    return state, what


async def _mesh_corefile_state(kube: Kube, settings: cf.DnsSettings, what: str) -> str:
    cm = await kube.get(configmap(settings.mesh_namespace, kd.MESH_COREDNS)) or {}
    corefile = (cm.get("data") or {}).get("Corefile", "")
    if corefile.split() != kd.mesh_corefile(settings).split():
        raise DnsError(
            f"ConfigMap {settings.mesh_namespace}/{kd.MESH_COREDNS}: its Corefile is not the one "
            f"prepare writes for zone {settings.zone}; run `simmesh prepare`"
        )
    return what


def _describe(state: cf.BlockState, settings: cf.DnsSettings, what: str) -> str:
    if state is cf.BlockState.CURRENT:
        return f"{what} maps {settings.zone} to namespace {settings.mesh_namespace}"
    if state is cf.BlockState.ABSENT:
        return f"no simmesh {what}"
    return f"{what} differs from what prepare writes for zone {settings.zone}"


# --------------------------------------------------------------------------- the controller


async def check_controller(controller: Controller | None, namespace: str) -> Row:
    hint = CONTROLLER_HINT.format(ns=namespace)
    if controller is None:
        return Row("controller", False, "not reachable: no --controller and no API server", hint)
    try:
        status, text = await controller.get("/readyz")
    except (aiohttp.ClientError, OSError, TimeoutError, KubeUnreachable) as exc:
        return Row(
            "controller", False, f"{controller.where}/readyz: {exc or type(exc).__name__}", hint
        )
    if status != 200:
        detail = f"{controller.where}/readyz: HTTP {status} {_message(text)}"
        return Row("controller", False, detail, hint)
    return Row("controller", True, f"ready ({controller.where})")


async def check_proxies(
    controller: Controller | None, namespace: str, *, now: float, kube: Kube | None = None
) -> Row:
    """Every proxy on the controller's current config. With the API server at hand, "every"
    means every node that runs a proxy pod (PROXY_SELECTOR in the mesh namespace): a proxy that
    never reported is as wrong as one on an old config."""
    hint = PROXY_HINT.format(ns=namespace)
    if controller is None:
        return Row("proxies", False, "not checked: the controller is not reachable", hint)
    try:
        status, text = await controller.get("/api/v1/nodes")
        report = _parse_nodes(status, text)
    except (aiohttp.ClientError, OSError, TimeoutError, KubeUnreachable, ValueError) as exc:
        return Row("proxies", False, f"{controller.where}/api/v1/nodes: {exc}", hint)
    pods = None
    if kube is not None:
        try:
            pods = await kube.list(
                namespaced("v1", "pods", namespace), label_selector=PROXY_SELECTOR
            )
        except (KubeError, KubeUnreachable) as exc:
            return Row("proxies", False, f"listing the proxy pods: {exc}", hint)
    return _proxies_row(report, pods, namespace=namespace, now=now, hint=hint)


def _parse_nodes(status: int, text: str) -> dict[str, Any]:
    if status != 200:
        raise ValueError(f"HTTP {status} {_message(text)}")
    data = json.loads(text)
    if not isinstance(data, dict) or not isinstance(data.get("nodes"), list):
        raise ValueError('expected JSON {"version": ..., "nodes": [...]}')
    return data


def _message(text: str) -> str:
    """The message of a Kubernetes Status answer (service proxy errors), else the text."""
    try:
        body = json.loads(text)
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("message"), str):
        return str(body["message"])
    return text.strip()[:200]


def _proxies_row(
    report: dict[str, Any],
    pods: list[dict[str, Any]] | None,
    *,
    namespace: str,
    now: float,
    hint: str,
) -> Row:
    current, nodes = report.get("version"), report["nodes"]
    if current is None:
        return Row("proxies", False, "the controller has no config yet", hint)
    reported = {str(n.get("node")): n for n in nodes}
    if pods is None:  # no API server at hand: the proxies that reported are all there is
        if not nodes:
            return Row("proxies", False, "no proxy has reported to the controller yet", hint)
        return _versions_row(current, sorted(reported), reported, [], now=now, hint=hint)
    if not pods:
        detail = f"no proxy pod ({PROXY_SELECTOR}) in namespace {namespace}"
        return Row("proxies", False, detail, hint)
    expected: list[str] = []
    problems: list[str] = []
    # During a rollout a node has a terminating proxy beside its replacement: only the one
    # that stays counts (the other drains, unready once it no longer accepts, and goes).
    staying = {_node(pod) for pod in pods if not _terminating(pod)}
    for pod in pods:
        name = (pod.get("metadata") or {}).get("name", "?")
        node = _node(pod)
        if _terminating(pod) and node in staying:
            continue
        unready = "" if _ready(pod) else ", not ready"
        if not node:
            problems.append(f"pod {name} is not scheduled")
        elif node not in reported:
            problems.append(f"{node} has not reported (pod {name}{unready})")
        elif unready:
            problems.append(f"{node}'s pod {name} is not ready")
        expected.append(str(node or name))
    return _versions_row(current, expected, reported, problems, now=now, hint=hint)


def _versions_row(
    current: str,
    expected: list[str],
    reported: dict[str, dict[str, Any]],
    problems: list[str],
    *,
    now: float,
    hint: str,
) -> Row:
    """OK when every expected node reported the current version and nothing else is wrong."""
    on_version = [n for n in expected if reported.get(n, {}).get("version") == current]
    behind = [reported[n] for n in expected if n in reported and n not in on_version]
    problems = problems + [_lagging(n, now) for n in behind]
    if not problems:
        return Row("proxies", True, f"{len(on_version)}/{len(expected)} on version {current}")
    off = len(expected) - len(on_version)
    detail = f"{off}/{len(expected)} not on version {current}: {', '.join(problems)}"
    return Row("proxies", False, detail, hint)


def _node(pod: dict[str, Any]) -> str | None:
    node = (pod.get("spec") or {}).get("nodeName")
    return str(node) if node else None


def _terminating(pod: dict[str, Any]) -> bool:
    return bool((pod.get("metadata") or {}).get("deletionTimestamp"))


def _ready(pod: dict[str, Any]) -> bool:
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def _lagging(node: dict[str, Any], now: float) -> str:
    seen = node.get("lastSeen")
    age = f", last seen {max(0.0, now - float(seen)):.0f}s ago" if seen is not None else ""
    return f"{node.get('node')} on {node.get('version')}{age}"


# --------------------------------------------------------------------------- certificates

ADMIN_PORT = 9901  # the chart's proxy admin port (container port named admin)
CERTIFICATES_HINT = (
    "a proxy asks the controller's CA for each ServiceAccount with a pod on its node: see "
    "`kubectl get csr` (a denial names its reason), the controller's and that proxy's logs"
)
RENEWAL_HINT = (
    "the proxy renews at half of a certificate's lifetime: renewals are failing (see "
    "`kubectl get csr` and the proxy's logs); it stops tunnelling that identity at expiry"
)
ROOT_HINT = "rotate the root before it expires: docs/security.md, Roots and rotation"
ROOT_WARNING = 30 * 86400.0  # a trust root that expires within 30 days is a warning
ROOTS_HINT = (
    "a proxy re-reads the trust bundle every --trust-bundle-refresh (30 s) while a new root is "
    "announced; one that stays behind refuses its peers' certificates of that root once it "
    "signs: its /certificates and logs ('trust bundle'), docs/security.md, Roots and rotation"
)
LATE_RENEWAL = 60.0  # seconds past its renewal time before a certificate is a warning
LOW_LIFETIME = 0.1  # or less than this fraction of its lifetime left
UNTRACKED_LOW_LIFETIME = 0.25  # without a certificate manager's renewal time: a quarter


class ProxyAdmin(Protocol):
    """A node proxy's admin port, reached directly or through the API server."""

    where: str

    async def get(self, path: str) -> tuple[int, str]: ...


class HttpProxy(HttpController):
    """``--proxy URL``: a proxy's admin port (e.g. the local mesh's)."""


class PodProxy:
    """A proxy pod's admin port through the API server's pod proxy (``pods/proxy``)."""

    def __init__(self, kube: Kube, namespace: str, pod: str, port: int) -> None:
        self.kube = kube
        self.base = f"/api/v1/namespaces/{namespace}/pods/{pod}:{port}/proxy"
        self.where = f"pod {namespace}/{pod}:{port} (API proxy)"

    async def get(self, path: str) -> tuple[int, str]:
        return await self.kube.get_text(self.base + path)


async def check_proxy_pod_certificates(kube: Kube, namespace: str) -> list[Row]:
    """The certificates of every proxy pod that stays (not one terminating beside its
    replacement). With no proxy pod rendered with a tunnel port the chart runs mTLS off and
    no proxy is asked (reading them needs ``get`` on ``pods/proxy``)."""
    try:
        pods = await kube.list(namespaced("v1", "pods", namespace), label_selector=PROXY_SELECTOR)
    except (KubeError, KubeUnreachable) as exc:
        return [Row("certificates", False, f"listing the proxy pods: {exc}", CERTIFICATES_HINT)]
    staying = {_node(pod) for pod in pods if not _terminating(pod)}
    pods = [p for p in pods if not (_terminating(p) and _node(p) in staying) and _node(p)]
    if not any(_port(pod, "tunnel") is not None for pod in pods):
        return [Row("certificates", True, "mTLS off (no proxy pod has a tunnel port)")]
    admins: list[ProxyAdmin] = []
    for pod in sorted(pods, key=lambda p: str(_node(p))):
        name = str((pod.get("metadata") or {}).get("name", "?"))
        admins.append(PodProxy(kube, namespace, name, _port(pod, "admin") or ADMIN_PORT))
    return await check_certificates(admins)


def _port(pod: dict[str, Any], name: str) -> int | None:
    for container in (pod.get("spec") or {}).get("containers") or []:
        for port in container.get("ports") or []:
            if port.get("name") == name and isinstance(port.get("containerPort"), int):
                return int(port["containerPort"])
    return None


async def check_certificates(proxies: Sequence[ProxyAdmin]) -> list[Row]:
    """A row per proxy with mTLS on (its identities, their expiry, the trust roots); one row
    when every proxy runs with mTLS off."""
    answers: list[tuple[ProxyAdmin, dict[str, Any] | Row]] = []
    for proxy in proxies:
        answers.append((proxy, await _certificates_of(proxy)))
    off = [a for _, a in answers if isinstance(a, dict) and a.get("mtls") == "off"]
    if answers and len(off) == len(answers):
        return [Row("certificates", True, f"mTLS off on {_count(len(off), 'proxy', 'proxies')}")]
    rows: list[Row] = []
    for proxy, answer in answers:
        rows.append(answer if isinstance(answer, Row) else certificate_row(answer, proxy.where))
    agreed = roots_row([(p.where, a) for p, a in answers if isinstance(a, dict)])
    if agreed is not None:
        rows.append(agreed)
    return rows


def roots_row(states: Sequence[tuple[str, dict[str, Any]]]) -> Row | None:
    """Whether the proxies with mTLS on trust the same roots (None: fewer than two of them).
    WARN when they differ: for a few seconds while a new root is announced that is expected;
    a proxy that stays behind will refuse its peers' certificates of that root."""
    trusted = {
        str(state.get("node") or where): {
            str(r.get("fingerprint")) for r in state.get("roots") or [] if isinstance(r, dict)
        }
        for where, state in states
        if state.get("mtls") not in (None, "off")
    }
    if len(trusted) < 2:
        return None
    every = set().union(*trusted.values())
    behind = {
        node: sorted(every - roots) for node, roots in sorted(trusted.items()) if every - roots
    }
    if not behind:
        return Row(
            "trust roots", True, f"the same {_count(len(every), 'root', 'roots')} on every proxy"
        )
    lines = tuple(
        f"{node} does not trust {', '.join(_short(f) for f in missing)}"
        for node, missing in behind.items()
    )
    who = _count(len(behind), "proxy trusts", "proxies trust")
    detail = f"{who} fewer roots than the others ({len(trusted)} with mTLS on)"
    return Row("trust roots", True, detail, ROOTS_HINT, warn=True, lines=lines)


async def _certificates_of(proxy: ProxyAdmin) -> dict[str, Any] | Row:
    name = f"certificates {proxy.where}"
    try:
        status, text = await proxy.get("/certificates")
    except (aiohttp.ClientError, OSError, TimeoutError, KubeUnreachable) as exc:
        return Row(name, False, f"{proxy.where}/certificates: {exc or type(exc).__name__}")
    if status != 200:
        hint = "a proxy older than this simmesh has no /certificates" if status == 404 else ""
        return Row(name, False, f"{proxy.where}/certificates: HTTP {status} {_message(text)}", hint)
    try:
        data = json.loads(text)
    except ValueError:
        data = None
    if not isinstance(data, dict) or not isinstance(data.get("identities"), list):
        return Row(name, False, f"{proxy.where}/certificates: not the JSON a proxy answers")
    return data


def certificate_row(state: dict[str, Any], where: str = "") -> Row:
    """One proxy's certificates judged: FAIL when the node has a pod of an identity the proxy
    holds no certificate for, or one that expired, or a root that expired; WARN when a
    certificate is close to expiry (:func:`_renewal_late`) or a root expires within 30 days.
    The lines list each certificate and root."""
    node = str(state.get("node") or where)
    name = f"certificates {node}"
    mode = str(state.get("mtls", "?"))
    if mode == "off":
        return Row(name, True, "mTLS off")
    identities = [i for i in state.get("identities") or [] if isinstance(i, dict)]
    roots = [r for r in state.get("roots") or [] if isinstance(r, dict)]
    wanted = [str(w) for w in state.get("wanted") or []]
    missing = [str(m) for m in state.get("missing") or []]
    pending = ((state.get("manager") or {}).get("pending")) or {}
    lines = [_identity_line(item) for item in identities]
    lines += [_root_line(root) for root in roots]
    failures: list[str] = []
    warnings: list[str] = []
    hints: list[str] = []
    for identity in missing:
        why = (pending.get(identity) or {}).get("error")
        failures.append(f"no certificate for {identity}" + (f" ({why})" if why else ""))
    if missing:
        hints.append(CERTIFICATES_HINT)
    trusted = {str(r.get("fingerprint")) for r in roots}
    for item in identities:
        if "root" in item and item["root"] not in trusted:  # older proxies name no root
            failures.append(f"{item.get('identity')} is signed by no root it trusts")
    for item in identities:
        left = float(item.get("secondsToExpiry", 0.0))
        lifetime = float(item.get("lifetimeSeconds") or 0.0)
        renewal = item.get("secondsToRenewal")
        if left <= 0:
            failures.append(f"{item.get('identity')} expired {_span(-left)} ago")
        elif _renewal_late(left, lifetime, renewal):
            warnings.append(f"{item.get('identity')} expires in {_span(left)}")
        else:
            continue
        if RENEWAL_HINT not in hints:
            hints.append(RENEWAL_HINT)
    if identities and not roots:
        failures.append("no trust root")
    for root in roots:
        left = float(root.get("secondsToExpiry", 0.0))
        short = _short(str(root.get("fingerprint", "?")))
        if left <= 0:
            failures.append(f"root {short} expired")
        elif left < ROOT_WARNING:
            warnings.append(f"root {short} expires in {_span(left)}")
        else:
            continue
        if ROOT_HINT not in hints:
            hints.append(ROOT_HINT)
    domain = state.get("trustDomain") or "?"
    held = f"{len(wanted) - len(missing)}/{len(wanted)} identities of the node's pods held"
    head = f"mTLS {mode}, trust domain {domain}, {held}"
    problems = failures + warnings
    detail = head + (": " + "; ".join(problems) if problems else "")
    return Row(
        name,
        not failures,
        detail,
        " ".join(hints),
        warn=bool(warnings) and not failures,
        lines=tuple(lines),
    )


def _renewal_late(left: float, lifetime: float, renewal: Any) -> bool:
    """Close to expiry: past the manager's renewal time by a minute, or less than a tenth of
    the lifetime left; with no renewal time known (no manager), less than a quarter."""
    if renewal is not None and float(renewal) < -LATE_RENEWAL:
        return True
    low = LOW_LIFETIME if renewal is not None else UNTRACKED_LOW_LIFETIME
    return lifetime > 0 and left < lifetime * low


def _identity_line(item: dict[str, Any]) -> str:
    left = float(item.get("secondsToExpiry", 0.0))
    when = f"expires in {_span(left)}" if left > 0 else f"EXPIRED {_span(-left)} ago"
    age = float(item.get("ageSeconds", 0.0))
    renewal = item.get("secondsToRenewal")
    renew = ""
    if renewal is not None:
        renewal = float(renewal)
        renew = f", renewal in {_span(renewal)}" if renewal > 0 else ", renewal due"
    root = f", root {_short(str(item['root']))}" if item.get("root") else ""
    return (
        f"{item.get('spiffeId') or item.get('identity')}  {when} ({item.get('notAfter')}), "
        f"issued {_span(age)} ago{renew}{root}"
    )


def _root_line(root: dict[str, Any]) -> str:
    left = float(root.get("secondsToExpiry", 0.0))
    when = f"expires in {_span(left)}" if left > 0 else "EXPIRED"
    short = _short(str(root.get("fingerprint", "?")))
    return f"root {short} {root.get('subject', '')}  {when} ({root.get('notAfter')})"


def _short(fingerprint: str) -> str:
    """``sha256:`` and the first 16 hex digits (as ``openssl x509 -fingerprint`` begins)."""
    return fingerprint[: len("sha256:") + 16]


def _span(seconds: float) -> str:
    """2d 3h, 5h 12m, 4m 10s, 12s."""
    whole = int(seconds)
    days, rest = divmod(whole, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes}m"
    if minutes:
        return f"{minutes}m {secs}s"
    return f"{secs}s"


def _count(n: int, one: str, many: str) -> str:
    return f"{n} {one if n == 1 else many}"


# --------------------------------------------------------------------------- output


def render(rows: list[Row]) -> str:
    """The table: CHECK, RESULT, DETAIL; a failed row's hint on the line below it."""
    width = max(len("CHECK"), *(len(r.name) for r in rows))
    lines = [f"{'CHECK':<{width}}  RESULT  DETAIL"]
    for row in rows:
        result = "FAIL" if not row.ok else "WARN" if row.warn else "OK"
        lines.append(f"{row.name:<{width}}  {result:<6}  {row.detail}")
        lines += [f"{'':<{width}}  {'':<6}    {line}" for line in row.lines]
        if row.hint and (not row.ok or row.warn):
            lines.append(f"{'':<{width}}  {'':<6}  hint: {row.hint}")
    return "\n".join(lines) + "\n"
