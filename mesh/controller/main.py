"""``simmesh controller``: the stateless controller, fed by Kubernetes or a manifests directory.

Every option is checked before anything starts (one line on stderr and exit 2 for a bad one,
see :mod:`mesh.argtypes`); a listen address that cannot be bound is reported the same way.
The providers' tasks and the rebuild loop are supervised: one that dies makes ``/readyz`` 503.
SIGTERM stops it: at once no more writes to the cluster, answers for ``--drain-delay`` more
seconds (with ``Connection: close``), then every waiting long-poll is answered and it exits.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from aiohttp import web

from mesh import argtypes
from mesh.controller.api import make_app
from mesh.controller.controller import Controller

if TYPE_CHECKING:
    from mesh.controller.identity import KubeCA
from mesh.core.model import MtlsMode, Settings
from mesh.core.status import CONTROLLER_NAME
from mesh.documents import DocumentError, read_bytes
from mesh.manifests import ManifestError, read_settings

MAX_TOKEN_BYTES = 4096


def _kubeconfig(text: str) -> str:
    return text if text == "in-cluster" else argtypes.existing_file(text)


log = logging.getLogger("simmesh.controller")


def _account(text: str) -> str:
    namespace, slash, name = text.partition("/")
    if not slash:
        raise argparse.ArgumentTypeError(f"expected NAMESPACE/NAME, got {text!r}")
    return f"{argtypes.dns_label(namespace)}/{argtypes.dns_subdomain(name)}"


class Extension(Protocol):
    """Something served beside the controller (the admission gate, mesh/gate): prepared with
    the controller before any object arrives, started with its API application (routes may
    still be added) and its Kubernetes client (None with the file provider), stopped last."""

    def prepare(self, controller: Controller) -> None: ...

    async def start(self, controller: Controller, app: web.Application, api: Any) -> None: ...

    async def stop(self) -> None: ...


def add_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--manifests",
        type=argtypes.existing_dir,
        metavar="DIR",
        help="file provider: watch a manifests directory",
    )
    source.add_argument(
        "--kubeconfig", type=_kubeconfig, help="Kubernetes provider (use 'in-cluster' in a pod)"
    )
    parser.add_argument(
        "--listen", type=argtypes.host_port, default=("127.0.0.1", 9000), metavar="HOST:PORT"
    )
    parser.add_argument(
        "--settings",
        type=lambda text: Path(argtypes.existing_file(text)),
        metavar="MESH_YAML",
        help="mesh settings file (default: DIR/mesh.yaml for --manifests)",
    )
    parser.add_argument(
        "--namespace",
        type=argtypes.dns_label,
        help="the mesh namespace (shadow Services live there)",
    )
    parser.add_argument("--acl", action="store_true", help="ACL mode: deny by default")
    parser.add_argument(
        "--zone", type=argtypes.domain, help="DNS zone of mesh names (default mesh)"
    )
    parser.add_argument(
        "--cluster-domain", type=argtypes.domain, help="cluster domain (default cluster.local)"
    )
    parser.add_argument(
        "--watch-namespace", type=argtypes.dns_label, action="append", default=[], metavar="NS"
    )
    parser.add_argument(
        "--ignore-namespace", type=argtypes.dns_label, action="append", default=[], metavar="NS"
    )
    parser.add_argument(
        "--debounce", type=argtypes.seconds(high=60.0), default=0.05, metavar="SECONDS"
    )
    parser.add_argument(
        "--poll-interval",
        type=argtypes.seconds(low=0.01, high=60.0),
        default=0.5,
        metavar="SECONDS",
        help="file provider: how often the manifests directory is checked for changes",
    )
    parser.add_argument(
        "--token-file",
        metavar="FILE",
        help="proxy token: polls that name a node must carry it (the chart's Secret)",
    )
    parser.add_argument(
        "--node-ttl",
        type=argtypes.seconds(low=1.0, high=86400.0),
        default=120.0,
        metavar="SECONDS",
        help="forget a proxy that has not polled for this long (default 120)",
    )
    parser.add_argument(
        "--drain-delay",
        type=argtypes.seconds(high=3600.0, zero=True),
        default=0.0,
        metavar="SECONDS",
        help="SIGTERM: keep answering proxies this long (writing nothing to the cluster) "
        "before stopping (Kubernetes: until kube-proxy sends polls to the new controller)",
    )
    parser.add_argument(
        "--log-level", default="info", choices=("debug", "info", "warning", "error")
    )
    parser.add_argument(
        "--route-status-controller-name",
        type=argtypes.controller_name,
        default=CONTROLLER_NAME,
        metavar="DOMAIN/PATH",
        help="the controllerName of the status the controller writes on HTTPRoutes and "
        f"GRPCRoutes with a Service parent (default {CONTROLLER_NAME})",
    )
    parser.add_argument(
        "--no-route-status",
        action="store_true",
        help="write no status on HTTPRoutes and GRPCRoutes (another controller does)",
    )
    parser.add_argument(
        "--network-policies",
        action="store_true",
        help="keep a NetworkPolicy per meshed Service that admits only the node proxies to its "
        "pods (no way around the mesh; meant for --mtls strict; docs/security.md). Without "
        "it, the policies an earlier run wrote are deleted",
    )
    parser.add_argument(
        "--network-policy-owner",
        type=argtypes.dns_subdomain,
        default="simmesh-controller",
        metavar="CLUSTERROLE",
        help="the ClusterRole that owns the NetworkPolicies, so that they go with the release "
        "(default simmesh-controller, the chart's)",
    )
    parser.add_argument(
        "--network-policy-resync",
        type=argtypes.seconds(low=0.1, high=3600.0),
        default=60.0,
        metavar="SECONDS",
        help="how often the NetworkPolicies are compared with the cluster's (default 60)",
    )
    identity = parser.add_argument_group("workload identities (mTLS, issue 17)")
    identity.add_argument(
        "--mtls",
        choices=("off", "permissive", "strict"),
        help="not off: run the CA (Kubernetes provider) and list each node's identities in the "
        "config (default: mesh.yaml's mtls, else off)",
    )
    identity.add_argument(
        "--trust-domain", type=argtypes.domain, help="SPIFFE trust domain (default cluster.local)"
    )
    identity.add_argument(
        "--cert-lifetime",
        type=argtypes.seconds(low=60.0, high=30 * 86400.0, zero=True),
        default=86400.0,
        metavar="SECONDS",
        help="lifetime of workload certificates (default 86400: 24 h)",
    )
    identity.add_argument(
        "--ca-overlap",
        type=argtypes.seconds(low=60.0, high=365 * 86400.0, zero=True),
        default=2 * 86400.0,
        metavar="SECONDS",
        help="how long a replaced root stays trusted (at least --cert-lifetime; default 172800)",
    )
    identity.add_argument(
        "--ca-secret",
        type=argtypes.dns_subdomain,
        default="simmesh-ca",
        metavar="NAME",
        help="Secret (mesh namespace) holding the root's tls.crt and tls.key: brought by you, "
        "or generated on first start (default simmesh-ca)",
    )
    identity.add_argument(
        "--proxy-service-account",
        type=_account,
        metavar="NAMESPACE/NAME",
        help="the node proxies' ServiceAccount, the only requester the CA answers; its pods "
        "labelled app.kubernetes.io/name=simmesh-proxy give the tunnel addresses "
        "(default: <mesh namespace>/simmesh-proxy)",
    )
    identity.add_argument(
        "--ca-publish-delay",
        type=argtypes.seconds(low=0.0, high=86400.0, zero=True),
        default=90.0,
        metavar="SECONDS",
        help="how long a new root is in the trust bundle before it signs (at least twice the "
        "proxies' --trust-bundle-refresh, so every proxy trusts it before any presents a "
        "certificate of it; default 90)",
    )
    identity.add_argument(
        "--ca-check-interval",
        type=argtypes.seconds(low=1.0, high=3600.0, zero=True),
        default=30.0,
        metavar="SECONDS",
        help="how often the root's Secret is checked for a new root (rotation)",
    )


def settings_from(args: argparse.Namespace) -> Settings:
    if args.settings is not None:
        settings = read_settings(
            args.settings.parent
            if args.settings.name == "mesh.yaml"
            else _settings_dir(args.settings)
        )
    elif args.manifests is not None:
        settings = read_settings(args.manifests)
    else:
        settings = Settings()
    changes: dict[str, object] = {}
    if args.acl:
        changes["acl"] = True
    if args.namespace:
        changes["mesh_namespace"] = args.namespace
    if args.zone:
        changes["zone"] = args.zone
    if args.cluster_domain:
        changes["cluster_domain"] = args.cluster_domain
    if args.watch_namespace:
        changes["watch_namespaces"] = tuple(args.watch_namespace)
    if args.ignore_namespace:
        changes["ignore_namespaces"] = tuple(args.ignore_namespace)
    if args.mtls:
        changes["mtls"] = MtlsMode(args.mtls)
    if args.trust_domain:
        changes["trust_domain"] = args.trust_domain
    if args.proxy_service_account:
        changes["proxy_service_account"] = args.proxy_service_account
    return replace(settings, **changes)  # type: ignore[arg-type]


def _settings_dir(path: Path) -> Path:
    raise ManifestError(f"{path}: the settings file must be named mesh.yaml")


def read_token(path: str | None) -> str | None:
    """The proxy token from its file (whitespace around it ignored); DocumentError if unusable."""
    if path is None:
        return None
    raw = read_bytes(Path(path))
    if len(raw) > MAX_TOKEN_BYTES:
        raise DocumentError(f"{path}: a token of at most {MAX_TOKEN_BYTES} bytes expected")
    try:
        token = raw.decode("ascii").strip()
    except UnicodeDecodeError:
        raise DocumentError(f"{path}: the token must be ASCII text") from None
    if not token or any(c.isspace() or not c.isprintable() for c in token):
        raise DocumentError(f"{path}: expected one token of printable characters, no spaces")
    return token


async def _start_ca(
    api: Any, controller: Controller, settings: Settings, args: argparse.Namespace
) -> KubeCA:
    """The CA: its root loaded or generated and the trust bundle published before any CSR."""
    from datetime import timedelta

    from mesh.controller.identity import CaOptions, KubeCA

    namespace, name = settings.proxy_account
    options = CaOptions(
        trust_domain=settings.trust_domain,
        proxy_users=frozenset({f"system:serviceaccount:{namespace}:{name}"}),
        lifetime=timedelta(seconds=args.cert_lifetime),
        overlap=timedelta(seconds=args.ca_overlap),
        secret=args.ca_secret,
        check_interval=args.ca_check_interval,
        publish_delay=timedelta(seconds=args.ca_publish_delay),
    )
    authority = KubeCA(api, controller.store, namespace=settings.mesh_namespace, options=options)
    await authority.start()
    return authority


def run(args: argparse.Namespace, *, extensions: Sequence[Extension] = ()) -> int:
    host, port = args.listen
    problem = argtypes.resolvable(host, "--listen")
    if problem is not None:
        print(f"simmesh controller: error: {problem}", file=sys.stderr)
        return 2
    settings = settings_from(args)
    if args.ca_overlap < args.cert_lifetime:
        print(
            f"simmesh controller: error: --ca-overlap {args.ca_overlap:g}: expected at least "
            f"--cert-lifetime ({args.cert_lifetime:g} s), or certificates of a replaced root "
            "stop verifying before they expire",
            file=sys.stderr,
        )
        return 2
    token = read_token(args.token_file)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(
                serve(
                    args,
                    settings,
                    host or "127.0.0.1",
                    port,
                    token=token,
                    extensions=extensions,
                )
            )
    except OSError as exc:  # the listen address cannot be bound
        print(f"simmesh controller: error: --listen {host}:{port}: {exc}", file=sys.stderr)
        return 2
    return 0


async def serve(
    args: argparse.Namespace,
    settings: Settings,
    host: str,
    port: int,
    *,
    token: str | None,
    extensions: Sequence[Extension] = (),
) -> None:
    controller = Controller(settings, debounce=args.debounce, node_ttl=args.node_ttl)
    for extension in extensions:
        extension.prepare(controller)
    tasks: list[asyncio.Task[None]] = []
    background: set[asyncio.Task[Any]] = set()  # one-shot work nothing waits for
    api_client = None
    status_writer = None
    policies = None
    if args.manifests is not None:
        from mesh.controller.files import FileProvider

        provider = FileProvider(controller, args.manifests, interval=args.poll_interval)
        provider.scan()
        tasks.append(asyncio.create_task(provider.run(), name="file provider"))
    else:
        from kubernetes_asyncio import client, config

        if args.kubeconfig == "in-cluster":
            config.load_incluster_config()  # type: ignore[no-untyped-call]  # untyped upstream
        else:
            await config.load_kube_config(config_file=args.kubeconfig)
        api_client = client.ApiClient()
        from mesh.controller.kube import KubeProvider

        kube = KubeProvider(api_client, controller)
        await kube.ensure_namespace()
        await kube.load_port_assignments()
        controller.hooks.append(kube.reconcile_shadows)
        controller.hooks.append(kube.report_errors)
        if not args.no_route_status:
            from mesh.controller.status import RouteStatusWriter

            status_writer = RouteStatusWriter(
                api_client, controller, controller_name=args.route_status_controller_name
            )
            kube.observers.append(status_writer)
        tasks.append(asyncio.create_task(kube.run(), name="Kubernetes watches"))
        from mesh.controller.netpol import NetworkPolicyWriter

        policies = NetworkPolicyWriter(
            api_client,
            controller,
            owner_cluster_role=args.network_policy_owner,
            resync=args.network_policy_resync,
        )
        if args.network_policies:
            await policies.start()
            tasks.append(asyncio.create_task(policies.run(), name="NetworkPolicy resync"))
        else:
            cleanup = asyncio.create_task(policies.remove_all(), name="NetworkPolicy cleanup")
            background.add(cleanup)
            cleanup.add_done_callback(background.discard)
        if settings.mtls is not MtlsMode.OFF:
            authority = await _start_ca(api_client, controller, settings, args)
            tasks.append(asyncio.create_task(authority.run(), name="CA (CSR watch)"))
    tasks.append(asyncio.create_task(controller.run(), name="rebuild loop"))
    for task in tasks:
        controller.supervise(task, task.get_name())
    app = make_app(controller, token=token)
    started: list[Extension] = []
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=2.0)
    try:
        for extension in extensions:
            await extension.start(controller, app, api_client)
            started.append(extension)
        await runner.setup()
        await web.TCPSite(runner, host, port).start()
    except OSError:
        controller.closing = True
        for extension in started:
            await extension.stop()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await runner.cleanup()
        if api_client is not None:
            await api_client.close()
        raise
    log.info("controller API on http://%s:%d", host, port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    controller.part()
    if args.drain_delay:
        log.info("stopping: answering proxies for %.1fs more, writing nothing", args.drain_delay)
        await asyncio.sleep(args.drain_delay)
    log.info("stopping")
    await controller.close()
    if status_writer is not None:
        await status_writer.close()
    if policies is not None:
        await policies.close()
    for task in [*tasks, *background]:
        task.cancel()
    for task in [*tasks, *background]:
        with contextlib.suppress(asyncio.CancelledError):
            await task
    await runner.cleanup()
    for extension in started:
        await extension.stop()
    if api_client is not None:
        await api_client.close()
