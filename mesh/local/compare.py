"""Simulated and real results side by side: the table, the fidelity verdict, plots and HTML.

A row per service and per split backend. Per row: requests, success rate, p50, p99, share,
retries per request, 429s per request, denials and circuit breaker openings, simulated and
real, with the error. The fidelity verdict is judged on the tolerance (``--tolerance``,
default: 2 points of success rate, 25% of p50 and of p99, relative to the real value), on the
rows that have enough requests for the number to mean something: success rate from 200
requests, p50 from 50 successful requests, p99 from 1,000 (fewer, and one stall of the
machine moves it). The other columns are shown, not judged.
"""

from __future__ import annotations

import html
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from sim.report import embedded_images, save_figure

__all__ = ["Tolerance", "compare", "html_page", "plot", "side_by_side"]

MIN_REQUESTS = {"success": 200, "p50": 50, "p99": 1000}


@dataclass(frozen=True)
class Tolerance:
    success: float = 0.02  # absolute, share of requests
    p50: float = 0.25  # relative to the real value
    p99: float = 0.25

    @classmethod
    def parse(cls, text: str) -> Tolerance:
        """``success=0.02,p50=0.25,p99=0.25`` (any subset); ValueError with one line."""
        values = {}
        for part in filter(None, (p.strip() for p in text.split(","))):
            key, sep, value = part.partition("=")
            if not sep or key not in ("success", "p50", "p99"):
                raise ValueError(f"--tolerance {text!r}: expected success=X,p50=Y,p99=Z")
            try:
                number = float(value.rstrip("%")) / (100 if value.endswith("%") else 1)
            except ValueError:
                raise ValueError(f"--tolerance {part!r}: {value!r} is not a number") from None
            if not number >= 0:
                raise ValueError(f"--tolerance {part!r}: expected a number >= 0")
            values[key] = number
        return cls(**values)


def _rows(results: dict[str, Any]) -> dict[str, dict[str, Any]]:
    out = {}
    for name, s in results["services"].items():
        out[name] = s
        backends = s["backends"]
        if len(backends) > 1 or (backends and next(iter(backends)) != name):
            for bname, b in backends.items():
                out[f"{name} -> {bname}"] = b
    return out


def _per_request(stats: dict[str, Any], key: str) -> float | None:
    n = stats["requests"]
    return stats[key] / n if n else None


def _judge(what: str, sim: dict[str, Any], real: dict[str, Any], tol: Tolerance) -> Any:
    """(simulated, real, error, ok or None when not judged)."""
    if what == "success":
        a, b = sim["successRate"], real["successRate"]
        if a is None or b is None:
            return a, b, None, None
        error = a - b
        enough = min(sim["requests"], real["requests"]) >= MIN_REQUESTS["success"]
        return a, b, error, (abs(error) <= tol.success + 1e-12) if enough else None
    a, b = sim["latency"][what], real["latency"][what]
    if a is None or b is None or b <= 0:
        return a, b, None, None
    error = (a - b) / b
    enough = min(sim["succeeded"], real["succeeded"]) >= MIN_REQUESTS[what]
    return a, b, error, (abs(error) <= getattr(tol, what) + 1e-12) if enough else None


def compare(sim: dict[str, Any], real: dict[str, Any], tol: Tolerance) -> dict[str, Any]:
    srows, rrows = _rows(sim), _rows(real)
    rows = []
    for name in sorted(set(srows) | set(rrows), key=lambda n: (n.split(" -> ")[0], n)):
        s, r = srows.get(name), rrows.get(name)
        row: dict[str, Any] = {"row": name, "simulated": s, "real": r, "checks": {}}
        if s is not None and r is not None:
            for what in ("success", "p50", "p99"):
                a, b, error, ok = _judge(what, s, r, tol)
                row["checks"][what] = {"simulated": a, "real": b, "error": error, "ok": ok}
        elif (s or r or {}).get("requests", 0) >= MIN_REQUESTS["success"]:
            row["checks"]["present"] = {"ok": False, "error": "only in one run"}
        rows.append(row)
    judged = [c["ok"] for row in rows for c in row["checks"].values() if c["ok"] is not None]
    slos = []
    for a, b in zip(sim["slos"], real["slos"], strict=True):
        slos.append({"name": a["name"], "simulated": a, "real": b, "agree": a["ok"] == b["ok"]})
    return {
        "tolerance": {"success": tol.success, "p50": tol.p50, "p99": tol.p99},
        "rows": rows,
        "withinTolerance": all(judged),
        "judged": len(judged),
        "missed": sum(1 for ok in judged if not ok),
        "slos": slos,
        "slosOk": {
            "simulated": all(s["ok"] for s in sim["slos"]),
            "real": all(s["ok"] for s in real["slos"]),
        },
    }


# -- text ------------------------------------------------------------------------------------


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:.1f}"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.2f}%"


def _err(check: dict[str, Any] | None, *, points: bool = False) -> str:
    if not check or check["error"] is None:
        return ""
    text = f"{check['error'] * 100:+.1f}{'pt' if points else '%'}"
    if check["ok"] is False:
        return f"{text} MISS"
    return text if check["ok"] else f"({text})"


def _pair(a: str, b: str) -> str:
    return f"{a} / {b}"


def side_by_side(comparison: dict[str, Any], sim: dict[str, Any], real: dict[str, Any]) -> str:
    header = (
        "service / backend",
        "requests sim / real",
        "success sim / real",
        "err",
        "p50 ms sim / real",
        "err",
        "p99 ms sim / real",
        "err",
        "share sim / real",
        "retries/req sim / real",
        "429 sim / real",
        "cb opens sim / real",
    )
    table = [header]
    for row in comparison["rows"]:
        s, r = row["simulated"] or {}, row["real"] or {}
        c = row["checks"]

        def get(d: dict[str, Any], *path: str) -> Any:
            for key in path:
                d = d.get(key) if isinstance(d, dict) else None  # type: ignore[assignment]
            return d

        def rate(d: dict[str, Any], key: str) -> str:
            value = _per_request(d, key) if d else None
            return "-" if value is None else f"{value:.3f}"

        table.append(
            (
                row["row"].replace(" -> ", "  -> ") if " -> " in row["row"] else row["row"],
                _pair(f"{s.get('requests', 0):,}", f"{r.get('requests', 0):,}"),
                _pair(_pct(s.get("successRate")), _pct(r.get("successRate"))),
                _err(c.get("success"), points=True) or ("MISS" if "present" in c else ""),
                _pair(_ms(get(s, "latency", "p50")), _ms(get(r, "latency", "p50"))),
                _err(c.get("p50")),
                _pair(_ms(get(s, "latency", "p99")), _ms(get(r, "latency", "p99"))),
                _err(c.get("p99")),
                _pair(_pct(s.get("share")), _pct(r.get("share")))
                if "share" in s or "share" in r
                else "",
                _pair(rate(s, "retries"), rate(r, "retries")),
                _pair(f"{s.get('rateLimited', 0):,}", f"{r.get('rateLimited', 0):,}"),
                _pair(str(s.get("circuitOpens", 0)), str(r.get("circuitOpens", 0))),
            )
        )
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    lines = []
    for i, row in enumerate(table):
        lines.append(
            "  ".join(
                cell.ljust(w) if j == 0 else cell.rjust(w)
                for j, (cell, w) in enumerate(zip(row, widths, strict=True))
            ).rstrip()
        )
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    tol = comparison["tolerance"]
    verdict = (
        "within the tolerance"
        if comparison["withinTolerance"]
        else f"OUTSIDE the tolerance ({comparison['missed']} of {comparison['judged']} checks)"
    )
    lines += [
        "",
        f"fidelity: {verdict} (success {tol['success'] * 100:g} points, p50 "
        f"{tol['p50'] * 100:g}%, p99 {tol['p99'] * 100:g}%; errors are simulated - real, "
        "relative to real; (x): too few requests to judge)",
    ]
    lines += _costs(sim, real)
    if comparison["slos"]:
        lines += ["", "SLOs (simulated | real):"]
        for slo in comparison["slos"]:
            a, b = slo["simulated"], slo["real"]
            for ca, cb in zip(a["checks"], b["checks"], strict=True):
                lines.append(
                    f"  {'PASS' if ca['ok'] else 'FAIL'} {_measured(ca)} | "
                    f"{'PASS' if cb['ok'] else 'FAIL'} {_measured(cb)}  "
                    f"{slo['name']}: {ca['what']} {ca['objective']}"
                    + ("" if slo["agree"] else "  (verdicts differ)")
                )
    return "\n".join(lines)


def _n(value: Any) -> str:
    return f"{value:,}" if isinstance(value, int) else "-"


def _costs(sim: dict[str, Any], real: dict[str, Any]) -> list[str]:
    """The tunnels and the proxies' CPU, simulated / real (mTLS on: both results carry them;
    shown, not judged)."""
    s, r = sim.get("mtls"), real.get("mtls")
    if not s and not r:
        return []
    s, r = s or {}, r or {}
    mode = r.get("mode") or s.get("mode")
    lines = [
        "",
        f"mTLS ({mode}), simulated / real (shown, not judged):",
        f"  requests and flows through a tunnel  {_n(s.get('tunnelledAttempts'))} / "
        f"{_n(r.get('tunnelledAttempts'))}",
        f"  tunnel handshakes                    {_n(s.get('handshakes'))} / "
        f"{_n(r.get('handshakes'))}"
        + (f" ({r['handshakeFailures']:,} failed)" if r.get("handshakeFailures") else ""),
    ]
    plaintext = r.get("plaintext") or {}
    if any(plaintext.values()):
        lines.append(
            f"  plaintext across nodes (real)        sent {plaintext.get('sent', 0):,}, "
            f"received {plaintext.get('received', 0):,}"
        )
    sc, rc = sim.get("proxyCpu") or {}, real.get("proxyCpu") or {}
    if sc or rc:

        def per(d: dict[str, Any]) -> str:
            value = d.get("perThousandRequests")
            return "-" if value is None else f"{value:.3f}"

        nodes = sorted(set(sc.get("nodes", {})) | set(rc.get("nodes", {})))
        each = ", ".join(
            f"{n} {sc.get('nodes', {}).get(n, {}).get('cpuSeconds', 0):.2f} / "
            f"{rc.get('nodes', {}).get(n, {}).get('cpuSeconds', 0):.2f} s"
            for n in nodes
        )
        lines.append(f"  proxy CPU s per 1,000 requests      {per(sc)} / {per(rc)} ({each})")
    return lines


def _measured(check: dict[str, Any]) -> str:
    value = check["measured"]
    return "none" if value is None else f"{value:g}"


# -- plots -----------------------------------------------------------------------------------


def _series(values: list[Any], scale: float = 1.0) -> list[float]:
    return [math.nan if v is None else v * scale for v in values]


def _events(ax: Any, results: dict[str, Any]) -> None:
    for event in results["events"]:
        ax.axvline(event["at"], color="grey", linestyle="--", linewidth=0.7)


def plot(sim: dict[str, Any], real: dict[str, Any], out: Path) -> list[Path]:
    """latency.png, success.png and (for splits) shares.png: simulated solid, real dashed."""
    files = []
    t_sim, t_real = sim["timeseries"]["t"], real["timeseries"]["t"]
    services = sorted(set(sim["timeseries"]["services"]) | set(real["timeseries"]["services"]))
    colours = {name: f"C{i % 10}" for i, name in enumerate(services)}

    def both(ax: Any, key: str, scale: float, label: str, name: str, p50: bool = False) -> None:
        styles = (("-", "--"), (":", "-."))[p50]
        for results, t, kind, dash in (
            (sim, t_sim, "sim", styles[0]),
            (real, t_real, "real", styles[1]),
        ):
            series = results["timeseries"]["services"].get(name)
            if series is not None:
                ax.plot(
                    t,
                    _series(series[key], scale),
                    dash,
                    color=colours[name],
                    label=f"{name} {label} ({kind})",
                    alpha=0.9 if kind == "sim" else 0.7,
                )

    fig, ax = plt.subplots(figsize=(10, 4.8))
    for name in services:
        both(ax, "p99", 1000, "p99", name)
        both(ax, "p50", 1000, "p50", name, p50=True)
    _events(ax, sim)
    ax.set(title=f"{sim['scenario']}: latency, simulated vs real", xlabel="time (s)", ylabel="ms")
    ax.set_yscale("log")
    ax.legend(fontsize=6, loc="upper left", ncol=2)
    files.append(save_figure(fig, out / "latency.png"))

    fig, ax = plt.subplots(figsize=(10, 4.8))
    for name in services:
        both(ax, "successRate", 100, "success", name)
    _events(ax, sim)
    ax.set(
        title=f"{sim['scenario']}: success rate, simulated vs real",
        xlabel="time (s)",
        ylabel="%",
        ylim=(-2, 102),
    )
    ax.legend(fontsize=6, loc="lower left")
    files.append(save_figure(fig, out / "success.png"))

    splits = [
        n for n in services if len(sim["timeseries"]["services"].get(n, {}).get("shares", {})) > 1
    ]
    if splits:
        fig, ax = plt.subplots(figsize=(10, 4.8))
        for i, name in enumerate(splits):
            backends = sim["timeseries"]["services"][name]["shares"]
            for j, backend in enumerate(sorted(backends)):
                colour = f"C{(i * 3 + j) % 10}"
                for results, t, dash, kind in (
                    (sim, t_sim, "-", "sim"),
                    (real, t_real, "--", "real"),
                ):
                    shares = results["timeseries"]["services"].get(name, {}).get("shares", {})
                    if backend in shares:
                        ax.step(
                            t,
                            _series(shares[backend], 100),
                            where="post",
                            linestyle=dash,
                            color=colour,
                            label=f"{name} -> {backend} ({kind})",
                        )
        _events(ax, sim)
        ax.set(
            title=f"{sim['scenario']}: backend shares, simulated vs real",
            xlabel="time (s)",
            ylabel="% of requests",
            ylim=(-2, 102),
        )
        ax.legend(fontsize=6, loc="center left")
        files.append(save_figure(fig, out / "shares.png"))
    return files


def html_page(title: str, text: str, images: list[Path], comparison: dict[str, Any]) -> str:
    verdict = "within" if comparison["withinTolerance"] else "outside"
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>simmesh verify: {html.escape(title)}</title>",
        "<style>body{font-family:sans-serif;max-width:1150px;margin:2em auto}"
        "pre{background:#f6f6f6;padding:1em;overflow:auto;font-size:12px}</style></head><body>",
        f"<h1>simmesh verify: {html.escape(title)}</h1>",
        f"<p>Fidelity: <b>{verdict} the tolerance</b>. Simulated: solid (p50 dotted); real "
        "(Locust through the local mesh): dashed (p50 dash-dotted).</p>",
        f"<pre>{html.escape(text)}</pre>",
    ]
    parts += embedded_images(images, width=1000)
    parts.append(
        "<h2>Comparison (JSON)</h2><pre>"
        + html.escape(json.dumps(comparison["tolerance"], sort_keys=True))
        + "</pre></body></html>"
    )
    return "\n".join(parts)
