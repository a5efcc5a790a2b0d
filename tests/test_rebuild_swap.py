"""Putting a rebuilt SQLite index in place (``dialect.replace_database``): copied into
an index in use, renamed in (after one fsync) where there is none or it is damaged."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest

from statekit.index import dialect


def built_db(path: Path, value: str) -> str:
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE t (v TEXT)")
    db.execute("INSERT INTO t VALUES (?)", (value,))
    db.commit()
    db.close()
    return str(path)


def content(path: Path) -> list[str]:
    db = sqlite3.connect(path)
    try:
        return [v for (v,) in db.execute("SELECT v FROM t")]
    finally:
        db.close()


@pytest.fixture
def fsynced(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The files ``replace_database`` fsyncs, by path."""
    synced: list[str] = []
    real = os.fsync

    def spy(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real(fd)

    monkeypatch.setattr(dialect.os, "fsync", spy)
    return synced


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc")
def test_a_missing_index_is_replaced_by_the_build_synced_first(tmp_path: Path, fsynced: list[str]) -> None:
    target = tmp_path / "index.db"
    built = built_db(tmp_path / "index.db.build-1", "new")
    dialect.replace_database(str(target), built)
    assert content(target) == ["new"] and not os.path.exists(built)
    assert fsynced == [os.path.realpath(built)]  # durable before the rename: it was written without syncing


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc")
def test_an_index_in_use_gets_the_builds_content_by_copy_and_readers_keep_their_file(
        tmp_path: Path, fsynced: list[str]) -> None:
    target = tmp_path / "index.db"
    built_db(target, "old")
    reader = sqlite3.connect(target)
    reader.execute("PRAGMA journal_mode = WAL")
    inode = os.stat(target).st_ino
    built = built_db(tmp_path / "index.db.build-1", "new")
    dialect.replace_database(str(target), built)
    assert [v for (v,) in reader.execute("SELECT v FROM t")] == ["new"]  # the same file, its content replaced
    reader.close()
    assert os.stat(target).st_ino == inode and content(target) == ["new"] and not os.path.exists(built)
    assert fsynced == []  # the build is thrown away: the copy's commit is the index's own


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc")
def test_a_damaged_index_is_replaced_by_the_build_synced_first(tmp_path: Path, fsynced: list[str]) -> None:
    target = tmp_path / "index.db"
    target.write_bytes(b"not a database" * 1000)
    built = built_db(tmp_path / "index.db.build-1", "new")
    dialect.replace_database(str(target), built)
    assert content(target) == ["new"] and fsynced == [os.path.realpath(built)]
