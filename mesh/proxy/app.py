"""The ``simmesh proxy`` command.

``add_arguments(parser)`` and ``run(args)`` are what ``mesh.cli`` wires as a subcommand;
``main(argv)`` runs it standalone (``python -m mesh.proxy``). ``run`` starts the proxy and its
config source on uvloop when installed (else asyncio's loop), waits for SIGTERM or SIGINT,
then drains (:meth:`mesh.proxy.proxy.Proxy.drain`): keeps accepting for ``--drain-delay``,
stops accepting, lets in-flight requests and connections finish up to ``--drain-timeout``,
exits 0. It first raises the soft ``RLIMIT_NOFILE`` to the hard limit (as nginx, HAProxy and
Go programs do): the connection limits are derived from it (:mod:`mesh.proxy.resources`).

Every option is checked before the proxy starts (:mod:`mesh.argtypes`; ``--node`` must be a
node name, ``--bind`` must resolve, ``--upstream-ca`` must load, ``--token-file`` must hold a
token, ``--certificates local`` needs ``--ca-url`` and a ``--ca-token-file`` holding a token);
a bad one is one line on stderr and exit code 2, as is an admin port that cannot be bound.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import ssl
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mesh import argtypes
from mesh.core.config import MeshConfig
from mesh.proxy.addresses import AddressMap
from mesh.proxy.options import Options
from mesh.proxy.proxy import Proxy, settle_memory
from mesh.proxy.resources import raise_open_file_limit
from mesh.proxy.sources import ControllerSource, FileSource, read_token
from mesh.proxy.workers import Supervisor, runner

if TYPE_CHECKING:
    from mesh.proxy.certs import CertificateManager

_TIMEOUT = argtypes.seconds(high=86400.0)

log = logging.getLogger("simmesh.proxy")


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0.1 <= value <= 0.9:  # NaN fails too
        raise argparse.ArgumentTypeError(f"expected a fraction in [0.1, 0.9], got {text!r}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--config-file", metavar="FILE", help="MeshConfig JSON (watched)")
    source.add_argument(
        "--controller",
        type=argtypes.http_url,
        metavar="URL",
        help="controller base URL (long-poll)",
    )
    parser.add_argument("--node", required=True, help="this proxy's node name")
    identity = parser.add_argument_group("workload certificates (mTLS, issue 17)")
    identity.add_argument(
        "--certificates",
        choices=("off", "kubernetes", "local"),
        default="off",
        help="kubernetes: when the config turns mTLS on, hold a certificate per ServiceAccount "
        "with a pod on this node, from the controller's CA through the CSR API (in-cluster "
        "ServiceAccount token); local: the same from the CA of a local mesh (simmesh up), "
        "named by --ca-url and --ca-token-file",
    )
    identity.add_argument(
        "--ca-url",
        type=argtypes.http_url,
        metavar="URL",
        help="with --certificates local: the local mesh's CA (http://ADDRESS:PORT)",
    )
    identity.add_argument(
        "--ca-token-file",
        metavar="FILE",
        help="with --certificates local: this node's token for the local CA (it issues only "
        "the identities of this node's pods)",
    )
    identity.add_argument(
        "--certificate-dir",
        type=argtypes.existing_dir,
        metavar="DIR",
        help="write keys and certificates here (mode 0600; use a memory-backed volume); "
        "default: in memory only",
    )
    identity.add_argument(
        "--mesh-namespace",
        type=argtypes.dns_label,
        default="simmesh",
        metavar="NS",
        help="where the trust bundle ConfigMap is (default simmesh)",
    )
    identity.add_argument(
        "--tunnel-port",
        type=argtypes.integer(low=1, high=65535),
        default=15008,
        metavar="PORT",
        help="mTLS tunnel port other nodes' proxies connect to while the config has mTLS on "
        "(default 15008)",
    )
    identity.add_argument(
        "--no-tunnel-pipes",
        action="store_true",
        help="send every HTTP/1.1 request to another node's pod on a tunnel connection, "
        "decided (and counted, logged, traced) by that node's proxy one by one, instead of "
        "on a pipe that proxy relays when the caller may send the pod any request "
        "(docs/security.md, pipes)",
    )
    identity.add_argument(
        "--certificate-wait",
        type=argtypes.seconds(high=3600.0, zero=True),
        default=30.0,
        metavar="SECONDS",
        help="with mTLS on, stay unready (so other nodes do not tunnel here yet) until the "
        "certificates of this node's pods are held, for at most this long after the first "
        "config (default 30; 0: ready at once)",
    )
    identity.add_argument(
        "--renew-fraction",
        type=_fraction,
        default=0.5,
        metavar="FRACTION",
        help="renew a certificate at this fraction of its lifetime (default 0.5)",
    )
    identity.add_argument(
        "--trust-bundle-refresh",
        type=argtypes.seconds(low=1.0, high=3600.0, zero=True),
        default=30.0,
        metavar="SECONDS",
        help="re-read the trust bundle this often while holding certificates, so a root the "
        "controller announces is trusted before it signs (keep it at most half the "
        "controller's --ca-publish-delay; default 30)",
    )
    parser.add_argument("--bind", default="0.0.0.0", metavar="ADDRESS", help="listen address")
    parser.add_argument(
        "--token-file",
        metavar="FILE",
        help="proxy token sent to the controller (Authorization: Bearer), re-read on 401",
    )
    parser.add_argument(
        "--admin-port",
        type=argtypes.port,
        default=9901,
        metavar="PORT",
        help="health, readiness, /metrics and /config (0: any free port)",
    )
    parser.add_argument("--access-log", action="store_true", help="JSON access log on stdout")
    tuning = parser.add_argument_group("tuning")
    tuning.add_argument(
        "--drain-delay",
        type=argtypes.seconds(high=3600.0, zero=True),
        default=0.0,
        metavar="SECONDS",
        help="SIGTERM: keep accepting (and ready) this long, answering with Connection: close,"
        " before no longer accepting (Kubernetes: until kube-proxy has moved the traffic)",
    )
    tuning.add_argument(
        "--drain-timeout",
        type=argtypes.seconds(high=86400.0, zero=True),
        default=15.0,
        metavar="SECONDS",
        help="then how long in-flight requests and TCP flows may take before they are cut",
    )
    tuning.add_argument("--connect-timeout", type=_TIMEOUT, default=5.0, metavar="SECONDS")
    tuning.add_argument(
        "--header-timeout",
        type=_TIMEOUT,
        default=10.0,
        metavar="SECONDS",
        help="close clients whose request headers (or h2c preface) take longer (408)",
    )
    tuning.add_argument(
        "--keepalive-timeout",
        type=_TIMEOUT,
        default=60.0,
        metavar="SECONDS",
        help="close idle HTTP/1.1 keep-alive and h2c connections after this",
    )
    tuning.add_argument(
        "--body-timeout",
        type=_TIMEOUT,
        default=30.0,
        metavar="SECONDS",
        help="a request body that sends nothing for this long is cut (408, or RST_STREAM)",
    )
    tuning.add_argument(
        "--write-timeout",
        type=_TIMEOUT,
        default=30.0,
        metavar="SECONDS",
        help="a client that reads nothing of its response for this long is cut",
    )
    tuning.add_argument(
        "--upstream-timeout",
        type=_TIMEOUT,
        default=60.0,
        metavar="SECONDS",
        help="per-try timeout of services without simmesh.io/timeout (504)",
    )
    tuning.add_argument("--udp-idle-timeout", type=_TIMEOUT, default=30.0, metavar="SECONDS")
    tuning.add_argument(
        "--max-connections",
        type=argtypes.integer(low=1, high=1_000_000),
        default=10_000,
        metavar="N",
        help="open downstream connections and UDP sessions; more are closed at once",
    )
    tuning.add_argument(
        "--max-connections-per-source",
        type=argtypes.integer(low=1, high=1_000_000),
        default=None,
        metavar="N",
        help="open downstream connections and UDP sessions of one source IP (default: a tenth "
        "of --max-connections, at least 100)",
    )
    tuning.add_argument(
        "--reserved-connections",
        type=argtypes.integer(low=0, high=1_000_000),
        default=None,
        metavar="N",
        help="of --max-connections, kept for sources with an identity: sources without one "
        "share the rest (default: a tenth of --max-connections)",
    )
    tuning.add_argument(
        "--max-upstream-connections",
        type=argtypes.integer(low=1, high=10_000_000),
        default=None,
        metavar="N",
        help="upstream connections (pooled, h2c, WebSocket, TCP); a request that gets none "
        "within --connect-timeout is a 503 (default: what RLIMIT_NOFILE leaves after "
        "--max-connections)",
    )
    tuning.add_argument(
        "--max-concurrent-streams",
        type=argtypes.integer(low=1, high=10_000),
        default=100,
        metavar="N",
        help="h2c streams a client may have open on one connection "
        "(SETTINGS_MAX_CONCURRENT_STREAMS; streams beyond it are refused)",
    )
    tuning.add_argument(
        "--max-mirrors",
        type=argtypes.integer(low=0, high=100_000),
        default=64,
        metavar="N",
        help="RequestMirror copies in flight (per process); more are dropped (default 64)",
    )
    tuning.add_argument(
        "--h2-reset-rate",
        type=argtypes.integer(low=1, high=1_000_000),
        default=100,
        metavar="N",
        help="h2c streams a connection may reset while served, per second (token bucket)",
    )
    tuning.add_argument(
        "--h2-reset-burst",
        type=argtypes.integer(low=1, high=1_000_000),
        default=200,
        metavar="N",
        help="... and at once; beyond: GOAWAY(ENHANCE_YOUR_CALM) (rapid reset)",
    )
    tuning.add_argument(
        "--h2-control-rate",
        type=argtypes.integer(low=1, high=1_000_000),
        default=100,
        metavar="N",
        help="h2c SETTINGS, PING and refused HEADERS a connection may send, per second",
    )
    tuning.add_argument(
        "--h2-control-burst",
        type=argtypes.integer(low=1, high=1_000_000),
        default=1000,
        metavar="N",
        help="... and at once; beyond: GOAWAY(ENHANCE_YOUR_CALM)",
    )
    tuning.add_argument(
        "--buffer-limit",
        type=argtypes.integer(low=0, high=64 * 1024 * 1024),
        default=64 * 1024,
        metavar="BYTES",
        help="request bodies up to this size are buffered so they can be retried",
    )
    tuning.add_argument(
        "--max-header-size",
        type=argtypes.integer(low=256, high=1024 * 1024),
        default=8190,
        metavar="BYTES",
    )
    tuning.add_argument(
        "--max-response-header-size",
        type=argtypes.integer(low=1024, high=16 * 1024 * 1024),
        default=64 * 1024,
        metavar="BYTES",
        help="upstream response headers larger than this in total are a 502, never relayed",
    )
    tuning.add_argument(
        "--upstream-ca",
        metavar="FILE",
        help="verify https upstreams against this CA (default: not verified)",
    )
    tuning.add_argument(
        "--log-level", default="info", choices=("debug", "info", "warning", "error")
    )
    tuning.add_argument("--no-uvloop", action="store_true", help="use asyncio's own event loop")
    tuning.add_argument(
        "--workers",
        type=argtypes.integer(low=1, high=256),
        default=1,
        metavar="N",
        help="processes serving the same listeners (SO_REUSEPORT), one event loop each",
    )
    parser.add_argument(
        "--address-map",
        action="append",
        default=[],
        metavar="CLUSTER_CIDR=LOCAL_CIDR",
        help="reach a pod network through local addresses (local clusters and tests)",
    )


def options_from(args: argparse.Namespace) -> Options:
    return Options(
        node=args.node,
        bind=args.bind,
        admin_port=args.admin_port,
        access_log=args.access_log,
        header_timeout=args.header_timeout,
        keepalive_timeout=args.keepalive_timeout,
        body_timeout=args.body_timeout,
        write_timeout=args.write_timeout,
        upstream_timeout=args.upstream_timeout,
        max_connections=args.max_connections,
        max_upstream_connections=args.max_upstream_connections,
        max_connections_per_source=args.max_connections_per_source,
        reserved_connections=args.reserved_connections,
        max_concurrent_streams=args.max_concurrent_streams,
        max_mirrors=args.max_mirrors,
        h2_reset_rate=args.h2_reset_rate,
        h2_reset_burst=args.h2_reset_burst,
        h2_control_rate=args.h2_control_rate,
        h2_control_burst=args.h2_control_burst,
        max_response_header_size=args.max_response_header_size,
        connect_timeout=args.connect_timeout,
        drain_delay=args.drain_delay,
        certificate_wait=args.certificate_wait if args.certificates != "off" else 0.0,
        mtls_capable=args.certificates != "off",
        drain_timeout=args.drain_timeout,
        udp_idle_timeout=args.udp_idle_timeout,
        buffer_limit=args.buffer_limit,
        max_header_size=args.max_header_size,
        upstream_ca=args.upstream_ca,
        address_map=AddressMap.parse(args.address_map),
        tunnel_port=args.tunnel_port,
        tunnel_pipes=not args.no_tunnel_pipes,
        workers=args.workers,
    )


async def serve(args: argparse.Namespace) -> int:
    proxy = Proxy(options_from(args))
    runs: Proxy | Supervisor = proxy
    if args.workers > 1:
        if args.no_uvloop:
            os.environ["SIMMESH_NO_UVLOOP"] = "1"  # the workers' loop too
        runs = Supervisor(proxy, log_level=args.log_level)
    try:
        await runs.start()
    except OSError as exc:
        await runs.close()
        raise StartError(f"--admin-port {args.admin_port} on {args.bind}: {exc}") from None

    certificates = _certificates(args, proxy)

    async def apply(config: MeshConfig) -> bool:
        if certificates is not None and config.settings.mtls is not None:
            # (a config with mTLS off reaching a proxy deployed with it on comes from the
            # previous release's controller during an upgrade: the certificates stay held)
            certificates.want_config(config.settings.mtls)
        changed = await runs.apply(config)
        if changed:
            settle_memory()
        return changed

    def errors() -> None:
        proxy.metrics.count("config_errors")

    source: Any
    if args.config_file:
        source = FileSource(args.config_file, apply, status=proxy.source, on_error=errors)
    else:
        source = ControllerSource(
            args.controller,
            args.node,
            apply,
            status=proxy.source,
            on_error=errors,
            token_file=args.token_file,
            on_delta=lambda result: proxy.metrics.count("config_deltas", result),
        )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log.info("simmesh proxy for node %s; admin on %s:%s", args.node, args.bind, proxy.admin_port)
    budget = proxy.budget
    log.info(
        "limits per process: %d downstream and %d upstream connections (RLIMIT_NOFILE %d)",
        budget.downstream,
        budget.upstream,
        budget.nofile,
    )
    task = asyncio.create_task(source.run())
    tasks = [task]
    if certificates is not None:
        tasks.append(asyncio.create_task(certificates.run(), name="certificates"))
    try:
        await stop.wait()
    finally:
        for each in tasks:
            each.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        log.info(
            "draining: accepting for %.1fs more, then up to %.1fs for what is in flight",
            args.drain_delay,
            args.drain_timeout,
        )
        await runs.drain()
        await runs.close()
    log.info("stopped")
    return 0


def _certificates(args: argparse.Namespace, proxy: Proxy) -> CertificateManager | None:
    """The certificate manager (--certificates kubernetes or local), its metrics on /metrics."""
    if args.certificates == "off":
        return None
    # imported only here: cryptography and the CSR client cost a proxy without mTLS 10 MB
    from mesh.proxy.certs import CertificateManager, CertificateMetrics, CertificateSource

    source: CertificateSource
    if args.certificates == "local":
        from mesh.proxy.localca import LocalCaSource

        source = LocalCaSource(url=args.ca_url, token_file=Path(args.ca_token_file))
    else:
        from mesh.proxy.kubecsr import KubeCsrSource

        source = KubeCsrSource.in_cluster(namespace=args.mesh_namespace, node=args.node)
    # the tunnels' TLS contexts load files: without --certificate-dir, a private directory
    # on a memory-backed file system where there is one
    shm = "/dev/shm" if os.path.isdir("/dev/shm") else None
    key_dir = args.certificate_dir or tempfile.mkdtemp(prefix="simmesh-certs-", dir=shm)
    manager = CertificateManager(
        source,
        node=args.node,
        renew_fraction=args.renew_fraction,
        key_dir=Path(key_dir),
        bundle_refresh=args.trust_bundle_refresh,
    )
    manager.changed = lambda held: _load(proxy, held)
    proxy.certificate_manager = manager.state  # /certificates: renewals, failures, pending
    proxy.metrics.registry.register(CertificateMetrics(manager))
    return manager


def _load(proxy: Proxy, manager: CertificateManager) -> None:
    """The certificates held now, for the tunnels."""
    assert manager.key_dir is not None
    files = {name: manager.paths(name) for name in manager.held}
    proxy.load_certificates(
        trust_domain=manager.trust_domain,
        roots=manager.key_dir / "roots.pem",
        held={name: pair for name, pair in files.items() if pair is not None},
    )


class StartError(Exception):
    """The proxy cannot start with these options (printed on one line, exit code 2)."""


def check(args: argparse.Namespace) -> None:
    """What argparse cannot check alone; StartError naming the option."""
    try:
        argtypes.dns_subdomain(args.node)
    except argparse.ArgumentTypeError as exc:
        raise StartError(f"--node: {exc}") from None
    problem = argtypes.resolvable(args.bind, "--bind")
    if problem is not None:
        raise StartError(problem)
    try:
        AddressMap.parse(args.address_map)
    except ValueError as exc:
        raise StartError(str(exc)) from None
    if args.upstream_ca is not None:
        try:
            ssl.create_default_context(cafile=args.upstream_ca)
        except (OSError, ssl.SSLError, ValueError) as exc:
            raise StartError(f"--upstream-ca {args.upstream_ca!r}: cannot load: {exc}") from None
    if args.config_file is not None and Path(args.config_file).is_dir():
        raise StartError(f"--config-file {args.config_file!r} is a directory, expected a file")
    if args.token_file is not None:
        try:
            read_token(args.token_file)
        except ValueError as exc:
            raise StartError(f"--token-file: {exc}") from None
    local = args.certificates == "local"
    if local and (args.ca_url is None or args.ca_token_file is None):
        raise StartError("--certificates local needs --ca-url and --ca-token-file")
    if not local and (args.ca_url is not None or args.ca_token_file is not None):
        raise StartError("--ca-url and --ca-token-file go with --certificates local")
    if args.ca_token_file is not None:
        try:
            read_token(args.ca_token_file)
        except ValueError as exc:
            raise StartError(f"--ca-token-file: {exc}") from None


def run(args: argparse.Namespace) -> int:
    try:
        check(args)
    except StartError as exc:
        print(f"simmesh proxy: error: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=args.log_level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    raise_open_file_limit()
    try:
        with runner(no_uvloop=args.no_uvloop) as loop_runner:
            return loop_runner.run(serve(args))
    except StartError as exc:
        print(f"simmesh proxy: error: {exc}", file=sys.stderr)
        return 2


def main(argv: Sequence[str] | None = None) -> int:
    parser = argtypes.Parser(prog="simmesh proxy", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))
