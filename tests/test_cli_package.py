"""The CLI package: a thin skin. Its modules use statekit's public API only,
and every command of the one-file CLI still exists with the same help text,
byte for byte (tests/golden/cli_help.json was captured from the old
statekit/cli.py before it became a package)."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

import statekit
from statekit.cli import main

GOLDEN = Path(__file__).resolve().parent / "golden" / "cli_help.json"
PACKAGE = Path(statekit.__file__).resolve().parent
# the CLI's modules, and the Store compositions it calls (each a Store method to be)
MODULES = sorted(PACKAGE.joinpath("cli").glob("*.py")) + [PACKAGE / "operations.py"]


def private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def private_uses(source: str) -> list[str]:
    """Where the module names another module's private name: importing one,
    or reading an attribute with a leading underscore of anything but self."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom):
            modules = [node.module or ""]
            found += [f"line {node.lineno}: from {'.' * node.level}{node.module or ''} import {a.name}"
                      for a in node.names if private(a.name)]
        elif isinstance(node, ast.Import):
            modules = [a.name for a in node.names]
        else:
            modules = []
        found += [f"line {node.lineno}: import of private module {m}" for m in modules if any(map(private, m.split(".")))]
        own = isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "self"
        if isinstance(node, ast.Attribute) and private(node.attr) and not own:
            found.append(f"line {node.lineno}: {ast.unparse(node)}")
    return found


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.name)
def test_a_cli_module_uses_only_public_names(path: Path) -> None:
    assert private_uses(path.read_text(encoding="utf-8")) == []


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.name)
def test_a_cli_module_stays_small(path: Path) -> None:
    assert len(path.read_text(encoding="utf-8").splitlines()) <= 500


def test_the_private_name_check_finds_them() -> None:
    source = ("from statekit.store import _hidden\nfrom . import _x\nimport statekit._migrations\n"
              "store._index.close()\nself._store = None\nx.__class__\n")
    assert len(private_uses(source)) == 4


def command_paths(group: click.Group, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every command and group below GROUP, as argument paths ('asset', 'add')."""
    found: list[tuple[str, ...]] = []
    for name in sorted(group.commands):
        command = group.commands[name]
        found.append((*prefix, name))
        if isinstance(command, click.Group):
            found.extend(command_paths(command, (*prefix, name)))
    return found


def help_texts() -> dict[str, str]:
    """'statekit X --help' of every command, at a fixed width."""
    texts: dict[str, str] = {}
    for path in [(), *command_paths(main)]:
        result = CliRunner().invoke(main, [*path, "--help"], prog_name="statekit", terminal_width=80,
                                    catch_exceptions=False)
        assert result.exit_code == 0, (path, result.output)
        texts[" ".join(("statekit", *path))] = result.output
    return texts


def test_every_command_keeps_its_help_text() -> None:
    golden = json.loads(GOLDEN.read_text(encoding="utf-8"))
    now = help_texts()
    assert sorted(now) == sorted(golden)
    for command, text in golden.items():
        assert now[command] == text, command


if __name__ == "__main__":  # pragma: no cover - rewrites the golden file (only before a deliberate help change)
    GOLDEN.write_text(json.dumps(help_texts(), indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
