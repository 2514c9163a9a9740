"""``simmesh controller`` with the admission gate's options (docs/gate.md).

The command is the controller's (mesh/controller/main.py) plus ``--gate-*``: with
``--gate-mode warn|enforce`` the gate is plugged in (mesh/gate/server.py), with ``off`` (the
default) the controller runs exactly as without it and the simulator is never imported. The
gate needs the Kubernetes provider (it reads its SLO ConfigMap and lists the proxies) and a
serving certificate (``--gate-cert-dir`` with tls.crt and tls.key: the chart's Secret).
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

from mesh import argtypes
from mesh.controller import main as controller
from mesh.gate.review import Mode

MAX_BUDGET = 25.0  # the webhook's timeoutSeconds is at most 30


def add_arguments(parser: argparse.ArgumentParser) -> None:
    controller.add_arguments(parser)
    gate = parser.add_argument_group("admission gate (docs/gate.md)")
    gate.add_argument(
        "--gate-mode",
        choices=[m.value for m in Mode],
        default=Mode.OFF.value,
        help="off (default), warn: allow with warnings, enforce: deny changes that break an SLO",
    )
    gate.add_argument(
        "--gate-listen",
        type=argtypes.host_port,
        default=("0.0.0.0", 9443),
        metavar="HOST:PORT",
        help="the webhook's HTTPS address (default 0.0.0.0:9443)",
    )
    gate.add_argument(
        "--gate-cert-dir",
        type=argtypes.existing_dir,
        metavar="DIR",
        help="tls.crt and tls.key of the webhook (the chart's Secret simmesh-gate-tls)",
    )
    gate.add_argument(
        "--gate-slos-configmap",
        type=argtypes.dns_subdomain,
        default="simmesh-slos",
        metavar="NAME",
        help="the ConfigMap in the mesh namespace with slos.yaml (and traffic.yaml)",
    )
    gate.add_argument(
        "--gate-budget",
        type=argtypes.seconds(low=0.5, high=MAX_BUDGET),
        default=5.0,
        metavar="SECONDS",
        help="wall time a review may simulate for (default 5); out of it: allowed with a warning",
    )
    gate.add_argument(
        "--gate-seeds",
        type=argtypes.integer(low=1, high=99),
        default=3,
        metavar="N",
        help="seeds per side (default 3: an SLO holds when it passes in 2)",
    )
    gate.add_argument(
        "--gate-duration",
        type=argtypes.seconds(low=1.0, high=3600.0),
        default=30.0,
        metavar="SECONDS",
        help="simulated seconds per run (default 30)",
    )
    gate.add_argument(
        "--gate-window",
        type=argtypes.seconds(low=1.0, high=3600.0),
        default=60.0,
        metavar="SECONDS",
        help="how often the proxies' traffic is measured (default 60)",
    )
    gate.add_argument(
        "--gate-history",
        type=argtypes.seconds(low=1.0, high=86400.0),
        default=300.0,
        metavar="SECONDS",
        help="the traffic of this many seconds of measurements is simulated (default 300)",
    )


def run(args: argparse.Namespace) -> int:
    mode = Mode(args.gate_mode)
    if mode is Mode.OFF:
        return controller.run(args)
    problem = None
    if args.manifests is not None:
        problem = "--gate-mode needs the Kubernetes provider (--kubeconfig), not --manifests"
    elif args.gate_cert_dir is None:
        problem = f"--gate-mode {mode.value} needs --gate-cert-dir (tls.crt, tls.key)"
    else:
        missing = [n for n in ("tls.crt", "tls.key") if not (args.gate_cert_dir / n).is_file()]
        if missing:
            problem = f"--gate-cert-dir {args.gate_cert_dir}: no {', '.join(missing)}"
    missing_packages = [p for p in ("simpy", "numpy") if importlib.util.find_spec(p) is None]
    if problem is None and missing_packages:
        problem = (
            f"--gate-mode {mode.value} simulates: it needs {' and '.join(missing_packages)} "
            "(pip install 'simmesh[gate]')"
        )
    if problem is not None:
        print(f"simmesh controller: error: {problem}", file=sys.stderr)
        return 2
    from mesh.gate.server import GateExtension, Options

    options = Options(
        mode=mode,
        listen=args.gate_listen,
        cert_dir=Path(args.gate_cert_dir),
        configmap=args.gate_slos_configmap,
        budget=args.gate_budget,
        seeds=args.gate_seeds,
        duration=args.gate_duration,
        window=args.gate_window,
        history=args.gate_history,
    )
    return controller.run(args, extensions=[GateExtension(options)])
