"""tools/kind/runc-wrapper: dockerd's runtime on hosts that cannot grant every capability.

Run with a fake runc that records what it was given: the wrapper must remove exactly the
capabilities missing from this host's bounding set (CAP_SYS_RESOURCE here) from the spec of
`create`/`run` and the process file of `exec`, leave every other field alone, and pass the
arguments through unchanged.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
WRAPPER = ROOT / "tools" / "kind" / "runc-wrapper"
ALL = ["CAP_CHOWN", "CAP_NET_ADMIN", "CAP_SYS_ADMIN", "CAP_SYS_RESOURCE", "CAP_SYS_TIME", "CAP_BPF"]
BITS = {"CAP_CHOWN": 0, "CAP_NET_ADMIN": 12, "CAP_SYS_ADMIN": 21, "CAP_SYS_RESOURCE": 24}
BITS |= {"CAP_SYS_TIME": 25, "CAP_BPF": 39}


def host_has(cap: str) -> bool:
    status = Path("/proc/self/status").read_text()
    bounding = int(
        next(line for line in status.splitlines() if line.startswith("CapBnd:")).split()[1], 16
    )
    return bool(bounding >> BITS[cap] & 1)


def fake_runc(tmp_path: Path) -> Path:
    runc = tmp_path / "runc"
    runc.write_text('#!/bin/sh\nprintf "%s\\n" "$@" > "$(dirname "$0")/args"\n')
    runc.chmod(0o755)
    return runc


def caps(names: list[str]) -> dict[str, list[str]]:
    return {kind: list(names) for kind in ("bounding", "effective", "permitted", "ambient")}


def run(tmp_path: Path, *args: str) -> list[str]:
    env = {**os.environ, "SIMMESH_REAL_RUNC": str(fake_runc(tmp_path))}
    subprocess.run([str(WRAPPER), *args], check=True, env=env, timeout=30)
    return (tmp_path / "args").read_text().splitlines()


def test_create_drops_what_the_host_cannot_grant_and_passes_arguments_through(
    tmp_path: Path,
) -> None:
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    spec = {"ociVersion": "1.0.2", "process": {"args": ["/sbin/init"], "capabilities": caps(ALL)}}
    (bundle / "config.json").write_text(json.dumps(spec))
    args = ["--root", "/run/x", "--log", "/dev/null", "create", "--bundle", str(bundle), "node-1"]
    assert run(tmp_path, *args) == args
    kept = [c for c in ALL if host_has(c)]
    written = json.loads((bundle / "config.json").read_text())
    assert written["process"]["capabilities"] == caps(kept)
    assert written["process"]["args"] == ["/sbin/init"] and written["ociVersion"] == "1.0.2"


def test_exec_process_file_is_edited_too(tmp_path: Path) -> None:
    process = tmp_path / "process.json"
    process.write_text(json.dumps({"args": ["kubeadm"], "capabilities": caps(ALL)}))
    args = ["exec", "--process", str(process), "--detach", "node-1"]
    assert run(tmp_path, *args) == args
    kept = [c for c in ALL if host_has(c)]
    assert json.loads(process.read_text())["capabilities"] == caps(kept)


def test_other_commands_are_passed_through_untouched(tmp_path: Path) -> None:
    assert run(tmp_path, "--root", "/run/x", "delete", "--force", "node-1") == [
        "--root",
        "/run/x",
        "delete",
        "--force",
        "node-1",
    ]
