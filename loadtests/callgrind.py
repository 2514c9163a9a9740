"""callgrind_annotate's listing read back: the instructions of the whole run and of each
function (loadtests/profile_proxy.py per request, loadtests/profile_core.py per decision)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

__all__ = ["annotate"]

_LINE = re.compile(r"^\s*([\d,]+)\s+(?:\(\s*[\d.]+%\)\s+)?(\S+?):(\S+)")


def annotate(dump: Path, *, inclusive: bool) -> tuple[int, dict[str, int]]:
    """(instructions of the whole run, {function: its instructions}), inclusive of what it
    calls or its own (self) alone."""
    mode = "yes" if inclusive else "no"
    text = subprocess.run(
        ["callgrind_annotate", "--threshold=100", f"--inclusive={mode}", str(dump)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    total = 0
    counts: dict[str, int] = {}  # a function can be listed once per source file it spans
    for line in text.splitlines():
        if "PROGRAM TOTALS" in line:
            total = int(line.split()[0].replace(",", ""))
        match = _LINE.match(line)
        if match:
            name, count = match.group(3), int(match.group(1).replace(",", ""))
            before = counts.get(name, 0)
            counts[name] = max(count, before) if inclusive else before + count
    if not inclusive:
        # The frames on the stack when the counters were zeroed are listed with the whole
        # count as their own: not a function's self cost.
        counts = {name: count for name, count in counts.items() if count < total // 2}
    return total, counts
