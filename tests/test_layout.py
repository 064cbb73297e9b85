"""The package's shape: imports flow one way (no module imports one that imports it back), and
the commands that train nothing start without torch; the tests share code through tests/helpers only."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import REPO

PACKAGE = REPO / "harness"


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports() -> dict[str, set[str]]:
    """Every harness module and the harness modules it imports anywhere in its file (a lazy
    import inside a function counts: it is how a circle hides)."""
    modules = {module_name(path): path for path in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("harness"):
                found |= {
                    f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module
                    for a in node.names
                }
            elif isinstance(node, ast.Import):
                found |= {a.name for a in node.names if a.name.startswith("harness")}
        graph[name] = {m for m in found if m in modules and m != name}
    return graph


def test_imports_flow_one_way():
    graph, done, path = imports(), set(), []

    def visit(module: str) -> None:
        if module in path:
            pytest.fail("import circle: " + " -> ".join(path[path.index(module) :] + [module]))
        if module in done:
            return
        path.append(module)
        for imported in sorted(graph[module]):
            # A package's __init__ runs before its submodules: `harness.x.y` also imports `harness.x`.
            visit(imported)
        path.pop()
        done.add(module)

    for module in sorted(graph):
        visit(module)


@pytest.mark.parametrize("module", ["harness.server", "harness.plot", "harness.archive"])
def test_commands_that_train_nothing_start_without_torch(module):
    code = (
        f"import runpy, sys; sys.argv = ['{module}', '--help']\n"
        f"try:\n    runpy.run_module('{module}', run_name='__main__')\nexcept SystemExit:\n    pass\n"
        "print('torch' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "False"


def test_test_modules_share_code_through_helpers_only():
    """A test module imported as a library brings its fixtures and tests into the importer's namespace
    and ties two files together; conftest.py is pytest's to load. Shared code lives in tests/helpers."""
    tests = REPO / "tests"
    modules = {path.stem for path in tests.glob("*.py")}
    bad = []
    for path in sorted(tests.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            bad += [f"{path.relative_to(REPO)}:{node.lineno}: {n}" for n in names if n.split(".")[0] in modules]
    assert not bad, "import these from tests/helpers instead:\n" + "\n".join(bad)
