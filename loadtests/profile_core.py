"""Instructions per routing decision, counted by callgrind: bench_core's decisions, unblurred.

    python -m loadtests.profile_core                  # 5 rounds of bench_core's 2,000 requests
    python -m loadtests.profile_core --checkout DIR   # another tree (before/after)
    python -m loadtests.profile_core --json out.json --dump callgrind.out

Decisions per second move with whatever else the machine runs; the instructions a process
executes for the same work do not (valgrind --tool=callgrind counts them). This runs bench_core's
decision workload (loadtests/bench_core.py: the 10,000-Service config, its 2,000 requests, the
same loop) under callgrind: the config is built outside callgrind and written as JSON, the child
under callgrind reads it, compiles the Router, decides one warm-up round, its counters are
zeroed, it decides ``--rounds`` rounds, and the counters are dumped. Reported: instructions per
decision for the whole process (the loop, the interpreter, the allocator included) and, by
inclusive count, the functions of the compiled modules (interpreted: none; the total only).
Needs valgrind (Debian package).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from loadtests.builds import ROOT
from loadtests.callgrind import annotate


def _env(checkout: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONHASHSEED"] = "0"  # the same dict and set layouts in every run
    env["PYTHONPATH"] = str(checkout)
    return env


def _expect(child: subprocess.Popen[str], word: str) -> None:
    assert child.stdout is not None
    line = child.stdout.readline().strip()
    if line != word:
        _, stderr = child.communicate(timeout=60)
        raise RuntimeError(f"expected {word!r} from the profiled child, got {line!r}: {stderr}")


def profile(
    checkout: Path, rounds: int, work: Path, keep: Path | None = None
) -> tuple[dict[str, Any], int, dict[str, int], dict[str, int]]:
    """(what the child reports: decisions, allowed, build; total instructions; inclusive and
    self counts of the functions)."""
    env = _env(checkout)
    config = work / "config.json"
    subprocess.run(
        [sys.executable, "-m", "loadtests.profile_core", "--write-config", str(config)],
        cwd=checkout,
        env=env,
        check=True,
    )
    out = work / "callgrind.out"
    command = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable]
    command += ["-m", "loadtests.profile_core", "--child", str(config), "--rounds", str(rounds)]
    # The child waits for each step blocked on its stdin (callgrind_control reaches a blocked
    # process), so no waiting of its own is counted between the zeroing and the dump.
    child = subprocess.Popen(
        command,
        cwd=checkout,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert child.stdin is not None and child.stdout is not None
    try:
        _expect(child, "ready")
        subprocess.run(["callgrind_control", "-z", str(child.pid)], check=True, capture_output=True)
        child.stdin.write("go\n")
        child.stdin.flush()
        _expect(child, "done")
        subprocess.run(["callgrind_control", "-d", str(child.pid)], check=True, capture_output=True)
        stdout, stderr = child.communicate("exit\n", timeout=600)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    if child.returncode != 0:
        raise RuntimeError(f"the profiled child failed: {stderr.strip()[-2000:]}")
    result = json.loads(stdout.strip().splitlines()[-1])
    dumps = sorted(out.parent.glob(out.name + ".*"), key=lambda p: p.stat().st_mtime)
    dump = next(d for d in dumps if d.stat().st_size > 0 and d.name != out.name)
    if keep is not None:
        shutil.copyfile(dump, keep)
    total, inclusive = annotate(dump, inclusive=True)
    _, own = annotate(dump, inclusive=False)
    return result, total, inclusive, own


def _write_config(path: Path) -> int:
    """The config as JSON, and its hosts in the order bench_core's workload takes them (JSON
    read back orders the tables otherwise: another mix of allowed and denied requests)."""
    from loadtests.bench_core import cluster_docs, compile_once, mesh_hosts

    _, _, config, _ = compile_once(cluster_docs(10000), pause_gc=True)
    path.write_text(config.to_json(indent=None))
    path.with_suffix(".hosts").write_text("\n".join(mesh_hosts(config)))
    return 0


def _child(config_path: Path, rounds: int) -> int:
    from loadtests.bench_core import decide_round, workload
    from mesh.build import describe
    from mesh.core.schema import MeshConfig

    config = MeshConfig.from_json(config_path.read_bytes())
    hosts = config_path.with_suffix(".hosts").read_text().split("\n")
    engine, requests, rng = workload(config, hosts)
    decide_round(engine, requests, rng)  # warm-up: balancers, breakers, caches
    print("ready", flush=True)
    sys.stdin.readline()  # go: the counters are zeroed
    allowed = 0
    for _ in range(rounds):
        allowed += decide_round(engine, requests, rng)
    print("done", flush=True)
    sys.stdin.readline()  # exit: the counters are dumped
    decisions = rounds * len(requests)
    print(json.dumps({"decisions": decisions, "allowed": allowed, "build": describe()}))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--checkout", type=Path, default=ROOT)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--dump", type=Path, help="keep callgrind's dump here (callgrind_annotate)")
    parser.add_argument("--write-config", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.write_config:
        return _write_config(args.write_config)
    if args.child:
        return _child(args.child, args.rounds)
    for tool in ("valgrind", "callgrind_control", "callgrind_annotate"):
        if shutil.which(tool) is None:
            print(f"profile_core: {tool} is missing (apt-get install valgrind)", file=sys.stderr)
            return 2
    with tempfile.TemporaryDirectory(prefix="simmesh-profile-core-") as tmp:
        result, total, inclusive, own = profile(
            args.checkout.resolve(), args.rounds, Path(tmp), args.dump
        )
    decisions, build = int(result["decisions"]), str(result["build"])
    per = total / decisions
    print(
        f"{per:,.0f} instructions per decision ({decisions:,} decisions, "
        f"{result['allowed'] / decisions:.1%} allowed, {build})"
    )
    print(f"{'inclusive':>10} {'self':>8}  function (per decision)")
    ours = {n: c for n, c in inclusive.items() if n.startswith("CPyDef_")}
    for name, count in sorted(ours.items(), key=lambda item: -item[1])[: args.top]:
        print(f"{count / decisions:>10,.0f} {own.get(name, 0) / decisions:>8,.0f}  {name[7:]}")
    print("top self cost (every function):")
    for name, count in sorted(own.items(), key=lambda item: -item[1])[: args.top]:
        print(f"{count / decisions:>10,.0f}  {name}")
    if args.json:
        document: dict[str, Any] = {
            "perDecision": round(per),
            "build": build,
            "inclusive": {n[7:]: c // decisions for n, c in ours.items()},
            "self": {n: c // decisions for n, c in own.items() if c >= decisions},
        }
        args.json.write_text(json.dumps(document, indent=1, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
