"""Every program the code and the tests run is installed by CI, or has a tested fallback.

A fresh machine once failed ``make test`` and ``make demo`` because the local mesh ran
``iptables``, which CI's machines had only because Docker's packages had brought it. This test
makes that mistake visible before a fresh machine does: it reads every Python file of the
project (the code, the tests, the benchmarks and the fuzzers), finds each program started
(``subprocess``, ``asyncio.create_subprocess_exec``, ``os.exec*``) or looked up
(``shutil.which``), and resolves its name from the literal, or from the list the variable was
assigned in the same function or module. Each name must then have a provider:

- a Debian package named in ``.ci/run``'s explicit list (``DEBIAN_PACKAGES``), and, where
  dpkg knows the program's file, that package must be the one that ships it;
- a package that a script installs itself (``tools/kind/docker.sh`` installs docker.io);
- a binary that ``make k8s-bins`` builds (tools/k8s-bins.sh);
- the Python environment (``make setup``'s virtualenv), or the machine's base (Python, Go,
  bash: on every machine of this kind before anything is installed);
- or a fallback, named by the test that shows the code works without the program.

A start whose program cannot be read from the code is listed in :data:`REVIEWED` with what it
runs; a new one fails this test until it is added there.
"""

from __future__ import annotations

import ast
import os
import re
import shlex
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("mesh", "sim", "conformance", "tests", "loadtests", "fuzz", "tools")
PYTHON = "python"  # sys.executable and friends: the interpreter running the code
RUNNERS = {f"subprocess.{name}" for name in ("run", "Popen", "check_output", "check_call", "call")}
RUNNERS |= {"asyncio.create_subprocess_exec", "shutil.which"}

# (file, expression) -> the program it names, for starts the resolver cannot follow.
REVIEWED: dict[tuple[str, str], str] = {
    ("mesh/local/launch.py", "netns_command()"): "unshare",
    ("mesh/local/launch.py", "prefix"): "unshare",  # Isolation.prefix: netns_command()
    ("mesh/local/procs.py", "argv"): "*",  # Supervisor.start: callers' argv, resolved there
    ("conformance/adapter.py", "self.cli"): "simmesh",
    ("conformance/adapter.py", "str(beside)"): "simmesh",  # beside the interpreter
    ("tests/cluster/egress.py", "command"): "docker",  # docker exec on a kind node
    ("tests/cluster/kube.py", "self.kubectl"): "kubectl",
    ("tests/cluster/test_4_undeploy.py", "helm"): "helm",
    ("tests/cluster/test_4_undeploy.py", "_helm()"): "helm",
    ("tests/cluster/test_5_dask.py", "kind_binary()"): "kind",  # tools/kind/kind.sh prints it
    ("tests/cluster/test_5_dask.py", "kube.kubectl"): "kubectl",
    ("tests/cluster/test_6_netpol.py", "kind_binary()"): "kind",  # tools/kind/kind.sh prints it
    ("tests/k8s/apiserver.py", "self.argv"): "*",  # each server's binary, from SIMMESH_BIN_DIR
    ("tests/k8s/test_dns_coredns.py", "self.binary"): "coredns",
    ("tests/k8s/test_helm.py", "self.binary"): "helm",
    ("tests/test_programs.py", "program"): "*",  # this test's dpkg check of DEBIAN
    ("loadtests/bench_proxy.py", "command"): "*",  # Processes.start: callers' commands
    ("loadtests/bench_proxy.py", "fortio"): "fortio",
    ("loadtests/profile_proxy.py", "fortio"): "fortio",
    ("tests/proxy/h2spec.py", "path"): "h2spec",  # the binary make k8s-bins builds
    ("mesh/proxy/capture.py", "nft"): "nft",  # --nft, default nft
    ("tests/proxy/test_capture_agent.py", "argv"): "*",  # sh(): ip, nft, ip netns exec ...
}
# "*": a helper that starts what its callers give it; the callers' own starts are checked.

# On every machine of this kind before anything is installed (env: machines/polyglot.md).
MACHINE = {PYTHON, "bash", "go", "dpkg"}
VENV = {"simmesh", "locust"}  # make setup's virtualenv (pyproject.toml)
K8S_BINS = {"kube-apiserver", "etcd", "coredns", "helm", "fortio", "h2spec", "kubectl"}
SCRIPTS = {
    "docker": ("tools/kind/docker.sh", "docker.io"),
    "haproxy": ("Makefile", "haproxy"),  # make bench
    "valgrind": ("Makefile", "valgrind"),  # make profile
    "callgrind_control": ("Makefile", "valgrind"),
    "callgrind_annotate": ("Makefile", "valgrind"),
}
# built from the Go module proxy by a script of the project, which the tests' callers run
BUILT = {"kind": "tools/kind/kind.sh"}
FILES = {"runc-wrapper"}  # the project's own scripts (tools/kind/runc-wrapper)
DEBIAN = {
    "curl": "curl",
    "true": "coreutils",
    "ip": "iproute2",
    "iptables": "iptables",
    "nft": "nftables",
    "openssl": "openssl",
    "unshare": "util-linux",
    "nsenter": "util-linux",
}
# Programs the code works without: the test that shows it. A fallback does not excuse a
# missing install; it says what a user's machine without the program gets.
REAL = "tests/local/test_real.py::"
FALLBACKS = {
    "iptables": REAL + "test_without_iptables_unreachable_is_refused_on_both_sides",
    "ip": REAL + "test_without_ip_the_mesh_runs_on_the_loopback",
    "unshare": REAL + "test_without_ip_the_mesh_runs_on_the_loopback",
}


@dataclass(frozen=True)
class Start:
    path: str
    line: int
    expression: str
    program: str | None  # None: not resolved


def _files() -> Iterator[Path]:
    for directory in SOURCES:
        yield from sorted((ROOT / directory).rglob("*.py"))


def _program(node: ast.expr) -> str | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value:
        return Path(shlex.split(node.value)[0]).name
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):  # a directory / "name"
        return _program(node.right)
    text = ast.unparse(node)
    if text in ("sys.executable", "self.python", "python", "PYTHON"):
        return PYTHON
    return None


class _Collector(ast.NodeVisitor):
    """The starts in one module, resolving names through assignments in the enclosing
    function, then the module."""

    def __init__(self, path: str, tree: ast.Module) -> None:
        self.path = path
        self.scopes: list[dict[str, list[ast.expr]]] = [_assignments(tree.body)]
        self.starts: list[Start] = []

    def visit_FunctionDef(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        self.scopes.append(_assignments(node.body))
        self.generic_visit(node)
        self.scopes.pop()

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_Call(self, node: ast.Call) -> None:
        name = ast.unparse(node.func)
        if name in RUNNERS or name.startswith("os.exec"):
            argument = node.args[0] if node.args else None
            for keyword in node.keywords:
                if keyword.arg == "args":
                    argument = keyword.value
            if argument is not None:
                for expression in self._first(argument, depth=0):
                    if isinstance(expression, ast.Constant) and expression.value is None:
                        continue
                    self.starts.append(
                        Start(self.path, node.lineno, ast.unparse(expression), _program(expression))
                    )
        self.generic_visit(node)

    def _first(self, node: ast.expr, *, depth: int) -> list[ast.expr]:
        """The expressions the program's name may come from."""
        if depth > 4:
            return [node]
        if isinstance(node, ast.Starred):  # create_subprocess_exec(*command)
            return self._first(node.value, depth=depth + 1)
        if isinstance(node, ast.List | ast.Tuple) and node.elts:
            first = node.elts[0]
            if isinstance(first, ast.Starred):  # [*prefix, program, ...]: unshare runs program
                is_prefix = isinstance(first.value, ast.Name) and first.value.id == "prefix"
                rest = node.elts[1:2] if is_prefix else []
                return [*self._first(first.value, depth=depth + 1), *rest]
            return self._first(first, depth=depth + 1)
        if isinstance(node, ast.Name):
            for scope in reversed(self.scopes):  # the innermost scope that assigns the name
                if node.id in scope:
                    return [e for v in scope[node.id] for e in self._first(v, depth=depth + 1)]
        if isinstance(node, ast.BoolOp):
            return [e for v in node.values for e in self._first(v, depth=depth + 1)]
        if isinstance(node, ast.IfExp):
            return [e for v in (node.body, node.orelse) for e in self._first(v, depth=depth + 1)]
        if isinstance(node, ast.Call) and node.args:
            function = ast.unparse(node.func)
            if function == "shutil.which" or (function == "str" and len(node.args) == 1):
                return self._first(node.args[0], depth=depth + 1)
        return [node]


def _assignments(body: list[ast.stmt]) -> dict[str, list[ast.expr]]:
    """name -> the values assigned to it in ``body`` (nested functions and classes apart);
    a ``for`` over a literal tuple or list assigns each of its elements."""
    found: dict[str, list[ast.expr]] = {}
    todo: list[ast.AST] = list(body)
    while todo:
        node = todo.pop()
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef | ast.Lambda):
            continue
        todo.extend(ast.iter_child_nodes(node))
        values: list[ast.expr] = []
        target: ast.expr | None = None
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target, values = node.targets[0], [node.value]
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            target, values = node.target, [node.value]
        elif isinstance(node, ast.For) and isinstance(node.iter, ast.Tuple | ast.List):
            target, values = node.target, list(node.iter.elts)
        if isinstance(target, ast.Name):
            found.setdefault(target.id, []).extend(values)
    return found


def collect() -> list[Start]:
    starts = []
    for path in _files():
        collector = _Collector(str(path.relative_to(ROOT)), ast.parse(path.read_text()))
        collector.visit(ast.parse(path.read_text()))
        starts += collector.starts
    return starts


def programs() -> dict[str, list[str]]:
    """program -> where it is started ("path:line"); REVIEWED names the unresolved ones."""
    found: dict[str, list[str]] = {}
    for start in collect():
        program = start.program or REVIEWED.get((start.path, start.expression))
        if program is None:
            program = f"unresolved: {start.expression}"
        if program != "*":
            found.setdefault(program, []).append(f"{start.path}:{start.line}")
    return found


def ci_packages() -> set[str]:
    """The explicit Debian package list of .ci/run."""
    text = (ROOT / ".ci" / "run").read_text()
    match = re.search(r"^DEBIAN_PACKAGES=\(([^)]*)\)", text, re.MULTILINE)
    assert match, ".ci/run must name the Debian packages it installs in DEBIAN_PACKAGES=(...)"
    assert re.search(r'apt-get install [^\n]*"\$\{DEBIAN_PACKAGES\[@\]\}"', text)
    return set(match.group(1).split())


def _provider(program: str) -> str | None:
    if program in MACHINE or program in VENV or program in FILES:
        return "machine, virtualenv or repository"
    if program in K8S_BINS:
        return "make k8s-bins"
    if program in DEBIAN and DEBIAN[program] in ci_packages():
        return f"Debian package {DEBIAN[program]} (.ci/run)"
    if program in FALLBACKS:
        return f"a fallback, tested by {FALLBACKS[program]}"
    if program in BUILT and "go install" in (ROOT / BUILT[program]).read_text():
        return f"built by {BUILT[program]}"
    if program in SCRIPTS:
        script, package = SCRIPTS[program]
        installs = rf"apt-get install[^\n]*\b{re.escape(package)}\b"
        if re.search(installs, (ROOT / script).read_text()):
            return f"Debian package {package} ({script})"
    return None


def test_every_program_started_has_a_provider() -> None:
    found = programs()
    missing = {p: where for p, where in found.items() if _provider(p) is None}
    assert not missing, (
        "programs started without being installed by .ci/run (DEBIAN_PACKAGES), built by "
        f"make k8s-bins, or otherwise provided: {missing}"
    )


def test_the_collector_finds_what_it_must() -> None:
    """The resolver works: starts known to exist are found, through literals, variables,
    shutil.which and prefixes."""
    found = programs()
    assert "tests/local/test_real.py" in " ".join(found["curl"])
    assert any(w.startswith("mesh/local/run.py") for w in found["iptables"])
    assert any(w.startswith("mesh/local/launch.py") for w in found["iptables"])  # [*prefix, ..]
    assert any(w.startswith("mesh/local/procs.py") for w in found["unshare"])  # which()
    assert any(w.startswith("tests/proxy/test_routing.py") for w in found["openssl"])
    assert any(w.startswith("mesh/proxy/workers.py") for w in found[PYTHON])
    assert not [p for p in found if p.startswith("unresolved")], found


def test_reviewed_entries_are_still_in_the_code() -> None:
    expressions = {(s.path, s.expression) for s in collect()}
    stale = set(REVIEWED) - expressions
    assert not stale, f"REVIEWED names starts that are gone: {stale}"


def test_fallbacks_name_tests_that_exist() -> None:
    for program, test in FALLBACKS.items():
        path, name = test.split("::")
        assert re.search(rf"^def {name}\(", (ROOT / path).read_text(), re.MULTILINE), (
            program,
            test,
        )


def test_ci_installs_every_debian_package_by_name() -> None:
    assert set(DEBIAN.values()) <= ci_packages()


@pytest.mark.skipif(shutil.which("dpkg") is None, reason="needs dpkg (a Debian machine)")
@pytest.mark.parametrize("program", sorted(DEBIAN))
def test_the_package_ships_the_program(program: str) -> None:
    """dpkg agrees that the package named for a program ships it (when it is installed)."""
    path = shutil.which(program) or shutil.which(program, path="/usr/sbin:/sbin")
    if path is None:
        assert not os.environ.get("CI"), f"{program} is missing after .ci/run installed it"
        pytest.skip(f"{program} is not installed here")
    real = os.path.realpath(path)
    owners = set()
    for candidate in (real, real.removeprefix("/usr"), path):
        done = subprocess.run(["dpkg", "-S", candidate], capture_output=True, text=True)
        owners |= {line.split(":")[0] for line in done.stdout.splitlines()}
    assert DEBIAN[program] in owners, (program, real, owners)


def test_k8s_bins_builds_every_binary_it_is_named_for() -> None:
    script = (ROOT / "tools" / "k8s-bins.sh").read_text()
    names = set()
    for variable in ("ALL_NAMES", "NODE_NAMES"):
        match = re.search(rf"^{variable}=\(([^)]*)\)", script, re.MULTILINE)
        assert match, variable
        names |= set(match.group(1).split())
    assert names >= K8S_BINS, K8S_BINS - names
