"""The simmesh adapter's readiness: `simmesh check --wait` must pass within a settle time."""

from __future__ import annotations

from pathlib import Path

from conformance.adapter import Simmesh

FAILING = "proxies         FAIL    1/2 not on version v2: n2 on v1, last seen 0s ago"


def fake_cli(tmp_path: Path, exit_code: int) -> str:
    """A `simmesh` that records its arguments and answers like `check` with ``exit_code``."""
    cli = tmp_path / "simmesh"
    cli.write_text(
        f"""#!/bin/sh
echo "$@" > {tmp_path / "args"}
echo "CHECK           RESULT  DETAIL"
echo "controller      OK      ready"
if [ {exit_code} = 0 ]; then echo "proxies         OK      2/2 on version v2"; exit 0; fi
echo "simmesh check: not yet: proxies (1/2 not on version v2); 4 s left" >&2
echo "{FAILING}"
exit {exit_code}
"""
    )
    cli.chmod(0o755)
    return str(cli)


def test_ready_is_check_passing_within_the_settle_time(tmp_path: Path) -> None:
    adapter = Simmesh(cli=fake_cli(tmp_path, 0), kubeconfig="/k", settle=30)
    assert adapter._check() == []
    assert (tmp_path / "args").read_text().split() == [
        "check",
        "--namespace",
        "simmesh",
        "--zone",
        "mesh",
        "--kubeconfig",
        "/k",
        "--wait",
        "30",
    ]


def test_a_failing_check_is_reported_by_its_failed_rows(tmp_path: Path) -> None:
    adapter = Simmesh(cli=fake_cli(tmp_path, 1), settle=7.5)
    assert adapter._check() == ["simmesh check failed (for 7.5 s):", FAILING]
