"""``make fuzz``: each atheris target for ``--seconds``, its corpus kept in out/fuzz/<target>.

Targets: manifests (the manifest reader and the core behind it), config (the proxy's config
decoder) and http1 (the HTTP front end over a real socket). Seeds are in fuzz/seeds/<target>;
a crash leaves its input in out/fuzz/ (``crash-*``) and makes this exit 1. CI runs with
``--seed 1`` on an empty corpus, so what it tries is what the same command tries here.
Run one target by hand with ``python -m fuzz.<target> out/fuzz/<target> fuzz/seeds/<target>``.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGETS = ("manifests", "config", "http1")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=20, help="per target")
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        help="libFuzzer's -seed (0: a new one each run); a fixed seed on an empty corpus "
        "replays the same inputs, which is how CI runs it",
    )
    parser.add_argument(
        "--corpus",
        type=Path,
        default=ROOT / "out" / "fuzz",
        help="where each target's corpus grows (default out/fuzz/<target>)",
    )
    parser.add_argument("targets", nargs="*", default=list(TARGETS))
    args = parser.parse_args()
    failed = []
    for target in args.targets:
        corpus = args.corpus / target
        corpus.mkdir(parents=True, exist_ok=True)
        command = [
            sys.executable,
            "-m",
            f"fuzz.{target}",
            str(corpus),
            str(ROOT / "fuzz" / "seeds" / target),
            f"-max_total_time={args.seconds}",
            "-timeout=20",
            "-rss_limit_mb=2048",
            f"-artifact_prefix={ROOT / 'out' / 'fuzz'}/{target}-",
            "-print_final_stats=1",
        ]
        if args.seed:
            command.append(f"-seed={args.seed}")
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
        stats = [line for line in done.stderr.splitlines() if line.startswith(("Done ", "stat::"))]
        runs = next((line for line in stats if line.startswith("Done ")), "no runs")
        print(f"fuzz {target}: {runs} (exit {done.returncode})", flush=True)
        if done.returncode != 0:
            failed.append(target)
            print(done.stderr[-4000:], file=sys.stderr)
    if failed:
        print(f"fuzz: {', '.join(failed)} found a crash (inputs in out/fuzz/)", file=sys.stderr)
        return 1
    print(f"fuzz: {len(args.targets)} targets, {args.seconds} s each, no crash")
    return 0


if __name__ == "__main__":
    sys.exit(main())
