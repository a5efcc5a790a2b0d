"""The CLI package: every command of the one-file CLI still exists with the
same help text, byte for byte (tests/golden/cli_help.json was captured from
the old statekit/cli.py before it became a package)."""

from __future__ import annotations

import json
from pathlib import Path

import click
from click.testing import CliRunner

from statekit.cli import main

GOLDEN = Path(__file__).resolve().parent / "golden" / "cli_help.json"


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
