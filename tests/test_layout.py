"""The package's layout: no import cycle between its modules, counting every import.

Imports inside functions and under ``TYPE_CHECKING`` count too: a cycle there
still means two modules that cannot be read, tested or changed one without
the other.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "cmlm_cli"


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """The package modules that ``path`` imports anywhere in its body."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            # `from cmlm_cli import plots` imports the module plots.
            names = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
        else:
            continue
        for name in names:
            parts = name.split(".")
            if parts[0] == "cmlm_cli" and len(parts) > 1 and parts[1] in modules:
                found.add(parts[1])
    return found - {path.stem}


def import_graph() -> dict[str, set[str]]:
    files = {p.stem: p for p in PACKAGE.glob("*.py") if p.stem not in ("__init__", "__main__")}
    return {name: imports_of(path, set(files)) for name, path in files.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A cycle of the graph as a list of nodes (first = last), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for other in sorted(graph[node]):
            if state.get(other) == 1:
                return [*stack[stack.index(other) :], other]
            if other not in state and (cycle := visit(other)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_the_graph_sees_every_kind_of_import(tmp_path):
    (tmp_path / "m.py").write_text(
        "from typing import TYPE_CHECKING\n"
        "from cmlm_cli import a\n"
        "import cmlm_cli.b\n"
        "from cmlm_cli.c import thing\n"
        "if TYPE_CHECKING:\n    from cmlm_cli.d import T\n"
        "def f():\n    from cmlm_cli import e\n"
    )
    assert imports_of(tmp_path / "m.py", set("abcdef")) == set("abcde")


def test_no_import_cycle_between_the_package_modules():
    graph = import_graph()
    assert {"pipeline", "inputs", "options", "scan", "association", "model_io"} <= set(graph)
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph) or [])


def test_benchmark_and_validation_scripts_import():
    """bench/ and validate/ are scripts outside the package: renames must not break them."""
    code = (
        "import runpy, sys\n"
        "sys.path[:0] = ['bench', 'validate']\n"
        "for path in ['bench/run.py', 'bench/shared.py', 'bench/load.py', 'bench/threads.py',"
        " 'validate/run.py']:\n"
        "    runpy.run_path(path, run_name='imported')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
