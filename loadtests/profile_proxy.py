"""Instructions per proxied request, counted by callgrind: a measure a busy machine cannot blur.

    python -m loadtests.profile_proxy                  # 3,000 requests, the top functions
    python -m loadtests.profile_proxy --checkout DIR   # another tree (before/after)
    python -m loadtests.profile_proxy --json out.json

CPU seconds per request move with whatever else the machine runs; the instructions a process
executes for the same work do not (valgrind --tool=callgrind counts them; the same binary,
inputs and environment give the same count within a fraction of a percent). The proxy runs
under callgrind (50x slower, so the load is closed-loop: fortio with 16 connections and no
pacing), serves a warm-up, its counters are zeroed, it serves ``--requests`` requests of
1 KiB answers from fortio's echo server, and the counters are dumped. Reported: instructions
per request for the whole process (event loop, parsers and the interpreter included) and the
functions of simmesh's compiled modules (or, interpreted, the whole process's top entries) by
inclusive share. Needs valgrind (Debian package) and fortio (make k8s-bins).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from loadtests.bench_proxy import (
    BACKEND_IP,
    HOST,
    ROOT,
    Processes,
    checkout_env,
    compile_config,
    fortio_binary,
    free_port,
    manifests,
    start_fortio_server,
    wait_port,
)
from loadtests.callgrind import annotate


def _ready(url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"{url} did not answer 200 within {timeout:g} s")


def _load(fortio: str, url: str, requests: int) -> None:
    command = [fortio, "load", "-quiet", "-qps", "0", "-c", "16", "-n", str(requests)]
    subprocess.run([*command, "-H", f"Host: {HOST}", url], check=True, capture_output=True)


def profile(
    checkout: Path, requests: int, work: Path, keep: Path | None = None
) -> tuple[int, list[tuple[int, str]]]:
    """(instructions per request, [(inclusive instructions, function)] of simmesh's own)."""
    fortio = fortio_binary()
    procs = Processes()
    try:
        backend, http, admin = free_port(BACKEND_IP), free_port(), free_port()
        start_fortio_server(procs, fortio, BACKEND_IP, backend)
        wait_port(BACKEND_IP, backend)
        ports = {"http": http, "tcp": free_port(), "sink_port": free_port()}
        manifests(work / "mesh", services=1, backend_port=backend, **ports)
        compile_config(work / "mesh", work / "mesh.json", checkout)
        out = work / "callgrind.out"
        command = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}"]
        command += [sys.executable, "-m", "mesh.proxy", "--config-file", str(work / "mesh.json")]
        command += ["--node", "bench", "--bind", "127.0.0.1", "--admin-port", str(admin)]
        proxy = procs.start(
            [*command, "--log-level", "warning"], cwd=checkout, env=checkout_env(checkout)
        )
        _ready(f"http://127.0.0.1:{admin}/readyz", timeout=300)
        url = f"http://127.0.0.1:{http}/echo?size=1024"
        _load(fortio, url, 500)  # warm up: pools, caches, first-time paths
        subprocess.run(["callgrind_control", "-z", str(proxy.pid)], check=True, capture_output=True)
        _load(fortio, url, requests)
        subprocess.run(["callgrind_control", "-d", str(proxy.pid)], check=True, capture_output=True)
        dump = _wait_dump(out)
    finally:
        procs.stop_all()
    if keep is not None:
        shutil.copyfile(dump, keep)
    return _read(dump, requests)


def _wait_dump(out: Path) -> Path:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        dumps = sorted(out.parent.glob(out.name + ".*"))
        if dumps and dumps[-1].stat().st_size > 0:
            time.sleep(1)  # written whole
            return dumps[-1]
        time.sleep(0.5)
    raise RuntimeError("callgrind wrote no dump")


def _read(dump: Path, requests: int) -> tuple[int, list[tuple[int, str]]]:
    total, counts = annotate(dump, inclusive=True)
    ours = {n[len("CPyDef_") :]: c for n, c in counts.items() if n.startswith("CPyDef_")}
    ranked = sorted(((count, name) for name, count in ours.items()), reverse=True)
    return total // requests, ranked


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--checkout", type=Path, default=ROOT)
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--dump", type=Path, help="keep callgrind's dump here (callgrind_annotate)")
    args = parser.parse_args(argv)
    for tool in ("valgrind", "callgrind_control", "callgrind_annotate"):
        if shutil.which(tool) is None:
            print(f"profile_proxy: {tool} is missing (apt-get install valgrind)", file=sys.stderr)
            return 2
    with tempfile.TemporaryDirectory(prefix="simmesh-profile-") as tmp:
        per_request, ours = profile(args.checkout, args.requests, Path(tmp), args.dump)
    print(f"{per_request:,} instructions per request ({args.requests:,} requests)")
    for count, name in ours[: args.top]:
        share = count * 100 / (per_request * args.requests)
        print(f"{count / args.requests:>10,.0f}  {share:5.1f}%  {name}")
    if args.json:
        document: dict[str, Any] = {
            "perRequest": per_request,
            "functions": {name: count // args.requests for count, name in ours},
        }
        args.json.write_text(json.dumps(document, indent=1, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
