"""The index on a PostgreSQL server: the same code through SQLAlchemy, every
engine-specific statement in statekit/index/dialect.py.

Needs STATEKIT_TEST_PG_URL (e.g. postgresql+psycopg://postgres@127.0.0.1:5432/test;
.ci/run sets it). Each test works in a schema of its own.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from statekit import IndexUnavailableError, QueryError, Store
from statekit.index import Index, engine_for, episode_row, event_row, show_row
from statekit.index.connect import alembic_upgrade, rows_revision
from statekit.index.rebuild import rebuild
from statekit.index.tables import ROWS_REVISION
from statekit.pipeline import ARCHIVE

URL = os.environ.get("STATEKIT_TEST_PG_URL")
pytestmark = pytest.mark.skipif(not URL, reason="STATEKIT_TEST_PG_URL is not set (.ci/run sets it)")


@pytest.fixture
def pg() -> Iterator[Index]:
    assert URL is not None
    schema = "statekit_test_" + uuid.uuid4().hex[:10]
    admin = engine_for(URL)
    with admin.begin() as conn:
        conn.exec_driver_sql(f"CREATE SCHEMA {schema}")
    engine = engine_for(URL, connect_args={"options": f"-csearch_path={schema}"})
    with engine.connect() as conn, conn.begin():
        alembic_upgrade(conn)
    index = Index(engine, ARCHIVE)
    try:
        yield index
    finally:
        index.close()
        with admin.begin() as conn:
            conn.exec_driver_sql(f"DROP SCHEMA {schema} CASCADE")
        admin.dispose()


def episode(store: Store, show: str, ep: str) -> dict:
    model = store.get(show, ep)
    return episode_row(model, model.model_dump(mode="json"), ARCHIVE, path=f"shows/{show}/episodes/{ep}",
                       size=100, mtime_ns=1, sha256="0" * 64, checked_at_ns=3_000_000_001, position=None)


def test_writes_queries_and_totals(pg: Index, store: Store) -> None:
    for ep in ("a", "b", "c"):
        store.create("s", ep)
    store.advance("s", "a", "downloading", cost=1.5)
    store.advance("s", "b", "skipped", cost=0.25)
    rows = [episode(store, "s", ep) for ep in ("a", "b", "c")]
    events = [event_row(e.model_dump(mode="json", exclude_none=True)) for ep in ("a", "b", "c")
              for e in store.events("s", ep)]
    now = datetime.now(timezone.utc).isoformat()
    pg.write(rows=rows, event_rows=events, show_rows=[show_row(
        {"show_id": "s", "title": "Show S", "created_at": now, "updated_at": now}, path="shows/s/show.yaml",
        size=1, mtime_ns=1, sha256="0" * 64, checked_at_ns=1)])
    assert pg.counts()["discovered"] == 1 and pg.counts()["downloading"] == 1
    assert pg.costs(by="stage") == {"discovered": 1.75}
    assert pg.costs(by="show") == {"s": 1.75}
    now = datetime.now(timezone.utc)
    # a waits in its run stage (moved there by hand), c waits to enter it
    assert [d["episode_id"] for d in pg.next("downloading", 10, now)] == ["c", "a"]
    with store.run("s", "a", "downloading", lease_seconds=60):  # leased: not handed out until it expires
        pg.write(rows=[episode(store, "s", "a")])
        assert [d["episode_id"] for d in pg.next("downloading", 10, now)] == ["c"]
        assert [d["episode_id"] for d in pg.next("downloading", 10, now + timedelta(seconds=61))] == ["c", "a"]
        assert pg.expired_leases(now + timedelta(seconds=61)) == [("s", "a")] and pg.expired_leases(now) == []
    pg.write(rows=[episode(store, "s", "a")])
    assert [d["episode_id"] for d in pg.episode_data(show="s")] == ["a", "b", "c"]
    status = pg.status()
    assert status[0]["title"] == "Show S" and status[0]["completion"] == round(100 / 3, 1)
    # a second write of the same episode moves the totals, not adds to them
    store.advance("s", "c", "downloading")
    pg.write(rows=[episode(store, "s", "c")])
    assert pg.counts()["downloading"] == 1 and pg.counts()["discovered"] == 0 and pg.counts()["downloaded"] == 1
    pg.write(removed=[("s", "b")], positions=("s", ["c", "a"]))
    assert [d["episode_id"] for d in pg.episode_data()] == ["c", "a"]
    assert pg.counts()["skipped"] == 0 and pg.costs(by="stage") == {"discovered": 1.5}
    ids, stamps = pg.file_stamps()["s"]
    assert ids == {"a", "c"} and stamps == {"a|100|1", "c|100|1"}


def test_sql_is_read_only_on_the_server_too(pg: Index, store: Store) -> None:
    store.create("s", "a")
    pg.write(rows=[episode(store, "s", "a")])
    columns, rows = pg.sql("SELECT COUNT(*) AS n FROM episodes")
    assert columns == ["n"] and rows == [(1,)]
    with pytest.raises(QueryError) as caught:  # the server's read-only transaction refuses it
        pg.sql("DELETE FROM episodes")
    assert caught.value.reason == "write"
    assert pg.sql("SELECT COUNT(*) AS n FROM episodes")[1] == [(1,)]


def test_a_failed_write_is_an_index_error_and_leaves_no_half(pg: Index, store: Store) -> None:
    store.create("s", "a")
    row = episode(store, "s", "a")
    bad = event_row(store.events("s", "a")[0].model_dump(mode="json", exclude_none=True))
    bad["kind"] = None  # the database refuses it (NOT NULL)
    with pytest.raises(IndexUnavailableError):
        pg.write(rows=[row], event_rows=[bad])
    assert pg.counts()["discovered"] == 0  # the episode row of the same transaction was rolled back
    pg.write(rows=[row])
    assert pg.counts()["discovered"] == 1


def test_rebuild_fills_a_server_index_from_the_files(pg: Index, tmp_path: Path) -> None:
    store = Store.init(tmp_path / "files")
    for ep in ("x", "y"):
        store.create("show", ep)
    store.advance("show", "y", "downloading", cost=2.0)
    report = rebuild(store.writer, index=pg)
    assert (report.episodes, report.events, report.problems) == (2, 3, [])
    assert pg.counts()["downloading"] == 1 and pg.costs(by="stage") == {"discovered": 2.0}
    assert rebuild(store.writer, index=pg).episodes == 2  # again: replaced, not doubled
    assert pg.counts()["discovered"] == 1
    assert pg.sql("SELECT stage, cost FROM events WHERE cost IS NOT NULL")[1] == [("discovered", 2.0)]
    with pg.engine.connect() as conn:  # the rows are marked as this code's: no rebuild on the next open
        assert rows_revision(conn) == ROWS_REVISION


def test_unique_values_on_the_server(pg: Index, tmp_path: Path) -> None:
    store = Store.init(tmp_path / "files", unique=["archive_identifier"])
    store.create("s", "a", metadata={"archive_identifier": "x"})
    store.create("s", "b", metadata={"archive_identifier": 1.0})
    unique = Index(pg.engine, ARCHIVE, unique=["archive_identifier"])
    assert unique.refresh_unique() is True and unique.refresh_unique() is False  # only while the keys differ
    report = rebuild(store.writer, index=unique)
    assert report.problems == [] and unique.unique_current()
    from statekit.unique import claims

    def holders(value: object) -> list[tuple[str, str]]:
        (claim,) = claims(["archive_identifier"], {"archive_identifier": value})
        return unique.holders("archive_identifier", claim.sha256)

    assert holders("x") == [("s", "a")] and holders(1) == [("s", "b")] and holders("y") == []
    store.update("s", "a", metadata={"archive_identifier": "y"})
    unique.write(rows=[episode(store, "s", "a")])
    assert holders("x") == [] and holders("y") == [("s", "a")]
    unique.write(removed=[("s", "a")])
    assert holders("y") == []
    # another key list: the values are derived again from the rows, in one transaction
    other = Index(pg.engine, ARCHIVE, unique=[])
    assert other.refresh_unique() is True and holders(1) == [] and unique.unique_current() is False


def test_pages_in_show_order_on_the_server(pg: Index, tmp_path: Path) -> None:
    """The row-value comparison a page starts with (``list(limit=, after=)``) in PostgreSQL's own terms."""
    store = Store.init(tmp_path / "files")
    for show in ("b", "a"):
        for i in range(7):
            store.create(show, f"e{i}")
    rebuild(store.writer, index=pg)
    pg.write(positions=("b", ["e5", "e2"]))  # a hand-set order first, then by creation
    whole = [(d["show_id"], d["episode_id"]) for d in pg.episode_data()]
    assert whole[:9] == [("a", f"e{i}") for i in range(7)] + [("b", "e5"), ("b", "e2")]
    for show in (None, "b"):
        expected = [k for k in whole if show is None or k[0] == show]
        found: list[tuple[str, str]] = []
        after = None
        while page := [(d["show_id"], d["episode_id"]) for d in
                       pg.episode_data(show, "discovered", limit=3, after=after and pg.order_key(*after))]:
            found += page
            after = page[-1]
        assert found == expected
