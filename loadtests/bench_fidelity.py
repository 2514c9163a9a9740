"""Fidelity of the simulator: ``simmesh verify`` on every scenario of the library.

    python -m loadtests.bench_fidelity                       # all, at the scales below
    python -m loadtests.bench_fidelity --only canary --scale 0.1
    python -m loadtests.bench_fidelity --out BENCHMARKS.md   # also write that section

Each scenario runs as a user runs it (``python -m mesh.cli verify DIR --scale S``): simulated,
run for real on the local mesh under Locust, simulated again with the CPU contention measured
during the run, compared. The scale keeps each real run under a few minutes on a 2-core
machine; retry-storm runs at full length: shorter, its metastable storm starts in one run and
not in the other, depending on the machine's noise.
Writes one table row per service and backend (simulated / real and the error), the SLO
verdicts of both runs, the exit code, the machine's load during each real run (the probe's:
load average, CPU pressure, runnable tasks), and a plot of simulated against real p50 and p99
for every row (out/bench/fidelity/fidelity.png); each scenario's own report is in
out/bench/fidelity/NAME/report.html.

A scenario run at full length (scale 1) is also simulated with ``--seeds`` (SEEDS seeds, the
wake-ups measured during its real run; ``simmesh sim --seeds``): the spread of its success
across seeds says how far one real run can be from one simulated seed. For a metastable
scenario (retry-storm) it is wide: whether and when the storm starts is random.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import matplotlib
import yaml

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from loadtests.report import machine, write_section

ROOT = Path(__file__).resolve().parents[1]
SCALES = {
    "quickstart": 1.0,
    "canary": 0.2,
    "circuit-breaker": 0.3,
    "rate-limit": 0.3,
    "node-failure": 0.25,
    "acl-lockout": 0.3,
    "retry-storm": 1.0,
}
EXITS = {0: "ok", 1: "SLO failed", 3: "outside tolerance", 4: "run failed"}
SEEDS = 20


def run(name: str, scale: float, out: Path) -> tuple[int, dict[str, Any] | None, float]:
    started = time.monotonic()
    command = [
        sys.executable,
        "-m",
        "mesh.cli",
        "verify",
        str(ROOT / "scenarios" / name),
        "--scale",
        repr(scale),
        "--out",
        str(out / name),
        "--quiet",
    ]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=3600)
    (out / f"{name}.txt").write_text(done.stdout + done.stderr)
    path = out / name / "results.json"
    document = json.loads(path.read_text()) if path.exists() and done.returncode != 4 else None
    return done.returncode, document, time.monotonic() - started


def reused(name: str, out: Path) -> tuple[int, dict[str, Any] | None, float]:
    """The scenario's last run: its results and the exit code they meant."""
    path = out / name / "results.json"
    if not path.exists():
        return 4, None, 0.0
    document = json.loads(path.read_text())
    comparison = document["comparison"]
    code = 0 if all(comparison["slosOk"].values()) else 1
    return (3 if not comparison["withinTolerance"] else code), document, 0.0


def seeds(name: str, out: Path, count: int = SEEDS) -> list[float] | None:
    """Success of the scenario simulated with ``count`` seeds and the wake-ups its real run
    measured (through the CLI, as a user would), or None without a real run."""
    probed = out / name / "real" / "wakeup.json"
    if not probed.exists():
        return None
    profile = yaml.safe_load((ROOT / "sim" / "profiles" / "local.yaml").read_text())
    profile["wakeup"] = json.loads(probed.read_text())["wakeup"]
    path = out / name / "measured-profile.yaml"
    path.write_text(yaml.safe_dump(profile, sort_keys=False))
    command = [
        sys.executable, "-m", "mesh.cli", "sim", str(ROOT / "scenarios" / name),
        "--seeds", str(count), "--seed", "1", "--profile", str(path),
        "--out", str(out / name / "seeds"), "--quiet",
    ]  # fmt: skip
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=3600)
    sweep = out / name / "seeds" / "sweep.json"
    if done.returncode not in (0, 1) or not sweep.exists():
        return None
    runs = json.loads(sweep.read_text())["points"][0]["runs"]
    return sorted(float(r["successRate"]) for r in runs)


def band(name: str, document: dict[str, Any] | None, values: list[float] | None) -> str:
    if document is None or not values:
        return f"| {name} | - | - | - | - |"
    real = float(document["real"]["overall"]["successRate"])
    below = sum(1 for v in values if v < real)
    median = values[len(values) // 2]
    return (
        f"| {name} | {len(values)} | {values[0] * 100:.1f} / {median * 100:.1f} / "
        f"{values[-1] * 100:.1f} | {real * 100:.1f} | {below} of {len(values)} |"
    )


def load_text(document: dict[str, Any] | None) -> str:
    load = (document or {}).get("load") or {}
    if not load:
        return "-"
    text = "{:g} -> {:g}".format(*load["loadavg"]) if "loadavg" in load else ""
    if "pressureSome" in load:
        text += f", {load['pressureSome'] * 100:.0f}%"
    if "runnable" in load:
        text += f", {load['runnable']:g}"
    return text


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:.1f}"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.2f}"


def _lat(stats: dict[str, Any], key: str) -> float | None:
    value = (stats.get("latency") or {}).get(key)
    return None if value is None else float(value)


def _err(check: dict[str, Any] | None, *, points: bool = False) -> str:
    if not check or check["error"] is None:
        return ""
    text = f"{check['error'] * 100:+.1f}{' pt' if points else '%'}"
    if check["ok"] is None:
        return f"({text})"
    return text if check["ok"] else f"**{text}**"


def rows(name: str, scale: float, code: int, document: dict[str, Any] | None) -> list[str]:
    if document is None:
        return [f"| {name} | {scale:g} | run failed (exit {code}) | | | | | | | |"]
    out = []
    comparison = document["comparison"]
    for row in comparison["rows"]:
        s, r = row["simulated"] or {}, row["real"] or {}
        c = row["checks"]
        out.append(
            f"| {name} | {scale:g} | {row['row']} | {s.get('requests', 0):,} / "
            f"{r.get('requests', 0):,} | {_pct(s.get('successRate'))} / "
            f"{_pct(r.get('successRate'))} {_err(c.get('success'), points=True)} | "
            f"{_ms(_lat(s, 'p50'))} / {_ms(_lat(r, 'p50'))} {_err(c.get('p50'))} | "
            f"{_ms(_lat(s, 'p99'))} / {_ms(_lat(r, 'p99'))} {_err(c.get('p99'))} | "
            f"{_pct(s.get('share')) if 'share' in s else ''} / "
            f"{_pct(r.get('share')) if 'share' in r else ''} | "
            f"{s.get('retries', 0):,} / {r.get('retries', 0):,} | "
            f"{s.get('circuitOpens', 0)} / {r.get('circuitOpens', 0)} |"
        )
    return out


def verdicts(name: str, document: dict[str, Any] | None) -> str:
    if document is None:
        return f"| {name} | - | - | - |"
    slos = document["comparison"]["slos"]
    sim = " ".join("PASS" if s["simulated"]["ok"] else "FAIL" for s in slos) or "-"
    real = " ".join("PASS" if s["real"]["ok"] else "FAIL" for s in slos) or "-"
    agree = sum(1 for s in slos if s["agree"])
    return f"| {name} | {sim} | {real} | {agree} of {len(slos)} |"


def plot(results: dict[str, dict[str, Any] | None], path: Path) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(11, 5))
    for ax, key in zip(axes, ("p50", "p99"), strict=True):
        top = 1.0
        for i, (name, document) in enumerate(sorted(results.items())):
            if document is None:
                continue
            xs, ys = [], []
            for row in document["comparison"]["rows"]:
                s, r = row["simulated"], row["real"]
                if s and r and s["latency"][key] and r["latency"][key]:
                    xs.append(r["latency"][key] * 1000)
                    ys.append(s["latency"][key] * 1000)
            ax.scatter(xs, ys, label=name, color=f"C{i}", s=28)
            top = max([top, *xs, *ys])
        ax.plot([0.5, top * 1.3], [0.5, top * 1.3], color="grey", linewidth=0.8)
        for factor in (0.75, 1.25):
            ax.plot([0.5, top * 1.3], [0.5 * factor, top * 1.3 * factor], ":", color="grey")
        ax.set(
            xscale="log",
            yscale="log",
            xlabel=f"real {key} (ms)",
            ylabel=f"simulated {key} (ms)",
            title=f"{key} per service and backend",
        )
        ax.legend(fontsize=7)
    fig.suptitle("simmesh verify: simulated against real (dotted: +/-25%)")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--only", action="append", help="just these scenarios")
    parser.add_argument("--scale", type=float, help="one scale for all")
    parser.add_argument("--out", type=Path, help="write the section into this BENCHMARKS.md")
    parser.add_argument(
        "--reuse",
        action="store_true",
        help="with --only: take the other scenarios from their last run in out/bench/fidelity",
    )
    args = parser.parse_args(argv)
    names = list(SCALES) if args.reuse or not args.only else args.only
    out = ROOT / "out" / "bench" / "fidelity"
    out.mkdir(parents=True, exist_ok=True)
    table = [
        "| scenario | scale | service / backend | requests sim / real | success % sim / real "
        "| p50 ms sim / real | p99 ms sim / real | share % sim / real | retries sim / real "
        "| breaker opens sim / real |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    slos = ["| scenario | SLOs simulated | SLOs real | verdicts agree |", "|---|---|---|---|"]
    summary = [
        "| scenario | scale | exit | wall s | isolation | load: average start -> end, CPU "
        "pressure, runnable tasks |",
        "|---|---:|---|---:|---|---|",
    ]
    bands = [
        "| scenario | seeds | success % over seeds: min / median / max | real success % | "
        "seeds below the real run |",
        "|---|---:|---:|---:|---:|",
    ]
    results: dict[str, dict[str, Any] | None] = {}
    for i, name in enumerate(names, 1):
        scale = args.scale or SCALES.get(name, 0.25)
        if args.reuse and args.only and name not in args.only:
            code, document, wall = reused(name, out)
            scale = document["scale"] if document else scale
        else:
            print(f"[{i}/{len(names)}] {name} at scale {scale:g} ...", file=sys.stderr, flush=True)
            code, document, wall = run(name, scale, out)
        results[name] = document
        table += rows(name, scale, code, document)
        slos.append(verdicts(name, document))
        isolation = document["isolation"] if document else "-"
        shown = f"{wall:.0f}" if wall else "-"
        summary.append(
            f"| {name} | {scale:g} | {code} ({EXITS.get(code, '?')}) | {shown} | {isolation} "
            f"| {load_text(document)} |"
        )
        if scale == 1 and document is not None:
            bands.append(band(name, document, seeds(name, out)))
        print(f"      exit {code} ({EXITS.get(code, '?')}), {wall:.0f} s", file=sys.stderr)
    plot(results, out / "fidelity.png")
    command = "python -m loadtests.bench_fidelity " + " ".join(
        argv if argv is not None else sys.argv[1:]
    )
    text = "\n".join(
        [
            "## Fidelity: the simulator against the real local mesh (`simmesh verify`)",
            "",
            f"Command: `{command.strip()}` (`make bench`).  ",
            f"Machine: {machine()}; shared with other builds, so CPU contention comes and "
            "goes during the runs.",
            "",
            "Each scenario is simulated, run for real (controller, one proxy per node, a test "
            "app per pod, Locust from the source pods' addresses, in a network namespace), "
            "simulated again with the CPU wake-up delays measured during the run, and "
            "compared. Errors are simulated - real, relative to real for latencies; **bold** "
            "is outside the tolerance (2 points of success, 25% of p50 and p99), (brackets): "
            "too few requests to judge. Plot: out/bench/fidelity/fidelity.png; reports: "
            "out/bench/fidelity/NAME/report.html. Load: the probe's record of the machine "
            "during each real run (load average at its start and end, the share of the run "
            "in which some task waited for a CPU, the mean number of runnable tasks besides "
            "the probe).",
            "",
            *summary,
            "",
            *table,
            "",
            *slos,
            "",
            f"Scenarios at full length simulated again with {SEEDS} seeds (1..{SEEDS}) and the "
            "wake-ups of their real run (`simmesh sim --seeds`): one real run is one draw.",
            "",
            *bands,
        ]
    )
    print(text)
    (out / "fidelity.md").write_text(text + "\n")
    if args.out:
        write_section(args.out, "fidelity", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
