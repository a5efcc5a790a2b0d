"""A rebuild in a process pool whose workers write their rows into the build file
themselves, in their chunks' order (``index/rebuild:_fill``, ``index/pool:ordered_chunks``):
the same database, rowid for rowid, as one process builds."""

from __future__ import annotations

import os
import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest

from statekit import Store
from statekit.index import pool
from statekit.index import rebuild as rebuilding


def every_row(store: Store) -> dict[str, list[tuple[Any, ...]]]:
    """Every table of the index as stored, with rowids (so event ids and insertion order
    count), but the time each file was checked (``checked_at_ns``, ``file_stamp``);
    ``sqlite_stat1`` as a set (ANALYZE's order is not the rows')."""
    conn = sqlite3.connect(Path(store.root, ".statekit/index.db"))
    try:
        out = {}
        for (table,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name"):
            columns = [r[1] for r in conn.execute(f"PRAGMA table_info({table})")]
            kept = ", ".join(c if c not in ("checked_at_ns", "file_stamp") else "NULL" for c in columns)
            rows = conn.execute(f"SELECT rowid, {kept} FROM {table} ORDER BY rowid").fetchall()
            out[table] = sorted(r[1:] for r in rows) if table == "sqlite_stat1" else rows
        return out
    finally:
        conn.close()


def varied_store(root: Path, fmt: str, n: int = 150) -> Store:
    """Several shows, costs in many stages (float sums), unique claims, a hand-set order,
    a damaged file, a pending hand edit, a lost log and a folder without a file."""
    store = Store.init(root, format=fmt)
    config = Path(root, "statekit.yaml")
    config.write_text(config.read_text().replace("\nunique: []", "\nunique: [i]"))
    store = Store.open(root)
    for i in range(n):
        show, ep = f"show{i % 3}", f"ep{i:04d}"
        store.create(show, ep, metadata={"i": i})
        if i % 2 == 0:
            store.advance(show, ep, "downloading", cost=round(1 / (i + 7), 6))  # sums that depend on the order
        if i % 4 == 0:
            store.advance(show, ep, "downloaded", cost=0.1 / (i + 3))
    show_file = Path(root, "shows/show1/show.yaml")
    show_file.write_text(show_file.read_text().replace("order: []", "order: [ep0100, ep0004]"))
    folder = Path(root, "shows")
    (folder / f"show2/episodes/ep0002/episode.{fmt}").write_text("version: [broken\n" if fmt == "yaml" else "{x")
    edited = folder / f"show0/episodes/ep0003/episode.{fmt}"
    edited.write_text(edited.read_text().replace("ep0003", "ep0003", 1).replace("title: ''", "title: by hand")
                      .replace('"title": ""', '"title": "by hand"'))
    (folder / "show1/episodes/ep0010/events.jsonl").write_text("")
    (folder / "show1/episodes/ep9999").mkdir()
    return store


@pytest.mark.parametrize("fmt", ["json", "yaml"])
def test_workers_writing_the_build_in_turns_make_the_database_one_process_makes(
        tmp_path: Path, fmt: str, monkeypatch: pytest.MonkeyPatch) -> None:
    store = varied_store(tmp_path / "store", fmt)
    calls: list[list[tuple[int, int]]] = [[], [], []]
    reports = []
    rows = []
    for i, (workers, chunk) in enumerate(((1, 10**6), (1, 7), (3, 7))):  # the plain form: one chunk, here
        monkeypatch.setattr(rebuilding, "REBUILD_CHUNK", chunk)  # 7: many chunks, many turns
        reports.append(rebuilding.rebuild(store.writer, lambda done, total, i=i: calls[i].append((done, total)),
                                          workers=workers))
        rows.append(every_row(store))
    assert rows[0] == rows[1] == rows[2]
    assert reports[0] == reports[1] == reports[2]
    assert calls[0] == calls[1] == calls[2]
    assert calls[0][-1][0] == len(calls[0]) + 1  # none for the folder without a file
    assert [p.episode for p in reports[0].problems] == ["show2/ep0002"]
    assert reports[0].pending == ["show0/ep0003", "show2/ep0002"]
    assert len(rows[0]["unique_values"]) == 150
    assert [r[0] for r in rows[0]["events"]] == list(range(1, reports[0].events + 1))
    assert {r[1:3] for r in rows[0]["stage_totals"]} >= {("show0", "downloaded"), ("show2", "downloading")}


def test_a_failed_chunk_passes_its_turn_and_the_error_reaches_the_caller(tmp_path: Path) -> None:
    log = tmp_path / "log"
    log.write_text("")

    def prepare(chunk: list[int]) -> list[int]:
        if 6 in chunk:
            raise ValueError("chunk with 6")
        return chunk

    def finish(chunk: list[int]) -> list[int]:
        with open(log, "a") as f:
            f.write(" ".join(map(str, chunk)) + "\n")
        return chunk

    raised: list[BaseException] = []

    def run() -> None:
        try:
            list(pool.ordered_chunks(prepare, list(range(12)), 2, finish, size=2))
        except ValueError as exc:
            raised.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(60)
    assert not thread.is_alive(), "the chunks after the failed one wait for its turn for ever"
    assert [str(e) for e in raised] == ["chunk with 6"]
    lines = log.read_text().split("\n")[:-1]
    assert lines[:3] == ["0 1", "2 3", "4 5"]  # in order; and the chunks after the failed one did not hang
    assert set(lines[3:]) <= {"8 9", "10 11"} and lines[3:] == sorted(lines[3:], key=lambda s: int(s.split()[0]))


def test_finish_runs_in_the_chunks_order_however_long_each_prepare_takes(tmp_path: Path) -> None:
    import time

    log = tmp_path / "log"
    log.write_text("")

    def prepare(chunk: list[int]) -> list[int]:
        time.sleep(0.02 * (len(chunk) and (5 - chunk[0] % 5)))  # the early chunks take longest
        return chunk

    def finish(chunk: list[int]) -> int:
        with open(log, "a") as f:
            f.write(f"{chunk[0]}\n")
        return chunk[0]

    assert list(pool.ordered_chunks(prepare, list(range(20)), 3, finish, size=1)) == list(range(20))
    assert log.read_text().split() == [str(i) for i in range(20)]
    assert list(pool.ordered_chunks(prepare, list(range(5)), 1, finish, size=2)) == [0, 2, 4]


def test_ordered_map_gives_each_item_s_result_in_order_from_the_workers() -> None:
    offset = 7  # (a closure: the forked workers inherit it)
    items = list(range(2 * pool.CHUNK + 5))  # three chunks, the last one short
    for eager in (False, True):
        got = list(pool.ordered_map(lambda i: (i + offset, os.getpid()), items, 2, eager=eager))
        assert [value for value, _pid in got] == [i + offset for i in items]
        assert os.getpid() not in {pid for _value, pid in got}  # done in the forked workers
    assert list(pool.ordered_map(lambda i: (i + offset, os.getpid()), items[:3], 1)) == [
        (7, os.getpid()), (8, os.getpid()), (9, os.getpid())]  # one process: here
    assert pool._prepare is None  # nothing left for a later pool's fork to inherit


@pytest.mark.skipif(not os.environ.get("STATEKIT_TEST_PG_URL"), reason="STATEKIT_TEST_PG_URL is not set")
def test_a_pool_on_a_server_index_sends_its_rows_to_this_process(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from .test_index_postgres import pg

    store = varied_store(tmp_path / "store", "json", n=40)
    monkeypatch.setattr(rebuilding, "REBUILD_CHUNK", 5)
    server = pg.__wrapped__()  # type: ignore[attr-defined]
    index = next(server)
    try:
        def content() -> dict[str, list[Any]]:
            from sqlalchemy import select

            from statekit.index.tables import metadata

            out = {}
            with index.engine.connect() as conn:
                for name in ("episodes", "events", "stage_totals", "unique_values", "shows"):
                    table = metadata.tables[name]
                    columns = [c for c in table.columns if c.name not in ("id", "checked_at_ns", "file_stamp")]
                    out[name] = sorted(conn.execute(select(*columns)).all(), key=repr)
            return out

        one = rebuilding.rebuild(store.writer, index=index, workers=1)
        alone = content()
        pooled = rebuilding.rebuild(store.writer, index=index, workers=2)
        assert pooled == one and pooled.episodes == 40
        assert content() == alone
    finally:
        next(server, None)
