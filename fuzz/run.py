"""``make fuzz``: each atheris target for ``--seconds``, its corpus kept in out/fuzz/<target>.

Targets: manifests (the manifest reader and the core behind it), config (the proxy's config
decoder) and http1 (the HTTP front end over a real socket). Seeds are in fuzz/seeds/<target>;
a crash leaves its input in out/fuzz/ (``crash-*``) and makes this exit 1, after printing the
traceback and the input (base64) on stderr: a run on a machine that is gone (CI) can be replayed
from its log. A fixed ``--seed`` does not replay a run: coverage, which steers the mutations,
depends on object addresses and timing, so two runs on one seed try different inputs.
Run one target by hand with ``python -m fuzz.<target> out/fuzz/<target> fuzz/seeds/<target>``.
"""

from __future__ import annotations

import argparse
import base64
import gzip
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGETS = ("manifests", "config", "http1")
ARTIFACTS = ROOT / "out" / "fuzz"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=20, help="per target")
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        help="libFuzzer's -seed (0: a new one each run); it does not replay a run",
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
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        command = [
            sys.executable,
            "-m",
            f"fuzz.{target}",
            str(corpus),
            str(ROOT / "fuzz" / "seeds" / target),
            f"-max_total_time={args.seconds}",
            "-timeout=20",
            "-rss_limit_mb=2048",
            f"-artifact_prefix={ARTIFACTS}/{target}-",
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
            # libFuzzer's report is on stderr, atheris's Python traceback on stdout; the input
            # comes gzipped and in base64 so that a log's tail holds all three
            print("\n".join(done.stderr.splitlines()[-12:]), file=sys.stderr)
            for written in re.findall(r"Test unit written to (\S+)", done.stderr):
                artifact = Path(written)
                packed = base64.encodebytes(gzip.compress(artifact.read_bytes(), mtime=0))
                print(
                    f"{artifact.name}, to replay: base64 -d | gunzip > crash && "
                    f"python -m fuzz.{target} crash\n{packed.decode()}",
                    file=sys.stderr,
                )
            start = done.stdout.find("=== Uncaught")
            print(done.stdout[max(start, 0) :][-3000:], file=sys.stderr)
    if failed:
        print(f"fuzz: {', '.join(failed)} found a crash (inputs in out/fuzz/)", file=sys.stderr)
        return 1
    print(f"fuzz: {len(args.targets)} targets, {args.seconds} s each, no crash")
    return 0


if __name__ == "__main__":
    sys.exit(main())
