"""How contended this machine's CPUs are: how late a sleeping process is woken, and how busy
the machine is meanwhile.

``python -m mesh.local.probe FILE`` runs beside a real run of the local mesh (run.py) and,
when stopped (SIGTERM), writes to FILE:

- ``wakeup``: the quantiles of how late its 2 ms sleeps ended (each followed by 0.3 ms of CPU
  work, as a busy event loop would do), as an empirical latency spec (scenario format), fine
  in the tail (to p99.99): a stall of 100 ms in which the process is not scheduled at all is
  one sample in tens of thousands, and one such stall can start a metastable storm;
- ``stalls``: every wake-up later than :data:`STALL` (wall-clock start, seconds late), so a
  run's stalls can be put back at the times they happened;
- ``load``: the machine's load over the same window, from /proc (Linux; missing elsewhere):
  the load average at the start and end, the share of the window in which some task waited
  for a CPU (``/proc/pressure/cpu`` "some"), the CPUs' busy and steal shares
  (``/proc/stat``) and the mean number of runnable tasks (``procs_running``, sampled).

``simmesh verify`` simulates with the wake-ups and the stalls, so the simulation's wake-up
delays (sim/resources.py) are the machine's during the run, not at calibration time: on a
shared machine other work comes and goes. The same measurement as loadtests/calibrate.py.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

QUANTILES = (10, 25, 50, 75, 90, 95, 97, 98, 99, 99.5, 99.9, 99.95, 99.99)
SLEEP = 0.002
WORK = 0.0003  # a busy loop's share of the CPU (about 13%), see measure()
STALL = 0.005  # a wake-up this late is kept, with its time, in ``stalls``


def spec(late: list[float]) -> dict[str, Any]:
    """An empirical latency spec of the measured lateness (seconds)."""
    ordered = sorted(late) or [0.0]
    points = {
        q: round(ordered[min(len(ordered) - 1, int(len(ordered) * q / 100))], 6) for q in QUANTILES
    }
    return {"dist": "empirical", "percentiles": points}


def measure(count: int, work: float = WORK, stalls: list[list[float]] | None = None) -> list[float]:
    """Sleep 2 ms, then do ``work`` seconds of CPU work, ``count`` times: the duty cycle of
    a busy event loop, which the kernel's scheduler does not favour as it favours a process
    that only ever sleeps. Wake-ups later than :data:`STALL` go to ``stalls`` as
    [wall-clock time the sleep should have ended, seconds late]."""
    late = []
    for _ in range(count):
        start = time.perf_counter()
        time.sleep(SLEEP)
        woke = time.perf_counter()
        delay = max(0.0, woke - start - SLEEP)
        late.append(delay)
        if stalls is not None and delay > STALL:
            stalls.append([round(time.time() - delay, 4), round(delay, 5)])
        while time.perf_counter() - woke < work:
            pass
    return late


class Load:
    """The machine's load between :meth:`start` and :meth:`stop`, from /proc (``{}`` where
    there is none)."""

    def __init__(self) -> None:
        self.first: dict[str, Any] = {}
        self.running: list[int] = []

    @staticmethod
    def read() -> dict[str, Any]:
        now: dict[str, Any] = {"t": time.monotonic()}
        try:
            now["loadavg"] = float(Path("/proc/loadavg").read_text().split()[0])
            for line in Path("/proc/stat").read_text().splitlines():
                parts = line.split()
                if parts[0] == "cpu":
                    now["cpu"] = [int(x) for x in parts[1:9]]
                elif parts[0] == "procs_running":
                    now["running"] = int(parts[1])
        except (OSError, ValueError, IndexError):
            return {}
        try:
            some = Path("/proc/pressure/cpu").read_text().splitlines()[0]
            now["pressure"] = int(some.rsplit("total=", 1)[1])  # microseconds
        except (OSError, ValueError, IndexError):
            pass
        return now

    def start(self) -> None:
        self.first = self.read()

    def sample(self) -> None:
        now = self.read()
        if "running" in now:
            self.running.append(now["running"] - 1)  # not counting this probe

    def stop(self) -> dict[str, Any]:
        last, first = self.read(), self.first
        if not first or not last:
            return {}
        wall = last["t"] - first["t"]
        ticks = [b - a for a, b in zip(first["cpu"], last["cpu"], strict=True)]
        total = sum(ticks) or 1
        # user nice system idle iowait irq softirq steal
        busy = total - ticks[3] - ticks[4]
        out: dict[str, Any] = {
            "seconds": round(wall, 1),
            "cpus": os.cpu_count() or 1,
            "loadavg": [first["loadavg"], last["loadavg"]],
            "busy": round(busy / total, 4),
            "steal": round(ticks[7] / total, 4),
        }
        if "pressure" in first and "pressure" in last and wall > 0:
            out["pressureSome"] = round((last["pressure"] - first["pressure"]) / 1e6 / wall, 4)
        if self.running:
            out["runnable"] = round(sum(self.running) / len(self.running), 2)
        return out


class _Stop(Exception):
    pass


def _stop(signum: int, frame: Any) -> None:
    raise _Stop


def main(argv: list[str] | None = None) -> int:
    out = Path((sys.argv[1:] if argv is None else argv)[0])
    late: list[float] = []
    stalls: list[list[float]] = []
    load = Load()
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    load.start()
    try:
        while True:
            late.extend(measure(50, stalls=stalls))
            load.sample()
    except _Stop:
        pass
    document = {
        "samples": len(late),
        "wakeup": spec(late),
        "stalls": stalls,
        "load": load.stop(),
    }
    out.write_text(json.dumps(document) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
