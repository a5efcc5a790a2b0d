"""Scale (issue 16): reads that use the index's indexes, the index's copies read
back as models, and a rebuild or verify in a process pool that finds what one
process finds."""

from __future__ import annotations

import random
import sqlite3
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from statekit import Store
from statekit.models import TRUSTED, Episode

from .conftest import index_rows, statements


def rich(store: Store) -> None:
    """Episodes with every kind of nested field: approvals, errors, a lease, checkpoints, assets."""
    store.create("s", "plain", title="Plain ✓", metadata={"n": 1, "deep": {"list": [1, 2.5, None, "x"]}})
    store.create("s", "failing")
    with store.run("s", "failing", "downloading", reraise=False) as run:
        run.checkpoint({"part": 1}, cost=0.25)
        raise ConnectionError("timed out")
    store.create("t", "held", files={"audio": "a.mp3"})
    run = store.run("t", "held", "downloading", owner="worker-1", lease_seconds=600)
    run.__enter__()
    run.checkpoint({"part": 2}, cost=0.5)
    store.create("t", "asset")
    store.add_asset("t", "asset", b"audio bytes", "audio")


def test_the_index_copy_read_as_trusted_is_the_model_the_file_gives(store: Store) -> None:
    rich(store)
    listed = store.list()
    assert len(listed) == 4
    for ep in listed:
        from_file = store.get(ep.show_id, ep.episode_id)
        assert ep == from_file
        data = from_file.model_dump(mode="json")
        assert Episode.model_validate(data, context=TRUSTED) == Episode.model_validate(data)
    assert [e.key for e in store.with_errors()] == ["s/failing"]
    assert store.next("downloading") == [] or all(isinstance(e, Episode) for e in store.next("downloading"))
    assert {e.key for e in store.stuck(timedelta(0))} == {e.key for e in listed}


def test_an_untrusted_read_still_checks_ids_and_text() -> None:
    from pydantic import ValidationError

    data = {"show_id": "s", "episode_id": "bad id!", "stage": "discovered", "version": 1,
            "created_at": "2026-01-01T00:00:00Z", "updated_at": "2026-01-01T00:00:00Z",
            "stage_entered_at": "2026-01-01T00:00:00Z"}
    with pytest.raises(ValidationError):
        Episode.model_validate(data)
    with pytest.raises(ValidationError):  # types are checked even when trusted
        Episode.model_validate({**data, "version": "one"}, context=TRUSTED)


def plan(store: Store, sql: str, *args: object) -> str:
    conn = sqlite3.connect(Path(store.root, ".statekit/index.db"))
    try:
        return " | ".join(row[3] for row in conn.execute("EXPLAIN QUERY PLAN " + sql, args))
    finally:
        conn.close()


def test_queries_of_a_few_rows_read_them_through_an_index_not_the_table(store: Store) -> None:
    rich(store)
    for i in range(300):  # most rows in one stage, and statistics that say so (a scan would look cheaper)
        store.create("many", f"e{i}")
    conn = sqlite3.connect(Path(store.root, ".statekit/index.db"))
    conn.execute("ANALYZE")
    conn.close()
    # the statements the Index runs, as compiled (what SQLite plans is what runs)
    index = store.writer.index
    index.episode_data(stage="downloading")
    index.with_errors()
    index.stuck(store.writer.clock())
    index.next("downloading", 10, store.writer.clock())
    assert len(index.episode_data("many", limit=5, after=index.order_key("many", "e100"))) == 5
    assert len(index.episode_data(limit=5, after=index.order_key("many", "e100"))) == 5
    assert len(index.episode_data(stage="discovered", limit=5)) == 5  # most rows: walked in show order
    plans = {name: plan(store, stmt.sql, *stmt.params({}) or ()) for name, stmt in index.queries.items()
             if ":" in name or name == "next"}
    assert "episodes_by_stage" in plans["episodes:True:False:True:True:INDEXED BY episodes_by_stage"]
    # a page starts where it starts: a range of the show-order index, from the episode it follows
    assert "episodes_in_order (show_id=? AND (position,created_at,episode_id)>(?,?,?))" in \
        plans["episodes:False:True:False:False:None"]
    assert "episodes_in_order ((show_id,position,created_at,episode_id)>(?,?,?,?))" in \
        plans["episodes:True:True:False:False:None"]
    assert "TEMP B-TREE" not in plans["episodes:False:True:False:False:None"]  # read in order, not sorted
    # a page of the stage that holds most rows: the show-order index, no sort of the stage's rows
    assert "episodes_in_order" in plans["episodes:True:False:True:False:INDEXED BY episodes_in_order"]
    assert "TEMP B-TREE" not in plans["episodes:True:False:True:False:INDEXED BY episodes_in_order"]
    assert "episodes_with_errors" in plans["errors:True"]
    assert "episodes_by_stage" in plans["stuck:True"]
    assert "episodes_by_ready_for" in plans["next:"]  # no show paused
    for name, text in plans.items():  # a range of an index (all of the partial one: only rows with errors;
        if name.startswith("common:"):  # a walk in show order, stopped by the limit); stage_totals: a row a stage
            continue
        assert text.startswith(("SEARCH episodes USING INDEX", "SCAN episodes USING INDEX episodes_with_errors",
                                "SCAN episodes USING INDEX episodes_in_order")), (name, text)


def test_a_store_grown_by_its_creates_has_no_statistics_and_still_reads_few_rows(store: Store) -> None:
    """A store filled by ``create`` has no ANALYZE statistics (its index was made empty); an index
    an upgrade made again has lost its own. The questions of a show's marked rows and rows with
    errors still read their partial indexes, not the show's every row through ``episodes_in_order``."""
    rich(store)
    for i in range(300):
        store.create("s", f"e{i}")
    conn = sqlite3.connect(Path(store.root, ".statekit/index.db"))
    try:
        assert conn.execute("SELECT count(*) FROM sqlite_stat1 WHERE idx = 'episodes_in_order'").fetchone() == (0,)
    finally:
        conn.close()
    with statements(store.writer.index) as seen:
        assert [e.key for e in store.with_errors(show="s")] == ["s/failing"]
        assert len(store.list(show="s", limit=5, after="s/e100")) == 5
    plans = {sql: plan(store, sql) for sql in seen if sql.lstrip().startswith("SELECT")}
    errors = [p for sql, p in plans.items() if "error_count > 0" in sql]
    marked = [p for sql, p in plans.items() if "pending IS NOT NULL" in sql]
    assert errors and all("INDEX episodes_with_errors" in p for p in errors), errors
    assert marked and all("INDEX episodes_pending" in p for p in marked), marked


def test_an_upgrade_that_makes_indexes_leaves_their_statistics(tmp_path: Path) -> None:
    from alembic import command
    from alembic.config import Config

    from statekit.index.connect import migrations_dir

    store = Store.init(tmp_path / "s")
    for i in range(50):
        store.create("s", f"e{i}")
    store.rebuild_index()  # its ANALYZE: statistics of every index with rows
    config = Config()
    config.set_main_option("script_location", migrations_dir())
    with store.index.engine.connect() as conn, conn.begin():
        config.attributes["connection"] = conn
        command.downgrade(config, "0011")
    store.close()
    path = Path(store.root, ".statekit/index.db")

    def analyzed() -> set[str]:
        db = sqlite3.connect(path)
        try:
            return {idx for (idx,) in db.execute("SELECT idx FROM sqlite_stat1 WHERE tbl = 'episodes'")}
        finally:
            db.close()

    assert "episodes_in_order" not in analyzed()  # made again by 0013's downgrade, without them
    reopened = Store.open(store.root)  # upgraded to the head on open
    assert reopened.counts()["discovered"] == 50
    assert {"episodes_in_order", "episodes_by_stage", "episodes_files"} <= analyzed()
    reopened.close()


def test_the_leased_rows_are_read_through_their_partial_index(store: Store) -> None:
    """The leases gauge, recover's expired leases and gc's live runs read the few rows whose file
    records a lease (``episodes_leased``, revision 0012), not every row; and find them all."""
    from prometheus_client.parser import text_string_to_metric_families

    from statekit.signals.metrics import exposition

    rich(store)  # t/held: a run's lease of 600 s
    for i in range(300):
        store.create("many", f"e{i}")
    conn = sqlite3.connect(Path(store.root, ".statekit/index.db"))
    conn.execute("ANALYZE")
    conn.close()
    with statements(store.writer.index) as seen:
        expired = store.writer.index.expired_leases(store.writer.clock() + timedelta(seconds=601))
        live = store.queries.live_runs()
        samples = {(s.name, s.labels.get("state")): s.value
                   for f in text_string_to_metric_families(exposition(store.writer, "x").decode())
                   for s in f.samples if s.name == "statekit_leases"}
    assert expired == [("t", "held")]
    assert live == {store.get("t", "held").lease.run_id}  # type: ignore[union-attr]
    assert samples == {("statekit_leases", "live"): 1, ("statekit_leases", "expired"): 0}
    asked = [sql for sql in seen if sql.lstrip().startswith("SELECT") and "lease_expires_at" in sql
             and "ready_for" not in sql]
    assert len(asked) == 3, asked
    for sql in asked:
        assert "INDEX episodes_leased" in plan(store, sql), sql


OLD_OLDEST_WAITING = (  # the gauge's query before revision 0012: it read every ready row
    "SELECT ready_for, min(coalesce(due_at, stage_entered_at)) FROM episodes "
    "WHERE ready_for IS NOT NULL AND lease_owner IS NULL GROUP BY ready_for")


def waiting_store(store: Store, clock: list[datetime], seed: int) -> None:
    """Episodes ready for several stages, created at different times, some with a priority
    set, some held by a run (live or expired), some failed and waiting for a retry's backoff."""
    rng = random.Random(seed)
    for i in range(120):
        clock[0] += timedelta(seconds=rng.randint(1, 600))
        show, ep = f"s{i % 3}", f"e{i:03d}"
        store.create(show, ep)
        roll = rng.random()
        if roll < 0.3:
            store.advance(show, ep, "downloading")
            store.advance(show, ep, "downloaded")
        if rng.random() < 0.3:
            store.prioritize(show, ep, rng.choice([-2, 1, 5]))
        stage = "converting" if roll < 0.3 else "downloading"
        kind = rng.random()
        if kind < 0.15:  # a failed run: waits for its backoff (due_at), or gave up
            with store.run(show, ep, stage, reraise=False):
                raise ConnectionError("timed out")
        elif kind < 0.3:  # held by a run that is still going (its lease expires later, or already has)
            store.run(show, ep, stage, owner=f"w{i}", lease_seconds=rng.choice([1, 3600])).__enter__()


@pytest.mark.parametrize("seed", [1, 2])
def test_the_oldest_waiting_gauge_reads_steps_of_the_indexes_and_finds_what_every_row_gives(
        tmp_path: Path, seed: int) -> None:
    from statekit.signals.metrics import oldest_waiting

    clock = [datetime(2026, 1, 1, tzinfo=timezone.utc)]
    store = Store.init(tmp_path / "store", clock=lambda: clock[0])
    waiting_store(store, clock, seed)
    clock[0] += timedelta(seconds=30)
    db = sqlite3.connect(Path(store.root, ".statekit/index.db"))
    try:
        due, leased = db.execute("SELECT count(due_at), count(lease_owner) FROM episodes").fetchone()
        assert due and leased  # the store holds what the gauge passes over
        assert len({p for (p,) in db.execute("SELECT DISTINCT priority FROM episodes")}) > 2
        expected = {stage: datetime.fromisoformat(t.replace("Z", "+00:00"))
                    for stage, t in db.execute(OLD_OLDEST_WAITING)}
        assert len(expected) >= 2
    finally:
        db.close()
    with statements(store.writer.index) as seen, store.writer.index.reading() as conn:
        assert oldest_waiting(conn) == expected
    asked = [sql for sql in seen if sql.lstrip().startswith("SELECT")]
    assert len(asked) > 5
    for sql in asked:  # every step a range of an index: no read of every row
        text = plan(store, sql)
        assert "INDEX episodes_by_ready_for" in text or "INDEX episodes_due" in text, (sql, text)
        assert "SCAN episodes " not in text.replace("SCAN episodes USING INDEX episodes_due", ""), (sql, text)


def test_the_oldest_waiting_gauge_finds_the_same_in_postgresql(tmp_path: Path, pg_url: str) -> None:
    from sqlalchemy import text

    from statekit.signals.metrics import oldest_waiting

    clock = [datetime(2026, 1, 1, tzinfo=timezone.utc)]
    store = Store.init(tmp_path / "store", clock=lambda: clock[0], index_url=pg_url)
    waiting_store(store, clock, 3)
    with store.writer.index.reading() as conn:
        expected = {stage: at for stage, at in conn.execute(text(OLD_OLDEST_WAITING))}
        assert len(expected) >= 2
        assert oldest_waiting(conn) == expected


def busy_store(store: Store, n: int = 700) -> None:
    """Enough episodes for several chunks of a pool's work, a damaged one and a hand-set order."""
    rich(store)
    for i in range(n):
        store.create(f"show{i % 3}", f"ep{i:04d}", metadata={"i": i})
        if i % 5 == 0:
            store.advance(f"show{i % 3}", f"ep{i:04d}", "downloading", cost=0.01 * i)
    show_file = Path(store.root, "shows/show1/show.yaml")
    show_file.write_text(show_file.read_text().replace("order: []", "order: [ep0100, ep0004]"))
    Path(store.root, "shows/show2/episodes/ep0002/episode.yaml").write_text("version: [broken\n")


@pytest.mark.parametrize("fmt", ["yaml", "json"])
def test_a_rebuild_in_a_process_pool_gives_the_same_rows_as_one_process(tmp_path: Path, fmt: str) -> None:
    from statekit.index.rebuild import rebuild

    store = Store.init(tmp_path / "store", format=fmt)
    busy_store(store)
    one = rebuild(store.writer, workers=1)
    alone = index_rows(store)
    pooled = rebuild(store.writer, workers=2)
    assert index_rows(store) == alone
    assert (pooled.episodes, pooled.events, pooled.shows) == (one.episodes, one.events, one.shows)
    assert pooled.problems == one.problems and [p.episode for p in one.problems] == ["show2/ep0002"]
    assert [e.episode_id for e in store.list(show="show1")][:2] == ["ep0100", "ep0004"]


def test_verify_in_a_process_pool_reports_what_one_process_reports(store: Store) -> None:
    from statekit.index.verify import verify

    busy_store(store, 400)
    Path(store.root, "shows/show0/episodes/ep0003/events.jsonl").write_text("")  # a lost log
    episode = Path(store.root, "shows/show1/episodes/ep0004/episode.yaml")
    episode.write_text(episode.read_text().replace("title: ''", "title: edited by hand"))
    one = verify(store.writer, workers=1, full=True)
    pooled = verify(store.writer, workers=2, full=True)
    assert pooled == one
    # what the first verify remembered, used by a pool and by one process alike
    warm_pooled, warm_one = verify(store.writer, workers=2), verify(store.writer, workers=1)
    assert warm_pooled == warm_one
    assert warm_one.problems == one.problems and warm_one.unchanged == one.checked - len({p.episode for p in one.problems})
    assert (warm_one.checked, warm_one.checkpoints, warm_one.backups, warm_one.assets) == \
        (one.checked, one.checkpoints, one.backups, one.assets)
    assert {p.episode for p in one.problems} >= {"show2/ep0002", "show0/ep0003", "show1/ep0004"}
    assert one.checked == 404 and one.assets == 1
