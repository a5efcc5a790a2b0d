"""The write path's fast forms give what the plain ones gave.

The index written after each commit (one UPDATE picked from the row in C, one
statement for both stages' totals, None bound without the adaptation protocol)
holds what a rebuild derives from the files; the spare backup reused as the
temp file is cut to the new bytes; a failed event append (its line written on the
writer's thread, its fsync on a helper) still stops a write; a forked child gets helpers of its own.
"""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from statekit import StorageError, Store
from statekit.files import Disk

EPISODE_COLUMNS = ("show_id", "episode_id", "title", "stage", "version", "created_at", "updated_at", "cost_total",
                   "attempts_total", "error_count", "path", "position", "stage_entered_at", "previous_stage",
                   "ready_for", "message", "costs", "data", "file_size", "file_mtime_ns", "file_sha256", "lease_owner",
                   "lease_expires_at", "due_at", "pending", "priority")


def tables(root: Path) -> dict[str, list[tuple[Any, ...]]]:
    conn = sqlite3.connect(root / ".statekit" / "index.db")
    try:
        return {
            "episodes": conn.execute(f"SELECT {', '.join(EPISODE_COLUMNS)} FROM episodes "
                                     "ORDER BY show_id, episode_id").fetchall(),
            "events": conn.execute("SELECT show_id, episode_id, version, at, kind, from_stage, to_stage, message, "
                                   "cost, data, stage FROM events ORDER BY show_id, episode_id, version").fetchall(),
            "totals": [(s, st_, n, round(c, 9)) for s, st_, n, c in conn.execute(
                "SELECT show_id, stage, episodes, cost FROM stage_totals WHERE episodes != 0 OR abs(cost) > 1e-12 "
                "ORDER BY show_id, stage")],
        }
    finally:
        conn.close()


MOVES = {"discovered": ["downloading", "skipped"], "downloading": ["downloaded", "failed"],
         "downloaded": ["converting", "skipped"], "converting": ["converted", "failed"],
         "converted": ["uploading", "skipped"], "uploading": ["uploaded", "failed"], "uploaded": ["scheduled"],
         "scheduled": ["published"], "failed": ["downloading", "converting", "uploading", "skipped"]}

steps = st.lists(st.tuples(st.integers(0, 2), st.integers(0, 3), st.sampled_from([None, 0.0, 0.25, 1.5]),
                           st.sampled_from([None, "", "a step", "ünïcode"]), st.booleans()), min_size=1, max_size=14)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=steps, fmt=st.sampled_from(["json", "yaml"]))
def test_the_index_written_after_each_commit_is_what_a_rebuild_derives(tmp_path_factory: pytest.TempPathFactory,
                                                                         steps: list[Any], fmt: str) -> None:
    root = tmp_path_factory.mktemp("idx") / "store"
    store = Store.init(root, format=fmt)
    try:
        for ep in ("a", "b", "c"):
            store.create("s", ep, title=f"Episode {ep}", metadata={"n": 1})
        for which, pick, cost, message, update in steps:
            ep = "abc"[which]
            if update:
                store.update("s", ep, title=f"{ep} {pick} {message}", metadata={"n": pick, "none": None})
                continue
            here = store.get("s", ep).stage
            legal = MOVES.get(here)
            if not legal:
                continue
            store.advance("s", ep, legal[pick % len(legal)], cost=cost, message=message)
        written = tables(root)
        store.rebuild_index()
        rebuilt = tables(root)
    finally:
        store.close()
    assert written["totals"] == rebuilt["totals"]
    assert written["events"] == rebuilt["events"]
    assert written["episodes"] == rebuilt["episodes"]


def test_none_binds_as_null_and_an_application_adapter_is_not_replaced(tmp_path: Path) -> None:
    store = Store.init(tmp_path / "s")
    store.create("s", "e")
    store.advance("s", "e", "downloading")  # message None, lease None: NULLs
    store.close()
    conn = sqlite3.connect(":memory:")
    assert conn.execute("SELECT ? IS NULL, typeof(?)", (None, None)).fetchone() == (1, "null")
    row = sqlite3.connect(tmp_path / "s" / ".statekit" / "index.db").execute(
        "SELECT message, lease_owner, pending FROM episodes").fetchone()
    assert row == (None, None, None)
    key = (type(None), sqlite3.PrepareProtocol)
    ours = sqlite3.adapters[key]
    try:
        def mine(_value: None) -> None:
            return None

        sqlite3.register_adapter(type(None), mine)
        from statekit.index.dialect import bind_none_directly
        bind_none_directly()
        assert sqlite3.adapters[key] is mine
    finally:
        sqlite3.register_adapter(type(None), ours)


@pytest.mark.parametrize("fmt", ["json", "yaml"])
def test_a_longer_spare_taken_as_the_temp_file_is_cut_to_the_new_bytes(tmp_path: Path, fmt: str) -> None:
    store = Store.init(tmp_path / "s", format=fmt, backups=2)
    store.create("s", "e", title="x" * 2000)
    for n in range(6):  # each spare is an older, longer version
        store.update("s", "e", title="x" * (1500 - 200 * n))
        path = Path(store.episode_path("s", "e"))
        raw = path.read_bytes()
        data = json.loads(raw) if fmt == "json" else None
        if data is not None:
            assert data["title"] == "x" * (1500 - 200 * n)
        assert store.get("s", "e").title == "x" * (1500 - 200 * n)
        assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]
    assert store.verify().clean
    store.close()


class FailingLog(Disk):
    """Fails every write to the event log (the line is written on the writer's thread, its fsync on a helper)."""

    def __init__(self) -> None:
        self.log_fds: set[int] = set()
        self.fail = False

    def open(self, path: str, flags: int, mode: int = 0o666, *, dir_fd: int | None = None) -> int:
        fd = super().open(path, flags, mode, dir_fd=dir_fd)
        if path.endswith("events.jsonl"):
            self.log_fds.add(fd)
        return fd

    def write(self, fd: int, data: memoryview) -> int:
        if self.fail and fd in self.log_fds:
            raise OSError(5, "injected: the log cannot be written")
        return super().write(fd, data)


def test_a_failed_append_on_the_helper_thread_stops_the_write(tmp_path: Path) -> None:
    Store.init(tmp_path / "s").close()
    disk = FailingLog()
    assert disk.overlap_syncs
    store = Store.open(tmp_path / "s", disk=disk)
    store.create("s", "e")
    path = Path(store.episode_path("s", "e"))
    before = path.read_bytes()
    disk.fail = True
    for _ in range(3):  # the helper goes back to the idle ones each time
        with pytest.raises(StorageError):
            store.advance("s", "e", "downloading")
        assert path.read_bytes() == before
    disk.fail = False
    assert store.advance("s", "e", "downloading").version == 2
    store.close()


def test_a_forked_child_writes_with_helpers_of_its_own(tmp_path: Path) -> None:
    store = Store.init(tmp_path / "s")
    store.create("s", "a")
    store.create("s", "b")
    store.advance("s", "a", "downloading")  # this process has a helper thread now
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 1
        try:
            code = 0 if store.advance("s", "b", "downloading").version == 2 else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert store.advance("s", "a", "downloaded").version == 3
    store.close()


TAMPER = {  # an index row that no longer holds what a guarded UPDATE leaves out (a stale index, a hand-set value)
    None: None,
    "file_stamp": "UPDATE episodes SET file_stamp = 'e|1|2' WHERE episode_id = ?",
    "priority": "UPDATE episodes SET priority = 7 WHERE episode_id = ?",
    "pending": "UPDATE episodes SET pending = '{\"fields\": [\"title\"]}' WHERE episode_id = ?",
    "stage": "UPDATE episodes SET stage = 'skipped' WHERE episode_id = ?",
    "stage_entered_at": "UPDATE episodes SET stage_entered_at = '2000-01-01T00:00:00.000000Z' WHERE episode_id = ?",
    "ready_for": "UPDATE episodes SET ready_for = 'published' WHERE episode_id = ?",
}


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=st.lists(st.tuples(st.integers(0, 1), st.integers(0, 3), st.booleans(), st.sampled_from(list(TAMPER))),
                      min_size=1, max_size=10))
def test_the_guarded_update_of_a_row_gives_the_full_updates_row(tmp_path_factory: pytest.TempPathFactory,
                                                                 steps: list[Any]) -> None:
    """The UPDATE that checks the indexed columns a write leaves alone (instead of setting
    them) writes the row the full UPDATE writes, whether the row holds them (the guarded
    UPDATE's own result) or not (it matches nothing; the full one runs)."""
    root = tmp_path_factory.mktemp("guard") / "store"
    store = Store.init(root)
    try:
        for ep in ("a", "b"):
            store.create("s", ep, title=f"Episode {ep}")
        for n, (which, pick, update, tamper) in enumerate(steps):
            ep = "ab"[which]
            if TAMPER[tamper] is not None:
                conn = sqlite3.connect(root / ".statekit" / "index.db")
                with conn:
                    conn.execute(TAMPER[tamper], (ep,))
                conn.close()
            here = store.get("s", ep).stage
            legal = MOVES.get(here)
            if update or not legal:
                store.update("s", ep, title=f"{ep} {n}")
            else:
                store.advance("s", ep, legal[pick % len(legal)], cost=0.5)
            conn = sqlite3.connect(root / ".statekit" / "index.db")
            stamp, priority, pending = conn.execute(
                "SELECT file_stamp, priority, pending FROM episodes WHERE episode_id = ?", (ep,)).fetchone()
            conn.close()
            assert (stamp, priority, pending) == (None, 0, None)  # what the write's own row holds
        written = tables(root)
        store.rebuild_index()
        rebuilt = tables(root)
    finally:
        store.close()
    assert written == rebuilt


def test_a_write_that_leaves_the_guarded_columns_alone_takes_the_guarded_update(tmp_path: Path) -> None:
    """The fast form is the one that runs: a move, a write in the same stage."""
    store = Store.init(tmp_path / "s")
    try:
        store.create("s", "e", title="t")
        for stage in ("downloading", "failed", "downloading"):  # both stages have their totals' rows now
            store.advance("s", "e", stage)
        index = store.writer.index

        class Refused:
            sql = "SELECT no_such_column FROM episodes"

            @staticmethod
            def params_of(_values: Any) -> tuple[()]:
                return ()

        full, index._replace_from_row = index._replace_from_row, Refused  # type: ignore[assignment]
        wal = tmp_path / "s" / ".statekit" / "index.db-wal"  # (the full UPDATE would now fail)
        before = wal.stat().st_size
        store.advance("s", "e", "failed")
        moved = wal.stat().st_size - before
        store.update("s", "e", metadata={"k": "v"})
        updated = wal.stat().st_size - moved - before
        assert store.list(stage="failed")[0].metadata == {"k": "v"}
        index._replace_from_row = full  # a new title (rare): the full UPDATE, as the index holds it (0013)
        store.update("s", "e", title="u")
        retitled = wal.stat().st_size - updated - moved - before
        assert store.list(stage="failed")[0].title == "u"
    finally:
        store.close()
    frame = 4096 + 24
    # a move: the row, its two stage indexes, the event and its key, the stages' totals; an
    # update: the row, the event and its key (no index entry rewritten to the value it had);
    # a new title: the full UPDATE writes every index entry of the row again (4 of them)
    assert (moved // frame, updated // frame, retitled // frame) == (6, 3, 7)
