"""``simmesh sim DIR``: run a scenario (or a sweep of variants) and write its reports.

A run whose estimated cost (:func:`sim.scenario.estimate`) exceeds ``--max-requests`` or
``--max-memory`` is refused before it starts, unless ``--force``. Output goes under the chosen
directory only: the default ``out/sim/<name>`` uses the scenario's validated name, and sweep
variants are named by their value with anything but letters, digits and ``._=-`` replaced.
"""

from __future__ import annotations

import argparse
import math
import re
import sys
import time
from pathlib import Path
from typing import Any

from sim.scenario import Scenario, ScenarioError, estimate, load_scenario

MAX_REQUESTS = 5_000_000
MAX_MEMORY = 2 * 1024**3


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def _bytes(text: str) -> int:
    match = re.fullmatch(r"([0-9]+)([KMG]i?B?)?", text.strip(), re.IGNORECASE)
    if match is None or int(match.group(1)) == 0:
        raise argparse.ArgumentTypeError(f"expected a size such as 512MiB or 2GiB, got {text!r}")
    unit = (match.group(2) or "B")[0].upper()
    return int(match.group(1)) * {"B": 1, "K": 1024, "M": 1024**2, "G": 1024**3}[unit]


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {text!r}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dir", help="scenario directory (manifests + scenario.yaml)")
    parser.add_argument("--seed", type=int, help="override the scenario's seed")
    parser.add_argument("--duration", type=_seconds, help="override the simulated seconds")
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
    parser.add_argument(
        "--max-requests",
        type=_count,
        default=MAX_REQUESTS,
        metavar="N",
        help=f"refuse runs estimated to simulate more requests (default {MAX_REQUESTS:,})",
    )
    parser.add_argument(
        "--max-memory",
        type=_bytes,
        default=MAX_MEMORY,
        metavar="SIZE",
        help="refuse runs estimated to need more memory (default 2GiB)",
    )
    parser.add_argument(
        "--force", action="store_true", help="run even when over --max-requests or --max-memory"
    )


def _sets(args: argparse.Namespace) -> list[str]:
    sets = list(args.sets)
    if args.seed is not None:
        sets.append(f"seed={args.seed}")
    if args.duration is not None:
        sets.append(f"duration={args.duration}")
    if args.profile is not None:
        sets.append(f"profile={args.profile}")
    return sets


def check_budget(scenario: Scenario, args: argparse.Namespace) -> None:
    """Refuse a run over its budget (ScenarioError), unless --force."""
    cost = estimate(scenario)
    if args.force:
        return
    if cost.requests > args.max_requests:
        raise ScenarioError(
            f"{scenario.name}: about {cost.requests:,.0f} requests, over the budget of "
            f"{args.max_requests:,} (--max-requests N raises it, --force ignores it)"
        )
    if cost.memory > args.max_memory:
        raise ScenarioError(
            f"{scenario.name}: about {cost.memory / 1024**2:,.0f} MiB of memory, over the budget "
            f"of {args.max_memory / 1024**2:,.0f} MiB (--max-memory SIZE raises it, --force "
            "ignores it)"
        )


def output_dir(args: argparse.Namespace, scenario: Scenario) -> Path:
    if args.out is not None:
        return Path(args.out)
    base = Path("out") / "sim"
    out = base / scenario.name
    if base.resolve() not in out.resolve().parents:  # the name is validated; belt and braces
        raise ScenarioError(f"{scenario.name!r}: not usable as a directory name")
    return out


def variant_dir(out: Path, path: str, value: str) -> Path:
    """``out/<path>=<value>`` with anything that could leave ``out`` replaced."""
    name = re.sub(r"[^A-Za-z0-9._=-]", "_", f"{path}={value}")[:200]
    return out / ("_" + name if name.startswith(".") else name)


def run(args: argparse.Namespace) -> int:
    from sim.model import ProgressBar, run_scenario
    from sim.report import slos_ok, write_reports

    directory = Path(args.dir)
    try:
        base = load_scenario(directory, _sets(args))
        out = output_dir(args, base)
        if args.sweep:
            return _sweep(args, directory, out)
        check_budget(base, args)
    except ScenarioError as exc:
        print(f"simmesh: error: {exc}", file=sys.stderr)
        return 2
    start = time.monotonic()
    progress = None if args.quiet else ProgressBar(base.name, sys.stderr)
    results = run_scenario(base, progress)
    text = write_reports(results, out, wall=time.monotonic() - start)
    print(text)
    print(f"\nwrote {out}/results.json, {out}/report.html and plots")
    return 0 if slos_ok(results) else 1


def _sweep(args: argparse.Namespace, directory: Path, out: Path) -> int:
    from sim.model import ProgressBar, run_scenario
    from sim.report import plot_sweep, slos_ok, sweep_table, write_output, write_reports

    path, sep, values = args.sweep.partition("=")
    if not sep or not values:
        raise ScenarioError("--sweep: expected PATH=V1,V2,...")
    scenarios: list[tuple[str, Scenario]] = []
    for value in values.split(","):  # every variant is checked before any runs
        try:
            scenario = load_scenario(directory, [*_sets(args), f"{path}={value}"])
            check_budget(scenario, args)
        except ScenarioError as exc:
            raise ScenarioError(f"{path}={value}: {exc}") from None
        scenarios.append((value, scenario))
    rows: list[tuple[str, dict[str, Any]]] = []
    for value, scenario in scenarios:
        progress = None if args.quiet else ProgressBar(f"{path}={value}", sys.stderr)
        results = run_scenario(scenario, progress)
        write_reports(results, variant_dir(out, path, value))
        rows.append((value, results))
    table = sweep_table(path, rows)
    out.mkdir(parents=True, exist_ok=True)
    plot_sweep(path, rows, out)
    write_output(out / "sweep.txt", table + "\n")
    print(table)
    print(f"\nwrote {out}/sweep.png, {out}/sweep.txt and one report per value")
    return 0 if all(slos_ok(r) for _, r in rows) else 1
