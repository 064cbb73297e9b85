"""The package's shape: imports flow one way (no module imports one that imports it back), as
docs/layout.md draws them, and the commands that train nothing start without torch; the tests share
code through tests/helpers only."""

import ast
import re
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


def doc_name(module: str) -> str:
    """A module as docs/layout.md writes it: harness.tracking.ui is tracking/ui."""
    return module.removeprefix("harness.").replace(".", "/")


def test_the_import_orders_leaves_are_imported_as_the_page_says():
    """docs/layout.md's leaves line, `A <- B, C`: one module on the left is imported by exactly the
    modules on the right; one module on the right imports exactly those on the left, a package
    (tracking) standing for its modules."""
    page = (REPO / "docs" / "layout.md").read_text()
    (leaves,) = re.findall(r"^\s*leaves: (.*)$", page, flags=re.M)
    graph = {doc_name(module): {doc_name(m) for m in imported} for module, imported in imports().items()}

    def as_named(module: str, names: set[str]) -> str:
        return next((name for name in names if module == name or module.startswith(f"{name}/")), module)

    clauses = [
        [{name.strip() for name in side.split(",")} for side in clause.split(" <- ")] for clause in leaves.split(";")
    ]
    bad = []
    for imported, importers in clauses:
        if len(imported) == 1:
            actual = {importer for importer, modules in graph.items() if imported <= modules}
            if actual != importers:
                bad.append(f"{', '.join(imported)} <- {', '.join(sorted(actual))} in the code")
        elif len(importers) == 1:
            (importer,) = importers
            actual = {as_named(module, imported) for module in graph[importer]}
            if actual != imported:
                bad.append(f"{', '.join(sorted(actual))} <- {importer} in the code")
        else:
            bad.append(f"{', '.join(imported)} <- {', '.join(importers)}: one module on either side, to be checked")
    assert len(clauses) >= 3 and not bad, "docs/layout.md, Import order:\n" + "\n".join(bad)


# Where the process may end: a command's own exit (`python -m harness.run`'s cli, its one `end`,
# the `__main__` guard of the others), and a job whose sweep is gone: its watchdog interrupts the
# main thread and ends the process only if that did not stop it; harness.run's task ends it at once.
EXITS = {("harness.run", "cli"), ("harness.run", "end"), ("harness.run", "main"), ("harness.launchers", "_watch")}


def exits(tree: ast.AST, function: str | None = None, guarded: bool = False):
    """(the function, whether under `if __name__ == ...`) of each sys.exit, os._exit and raise SystemExit."""
    for node in ast.iter_child_nodes(tree):
        inner, guard = function, guarded
        if isinstance(node, ast.FunctionDef):
            inner = node.name
        if isinstance(node, ast.If) and "__name__" in ast.unparse(node.test):
            guard = True
        call = isinstance(node, ast.Call) and ast.unparse(node.func) in ("sys.exit", "os._exit", "exit", "quit")
        if call or isinstance(node, ast.Raise) and node.exc is not None and "SystemExit" in ast.unparse(node.exc):
            yield inner, guard
        yield from exits(node, inner, guard)


def test_only_a_commands_main_ends_the_process():
    """Anything else raises a HarnessError (its one paragraph and exit code), which the command's
    main alone says and exits on (issue 46)."""
    found = {
        (module_name(path), function)
        for path in PACKAGE.rglob("*.py")
        for function, guarded in exits(ast.parse(path.read_text()))
        if not guarded
    }
    assert found == EXITS
