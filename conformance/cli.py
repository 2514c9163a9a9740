"""``python -m conformance`` (``make conformance``): the SMI conformance suite on the cluster of
the current kubeconfig.

Exit codes: 0 every selected case passed (cases needing the other mesh mode are skipped and
listed), 1 a case failed or erred, 2 the cluster or the mesh is not ready (or a bad option),
130 interrupted (namespaces deleted all the same).
"""

from __future__ import annotations

import argparse
import fnmatch
import signal
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType

from conformance import report
from conformance.adapter import ADAPTERS, Adapter
from conformance.cases import CASES
from conformance.kube import Kube, KubeError, Unreachable
from conformance.model import Case, Mode
from conformance.runner import CaseResult, Options, Runner

EXIT_OK, EXIT_FAILED, EXIT_NOT_READY, EXIT_INTERRUPTED = 0, 1, 2, 130


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m conformance",
        description="SMI conformance suite: every case in its own namespaces, calls made from "
        "inside test app pods through the mesh",
    )
    p.add_argument("--kubeconfig", help="default: $KUBECONFIG, else ~/.kube/config")
    p.add_argument("--context", help="kubeconfig context (default: the current one)")
    p.add_argument("--adapter", choices=sorted(ADAPTERS), default="simmesh")
    p.add_argument("--mesh-namespace", default="simmesh", help="where the mesh is installed")
    p.add_argument("--zone", default="mesh", help="the mesh's DNS zone (<svc>.<ns>.<zone>)")
    p.add_argument(
        "-k",
        "--select",
        action="append",
        default=[],
        metavar="NAME|TAG",
        help="run the cases with this name (glob) or tag; repeatable (default: all)",
    )
    p.add_argument(
        "-x",
        "--exclude",
        action="append",
        default=[],
        metavar="NAME|TAG",
        help="leave out the cases with this name (glob) or tag, e.g. gamma on a cluster "
        "without the Gateway API CRDs; repeatable",
    )
    p.add_argument(
        "--namespace-prefix",
        default="smi-",
        metavar="PREFIX",
        help="case namespaces are PREFIX<case> (default: smi-)",
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="how long a behaviour may take to show after a change (default: 60)",
    )
    p.add_argument(
        "--setup-timeout",
        type=float,
        default=240.0,
        metavar="SECONDS",
        help="for a case's pods to be ready and meshed (default: 240)",
    )
    p.add_argument(
        "--keep-namespaces",
        action="store_true",
        help="keep the namespaces of failed cases, to look at them",
    )
    p.add_argument(
        "--parallel", type=int, default=6, metavar="N", help="cases run at once (default: 6)"
    )
    p.add_argument(
        "--mode",
        choices=("auto", "acl", "default"),
        default="auto",
        help="the mesh mode to test (default: auto, as the adapter reads it)",
    )
    p.add_argument("--image", help="the test app image (default: the adapter's)")
    p.add_argument("--pull-policy", default="", help="for --image (default: IfNotPresent)")
    p.add_argument(
        "--out",
        type=Path,
        default=Path("out/conformance"),
        help="report.txt, report.json and junit.xml go here",
    )
    p.add_argument("--list", action="store_true", help="list the cases and exit")
    return p


def select(cases: Sequence[Case], patterns: Sequence[str]) -> list[Case]:
    """The cases whose name matches a pattern (glob) or that carry a tag named by one."""
    if not patterns:
        return list(cases)
    return [
        c for c in cases if any(fnmatch.fnmatchcase(c.name, p) or p in c.tags for p in patterns)
    ]


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    cases = select(CASES, args.select)
    if args.exclude:
        excluded = set(map(id, select(cases, args.exclude)))
        cases = [c for c in cases if id(c) not in excluded]
    if args.list:
        for c in cases:
            needs = f" [{c.needs} mode]" if c.needs else ""
            print(f"{c.name:<28} {','.join(c.tags):<40} {c.title}{needs}")
        return EXIT_OK
    if not cases:
        return _not_ready([f"no case matches {' '.join(args.select)} (see --list)"])
    if args.parallel < 1 or args.timeout <= 0 or args.setup_timeout <= 0:
        return _not_ready(["--parallel, --timeout and --setup-timeout must be positive"])
    try:
        kube = Kube(args.kubeconfig, args.context)
    except Unreachable as exc:
        return _not_ready([str(exc)])
    try:
        return _run(args, kube, cases)
    finally:
        kube.close()


def _not_ready(problems: Sequence[str]) -> int:
    print("conformance: the cluster is not ready for the suite:", file=sys.stderr)
    for line in problems:
        print(f"  {line}", file=sys.stderr)
    return EXIT_NOT_READY


def _run(args: argparse.Namespace, kube: Kube, cases: list[Case]) -> int:
    adapter: Adapter = ADAPTERS[args.adapter](
        namespace=args.mesh_namespace,
        zone=args.zone,
        kubeconfig=args.kubeconfig,
        context=args.context,
    )
    try:
        kube.json("GET", "/version", timeout=15)
        problems = adapter.preflight(kube)
        mode = adapter.mode(kube) if args.mode == "auto" else Mode(args.mode)
        image = (
            (args.image, args.pull_policy or "IfNotPresent")
            if args.image
            else adapter.testapp_image(kube)
        )
    except KubeError as exc:
        return _not_ready([f"the API server {kube.server}: {exc}"])
    if image is None:
        problems.append(f"no test app image: the {adapter.name} adapter has none; give --image")
    try:
        problems += _gateway_api(kube, cases)
    except KubeError as exc:
        return _not_ready([f"the API server {kube.server}: {exc}"])
    try:
        for case in cases:
            for ns in case.namespaces():
                name = f"{args.namespace_prefix}{case.name}" + ("" if ns == "A" else f"-{ns}")
                for svc in case.services:
                    adapter.host(svc.name, name.lower())
    except ValueError as exc:
        problems.append(str(exc))
    if problems:
        return _not_ready(problems)
    assert image is not None
    started = datetime.now(UTC)
    options = Options(
        prefix=args.namespace_prefix,
        timeout=args.timeout,
        setup_timeout=args.setup_timeout,
        keep_failed=args.keep_namespaces,
        parallel=args.parallel,
        image=image[0],
        pull_policy=image[1],
        run_id=started.strftime("%Y%m%dT%H%M%SZ"),
    )
    print(
        f"conformance: {len(cases)} cases against {kube.server} (adapter {adapter.name}, mesh "
        f"in {mode} mode, {options.parallel} at once, test app {options.image})",
        flush=True,
    )
    runner = Runner(kube, adapter, options)
    start = time.monotonic()
    # Ctrl-C and SIGTERM stop the run and clean up (also where a shell started the suite with
    # SIGINT ignored, as background jobs are)
    previous = {sig: signal.signal(sig, _interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        results = runner.run(cases, mode, on_done=_progress)
    except KeyboardInterrupt:
        runner.cleanup_all()
        print("conformance: interrupted; the cases' namespaces were deleted", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    meta = {
        "suite": "smi-conformance",
        "adapter": adapter.name,
        "mode": str(mode),
        "server": kube.server,
        "started": started.isoformat(timespec="seconds"),
        "seconds": round(time.monotonic() - start, 2),
        "image": options.image,
        "selected": list(args.select),
        "excluded": list(args.exclude),
    }
    print()
    print(report.table(results, meta), end="")
    paths = report.write(args.out, results, meta)
    print(f"reports: {', '.join(str(p) for p in paths)}")
    return EXIT_OK if all(r.verdict in ("pass", "skip") for r in results) else EXIT_FAILED


GAMMA_CRDS = ("httproutes.gateway.networking.k8s.io", "grpcroutes.gateway.networking.k8s.io")


def _gateway_api(kube: Kube, cases: Sequence[Case]) -> list[str]:
    """The GAMMA cases write Gateway API routes: their CRDs must be there."""
    gamma = [c.name for c in cases if "gamma" in c.tags]
    if not gamma:
        return []
    crd = "apiextensions.k8s.io/v1", "CustomResourceDefinition", None
    missing = [name for name in GAMMA_CRDS if kube.get(*crd, name) is None]
    if not missing:
        return []
    return [
        f"the Gateway API CRDs are not installed ({', '.join(missing)}), which the GAMMA "
        f"cases ({', '.join(gamma)}) need: install the standard channel (simmesh's chart: "
        "--set gatewayAPI.installCRDs=true), or leave those cases out with --exclude gamma"
    ]


def _progress(result: CaseResult) -> None:
    """Called from the cases' threads: one write a line, so lines never interleave."""
    if result.verdict != "skip":
        mark = report.MARK[result.verdict]
        sys.stdout.write(f"  {mark:<5} {result.name} ({result.seconds:.1f}s)\n")
        sys.stdout.flush()


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt()


if __name__ == "__main__":
    sys.exit(main())
