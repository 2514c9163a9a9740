"""How contended this machine's CPUs are: how late a sleeping process is woken.

``python -m mesh.local.probe FILE`` runs beside a real run of the local mesh (run.py) and,
when stopped (SIGTERM), writes to FILE the quantiles of how late its 2 ms sleeps ended (each
followed by 0.3 ms of CPU work, as a busy event loop would do), as an empirical latency spec
(scenario format). ``simmesh verify`` simulates with it, so the
simulation's wake-up delays (sim/resources.py) are the machine's during the run, not at
calibration time: on a shared machine other work comes and goes. The same measurement as
loadtests/calibrate.py, fine in the tail, where contention shows.
"""

from __future__ import annotations

import json
import signal
import sys
import time
from pathlib import Path
from typing import Any

QUANTILES = (10, 25, 50, 75, 90, 95, 97, 98, 99, 99.5, 99.9)
SLEEP = 0.002
WORK = 0.0003  # a busy loop's share of the CPU (about 13%), see measure()


def spec(late: list[float]) -> dict[str, Any]:
    """An empirical latency spec of the measured lateness (seconds)."""
    ordered = sorted(late) or [0.0]
    points = {
        q: round(ordered[min(len(ordered) - 1, int(len(ordered) * q / 100))], 6) for q in QUANTILES
    }
    return {"dist": "empirical", "percentiles": points}


def measure(count: int, work: float = WORK) -> list[float]:
    """Sleep 2 ms, then do ``work`` seconds of CPU work, ``count`` times: the duty cycle of
    a busy event loop, which the kernel's scheduler does not favour as it favours a process
    that only ever sleeps."""
    late = []
    for _ in range(count):
        start = time.perf_counter()
        time.sleep(SLEEP)
        woke = time.perf_counter()
        late.append(max(0.0, woke - start - SLEEP))
        while time.perf_counter() - woke < work:
            pass
    return late


class _Stop(Exception):
    pass


def _stop(signum: int, frame: Any) -> None:
    raise _Stop


def main(argv: list[str] | None = None) -> int:
    out = Path((sys.argv[1:] if argv is None else argv)[0])
    late: list[float] = []
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    try:
        while True:
            late.extend(measure(50))
    except _Stop:
        pass
    out.write_text(json.dumps({"samples": len(late), "wakeup": spec(late)}) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
