"""``python -m mesh.gate.worker``: one what-if for the gate, in a process of its own.

The controller keeps one of these started and waiting (the simulator already imported), hands
it one job (mesh/gate/job.py) as a JSON line on stdin and reads the answer as a JSON line on
stdout; then the process exits and the controller starts the next. So the controller's event
loop never runs a simulation, a simulation's memory goes back to the system when it is done,
and one that overruns its budget is killed without harm. The what-if is
:func:`sim.whatif.whatif` with the job's seeds and wall-time budget, in this process
(``workers=1``).
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path
from typing import Any

READY = "ready"
MAX_REQUESTS = 500_000  # simulated per run (about 60 MB): the gate shares the controller's pod


def run_job(job: dict[str, Any]) -> dict[str, Any]:
    """The what-if's outcome: verdict, the broken SLOs (as sim.whatif reports them), the
    objects the mesh would reject, how many runs finished; or ``{"error": ...}``."""
    from sim.change import Change, Ref
    from sim.runs import RunError
    from sim.scenario import ScenarioError, SloFile, estimate, scenario_from
    from sim.whatif import whatif

    with tempfile.TemporaryDirectory(prefix="simmesh-gate-") as tmp:
        directory = Path(tmp)
        for name, text in job["files"].items():
            (directory / Path(name).name).write_text(text)
        try:
            base = scenario_from(
                directory, job["scenario"], slos=SloFile(job["slosName"], job["slos"])
            )
            requests = estimate(base).requests
            if requests > MAX_REQUESTS:
                return {
                    "error": f"the what-if is too large for the gate: {requests:,.0f} requests "
                    f"a run (at most {MAX_REQUESTS:,}; lower gate.simulatedSeconds)"
                }
            change = Change(
                objects=tuple(job["change"]["objects"]),
                deletions=tuple(Ref(*d) for d in job["change"]["deletions"]),
            )
            result = whatif(base, change, seeds=int(job["seeds"]), budget_seconds=job["budget"])
        except (ScenarioError, RunError) as exc:  # ChangeError is a ScenarioError
            return {"error": " ".join(str(exc).split())}
    return {
        "verdict": result.verdict.value,
        "broken": [s.to_json() for s in result.broken],
        "slos": [
            f"{s.name}: {s.passes_before}/{s.runs_before} -> {s.passes_after}/{s.runs_after}"
            for s in result.slos
        ],
        "sources": [f"{t.name}: {t.rate:g}/s" for t in base.traffic],
        "warnings": list(result.warnings),
        "runs": sum(r is not None for r in (*result.before, *result.after)),
        "of": 2 * len(result.seeds),
    }


def main() -> int:
    import sim.whatif  # noqa: F401 - warm: imported before the job comes

    out = sys.stdout
    sys.stdout = sys.stderr  # nothing but the answer goes to the controller
    out.write(READY + "\n")
    out.flush()
    line = sys.stdin.readline()
    if not line.strip():
        return 0
    try:
        answer = run_job(json.loads(line))
    except Exception as exc:  # a bug must reach the controller as an answer, not a hang
        answer = {"error": f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"}
    out.write(json.dumps(answer, sort_keys=True) + "\n")
    out.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
