"""``simmesh sim DIR``: run a scenario (or a sweep of variants) and write its reports.

A run whose estimated cost (:func:`sim.scenario.estimate`) exceeds ``--max-requests`` or
``--max-memory`` is refused before it starts, unless ``--force``. Output goes under the chosen
directory only: the default ``out/sim/<name>`` uses the scenario's validated name.

``--sweep PATH=V1,V2`` (repeated: a grid) with ``--seeds N`` runs every (point, seed) on local
worker processes (``--workers``, default every core) or a Dask cluster (``--scheduler``) and
reports each point's means with 95% intervals (sim/sweep.py); every point is checked before
any runs. ``--seeds N`` alone is a sweep of one point: the scenario over N seeds.
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
    add_run_arguments(parser)
    parser.add_argument(
        "--sweep",
        action="append",
        default=[],
        metavar="PATH=V1,V2,...",
        help="run one variant per value; repeated: every combination (a grid)",
    )
    parser.add_argument(
        "--seeds",
        type=_count,
        default=1,
        metavar="N",
        help="run each variant with N seeds from the scenario's (default 1): means and 95%% "
        "intervals",
    )
    add_parallel_arguments(parser)


def add_parallel_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--workers",
        type=_count,
        default=None,
        metavar="N",
        help="local worker processes (default: one per core; 1: in this process)",
    )
    parser.add_argument(
        "--scheduler",
        metavar="tcp://HOST:PORT",
        help="run on this Dask cluster instead of local processes",
    )


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of every simulating command: edits, budget, output."""
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
    parser.add_argument("--out", type=Path, help="output directory (default out/<command>/<name>)")
    parser.add_argument("--quiet", action="store_true", help="no progress")
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


def sets(args: argparse.Namespace) -> list[str]:
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


def output_dir(args: argparse.Namespace, scenario: Scenario, command: str = "sim") -> Path:
    if args.out is not None:
        return Path(args.out)
    base = Path("out") / command
    out = base / scenario.name
    if base.resolve() not in out.resolve().parents:  # the name is validated; belt and braces
        raise ScenarioError(f"{scenario.name!r}: not usable as a directory name")
    return out


def workers(args: argparse.Namespace) -> int:
    from sim.runs import cores

    return int(args.workers) if args.workers is not None else cores()


class RunProgress:
    """Runs finished so far, on stderr: a line that updates itself on a terminal, else a line
    at every tenth (the runs of a what-if or a sweep finish in any order)."""

    def __init__(self, label: str, stream: Any, *, quiet: bool = False) -> None:
        self.label = label
        self.stream = stream
        self.quiet = quiet
        self.start = time.monotonic()
        self.last = -1

    def __call__(self, finished: int, total: int) -> None:
        if self.quiet:
            return
        tenth = finished * 10 // total
        tty = self.stream.isatty()
        if not tty and tenth == self.last:
            return
        self.last = tenth
        text = f"{self.label}: {finished}/{total} runs, {time.monotonic() - self.start:.1f} s"
        self.stream.write(
            ("\r" + text + ("\n" if finished == total else "")) if tty else text + "\n"
        )
        self.stream.flush()


def run(args: argparse.Namespace) -> int:
    from sim.model import ProgressBar, run_scenario
    from sim.report import slos_ok, write_reports
    from sim.runs import RunError

    directory = Path(args.dir)
    try:
        base = load_scenario(directory, sets(args))
        out = output_dir(args, base)
        if args.sweep or args.seeds > 1:
            return _sweep(args, directory, base, out)
        if args.scheduler is not None:
            raise ScenarioError("--scheduler: runs a sweep (--sweep or --seeds)")
        check_budget(base, args)
    except (ScenarioError, RunError) as exc:
        print(f"simmesh: error: {exc}", file=sys.stderr)
        return 2
    start = time.monotonic()
    progress = None if args.quiet else ProgressBar(base.name, sys.stderr)
    results = run_scenario(base, progress)
    text = write_reports(results, out, wall=time.monotonic() - start)
    print(text)
    print(f"\nwrote {out}/results.json, {out}/report.html and plots")
    return 0 if slos_ok(results) else 1


def _sweep(args: argparse.Namespace, directory: Path, base: Scenario, out: Path) -> int:
    from sim.report import plot_sweep, results_json, sweep_table, write_output
    from sim.runs import Source, check_scheduler
    from sim.sweep import Axis, grid, point_sets, sweep

    axes = [Axis.parse(text) for text in args.sweep]
    points = grid(axes)
    for point in points:  # every variant is checked before any runs
        assignments = point_sets(axes, point)
        try:
            check_budget(load_scenario(directory, [*sets(args), *assignments]), args)
        except ScenarioError as exc:
            raise ScenarioError(f"{' '.join(assignments)}: {exc}") from None
    if args.scheduler is not None:
        check_scheduler(args.scheduler)
    seeds = [base.seed + i for i in range(args.seeds)]
    count = workers(args)
    where = args.scheduler or f"{count} worker{'s' * (count > 1)}"
    progress = RunProgress(f"sweep {base.name} ({where})", sys.stderr, quiet=args.quiet)
    result = sweep(
        Source.of(base), axes, seeds, workers=count, scheduler=args.scheduler, done=progress
    )
    data = result.to_json()
    table = sweep_table(data)
    out.mkdir(parents=True, exist_ok=True)
    write_output(out / "sweep.json", results_json(data))
    plot_sweep(data, out)
    write_output(out / "sweep.txt", table + "\n")
    print(table)
    print(f"\nwrote {out}/sweep.json, {out}/sweep.png and {out}/sweep.txt")
    return 0 if result.ok else 1
