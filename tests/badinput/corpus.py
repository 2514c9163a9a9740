"""The bad-input corpus: what a clumsy user or an attacker hands simmesh, generated.

Each :class:`Case` is one input: files to write into a fresh directory and what to run on it
(a CLI command line, or one of the library readers: scenario loader, manifest reader, config
decoder) and words the one-line error must contain (the file or option, the field). The
generators cross fields with the values that break them (NaN, infinities, negative numbers,
absurd sizes, wrong types, integers longer than Python reads, paths that escape, binary
bytes, directories and FIFOs where files belong, anchor bombs, deep nesting), and the issue's
own examples are spelled out as they were reported. ``{dir}`` in an argument is the case's
directory.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = ROOT / "scenarios" / "quickstart"

# A file's content, or one of these special kinds of file.
DIRECTORY = "<directory>"
FIFO = "<fifo>"
SPARSE = "<sparse 17 MB>"

BOMB = "\n".join(
    [
        'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]',
        *(
            f"{x}: &{x} [{', '.join(['*' + p] * 9)}]"
            for p, x in zip("abcdefgh", "bcdefghi", strict=True)
        ),
    ]
)
MERGE_BOMB = "\n".join(
    ["a0: &a0 {k: v}"] + [f"a{i}: &a{i} {{<<: [*a{i - 1}, *a{i - 1}]}}" for i in range(1, 30)]
)
DEEP_YAML = "a: " + "[" * 3000 + "]" * 3000
DEEP_BLOCK = "".join(f"{' ' * i}k{i}:\n" for i in range(300)) + " " * 300 + "v: 1\n"
DEEP_JSON = '{"a": ' + "[" * 100000 + "]" * 100000 + "}"
HUGE_INT = "9" * 5000

# Values that no numeric field accepts: (YAML text, what it is).
NOT_NUMBERS = [".nan", ".inf", "-.inf", "1.0e+999", "'x'", "[]", "{}", "true", HUGE_INT]


@dataclass
class Case:
    id: str
    run: str  # "cli", "scenario", "manifests", "config"
    argv: list[str] = field(default_factory=list)
    files: dict[str, str | bytes] = field(default_factory=dict)
    expect: tuple[str, ...] = ()  # words the error line must contain
    source: str = "generated"  # or "issue": an example from issue 8


# -- the valid bases that mutations start from ---------------------------------------------------

SCENARIO: dict[str, Any] = {
    "name": "tiny",
    "duration": 10,
    "seed": 3,
    "nodes": ["node-a", "node-b"],
    "workloads": {
        "demo/web": {"replicas": 2, "latency": 0.01, "errorRate": 0.0, "port": 80},
        "demo/client": {"replicas": 1},
    },
    "traffic": [{"name": "t", "from": "demo/client", "to": "http://web.demo.mesh/", "rate": 5}],
    "timeline": [{"at": 2, "action": "endpoint-down", "service": "demo/web", "replica": 0}],
    "slos": [{"name": "ok", "successRate": 0.5, "latency": {"p99": 1.0}}],
}
MESH_YAML: dict[str, Any] = {"zone": "mesh", "httpPorts": {"start": 5000, "size": 10}}


SMALL = """apiVersion: v1
kind: Service
metadata: {name: web, namespace: demo}
spec:
  ports: [{name: http, port: 80, targetPort: 8080}]
"""


def small_files() -> dict[str, str | bytes]:
    """One Service: what the manifest and mesh.yaml cases add their bad file to."""
    return {"web.yaml": SMALL}


def quickstart_files() -> dict[str, str | bytes]:
    return {p.name: p.read_text() for p in sorted(QUICKSTART.iterdir()) if p.is_file()}


def scenario_files(raw: dict[str, Any] | str) -> dict[str, str | bytes]:
    text = raw if isinstance(raw, str) else yaml.safe_dump(raw, sort_keys=False)
    return {"scenario.yaml": text}


PLACEHOLDER = "@@value@@"


def set_path(doc: Any, path: str, value: str) -> tuple[Any, str]:
    """A deep copy of ``doc`` with ``a.b[0].c`` to be set to ``value``, YAML text written as
    is (``.nan``, ``[]``, a 5000-digit integer); :func:`dump` puts it in."""
    doc = copy.deepcopy(doc)
    node = doc
    steps = _steps(path)
    for step in steps[:-1]:
        node = node[step]
    node[steps[-1]] = PLACEHOLDER
    return doc, value


def dump(doc: Any) -> str:
    if isinstance(doc, tuple):
        doc, value = doc
        text = yaml.safe_dump(doc, sort_keys=False, width=10**6)
        return text.replace(f"'{PLACEHOLDER}'", value).replace(PLACEHOLDER, value)
    return yaml.safe_dump(doc, sort_keys=False, width=10**6)


# -- scenario.yaml ---------------------------------------------------------------------------


SCENARIO_NUMBERS = {
    # path: extra bad values beyond NOT_NUMBERS (too small, too large)
    "duration": ["0", "-1", "1e9"],
    "seed": ["-1", "1.5"],
    "workloads.demo/web.replicas": ["-1", "1.5", "1000000000"],
    "workloads.demo/web.latency": ["-1"],
    "workloads.demo/web.errorRate": ["-0.1", "1.5"],
    "workloads.demo/web.port": ["0", "70000", "-80"],
    "traffic[0].rate": ["-5", "1e12"],
    "traffic[0].start": ["-1"],
    "timeline[0].at": ["-1"],
    "slos[0].successRate": ["-1", "2"],
    "slos[0].latency.p99": ["-1"],
    "proxyLatency": ["-1", "1e9"],
    "connectFailureLatency": ["-1", "1e9"],
}


def scenario_cases() -> Iterator[Case]:
    for path, extra in SCENARIO_NUMBERS.items():
        leaf = path.split(".")[-1].split("[")[0]
        for value in NOT_NUMBERS + extra:
            text = dump(set_path(SCENARIO, path, value))
            words = ("scenario.yaml",) if value in (".nan", HUGE_INT) or "e+999" in value else ()
            if value not in NOT_NUMBERS[:4] and value != HUGE_INT:
                words = ("scenario.yaml", leaf)
            yield Case(
                f"scenario:{path}={value[:12]}",
                "scenario",
                files=scenario_files(text),
                expect=words,
            )
    for name in ("../escape", "/tmp/abs", "..", ".", "a/b", "x" * 80, "-dash", "na me", "[]"):
        doc = set_path(SCENARIO, "name", name if name == "[]" else json.dumps(name))
        yield Case(
            f"scenario:name={name[:12]}",
            "scenario",
            files=scenario_files(dump(doc)),
            expect=("scenario.yaml", "name"),
        )
    shapes = {
        "top-list": "- 1\n- 2\n",
        "top-scalar": "hello\n",
        "unknown-key": "nme: x\ntraffic: []\n",
        "no-traffic": "duration: 10\n",
        "nodes-not-list": dump({**SCENARIO, "nodes": "node-a"}),
        "too-many-nodes": dump({**SCENARIO, "nodes": [f"n{i}" for i in range(1001)]}),
        "traffic-both": dump(set_path(SCENARIO, "traffic[0].users", "3")),
        "traffic-bad-to": dump(set_path(SCENARIO, "traffic[0].to", "'ftp://x'")),
        "traffic-bad-port": dump(
            set_path(SCENARIO, "traffic[0].to", "'http://web.demo.mesh:70000/'")
        ),
        "unknown-node": dump(set_path(SCENARIO, "workloads.demo/web.nodes", "[node-z]")),
        "bad-action": dump(set_path(SCENARIO, "timeline[0].action", "explode")),
        "two-docs": "a: 1\n---\nb: 2\n",
        "binary": b"\x00\x01\x02\xff\xfe" * 100,
        "invalid-utf8": b"name: \xff\xfe\xfd\n",
        "bomb": BOMB,
        "merge-bomb": MERGE_BOMB,
        "deep": DEEP_YAML,
        "deep-block": DEEP_BLOCK,
        "python-tag": "name: !!python/object/apply:os.system ['true']\n",
        "tab-indent": "a:\n\tb: 1\n",
        "unhashable": "? [a]\n: b\n",
        "closed-loop-no-time": dump(
            {
                **SCENARIO,
                "proxyLatency": 0,
                "workloads": {"demo/web": {"latency": 0}},
                "traffic": [{"name": "t", "to": "http://web.demo.mesh/", "users": 5}],
            }
        ),
    }
    for name, text in shapes.items():
        yield Case(
            f"scenario:{name}",
            "scenario",
            files=scenario_files(text) if isinstance(text, str) else {"scenario.yaml": text},
            expect=(),
        )
    for special in (DIRECTORY, FIFO, SPARSE):
        yield Case(
            f"scenario:file-is-{special[1:4]}",
            "scenario",
            files={"scenario.yaml": special},
            expect=("scenario.yaml",),
        )


# -- manifests and mesh.yaml --------------------------------------------------------------------


MANIFESTS: dict[str, str | bytes] = {
    "bomb": BOMB,
    "merge-bomb": MERGE_BOMB,
    "deep-flow": DEEP_YAML,
    "deep-block": DEEP_BLOCK,
    "deep-json": DEEP_JSON,
    "cycle": "&a [*a]\n",
    "nan": "kind: Service\nmetadata: {name: x, namespace: demo}\nspec: {ports: [{port: .nan}]}\n",
    "inf": "kind: Service\nmetadata: {name: x}\nspec: {x: -.inf}\n",
    "huge-int": f"kind: Service\nmetadata: {{name: x}}\nspec: {{ports: [{{port: {HUGE_INT}}}]}}\n",
    "binary": b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4,
    "invalid-utf8": b"kind: Service\nmetadata: {name: \xff\xfe}\n",
    "not-yaml": "kind: [unclosed\n",
    "not-an-object": "- 1\n- 2\n",
    "no-kind": "metadata: {name: x}\n",
    "python-tag": "kind: !!python/object/apply:os.system ['true']\n",
    "unhashable": "? [a]\n: b\n",
    "dup-anchor-alias-missing": "a: *nope\n",
}


def manifest_cases() -> Iterator[Case]:
    for name, text in MANIFESTS.items():
        files = {**small_files(), "evil.yaml": text}
        yield Case(f"manifests:{name}", "manifests", files=files, expect=("evil.yaml",))
        yield Case(f"compile:{name}", "cli", ["compile", "{dir}"], files, expect=("evil.yaml",))
    for special in (FIFO, SPARSE):
        files = {**small_files(), "evil.yaml": special}
        yield Case(
            f"compile:file-is-{special[1:4]}",
            "cli",
            ["compile", "{dir}"],
            files,
            expect=("evil.yaml",),
        )
    mesh_values = {
        "httpPorts.start": ["70000", "0", "-1", "'x'", ".nan", HUGE_INT],
        "httpPorts.size": ["0", "-1", "100000", ".inf"],
        "zone": ["[]", "{}"],
        "acl": ["'yes'", "1"],
    }
    for path, values in mesh_values.items():
        for value in values:
            files = {**small_files(), "mesh.yaml": dump(set_path(MESH_YAML, path, value))}
            yield Case(
                f"compile:mesh.yaml:{path}={value[:12]}",
                "cli",
                ["compile", "{dir}"],
                files,
                expect=("mesh.yaml",),
            )
    ranges = {"tcp-past-65535": {"tcpPorts": {"start": 65000, "size": 1000}}, "unknown": {"x": 1}}
    for name, doc in ranges.items():
        files = {**small_files(), "mesh.yaml": dump(doc)}
        yield Case(
            f"compile:mesh.yaml:{name}", "cli", ["compile", "{dir}"], files, expect=("mesh.yaml",)
        )
    for special in (DIRECTORY, FIFO, SPARSE):
        files = {**small_files(), "mesh.yaml": special}
        yield Case(
            f"compile:mesh.yaml-is-{special[1:4]}",
            "cli",
            ["compile", "{dir}"],
            files,
            expect=("mesh.yaml",),
            source="issue" if special == DIRECTORY else "generated",
        )
    for bad in (BOMB, DEEP_YAML, b"\xff\x00binary"):
        files = {**quickstart_files(), "mesh.yaml": bad}
        yield Case(
            f"explain:mesh.yaml-{str(bad)[:6]}",
            "cli",
            ["explain", "{dir}", "--url", "http://backend.demo.mesh/"],
            files,
            expect=("mesh.yaml",),
        )


# -- the config decoder ---------------------------------------------------------------------------


def config_cases(valid: dict[str, Any]) -> Iterator[Case]:
    route = next(k for k, v in valid["routes"].items() if v["protocol"] == "http")
    cluster = valid["routes"][route]["cluster"]
    flow = next(i for i, item in enumerate(valid["listeners"]) if item["protocol"] == "tcp")
    fields = {
        f"listeners[{flow}].port": [70000, 0, -1, "x", 1.5, None, True],
        f"listeners[{flow}].protocol": ["sctp", 1],
        f"listeners[{flow}].route": ["nope", None],
        f"routes.{route}.policy.timeout": [-1, 0, "1s", 1e300],
        f"routes.{route}.policy.retry": [{"attempts": -1}, "x"],
        f"routes.{route}.cluster": ["missing", 3],
        f"routes.{route}.scheme": ["gopher"],
        f"routes.{route}.listener": [70000],
        f"clusters.{cluster}.endpoints": ["x", [{"ip": "not-an-ip", "port": 80}]],
        f"clusters.{cluster}.loadBalancer": ["random"],
        f"clusters.{cluster}.circuitBreaker": [
            {
                "expression": "NetworkErrorRatio() > nan",
                "window": 10,
                "openDuration": 10,
                "minRequests": 5,
                "checkPeriod": 0.1,
            },
            {
                "expression": "NetworkErrorRatio() > 0.5",
                "window": -1,
                "openDuration": 10,
                "minRequests": 5,
                "checkPeriod": 0.1,
            },
        ],
        "settings.acl": ["yes"],
        # mTLS tunnels (issue 17): where each node's proxy takes tunnels, pod IP -> node
        "settings.mtls": [
            {"mode": "strict", "trustDomain": "cluster.local", "proxies": {"b": "10.0.0.1"}},
            {"mode": "strict", "trustDomain": "cluster.local", "proxies": {"b": "10.0.0.1:0"}},
            {"mode": "strict", "trustDomain": "cluster.local", "proxies": {"b": "node-b:15008"}},
            {"mode": "strict", "trustDomain": "cluster.local", "proxies": {"b": 15008}},
            {"mode": "strict", "trustDomain": "cluster.local", "pods": {"not-an-ip": "b"}},
            {"mode": "on", "trustDomain": "cluster.local"},
        ],
        "apiVersion": ["v1"],
        "version": [7, "x" * 100],
        "hosts": [{"not-a-port": {}}, {"70000": {}}],
        "identities": [[]],
        "clusters": [[]],
    }
    for path, values in fields.items():
        for value in values:
            doc = copy.deepcopy(valid)
            node: Any = doc
            steps = _steps(path)
            for step in steps[:-1]:
                node = node[step]
            node[steps[-1]] = value
            last = str(steps[-1])
            yield Case(
                f"config:{path}={str(value)[:16]}",
                "config",
                files={"config.json": json.dumps(doc)},
                expect=(last,),
            )
    required = {  # keys the Router reads without a default (found by fuzzing: "listener")
        f"routes.{route}": ["listener", "cluster", "policy", "service"],
        f"clusters.{cluster}": ["endpoints", "loadBalancer", "scheme"],
        "settings": ["acl", "zone"],
        "": ["listeners", "hosts", "routes", "clusters", "settings", "version"],
    }
    for where, keys in required.items():
        for key in keys:
            doc = copy.deepcopy(valid)
            node = doc
            for step in _steps(where) if where else []:
                node = node[step]
            del node[key]
            yield Case(
                f"config:no {where}.{key}",
                "config",
                files={"config.json": json.dumps(doc)},
                expect=(key,),
            )
    yield from regex_cases(valid)
    split = copy.deepcopy(valid)
    for item in split["routes"].values():
        if item.get("split"):
            for backend in item["split"]["backends"]:
                backend["weight"] = 0
    yield Case(
        "config:split-all-zero",
        "config",
        files={"config.json": json.dumps(split)},
        expect=("positive weight",),
    )
    texts: dict[str, str | bytes] = {
        "nan-literal": re.sub(r'"acl": (true|false)', '"acl": NaN', json.dumps(valid), count=1),
        "inf-number": json.dumps(valid).replace(
            f'"port": {valid["listeners"][0]["port"]}', '"port": 1e999', 1
        ),
        "deep": DEEP_JSON,
        "not-json": "{",
        "binary": b"\x00\xff" * 100,
        "empty": "",
        "list": "[]",
        "huge-int": '{"apiVersion": ' + HUGE_INT + "}",
    }
    for name, text in texts.items():
        yield Case(f"config:{name}", "config", files={"config.json": text}, expect=("config.json",))
    yield Case("config:yaml-bomb", "config", files={"config.yaml": BOMB}, expect=("config.yaml",))


# Patterns RE2 cannot run, or that are past the bounds of mesh/core/patterns.py.
BAD_REGEXES = [
    r"/(a)\1",  # backreference
    "/(?P<x>a)(?P=x)",
    "/(?=admin)",  # lookahead
    "/x(?<!y)",  # lookbehind
    "/a*+",  # possessive
    "/(?>a)",  # atomic group
    "/a\\Z",
    "/a{,3}",  # a repetition to Python's re, text to RE2
    "/a{4294967296}",
    "/a{1001}",
    "/" + "a" * 5000,  # longer than 4096 characters
    "/" + "[a-z]x" * 600,  # more than 1000 instructions
    "(",
]


def regex_cases(valid: dict[str, Any]) -> Iterator[Case]:
    """Each bad pattern as an access grant's pathRegex, as a header value, and as a split
    match (a split is added to the first split route's matches)."""
    cluster, index = next(
        (key, i)
        for key, item in valid["clusters"].items()
        for i, grant in enumerate(item.get("access") or [])
        if grant.get("match")
    )
    route = next(key for key, item in valid["routes"].items() if item.get("split"))
    for pattern in BAD_REGEXES:
        grant = copy.deepcopy(valid)
        grant["clusters"][cluster]["access"][index]["match"]["pathRegex"] = pattern
        header = copy.deepcopy(valid)
        header["clusters"][cluster]["access"][index]["match"]["headers"] = [["x-a", pattern]]
        split = copy.deepcopy(valid)
        match = {"name": "m", "pathRegex": pattern, "methods": None, "headers": []}
        split["routes"][route]["split"]["matches"] = [match]
        for what, doc, word in (
            ("grant", grant, "pathRegex"),
            ("header", header, "headers[x-a]"),
            ("split", split, "split.matches[0].pathRegex"),
        ):
            yield Case(
                f"config:regex-{what}={pattern[:16]}",
                "config",
                files={"config.json": json.dumps(doc)},
                expect=(word, "expected an RE2 regular expression"),
            )


def _steps(path: str) -> list[str | int]:
    steps: list[str | int] = []
    for part in path.split("."):
        name, _, rest = part.partition("[")
        if name:
            steps.append(name)
        if rest:
            steps.append(int(rest.rstrip("]")))
    return steps


# -- command lines -----------------------------------------------------------------------------


BAD_SECONDS = ["nan", "inf", "-1", "x", "1e999", ""]
BAD_PORTS = ["70000", "-1", "x", "65536", "1e3", "²"]


def cli_cases() -> Iterator[Case]:
    qs = quickstart_files()
    explain = ["explain", "{dir}", "--from", "demo/frontend"]
    urls = {
        "http://backend.demo.mesh:70000/": "issue",
        "http://backend.demo.mesh:-1/": "issue",
        "http://backend.demo.mesh:abc/": "issue",
        "http://[::1/x": "issue",
        "http://": "generated",
        "ftp://backend.demo.mesh/": "generated",
        "http://backend.demo.mesh:99999999999999999999/": "generated",
        "http://back end.demo.mesh/": "generated",
        "http://backend.demo.mesh:0/": "generated",
        "backend.demo.mesh/api": "generated",
    }
    for value, source in urls.items():
        yield Case(
            f"explain:--url={value[:30]}",
            "cli",
            [*explain, "--url", value],
            qs,
            expect=("--url",),
            source=source,
        )
    for flag in ("--tcp", "--udp"):
        for value in (
            "db.demo.mesh",
            ":5432",
            "db.demo.mesh:0",
            "db.demo.mesh:70000",
            "db.demo.mesh:²",
            "db.demo.mesh:-1",
        ):
            yield Case(
                f"explain:{flag}={value}", "cli", [*explain, flag, value], qs, expect=(flag,)
            )
    for value in ("frontend", "a/b/c"):
        yield Case(
            f"explain:--from={value}",
            "cli",
            ["explain", "{dir}", "--from", value, "--url", "http://backend.demo.mesh/"],
            qs,
            expect=("--from",),
        )
    for value in ("10.0.0.256", "frontend", "10.0.0.1/24"):
        yield Case(
            f"explain:--from-ip={value}",
            "cli",
            ["explain", "{dir}", "--from-ip", value, "--url", "http://backend.demo.mesh/"],
            qs,
            expect=("--from-ip",),
        )
    yield Case(
        "explain:-H",
        "cli",
        [*explain, "--url", "http://backend.demo.mesh/", "-H", "x"],
        qs,
        expect=("-H",),
    )
    yield Case(
        "explain:unknown-host",
        "cli",
        [*explain, "--url", "http://nope.demo.mesh/"],
        qs,
        expect=("nope.demo.mesh",),
    )
    for argv in (
        ["compile"],
        ["compile", "{dir}", "-o", "xml"],
        ["compile", "{dir}/nope"],
        ["compile", "{dir}/services.yaml"],
        [],
        ["frobnicate"],
        ["compile", "--bogus"],
        ["explain", "{dir}"],
    ):
        yield Case(f"cli:{' '.join(argv)[:30] or 'nothing'}", "cli", argv, qs)

    sim = ["sim", "{dir}", "--quiet", "--out", "{dir}/out"]
    files = scenario_files(SCENARIO)
    for value in [*BAD_SECONDS, "0", "1e9"]:
        yield Case(
            f"sim:--duration={value}",
            "cli",
            [*sim, "--duration", value],
            files,
            expect=("duration",),
            source="issue",
        )
    for value in ("x", "1.5"):
        yield Case(f"sim:--seed={value}", "cli", [*sim, "--seed", value], files, expect=("seed",))
    sets = {
        "traffic[0].rate=1e12": "issue",
        "traffic[0].rate=.nan": "issue",
        "traffic[0].rate=.inf": "issue",
        "workloads.demo/web.replicas=1000000000": "issue",
        "duration=1e12": "issue",
        "traffic[0].rate=900000": "generated",  # within bounds, over the request budget
        "workloads.demo/web.replicas=10000": "generated",  # fine alone
        "=1": "generated",
        "traffic[²].rate=1": "generated",
        "traffic[9].rate=1": "generated",
        "duration=[unclosed": "generated",
        "name=../../etc": "issue",
        "name=/tmp/abs": "issue",
    }
    for assignment, source in sets.items():
        argv = [*sim, "--set", assignment]
        if assignment.startswith("workloads.demo/web.replicas=10000"):
            argv += ["--set", "traffic[0].rate=900000"]  # with a budget-busting rate
        yield Case(f"sim:--set {assignment[:28]}", "cli", argv, files, source=source)
    for argv in (
        ["--sweep", "nope"],
        ["--sweep", "traffic[0].rate=1,.nan"],
        ["--max-requests", "0"],
        ["--max-requests", "x"],
        ["--max-memory", "lots"],
        ["--max-memory", "0"],
    ):
        yield Case(f"sim:{' '.join(argv)[:30]}", "cli", [*sim, *argv], files)
    yield Case(
        "sim:budget", "cli", [*sim, "--max-requests", "10"], files, expect=("budget", "--force")
    )
    yield Case("sim:no-dir", "cli", ["sim", "{dir}/missing"], {}, expect=("missing",))

    proxy = [
        "proxy",
        "--config-file",
        "{dir}/config.json",
        "--node",
        "node-a",
        "--admin-port",
        "0",
        "--bind",
        "127.0.0.1",
    ]
    for flag in (
        "--drain-delay",
        "--drain-timeout",
        "--connect-timeout",
        "--header-timeout",
        "--keepalive-timeout",
        "--body-timeout",
        "--write-timeout",
        "--upstream-timeout",
        "--udp-idle-timeout",
    ):
        for value in BAD_SECONDS:
            if flag == "--drain-timeout" and value == "":
                continue
            yield Case(
                f"proxy:{flag}={value}",
                "cli",
                [*proxy, flag, value],
                {},
                expect=(flag,),
                source="issue" if value == "-1" else "generated",
            )
    for value in BAD_PORTS:
        yield Case(
            f"proxy:--admin-port={value}",
            "cli",
            [*proxy, "--admin-port", value],
            {},
            expect=("--admin-port",),
            source="issue" if value == "70000" else "generated",
        )
    for flag, values in {
        "--max-connections": ["0", "-5", "x", "1e6"],
        "--max-connections-per-source": ["0", "x"],
        "--reserved-connections": ["-1", "x"],
        "--max-upstream-connections": ["0", "-1", "x"],
        "--max-concurrent-streams": ["0", "x", "100000"],
        "--workers": ["0", "-1", "x", "1000"],
        "--buffer-limit": ["-1", "x", "99999999999"],
        "--max-header-size": ["10", "x"],
        "--max-response-header-size": ["10", "x"],
        "--controller": ["ftp://x", "http://x:70000", "controller:9000", "http://"],
        "--address-map": ["nope", "10.0.0.0/8=nope"],
        # workload certificates (issue 17)
        "--certificates": ["on", "vault"],
        "--renew-fraction": ["0", "1", "nan", "x", "0.95"],
        "--mesh-namespace": ["Mesh_NS"],
        "--certificate-dir": ["{dir}/missing"],
        "--tunnel-port": ["0", "70000", "x", "-1"],
        "--ca-url": ["ftp://x", "http://"],
    }.items():
        for value in values:
            argv = [*proxy, flag, value]
            if flag == "--controller":
                argv = [a for a in proxy if a not in ("--config-file", "{dir}/config.json")]
                argv += [flag, value]
            yield Case(f"proxy:{flag}={value}", "cli", argv, {}, expect=(flag,))
    for argv, words, source in (
        (["--bind", "no-such-host.invalid"], ("--bind",), "issue"),
        (["--bind", "999.1.1.1"], ("--bind",), "generated"),
        (["--upstream-ca", "{dir}/missing.pem"], ("--upstream-ca",), "issue"),
        (["--upstream-ca", "{dir}/garbage.pem"], ("--upstream-ca",), "generated"),
        (["--node", "Node_A"], ("--node",), "generated"),
        (["--node", ""], ("--node",), "generated"),
        (["--config-file", "{dir}"], ("--config-file",), "generated"),
        (["--token-file", "{dir}/missing"], ("--token-file",), "generated"),
        (["--token-file", "{dir}/empty"], ("--token-file",), "generated"),
        # the local mesh's CA (simmesh up): its URL and this node's token go with it
        (["--certificates", "local"], ("--ca-url", "--ca-token-file"), "generated"),
        (
            ["--certificates", "local", "--ca-url", "http://127.0.0.1:1"],
            ("--ca-token-file",),
            "generated",
        ),
        (["--ca-url", "http://127.0.0.1:1"], ("--certificates local",), "generated"),
        (
            ["--certificates", "kubernetes", "--ca-token-file", "{dir}/empty"],
            ("--certificates local",),
            "generated",
        ),
        (
            [
                "--certificates",
                "local",
                "--ca-url",
                "http://127.0.0.1:1",
                "--ca-token-file",
                "{dir}/empty",
            ],
            ("--ca-token-file",),
            "generated",
        ),
    ):
        files = {"garbage.pem": b"\x00not a certificate", "empty": ""}
        yield Case(
            f"proxy:{' '.join(argv)[:30]}",
            "cli",
            [*proxy, *argv],
            files,
            expect=words,
            source=source,
        )
    yield Case("proxy:no-source", "cli", ["proxy", "--node", "a"], {})

    controller = ["controller", "--manifests", "{dir}", "--listen", "127.0.0.1:0"]
    for value in ("x", "1.2.3.4:70000", ":", "host:port", "::1:80", "127.0.0.1:-1"):
        yield Case(
            f"controller:--listen={value}",
            "cli",
            [*controller, "--listen", value],
            qs,
            expect=("--listen",),
            source="issue" if value in ("x", "host:port") else "generated",
        )
    yield Case(
        "controller:--listen-unresolvable",
        "cli",
        [*controller, "--listen", "no-such-host.invalid:9000"],
        qs,
        expect=("--listen",),
    )
    for argv, words in (
        (["--manifests", "{dir}/missing"], ("--manifests",)),
        (["--manifests", "{dir}/services.yaml"], ("--manifests",)),
        (["--settings", "{dir}/missing.yaml"], ("--settings",)),
        (["--settings", "{dir}"], ("--settings",)),
        (["--settings", "{dir}/services.yaml"], ("mesh.yaml",)),
        (["--namespace", "Mesh_NS"], ("--namespace",)),
        (["--zone", "a..b"], ("--zone",)),
        (["--cluster-domain", "-x"], ("--cluster-domain",)),
        (["--watch-namespace", "UPPER"], ("--watch-namespace",)),
        (["--debounce", "nan"], ("--debounce",)),
        (["--debounce", "-1"], ("--debounce",)),
        (["--node-ttl", "0"], ("--node-ttl",)),
        (["--drain-delay", "-1"], ("--drain-delay",)),
        (["--drain-delay", "inf"], ("--drain-delay",)),
        (["--token-file", "{dir}/missing"], ("missing",)),
        (["--log-level", "loud"], ("--log-level",)),
        # workload identities (issue 17)
        (["--mtls", "on"], ("--mtls",)),
        (["--trust-domain", "bad domain"], ("--trust-domain",)),
        (["--cert-lifetime", "10"], ("--cert-lifetime",)),
        (["--cert-lifetime", "nan"], ("--cert-lifetime",)),
        (["--ca-overlap", "3600"], ("--ca-overlap", "--cert-lifetime")),
        (["--ca-secret", "Bad/Name"], ("--ca-secret",)),
        (["--proxy-service-account", "simmesh-proxy"], ("--proxy-service-account",)),
        (["--proxy-service-account", "a/B_C"], ("--proxy-service-account",)),
        (["--ca-check-interval", "0"], ("--ca-check-interval",)),
    ):
        yield Case(
            f"controller:{' '.join(argv)[:30]}", "cli", [*controller, *argv], qs, expect=words
        )
    for setting, words in (
        ("mtls: on\n", ("mtls", "off, permissive or strict")),  # YAML's on is true
        ("mtls: sometimes\n", ("mtls",)),
        ("trustDomain: 'not a domain'\n", ("trustDomain",)),
    ):
        yield Case(
            f"controller:mesh.yaml-{setting[:16]}",
            "cli",
            controller,
            {**qs, "mesh.yaml": setting},
            expect=words,
        )
    for special in (BOMB, DEEP_YAML, b"\x00\x01binary\xff"):
        files = {**qs, "mesh.yaml": special}
        yield Case(
            f"controller:mesh.yaml-{str(special)[:6]}",
            "cli",
            controller,
            files,
            expect=("mesh.yaml",),
        )
    yield Case(
        "controller:kubeconfig-missing",
        "cli",
        ["controller", "--kubeconfig", "{dir}/nope", "--listen", "127.0.0.1:0"],
        {},
        expect=("--kubeconfig",),
    )

    for command in ("prepare", "check", "cleanup"):
        base = [command, "--kubeconfig", "{dir}/kubeconfig"]
        for value in BAD_SECONDS:
            yield Case(
                f"{command}:--timeout={value}",
                "cli",
                [*base, "--timeout", value],
                {},
                expect=("--timeout",),
            )
        if command != "check":  # check reports an unreachable cluster in its table (exit 1)
            yield Case(f"{command}:--kubeconfig-missing", "cli", base, {}, expect=("kubeconfig",))
        yield Case(f"{command}:--zone", "cli", [*base, "--zone", "Mesh"], {}, expect=("zone",))
        yield Case(f"{command}:--bogus", "cli", [*base, "--bogus"], {})
    yield Case(
        "check:--controller",
        "cli",
        ["check", "--controller", "ftp://x"],
        {},
        expect=("--controller",),
    )
    yield Case("check:--proxy", "cli", ["check", "--proxy", "node-a:9901"], {}, expect=("--proxy",))

    # the admission gate's options (mesh/gate/controller.py): checked before anything starts
    for argv, words in (
        (["--gate-mode", "on"], ("--gate-mode",)),
        (["--gate-mode", "enforce"], ("--gate-mode",)),  # with --manifests: no cluster to gate
        (["--gate-budget", "0"], ("--gate-budget",)),
        (["--gate-budget", "60"], ("--gate-budget",)),
        (["--gate-budget", "nan"], ("--gate-budget",)),
        (["--gate-seeds", "0"], ("--gate-seeds",)),
        (["--gate-duration", "-5"], ("--gate-duration",)),
        (["--gate-window", "inf"], ("--gate-window",)),
        (["--gate-history", "0"], ("--gate-history",)),
        (["--gate-listen", "host:port"], ("--gate-listen",)),
        (["--gate-cert-dir", "{dir}/missing"], ("--gate-cert-dir",)),
        (["--gate-slos-configmap", "Bad_Name"], ("--gate-slos-configmap",)),
    ):
        yield Case(
            f"controller:{' '.join(argv)[:30]}", "cli", [*controller, *argv], qs, expect=words
        )
    gated = ["controller", "--kubeconfig", "{dir}/kubeconfig", "--listen", "127.0.0.1:0"]
    for argv, words in (
        (["--gate-mode", "warn"], ("--gate-cert-dir",)),
        (["--gate-mode", "warn", "--gate-cert-dir", "{dir}"], ("tls.crt", "tls.key")),
    ):
        yield Case(
            f"controller:{' '.join(argv)[:30]}",
            "cli",
            [*gated, *argv],
            {"kubeconfig": "apiVersion: v1\nkind: Config\n"},
            expect=words,
        )

    # simmesh snapshot: everything that can be wrong before the cluster is asked anything
    snapshot = ["snapshot", "--kubeconfig", "{dir}/kubeconfig", "--out", "{dir}/snap"]
    for value in ("0s", "-1m", "5 minutes", "1y", "8d", "nan", "", "1e9s", "0.5s"):
        yield Case(
            f"snapshot:--window={value}",
            "cli",
            [*snapshot, "--window", value],
            {},
            expect=("--window",),
        )
    for argv, words in (
        (["--namespace", "Sim_Mesh"], ("--namespace",)),
        (["--prometheus", "prometheus:9090"], ("--prometheus",)),
        (["--prometheus", "ftp://p"], ("--prometheus",)),
        (["--slo-margin", "-0.5"], ("--slo-margin",)),
        (["--slo-margin", "inf"], ("--slo-margin",)),
        (["--duration", "0"], ("--duration",)),
        (["--timeout", "nan"], ("--timeout",)),
        (["--name", "../escape"], ("--name",)),
        (["--propose-slos", "{dir}/snap/slos.yaml"], ("--propose-slos",)),
        (["--propose-slos", "{dir}"], ("--propose-slos",)),
        (["--bogus"], ()),
    ):
        yield Case(f"snapshot:{' '.join(argv)[:30]}", "cli", [*snapshot, *argv], {}, expect=words)
    yield Case(
        "snapshot:--out-not-empty",
        "cli",
        ["snapshot", "--out", "{dir}"],
        {"x.yaml": "{}"},
        expect=("--out",),
    )
    yield Case(
        "snapshot:--out-a-file",
        "cli",
        ["snapshot", "--out", "{dir}/x.yaml"],
        {"x.yaml": "{}"},
        expect=("--out",),
    )
    yield Case("snapshot:no-out", "cli", ["snapshot"], {}, expect=("--out",))
    yield Case(
        "snapshot:kubeconfig-missing",
        "cli",
        ["snapshot", "--kubeconfig", "{dir}/nope", "--out", "{dir}/snap"],
        {},
        expect=("kubeconfig",),
    )


# A GAMMA route on the quickstart's backend: its compiled tables are what gamma_cases break.
GAMMA_ROUTE = """\
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: backend, namespace: demo}
spec:
  parentRefs: [{group: "", kind: Service, name: backend, port: 80}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /api}, headers: [{name: x-a, value: "1"}]}]
    filters:
    - {type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: X-B, value: "2"}]}}
    - {type: URLRewrite, urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /v2}}}
    - {type: RequestMirror, requestMirror: {backendRef: {name: backend-v2, port: 80}}}
    backendRefs: [{name: backend-v1, port: 80, weight: 3}, {name: backend-v2, port: 80}]
    timeouts: {request: 5s}
  - matches: [{path: {type: Exact, value: /old}}]
    filters: [{type: RequestRedirect, requestRedirect: {hostname: example.org}}]
"""


def gamma_cases(valid: dict[str, Any]) -> Iterator[Case]:
    """A config file whose GAMMA tables are broken: each is one line naming the field."""
    table = "routes.demo/backend:80.gamma.producer"
    rule = f"{table}.rules[0]"
    fields: dict[str, list[Any]] = {
        f"{table}.kind": ["TCPRoute"],
        f"{table}.matches[0].rule": [99, -1],
        f"{table}.matches[0].pathType": ["Glob"],
        f"{table}.matches[0]": [{"rule": 0, "pathType": "RegularExpression", "path": r"/(a)\1"}],
        f"{table}.matches[0].headers": [[{"name": "x", "value": "(", "regex": True}]],
        f"{rule}.backends[0].cluster": ["demo/nope:80"],
        f"{rule}.backends[0].weight": [-1],
        f"{rule}.requestTimeout": [-1, "5s"],
        f"{rule}.prefix": [None],
        f"{rule}.filters.mirrors[0].cluster": ["demo/nope:80"],
        f"{rule}.filters.mirrors[0].numerator": [200],
        f"{rule}.filters.requestHeaders.set": [[["X-B", "1\r\nEvil: yes"]], [["Bad Name", "1"]]],
        f"{table}.rules[1].filters.redirect.status": [304],
        f"{table}.rules[1].filters.redirect.port": [70000],
    }
    for path, values in fields.items():
        for value in values:
            doc = copy.deepcopy(valid)
            node: Any = doc
            steps = _steps(path)
            for step in steps[:-1]:
                node = node[step]
            node[steps[-1]] = value
            last = str(steps[-1])
            word = {"set": "requestHeaders", "numerator": "mirrors[0]", "0": "path"}
            yield Case(
                f"config:gamma:{path.removeprefix(table + '.')}={str(value)[:16]}",
                "config",
                files={"config.json": json.dumps(doc)},
                expect=(word.get(last, last),),
            )


def all_cases() -> list[Case]:
    import tempfile

    from mesh.cli import compile_dir

    valid = json.loads(compile_dir(QUICKSTART, acl=True, strict=True).to_json())
    with tempfile.TemporaryDirectory() as tmp:
        for name, text in quickstart_files().items():
            (Path(tmp) / name).write_text(str(text))
        (Path(tmp) / "route.yaml").write_text(GAMMA_ROUTE)
        gamma = json.loads(compile_dir(Path(tmp), acl=True).to_json())
    cases = [*scenario_cases(), *manifest_cases(), *config_cases(valid), *cli_cases()]
    cases += gamma_cases(gamma)
    seen: dict[str, int] = {}
    for case in cases:  # ids are truncated values: number the ones that collide
        seen[case.id] = seen.get(case.id, 0) + 1
        if seen[case.id] > 1:
            case.id += f"#{seen[case.id]}"
    return cases
