"""The probe's measurement of the machine during a real run (mesh/local/probe.py) and how
verify reports it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mesh.local import probe
from mesh.local.verify import describe_load


def test_the_spec_keeps_the_tail_to_p99_99() -> None:
    late = [0.0001] * 9990 + [0.3] * 10  # ten stalls of 300 ms in 10,000 wake-ups
    points = probe.spec(late)["percentiles"]
    assert points[50] == points[99] == 0.0001
    assert points[99.95] == points[99.99] == 0.3


def test_late_wake_ups_are_kept_with_their_time() -> None:
    stalls: list[list[float]] = []
    before = time.time()
    late = probe.measure(20, work=0.0, stalls=stalls)
    assert len(late) == 20 and all(x >= 0 for x in late)
    for at, delay in stalls:  # on a quiet machine there may be none
        assert delay > probe.STALL and before - 1 <= at <= time.time()


@pytest.mark.skipif(not Path("/proc/stat").exists(), reason="Linux /proc")
def test_the_load_is_read_from_proc() -> None:
    load = probe.Load()
    load.start()
    end = time.monotonic() + 0.3
    while time.monotonic() < end:
        load.sample()
        time.sleep(0.02)
    record = load.stop()
    assert record["cpus"] == (os.cpu_count() or 1)
    assert len(record["loadavg"]) == 2
    assert 0 <= record["busy"] <= 1 and 0 <= record["steal"] <= 1
    assert record["runnable"] >= 0
    if Path("/proc/pressure/cpu").exists():
        assert 0 <= record["pressureSome"] <= 1.5


def test_the_probe_writes_wake_ups_stalls_and_load_when_stopped(tmp_path: Path) -> None:
    out = tmp_path / "wakeup.json"
    child = subprocess.Popen([sys.executable, "-m", "mesh.local.probe", str(out)])
    time.sleep(1.0)
    child.send_signal(signal.SIGTERM)
    assert child.wait(timeout=20) == 0
    document = json.loads(out.read_text())
    assert document["samples"] > 50
    assert "99.99" in document["wakeup"]["percentiles"]
    assert isinstance(document["stalls"], list)
    assert "load" in document


def test_verify_describes_the_load_in_a_few_words() -> None:
    load = {
        "loadavg": [3.54, 10.09],
        "pressureSome": 0.9598,
        "runnable": 8.05,
        "cpus": 2,
        "steal": 0.0018,
    }
    assert describe_load(load) == (
        "load average 3.54 -> 10.09, CPU pressure 96%, 8.05 runnable tasks on 2 CPUs, steal 0.2%"
    )
    assert describe_load({}) == ""
