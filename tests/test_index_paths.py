"""A store's index is ROOT/.statekit/index.db whatever its folders are called
(issue 12, item 2): no character of a path is read as URL or URI syntax."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from statekit import Store
from statekit.cli import main
from statekit.index.dialect import database_path

REPO = Path(__file__).resolve().parent.parent

ODD_NAMES = [
    "what?", "hash#tag", "pct%41", "pct%", "pct%zz", "with space", "semi;colon", "amp&and", "eq=ual",
    "ünïcødé ☃ 日本", "-leading", "new\nline", "file:uri", "q?mode=ro&uri=true#x", "a?b#c%41 ;&=",
]


def outside(base: Path, root: Path) -> set[str]:
    """Every path under ``base`` that is not inside ``root``."""
    found = set()
    for folder, dirs, names in os.walk(base):
        for name in dirs + names:
            path = os.path.join(folder, name)
            if path != str(root) and not path.startswith(str(root) + os.sep):
                found.add(path)
    return found


def indexed_episodes(root: Path) -> int:
    """Episodes in ROOT/.statekit/index.db, opened by its plain path."""
    conn = sqlite3.connect(root / ".statekit" / "index.db")
    try:
        return conn.execute("SELECT COUNT(*) FROM episodes").fetchone()[0]
    finally:
        conn.close()


@pytest.mark.parametrize("name", ODD_NAMES)
def test_the_api_keeps_the_index_inside_a_store_under_any_folder_name(tmp_path: Path, name: str) -> None:
    (tmp_path / name).mkdir()
    root = tmp_path / name / "store"
    before = outside(tmp_path, root)
    store = Store.init(root)
    store.create("s", "e1")
    store.create("s", "e2")
    store.advance("s", "e1", "downloading")
    assert database_path(store.index.engine) == str(root / ".statekit" / "index.db")
    assert store.sql("SELECT COUNT(*) FROM episodes")[1] == [(2,)]
    assert store.rebuild_index().episodes == 2
    assert store.verify().clean
    store.close()
    reopened = Store.open(root)
    assert reopened.sql("SELECT stage FROM episodes WHERE episode_id = 'e1'")[1] == [("downloading",)]
    reopened.close()
    assert indexed_episodes(root) == 2
    assert outside(tmp_path, root) == before


@pytest.mark.parametrize("name", ODD_NAMES)
def test_every_command_works_in_a_store_under_any_folder_name(tmp_path: Path, name: str) -> None:
    (tmp_path / name).mkdir()
    root = tmp_path / name / "store"
    before = outside(tmp_path, root)
    for argv in (["init", str(root)], ["--root", str(root), "create", "s/e1"],
                 ["--root", str(root), "advance", "s/e1", "downloading"],
                 ["--root", str(root), "sql", "SELECT episode_id, stage FROM episodes", "--csv"],
                 ["--root", str(root), "rebuild-index"], ["--root", str(root), "verify"]):
        result = CliRunner().invoke(main, argv)
        assert result.exit_code == 0, (argv, result.output)
    assert CliRunner().invoke(main, ["--root", str(root), "sql", "SELECT stage FROM episodes", "--csv"]).output \
        == "stage\ndownloading\n"
    assert indexed_episodes(root) == 1
    assert outside(tmp_path, root) == before


def test_the_command_line_in_its_own_processes_under_an_odd_folder(tmp_path: Path) -> None:
    exe = Path(sys.executable).with_name("statekit")
    parent = tmp_path / "a?b#c%41 %;&=ü\n-x"
    parent.mkdir()
    root = parent / "store"
    before = outside(tmp_path, root)
    for argv in (["init", str(root)], ["--root", str(root), "create", "s/e1"],
                 ["--root", str(root), "advance", "s/e1", "downloading"],
                 ["--root", str(root), "sql", "SELECT COUNT(*) AS n FROM episodes", "--csv"],
                 ["--root", str(root), "rebuild-index"], ["--root", str(root), "verify"]):
        result = subprocess.run([str(exe), *argv], capture_output=True, text=True)
        assert result.returncode == 0, (argv, result.stdout, result.stderr)
    assert indexed_episodes(root) == 1
    assert outside(tmp_path, root) == before


def test_a_folder_name_that_is_not_utf8(tmp_path: Path) -> None:
    parent = tmp_path / os.fsdecode(b"not-utf8-\xff\xfe?#%41")
    try:
        parent.mkdir()
    except (OSError, UnicodeEncodeError):
        pytest.skip("this file system takes UTF-8 names only")
    root = parent / "store"
    before = outside(tmp_path, root)
    store = Store.init(root)
    store.create("s", "e")
    assert store.sql("SELECT COUNT(*) FROM episodes")[1] == [(1,)]
    assert store.rebuild_index().episodes == 1 and store.verify().clean
    store.close()
    assert indexed_episodes(root) == 1
    assert outside(tmp_path, root) == before


def test_two_stores_whose_folders_differ_after_a_question_mark_keep_their_own_index(tmp_path: Path) -> None:
    # before the fix both indexes were tmp_path/"x": "?a/store/..." was read as a URL's query string
    (tmp_path / "x?a").mkdir()
    (tmp_path / "x?b").mkdir()
    first = Store.init(tmp_path / "x?a" / "store")
    second = Store.init(tmp_path / "x?b" / "store")
    first.create("s", "one")
    first.create("s", "two")
    second.create("s", "three")
    assert second.rebuild_index().episodes == 1  # a rebuild of one does not touch the other
    assert sorted(r[0] for r in first.sql("SELECT episode_id FROM episodes")[1]) == ["one", "two"]
    assert second.sql("SELECT episode_id FROM episodes")[1] == [("three",)]
    assert first.verify().clean and second.verify().clean
    first.close()
    second.close()
    assert indexed_episodes(tmp_path / "x?a" / "store") == 2
    assert indexed_episodes(tmp_path / "x?b" / "store") == 1
    assert sorted(os.listdir(tmp_path)) == ["x?a", "x?b"]


def test_alembic_upgrades_the_index_of_a_store_under_an_odd_folder(tmp_path: Path) -> None:
    (tmp_path / "a?b#%41").mkdir()
    root = tmp_path / "a?b#%41" / "store"
    store = Store.init(root)
    store.create("s", "e")
    store.close()
    for suffix in ("", "-wal", "-shm"):
        Path(f"{root}/.statekit/index.db{suffix}").unlink(missing_ok=True)
    alembic = Path(sys.executable).with_name("alembic")
    result = subprocess.run([str(alembic), "-x", f"root={root}", "upgrade", "head"], cwd=REPO,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert (root / ".statekit" / "index.db").exists()
    assert sorted(os.listdir(tmp_path)) == ["a?b#%41"]
    assert Store.open(root).counts()["discovered"] == 1
