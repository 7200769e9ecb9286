"""The import graph between Safelight's top-level packages: no cycles, and no edge against the flow.

Data flows api -> store -> worker -> backend -> storage -> delivery; a lower layer never imports
a higher one, a worker process never loads `api/`, and the SDK (`client/`) shares only the
standard-library vocabulary modules with the server. docs/architecture.md explains the layers.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "safelight"

# A package may import packages of a lower rank (and its own), never a higher one.
RANK = {
    # Vocabulary and small tools: the standard library (and pydantic / stamina) only.
    "kie": 0, "validation": 0, "retrying": 0, "ttl_cache": 0, "metrics": 0, "logs": 0, "tracing": 0,
    "__init__": 0,
    "config": 1, "net": 1, "catalog": 1,
    "storage": 2, "store": 2,
    "backends": 3,
    "routing": 4, "delivery": 4,
    "worker": 5, "admission": 5,
    "runtime": 6,
    "api": 7,
    "cli": 8,
}
# The SDK installs without the server: it may import only these.
CLIENT_MAY_IMPORT = {"client", "kie", "retrying", "__init__"}


def top_level(module: str) -> str | None:
    """The top-level package of a dotted name; `safelight.__version__` and the like belong to `__init__`."""
    parts = module.split(".")
    if parts[0] != "safelight":
        return None
    if len(parts) == 1 or not ((SRC / parts[1]).is_dir() or (SRC / f"{parts[1]}.py").is_file()):
        return "__init__"
    return parts[1]


def package_of(path: Path) -> str:
    relative = path.relative_to(SRC)
    return relative.parts[0].removesuffix(".py") if len(relative.parts) > 1 or relative.suffix else "__init__"


def imports_of(path: Path) -> set[str]:
    """Top-level safelight packages this file imports, at module level or inside functions."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    own = package_of(path)
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: within the same package, unless it climbs out of it
                if node.level == 1 or own in ("__init__",):
                    continue
                names = [f"safelight.{node.module}"] if node.module else []
            else:
                names = [node.module or ""]
                names += [f"{node.module}.{alias.name}" for alias in node.names if node.module == "safelight"]
        for name in names:
            package = top_level(name)
            if package and package != own:
                found.add(package)
    return found


def graph() -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {}
    for path in SRC.rglob("*.py"):
        if "migrations" in path.parts:
            continue
        edges.setdefault(package_of(path), set()).update(imports_of(path))
    return edges


def test_every_package_has_a_rank():
    assert set(graph()) - set(RANK) - {"client"} == set()


def test_no_package_imports_a_higher_layer():
    wrong = [f"{source} -> {target}" for source, targets in graph().items() if source != "client"
             for target in targets if target != "client" and RANK[target] > RANK[source]]
    assert wrong == []


def test_the_sdk_imports_nothing_of_the_server():
    assert graph().get("client", set()) - CLIENT_MAY_IMPORT == set()


def test_the_server_does_not_depend_on_the_sdk():
    # The CLI's client commands are the SDK's one user inside the package.
    assert [source for source, targets in graph().items() if "client" in targets and source != "cli"] == []


def test_no_import_cycles_between_packages():
    edges = graph()
    seen: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        seen[node] = 1
        stack.append(node)
        for target in sorted(edges.get(node, ())):
            if seen.get(target) == 1:
                pytest.fail("import cycle: " + " -> ".join([*stack[stack.index(target):], target]))
            if target not in seen:
                visit(target)
        stack.pop()
        seen[node] = 2

    for node in sorted(edges):
        if node not in seen:
            visit(node)


def test_a_worker_process_does_not_load_the_http_stack():
    import subprocess
    import sys

    code = ("import sys, safelight.runtime, safelight.cli;"
            "bad = sorted(m for m in sys.modules if m.startswith(('safelight.api', 'fastapi')));"
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)
