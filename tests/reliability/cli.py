"""Running the real ``statekit`` command and judging its output, for the
corpus and security tests."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

STATEKIT = str(Path(sys.executable).with_name("statekit"))


@dataclass
class Cli:
    args: tuple[str, ...]
    code: int
    out: str
    err: str


def statekit(root: Path, *args: str, cwd: Path | None = None) -> Cli:
    env = {k: v for k, v in os.environ.items() if k != "STATEKIT_ROOT"}
    done = subprocess.run([STATEKIT, "--root", str(root), *args], check=False, capture_output=True, text=True, env=env,
                          timeout=120, errors="replace", cwd=cwd)
    return Cli(args, done.returncode, done.stdout, done.stderr)


def cli_problems(result: Cli, allowed: tuple[int, ...] = (0, 1, 2), *, only_statekit_lines: bool = True) -> list[str]:
    """What is wrong with one CLI run: no traceback ever, a documented exit
    code, and a user error (exit 2) on exactly one stderr line.
    ``only_statekit_lines``: every other stderr line is statekit's log too
    (off for commands that report per file on stderr, like ``import``)."""
    found = []
    # a line that starts a Python traceback (an episode's own error history, which ``show`` prints,
    # holds a worker's traceback as text, inside a JSON value: not one)
    if any(line.startswith("Traceback (most recent call last):")
           for line in (result.out + "\n" + result.err).splitlines()):
        found.append("a traceback")
    if result.code not in allowed:
        found.append(f"exit {result.code}, expected one of {allowed}: {result.err.strip()[:300]}")
    lines = result.err.splitlines()
    if result.code == 2 and (len(lines) != 1 or not lines[0].startswith("statekit: error: ")):
        found.append(f"a user error must be one stderr line, got {lines[:3]}")
    if only_statekit_lines and result.code != 2 and any(not line.startswith("statekit") for line in lines):
        found.append(f"stray stderr output: {lines[:3]}")
    return [f"statekit {' '.join(result.args)}: {p}" for p in found]
