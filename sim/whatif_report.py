"""Reports of a what-if: the side-by-side table, results.json, overlaid plots and report.html.

The table has one row per metric of each service, backend share, traffic source and the
whole: the mean before and after across seeds and the paired difference with its 95% t
interval (``*`` when the interval leaves out 0: a difference the seeds agree on). Then every
SLO's pass counts before and after and whether the change breaks it. The plots are those of
``simmesh sim`` with both sides overlaid (before solid, after dashed), each bucket averaged
over the seeds. results.json (sim/whatif.py ``WhatIf.to_json``) is written with sorted keys:
the same inputs give the same bytes.
"""

from __future__ import annotations

import html
import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from sim.report import embedded_images, mark_events, results_json, save_figure, write_output
from sim.whatif import RULE, SloOutcome, Verdict, WhatIf

BROKEN = {True: "yes", False: "no", None: "unsure"}
UNITS = {
    "successRate": "success",
    "p50": "p50",
    "p99": "p99",
    "share": "share",
    "proxyCpu": "proxy CPU/1k req",
}


def _value(key: str, value: float | None) -> str:
    if value is None:
        return "-"
    if key in ("successRate", "share"):
        return f"{value * 100:.2f}%"
    return f"{value * 1000:.1f}ms"


def _delta(key: str, value: float | None) -> str:
    if value is None:
        return "-"
    if key in ("successRate", "share"):
        return f"{value * 100:+.2f}pp"
    return f"{value * 1000:+.1f}ms"


def _difference(key: str, diff: dict[str, Any] | None) -> str:
    if diff is None:
        return "-"
    text = _delta(key, diff["mean"])
    if diff["low"] is None:
        return text
    low, high = diff["low"], diff["high"]
    mark = " *" if low > 0 or high < 0 else ""
    return f"{text} [{_delta(key, low)}, {_delta(key, high)}]{mark}"


def _mean(side: dict[str, Any] | None) -> float | None:
    return None if side is None else side["mean"]


def _rows(comparison: dict[str, Any]) -> list[tuple[str, str, str, str, str]]:
    rows = []

    def add(label: str, metrics: dict[str, Any]) -> None:
        for i, key in enumerate(("successRate", "p50", "p99")):
            m = metrics[key]
            rows.append(
                (
                    label if i == 0 else "",
                    UNITS[key],
                    _value(key, _mean(m["before"])),
                    _value(key, _mean(m["after"])),
                    _difference(key, m["difference"]),
                )
            )

    for name, entry in comparison["services"].items():
        add(name, entry)
        backends = entry["backends"]
        if len(backends) > 1 or (backends and next(iter(backends)) != name):
            for backend, b in backends.items():
                m = b["share"]
                rows.append(
                    (
                        f"  -> {backend}",
                        "share",
                        _value("share", _mean(m["before"])),
                        _value("share", _mean(m["after"])),
                        _difference("share", m["difference"]),
                    )
                )
    for name, entry in comparison["traffic"].items():
        add(f"traffic {name}", entry)
    add("overall", comparison["overall"])
    cpu = comparison.get("proxyCpu")
    if cpu is not None:  # CPU seconds of every proxy per 1,000 requests, shown in ms
        rows.append(
            (
                "",
                UNITS["proxyCpu"],
                _value("proxyCpu", _mean(cpu["before"])),
                _value("proxyCpu", _mean(cpu["after"])),
                _difference("proxyCpu", cpu["difference"]),
            )
        )
    return rows


def _table(rows: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for i, row in enumerate(rows):
        cells = [c.ljust(w) for c, w in zip(row, widths, strict=True)]
        lines.append("  ".join(cells).rstrip())
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    return lines


def _slo_lines(slo: SloOutcome) -> list[str]:
    word = {True: "BROKEN", False: "holds" if slo.holds else "fails", None: "unsure"}[slo.broken]
    if slo.broken is False and slo.held is False:
        word = "fixed" if slo.holds else "failed"
    counts = f"{slo.passes_before}/{slo.runs_before}".ljust(7)
    counts += f"{slo.passes_after}/{slo.runs_after}".ljust(7)
    lines = [f"  {counts}{word.ljust(8)}{slo.name}"]
    for check in slo.checks:
        lines.append(
            f"{' ' * 24}{check['what']} {check['objective']}: "
            f"{_shown(check['before'])} -> {_shown(check['after'])}"
        )
    return lines


def _shown(side: dict[str, Any] | None) -> str:
    return "none" if side is None else f"{side['mean']:.6g}"


def summary(result: WhatIf, *, wall: float | None = None, workers: int | None = None) -> str:
    seeds = result.seeds
    head = f"What-if {result.scenario}: {len(seeds)} seed{'s' * (len(seeds) > 1)} "
    head += f"({seeds[0]}..{seeds[-1]})" if len(seeds) > 1 else f"({seeds[0]})"
    runs = sum(r is not None for r in (*result.before, *result.after))
    head += f", {runs} of {2 * len(seeds)} runs"
    if workers is not None:
        head += f", {workers} worker{'s' * (workers > 1)}"
    head += f", {wall:.1f} s wall" if wall is not None else ""
    lines = [head]
    changes = [a for a in result.actions if a["action"] != "ignore"]
    ignored = [a for a in result.actions if a["action"] == "ignore"]
    lines.append(
        "change: "
        + ", ".join(f"{a['action']} {a['kind']} {a['namespace']}/{a['name']}" for a in changes)
    )
    if ignored:
        lines.append(
            "ignored (the mesh does not read them): "
            + ", ".join(f"{a['kind']} {a['namespace']}/{a['name']}" for a in ignored)
        )
    lines.append("")
    rows: list[tuple[str, ...]] = [("", "", "before", "after", "after - before (95% CI)")]
    rows += _rows(result.comparison)
    lines += _table(rows)
    lines.append("means over the seeds; * the interval leaves out 0")
    if result.slos:
        lines += ["", f"SLOs ({RULE}):", "  before after"]
        lines += [line for s in result.slos for line in _slo_lines(s)]
    for warning in result.warnings:
        lines.append(f"warning: after the change the mesh rejects {warning}")
    lines += ["", verdict_line(result)]
    return "\n".join(lines)


def verdict_line(result: WhatIf) -> str:
    verdict = result.verdict
    if verdict is Verdict.BREAKS:
        names = ", ".join(repr(s.name) for s in result.broken)
        count = len(result.broken)
        return (
            f"verdict: the change breaks {count} SLO{'s' * (count > 1)} that held before: {names}"
        )
    if verdict is Verdict.SAFE:
        return "verdict: no SLO that held before breaks"
    return (
        f"verdict: undecided: the budget of {result.budget:g} s ran out before the runs could tell"
        if result.budget is not None
        else "verdict: undecided"
    )


# ---------------------------------------------------------------------------------------------
# Plots


def _mean_series(runs: list[dict[str, Any]], service: str, pick: Any) -> list[float]:
    """Each bucket's mean over the runs that have a value there."""
    series = [
        pick(r["timeseries"]["services"][service])
        for r in runs
        if service in r["timeseries"]["services"]
    ]
    if not series:
        return []
    out = []
    for values in zip(*series, strict=True):
        known = [v for v in values if v is not None]
        out.append(math.fsum(known) / len(known) if known else float("nan"))
    return out


def _overlay(
    ax: Any,
    t: list[float],
    sides: tuple[tuple[list[dict[str, Any]], str, str], ...],
    name: str,
    label: str,
    pick: Any,
    scale: float,
    *,
    step: bool,
) -> None:
    """One line per side (before solid, after dashed) of ``name``'s mean series, one colour."""
    color = None
    for runs, style, side in sides:
        values = _mean_series(runs, name, pick)
        if values:
            draw = ax.step if step else ax.plot
            extra = {"where": "post"} if step else {}
            scaled = [v * scale for v in values]
            line = draw(t, scaled, linestyle=style, color=color, label=f"{label} {side}", **extra)
            color = line[0].get_color()


def plot(result: WhatIf, out: Path) -> list[Path]:
    before = [r for r in result.before if r is not None]
    after = [r for r in result.after if r is not None]
    if not before or not after:
        return []
    first = before[0]
    t = first["timeseries"]["t"]
    services = sorted(
        set(first["timeseries"]["services"]) | set(after[0]["timeseries"]["services"])
    )
    sides = ((before, "-", "before"), (after, "--", "after"))
    files = []
    title = f"{result.scenario}: before (solid) and after (dashed) the change"

    fig, ax = plt.subplots(figsize=(9, 4.5))
    for name in services:
        _overlay(ax, t, sides, name, f"{name} p99", lambda s: s["p99"], 1000, step=False)
    mark_events(ax, first)
    ax.set(title=f"{title}: p99 latency", xlabel="time (s)", ylabel="latency (ms)")
    ax.set_yscale("log")
    ax.legend(fontsize=7, loc="upper left")
    files.append(save_figure(fig, out / "latency.png"))

    fig, ax = plt.subplots(figsize=(9, 4.5))
    for name in services:
        _overlay(ax, t, sides, name, name, lambda s: s["successRate"], 100, step=True)
    mark_events(ax, first)
    ax.set(
        title=f"{result.scenario}: success rate",
        xlabel="time (s)",
        ylabel="success (%)",
        ylim=(-2, 102),
    )
    ax.legend(fontsize=7, loc="lower left")
    files.append(save_figure(fig, out / "success.png"))

    split = []
    for name in services:
        backends = sorted(
            {
                b
                for r in before + after
                for b in r["timeseries"]["services"].get(name, {}).get("shares", {})
            }
        )
        if len(backends) > 1:
            split += [(name, backend) for backend in backends]
    if split:
        fig, ax = plt.subplots(figsize=(9, 4.5))
        for name, backend in split:

            def share(s: dict[str, Any], b: str = backend) -> Any:
                return s["shares"].get(b, [None] * len(t))

            _overlay(ax, t, sides, name, f"{name} -> {backend}", share, 100, step=True)
        mark_events(ax, first)
        ax.set(
            title=f"{result.scenario}: backend shares",
            xlabel="time (s)",
            ylabel="share of requests (%)",
            ylim=(-2, 102),
        )
        ax.legend(fontsize=7, loc="center left")
        files.append(save_figure(fig, out / "shares.png"))
    return files


def html_report(result: WhatIf, images: list[Path], text: str) -> str:
    verdict = result.verdict
    cls = {"safe": "pass", "breaks": "fail", "undecided": "unsure"}[verdict.value]
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>simmesh what-if: {html.escape(result.scenario)}</title>",
        "<style>body{font-family:sans-serif;max-width:1000px;margin:2em auto}"
        "pre{background:#f6f6f6;padding:1em;overflow:auto}.pass{color:#070}.fail{color:#b00}"
        ".unsure{color:#a60}td,th{padding:2px 8px;text-align:left}</style></head><body>",
        f"<h1>What-if: {html.escape(result.scenario)}</h1>",
        f"<p class='{cls}'><b>{html.escape(verdict_line(result))}</b></p>",
    ]
    if result.slos:
        parts.append(
            f"<h2>SLOs</h2><p>{html.escape(RULE)}.</p><table><tr><th>SLO</th><th>before</th>"
            "<th>after</th><th>broken</th></tr>"
        )
        for slo in result.slos:
            mark = {True: "fail", False: "pass", None: "unsure"}[slo.broken]
            parts.append(
                f"<tr><td>{html.escape(slo.name)}</td>"
                f"<td>{slo.passes_before}/{slo.runs_before}</td>"
                f"<td>{slo.passes_after}/{slo.runs_after}</td>"
                f"<td class='{mark}'>{BROKEN[slo.broken]}</td></tr>"
            )
        parts.append("</table>")
    parts.append(f"<h2>Before and after</h2><pre>{html.escape(text)}</pre>")
    parts += embedded_images(images, width=900)
    parts.append("</body></html>")
    return "\n".join(parts)


def write_reports(
    result: WhatIf, out: Path, *, wall: float | None = None, workers: int | None = None
) -> str:
    out.mkdir(parents=True, exist_ok=True)
    write_output(out / "results.json", results_json(result.to_json()))
    text = summary(result, wall=wall, workers=workers)
    images = plot(result, out)
    write_output(out / "report.html", html_report(result, images, text))
    return text
