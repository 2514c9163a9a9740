"""``simmesh controller``: the stateless controller, fed by Kubernetes or a manifests directory."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
from dataclasses import replace
from pathlib import Path

from aiohttp import web

from mesh.controller.api import make_app
from mesh.controller.controller import Controller
from mesh.core.model import Settings
from mesh.manifests import ManifestError, read_settings

log = logging.getLogger("simmesh.controller")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--manifests", type=Path, metavar="DIR", help="file provider: watch a manifests directory"
    )
    source.add_argument("--kubeconfig", help="Kubernetes provider (use 'in-cluster' in a pod)")
    parser.add_argument("--listen", default="127.0.0.1:9000", metavar="HOST:PORT")
    parser.add_argument(
        "--settings",
        type=Path,
        metavar="MESH_YAML",
        help="mesh settings file (default: DIR/mesh.yaml for --manifests)",
    )
    parser.add_argument("--namespace", help="the mesh namespace (shadow Services live there)")
    parser.add_argument("--acl", action="store_true", help="ACL mode: deny by default")
    parser.add_argument("--zone", help="DNS zone of mesh names (default mesh)")
    parser.add_argument("--cluster-domain", help="cluster domain (default cluster.local)")
    parser.add_argument("--watch-namespace", action="append", default=[], metavar="NS")
    parser.add_argument("--ignore-namespace", action="append", default=[], metavar="NS")
    parser.add_argument("--debounce", type=float, default=0.05, metavar="SECONDS")
    parser.add_argument(
        "--poll-interval",
        type=float,
        default=0.5,
        metavar="SECONDS",
        help="file provider: how often the manifests directory is checked for changes",
    )
    parser.add_argument("--log-level", default="info")


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
    return replace(settings, **changes)  # type: ignore[arg-type]


def _settings_dir(path: Path) -> Path:
    raise ManifestError(f"{path}: the settings file must be named mesh.yaml")


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    settings = settings_from(args)
    host, _, port = args.listen.rpartition(":")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args, settings, host or "127.0.0.1", int(port)))
    return 0


async def serve(args: argparse.Namespace, settings: Settings, host: str, port: int) -> None:
    controller = Controller(settings, debounce=args.debounce)
    tasks: list[asyncio.Task[None]] = []
    api_client = None
    if args.manifests is not None:
        from mesh.controller.files import FileProvider

        provider = FileProvider(controller, args.manifests, interval=args.poll_interval)
        provider.scan()
        tasks.append(asyncio.create_task(provider.run()))
    else:
        from kubernetes_asyncio import client, config

        if args.kubeconfig == "in-cluster":
            config.load_incluster_config()
        else:
            await config.load_kube_config(config_file=args.kubeconfig)
        api_client = client.ApiClient()
        from mesh.controller.kube import KubeProvider

        kube = KubeProvider(api_client, controller)
        await kube.ensure_namespace()
        await kube.load_port_assignments()
        controller.hooks.append(kube.reconcile_shadows)
        controller.hooks.append(kube.report_errors)
        tasks.append(asyncio.create_task(kube.run()))
    tasks.append(asyncio.create_task(controller.run()))
    runner = web.AppRunner(make_app(controller), access_log=None, shutdown_timeout=2.0)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    log.info("controller API on http://%s:%d", host, port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("stopping")
    await controller.close()
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError):
            await task
    await runner.cleanup()
    if api_client is not None:
        await api_client.close()
