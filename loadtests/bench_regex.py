"""Regex benchmark (issue 19): the catastrophic pattern on Python's backtracking ``re`` and on
RE2 as mesh/core/patterns.py runs it, the worst a pattern within the bounds can cost, and what
an ordinary match costs on each engine.

    python -m loadtests.bench_regex --out BENCHMARKS.md

The ``re`` rows take about 20 s (the 28-``a`` one alone 8 to 13 s); ``--old-max 24`` shortens
them. Times are the best of several runs (the machines are noisy), the ``re`` ones of one.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

from loadtests.report import machine, write_section
from mesh.core import patterns

EVIL = r"/r/(a+)+$"
HOSTILE = r"[ab]*a[ab]{990}$"  # close to the program bound, and built to defeat RE2's DFA
TYPICAL = r"/api/v[0-9]+/users/.*"


def best(call: Callable[[], object], runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return min(times)


def per_call(call: Callable[[], object], count: int = 200_000) -> float:
    """Microseconds per call, best of 3 batches."""
    return best(lambda: [call() for _ in range(count)], 3) / count * 1e6


def evil(count: int) -> str:
    return "/r/" + "a" * count + "!"


def show(seconds: float) -> str:
    return f"{seconds:.2f} s" if seconds >= 0.1 else f"{seconds * 1e3:.3f} ms"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--old-max", type=int, default=28, help="longest run of a on re")
    args = parser.parse_args(argv)
    old = re.compile(EVIL).match
    new = patterns.prefix(EVIL)
    rows = []
    for count in (20, 22, 24, 26, 28, 5000, patterns.MAX_SUBJECT_LENGTH - 4):
        subject = evil(count)
        before = show(best(partial(old, subject), 1)) if count <= args.old_max else "-"
        after = show(best(partial(new, subject), 5))
        rows.append(f"| `/r/` + {count:,} `a` + `!` | {before} | {after} |")
        print(rows[-1], file=sys.stderr)
    rng = random.Random(1)
    text = "".join(rng.choice("ab") for _ in range(patterns.MAX_SUBJECT_LENGTH))
    hostile = patterns.prefix(HOSTILE)
    worst = best(lambda: hostile(text), 5)
    size = patterns._compile(HOSTILE).programsize
    typical_re, typical_re2 = re.compile(TYPICAL).match, patterns.prefix(TYPICAL)
    literal_re, literal_re2 = re.compile("/metrics").match, patterns.prefix("/metrics")
    path = "/api/v2/users/42"
    costs = [
        ("`" + TYPICAL + "` on `" + path + "`", typical_re, typical_re2, path),
        ("`/metrics` (a literal) on `/metrics/x`", literal_re, literal_re2, "/metrics/x"),
    ]
    lines = [
        "## Regular expressions: Python's re against RE2 (issue 19)",
        "",
        "Command: `python -m loadtests.bench_regex --out BENCHMARKS.md` (in `make bench`).",
        f"Machine: {machine()}, load average {os.getloadavg()[0]:.1f} at the end. Best of 5 "
        "runs (of 1 on `re`).",
        "",
        f"`pathRegex: {EVIL}`, matched as the proxy matches it (anchored at the start):",
        "",
        "| path | Python `re` (before) | RE2, `mesh/core/patterns.py` (now) |",
        "|---|---:|---:|",
        *rows,
        "",
        f"The worst within the bounds: `{HOSTILE}` ({size} RE2 instructions, the bound is "
        f"{patterns.MAX_PROGRAM_SIZE}) over {len(text):,} random `a`/`b` (the subject bound): "
        f"**{show(worst)}**.",
        "",
        "An ordinary match, microseconds per call:",
        "",
        "| pattern and subject | Python `re` | RE2 (literal: `startswith`) |",
        "|---|---:|---:|",
    ]
    for label, before_call, after_call, subject in costs:
        before_us = per_call(partial(before_call, subject))
        after_us = per_call(partial(after_call, subject))
        lines.append(f"| {label} | {before_us:.2f} | {after_us:.2f} |")
    text_out = "\n".join(lines)
    print(text_out)
    if args.out:
        write_section(args.out, "regex", text_out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
