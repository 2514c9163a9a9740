"""Packaging hygiene: every third-party package the code imports is declared in
pyproject.toml, in the dependencies or in the extra of the part that imports it, and the node
proxy and the controller run without the simulator's or the load tests' packages."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
OWN = {"mesh", "sim", "tests", "loadtests", "fuzz", "tools"}
# Which extras may supply the imports of a part of the tree (besides the dependencies).
EXTRAS_OF = {
    "sim/": ("sim",),
    "loadtests/": ("load", "sim"),  # load tests, and the simulator's benchmark
    "mesh/local/": ("sim", "load"),  # simmesh up/verify: the simulator and Locust
    "mesh/proxy/tracing.py": ("tracing",),
}


def _name(requirement: str) -> str:
    """The normalised distribution name of a requirement (PEP 503)."""
    bare = re.split(r"[<>=!~\[; ]", requirement, maxsplit=1)[0]
    return re.sub(r"[-_.]+", "-", bare).lower()


def _declared(extras: tuple[str, ...]) -> set[str]:
    names = {_name(r) for r in PROJECT["dependencies"]}
    for extra in extras:
        names |= {_name(r) for r in PROJECT["optional-dependencies"][extra]}
    return names


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module.split(".")[0])
    return found - OWN - set(sys.stdlib_module_names) - {"__future__"}


def test_every_imported_package_is_declared() -> None:
    distributions = importlib.metadata.packages_distributions()
    missing = []
    for folder in ("mesh", "sim", "loadtests"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            relative = path.relative_to(ROOT).as_posix()
            extras = next((e for p, e in EXTRAS_OF.items() if relative.startswith(p)), ())
            declared = _declared(extras)
            for module in sorted(_imports(path)):
                names = {_name(d) for d in distributions.get(module, [module])}
                if not names & declared:
                    missing.append(f"{relative}: {module} ({', '.join(sorted(names))})")
    assert not missing, "imported but not declared in pyproject.toml:\n" + "\n".join(missing)


def test_the_proxy_and_the_controller_need_no_extra() -> None:
    code = (
        "import sys, mesh.proxy.app, mesh.proxy.workers, mesh.controller.main, mesh.cli\n"
        "print(sorted(m for m in ('simpy', 'numpy', 'matplotlib', 'locust') if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"
