"""``simmesh whatif DIR --apply CHANGE``: would this change break an SLO? (sim/whatif.py)

Exit codes: 0 when no SLO that held before breaks, 1 when the change breaks one (each named),
2 for bad input (one line: a change that cannot be read or applied, an unknown object to
delete, a bad scenario or SLO file, a scheduler that cannot be reached), 3 when ``--budget``
ran out before the runs could decide. Reports go to ``out/whatif/<name>`` (``--out``).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from mesh.documents import DocumentError, read_yaml
from sim.cli import (
    RunProgress,
    _count,
    _seconds,
    add_parallel_arguments,
    add_run_arguments,
    check_budget,
    output_dir,
    sets,
    workers,
)
from sim.scenario import ScenarioError, SloFile, load_scenario

EXIT = {"safe": 0, "breaks": 1, "undecided": 3}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dir", help="the scenario as it is (manifests + scenario.yaml)")
    parser.add_argument(
        "--apply",
        action="append",
        default=[],
        type=Path,
        metavar="FILE|DIR",
        help="manifests to apply: each replaces the object of the same kind, namespace and name "
        "or adds it (annotation simmesh.io/whatif: delete deletes it instead); repeatable",
    )
    parser.add_argument(
        "--delete",
        action="append",
        default=[],
        metavar="KIND/NAMESPACE/NAME",
        help="an object to delete; repeatable",
    )
    parser.add_argument(
        "--seeds",
        type=_count,
        default=5,
        metavar="N",
        help="seeds per side, from the scenario's (default 5)",
    )
    parser.add_argument(
        "--slos", type=Path, metavar="FILE", help="SLOs to judge instead of the scenario's"
    )
    parser.add_argument(
        "--budget",
        type=_seconds,
        metavar="SECONDS",
        help="stop after this wall time; exit 3 when the runs could not decide by then",
    )
    add_parallel_arguments(parser)
    add_run_arguments(parser)


def _slo_file(path: Path) -> SloFile:
    """An SLO file: the ``slos:`` list of scenario.yaml, alone or under a ``slos`` key."""
    try:
        raw = read_yaml(path)
    except DocumentError as exc:
        raise ScenarioError(f"--slos {exc}") from None
    if isinstance(raw, dict) and set(raw) == {"slos"}:
        raw = raw["slos"]
    if not isinstance(raw, list) or not raw:
        raise ScenarioError(f"--slos {path}: expected a list of SLOs (as scenario.yaml's slos:)")
    return SloFile(str(path), raw)


def run(args: argparse.Namespace) -> int:
    from sim.change import load_change
    from sim.runs import RunError, check_scheduler
    from sim.whatif import whatif
    from sim.whatif_report import write_reports

    try:
        if not args.apply and not args.delete:
            raise ScenarioError("whatif: nothing to change: give --apply FILE|DIR or --delete")
        change = load_change(args.apply, args.delete)
        slos = _slo_file(args.slos) if args.slos is not None else None
        base = load_scenario(Path(args.dir), sets(args), slos=slos)
        check_budget(base, args)
        out = output_dir(args, base, "whatif")
        if args.scheduler is not None:
            check_scheduler(args.scheduler)
        count = workers(args)
        progress = RunProgress(f"whatif {base.name}", sys.stderr, quiet=args.quiet)
        start = time.monotonic()
        result = whatif(
            base,
            change,
            seeds=args.seeds,
            budget_seconds=args.budget,
            workers=count,
            scheduler=args.scheduler,
            done=progress,
        )
    except (ScenarioError, RunError) as exc:
        print(f"simmesh whatif: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    text = write_reports(result, out, wall=time.monotonic() - start, workers=count)
    print(text)
    print(f"\nwrote {out}/results.json, {out}/report.html and plots")
    return EXIT[result.verdict.value]
