"""The simmesh adapter's readiness: `simmesh check` must pass, within a settle time."""

from __future__ import annotations

from pathlib import Path

from conformance.adapter import Simmesh

FAILING = """proxies         FAIL    1/2 not on version v2: n2 on v1, last seen 0s ago"""


def fake_cli(tmp_path: Path, fail_times: int) -> str:
    """A `simmesh` that fails its first ``fail_times`` checks, as a proxy a poll behind."""
    counter = tmp_path / "calls"
    counter.write_text("0")
    cli = tmp_path / "simmesh"
    cli.write_text(
        f"""#!/bin/sh
n=$(($(cat {counter}) + 1)); echo $n > {counter}
echo "CHECK           RESULT  DETAIL"
echo "controller      OK      ready"
if [ $n -le {fail_times} ]; then echo "{FAILING}"; exit 1; fi
echo "proxies         OK      2/2 on version v2"
"""
    )
    cli.chmod(0o755)
    return str(cli)


class Clock:
    def __init__(self) -> None:
        self.now, self.pauses = 0.0, []

    def __call__(self) -> float:
        return self.now

    def pause(self, seconds: float) -> None:
        self.pauses.append(seconds)
        self.now += seconds


def test_a_check_that_passes_after_a_poll_is_ready(tmp_path: Path) -> None:
    clock = Clock()
    adapter = Simmesh(cli=fake_cli(tmp_path, 2), settle=30, clock=clock, pause=clock.pause)
    assert adapter._check() == []
    assert clock.pauses == [2.0, 2.0]


def test_a_check_failing_for_the_settle_time_is_reported(tmp_path: Path) -> None:
    clock = Clock()
    adapter = Simmesh(cli=fake_cli(tmp_path, 99), settle=10, clock=clock, pause=clock.pause)
    assert adapter._check() == ["simmesh check failed (for 10 s):", FAILING]
    assert len(clock.pauses) == 5 and (tmp_path / "calls").read_text().strip() == "6"
