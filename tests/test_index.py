"""The SQLite index: contract, Alembic, write-through, rebuild, sync, verify, queries."""

from __future__ import annotations

import os
import re
import sqlite3
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from statekit import Store, ValidationError
from statekit.index.tables import INDEX_REVISION

from .conftest import episode_file, index_rows, snapshot

REPO = Path(__file__).resolve().parent.parent


def db(store: Store) -> sqlite3.Connection:
    return sqlite3.connect(os.path.join(store.root, ".statekit", "index.db"))


def columns(conn: sqlite3.Connection, table: str) -> list[str]:
    return [r[1] for r in conn.execute(f"PRAGMA table_info({table})")]


def same_as_rebuild(store: Store) -> None:
    before = index_rows(store)
    store.rebuild_index()
    assert index_rows(store) == before


# --- the contract ---------------------------------------------------------------


def test_sql_contract_names(store: Store) -> None:
    store.create("oliver", "ep001")
    conn = db(store)
    episodes = columns(conn, "episodes")
    for name in ("show_id", "episode_id", "title", "stage", "version", "created_at", "updated_at",
                 "cost_total", "attempts_total", "error_count", "path"):
        assert name in episodes
    assert columns(conn, "events")[:10] == ["id", "show_id", "episode_id", "version", "at", "kind", "from_stage",
                                            "to_stage", "message", "cost"]
    assert "show_id" in columns(conn, "shows")
    assert columns(conn, "stage_counts") == ["show_id", "stage", "n"]
    assert conn.execute("SELECT show_id, stage, n FROM stage_counts").fetchall() == [("oliver", "discovered", 1)]
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    # timestamps are ISO text in UTC that SQLite's date functions read
    age = conn.execute("SELECT julianday('now') - julianday(created_at) FROM episodes").fetchone()[0]
    assert 0 <= age < 0.01


def test_alembic_head_matches_the_code() -> None:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    from statekit.index.connect import migrations_dir

    config = Config()
    config.set_main_option("script_location", migrations_dir())
    assert ScriptDirectory.from_config(config).get_current_head() == INDEX_REVISION


def test_alembic_migrations_build_exactly_the_tables_of_the_code(tmp_path: Path) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from statekit.index import engine_for
    from statekit.index.connect import alembic_upgrade
    from statekit.index.tables import metadata

    engine = engine_for(f"sqlite+pysqlite:///{tmp_path / 'i.db'}")
    with engine.connect() as conn:
        with conn.begin():
            alembic_upgrade(conn)
        diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), metadata)
        views = conn.exec_driver_sql("SELECT name FROM sqlite_master WHERE type='view'").scalars().all()
    engine.dispose()
    assert diff == []
    assert views == ["stage_counts"]


def test_alembic_command_line_upgrades_a_store_index(tmp_path: Path) -> None:
    store = Store.init(tmp_path / "s")
    store.create("s", "e")
    index = Path(store.root, ".statekit", "index.db")
    store.close()
    for suffix in ("", "-wal", "-shm"):
        Path(f"{index}{suffix}").unlink(missing_ok=True)
    alembic = Path(sys.executable).with_name("alembic")
    result = subprocess.run([str(alembic), "-x", f"root={store.root}", "upgrade", "head"], cwd=REPO,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert sqlite3.connect(index).execute("SELECT version_num FROM alembic_version").fetchone()[0] == INDEX_REVISION
    # an index made by alembic starts empty; statekit fills it from the files on open
    assert Store.open(store.root).counts()["discovered"] == 1


def test_an_index_at_revision_0001_is_upgraded_and_its_rows_derived_again(tmp_path: Path) -> None:
    from alembic import command
    from alembic.config import Config

    from statekit.index.connect import migrations_dir

    store = Store.init(tmp_path / "s")
    for ep in ("a", "b", "c"):
        store.create("s", ep)
    store.advance("s", "b", "downloading")
    run = store.run("s", "c", "downloading", lease_seconds=300)
    run.__enter__()
    expected = index_rows(store)
    config = Config()
    config.set_main_option("script_location", migrations_dir())
    with store.index.engine.connect() as conn, conn.begin():
        config.attributes["connection"] = conn
        command.downgrade(config, "0001")
        # what 0001-era code computed: an episode in a run stage was ready for the stage after it
        conn.exec_driver_sql("UPDATE episodes SET ready_for = 'downloaded' WHERE stage = 'downloading'")
    store.close()
    reopened = Store.open(store.root)
    assert db(reopened).execute("SELECT version_num FROM alembic_version").fetchone()[0] == INDEX_REVISION
    assert index_rows(reopened) == expected
    assert [e.key for e in reopened.next("downloading")] == ["s/a", "s/b"]  # c is leased
    assert [e.kind for e in reopened.events("s", "b")] == ["create", "advance"]  # re-read, not adopted


def test_open_upgrades_an_old_index_by_itself(tmp_path: Path) -> None:
    from alembic import command
    from alembic.config import Config

    from statekit.index.connect import migrations_dir

    store = Store.init(tmp_path / "s")
    store.create("s", "e")
    store.close()
    config = Config()
    config.set_main_option("script_location", migrations_dir())
    with store.index.engine.connect() as conn, conn.begin():
        config.attributes["connection"] = conn
        command.downgrade(config, "base")
    store.close()
    reopened = Store.open(store.root)
    assert db(reopened).execute("SELECT version_num FROM alembic_version").fetchone()[0] == INDEX_REVISION
    assert reopened.counts()["discovered"] == 1


def test_a_bare_alembic_upgrade_of_an_index_at_0001_is_derived_again_by_the_next_open(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from alembic import command
    from alembic.config import Config

    from statekit.index.connect import migrations_dir

    store = Store.init(tmp_path / "s")
    for i in range(20):  # ready for downloading: ten to enter it, ten in it waiting to be run there
        store.create("s", f"e{i:02d}")
        if i % 2:
            store.advance("s", f"e{i:02d}", "downloading", cost=0.1)
    store.create("s", "paid")
    with store.run("s", "paid", "downloading") as run:
        run.checkpoint({"part": 1}, cost=0.5)
    expected = index_rows(store)
    config = Config()
    config.set_main_option("script_location", migrations_dir())
    with store.index.engine.connect() as conn, conn.begin():
        config.attributes["connection"] = conn
        command.downgrade(config, "0001")
        # what 0001-era code derived: an episode in a run stage was ready for the stage after it
        conn.exec_driver_sql("UPDATE episodes SET ready_for = 'downloaded' WHERE stage = 'downloading'")
    store.close()
    alembic = Path(sys.executable).with_name("alembic")
    done = subprocess.run([str(alembic), "-c", str(REPO / "alembic.ini"), "-x", f"root={store.root}", "upgrade",
                           "head"], cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert db(store).execute("SELECT version_num FROM alembic_version").fetchone()[0] == INDEX_REVISION
    caplog.set_level("INFO", logger="statekit")
    reopened = Store.open(store.root)
    assert len(reopened.next("downloading", limit=100)) == 20
    assert reopened.verify().clean
    assert index_rows(reopened) == expected
    assert "rows were derived by a statekit older than revision 0005; rebuilding" in caplog.text
    assert reopened.sql("SELECT stage, ROUND(SUM(cost), 4) FROM events WHERE cost IS NOT NULL GROUP BY stage "
                        "ORDER BY stage")[1] == [("discovered", 1.0), ("downloading", 0.5)]
    assert [e.kind for e in reopened.events("s", "e01")] == ["create", "advance"]  # re-read, not adopted
    caplog.clear()
    Store.open(store.root)  # derived once: the next open keeps the index as it is
    assert "rebuilding" not in caplog.text


def test_every_event_with_a_cost_names_its_stage_and_old_lines_get_it_derived(store: Store) -> None:
    import json

    store.create("s", "e")
    store.advance("s", "e", "downloading", cost=1.0)  # spent in the stage it leaves
    with store.run("s", "e", "downloading") as run:  # a worker's costs: the run's stage
        run.checkpoint({"part": 1}, cost=0.5)
        run.cost(0.25, note="bandwidth")
        run.checkpoint({"part": 2})
    store.advance("s", "e", "converting")
    log = Path(store.root, "shows/s/episodes/e/events.jsonl")
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    named = [(line["kind"], line.get("cost"), line.get("stage")) for line in lines]
    assert named == [("create", None, None), ("advance", 1.0, "discovered"), ("start", None, None),
                     ("checkpoint", 0.5, "downloading"), ("cost", 0.25, "downloading"),
                     ("checkpoint", None, None), ("finish", None, None), ("advance", None, None)]
    assert [(e.kind, e.cost, e.stage) for e in store.events("s", "e")] == named

    def by_event() -> list[tuple[object, ...]]:
        return store.sql("SELECT version, stage FROM events WHERE cost IS NOT NULL OR stage IS NOT NULL "
                         "ORDER BY version")[1]

    assert by_event() == [(2, "discovered"), (4, "downloading"), (5, "downloading")]
    per_stage = store.sql("SELECT stage, SUM(cost) FROM events WHERE cost IS NOT NULL GROUP BY stage")[1]
    assert dict(per_stage) == store.costs(by="stage") == {"discovered": 1.0, "downloading": 0.75}
    # a log written before events named their stage (and before the ledger chained them): the index derives it
    old_keys = ("stage", "prev", "patch", "doc")
    log.write_text("".join(json.dumps({k: v for k, v in line.items() if k not in old_keys}) + "\n" for line in lines))
    store.rebuild_index()
    assert by_event() == [(2, "discovered"), (4, "downloading"), (5, "downloading")]
    assert store.verify().clean


@pytest.mark.parametrize("damage", ["garbage", "unknown-revision", "wrong-schema", "missing"])
def test_an_index_that_cannot_be_upgraded_is_rebuilt(tmp_path: Path, damage: str) -> None:
    store = Store.init(tmp_path / "s")
    store.create("s", "e")
    store.advance("s", "e", "downloading", cost=2.5)
    store.close()
    path = Path(store.root, ".statekit", "index.db")
    if damage == "garbage":
        for suffix in ("-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
        path.write_bytes(b"this is not a database" * 100)
    elif damage == "unknown-revision":
        with db(store) as conn:
            conn.execute("UPDATE alembic_version SET version_num = '9999'")
    elif damage == "wrong-schema":
        with db(store) as conn:
            conn.execute("DROP VIEW stage_counts")
            conn.execute("DROP TABLE stage_totals")
            conn.execute("DELETE FROM alembic_version")
    else:
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
    reopened = Store.open(store.root)
    assert reopened.counts()["downloading"] == 1
    assert reopened.costs() == {"discovered": 2.5}
    assert reopened.verify().clean


# --- every write goes through the index ------------------------------------------


def test_every_write_updates_the_index(podcast: Store) -> None:
    s = podcast
    s.create_show("oliver", title="Oliver's Science Hour")
    for ep in ("ep1", "ep2", "ep3"):
        s.create("oliver", ep, title=ep.upper())
    s.advance("oliver", "ep1", "outline", cost=0.1)
    s.advance("oliver", "ep1", "failed", cost=0.2, message="429")
    s.update("oliver", "ep2", metadata={"topic": "moon"})
    s.save_checkpoint("oliver", "ep1", "outline", {"x": 1})
    s.advance("oliver", "ep3", "outline")
    s.advance("oliver", "ep3", "segments")
    s.advance("oliver", "ep3", "scripts")
    s.approve("oliver", "ep3", "audio", by="ana")
    s.delete("oliver", "ep2")
    assert [e.key for e in s.list()] == ["oliver/ep1", "oliver/ep3"]
    assert s.list()[0] == s.get("oliver", "ep1")
    conn = db(s)
    assert conn.execute("SELECT COUNT(*) FROM events WHERE episode_id = 'ep2'").fetchone()[0] == 0
    assert conn.execute("SELECT title FROM shows").fetchall() == [("Oliver's Science Hour",)]
    assert conn.execute("SELECT version, kind FROM events WHERE episode_id='ep1' ORDER BY version").fetchall() == [
        (1, "create"), (2, "advance"), (3, "advance"), (4, "checkpoint")]
    same_as_rebuild(s)
    assert s.verify().clean


def test_an_index_failure_never_touches_the_files_and_sync_repairs_it(tmp_path: Path,
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    store = Store.init(tmp_path / "s", lock_timeout=0.2)
    store.create("s", "e")
    blocker = db(store)
    blocker.isolation_level = None
    blocker.execute("BEGIN EXCLUSIVE")  # another process holds the index: writes to it time out
    try:
        ep = store.advance("s", "e", "downloading", cost=1.0)  # the write itself succeeds
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert ep.version == 2 and store.get("s", "e").stage == "downloading"
    assert "the index missed s/e version 2" in caplog.text
    assert store.counts()["discovered"] == 1  # the index is behind...
    assert not store.verify().clean
    report = store.sync()  # ...and sync brings it back, without a new write
    assert report.reindexed == ["s/e"] and not report.changed
    assert store.counts()["downloading"] == 1 and store.get("s", "e").version == 2
    assert store.verify().clean
    same_as_rebuild(store)


# --- sync -------------------------------------------------------------------------


def test_sync_adopts_a_hand_edit_as_a_normal_write(store: Store) -> None:
    store.create("s", "e", title="Old")
    path = episode_file(store, "s", "e")
    text = path.read_text().replace("title: Old", "# the title ana chose\ntitle: New title  # final")
    path.write_text(text.replace("metadata: {}", "metadata:\n  topic: rockets"))
    report = store.sync()
    assert report.changed == [{"episode": "s/e", "fields": ["title", "metadata"], "version": 2}]
    after = path.read_text()
    assert "# the title ana chose\ntitle: New title  # final\n" in after and "version: 2" in after
    events = store.events("s", "e")
    assert (events[-1].kind, events[-1].version, events[-1].fields) == ("external_edit", 2, ["title", "metadata"])
    assert store.list()[0].title == "New title"
    assert store.sync().changed == []  # nothing new the second time
    assert store.verify().clean
    same_as_rebuild(store)


def test_sync_rejects_an_invalid_edit_and_keeps_the_last_good_state(store: Store) -> None:
    store.create("s", "e", title="Good")
    path = episode_file(store, "s", "e")
    path.write_text(path.read_text().replace("title: Good", "title: Bad").replace("attempts:\n  discovered: 1",
                                                                                 "attempts:\n  discovered: many"))
    before = snapshot(store.root)
    report = store.sync()
    assert len(report.rejected) == 1
    problem = report.rejected[0]
    assert problem.path == str(path) and problem.field == "attempts.discovered" and problem.line is not None
    assert f"{path}:{problem.line}: attempts.discovered" in problem.message
    assert snapshot(store.root) == before  # the file was not touched
    assert store.list()[0].title == "Good"  # the index keeps the last good state


def test_sync_rejects_an_illegal_stage_move_by_hand(store: Store) -> None:
    store.create("s", "e")
    path = episode_file(store, "s", "e")
    path.write_text(path.read_text().replace("stage: discovered", "stage: published"))
    report = store.sync()
    assert [p.kind for p in report.rejected] == ["illegal-move"]
    assert "'discovered' -> 'published'" in report.rejected[0].message
    assert store.counts()["discovered"] == 1
    path.write_text(path.read_text().replace("stage: published", "stage: downloading"))  # a legal one
    assert store.sync().changed[0]["fields"] == ["stage"]
    assert store.counts()["downloading"] == 1


def test_sync_reports_an_edit_of_an_episode_the_index_missed_as_a_change(store: Store) -> None:
    """A writer killed between its file and its index write leaves an episode the index lacks;
    a person then edits it. Sync adopts the edit and says so (``changed``, the field named
    against the committed version), not ``added``: the episode was statekit's already."""
    store.create("s", "e", title="alpha")
    store.writer.index.write(removed=[("s", "e")])  # what the killed writer's index write left
    path = Path(store.root, "shows/s/episodes/e/episode.yaml")
    path.write_text(path.read_text().replace("title: alpha", "title: bravo"))
    report = store.sync()
    assert report.added == [] and report.changed == [{"episode": "s/e", "fields": ["title"], "version": 2}]
    assert [e.kind for e in store.events("s", "e")] == ["create", "external_edit"]
    assert store.get("s", "e").title == "bravo" and store.verify().clean


def test_sync_finds_new_and_deleted_episodes(store: Store, tmp_path: Path) -> None:
    store.create("s", "keep")
    store.create("s", "gone")
    store.create("s", "template", title="Template")
    folder = Path(store.root, "shows/s/episodes")
    # a person copies an episode folder by hand and fixes its id
    new = folder / "copy"
    new.mkdir()
    text = (folder / "template/episode.yaml").read_text().replace("episode_id: template", "episode_id: copy")
    (new / "episode.yaml").write_text(text)
    import shutil

    shutil.rmtree(folder / "gone")
    report = store.sync()
    assert report.added == ["s/copy"] and report.removed == ["s/gone"]
    assert [e.kind for e in store.events("s", "copy")] == ["external_edit"]
    # the copy kept the template's created_at: it sorts beside it, by id
    assert store.get_show("s").episodes == ["keep", "copy", "template"]
    assert "gone" not in Path(store.root, "shows/s/show.yaml").read_text()
    assert [e.episode_id for e in store.list()] == ["keep", "copy", "template"]
    assert store.verify().clean
    same_as_rebuild(store)


def test_sync_catches_an_edit_within_the_same_timestamp_tick(store: Store) -> None:
    store.create("s", "e", title="aaaa")
    path = episode_file(store, "s", "e")
    st = path.stat()
    # same size, same mtime: stat alone cannot see this edit (the racy-clean case)
    path.write_text(path.read_text().replace("title: aaaa", "title: bbbb"))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert (path.stat().st_size, path.stat().st_mtime_ns) == (st.st_size, st.st_mtime_ns)
    assert store.sync().changed[0]["fields"] == ["title"]
    assert store.list()[0].title == "bbbb"


def test_sync_reads_only_what_changed(store: Store) -> None:
    for i in range(5):
        store.create("s", f"e{i}")
    old = time.time_ns() - 10**10  # all files last changed 10 s ago, and checked since
    for i in range(5):
        os.utime(episode_file(store, "s", f"e{i}"), ns=(old, old))
    first = store.sync()  # the files' stat moved (utime): each is read once, found unchanged
    assert first.read == 5 and first.unchanged == 5 and not first.changed
    report = store.sync()
    assert report.read == 0 and report.unchanged == 5  # stat alone now proves them unchanged
    path = episode_file(store, "s", "e3")
    path.write_text(path.read_text().replace("title: ''", "title: changed"))
    report = store.sync()
    assert report.read == 1 and [c["episode"] for c in report.changed] == ["s/e3"]


# --- verify -------------------------------------------------------------------------


def test_verify_finds_each_kind_of_problem(store: Store) -> None:
    for ep in ("a", "b", "c", "d"):
        store.create("s", ep)
        store.advance("s", ep, "downloading")
    assert store.verify().clean
    episode_file(store, "s", "a").write_text("stage: [broken\n")
    log = Path(store.root, "shows/s/episodes/b/events.jsonl")
    log.write_bytes(b"".join(log.read_bytes().splitlines(keepends=True)[1:]))  # event 1 lost
    path = episode_file(store, "s", "c")
    path.write_text(path.read_text().replace("title: ''", "title: edited"))
    with db(store) as conn:
        conn.execute("UPDATE episodes SET version = 7 WHERE episode_id = 'd'")
    problems = {(p.kind, p.episode) for p in store.verify().problems}
    assert ("invalid", "s/a") in problems
    assert ("events", "s/b") in problems
    assert ("edited", "s/c") in problems
    assert ("index", "s/d") in problems


# --- queries --------------------------------------------------------------------------


def test_next_hands_out_what_is_waiting_oldest_first(store: Store) -> None:
    for ep in ("a", "b", "c", "d"):
        store.create("s", ep)
    store.advance("s", "b", "downloading")
    store.advance("s", "b", "failed")  # failed while downloading: waits to download again
    store.advance("s", "c", "downloading")
    store.advance("s", "c", "downloaded")
    store.advance("s", "c", "converting")
    store.advance("s", "c", "failed")  # failed while converting: not a download
    assert [e.episode_id for e in store.next("downloading")] == ["a", "d", "b"]
    assert [e.episode_id for e in store.next("downloading", limit=2)] == ["a", "d"]
    assert [e.episode_id for e in store.next("converting")] == ["c"]
    assert store.next("published") == []
    with pytest.raises(ValidationError):
        store.next("downloading", limit=0)


def test_next_waits_for_approval_at_a_gate(podcast: Store) -> None:
    podcast.create("o", "e")
    for stage in ("outline", "segments", "scripts"):
        podcast.advance("o", "e", stage)
    assert [e.key for e in podcast.next("scripts")] == ["o/e"]  # scripts waits to be written
    with podcast.run("o", "e", "scripts"):
        pass  # written; audio is gated, so the episode stays at scripts, done
    assert podcast.get("o", "e").stage_done and podcast.get("o", "e").stage == "scripts"
    assert podcast.next("scripts") == [] and podcast.next("audio") == []
    podcast.approve("o", "e", "audio", by="ana")
    assert [e.key for e in podcast.next("audio")] == ["o/e"]


def test_costs_errors_stuck_and_status(store: Store) -> None:
    store.create("a", "1")
    store.create("a", "2")
    store.create("b", "1")
    store.advance("a", "1", "downloading", cost=1.5)
    store.advance("a", "1", "downloaded", cost=0.25)
    store.advance("b", "1", "skipped", cost=0.5)
    assert store.costs() == {"discovered": 2.0, "downloading": 0.25}
    assert store.costs(by="show") == {"a": 1.75, "b": 0.5}
    assert store.costs(show="b") == {"discovered": 0.5}
    assert store.with_errors() == []
    assert [e.key for e in store.stuck(timedelta(0))] == ["a/2", "a/1"]  # skipped is terminal
    assert store.stuck(timedelta(days=1)) == []
    status = {s["show_id"]: s for s in store.status()}
    assert status["b"]["completion"] == 100.0 and status["a"]["completion"] == 0.0
    assert status["a"]["stages"] == {"discovered": 1, "downloaded": 1}
    assert status["a"]["cost"] == 1.75


@pytest.mark.parametrize("query", [
    "DELETE FROM episodes", "UPDATE episodes SET stage = 'x'", "INSERT INTO shows (show_id) VALUES ('x')",
    "DROP TABLE events", "CREATE TABLE t (x)", "PRAGMA journal_mode = DELETE", "VACUUM",
    "ATTACH DATABASE 'ATTACKED' AS a", "SELECT 1; DELETE FROM episodes",
])
def test_sql_refuses_writes_through_the_database(store: Store, query: str, tmp_path: Path) -> None:
    store.create("s", "e")
    before = index_rows(store)
    with pytest.raises(ValidationError, match="refused"):
        store.sql(query.replace("ATTACKED", str(tmp_path / "attack.db")))
    assert index_rows(store) == before
    assert not (tmp_path / "attack.db").exists()


def test_sql_reads(store: Store) -> None:
    store.create("s", "e")
    columns, rows = store.sql("SELECT show_id, stage, n FROM stage_counts")
    assert (columns, rows) == (["show_id", "stage", "n"], [("s", "discovered", 1)])
    assert store.sql("SELECT json_extract(data, '$.title') FROM episodes")[1] == [("",)]


# --- the property: sync after anything == a fresh rebuild -------------------------------

OPS = st.lists(
    st.tuples(st.sampled_from(["create", "advance", "update", "delete", "edit", "bad-edit", "comment", "sync"]),
              st.integers(0, 4), st.integers(0, 10)),
    min_size=1, max_size=25,
)


@settings(max_examples=30)
@given(ops=OPS)
def test_index_after_random_operations_and_sync_equals_a_rebuild(tmp_path_factory: pytest.TempPathFactory,
                                                                 ops: list[tuple[str, int, int]]) -> None:
    store = Store.init(tmp_path_factory.mktemp("prop") / "s")
    stages = list(store.pipeline.stages)
    for op, n, pick in ops:
        show, ep = f"show{n % 2}", f"ep{n}"
        exists = os.path.exists(os.path.join(store.root, "shows", show, "episodes", ep, "episode.yaml"))
        path = Path(store.root, "shows", show, "episodes", ep, "episode.yaml")
        try:
            if op == "create" and not exists:
                store.create(show, ep, title=f"t{pick}")
            elif not exists:
                continue
            elif op == "advance":
                store.advance(show, ep, stages[pick % len(stages)], cost=pick / 10)
            elif op == "update":
                store.update(show, ep, metadata={"pick": pick})
            elif op == "delete":
                store.delete(show, ep)
            elif op == "edit":
                text = path.read_text()
                path.write_text(text.replace("title: ", f"title: hand{pick} ", 1))
            elif op == "bad-edit":
                path.write_text(path.read_text().replace("version: ", "version: x", 1))
            elif op == "comment":
                path.write_text("# a note\n" + path.read_text())
            elif op == "sync":
                store.sync()
        except Exception as exc:  # noqa: BLE001 - refused moves and bad files are part of the walk
            from statekit import StatekitError

            assert isinstance(exc, StatekitError), exc
    # repair what the walk broke on purpose, then sync
    for show in ("show0", "show1"):
        folder = Path(store.root, "shows", show, "episodes")
        for path in folder.glob("*/episode.yaml") if folder.exists() else []:
            path.write_text(re.sub(r"version: x+", "version: ", path.read_text()))
    store.sync()
    synced = index_rows(store)
    store.rebuild_index()
    assert index_rows(store) == synced
    assert store.verify().clean, store.verify().problems


def test_opening_an_index_at_the_current_revision_does_not_load_alembic(tmp_path: Path) -> None:
    """Alembic (with Mako and Pygments) loads only for an upgrade: every command opens the
    index; and an upgrade Alembic refuses, in a process that had not loaded it, still rebuilds."""
    store = Store.init(tmp_path / "s")
    store.create("s", "e")
    store.close()
    script = ("import sys\nfrom statekit import Store\nstore = Store.open(sys.argv[1])\n"
              "print(store.counts()['discovered'], 'alembic' in sys.modules)")
    opened = subprocess.run([sys.executable, "-c", script, str(store.root)], capture_output=True, text=True)
    assert opened.returncode == 0 and opened.stdout.split() == ["1", "False"], opened.stderr
    with db(store) as conn:
        conn.execute("UPDATE alembic_version SET version_num = '9999'")
    rebuilt = subprocess.run([sys.executable, "-c", script, str(store.root)], capture_output=True, text=True)
    assert rebuilt.returncode == 0 and rebuilt.stdout.split() == ["1", "True"], rebuilt.stderr
    assert "rebuilding it from the files" in rebuilt.stderr
