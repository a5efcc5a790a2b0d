"""``rebuild``: a fresh database built from the files alone, swapped in at once
(readers see the old index or the new one, never a half-built one).
"""

from __future__ import annotations

import logging
import os
from collections import defaultdict
from collections.abc import Callable, Sequence
from operator import itemgetter
from typing import TYPE_CHECKING, Any

import orjson
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
from .db import Index, add_triggers, create_schema, engine_for
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
from .pool import ordered_chunks, workers_for
from .rows import EVENT_COLUMNS, UNLISTED, claim_rows, json_text, pending_text
from .scan import (
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
    RUN_ENDS,
    fill_run_totals,
    index_meta,
    metadata,
    run_totals,
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

REBUILD_CHUNK = 256
"""Episode folders a rebuild hands a worker at a time (their rows inserted at once)."""


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
            # the run totals are counted by the fill, not by the trigger for each row deleted (it is off
            # in this transaction only; that takes a lock that lets readers read)
            conn.exec_driver_sql("ALTER TABLE events DISABLE TRIGGER run_totals_follow")
            for table in metadata.sorted_tables:
                if table is not leases_table:
                    conn.execute(table.delete())
            leased = _fill(writer, conn, report, progress, workers)
            conn.exec_driver_sql("ALTER TABLE events ENABLE TRIGGER run_totals_follow")
            restore_leases(conn, (), writer.clock(), leased)
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
                create_schema(conn, triggers=False)  # (no trigger runs for each event inserted)
                stamp_revision(conn)
            with conn.begin():
                leased = _fill(writer, conn, report, progress, workers, built)
                add_triggers(conn)
            with conn.begin():  # read last, so that few renewals or claims fall between this and the swap
                restore_leases(conn, old_leases(index), writer.clock(), leased)
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
          workers: int | None = None, built: str | None = None) -> list[tuple[str, str]]:
    """The rows of every file into ``conn``'s database. ``built``: its SQLite file (a
    rebuild's, no one else's), which a pool's workers then write their rows into themselves,
    in their chunks' order (``pool.ordered_chunks``), while ``conn`` holds no lock;
    else this process inserts them (one process, or a server database). Returns (show,
    episode) of the rows with a lease, in the rows' order (``leases.restore`` looks up only those)."""
    found = list(episode_folders(writer.root))  # each worker looks for its folders' files (lstat is a cost)
    total = len(found)
    deltas: dict[tuple[str, str], list[float]] = defaultdict(lambda: [0, 0.0])
    show_rows = []
    claims: list[dict[str, Any]] = []
    leased: list[tuple[str, str]] = []
    order: dict[str, dict[str, int]] = {}
    run_ends: dict[tuple[str, str, str, str], int] | None = {}  # ``run_totals``' rows, as the chunks count them
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
        (no episode file)."""
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

    def chunk_of(items: Sequence[tuple[str, str, str]]) -> Chunk:
        """A chunk of folders' rows, and what the parent needs of them (in a pool's worker
        for a large store: what it returns is pickled)."""
        chunk = Chunk()
        for i, item in enumerate(items):
            result = rows_of(item)
            if result is None or isinstance(result, Problem):
                chunk.skipped.append(i)
                if result is not None:
                    chunk.notes.append((item[0], item[1], result, False, None))
                continue
            values, lines, claimed, stage, costs, is_pending, failure = result
            if failure is not None or is_pending or claimed:
                chunk.notes.append((item[0], item[1], failure, is_pending, claimed))
            chunk.rows.append(values)
            if values[LEASE_AT] is not None:
                chunk.leased.append((item[0], item[1]))
            chunk.events.extend(lines)
            chunk.count(item[0], stage, costs)
            if chunk.runs is not None:
                chunk.count_runs(lines)
        chunk.size, chunk.episodes, chunk.n_events = len(items), len(chunk.rows), len(chunk.events)
        return chunk

    def written(chunk: Chunk) -> Chunk:
        """``chunk``'s rows inserted into ``built`` by this worker (its turn: the chunks
        before it are in), and dropped from what goes back to the parent."""
        cursor = _build_cursor(built)  # type: ignore[arg-type]
        cursor.execute("BEGIN IMMEDIATE")
        try:
            insert_rows(cursor, chunk.rows, chunk.events, inserts)
            cursor.execute("COMMIT")
        except BaseException:
            try:  # (no journal: the build is thrown away after this failure; the first error is the one told)
                cursor.execute("ROLLBACK")
            except Exception:  # noqa: BLE001
                pass
            raise
        chunk.rows, chunk.events = [], []
        return chunk

    n = workers_for(total, workers)
    pooled = n > 1 and built is not None  # ``conn`` holds no lock until the workers are done (BEGIN DEFERRED)
    done = 0
    for chunk in ordered_chunks(chunk_of, found, n, written if pooled else None, size=REBUILD_CHUNK):
        if chunk.rows or chunk.events:  # this process inserts them
            insert_rows(conn.connection.driver_connection.cursor(), chunk.rows, chunk.events, inserts)  # type: ignore[union-attr]
        report.episodes += chunk.episodes
        report.events += chunk.n_events
        leased.extend(chunk.leased)
        for show, ep, failure, is_pending, claimed in chunk.notes:
            if failure is not None:  # reported (and, with rows, indexed as the committed version its log rebuilds)
                report.problems.append(failure)
            if is_pending:
                report.pending.append(f"{show}/{ep}")
            if claimed:
                claims.extend(claimed)
        if chunk.runs is None:
            run_ends = None
        elif run_ends is not None:
            for key, n in chunk.runs.items():
                run_ends[key] = run_ends.get(key, 0) + n
        for key, (n_episodes, amounts) in chunk.deltas.items():  # in the order one process adds them
            totals = deltas[key]
            totals[0] += n_episodes
            cost = totals[1]
            for amount in amounts:
                cost += amount
            totals[1] = cost
        if progress is not None:
            skipped = set(chunk.skipped)
            for i in range(chunk.size):
                if i not in skipped:
                    progress(done + i + 1, total)
        done += chunk.size
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
    if run_ends is None:  # a value the SQL counts in its own way: counted from the rows
        fill_run_totals(conn)
    elif run_ends:
        conn.execute(run_totals.insert(), [{"show_id": s, "stage": st, "kind": k, "error_kind": e, "runs": n}
                                           for (s, st, k, e), n in run_ends.items()])
    windows = {stage: limit.window[1] for stage, limit in writer.config.limits.items() if limit.window is not None}
    if windows:  # the rate limits' windows, from the start events (the table is coordination state)
        LeaseTable(conn.engine).refill_starts(conn, windows, writer.clock())
    return leased


class Chunk:
    """What a chunk of episode folders gives a rebuild: the rows (tuples in ``EPISODE_COLUMNS``
    and ``EVENT_COLUMNS`` order), the folders without rows (``skipped``: their indexes in the
    chunk), ``notes`` (show, episode, problem, pending, unique claims) of the folders that have
    any, in order, ``leased`` (show, episode) of the rows with a lease, and the per-stage totals'
    deltas: per (show, stage), in the order first met, the episodes and the costs one by one (the
    parent adds them up in the order one process does, so the sums are the same floats)."""

    __slots__ = ("rows", "events", "skipped", "notes", "leased", "deltas", "runs", "episodes", "n_events", "size")

    def __init__(self) -> None:
        self.rows: list[tuple[Any, ...]] = []
        self.events: list[tuple[Any, ...]] = []
        self.skipped: list[int] = []
        self.notes: list[tuple[str, str, Problem | None, bool, list[dict[str, Any]] | None]] = []
        self.leased: list[tuple[str, str]] = []
        self.deltas: dict[tuple[str, str], list[Any]] = {}
        self.runs: dict[tuple[str, str, str, str], int] | None = {}
        """``run_totals``' rows of the chunk's events; None if one holds a value (not text) that
        only the SQL counts alike (``tables.run_totals_select``: the parent then counts them all)."""
        self.episodes = self.n_events = self.size = 0

    def count_runs(self, lines: list[tuple[Any, ...]]) -> None:
        """Each run's end among event rows (``EVENT_COLUMNS`` tuples) counted under its
        ``run_totals`` key, as ``tables.run_totals_select`` counts it (for text values)."""
        runs = self.runs
        assert runs is not None
        for values in lines:
            kind = values[_KIND]
            if kind not in RUN_ENDS:
                continue
            data = orjson.loads(values[_DATA])
            stage = values[_FROM]
            if stage is None:
                stage = data.get("run_stage", None) if type(data) is dict else None
                if stage is None:
                    stage = "unknown"
            error = "" if kind == "finish" else data.get("error_kind", None) if type(data) is dict else None
            if error is None:
                error = "unknown"
            if type(stage) is not str or type(error) is not str:
                self.runs = None
                return
            key = (values[0], stage, kind, error)
            runs[key] = runs.get(key, 0) + 1

    def count(self, show: str, stage: str, costs: dict[str, float]) -> None:
        """``totals_delta(deltas, show, None, (stage, costs))``, the costs kept one by one."""
        deltas = self.deltas
        key = (show, stage)
        if key not in deltas:
            deltas[key] = [0, []]
        deltas[key][0] += 1
        for cost_stage, amount in costs.items():
            key = (show, cost_stage)
            if key not in deltas:
                deltas[key] = [0, []]
            deltas[key][1].append(1 * amount)

    def __getstate__(self) -> tuple[Any, ...]:
        return tuple(getattr(self, name) for name in self.__slots__)

    def __setstate__(self, state: tuple[Any, ...]) -> None:
        for name, value in zip(self.__slots__, state):
            setattr(self, name, value)


_build: tuple[int, str, Any] | None = None
"""A pool worker's connection to the build file: (its process, the file, the cursor)."""


def _build_cursor(path: str) -> Any:
    """This process's cursor on the build file ``path`` (opened once: no journal, no syncing, as
    the parent's ``engine_for(scratch=True)``; a worker writes it only in its chunk's turn)."""
    global _build
    if _build is None or _build[0] != os.getpid() or _build[1] != path:
        import sqlite3

        connection = sqlite3.connect(path, isolation_level=None, timeout=REBUILD_WAIT_S)
        for pragma in ("journal_mode = OFF", "synchronous = OFF"):
            connection.execute(f"PRAGMA {pragma}")
        _build = (os.getpid(), path, connection.cursor())
    return _build[2]


def shows_insert() -> Any:
    from .tables import shows as show_table

    return show_table.insert()


_KIND, _FROM, _DATA = (EVENT_COLUMNS.index(name) for name in ("kind", "from_stage", "data"))
EPISODE_COLUMNS = tuple(c.name for c in episodes_table.columns)
"""The episodes columns in the order of a rebuild's row tuples."""
LEASE_AT = EPISODE_COLUMNS.index("lease_expires_at")


def flush(conn: Connection, rows: list[tuple[Any, ...]], event_rows: list[tuple[Any, ...]],
          report: RebuildReport, inserts: tuple[Compiled, Compiled] | None = None) -> None:
    """Insert a batch of row tuples (``EPISODE_COLUMNS``, ``EVENT_COLUMNS``) whose JSON
    columns are text already, through the raw cursor (SQLAlchemy's per-row work would
    cost more than SQLite's)."""
    cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
    insert_rows(cursor, rows, event_rows, inserts or (bulk(conn, "episodes"), bulk(conn, "events")))
    report.episodes += len(rows)
    report.events += len(event_rows)
    rows.clear()
    event_rows.clear()


def insert_rows(cursor: Any, rows: list[tuple[Any, ...]], event_rows: list[tuple[Any, ...]],
                inserts: tuple[Compiled, Compiled]) -> None:
    """Episode and event row tuples through a raw cursor (a chunk's, or ``flush``'s batch)."""
    if rows:
        cursor.executemany(inserts[0].sql, arranged(inserts[0], EPISODE_COLUMNS, rows))
    if event_rows:
        cursor.executemany(inserts[1].sql, arranged(inserts[1], EVENT_COLUMNS, event_rows))


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


