"""Many runs of one scenario: serially, on local cores, or on a Dask cluster, with the same bytes.

What-ifs and sweeps run one scenario many times: with other seeds, other values, a change
applied. Each run is a :class:`Unit` of work on a :class:`Source`, the scenario as plain data
(the files of its directory that a load reads, and scenario.yaml as a mapping with its edits
applied), so a unit runs anywhere: in this process, in a local worker process, or on a Dask
worker on another machine (the scenario travels as its files, never as a path on the client).
A worker writes the files into a temporary directory and loads the scenario from there, so
every mode loads it the same way, and a run depends only on its scenario and its seed: the
same units give the same results serially, in parallel and on a cluster.

:func:`run_units` returns the results in the units' order, whatever order they finish in. With
a deadline (wall-clock seconds since the epoch, so worker processes share it) a run that is
still going when it passes stops at its next progress step and its result is None; units not
started by then are never started.
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import multiprocessing.context
import os
import re
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from mesh.documents import DocumentError, read_bytes
from mesh.manifests import ManifestError, manifest_files
from sim.change import Change, with_settings
from sim.model import run_scenario
from sim.scenario import Scenario, ScenarioError, scenario_from

Done = Callable[[int, int], None]  # (runs finished, runs in all)
CONNECT_TIMEOUT = 5.0  # seconds to reach a Dask scheduler
PROFILE_DIR = ".profile"  # where a profile file outside the scenario travels (not a manifest)


class RunError(Exception):
    """The runs could not be carried out (a scheduler that cannot be reached): exit code 2."""


@dataclass(frozen=True)
class Source:
    """A scenario as plain data that any process can load (see the module's docstring)."""

    name: str
    files: tuple[tuple[str, bytes], ...]  # relative POSIX path -> content
    raw: dict[str, Any]  # scenario.yaml, edits applied

    @staticmethod
    def of(scenario: Scenario) -> Source:
        """The files a load of ``scenario`` reads: its manifests, mesh.yaml and a profile
        given as a file; its name is pinned (a temporary directory must not rename it)."""
        directory = scenario.directory
        raw = dict(scenario.raw, name=scenario.name)
        try:
            paths = manifest_files(directory)
            mesh = directory / "mesh.yaml"
            if mesh.exists() or mesh.is_symlink():
                paths.append(mesh)
            files = [(p.relative_to(directory).as_posix(), read_bytes(p)) for p in paths]
            profile = raw.get("profile")
            if isinstance(profile, str) and profile.endswith((".yaml", ".yml")):
                path = Path(profile) if Path(profile).is_absolute() else directory / profile
                name = f"{PROFILE_DIR}/{path.name}"
                files.append((name, read_bytes(path)))
                raw["profile"] = name
        except (ManifestError, DocumentError, OSError) as exc:
            raise ScenarioError(f"{directory}: {exc}") from None
        return Source(scenario.name, tuple(sorted(files)), raw)

    def load(
        self, directory: Path, sets: Sequence[str] = (), change: Change | None = None
    ) -> Scenario:
        """The scenario, its files written into ``directory`` (an empty one)."""
        for name, data in self.files:
            relative = PurePosixPath(name)
            if relative.is_absolute() or ".." in relative.parts:
                raise ScenarioError(f"{name}: not a path inside the scenario")
            path = directory.joinpath(*relative.parts)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        if change is None:
            return scenario_from(directory, self.raw, list(sets))
        settings = change.settings
        return scenario_from(
            directory,
            self.raw,
            list(sets),
            edit=change.apply,
            settings_edit=(lambda s: with_settings(s, settings)) if settings else None,
        )


@dataclass(frozen=True)
class Unit:
    """One run: the source with these edits (``seed=N``, a sweep's values) and change; its
    result is the whole results.json mapping, or :func:`summary` of it."""

    sets: tuple[str, ...]
    change: Change | None = None
    summary: bool = False
    cpu: bool = False  # results carry the proxies' CPU (a what-if compares it)


class _OutOfTime(Exception):
    pass


def run_unit(source: Source, unit: Unit, deadline: float | None = None) -> dict[str, Any] | None:
    """Run one unit (in whatever process this is); None when the deadline passed first."""
    if deadline is not None and time.time() >= deadline:
        return None
    with tempfile.TemporaryDirectory(prefix="simmesh-run-") as tmp:
        scenario = source.load(Path(tmp), unit.sets, unit.change)

    def check(fraction: float, requests: int) -> None:
        if deadline is not None and time.time() >= deadline:
            raise _OutOfTime

    try:
        results = run_scenario(scenario, check if deadline is not None else None, cpu=unit.cpu)
    except _OutOfTime:
        return None
    return summary(results) if unit.summary else results


def summary(results: dict[str, Any]) -> dict[str, Any]:
    """What a sweep keeps of a run: the overall numbers and each SLO's verdict."""
    overall = results["overall"]
    return {
        "seed": results["seed"],
        "requests": overall["requests"],
        "successRate": overall["successRate"],
        "p50": overall["latency"]["p50"],
        "p99": overall["latency"]["p99"],
        "retries": overall["retries"],
        "slos": [{"name": s["name"], "ok": s["ok"]} for s in results["slos"]],
    }


def cores() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def run_units(
    source: Source,
    units: Sequence[Unit],
    *,
    workers: int = 1,
    scheduler: str | None = None,
    deadline: float | None = None,
    done: Done | None = None,
) -> list[dict[str, Any] | None]:
    """Every unit's result, in the units' order: in this process (``workers`` 1), in local
    worker processes, or on the Dask cluster of ``scheduler`` (``tcp://host:port``)."""
    if scheduler is not None:
        return _on_dask(source, units, scheduler, deadline, done)
    if workers <= 1 or len(units) <= 1:
        return _serial(source, units, deadline, done)
    return _in_processes(source, units, min(workers, len(units)), deadline, done)


def _serial(
    source: Source, units: Sequence[Unit], deadline: float | None, done: Done | None
) -> list[dict[str, Any] | None]:
    out = []
    for unit in units:
        out.append(run_unit(source, unit, deadline))
        if done is not None:
            done(len(out), len(units))
    return out


def _in_processes(
    source: Source, units: Sequence[Unit], workers: int, deadline: float | None, done: Done | None
) -> list[dict[str, Any] | None]:
    # Workers forked from this process when it has no other thread (fast: the simulator is
    # imported already); else from a clean fork server that imports it once (forking a
    # process with threads can copy a lock some thread holds).
    context: multiprocessing.context.BaseContext
    if threading.active_count() == 1:
        context = multiprocessing.get_context("fork")
    else:
        server = multiprocessing.get_context("forkserver")
        server.set_forkserver_preload(["sim.runs"])
        context = server
    out: list[dict[str, Any] | None] = [None] * len(units)
    pool = concurrent.futures.ProcessPoolExecutor(workers, mp_context=context)
    try:
        futures = {pool.submit(run_unit, source, u, deadline): i for i, u in enumerate(units)}
        timeout = None if deadline is None else max(0.0, deadline - time.time()) + 1.0
        finished = 0
        try:
            for future in concurrent.futures.as_completed(futures, timeout=timeout):
                out[futures[future]] = future.result()
                finished += 1
                if done is not None:
                    done(finished, len(units))
        except TimeoutError:
            pass  # the runs still going stop at their next step: their results stay None
    finally:
        pool.shutdown(wait=deadline is None, cancel_futures=True)
    return out


ADDRESS = re.compile(r"(tcp|tls)://[^\s/:]+:[0-9]{1,5}|(tcp|tls)://\[[0-9a-fA-F:.]+\]:[0-9]{1,5}")


def check_scheduler(address: str) -> str:
    """``tcp://HOST:PORT`` (or ``tls://``), or a RunError."""
    if not ADDRESS.fullmatch(address) or not 0 < int(address.rsplit(":", 1)[1]) < 65536:
        raise RunError(f"--scheduler {address[:80]!r}: expected tcp://HOST:PORT")
    return address


def _on_dask(
    source: Source,
    units: Sequence[Unit],
    scheduler: str,
    deadline: float | None,
    done: Done | None,
) -> list[dict[str, Any] | None]:
    import distributed

    check_scheduler(scheduler)
    try:
        client = distributed.Client(scheduler, timeout=CONNECT_TIMEOUT, set_as_default=False)
    except (OSError, TimeoutError) as exc:
        raise RunError(
            f"--scheduler {scheduler}: no Dask scheduler answered within {CONNECT_TIMEOUT:g} s "
            f"({' '.join(str(exc).split())[:160]})"
        ) from None
    out: list[dict[str, Any] | None] = [None] * len(units)
    try:
        shared = client.scatter(source, broadcast=False)
        futures = [client.submit(run_unit, shared, u, deadline, pure=False) for u in units]
        index = {f.key: i for i, f in enumerate(futures)}
        timeout = None if deadline is None else max(0.0, deadline - time.time()) + 1.0
        finished = 0
        try:
            for future in distributed.as_completed(futures, loop=client.loop, timeout=timeout):
                out[index[future.key]] = future.result()
                finished += 1
                if done is not None:
                    done(finished, len(units))
        except TimeoutError:
            pass
        client.cancel(futures)
    finally:
        client.close()
    return out
