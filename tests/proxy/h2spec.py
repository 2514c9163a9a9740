"""h2spec, the outside HTTP/2 conformance tester, against the proxy's h2c front end.

``make h2spec`` runs ``python -m tests.proxy.h2spec``; ``tests/proxy/test_h2spec.py`` calls
:func:`run` too. Both start the proxy as an operator does (``python -m mesh.proxy`` with a
config file, on 127.0.0.1) in front of one loopback backend, run h2spec (every test group:
generic, http2 and hpack) against its HTTP listener and read h2spec's summary line.

It runs twice, as the front end answers in two ways. h2spec sends its requests with
``:authority`` ``127.0.0.1:<port>``: first the service is given the cluster IP 127.0.0.1 and
the listener's port as its own, so that authority is one of its mesh hosts and every response
is relayed from the backend; then it is not, and the proxy answers each request itself (404
``unknown-host``, as with the quickstart config). ``--proxy-src DIR`` runs the proxy of
another checkout (``git archive COMMIT | tar -x -C DIR``) to compare.

The binary is built from the Go module proxy by ``tools/k8s-bins.sh h2spec`` (version in
tools/k8s-versions.env) and found through ``$H2SPEC``, ``$SIMMESH_BIN_DIR`` or
``tools/k8s-bins.sh --print-dir``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from tests.proxy.harness import (
    LOCAL,
    backends,
    build,
    endpoints,
    free_port,
    free_range,
    service,
    session,
    settings,
)

ROOT = Path(__file__).resolve().parents[2]
_SUMMARY = re.compile(r"(\d+) tests, (\d+) passed, (\d+) skipped, (\d+) failed")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


@dataclass(frozen=True, slots=True)
class Result:
    total: int
    passed: int
    skipped: int
    failed: int
    output: str  # h2spec's report, without colours

    @property
    def ok(self) -> bool:
        return self.total > 0 and self.passed == self.total

    @property
    def summary(self) -> str:
        counts = f"{self.passed} passed, {self.skipped} skipped, {self.failed} failed"
        return f"{self.total} tests, {counts}"

    def failures(self) -> str:
        """h2spec's "Failures:" section (empty when every case passed)."""
        at = self.output.find("Failures:")
        return self.output[at:].strip() if at >= 0 else ""


def parse(output: str) -> Result:
    text = _ANSI.sub("", output)
    found = _SUMMARY.findall(text)
    if not found:
        raise ValueError(f"no h2spec summary in its output:\n{text[-2000:]}")
    total, passed, skipped, failed = (int(n) for n in found[-1])
    return Result(total, passed, skipped, failed, text)


def binary() -> Path | None:
    """The h2spec binary, or None when it has not been built."""
    explicit = os.environ.get("H2SPEC")
    if explicit:
        return Path(explicit) if Path(explicit).exists() else None
    directory = os.environ.get("SIMMESH_BIN_DIR")
    if not directory:
        directory = subprocess.run(
            ["bash", str(ROOT / "tools" / "k8s-bins.sh"), "--print-dir"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    path = Path(directory) / "h2spec"
    return path if path.exists() else None


@contextlib.asynccontextmanager
async def proxy(workdir: Path, *, routed: bool, src: Path = ROOT) -> AsyncIterator[int]:
    """``python -m mesh.proxy`` in front of one backend; yields its HTTP listener port.
    ``routed``: h2spec's requests reach the backend, else the proxy answers them itself
    (404 ``unknown-host``)."""
    port = free_range(1)
    async with backends("127.0.0.2") as targets:
        cluster_ip = LOCAL if routed else None
        docs = [
            service("web", ports=(("http", port),), cluster_ip=cluster_ip),
            *endpoints("web", targets),
        ]
        config = workdir / "mesh.json"
        config.write_text(build(docs, settings(http=port)).to_json())
        admin = free_port()
        command = [sys.executable, "-m", "mesh.proxy", "--config-file", str(config)]
        command += ["--node", "h2spec", "--bind", LOCAL, "--admin-port", str(admin)]
        log = (workdir / "proxy.log").open("wb")
        env = {**os.environ, "PYTHONPATH": str(src)}
        process = subprocess.Popen(command, cwd=src, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            await _ready(process, admin)
            yield port
        finally:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            log.close()


async def _ready(process: subprocess.Popen[bytes], admin: int) -> None:
    async with session(timeout=aiohttp.ClientTimeout(total=2)) as client:
        for _ in range(300):
            if process.poll() is not None:
                raise RuntimeError(f"the proxy exited with {process.returncode}")
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with client.get(f"http://{LOCAL}:{admin}/readyz") as resp:
                    if resp.status == 200:
                        return
            await asyncio.sleep(0.1)
    raise RuntimeError("the proxy did not become ready within 30 s")


async def h2spec(path: Path, port: int, *, timeout: int = 2, args: tuple[str, ...] = ()) -> str:
    """h2spec's output; it runs each case with ``timeout`` seconds to answer."""
    command = [str(path), "-h", LOCAL, "-p", str(port), "-o", str(timeout), *args]
    process = await asyncio.create_subprocess_exec(
        *command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    try:
        out, _ = await asyncio.wait_for(process.communicate(), 600)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    return out.decode("utf-8", "replace")


async def run(
    path: Path, *, routed: bool, args: tuple[str, ...] = (), src: Path = ROOT
) -> tuple[Result, str]:
    """h2spec's result against a fresh proxy, and the proxy's log."""
    with tempfile.TemporaryDirectory(prefix="simmesh-h2spec-") as tmp:
        workdir = Path(tmp)
        async with proxy(workdir, routed=routed, src=src) as port:
            output = await h2spec(path, port, args=args)
        return parse(output), (workdir / "proxy.log").read_text(errors="replace")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("h2spec_args", nargs="*", help="more h2spec arguments (e.g. http2/6.9)")
    parser.add_argument("--verbose", action="store_true", help="print h2spec's whole report")
    parser.add_argument(
        "--proxy-src", type=Path, default=ROOT, help="run the proxy of another checkout"
    )
    args = parser.parse_args()
    path = binary()
    if path is None:
        print("h2spec is not built: bash tools/k8s-bins.sh h2spec", file=sys.stderr)
        return 2
    # the backend's complaints when h2spec breaks a request off mid-body are not findings
    logging.getLogger("aiohttp.server").setLevel(logging.CRITICAL)
    ok = True
    for routed, what in ((True, "relayed from the backend"), (False, "answered by the proxy")):
        run_args = tuple(args.h2spec_args)
        result, log = asyncio.run(run(path, routed=routed, args=run_args, src=args.proxy_src))
        if args.verbose or not result.ok:
            print(result.output if args.verbose else result.failures())
        if not result.ok and "Traceback" in log:
            print("the proxy logged:\n" + log[-4000:], file=sys.stderr)
        print(f"h2spec ({path}), responses {what}: {result.summary}")
        ok = ok and result.ok
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
