"""Long commands show a progress bar on a terminal and stay quiet when piped."""

from __future__ import annotations

import os
import pty
import subprocess
import sys
from pathlib import Path

import pytest

from statekit import Store

ROOT = Path(__file__).resolve().parent.parent
LEGACY = ROOT / "data" / "legacy"


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> str:
    store = Store.init(tmp_path_factory.mktemp("progress") / "store")
    for i in range(40):
        store.create("show", f"e{i:02}")
    return store.root


def run(root: str, args: list[str], *, terminal: bool) -> tuple[int, str, bytes]:
    """The command's exit code, stdout, and what it wrote to stderr (a pty when ``terminal``)."""
    argv = [sys.executable, "-m", "statekit.cli", "--root", root, *args]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "100", "TERM": "xterm"}
    if not terminal:
        done = subprocess.run(argv, capture_output=True, env=env, timeout=120)
        return done.returncode, done.stdout.decode(), done.stderr
    main, child = pty.openpty()
    try:
        done = subprocess.run(argv, stdout=subprocess.PIPE, stderr=child, env=env, timeout=120)
    finally:
        os.close(child)
    seen = b""
    try:
        while chunk := os.read(main, 65536):
            seen += chunk
    except OSError:  # the pty's other end is closed: all read
        pass
    os.close(main)
    return done.returncode, done.stdout.decode(), seen


COMMANDS = [
    (["rebuild-index"], "rebuilding"),
    (["sync"], "syncing"),
    (["verify"], "verifying"),
    (["migrate", "--dry-run"], "migrating"),
    (["import", str(LEGACY), "--show", "legacy"], "importing"),
    (["repair", "--dry-run"], "repairing"),
]


@pytest.mark.parametrize(("args", "label"), COMMANDS, ids=[c[0][0] for c in COMMANDS])
def test_a_bar_on_a_terminal_and_nothing_when_piped(root: str, args: list[str], label: str) -> None:
    code, out, err = run(root, args, terminal=True)
    assert code in (0, 1), out
    assert label.encode() in err and "━".encode() in err, err[:300]
    assert label not in out  # the bar goes to stderr; the results stay clean on stdout
    code, out, err = run(root, args, terminal=False)
    assert code in (0, 1), out
    assert label.encode() not in err and "━".encode() not in err and b"\x1b[" not in err


def test_the_api_reports_progress_to_a_callback(tmp_path: Path) -> None:
    store = Store.init(tmp_path / "store")
    for i in range(5):
        store.create("show", f"e{i}")
    for call in (store.rebuild_index, store.sync, store.verify, lambda p: store.migrate(progress=p),
                 lambda p: store.import_legacy(LEGACY, "legacy", progress=p)):
        seen: list[tuple[int, int]] = []
        call(lambda done, total, seen=seen: seen.append((done, total)))  # type: ignore[misc]
        assert seen, call
        assert all(0 <= d <= t for d, t in seen) and seen == sorted(seen, key=lambda s: s[0] / max(s[1], 1))
