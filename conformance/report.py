"""What a run tells people and CI: a table on the terminal, JUnit XML and a JSON report.

The table has one line per case (verdict, time, the slowest propagation) and, under a failed
case, the step that failed with what was expected and what was seen. ``report.json`` has
everything (every step, its time and propagation); ``junit.xml`` has one testcase per case,
with the failure's expected/seen text and the propagation times as properties.
"""

from __future__ import annotations

import json
import platform
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from conformance.runner import CaseResult

__all__ = ["summary", "table", "write"]

MARK = {"pass": "PASS", "fail": "FAIL", "error": "ERROR", "skip": "SKIP"}


def summary(results: Sequence[CaseResult]) -> dict[str, int]:
    out = {v: 0 for v in MARK}
    for r in results:
        out[r.verdict] += 1
    return out


def _propagation(r: CaseResult) -> str:
    times = r.propagation
    if not times:
        return "-"
    return f"{max(times.values()):.2f}s ({len(times)})"


def table(results: Sequence[CaseResult], meta: Mapping[str, Any]) -> str:
    width = max([len("CASE"), *(len(r.name) for r in results)])
    lines = [f"{'CASE':<{width}}  RESULT  TIME     PROPAGATION (max, n)"]
    for r in results:
        time_ = f"{r.seconds:6.1f}s" if r.verdict != "skip" else "      -"
        lines.append(f"{r.name:<{width}}  {MARK[r.verdict]:<6}  {time_}  {_propagation(r)}")
        lines += [f"{'':<{width}}    {line}" for line in _why(r)]
    counts = summary(results)
    lines.append("")
    lines.append(
        f"{counts['pass']} passed, {counts['fail']} failed, {counts['error']} errors, "
        f"{counts['skip']} skipped in {meta['seconds']:.1f}s "
        f"(adapter {meta['adapter']}, mesh in {meta['mode']} mode, {meta['server']})"
    )
    return "\n".join(lines) + "\n"


def _why(r: CaseResult) -> list[str]:
    if r.verdict == "skip":
        return [r.message]
    if r.verdict == "pass":
        return []
    step = r.failed_step()
    lines = []
    if step is not None:
        lines.append(f"step: {step.what}")
        if step.expected:
            lines.append(f"expected: {step.expected}")
        lines.append(f"seen: {step.seen or r.message.splitlines()[0]}")
    else:
        lines.append(r.message.splitlines()[0] if r.message else "failed in setup")
    if r.kept:
        lines.append(f"kept namespaces: {', '.join(r.namespaces)}")
    return lines


def to_json(results: Sequence[CaseResult], meta: Mapping[str, Any]) -> dict[str, Any]:
    cases = []
    for r in results:
        item = asdict(r)
        item["propagation"] = r.propagation
        cases.append(item)
    return {**meta, "summary": summary(results), "cases": cases}


def junit(results: Sequence[CaseResult], meta: Mapping[str, Any]) -> ET.ElementTree:
    counts = summary(results)
    suite = ET.Element(
        "testsuite",
        name="smi-conformance",
        tests=str(len(results)),
        failures=str(counts["fail"]),
        errors=str(counts["error"]),
        skipped=str(counts["skip"]),
        time=f"{meta['seconds']:.2f}",
        hostname=platform.node(),
    )
    props = ET.SubElement(suite, "properties")
    for key in ("adapter", "mode", "server", "started"):
        ET.SubElement(props, "property", name=key, value=str(meta[key]))
    for r in results:
        case = ET.SubElement(
            suite,
            "testcase",
            classname=f"conformance.{r.tags[0]}",
            name=r.name,
            time=f"{r.seconds:.2f}",
        )
        if r.propagation:
            cprops = ET.SubElement(case, "properties")
            for what, seconds in r.propagation.items():
                ET.SubElement(cprops, "property", name=f"propagation: {what}", value=f"{seconds}")
        text = "\n".join(_why(r))
        if r.verdict == "skip":
            ET.SubElement(case, "skipped", message=r.message)
        elif r.verdict in ("fail", "error"):
            tag = "failure" if r.verdict == "fail" else "error"
            element = ET.SubElement(
                case, tag, message=r.message.splitlines()[0] if r.message else tag
            )
            element.text = text + ("\n\n" + r.message if r.verdict == "error" else "")
    ET.indent(suite)
    return ET.ElementTree(suite)


def write(out: Path, results: Sequence[CaseResult], meta: Mapping[str, Any]) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "report.txt", out / "report.json", out / "junit.xml"]
    paths[0].write_text(table(results, meta))
    paths[1].write_text(json.dumps(to_json(results, meta), indent=2) + "\n")
    junit(results, meta).write(paths[2], encoding="utf-8", xml_declaration=True)
    return paths
