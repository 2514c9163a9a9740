"""Run a planned local mesh for real: ``python -m mesh.local.run WORKDIR``.

Reads ``WORKDIR/plan.json`` (plan.py) and runs, in this order: the controller (file provider
on ``WORKDIR/manifests``), one test app per pod, with mTLS on the run's certificate authority
(ca.py, served from a thread of this process), one node proxy per node (each with
``--address-map`` and ``--access-log``; with mTLS on, ``--certificates local`` and its node's
token), waits until every proxy applied the controller's config (and is Ready: with mTLS on,
once it holds its node's certificates), then optionally Locust (``options.load``) with the
scenario's traffic, and applies the timeline in real time from ``t0``:

- ``endpoint-down``/``node-down`` (and ``-up``): the pods' test apps are killed (SIGKILL: open
  connections are reset, new ones refused) and started again. With ``failure: unreachable``
  (the default for a node) their addresses are also blackholed with iptables in the mesh's
  network namespace first, so connects time out and in-flight requests hang, as with a node
  that is gone; without a namespace of its own or iptables in it the run cannot do that and
  the event is realised as ``refused`` (recorded in run.json; ``launch.realisable`` has
  already made the scenario say so);
- ``latency-spike``/``error-burst``: ``PUT /behaviour`` on the pods (latencyFactor,
  latencyAdd, errorRate), with the simulator's rule for a replica's own fault;
- ``apply``/``delete``/``set-split``/``set-weights``/``set-policy``: the manifests file is
  rewritten (as the simulator rewrites its objects) and the controller picks it up; when every
  proxy applied the new version is recorded.

It ends when the load ends (or, without load, on SIGINT/SIGTERM or after ``options.hold``
seconds), scrapes each proxy's /metrics and /config, stops everything it started (also on
Ctrl-C and on failure) and writes ``WORKDIR/run.json``. Exit code 0, or 1 with the reason in
run.json and on stderr.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mesh.local.ca import LocalCA, live_pods, serve
from mesh.local.plan import NodePlan, Plan, PodPlan
from mesh.local.procs import Child, Supervisor, wait_http
from sim.scenario import Event, with_event_objects

LOCUSTFILE = Path(__file__).with_name("locustfile.py")
DOWN_ACTIONS = {"endpoint-down": True, "endpoint-up": False, "node-down": True, "node-up": False}
APPLY, PRESTART, UNDO = 0, 1, 2
PRESTART_LEAD = 3.0  # seconds before an outage ends that its pods are started
UNDONE = {"endpoint-down", "node-down", "latency-spike", "error-burst"}


class Interrupted(Exception):
    pass


def _interrupt(signum: int, _: Any) -> None:
    raise Interrupted(signal.Signals(signum).name)


@dataclass
class PodState:
    """A pod's faults, as the simulator keeps them (sim/model.py Behaviour): a replica's own
    fault, once it has one, overrides its workload's."""

    factor: float = 1.0
    add: float = 0.0
    error_rate: float = 0.0
    own: bool = False
    down: bool = False
    sent: dict[str, float] = field(default_factory=dict)


class LocalMesh:
    def __init__(self, plan: Plan, workdir: Path) -> None:
        self.plan = plan
        self.workdir = workdir
        self.python = sys.executable
        self.supervisor = Supervisor(workdir / "logs")
        self.apps: dict[str, Child] = {}
        self.proxies: dict[str, Child] = {}
        self.locust: Child | None = None
        self.probe: Child | None = None
        self.docs = plan.docs
        self.workloads: dict[str, PodState] = {}
        self.pods: dict[str, PodState] = {}
        self.blocked: set[str] = set()
        self.prestarted: set[str] = set()
        self.iptables = False
        self.record: dict[str, Any] = {"events": [], "status": "starting", "realised": []}
        self.pending_versions: list[dict[str, Any]] = []
        self.t0 = 0.0
        self.ca: LocalCA | None = None
        self.ca_server: Any = None
        self.keys: Path | None = None  # tokens and keys: memory only, never in the output
        self.cpu: dict[str, dict[str, float]] = {}  # "t0"/"end" -> node -> CPU seconds

    # -- start ----------------------------------------------------------------------------

    def start(self) -> None:
        plan = self.plan
        if plan.isolation == "netns":
            subprocess.run(["ip", "link", "set", "lo", "up"], check=True, capture_output=True)
        # Probed before the run (launch.choose_isolation): iptables works in the namespace.
        self.iptables = plan.isolation == "netns" and bool(plan.options.get("blackhole"))
        self._write_manifests()
        host, port = plan.controller.rsplit(":", 1)
        controller = self.supervisor.start(
            "controller",
            [
                self.python,
                "-m",
                "mesh.cli",
                "controller",
                "--manifests",
                str(self.workdir / "manifests"),
                "--listen",
                plan.controller,
                "--poll-interval",
                "0.05",
                "--log-level",
                "warning",
            ],
        )
        for pod in plan.pods:
            self.pods[pod.ip] = PodState(error_rate=float(pod.behaviour["errorRate"]))
            self.workloads.setdefault(
                pod.workload, PodState(error_rate=float(pod.behaviour["errorRate"]))
            )
            self._start_app(pod)
        wait_http(f"http://{plan.controller}/readyz", timeout=60, child=controller)
        for pod in plan.pods:
            app = self.apps[pod.ip]
            wait_http(f"http://{pod.address}:{pod.http_port}/healthz", timeout=60, child=app)
        if plan.mtls != "off":
            self._start_ca()
        for node in plan.nodes:
            self.proxies[node.name] = self.supervisor.start(
                f"proxy-{node.name}",
                [
                    self.python,
                    "-m",
                    "mesh.proxy",
                    "--controller",
                    f"http://{plan.controller}",
                    "--node",
                    node.name,
                    "--bind",
                    node.address,
                    "--admin-port",
                    str(node.admin_port),
                    "--connect-timeout",
                    repr(plan.connect_timeout),
                    "--drain-timeout",
                    "1",
                    "--access-log",
                    "--log-level",
                    "warning",
                    *[arg for m in plan.address_maps for arg in ("--address-map", m)],
                    *self._certificate_args(node),
                ],
                stdout=self.workdir / f"access-{node.name}.jsonl",
            )
        for node in plan.nodes:
            wait_http(
                f"http://{node.address}:{node.admin_port}/readyz",
                timeout=60,
                child=self.proxies[node.name],
            )
        self._wait_versions(timeout=30)
        self.record["status"] = "running"
        del host, port

    def _start_ca(self) -> None:
        """The run's CA (ca.py): a root of its own, a token per node in a private directory
        on a memory-backed file system (removed at the end; keys and tokens never reach the
        output directory), served on the plan's CA address."""
        plan = self.plan
        shm = Path("/dev/shm")
        self.keys = Path(
            tempfile.mkdtemp(prefix="simmesh-keys-", dir=shm if shm.is_dir() else None)
        )
        self.ca = LocalCA(
            trust_domain=plan.trust_domain,
            nodes=[n.name for n in plan.nodes],
            pods=lambda: live_pods(self.docs),
        )
        for node in plan.nodes:
            (self.keys / node.name).mkdir(mode=0o700)
            token = self.keys / f"{node.name}.token"
            fd = os.open(token, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as out:
                out.write(self.ca.tokens[node.name] + "\n")
        host, port = plan.ca.rsplit(":", 1)
        self.ca_server = serve(self.ca, host, int(port))
        self.record["ca"] = {"address": plan.ca, "root": self.ca.signer.fingerprint}

    def _certificate_args(self, node: NodePlan) -> list[str]:
        """With mTLS on: the node's certificates from the run's CA, its tunnel port."""
        if self.keys is None:
            return []
        return [
            "--certificates",
            "local",
            "--ca-url",
            f"http://{self.plan.ca}",
            "--ca-token-file",
            str(self.keys / f"{node.name}.token"),
            "--certificate-dir",
            str(self.keys / node.name),
            "--tunnel-port",
            str(node.tunnel_port),
        ]

    def sample_cpu(self, when: str) -> None:
        """Each node proxy's CPU seconds so far (user + system, from /proc)."""
        ticks = os.sysconf("SC_CLK_TCK")
        sample = {}
        for name, child in self.proxies.items():
            try:
                fields = Path(f"/proc/{child.pid}/stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            sample[name] = (int(fields[11]) + int(fields[12])) / ticks  # utime, stime
        self.cpu[when] = sample

    def _start_app(self, pod: PodPlan, *, listen_at: float | None = None) -> None:
        b = pod.behaviour
        argv = [
            self.python,
            "-m",
            "mesh.cli",
            "testapp",
            "--name",
            pod.name,
            "--namespace",
            pod.namespace,
            "--node",
            pod.node or "",
            "--bind",
            pod.address,
            "--http-port",
            str(pod.http_port),
            "--latency",
            json.dumps(b["latency"]),
            "--error-rate",
            repr(b["errorRate"]),
            "--contention",
            repr(b["contention"]),
            "--seed",
            str(pod.seed),
            "--drain-timeout",
            "0.5",
            "--log-level",
            "warning",
        ]
        if b["capacity"] is not None:
            argv += ["--capacity", str(b["capacity"])]
        if pod.tcp_port is not None:
            argv += ["--tcp-port", str(pod.tcp_port)]
        if pod.udp_port is not None:
            argv += ["--udp-port", str(pod.udp_port)]
        if listen_at is not None:
            argv += ["--listen-at", repr(listen_at)]
        self.apps[pod.ip] = self.supervisor.start(f"app-{pod.namespace}-{pod.name}", argv)
        state = self.pods.get(pod.ip)
        if state is not None:
            state.sent = {}

    def _write_manifests(self) -> None:
        directory = self.workdir / "manifests"
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "mesh.yaml").write_text(yaml.safe_dump(self.plan.settings, sort_keys=True))
        target = directory / "objects.yaml"
        temporary = directory / ".objects.yaml.tmp"  # hidden: the file provider skips it
        temporary.write_text(yaml.safe_dump_all(self.docs, sort_keys=True))
        os.replace(temporary, target)

    def _versions(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"http://{self.plan.controller}/api/v1/nodes", timeout=2) as r:
            return dict(json.loads(r.read()))

    def _wait_versions(self, *, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        wanted = {n.name for n in self.plan.nodes}
        while time.monotonic() < deadline:
            state = self._versions()
            current = {n["node"] for n in state["nodes"] if n["current"]}
            if wanted <= current:
                return
            time.sleep(0.05)
        raise RuntimeError("the proxies did not all apply the controller's config in time")

    # -- load -----------------------------------------------------------------------------

    def start_locust(self, *, t0_file: Path, ready_file: Path) -> None:
        plan = self.plan
        users = sum(1 if s.rate > 0 else s.users for s in plan.streams)
        limit = math.ceil(plan.duration + 120)
        self.locust = self.supervisor.start(
            "locust",
            [
                self.python,
                "-m",
                "locust",
                "-f",
                str(LOCUSTFILE),
                "--headless",
                "--users",
                str(users),
                "--spawn-rate",
                str(users),
                "--run-time",
                f"{limit}s",
                "--stop-timeout",
                "0",
                "--csv",
                str(self.workdir / "locust"),
                "--only-summary",
                "--loglevel",
                "WARNING",
            ],
            env={
                "SIMMESH_PLAN": str(self.workdir / "plan.json"),
                "SIMMESH_T0_FILE": str(t0_file),
                "SIMMESH_READY_FILE": str(ready_file),
                "SIMMESH_ROWS": str(self.workdir / "rows.json"),
            },
            cwd=self.workdir,
        )

    def start_probe(self) -> None:
        """Measure the machine's CPU contention while the load runs (probe.py)."""
        self.probe = self.supervisor.start(
            "probe", [self.python, "-m", "mesh.local.probe", str(self.workdir / "wakeup.json")]
        )

    # -- timeline -------------------------------------------------------------------------

    def schedule(self) -> list[tuple[float, int, int, Event]]:
        """(seconds after t0, order, what, event): what is APPLY, PRESTART (start the pods of
        an outage ahead of its end, listening from its end: a Python process takes a second
        or more to start on a busy machine) or UNDO."""
        out = []
        for i, item in enumerate(self.plan.timeline):
            event = Event(float(item["at"]), str(item["action"]), dict(item["params"]))
            out.append((event.at, i, APPLY, event))
            until = event.params.get("until")
            if until is not None and event.action in UNDONE:
                if event.action in DOWN_ACTIONS:
                    out.append((max(event.at, float(until) - PRESTART_LEAD), i, PRESTART, event))
                out.append((float(until), i, UNDO, event))
        return sorted(out, key=lambda x: (x[0], x[1], x[2]))

    def prestart(self, event: Event) -> None:
        """Start the pods an outage took down, listening only from its end."""
        listen_at = self.t0 + float(event.params["until"])
        for pod in self._outage_pods(event):
            if self.pods[pod.ip].down and pod.ip not in self.prestarted:
                self._start_app(pod, listen_at=listen_at)
                self.prestarted.add(pod.ip)

    def _outage_pods(self, event: Event) -> list[PodPlan]:
        params = event.params
        if event.action.startswith("node"):
            return [p for p in self.plan.pods if p.node == params["node"]]
        return self.plan.pods_of(params["service"], params.get("replica"))

    def apply(self, event: Event, *, undo: bool) -> None:
        at = round(time.time() - self.t0, 6)
        params = event.params
        entry: dict[str, Any] = {"at": at, "action": event.action, "undo": undo}
        entry.update({k: v for k, v in params.items() if k != "objects"})
        action = event.action
        if action in DOWN_ACTIONS:
            down = DOWN_ACTIONS[action] != undo
            pods = self._outage_pods(event)
            failure = str(params.get("failure", "refused"))
            if failure == "unreachable" and not self.iptables:
                failure = "refused"
                self.record["realised"].append(
                    f"{action} at {event.at:g}s: unreachable realised as refused "
                    "(needs a network namespace of its own with iptables)"
                )
            entry["realisedFailure"] = failure
            for pod in pods:
                self._set_down(pod, down=down, unreachable=failure == "unreachable")
        elif action in ("latency-spike", "error-burst"):
            self._fault(event, undo=undo)
        else:
            entry["versionBefore"] = self._versions()["version"]
            self.docs = with_event_objects(self.docs, event)
            self._write_manifests()
            entry["written"] = round(time.time() - self.t0, 6)
            self.pending_versions.append(entry)
        self.record["events"].append(entry)

    def _set_down(self, pod: PodPlan, *, down: bool, unreachable: bool) -> None:
        state = self.pods[pod.ip]
        if down == state.down:
            return
        state.down = down
        if down:
            if unreachable:
                self._block(pod.address)
            self.supervisor.kill(self.apps[pod.ip])
        else:
            if pod.ip in self.prestarted:
                self.prestarted.discard(pod.ip)  # already started, listening from now
            else:
                self._start_app(pod)
            self._unblock(pod.address)
            state.sent = {}
            self._push(pod)

    def _block(self, address: str) -> None:
        for direction in ("-d", "-s"):
            subprocess.run(
                ["iptables", "-w", "-I", "OUTPUT", direction, address, "-j", "DROP"],
                check=True,
                capture_output=True,
            )
        self.blocked.add(address)

    def _unblock(self, address: str) -> None:
        if address not in self.blocked:
            return
        for direction in ("-d", "-s"):
            subprocess.run(
                ["iptables", "-w", "-D", "OUTPUT", direction, address, "-j", "DROP"],
                check=False,
                capture_output=True,
            )
        self.blocked.discard(address)

    def _fault(self, event: Event, *, undo: bool) -> None:
        params = event.params
        service = params["service"]
        replica = params.get("replica")
        pods = self.plan.pods_of(service, replica)
        if replica is None:
            targets = [self.workloads[service]]
        else:
            targets = []
            for pod in pods:
                state = self.pods[pod.ip]
                if not state.own:
                    base = self.workloads[service]
                    state.factor, state.add, state.error_rate = (
                        base.factor,
                        base.add,
                        base.error_rate,
                    )
                    state.own = True
                targets.append(state)
        for state in targets:
            if event.action == "latency-spike":
                state.factor = 1.0 if undo else float(params.get("factor", 1.0))
                state.add = 0.0 if undo else float(params.get("add", 0.0))
            else:
                first = next(p for p in self.plan.pods if p.workload == service)
                state.error_rate = (
                    float(first.behaviour["errorRate"]) if undo else float(params["errorRate"])
                )
        for pod in self.plan.pods_of(service):
            self._push(pod)

    def _push(self, pod: PodPlan) -> None:
        """Send the pod's effective behaviour when it changed (and the pod is up)."""
        state = self.pods[pod.ip]
        if state.down:
            return
        source = state if state.own else self.workloads[pod.workload]
        wanted = {
            "latencyFactor": source.factor,
            "latencyAdd": source.add,
            "errorRate": source.error_rate,
        }
        if wanted == state.sent:
            return
        if not state.sent and wanted == {
            "latencyFactor": 1.0,
            "latencyAdd": 0.0,
            "errorRate": float(pod.behaviour["errorRate"]),
        }:
            state.sent = wanted
            return
        url = f"http://{pod.address}:{pod.http_port}/behaviour"
        if self.apps[pod.ip].running():
            wait_http(f"http://{pod.address}:{pod.http_port}/healthz", timeout=30)
        body = json.dumps(wanted).encode()
        request = urllib.request.Request(url, data=body, method="PUT")
        request.add_header("Content-Type", "application/json")
        with urllib.request.urlopen(request, timeout=5) as response:
            response.read()
        state.sent = wanted

    def poll_versions(self) -> None:
        """Record when every proxy has applied the config written for a policy event."""
        if not self.pending_versions:
            return
        try:
            state = self._versions()
        except (OSError, urllib.error.URLError, ValueError):
            return
        if not state["nodes"] or not all(n["current"] for n in state["nodes"]):
            return
        done = round(time.time() - self.t0, 6)
        waiting = []
        for entry in self.pending_versions:
            if state["version"] != entry["versionBefore"]:
                entry["appliedByAll"] = done
                entry["version"] = state["version"]
            elif done - entry["written"] > 5:
                entry["appliedByAll"] = None  # the change did not change the config
            else:
                waiting.append(entry)
        self.pending_versions = waiting

    # -- end ------------------------------------------------------------------------------

    def scrape(self) -> None:
        """Each proxy's /metrics (to metrics-NODE.txt) and applied config version."""
        configs: dict[str, Any] = {}
        for node in self.plan.nodes:
            base = f"http://{node.address}:{node.admin_port}"
            try:
                with urllib.request.urlopen(f"{base}/metrics", timeout=5) as r:
                    (self.workdir / f"metrics-{node.name}.txt").write_bytes(r.read())
                with urllib.request.urlopen(f"{base}/config", timeout=5) as r:
                    configs[node.name] = json.loads(r.read())
            except (OSError, urllib.error.URLError, ValueError) as exc:
                configs[node.name] = {"error": str(exc)}
        self.record["configs"] = {
            name: {"version": c.get("version"), "error": c.get("error")}
            for name, c in configs.items()
        }
        if self.ca is not None:
            for node in self.plan.nodes:
                base = f"http://{node.address}:{node.admin_port}"
                try:
                    with urllib.request.urlopen(f"{base}/certificates", timeout=5) as r:
                        (self.workdir / f"certificates-{node.name}.json").write_bytes(r.read())
                except (OSError, urllib.error.URLError):
                    pass
        start, end = self.cpu.get("t0", {}), self.cpu.get("end", {})
        if start and end:
            self.record["proxyCpu"] = {
                n: round(end[n] - start[n], 3) for n in sorted(end) if n in start
            }

    def stop(self) -> None:
        if self.probe is not None:
            self.supervisor.stop(self.probe, grace=5)
        if self.locust is not None:
            self.supervisor.stop(self.locust, grace=15)
        for child in self.proxies.values():  # drain: the access logs are flushed at exit
            if child.running():
                child.process.terminate()
        for child in self.proxies.values():
            self.supervisor.stop(child, grace=10)
        for address in list(self.blocked):
            self._unblock(address)
        self.supervisor.stop_all(grace=5)
        self.record["processes"] = {c.name: c.pid for c in self.supervisor.children}
        if self.ca_server is not None:
            self.ca_server.shutdown()
            self.ca_server.server_close()
        if self.ca is not None:
            self.record["ca"] = {"address": self.plan.ca, **self.ca.record()}
        if self.keys is not None:
            shutil.rmtree(self.keys, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    workdir = Path(args[0])
    plan = Plan.read(workdir / "plan.json")
    options = plan.options
    mesh = LocalMesh(plan, workdir)
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    code = 0
    try:
        mesh.start()
        ready = workdir / "locust.ready"
        t0_file = workdir / "t0"
        if options.get("load", True):
            mesh.start_locust(t0_file=t0_file, ready_file=ready)
            deadline = time.monotonic() + 120
            while not ready.exists():
                assert mesh.locust is not None
                if not mesh.locust.running():
                    tail = mesh.supervisor.tail(mesh.locust)
                    raise RuntimeError(f"locust exited before it started: {tail}")
                if time.monotonic() > deadline:
                    raise RuntimeError("locust did not start within 120 s")
                time.sleep(0.05)
        if options.get("probe", True):
            mesh.start_probe()
        mesh.t0 = time.time() + float(options.get("lead", 0.5))
        t0_file.write_text(repr(mesh.t0))
        mesh.sample_cpu("t0")  # (the lead before t0 is idle)
        mesh.record["t0"] = mesh.t0
        _announce(plan, workdir)
        _run(mesh, options)
        mesh.record["status"] = "finished"
    except Interrupted as exc:
        mesh.record["status"] = f"interrupted ({exc})"
        code = 130
    except (RuntimeError, OSError, subprocess.CalledProcessError) as exc:
        mesh.record["status"] = f"failed: {exc}"
        print(f"simmesh: error: the local mesh failed: {exc}", file=sys.stderr)
        code = 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        try:
            if mesh.record["status"] != "starting":
                mesh.scrape()
        finally:
            mesh.stop()
            (workdir / "run.json").write_text(json.dumps(mesh.record, indent=1, sort_keys=True))
    return code


def _run(mesh: LocalMesh, options: dict[str, Any]) -> None:
    plan = mesh.plan
    schedule = mesh.schedule()
    load = options.get("load", True)
    grace = float(options.get("grace", 2.0))
    hold = options.get("hold")
    end = (
        mesh.t0 + plan.duration + grace
        if load
        else (mesh.t0 + float(hold) if hold is not None else math.inf)
    )
    while time.time() < end:
        if "end" not in mesh.cpu and time.time() >= mesh.t0 + plan.duration:
            mesh.sample_cpu("end")  # the proxies' CPU over the scenario's duration
        while schedule and time.time() >= mesh.t0 + schedule[0][0]:
            _, _, what, event = schedule.pop(0)
            if what == PRESTART:
                mesh.prestart(event)
            else:
                mesh.apply(event, undo=what == UNDO)
        mesh.poll_versions()
        if mesh.locust is not None and not mesh.locust.running():
            raise RuntimeError(f"locust exited early: {mesh.supervisor.tail(mesh.locust)}")
        nxt = mesh.t0 + schedule[0][0] if schedule else end
        time.sleep(max(0.0, min(0.05, nxt - time.time(), end - time.time())))
    if mesh.locust is not None:
        mesh.supervisor.stop(mesh.locust, grace=30)  # SIGTERM: Locust writes rows and stats
    if mesh.probe is not None:
        mesh.supervisor.stop(mesh.probe, grace=5)


def _announce(plan: Plan, workdir: Path) -> None:
    lines = [
        f"local mesh for {plan.scenario} ({plan.isolation}), controller {plan.controller}, "
        f"logs in {workdir} while it runs"
    ]
    for node in plan.nodes:
        tunnel = f", mTLS tunnel :{node.tunnel_port}" if plan.mtls != "off" else ""
        lines.append(f"  node {node.name}: proxy {node.address}, admin :{node.admin_port}{tunnel}")
    if plan.mtls != "off":
        lines.append(
            f"  mTLS {plan.mtls}: certificates from the run's CA at {plan.ca} "
            f"(trust domain {plan.trust_domain}); each proxy's at /certificates"
        )
    enter = f"nsenter --net=/proc/{os.getpid()}/ns/net " if plan.isolation == "netns" else ""
    for s in plan.streams:
        lines.append(
            f"  traffic {s.name}: from {s.source} at {s.address} -> {s.proxy}:{s.port} "
            f"({s.protocol}, Host {s.host})"
        )
        if s.protocol == "http" and not plan.options.get("load", True):
            path = s.mix[0]["path"]
            lines.append(
                f"    {enter}curl --interface {s.address} -H 'Host: {s.host}' "
                f"http://{s.proxy}:{s.port}{path}"
            )
    print("\n".join(lines), file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
