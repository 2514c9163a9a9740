"""``simmesh sim DIR``: run a scenario (or a sweep of variants) and write its reports."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from sim.scenario import ScenarioError, load_scenario


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dir", help="scenario directory (manifests + scenario.yaml)")
    parser.add_argument("--seed", type=int, help="override the scenario's seed")
    parser.add_argument("--duration", type=float, help="override the simulated seconds")
    parser.add_argument(
        "--set",
        dest="sets",
        action="append",
        default=[],
        metavar="PATH=VALUE",
        help="edit scenario.yaml, e.g. traffic[0].rate=200",
    )
    parser.add_argument(
        "--profile", metavar="NAME|FILE", help="cost profile (sim/profiles; default: local)"
    )
    parser.add_argument("--sweep", metavar="PATH=V1,V2,...", help="run one variant per value")
    parser.add_argument("--out", type=Path, help="output directory (default out/sim/<name>)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def _sets(args: argparse.Namespace) -> list[str]:
    sets = list(args.sets)
    if args.seed is not None:
        sets.append(f"seed={args.seed}")
    if args.duration is not None:
        sets.append(f"duration={args.duration}")
    if args.profile is not None:
        sets.append(f"profile={args.profile}")
    return sets


def run(args: argparse.Namespace) -> int:
    from sim.model import ProgressBar, run_scenario
    from sim.report import slos_ok, write_reports

    directory = Path(args.dir)
    try:
        base = load_scenario(directory, _sets(args))
    except ScenarioError as exc:
        print(f"simmesh: error: {exc}", file=sys.stderr)
        return 2
    out = args.out or Path("out") / "sim" / base.name
    if args.sweep:
        return _sweep(args, directory, out)
    start = time.monotonic()
    progress = None if args.quiet else ProgressBar(base.name, sys.stderr)
    results = run_scenario(base, progress)
    text = write_reports(results, out, wall=time.monotonic() - start)
    print(text)
    print(f"\nwrote {out}/results.json, {out}/report.html and plots")
    return 0 if slos_ok(results) else 1


def _sweep(args: argparse.Namespace, directory: Path, out: Path) -> int:
    from sim.model import ProgressBar, run_scenario
    from sim.report import plot_sweep, slos_ok, sweep_table, write_reports

    path, sep, values = args.sweep.partition("=")
    if not sep or not values:
        print("simmesh: error: --sweep: expected PATH=V1,V2,...", file=sys.stderr)
        return 2
    rows: list[tuple[str, dict[str, Any]]] = []
    for value in values.split(","):
        try:
            scenario = load_scenario(directory, [*_sets(args), f"{path}={value}"])
        except ScenarioError as exc:
            print(f"simmesh: error: {path}={value}: {exc}", file=sys.stderr)
            return 2
        progress = None if args.quiet else ProgressBar(f"{path}={value}", sys.stderr)
        results = run_scenario(scenario, progress)
        write_reports(results, out / f"{path.replace('/', '_')}={value}")
        rows.append((value, results))
    table = sweep_table(path, rows)
    out.mkdir(parents=True, exist_ok=True)
    plot_sweep(path, rows, out)
    (out / "sweep.txt").write_text(table + "\n")
    print(table)
    print(f"\nwrote {out}/sweep.png, {out}/sweep.txt and one report per value")
    return 0 if all(slos_ok(r) for _, r in rows) else 1
