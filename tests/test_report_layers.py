"""The report package keeps computing apart from rendering, read from the
source: every import, at any depth (in functions and ``TYPE_CHECKING``
blocks too), resolved to the module it names."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import statekit.report

PACKAGE = Path(statekit.report.__file__).parent
RENDERERS = ("text_format", "csv_format", "html_format", "charts", "display", "rendering")
"""From a ``Report`` to text: no index, no store, no database, no computing."""
FORBIDDEN_TO_RENDERERS = ("statekit.store", "statekit.index", "sqlalchemy", "statekit.report.compute",
                          "statekit.report.writing")


def imports(name: str) -> set[str]:
    """The modules ``statekit.report.<name>`` imports; ``from X import y`` gives
    both X and X.y (y may be a module)."""
    tree = ast.parse((PACKAGE / f"{name}.py").read_text(encoding="utf-8"))
    here = ["statekit", "report"]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = here[: len(here) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return found


def within(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def test_the_package_is_what_this_test_knows() -> None:
    """A new module gets a place in these rules."""
    assert {p.stem for p in PACKAGE.glob("*.py")} == {"__init__", "model", "compute", "writing", *RENDERERS}


def test_imports_resolve() -> None:
    assert {"statekit.index", "statekit.index.tables", "sqlalchemy", "statekit.report.model"} <= imports("compute")
    assert "statekit.files" in imports("writing")


def test_compute_imports_no_renderer() -> None:
    renderers = tuple(f"statekit.report.{r}" for r in RENDERERS)
    assert not {m for m in imports("compute") if within(m, renderers)}


@pytest.mark.parametrize("name", RENDERERS)
def test_renderers_touch_no_index_store_or_database(name: str) -> None:
    assert not {m for m in imports(name) if within(m, FORBIDDEN_TO_RENDERERS)}


def test_the_model_imports_nothing_of_the_package_or_the_index() -> None:
    assert not {m for m in imports("model")
                if within(m, ("statekit.report", "statekit.store", "statekit.index", "sqlalchemy"))}
