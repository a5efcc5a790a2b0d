"""``rebuild``: a fresh database built from the files alone, swapped in at once
(readers see the old index or the new one, never a half-built one).
"""

from __future__ import annotations

import logging
import os
from collections import defaultdict
from collections.abc import Callable
from operator import itemgetter
from typing import TYPE_CHECKING, Any

from sqlalchemy import inspect
from sqlalchemy.engine import Connection
from sqlalchemy.exc import SQLAlchemyError

from .. import files as diskio
from ..errors import (
    CorruptFileError,
    SchemaVersionError,
    StatekitError,
    StorageError,
    UnsafePathError,
    ValidationError,
)
from .db import Index, create_schema, engine_for
from .dialect import (
    WRITE,
    Compiled,
    database_path,
    finish_build,
    replace_database,
    sqlite_url,
)
from .leases import LeaseTable
from .leases import kept as leases_kept
from .leases import restore as restore_leases
from .pool import ordered_map, workers_for
from .rows import EVENT_COLUMNS, UNLISTED, claim_rows, json_text, pending_text, totals_delta
from .scan import (
    REBUILD_BATCH,
    Problem,
    RebuildReport,
    committed_rows,
    dirs,
    episode_file,
    episode_folders,
    problem,
    rows_for,
    show_order,
    show_record,
)
from .tables import (
    INDEX_REVISION,
    ROWS_REVISION,
    index_meta,
    metadata,
    stage_totals,
    unique_keys,
    unique_values,
)
from .tables import episodes as episodes_table
from .tables import leases as leases_table

if TYPE_CHECKING:
    from ..writes import Writer

log = logging.getLogger("statekit")

Progress = Callable[[int, int], None]
"""progress(done, total): called as a long operation goes."""

REBUILD_WAIT_S = 600.0
"""How long a rebuild waits for another process's rebuild of the same index."""


def index_lock(writer: Writer) -> Any:
    return writer.locks.index(max(REBUILD_WAIT_S, writer.config.lock_timeout))


def has_tables(conn: Connection) -> bool:
    return bool(inspect(conn).get_table_names())


def stamp_revision(conn: Connection) -> None:
    """Mark a database made by ``create_schema`` as at the head revision, its rows derived by this code."""
    conn.exec_driver_sql("CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL PRIMARY KEY)")
    conn.exec_driver_sql(f"INSERT INTO alembic_version VALUES ('{INDEX_REVISION}')")
    mark_rows_derived(conn)


def mark_rows_derived(conn: Connection) -> None:
    conn.execute(index_meta.delete().where(index_meta.c.key == "rows_revision"))
    conn.execute(index_meta.insert().values(key="rows_revision", value=ROWS_REVISION))


# --- rebuild ----------------------------------------------------------------------


def rebuild(writer: Writer, progress: Progress | None = None, *, index: Index | None = None,
            workers: int | None = None) -> RebuildReport:
    """Build a fresh index from the files alone, then swap it in at once.
    ``workers``: processes parsing the files (None: the cores, for a large store)."""
    index = index or writer.index
    report = RebuildReport()
    with index_lock(writer):
        rebuild_locked(writer, index, progress, report, workers)
    return report


def rebuild_locked(writer: Writer, index: Index, progress: Progress | None, report: RebuildReport,
                   workers: int | None = None) -> None:
    target = database_path(index.engine)
    if target is None:  # a server database: rebuild in one transaction (the live leases stay)
        with index.engine.connect().execution_options(**WRITE) as conn, conn.begin():
            for table in metadata.sorted_tables:
                if table is not leases_table:
                    conn.execute(table.delete())
            _fill(writer, conn, report, progress, workers)
            restore_leases(conn, (), writer.clock())
            mark_rows_derived(conn)
        return
    built = f"{target}.build-{os.getpid()}"
    for leftover in (built, built + "-wal", built + "-shm", built + "-journal"):
        if os.path.lexists(leftover):  # a dangling symlink too: SQLite would create its target
            os.unlink(leftover)
    engine = engine_for(sqlite_url(built), scratch=True)
    try:
        with engine.connect() as conn:
            with conn.begin():
                create_schema(conn)
                stamp_revision(conn)
            with conn.begin():
                _fill(writer, conn, report, progress, workers)
            with conn.begin():  # read last, so that few renewals or claims fall between this and the swap
                restore_leases(conn, old_leases(index), writer.clock())
        finish_build(engine)
    finally:
        engine.dispose()
    index.close()  # its connections reopen on the new content
    replace_database(target, built)


def old_leases(index: Index) -> list[dict[str, Any]]:
    """The lease rows of the index being replaced (none if it cannot be read)."""
    try:
        with index.engine.connect() as conn:
            if not inspect(conn).has_table("leases"):  # a new or an emptied index: nothing to keep
                return []
            rows = leases_kept(conn)
            conn.rollback()
            return rows
    except SQLAlchemyError as exc:  # a damaged or missing index: the files' leases count
        log.warning("statekit: the old index's leases could not be read (%s); the files' leases count",
                    " ".join(str(exc).split()))
        return []


def _fill(writer: Writer, conn: Connection, report: RebuildReport, progress: Progress | None,
          workers: int | None = None) -> None:
    found = list(episode_folders(writer.root))  # each worker looks for its folders' files (lstat is a cost)
    total = len(found)
    deltas: dict[tuple[str, str], list[float]] = defaultdict(lambda: [0, 0.0])
    rows: list[tuple[Any, ...]] = []
    event_rows: list[tuple[Any, ...]] = []
    show_rows = []
    claims: list[dict[str, Any]] = []
    order: dict[str, dict[str, int]] = {}
    for show in dirs(os.path.join(writer.root, "shows")):  # every show, with or without episodes
        try:
            listed, data, raw = show_order(writer, show)
            show_rows.append(show_record(writer, show, data, raw))
        except (StatekitError, ValueError) as exc:
            listed = {}
            error = exc if isinstance(exc, StatekitError) else ValidationError(str(exc))
            report.problems.append(problem(error, os.path.join(writer.root, "shows", show, "show.yaml"), None))
            show_rows.append(show_record(writer, show, None, None))
        order[show] = listed  # the hand-set order's positions (the rest are UNLISTED)
    keys = writer.config.unique
    pick = itemgetter(*EPISODE_COLUMNS)
    inserts = (bulk(conn, "episodes"), bulk(conn, "events"))  # compiled once (each costs milliseconds)

    def rows_of(item: tuple[str, str, str]) -> Any:
        """One folder's rows as tuples ready to insert (JSON as text), or its problem, or None
        (no episode file). (Run in a pool's worker for a large store: what it returns is
        pickled, so plain tuples.)"""
        show, ep, base = item
        located = episode_file(base)
        if located is None:
            return None
        path, st = located
        pending: list[str] = []
        failure = None
        try:  # one damaged episode (or a fifo, a symlink where its file should be) is reported, not fatal
            raw = diskio.read_file(path)
            if raw is None:
                return None
            row, lines, _model = rows_for(writer, show, ep, path, raw, st, None, pending=pending, values=True)
        except (CorruptFileError, ValidationError, SchemaVersionError, UnsafePathError, StorageError) as exc:
            failure = problem(exc, path, f"{show}/{ep}")
            found_committed = committed_rows(writer, show, ep, path, st, exc.one_line(),  # a chained log knows it
                                             values=True)
            if found_committed is None:
                return failure
            row, lines, _model = found_committed
            pending.append(f"{show}/{ep}")
        claimed = claim_rows(keys, show, ep, row["data"])
        stage, costs = row["stage"], row["costs"]  # (the model's: ``episode_row``)
        row["data"], row["costs"] = json_text(row["data"]), json_text(costs)
        row["pending"] = pending_text(row["pending"])
        row["position"] = order.get(show, {}).get(ep, UNLISTED)
        try:
            values = pick(row)
        except KeyError:  # a row without some column: it is NULL
            values = tuple(row.get(c) for c in EPISODE_COLUMNS)
        return values, lines, claimed, stage, costs, bool(pending), failure

    for done, ((show, ep, _base), result) in enumerate(
            zip(found, ordered_map(rows_of, found, workers_for(total, workers))), 1):
        if result is None:
            continue
        if isinstance(result, Problem):
            report.problems.append(result)
            continue
        values, lines, claimed, stage, costs, is_pending, failure = result
        if failure is not None:  # reported, and indexed as the committed version its log rebuilds
            report.problems.append(failure)
        if is_pending:
            report.pending.append(f"{show}/{ep}")
        rows.append(values)
        event_rows.extend(lines)
        if claimed:
            claims.extend(claimed)
        totals_delta(deltas, show, None, (stage, costs))
        if len(rows) >= REBUILD_BATCH:
            flush(conn, rows, event_rows, report, inserts)
        if progress is not None:
            progress(done, total)
    flush(conn, rows, event_rows, report, inserts)
    if show_rows:
        conn.execute(shows_insert(), show_rows)
    report.shows = len(show_rows)
    totals = [{"show_id": s, "stage": st, "episodes": int(d[0]), "cost": d[1]} for (s, st), d in deltas.items()]
    if totals:
        conn.execute(stage_totals.insert(), totals)
    if writer.config.unique:
        conn.execute(unique_keys.insert(), [{"key": k} for k in writer.config.unique])
    if claims:
        conn.execute(unique_values.insert(), claims)
    windows = {stage: limit.window[1] for stage, limit in writer.config.limits.items() if limit.window is not None}
    if windows:  # the rate limits' windows, from the start events (the table is coordination state)
        LeaseTable(conn.engine).refill_starts(conn, windows, writer.clock())


def shows_insert() -> Any:
    from .tables import shows as show_table

    return show_table.insert()


EPISODE_COLUMNS = tuple(c.name for c in episodes_table.columns)
"""The episodes columns in the order of a rebuild's row tuples."""


def flush(conn: Connection, rows: list[tuple[Any, ...]], event_rows: list[tuple[Any, ...]],
          report: RebuildReport, inserts: tuple[Compiled, Compiled] | None = None) -> None:
    """Insert a batch of row tuples (``EPISODE_COLUMNS``, ``EVENT_COLUMNS``) whose JSON
    columns are text already, through the raw cursor (SQLAlchemy's per-row work would
    cost more than SQLite's)."""
    cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
    if rows:
        insert = inserts[0] if inserts else bulk(conn, "episodes")
        cursor.executemany(insert.sql, arranged(insert, EPISODE_COLUMNS, rows))
        report.episodes += len(rows)
    if event_rows:
        insert = inserts[1] if inserts else bulk(conn, "events")
        cursor.executemany(insert.sql, arranged(insert, EVENT_COLUMNS, event_rows))
        report.events += len(event_rows)
    rows.clear()
    event_rows.clear()


def arranged(insert: Compiled, columns: tuple[str, ...], rows: list[tuple[Any, ...]]) -> Any:
    """Row tuples (in ``columns`` order) as the statement's parameters: as they are
    when the statement takes those columns in that order (SQLite's), else rearranged."""
    if insert.order is not None and not insert.fixed and insert.order == columns:
        return rows
    if insert.order is not None and not insert.fixed and set(insert.order) <= set(columns):
        pick = itemgetter(*(columns.index(c) for c in insert.order))
        return [pick(r) for r in rows]
    return [insert.params(dict(zip(columns, r))) for r in rows]


def bulk(conn: Connection, table: str) -> Compiled:
    from sqlalchemy import bindparam

    from .tables import metadata

    target = metadata.tables[table]
    stmt = target.insert().values({c.name: bindparam(c.name) for c in target.columns if c.name != "id"})
    return Compiled(stmt, conn.engine)


