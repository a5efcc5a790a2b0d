"""``run_totals`` (index revision 0011): the runs that ended, added by the write path with their
events and taken off by the database's triggers when an event row is updated or deleted, are
always what counting every event gives, whatever wrote the events (a run's end, a recovery, a
delete, a sync of a hand edit, a rebuild, an upgrade), in SQLite and in PostgreSQL; the
metrics' run and failure counters read them."""

from __future__ import annotations

import sqlite3
from collections import Counter
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from statekit import Store
from statekit.index import event_row
from statekit.index.tables import run_totals_ddl, run_totals_select


class Boom(Exception):
    pass


def counted(store: Store) -> list[tuple[Any, ...]]:
    with store.index.engine.connect() as conn:
        return sorted(tuple(r) for r in conn.exec_driver_sql(
            "SELECT show_id, stage, kind, error_kind, runs FROM run_totals WHERE runs <> 0"))


def recounted(store: Store) -> list[tuple[Any, ...]]:
    with store.index.engine.connect() as conn:
        return sorted(tuple(r) for r in conn.exec_driver_sql(run_totals_select(conn.dialect.name)))


def agree(store: Store) -> list[tuple[Any, ...]]:
    rows = counted(store)
    assert rows == recounted(store)
    return rows


def ends(store: Store, now: list[datetime]) -> None:
    """Runs that end every way: finished, failed (two error kinds), recovered after a lease ran out."""
    for ep in ("a", "b", "c", "d"):
        store.create("s", ep)
    store.create("t", "a")
    with store.run("s", "a", "downloading"):
        pass
    with pytest.raises(ConnectionError), store.run("s", "b", "downloading"):
        raise ConnectionError("down")
    with pytest.raises(Boom), store.run("t", "a", "downloading"):
        raise Boom("bad input")
    store.run("s", "c", "downloading", lease_seconds=30).__enter__()  # a worker that died
    now[0] += timedelta(seconds=31)
    store.recover(sync=False)
    with store.run("s", "d", "downloading"):
        pass


@pytest.fixture
def clock() -> list[datetime]:
    return [datetime(2026, 1, 1, tzinfo=timezone.utc)]


def test_the_runs_are_counted_as_they_end_and_uncounted_when_their_events_go(tmp_path: Path,
                                                                             clock: list[datetime]) -> None:
    store = Store.init(tmp_path / "s", clock=lambda: clock[0])
    ends(store, clock)
    rows = agree(store)
    by_kind = Counter()
    for _show, _stage, kind, _error, n in rows:
        by_kind[kind] += n
    assert by_kind == {"finish": 2, "fail": 2, "recovered": 1}
    assert {(r[2], r[3]) for r in rows if r[2] != "finish"} == {
        ("fail", "transient_network"), ("fail", "unknown"), ("recovered", "interrupted")}
    assert all(r[3] == "" for r in rows if r[2] == "finish")

    store.delete("s", "a")  # its events leave the index: its run is no longer counted
    after = agree(store)
    assert sum(n for *_, n in after) == sum(n for *_, n in rows) - 1
    with store.index.engine.connect() as conn:  # a row that falls to 0 stays, and counts nothing
        assert conn.exec_driver_sql("SELECT count(*) FROM run_totals WHERE runs < 0").scalar() == 0

    store.rebuild_index()  # counted from the events at once, then the triggers are back
    assert agree(store) == after
    with store.run("s", "d", "converting"):
        pass
    assert sum(n for *_, n in agree(store)) == sum(n for *_, n in after) + 1


def test_a_synced_hand_edit_and_an_event_written_again_are_counted_once(tmp_path: Path,
                                                                       clock: list[datetime]) -> None:
    store = Store.init(tmp_path / "s", clock=lambda: clock[0])
    ends(store, clock)
    rows = agree(store)
    path = Path(store.root, "shows/s/episodes/d/episode.yaml")
    path.write_text(path.read_text().replace("title: d", "title: edited by hand"))
    store.sync()
    assert agree(store) == rows
    failed = next(e for e in store.events("s", "b") if e.kind == "fail")
    row = event_row(failed.model_dump(mode="json"))
    store.index.write(event_rows=[row])  # the same row written again (the upsert's update): counted once
    assert agree(store) == rows
    store.index.write(event_rows=[dict(row, kind="note")])  # that version's row is no run's end now
    fewer = agree(store)
    assert sum(n for *_, n in fewer) == sum(n for *_, n in rows) - 1
    store.index.write(event_rows=[row])
    assert agree(store) == rows
    with store.index.engine.begin() as conn:  # an update by hand takes the old row's end off too
        conn.exec_driver_sql("UPDATE events SET kind = 'note' WHERE kind = 'recovered'")
    assert "recovered" not in {r[2] for r in agree(store)}


def test_the_metrics_counters_are_the_events_counted(tmp_path: Path, clock: list[datetime]) -> None:
    pytest.importorskip("prometheus_client")
    from prometheus_client.parser import text_string_to_metric_families

    from statekit.signals.metrics import exposition

    store = Store.init(tmp_path / "s", clock=lambda: clock[0])
    ends(store, clock)
    scraped = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for f in text_string_to_metric_families(exposition(store.writer, "x").decode()) for s in f.samples}
    expected: Counter[tuple[str, tuple[tuple[str, str], ...]]] = Counter()
    db = sqlite3.connect(Path(store.root, ".statekit/index.db"))
    for kind, stage, error in db.execute(  # the events, counted as the metrics did before run_totals
            "SELECT kind, coalesce(from_stage, json_extract(data, '$.run_stage'), 'unknown'), "
            "coalesce(json_extract(data, '$.error_kind'), 'unknown') FROM events "
            "WHERE kind IN ('finish', 'fail', 'recovered')"):
        outcome = "succeeded" if kind == "finish" else "failed"
        expected["statekit_runs_total", (("outcome", outcome), ("stage", stage))] += 1
        if kind != "finish":
            expected["statekit_failures_total", (("kind", error), ("stage", stage))] += 1
    got = {k: v for k, v in scraped.items() if k[0] in ("statekit_runs_total", "statekit_failures_total")}
    assert got == dict(expected) and sum(expected.values()) == 5 + 3


def triggers(path: Path) -> list[tuple[str, str]]:
    db = sqlite3.connect(path)
    try:
        return sorted(db.execute("SELECT name, sql FROM sqlite_master WHERE type = 'trigger'"))
    finally:
        db.close()


def test_an_index_at_0010_is_upgraded_counted_and_holds_the_triggers_a_rebuild_makes(
        tmp_path: Path, clock: list[datetime]) -> None:
    from alembic import command
    from alembic.config import Config

    from statekit.index.connect import migrations_dir

    store = Store.init(tmp_path / "s", clock=lambda: clock[0])
    ends(store, clock)
    expected = agree(store)
    index = Path(store.root, ".statekit/index.db")
    rebuilt = triggers(index)
    assert [name for name, _ in rebuilt] == ["run_totals_delete", "run_totals_update"]
    assert [sql for _, sql in rebuilt] == sorted(run_totals_ddl("sqlite"), key=lambda s: s.split()[2])
    store.rebuild_index()
    assert triggers(index) == rebuilt
    config = Config()
    config.set_main_option("script_location", migrations_dir())
    with store.index.engine.connect() as conn, conn.begin():
        config.attributes["connection"] = conn
        command.downgrade(config, "0010")
    store.close()
    assert triggers(index) == []
    reopened = Store.open(store.root)  # upgraded on open, the totals counted from the events there
    assert agree(reopened) == expected
    assert triggers(index) == rebuilt
    with pytest.raises(ConnectionError), reopened.run("s", "d", "converting"):
        raise ConnectionError("again")
    assert sum(n for *_, n in agree(reopened)) == sum(n for *_, n in expected) + 1


def test_postgresql_counts_them_too_and_a_rebuild_counts_again(tmp_path: Path, pg_url: str,
                                                               clock: list[datetime]) -> None:
    store = Store.init(tmp_path / "s", clock=lambda: clock[0], index_url=pg_url)
    ends(store, clock)  # (the lease the database's clock judges is still live: no recovery here)
    rows = agree(store)
    total = sum(n for *_, n in rows)
    assert total == 4 and {r[2] for r in rows} == {"finish", "fail"}
    store.delete("s", "a")
    after = agree(store)
    assert sum(n for *_, n in after) == total - 1
    store.rebuild_index()
    assert agree(store) == after
    with store.index.engine.connect() as conn:  # the rebuild turned the trigger off in its transaction only
        enabled = conn.exec_driver_sql("SELECT tgenabled FROM pg_trigger WHERE tgname = 'run_totals_follow' "
                                       "AND tgrelid = 'events'::regclass").scalar()
    assert enabled == "O"
    with store.run("s", "d", "converting"):
        pass
    assert sum(n for *_, n in agree(store)) == total


def test_verify_finds_run_totals_that_differ_from_the_events(tmp_path: Path, clock: list[datetime]) -> None:
    store = Store.init(tmp_path / "s", clock=lambda: clock[0])
    ends(store, clock)
    assert store.verify().clean
    with store.index.engine.begin() as conn:
        conn.exec_driver_sql("UPDATE run_totals SET runs = runs + 1 WHERE kind = 'fail'")
        conn.exec_driver_sql("DELETE FROM run_totals WHERE kind = 'finish'")
    problems = [p.message for p in store.verify(full=True).problems]
    assert len(problems) == 1 and "run totals differ from its events in 3 row(s)" in problems[0]
    store.rebuild_index()
    assert store.verify(full=True).clean


@pytest.mark.parametrize("workers", [1, 2])
def test_a_rebuild_counts_the_runs_as_the_sql_does(tmp_path: Path, clock: list[datetime], workers: int) -> None:
    from statekit.index.rebuild import Chunk, rebuild

    store = Store.init(tmp_path / "s", clock=lambda: clock[0])
    ends(store, clock)
    expected = agree(store)
    rebuild(store.writer, workers=workers)  # the chunks count them (in the pool's workers too)
    assert agree(store) == expected
    with store.index.engine.connect() as conn:
        rows = [tuple(r) for r in conn.exec_driver_sql(
            "SELECT show_id, episode_id, version, at, kind, from_stage, to_stage, message, cost, data, stage "
            "FROM events")]
    chunk = Chunk()
    chunk.count_runs(rows)
    assert chunk.runs is not None
    assert sorted((*key, n) for key, n in chunk.runs.items()) == expected
    odd = [r[:9] + (r[9].replace('"error_kind":"transient_network"', '"error_kind":7'), r[10]) for r in rows]
    assert odd != rows
    chunk = Chunk()
    chunk.count_runs(odd)  # a value that is not text: left to the SQL, which counts it in its own way
    assert chunk.runs is None


def test_a_rebuild_whose_chunks_leave_the_count_to_the_sql_counts_them_too(
        tmp_path: Path, clock: list[datetime], monkeypatch: pytest.MonkeyPatch) -> None:
    from statekit.index.rebuild import Chunk

    store = Store.init(tmp_path / "s", clock=lambda: clock[0])
    ends(store, clock)
    expected = agree(store)

    def unsure(chunk: Chunk, lines: list[tuple[Any, ...]]) -> None:
        chunk.runs = None

    monkeypatch.setattr(Chunk, "count_runs", unsure)
    store.rebuild_index()
    assert agree(store) == expected
