"""Every input of the bad-input corpus (tests/badinput/corpus.py) gets one clear line.

CLI cases run ``mesh.cli.main`` in this process: exit code 2, exactly one line on stderr
starting with ``simmesh``, naming what the case expects (the file, option or field), and no
traceback (an exception escaping ``main`` fails the test). Library cases call the scenario
loader, the manifest reader and the config decoder directly: the error is one line naming
the file and field. Every input must be answered within a time and memory bound (Python
allocations traced with tracemalloc), so an anchor bomb that takes 20 s and 590 MB fails here.
The proxy and controller cases must fail before anything starts: their servers are replaced
by a stub that fails the test. A few of the issue's examples also run as real processes.
"""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any

import pytest

from mesh.cli import main
from mesh.manifests import read_manifests
from mesh.proxy.sources import parse_config
from sim.scenario import ScenarioError, load_scenario
from tests.badinput.corpus import DIRECTORY, FIFO, ROOT, SPARSE, Case, all_cases
from tests.core.builders import wire

CASES = all_cases()
MAX_SECONDS = 5.0  # per input; the slowest take about 0.2 s
MAX_BYTES = 100 * 1024 * 1024  # Python allocations per input


def write(directory: Path, files: dict[str, str | bytes]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        path = directory / name
        if content == DIRECTORY:
            path.mkdir()
        elif content == FIFO:
            os.mkfifo(path)
        elif content == SPARSE:
            with path.open("wb") as handle:
                handle.truncate(17 * 1024 * 1024)
        elif isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)


@pytest.fixture(scope="module", autouse=True)
def imported() -> None:
    """Import what the commands import before any input is traced (imports are not inputs)."""
    import sim.cli
    import sim.model
    import sim.report  # noqa: F401


@pytest.fixture(autouse=True)
def nothing_starts(monkeypatch: pytest.MonkeyPatch) -> None:
    async def started(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the input was accepted and the server started")

    monkeypatch.setattr("mesh.proxy.app.serve", started)
    monkeypatch.setattr("mesh.controller.main.serve", started)


def bounded(call: Any) -> Any:
    """``call()`` within MAX_SECONDS and MAX_BYTES."""
    tracemalloc.start()
    started = time.monotonic()
    try:
        result = call()
    finally:
        elapsed = time.monotonic() - started
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    assert elapsed < MAX_SECONDS, f"took {elapsed:.1f}s"
    assert peak < MAX_BYTES, f"allocated {peak / 1e6:.0f} MB"
    return result


def one_line(text: str, case: Case) -> str:
    lines = text.strip("\n").split("\n")
    assert len(lines) == 1 and lines[0], f"expected one line, got {text!r}"
    assert "Traceback" not in text
    for word in case.expect:
        assert word in lines[0], f"{word!r} not in {lines[0]!r}"
    return lines[0]


def run_cli(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
    return code, out.getvalue(), err.getvalue()


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, tmp_path: Path) -> None:
    directory = tmp_path / "in"
    write(directory, case.files)
    if case.run == "cli":
        argv = [a.replace("{dir}", str(directory)) for a in case.argv]
        code, _, err = bounded(lambda: run_cli(argv))
        assert code == 2, err
        assert one_line(err, case).startswith("simmesh")
    elif case.run == "scenario":
        with pytest.raises(ScenarioError) as raised:
            bounded(lambda: load_scenario(directory))
        one_line(str(raised.value), case)
    elif case.run == "manifests":
        problems = bounded(lambda: read_manifests(directory)).problems
        assert problems, "the file was read as valid"
        for problem in problems:
            one_line(problem, case)
    else:
        (path,) = [directory / name for name in case.files]
        with pytest.raises(ValueError) as raised:
            bounded(lambda: parse_config(path.read_bytes(), name=str(path)))
        one_line(str(raised.value), case)


ISSUE_EXAMPLES = [
    ["explain", str(ROOT / "scenarios/quickstart"), "--url", "http://backend.demo.mesh:70000/"],
    ["sim", str(ROOT / "scenarios/canary"), "--set", "name=../../outside"],
    ["proxy", "--config-file", "x.json", "--node", "a", "--admin-port", "70000"],
    ["controller", "--manifests", str(ROOT / "scenarios/quickstart"), "--listen", "host:port"],
]


@pytest.mark.parametrize("argv", ISSUE_EXAMPLES, ids=[" ".join(a[:2]) for a in ISSUE_EXAMPLES])
def test_issue_examples_as_real_processes(argv: list[str], tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "mesh.cli", *argv],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("simmesh"), done.stderr
    assert not any(tmp_path.iterdir()) and not (ROOT / "outside").exists()


OBJECT_ERRORS = {
    "breaker-nan": (
        "kind: Service\napiVersion: v1\nmetadata: {name: web, namespace: demo, annotations: "
        "{simmesh.io/circuit-breaker: 'NetworkErrorRatio() > nan'}}\nspec: {ports: [{port: 80}]}\n",
        "Service demo/web: metadata.annotations[simmesh.io/circuit-breaker]: expected a number",
    ),
    "breaker-inf-digits": (
        "kind: Service\napiVersion: v1\nmetadata: {name: web, namespace: demo, annotations: "
        "{simmesh.io/circuit-breaker: 'LatencyAtQuantileMS(99) > " + "9" * 400 + "'}}\n"
        "spec: {ports: [{port: 80}]}\n",
        "Service demo/web: metadata.annotations[simmesh.io/circuit-breaker]: expected a number",
    ),
    "route-header-injection": (
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: r, "
        "namespace: demo}\nspec: {parentRefs: [{group: '', kind: Service, name: web}], rules: "
        "[{filters: [{type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: X-A, "
        'value: "a\\r\\nX-Admin: true"}]}}]}]}\n',
        "HTTPRoute demo/r: spec.rules[0].filters[0].requestHeaderModifier.set[0].value: a "
        "header value may not hold a line break",
    ),
    "route-backreference": (
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: r, "
        "namespace: demo}\nspec: {parentRefs: [{group: '', kind: Service, name: web}], rules: "
        "[{matches: [{path: {type: RegularExpression, value: '/(a+)\\1'}}]}]}\n",
        "HTTPRoute demo/r: spec.rules[0].matches[0].path.value: expected an RE2 regular expression",
    ),
    "route-redirect-and-backends": (
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: r, "
        "namespace: demo}\nspec: {parentRefs: [{group: '', kind: Service, name: web}], rules: "
        "[{filters: [{type: RequestRedirect, requestRedirect: {statusCode: 301}}], backendRefs: "
        "[{name: web, port: 80}]}]}\n",
        "HTTPRoute demo/r: spec.rules[0].filters: a RequestRedirect filter may not be used "
        "together with backendRefs",
    ),
    "grpcroute-no-method": (
        "apiVersion: gateway.networking.k8s.io/v1\nkind: GRPCRoute\nmetadata: {name: g, "
        "namespace: demo}\nspec: {parentRefs: [{group: '', kind: Service, name: web}], rules: "
        "[{matches: [{method: {type: Exact}}]}]}\n",
        "GRPCRoute demo/g: spec.rules[0].matches[0].method: one or both of service and method",
    ),
    "slice-address": (
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: s, namespace: "
        "demo, labels: {kubernetes.io/service-name: web}}\naddressType: IPv4\n"
        "endpoints: [{addresses: ['10.244....7.11']}]\n",
        "EndpointSlice demo/s: endpoints[0].addresses[0]: expected an IPv4 address",
    ),
}


@pytest.mark.parametrize("name", sorted(OBJECT_ERRORS))
def test_bad_objects_are_one_line_warnings_and_left_out(name: str, tmp_path: Path) -> None:
    """A bad object is not bad input for the command: it is reported (kind, namespace/name,
    field) and left out, and the config still compiles into one a proxy accepts."""
    text, warning = OBJECT_ERRORS[name]
    write(tmp_path, {"web.yaml": text})
    code, out, err = bounded(lambda: run_cli(["compile", str(tmp_path)]))
    assert code == 0, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"warning: {warning}"), err
    config = parse_config(out.encode(), name="compiled")
    for cluster in wire(config)["clusters"].values():
        assert cluster["circuitBreaker"] is None
        assert all(e["ip"] != "10.244....7.11" for e in cluster["endpoints"])
