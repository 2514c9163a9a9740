"""``simmesh verify DIR``: the same scenario simulated and run for real, side by side.

1. validate: load the scenario (``--set``, ``--seed``, ``--scale``, ``--profile``) and plan its
   local mesh; a bad scenario is one line and exit code 2;
2. simulate it with its SLOs and the profile as calibrated: the prediction
   (``out/verify/NAME/prediction/``: results.json, plots, report.html);
3. run it for real: ``simmesh up`` with Locust driving the traffic for the same (scaled)
   duration, and a probe measuring how contended the machine's CPUs are meanwhile
   (``out/verify/NAME/real/``: logs, access logs, Locust's CSV, run.json);
4. simulate it again with the wake-up delays the probe measured (``sim/``): this machine is
   shared, and other work comes and goes; ``--no-probe`` keeps the prediction instead. The
   probe's record of the machine's load (load average, CPU pressure, runnable tasks) is
   printed and kept in ``results.json`` (``load``);
5. turn the real measurements into the simulator's result format and judge the same SLOs on
   them with the same code (collect.py), with its own reports in ``real/``;
6. print both side by side (compare.py) and write ``results.json`` (prediction, simulated,
   real, comparison), plots with both series and ``report.html`` to ``out/verify/NAME/``.

Exit codes: 0 when both runs pass their SLOs and agree within the tolerance; 3 when fidelity is
outside the tolerance (the simulation cannot be trusted, whatever the SLOs say); 1 when an SLO
fails in either run; 2 for bad input; 4 when the real run could not be completed.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from mesh.local.compare import Tolerance, compare, html_page, plot, side_by_side
from mesh.local.launch import choose_isolation, plan_for, realisable, run_plan
from mesh.local.plan import PlanError
from mesh.local.up import add_common, common_sets
from sim.scenario import ScenarioError, load_scenario


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common(parser)
    parser.add_argument(
        "--tolerance",
        default="success=0.02,p50=0.25,p99=0.25",
        metavar="SPEC",
        help="success=POINTS,p50=RELATIVE,p99=RELATIVE (default: 0.02, 0.25, 0.25)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument(
        "--no-probe",
        dest="probe",
        action="store_false",
        help="compare with the prediction (the profile's wake-up delays) instead of "
        "simulating again with the ones measured during the run",
    )
    parser.add_argument(
        "--kubeconfig", metavar="FILE", help="run the real phase on a cluster (not available yet)"
    )


def run(args: argparse.Namespace) -> int:
    from sim.model import ProgressBar, run_scenario
    from sim.report import write_output, write_reports

    sets = common_sets(args)
    try:
        if args.kubeconfig:
            raise PlanError(
                "--kubeconfig: the real phase on a cluster needs the test app image and the "
                "cluster harness (issue 9), which have not landed; run without it"
            )
        tolerance = Tolerance.parse(args.tolerance)
        scenario = load_scenario(Path(args.dir), sets, scale=args.scale)
        isolation = choose_isolation(args.isolation)
        notes = realisable(scenario, isolation)
        plan = plan_for(scenario, isolation, {"load": True, "probe": args.probe})
    except (ScenarioError, PlanError, ValueError) as exc:
        print(f"simmesh: error: {exc}", file=sys.stderr)
        return 2
    for note in notes:
        print(f"simmesh: {note}", file=sys.stderr)
    out = args.out or Path("out") / "verify" / scenario.name
    started = time.monotonic()
    progress = None if args.quiet else ProgressBar(f"{scenario.name} simulated", sys.stderr)
    prediction = run_scenario(scenario, progress)
    write_reports(prediction, out / "prediction")
    verdicts = " ".join("PASS" if s["ok"] else "FAIL" for s in prediction["slos"]) or "no SLOs"
    print(
        f"simulated {scenario.duration:g} s in {time.monotonic() - started:.1f} s (SLOs: "
        f"{verdicts}); now running it for real ({isolation.kind}, about "
        f"{scenario.duration + 15:.0f} s)",
        file=sys.stderr,
    )
    code = run_plan(plan, out / "real", isolation.prefix)
    if code != 0:
        print(f"simmesh: error: the real run did not complete (see {out}/real)", file=sys.stderr)
        return 4
    simulated = prediction
    measured = out / "real" / "wakeup.json"
    load: dict[str, Any] = {}
    if args.probe and measured.exists():
        probed = json.loads(measured.read_text())
        wakeup = probed["wakeup"]
        load = probed.get("load") or {}
        scenario.profile = replace(scenario.profile, wakeup=wakeup)
        points = wakeup["percentiles"]
        print(
            "CPU wake-up delays during the run: "
            + ", ".join(
                f"p{q} {points[q] * 1000:.2f} ms"
                for q in ("50", "99", "99.9", "99.99")
                if q in points
            )
            + (f" ({describe_load(load)})" if load else "")
            + "; simulating again with them",
            file=sys.stderr,
        )
        simulated = run_scenario(scenario)
    write_reports(simulated, out / "sim")
    from mesh.local.collect import real_results

    real = real_results(scenario, plan, out / "real")
    write_reports(real, out / "real")
    comparison = compare(simulated, real, tolerance)
    text = _header(scenario.name, args.scale, simulated, real) + "\n\n"
    text += side_by_side(comparison, simulated, real)
    for note in real["run"]["realised"]:
        text += f"\nnote: {note}"
    text += "\n" + _prediction(prediction, real)
    if load:
        text += f"\nmachine during the real run: {describe_load(load)}"
    images = plot(simulated, real, out)
    document: dict[str, Any] = {
        "scenario": scenario.name,
        "scale": args.scale,
        "isolation": isolation.kind,
        "isolationNotes": notes,
        "profile": _profile(scenario.profile),
        "load": load,
        "prediction": prediction,
        "simulated": simulated,
        "real": real,
        "comparison": comparison,
    }
    print(text)
    write_output(out / "results.json", json.dumps(document, sort_keys=True, indent=1) + "\n")
    write_output(out / "report.html", html_page(scenario.name, text, images, comparison))
    print(f"\nwrote {out}/results.json, {out}/report.html and plots")
    if not comparison["withinTolerance"]:
        return 3
    return 0 if all(comparison["slosOk"].values()) else 1


def describe_load(load: dict[str, Any]) -> str:
    """The machine's load during a real run (probe.py's ``load``), in a few words."""
    parts = []
    if "loadavg" in load:
        parts.append("load average {:g} -> {:g}".format(*load["loadavg"]))
    if "pressureSome" in load:
        parts.append(f"CPU pressure {load['pressureSome'] * 100:.0f}%")
    if "runnable" in load:
        parts.append(f"{load['runnable']:g} runnable tasks on {load.get('cpus', '?')} CPUs")
    if load.get("steal"):
        parts.append(f"steal {load['steal'] * 100:.1f}%")
    return ", ".join(parts)


def _prediction(prediction: dict[str, Any], real: dict[str, Any]) -> str:
    """The prediction (the profile's own wake-up delays) against the real run, in one line."""
    p, r = prediction["overall"], real["overall"]

    def ms(stats: dict[str, Any], key: str) -> str:
        value = stats["latency"][key]
        return "-" if value is None else f"{value * 1000:.1f}"

    agree = sum(a["ok"] == b["ok"] for a, b in zip(prediction["slos"], real["slos"], strict=True))
    return (
        f"prediction with the profile's wake-up delays: overall p50 {ms(p, 'p50')} / "
        f"{ms(r, 'p50')} ms, p99 {ms(p, 'p99')} / {ms(r, 'p99')} ms (simulated / real); "
        f"{agree} of {len(real['slos'])} SLO verdicts agree with the real run"
    )


def _profile(profile: Any) -> dict[str, Any]:
    fields = asdict(profile)
    fields["network_pairs"] = {"/".join(sorted(k)): v for k, v in profile.network_pairs.items()}
    return fields


def _header(name: str, scale: float, sim: dict[str, Any], real: dict[str, Any]) -> str:
    s, r = sim["requests"], real["requests"]
    return (
        f"Scenario {name}: simulated vs real (seed {sim['seed']}, {sim['duration']:g} s"
        f"{f', scale {scale:g}' if scale != 1 else ''}; {s['finished']:,} simulated and "
        f"{r['finished']:,} real requests, {real['run']['isolation']})"
    )
