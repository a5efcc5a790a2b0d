"""The house rules (docs/ARCHITECTURE.md), checked on the source itself.

- the layers in pyproject.toml's ``[tool.importlinter]`` hold (import-linter);
- no import cycle inside ``statekit/`` (function-local imports count; imports for type hints alone do not);
- no module reaches another module's private names;
- no module is longer than 800 lines.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import grimp

PACKAGE = Path(__file__).resolve().parent.parent / "statekit"
MAX_LINES = 800
LAZY_ROOT = ("statekit", "statekit.store")  # statekit.__getattr__ hands out Store on first use
STDLIB_PRIVATE = {"_exit", "_replace", "_asdict", "_fields", "_getframe", "_field_defaults", "_make",
                  "_current_frames", "_thread"}


def modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "_migrations" not in p.parts)


def module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def test_the_layers_hold() -> None:
    # in a process of its own: lint_imports() configures logging, which disables statekit's logger
    # for every later test in this process (their caplog assertions then see nothing)
    checked = subprocess.run([sys.executable, "-c", "import sys; from importlinter.cli import lint_imports; "
                              "sys.exit(lint_imports(no_cache=True))"], cwd=PACKAGE.parent, capture_output=True,
                             text=True, timeout=300)
    assert checked.returncode == 0, "an import breaks the layers:\n" + checked.stdout[-3000:]


def test_no_import_cycles() -> None:
    graph = grimp.build_graph("statekit", include_external_packages=False, exclude_type_checking_imports=True)
    names = {m for m in graph.modules if not m.startswith("statekit._migrations")}
    edges = {m: {d for d in graph.find_modules_directly_imported_by(m) if d in names and (m, d) != LAZY_ROOT}
             for m in names}
    # Tarjan's strongly connected components: a component of more than one module is a cycle
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[set[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(component)

    for v in sorted(names):
        if v not in index:
            visit(v)
    assert cycles == [], f"import cycles: {cycles}"


def _defined_private_names(tree: ast.Module) -> set[str]:
    """Private names this module defines: functions, classes, attributes it assigns (``self._x = ...``)."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.name.startswith("_"):
            found.add(node.name)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store) and node.attr.startswith("_"):
            found.add(node.attr)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store) and node.id.startswith("_"):
            found.add(node.id)
        elif isinstance(node, (ast.AnnAssign,)) and isinstance(node.target, ast.Name):
            found.add(node.target.id)
    # __slots__ names
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "__slots__" for t in node.targets):
            for elt in getattr(node.value, "elts", []):
                if isinstance(elt, ast.Constant) and isinstance(elt.value, str):
                    found.add(elt.value)
    return found


def private_reaches(path: Path) -> list[str]:
    """Where ``path`` uses a private name of another module."""
    tree = ast.parse(path.read_text(), str(path))
    own = _defined_private_names(tree)
    bad = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("statekit")):
            for alias in node.names:
                if alias.name.startswith("_") and not alias.name.startswith("__"):
                    bad.append(f"{path.name}:{node.lineno}: imports {alias.name}")
        elif isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
            if node.attr in own or node.attr in STDLIB_PRIVATE:
                continue
            if isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"):
                continue
            bad.append(f"{path.name}:{node.lineno}: uses .{node.attr}")
    return bad


def test_no_module_reaches_another_modules_private_names() -> None:
    found = [line for path in modules() for line in private_reaches(path)]
    assert found == [], "\n".join(found)


def test_the_check_catches_a_private_reach(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text("from .store import _helper\n\ndef f(store):\n    return store._write('s', 'e')\n")
    assert len(private_reaches(sample)) == 2


def test_no_module_is_longer_than_800_lines() -> None:
    long = {module_name(p): n for p in modules() if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert long == {}, f"split these modules (at most {MAX_LINES} lines each): {long}"
