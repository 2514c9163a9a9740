"""The reports: a table people read, JUnit XML and JSON that CI reads; exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

from conformance import report
from conformance.runner import CaseResult, StepResult

META = {
    "adapter": "simmesh",
    "mode": "acl",
    "server": "https://k",
    "started": "now",
    "seconds": 12.5,
}


def results() -> list[CaseResult]:
    ok = CaseResult(
        "split-exact",
        "t",
        ("split",),
        seconds=3.0,
        steps=[StepResult("exactly 50/0", "pass", 1.0, propagation=0.4)],
    )
    bad = CaseResult(
        "access-grant-revoke",
        "t",
        ("access",),
        verdict="fail",
        seconds=9.0,
        message="expected x; saw y",
        namespaces=("smi-a",),
        kept=True,
        steps=[
            StepResult(
                "denied",
                "fail",
                5.0,
                expected="a -> GET b/echo: HTTP 403",
                seen="HTTP 200 from b x1",
            )
        ],
    )
    skip = CaseResult(
        "default-split",
        "t",
        ("default-mode",),
        verdict="skip",
        message="needs the mesh in default mode",
    )
    return [ok, bad, skip]


def test_table_shows_verdicts_propagation_and_what_failed() -> None:
    text = report.table(results(), META)
    assert "split-exact          PASS" in text and "0.40s (1)" in text
    assert "expected: a -> GET b/echo: HTTP 403" in text and "seen: HTTP 200 from b x1" in text
    assert "kept namespaces: smi-a" in text
    assert "1 passed, 1 failed, 0 errors, 1 skipped in 12.5s" in text


def test_junit_and_json(tmp_path: Path) -> None:
    paths = report.write(tmp_path, results(), META)
    suite = ET.parse(paths[2]).getroot()
    assert (suite.get("tests"), suite.get("failures"), suite.get("skipped")) == ("3", "1", "1")
    failure = suite.find("testcase[@name='access-grant-revoke']/failure")
    assert failure is not None and "seen: HTTP 200 from b x1" in (failure.text or "")
    prop = suite.find("testcase[@name='split-exact']/properties/property")
    assert prop is not None and prop.get("value") == "0.4"
    data = json.loads(paths[1].read_text())
    assert data["summary"] == {"pass": 1, "fail": 1, "error": 0, "skip": 1}
    assert data["cases"][0]["propagation"] == {"exactly 50/0": 0.4}
    assert paths[0].read_text() == report.table(results(), META)


def test_no_cluster_is_exit_2_with_a_clear_message(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "conformance", "--kubeconfig", str(tmp_path / "none")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    assert "the cluster is not ready for the suite" in done.stderr
    assert "cannot read the kubeconfig" in done.stderr


def test_an_unknown_case_is_exit_2() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "conformance", "-k", "nope"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2 and "no case matches nope" in done.stderr
