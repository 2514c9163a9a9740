"""Reports of a simulation: the terminal summary, results.json, PNG plots and report.html.

results.json is written with sorted keys and rounded floats, so the same scenario and seed give
byte-identical files. Plots mark the timeline's events with vertical lines. Every output is
written by :func:`write_output`: a new file renamed into place, so a symbolic link planted in
an output directory is replaced, never followed.
"""

from __future__ import annotations

import base64
import contextlib
import html
import io
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def write_output(path: Path, data: str | bytes) -> Path:
    """Write ``path`` whole: a temporary file beside it (created exclusively, so no link is
    followed), renamed over whatever ``path`` was (a link is replaced, not its target)."""
    payload = data.encode() if isinstance(data, str) else data
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(payload)
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    return path


def results_json(results: dict[str, Any]) -> str:
    return json.dumps(results, sort_keys=True, indent=2) + "\n"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:.1f}ms"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.2f}%"


def summary(results: dict[str, Any], *, wall: float | None = None) -> str:
    req = results["requests"]
    head = (
        f"Scenario {results['scenario']} (seed {results['seed']}, {results['duration']:g} s "
        f"simulated, {req['finished']:,} requests"
    )
    head += f", {wall:.1f} s wall)" if wall is not None else ")"
    rows = [
        (
            "service / backend",
            "requests",
            "success",
            "p50",
            "p99",
            "share",
            "retries",
            "denied",
            "429",
            "cb opens",
        )
    ]
    for name, s in results["services"].items():
        rows.append(
            (
                name,
                f"{s['requests']:,}",
                _pct(s["successRate"]),
                _ms(s["latency"]["p50"]),
                _ms(s["latency"]["p99"]),
                "",
                f"{s['retries']:,}",
                f"{s['denied']:,}",
                f"{s['rateLimited']:,}",
                str(s["circuitOpens"]),
            )
        )
        backends = s["backends"]
        if len(backends) > 1 or (backends and next(iter(backends)) != name):
            for bname, b in backends.items():
                rows.append(
                    (
                        f"  -> {bname}",
                        f"{b['requests']:,}",
                        _pct(b["successRate"]),
                        _ms(b["latency"]["p50"]),
                        _ms(b["latency"]["p99"]),
                        _pct(b["share"]),
                        f"{b['retries']:,}",
                        "",
                        "",
                        str(b["circuitOpens"]),
                    )
                )
    o = results["overall"]
    rows.append(
        (
            "overall",
            f"{o['requests']:,}",
            _pct(o["successRate"]),
            _ms(o["latency"]["p50"]),
            _ms(o["latency"]["p99"]),
            "",
            f"{o['retries']:,}",
            f"{o['denied']:,}",
            f"{o['rateLimited']:,}",
            "",
        )
    )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = [head, ""]
    for i, row in enumerate(rows):
        cells = [row[0].ljust(widths[0])] + [
            c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)
        ]
        lines.append("  ".join(cells).rstrip())
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    outcomes = ", ".join(f"{k} {v:,}" for k, v in o["outcomes"].items())
    lines += ["", f"outcomes: {outcomes}"]
    if results["slos"]:
        lines += ["", "SLOs:"]
        for slo in results["slos"]:
            for check in slo["checks"]:
                verdict = "PASS" if check["ok"] else "FAIL"
                measured = check["measured"]
                shown = "none" if measured is None else f"{measured:g}"
                lines.append(
                    f"  {verdict}  {slo['name']}: {check['what']} {check['objective']} "
                    f"(measured {shown})"
                )
    for error in results.get("configErrors", []):
        lines.append(
            f"warning: {error['kind']} {error['namespace']}/{error['name']}: "
            f"{error['field']}: {error['message']}"
        )
    return "\n".join(lines)


def slos_ok(results: dict[str, Any]) -> bool:
    return all(slo["ok"] for slo in results["slos"])


# ---------------------------------------------------------------------------------------------
# Plots


def mark_events(ax: Any, results: dict[str, Any]) -> None:
    seen = set()
    for event in results["events"]:
        label = f"{event['action']}{' end' if event['undo'] else ''}"
        ax.axvline(
            event["at"],
            color="grey",
            linestyle="--",
            linewidth=0.8,
            label=None if label in seen else label,
        )
        seen.add(label)


def _series(values: list[Any]) -> list[float]:
    return [float("nan") if v is None else v for v in values]


def plot(results: dict[str, Any], out: Path) -> list[Path]:
    ts = results["timeseries"]
    t = ts["t"]
    files = []

    fig, ax = plt.subplots(figsize=(9, 4.5))
    for name, s in ts["services"].items():
        line = ax.plot(
            t, [v * 1000 if v is not None else float("nan") for v in s["p99"]], label=f"{name} p99"
        )[0]
        ax.plot(
            t,
            [v * 1000 if v is not None else float("nan") for v in s["p50"]],
            linestyle=":",
            color=line.get_color(),
            label=f"{name} p50",
        )
    mark_events(ax, results)
    ax.set(
        title=f"{results['scenario']}: latency of successful requests",
        xlabel="time (s)",
        ylabel="latency (ms)",
    )
    ax.set_yscale("log")
    ax.legend(fontsize=7, loc="upper left")
    files.append(save_figure(fig, out / "latency.png"))

    fig, ax = plt.subplots(figsize=(9, 4.5))
    for name, s in ts["services"].items():
        ax.step(
            t,
            [100 * v if v is not None else float("nan") for v in s["successRate"]],
            where="post",
            label=name,
        )
    mark_events(ax, results)
    ax.set(
        title=f"{results['scenario']}: success rate",
        xlabel="time (s)",
        ylabel="success (%)",
        ylim=(-2, 102),
    )
    ax.legend(fontsize=7, loc="lower left")
    files.append(save_figure(fig, out / "success.png"))

    split = {n: s for n, s in ts["services"].items() if len(s["shares"]) > 1}
    if split:
        fig, ax = plt.subplots(figsize=(9, 4.5))
        for name, s in split.items():
            for backend, shares in s["shares"].items():
                ax.step(
                    t,
                    [100 * v if v is not None else float("nan") for v in shares],
                    where="post",
                    label=f"{name} -> {backend}",
                )
        mark_events(ax, results)
        ax.set(
            title=f"{results['scenario']}: backend shares",
            xlabel="time (s)",
            ylabel="share of requests (%)",
            ylim=(-2, 102),
        )
        ax.legend(fontsize=7, loc="center left")
        files.append(save_figure(fig, out / "shares.png"))
    return files


def save_figure(fig: Any, path: Path) -> Path:
    """Write a plot as PNG and free it (the reports' plots, simulated and verified)."""
    fig.tight_layout()
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=90)
    plt.close(fig)
    return write_output(path, png.getvalue())


def embedded_images(images: list[Path], *, width: int) -> list[str]:
    """HTML for each PNG, inline (a report is one file)."""
    parts = []
    for image in images:
        data = base64.b64encode(image.read_bytes()).decode()
        parts.append(
            f"<h2>{html.escape(image.stem)}</h2>"
            f"<img alt='{image.stem}' src='data:image/png;base64,{data}' width='{width}'>"
        )
    return parts


def html_report(results: dict[str, Any], images: list[Path], text: str) -> str:
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>simmesh: {html.escape(results['scenario'])}</title>",
        "<style>body{font-family:sans-serif;max-width:1000px;margin:2em auto}"
        "pre{background:#f6f6f6;padding:1em;overflow:auto}.pass{color:#070}.fail{color:#b00}"
        "td,th{padding:2px 8px;text-align:left}</style></head><body>",
        f"<h1>{html.escape(results['scenario'])}</h1>",
        f"<p>{html.escape(results.get('description') or '')}</p>",
    ]
    if results["slos"]:
        parts.append(
            "<h2>SLOs</h2><table><tr><th>verdict</th><th>SLO</th><th>check</th>"
            "<th>objective</th><th>measured</th></tr>"
        )
        for slo in results["slos"]:
            for check in slo["checks"]:
                cls, word = ("pass", "PASS") if check["ok"] else ("fail", "FAIL")
                parts.append(
                    f"<tr><td class='{cls}'>{word}</td><td>{html.escape(slo['name'])}</td>"
                    f"<td>{html.escape(check['what'])}</td><td>{html.escape(check['objective'])}"
                    f"</td><td>{check['measured']}</td></tr>"
                )
        parts.append("</table>")
    parts.append(f"<h2>Summary</h2><pre>{html.escape(text)}</pre>")
    parts += embedded_images(images, width=900)
    if results["events"]:
        parts.append("<h2>Timeline</h2><ul>")
        for event in results["events"]:
            parts.append(
                f"<li>{event['at']:g} s: {html.escape(json.dumps(event, sort_keys=True))}</li>"
            )
        parts.append("</ul>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_reports(results: dict[str, Any], out: Path, *, wall: float | None = None) -> str:
    out.mkdir(parents=True, exist_ok=True)
    write_output(out / "results.json", results_json(results))
    text = summary(results, wall=wall)
    images = plot(results, out)
    write_output(out / "report.html", html_report(results, images, text))
    return text


# ---------------------------------------------------------------------------------------------
# Sweeps


def _plus(value: dict[str, Any] | None, show: Callable[[float], str]) -> str:
    """``mean ±half`` of an interval (just the mean for one seed)."""
    if value is None:
        return "-"
    if value["high"] is None:
        return show(value["mean"])
    return f"{show(value['mean'])} ±{show(value['high'] - value['mean'])}"


def _number(value: float) -> str:
    return f"{value:.1f}".removesuffix(".0")


def _verdicts(point: dict[str, Any]) -> str:
    """Each SLO: PASS in every seed, FAIL in none, or the count of seeds it passed."""
    words = []
    for slo in point["slos"]:
        if slo["passes"] == slo["runs"]:
            words.append("PASS")
        elif slo["passes"] == 0:
            words.append("FAIL")
        else:
            words.append(f"{slo['passes']}/{slo['runs']}")
    return " ".join(words) or "-"


def sweep_table(sweep: dict[str, Any]) -> str:
    """One row per grid point: means across seeds with their 95% intervals (+/- half)."""
    paths = [a["path"] for a in sweep["axes"]]
    header = [*paths, "requests", "success", "p50", "p99", "retries", "SLOs passed", "SLOs"]
    table = [header]
    for point in sweep["points"]:
        slos = len(point["slos"])
        passed = point["slosPassed"]
        table.append(
            [
                *(point["values"][p] for p in paths),
                f"{point['requests']['mean']:,.0f}",
                _plus(point["successRate"], _pct),
                _plus(point["p50"], _ms),
                _plus(point["p99"], _ms),
                f"{point['retries']['mean']:,.0f}",
                f"{_plus(passed, _number)} of {slos}",
                _verdicts(point),
            ]
        )
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    lines = []
    for i, row in enumerate(table):
        lines.append(
            "  ".join(
                c.ljust(w) if j < len(paths) or j == len(row) - 1 else c.rjust(w)
                for j, (c, w) in enumerate(zip(row, widths, strict=True))
            ).rstrip()
        )
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    seeds = sweep["seeds"]
    if len(seeds) > 1:
        lines.append(
            f"\nmeans over {len(seeds)} seeds ({seeds[0]}..{seeds[-1]}) ± the half width of the "
            "95% t interval; SLOs: PASS in every seed, FAIL in none, or the seeds passed"
        )
    return "\n".join(lines)


def plot_sweep(sweep: dict[str, Any], out: Path) -> Path:
    """One panel per metric (success, p50, p99, SLOs passed): the first path's values along
    x, one line per combination of the other paths' values, 95% intervals as error bars."""
    axes_ = sweep["axes"]
    first = axes_[0] if axes_ else {"path": "scenario", "values": [sweep["scenario"]]}
    xs = list(range(len(first["values"])))
    groups: dict[str, list[dict[str, Any]]] = {}
    for point in sweep["points"]:
        label = ", ".join(f"{a['path']}={point['values'][a['path']]}" for a in axes_[1:])
        groups.setdefault(label, []).append(point)
    panels = [
        ("successRate", "success rate", "%", 100.0),
        ("p50", "p50 latency", "ms", 1000.0),
        ("p99", "p99 latency", "ms", 1000.0),
        ("slosPassed", "SLOs passed", "of " + str(len(sweep["points"][0]["slos"])), 1.0),
    ]
    fig, axes = plt.subplots(1, 4, figsize=(15, 4))
    for ax, (key, title, unit, scale) in zip(axes, panels, strict=True):
        for label, points in groups.items():
            means, errors = [], []
            for point in points:
                value = point[key]
                means.append(float("nan") if value is None else value["mean"] * scale)
                half = (
                    None
                    if value is None or value["high"] is None
                    else value["high"] - value["mean"]
                )
                errors.append(0.0 if half is None else half * scale)
            ax.errorbar(xs, means, yerr=errors, marker="o", capsize=3, label=label or None)
        ax.set(title=title, ylabel=unit, xlabel=first["path"])
        ax.set_xticks(xs, first["values"])
        ax.tick_params(axis="x", labelsize=8)
    if len(groups) > 1:
        axes[0].legend(fontsize=7)
    seeds = len(sweep["seeds"])
    fig.suptitle(
        f"{sweep['scenario']}: {len(sweep['points'])} points x {seeds} seed{'s' * (seeds > 1)}"
        + (" (95% intervals)" if seeds > 1 else ""),
        fontsize=10,
    )
    return save_figure(fig, out / "sweep.png")
