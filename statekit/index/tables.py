"""The index's tables: the SQL contract users query, plus what statekit needs.

Contract (DESIGN.md, changed only through an Alembic revision): table
``episodes`` (show_id, episode_id, title, stage, version, created_at,
updated_at, cost_total, attempts_total, error_count, path), table ``events``
(id, show_id, episode_id, version, at, kind, from_stage, to_stage, message,
cost, stage), table ``shows``, view ``stage_counts`` (show_id, stage, n).

Timestamps are UTC. In SQLite they are ISO-8601 text with microseconds and a
``Z`` (``2026-11-21T15:52:01.010035Z``), which sorts correctly and works with
``julianday()``; in PostgreSQL they are ``timestamptz``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB, TIMESTAMP
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator, TypeEngine

from .rows import from_iso, iso


class UTCTime(TypeDecorator[datetime]):
    """A UTC timestamp: fixed-width ISO text in SQLite, timestamptz elsewhere."""

    impl = String(32)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "postgresql":
            return dialect.type_descriptor(TIMESTAMP(timezone=True))
        return dialect.type_descriptor(String(32))

    def process_bind_param(self, value: Any, dialect: Dialect) -> Any:
        if value is None or dialect.name == "postgresql":
            return value
        return value if isinstance(value, str) else iso(value)

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None or isinstance(value, datetime):
            return value
        return from_iso(value)


class Document(TypeDecorator[Any]):
    """A JSON document (an episode's file data, an event line): JSONB in
    PostgreSQL, JSON text in SQLite (``json_extract`` works on it)."""

    impl = JSON
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "postgresql":
            return dialect.type_descriptor(JSONB())
        return dialect.type_descriptor(JSON())


Id = String(128)
metadata = MetaData()


def file_state() -> list[Column[Any]]:
    """What sync compares against the file a row was made from."""
    return [
        Column("file_size", BigInteger, nullable=False),
        Column("file_mtime_ns", BigInteger, nullable=False),
        Column("file_sha256", String(64), nullable=False),
        Column("checked_at_ns", BigInteger, nullable=False),
    ]


shows = Table(
    "shows",
    metadata,
    Column("show_id", Id, primary_key=True),
    Column("title", Text, nullable=False),
    Column("created_at", UTCTime),
    Column("updated_at", UTCTime),
    Column("path", Text, nullable=False),
    Column("data", Document, nullable=False),
    *file_state(),
)

episodes = Table(
    "episodes",
    metadata,
    Column("show_id", Id, primary_key=True),
    Column("episode_id", Id, primary_key=True),
    Column("title", Text, nullable=False),
    Column("stage", Id, nullable=False),
    Column("version", Integer, nullable=False),
    Column("created_at", UTCTime, nullable=False),
    Column("updated_at", UTCTime, nullable=False),
    Column("cost_total", Float, nullable=False),
    Column("attempts_total", Integer, nullable=False),
    Column("error_count", Integer, nullable=False),
    Column("path", Text, nullable=False),
    # beyond the contract: statekit's own queries
    Column("position", Integer, nullable=False),
    Column("stage_entered_at", UTCTime, nullable=False),
    Column("previous_stage", Id),
    Column("ready_for", Id),
    Column("message", Text),
    Column("costs", Document, nullable=False),
    Column("data", Document, nullable=False),
    *file_state(),
    # "episode|size|mtime_ns" once the file was checked long enough after it
    # changed that its stat can be trusted (sync compares it with one lstat)
    Column("file_stamp", String(200)),
    # revision 0002: stage runs (who holds the episode until when, and when a retry is due)
    Column("lease_owner", Text),
    Column("lease_expires_at", UTCTime),
    Column("due_at", UTCTime),
    # revision 0009: a pending hand edit of the file ({"fields": [...]} or, unreadable,
    # {"fields": null, "error": "..."}); NULL when the file is what the log committed.
    # The row itself holds the committed version. Rebuild and sync fill it; every write clears it.
    Column("pending", Document),
    # what sync reads for every episode, without touching the rows' JSON
    Index("episodes_files", "show_id", "episode_id", "file_stamp"),
    # revision 0007: list(stage=) and stuck() read the rows of a stage, not the store
    # (an advance moves the row between stages: one entry out, one in)
    Index("episodes_by_stage", "stage", "stage_entered_at"),
    # revision 0007: with_errors() reads only the rows with errors (no entry for the others)
    Index("episodes_with_errors", "updated_at", sqlite_where=text("error_count > 0"),
          postgresql_where=text("error_count > 0")),
    # revision 0008: the episode's priority (claims and next() take higher first)
    Column("priority", Integer, nullable=False, server_default=text("0")),
    # revision 0009: the few rows with a pending edit (no entry for the others: a write pays nothing)
    Index("episodes_pending", "show_id", "episode_id", sqlite_where=text("pending IS NOT NULL"),
          postgresql_where=text("pending IS NOT NULL")),
    # revision 0012: the few rows whose file records a run's lease (the leases gauge, recover's
    # expired leases, gc's live runs), and those waiting for a retry's backoff (the oldest-waiting
    # gauge); no entry for the others: a write outside a run or a backoff pays nothing
    Index("episodes_leased", "lease_expires_at", sqlite_where=text("lease_expires_at IS NOT NULL"),
          postgresql_where=text("lease_expires_at IS NOT NULL")),
    Index("episodes_due", "due_at", sqlite_where=text("due_at IS NOT NULL"),
          postgresql_where=text("due_at IS NOT NULL")),
)
# what next() and claims ask (revision 0008: priority first); every other index costs each write a page more
Index("episodes_by_ready_for", episodes.c.ready_for, episodes.c.priority.desc(), episodes.c.stage_entered_at)
# revision 0010: list() in show order, a page at a time (``limit``, ``after``): each page found at
# once, however deep. A create adds an entry; a write leaves it alone (its columns never change
# there: ``db.KEPT_INDEXED``), as it does when show.yaml's hand-set order moves an episode.
# Revision 0013: with the title, the dashboard's search reads the index, not every row
Index("episodes_in_order", episodes.c.show_id, episodes.c.position, episodes.c.created_at, episodes.c.episode_id,
      episodes.c.title)

events = Table(
    "events",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("show_id", Id, nullable=False),
    Column("episode_id", Id, nullable=False),
    Column("version", Integer, nullable=False),
    Column("at", UTCTime, nullable=False),
    Column("kind", String(64), nullable=False),
    Column("from_stage", Id),
    Column("to_stage", Id),
    Column("message", Text),
    Column("cost", Float),
    Column("data", Document, nullable=False),
    # revision 0005: for an event with a cost, the stage the money was spent in (after data,
    # where adding the column puts it, so a rebuilt index and an upgraded one have one layout)
    Column("stage", Id),
    UniqueConstraint("show_id", "episode_id", "version", name="events_one_per_version"),
)

# Per show and stage: how many episodes are there now, and what the stage
# has cost so far. Kept in step with ``episodes`` inside the same
# transaction, so counts and cost questions stay O(stages) on a million rows.
stage_totals = Table(
    "stage_totals",
    metadata,
    Column("show_id", Id, primary_key=True),
    Column("stage", Id, primary_key=True),
    Column("episodes", Integer, nullable=False),
    Column("cost", Float, nullable=False),
)

# revision 0011: how many runs ended, per show, stage, kind of end ('finish', or a failure:
# ``RUN_FAILED``) and error kind ('' for a finish): the events of those kinds counted as
# ``run_totals_select`` counts them. The write path adds each run's end with its event
# (``run_end_added``, from the row just written); the database's own triggers
# (``run_totals_ddl``) take off what an update or a delete of an event row removes; a rebuild's
# chunks count them with their events. A metrics scrape reads a few rows, not every event. A row that
# falls to 0 stays: its rows of more than 0 are exactly that count (``verify`` checks it).
run_totals = Table(
    "run_totals",
    metadata,
    Column("show_id", Id, primary_key=True),
    Column("stage", Id, primary_key=True),
    Column("kind", String(64), primary_key=True),
    Column("error_kind", Text, primary_key=True),
    Column("runs", Integer, nullable=False),
)

RUN_FAILED = ("fail", "recovered")
"""The events' kinds that end a run in failure (``finish`` ends one that succeeded)."""
RUN_ENDS = frozenset(("finish", *RUN_FAILED))
_RUN_KINDS = "('finish', 'fail', 'recovered')"
_RUN_COLUMNS = "(show_id, stage, kind, error_kind, runs)"


def _run_key(row: str, dialect: str) -> str:
    """The stage, kind and error kind ``run_totals`` counts an event ``row`` under (SQL)."""
    field = (lambda name: f"{row}.data ->> '{name}'") if dialect == "postgresql" else \
        (lambda name: f"json_extract({row}.data, '$.{name}')")
    return (f"coalesce({row}.from_stage, {field('run_stage')}, 'unknown'), {row}.kind, "
            f"CASE WHEN {row}.kind = 'finish' THEN '' ELSE coalesce({field('error_kind')}, 'unknown') END")


def run_totals_select(dialect: str) -> str:
    """Every run's end in ``events`` counted: what ``run_totals`` holds."""
    return (f"SELECT e.show_id, {_run_key('e', dialect)}, count(*) FROM events AS e "
            f"WHERE e.kind IN {_RUN_KINDS} GROUP BY 1, 2, 3, 4")


def run_end_added(dialect: str) -> str:
    """The statement (parameters ``:s``, ``:e``, ``:v``) that counts the event row of that episode
    and version if it ends a run: the write path's, right after it writes the row."""
    plus = "run_totals.runs + 1" if dialect == "postgresql" else "runs + 1"
    return (f"INSERT INTO run_totals {_RUN_COLUMNS} SELECT e.show_id, {_run_key('e', dialect)}, 1 FROM events AS e "
            f"WHERE e.show_id = :s AND e.episode_id = :e AND e.version = :v AND e.kind IN {_RUN_KINDS} "
            f"ON CONFLICT (show_id, stage, kind, error_kind) DO UPDATE SET runs = {plus}")


def run_totals_ddl(dialect: str) -> list[str]:
    """The statements that take a run's end off ``run_totals`` when its event row is updated
    (the write path's upsert then adds the new row's) or deleted: a trigger in SQLite for each;
    one plpgsql function and trigger in PostgreSQL, bound to the schema it is made in. (No
    trigger on insert: one costs every event written, a run's end or not, about 4 us in SQLite;
    and short ones, as every new SQLite connection parses them.)"""
    take = (f"UPDATE run_totals SET runs = runs - 1 WHERE show_id = OLD.show_id AND (stage, kind, error_kind) = "
            f"({_run_key('OLD', dialect)});")
    if dialect == "postgresql":
        return [
            "CREATE FUNCTION run_totals_follow() RETURNS trigger LANGUAGE plpgsql SET search_path FROM CURRENT AS "
            f"$$ BEGIN IF OLD.kind IN {_RUN_KINDS} THEN {take} END IF; RETURN NULL; END $$",
            "CREATE TRIGGER run_totals_follow AFTER UPDATE OR DELETE ON events "
            "FOR EACH ROW EXECUTE FUNCTION run_totals_follow()",
        ]
    return [f"CREATE TRIGGER run_totals_{when} AFTER {when.upper()} ON events WHEN OLD.kind IN {_RUN_KINDS} "
            f"BEGIN {take} END" for when in ("update", "delete")]


def fill_run_totals(conn: Any) -> None:
    """``run_totals`` counted again from ``events`` (a rebuild's, after its events are in;
    the upgrade to 0011)."""
    conn.exec_driver_sql("DELETE FROM run_totals")
    conn.exec_driver_sql(f"INSERT INTO run_totals {_RUN_COLUMNS} "
                         f"{run_totals_select(conn.dialect.name)}")


def run_totals_drift(conn: Any) -> int:
    """How many rows of ``run_totals`` differ from the events counted again (``verify``)."""
    rows = "SELECT show_id, stage, kind, error_kind, runs FROM run_totals WHERE runs <> 0"
    kept, counted = ({tuple(r[:4]): r[4] for r in conn.exec_driver_sql(sql)}
                     for sql in (rows, run_totals_select(conn.dialect.name)))
    return sum(1 for key in kept.keys() | counted.keys() if kept.get(key) != counted.get(key))


# revision 0004: one row per value of a unique metadata key (``unique:`` in
# statekit.yaml), so a write finds who else holds a value with one lookup.
# Not a UNIQUE constraint: the index mirrors the files, duplicates included.
unique_values = Table(
    "unique_values",
    metadata,
    Column("key", String(128), primary_key=True),
    Column("value_sha256", String(64), primary_key=True),
    Column("show_id", Id, primary_key=True),
    Column("episode_id", Id, primary_key=True),
    Index("unique_values_by_episode", "show_id", "episode_id"),
)

# The keys ``unique_values`` holds rows for: the store's ``unique:`` when the
# rows were derived (opening a store whose list changed derives them again).
unique_keys = Table(
    "unique_keys",
    metadata,
    Column("key", String(128), primary_key=True),
)

# statekit's notes about the index itself (revision 0005): ``rows_revision``
# names the derivation its rows were made by (``ROWS_REVISION``).
index_meta = Table(
    "index_meta",
    metadata,
    Column("key", String(64), primary_key=True),
    Column("value", Text, nullable=False),
)

# revision 0006: live leases of stage runs, coordination state rather than a
# mirror of the files. A run takes its row before it writes its start to the
# episode file, renews it in the background (no file write), and deletes it
# when it ends; ``expires_at`` is judged by the database's clock. A rebuild
# keeps the rows, and gives one to each live lease a file records without one.
leases = Table(
    "leases",
    metadata,
    Column("show_id", Id, primary_key=True),
    Column("episode_id", Id, primary_key=True),
    Column("run_id", String(64), nullable=False),
    Column("owner", Text, nullable=False),
    Column("stage", Id, nullable=False),
    Column("lease_seconds", Float, nullable=False),
    Column("expires_at", UTCTime, nullable=False),
)

# revision 0008: when runs of a stage with a ``rate`` limit started, by the
# database's clock: a claim counts the rows in the limit's sliding window.
# Coordination state like ``leases`` (a rebuild refills it from the start
# events the files record; ``index/rebuild``); rows older than the window are
# pruned by the claims.
run_starts = Table(
    "run_starts",
    metadata,
    Column("run_id", String(64), primary_key=True),
    Column("stage", Id, nullable=False),
    Column("started_at", UTCTime, nullable=False),
    Column("show_id", Id, nullable=False),
    Column("episode_id", Id, nullable=False),
    Index("run_starts_by_stage", "stage", "started_at"),
)

STAGE_COUNTS_VIEW = (
    "CREATE VIEW stage_counts AS "
    "SELECT show_id, stage, episodes AS n FROM stage_totals WHERE episodes > 0"
)

INDEX_REVISION = "0013"
"""The Alembic head revision this code writes; a test keeps it equal to the
head in migrations/versions (checked on every open without loading Alembic)."""

ROWS_REVISION = "0009.1"  # events.data without the ledger's doc and patch (0009 added ``pending``)
"""The latest revision that changed how rows are derived from the files (a
column added and filled from them, or computed differently). An index whose
rows were derived by another one (its ``index_meta`` says so, or says
nothing: an upgrade by Alembic alone changes the tables, not the rows) is
rebuilt from the files when a store opens it. (0007: ``position`` holds only
show.yaml's hand-set order; the other episodes are ``UNLISTED``. 0008: ``pending``, filled
from the files and their logs.)"""
