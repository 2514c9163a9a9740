"""``simmesh up DIR``: a scenario's mesh, running for real on this machine, without a cluster.

Starts the controller (file provider), one node proxy per scenario node and the scenario's
workloads as test apps (plan.py says where), applies the timeline in real time, and with
``--load`` drives the scenario's traffic with Locust; Ctrl-C stops everything it started.
Without ``--load`` it keeps the mesh up (``--for SECONDS``, or until Ctrl-C) for curl or a
Locust run of your own: the addresses are printed, and a client has a pod's identity when it
sends from that pod's address (``curl --interface``). With ``mtls: permissive`` or ``strict``
in the scenario's settings the proxies tunnel between nodes with certificates from the run's
own CA (ca.py).
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from mesh import argtypes
from mesh.local.launch import ISOLATIONS, choose_isolation, plan_for, realisable, run_plan
from mesh.local.plan import PlanError
from sim.scenario import ScenarioError, load_scenario


def _scale(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and 0 < value <= 100):
        raise argparse.ArgumentTypeError(f"expected a factor in (0, 100], got {text!r}")
    return value


def add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dir", help="scenario directory (manifests + scenario.yaml)")
    parser.add_argument(
        "--seed", type=argtypes.integer(low=0, high=2**63 - 1), help="override the seed"
    )
    parser.add_argument(
        "--set",
        dest="sets",
        action="append",
        default=[],
        metavar="PATH=VALUE",
        help="edit scenario.yaml, e.g. traffic[0].rate=50",
    )
    parser.add_argument(
        "--scale",
        type=_scale,
        default=1.0,
        metavar="FACTOR",
        help="run the scenario's time line FACTOR times as long (0.2: a 300 s scenario in 60 s)",
    )
    parser.add_argument(
        "--isolation",
        choices=ISOLATIONS,
        default="auto",
        help="netns: a network namespace of its own (root); loopback: the machine's",
    )
    parser.add_argument("--out", type=Path, help="output directory")
    parser.add_argument(
        "--profile", metavar="NAME|FILE", help="the simulator's cost profile (default: local)"
    )


def common_sets(args: argparse.Namespace) -> list[str]:
    sets = list(args.sets)
    if args.seed is not None:
        sets.append(f"seed={args.seed}")
    if args.profile is not None:
        sets.append(f"profile={args.profile}")
    return sets


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common(parser)
    parser.add_argument("--load", action="store_true", help="drive the traffic with Locust")
    parser.add_argument(
        "--for",
        dest="hold",
        type=argtypes.seconds(high=7 * 86400.0),
        metavar="SECONDS",
        help="without --load: stop after",
    )


def run(args: argparse.Namespace) -> int:
    sets = common_sets(args)
    try:
        scenario = load_scenario(Path(args.dir), sets, scale=args.scale)
        isolation = choose_isolation(args.isolation)
        notes = realisable(scenario, isolation)
        plan = plan_for(scenario, isolation, {"load": args.load, "hold": args.hold})
    except (ScenarioError, PlanError) as exc:
        print(f"simmesh: error: {exc}", file=sys.stderr)
        return 2
    for note in notes:
        print(f"simmesh: {note}", file=sys.stderr)
    out = args.out or Path("out") / "up" / scenario.name
    code = run_plan(plan, out, isolation.prefix)
    print(f"logs, access logs and run.json in {out}", file=sys.stderr)
    return 0 if code in (0, 130) else 1
