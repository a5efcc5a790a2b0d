"""The index's database: the ``Index`` class (reads, the write after each commit, SQL).

It is never the truth: every row comes from a file and can be rebuilt from
the files alone (``rebuild``), brought up to date incrementally (``sync``) and
checked against them (``verify``). Writes here happen after the files and
events are durable, in one transaction per store write.
"""

from __future__ import annotations

import math
import threading
import weakref
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Any

import orjson
from sqlalchemy import and_, bindparam, case, delete, func, literal_column, or_, select, text
from sqlalchemy.engine import URL, Connection, Engine
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from ..errors import (
    IndexUnavailableError,
    LockTimeoutError,
    QueryError,
    QueryTimeoutError,
    StatekitError,
    ValidationError,
)
from ..files import process_id
from ..locks import Gate
from ..pipeline import Pipeline
from .dialect import (
    WRITE,
    Compiled,
    begin_write,
    end_write,
    joined,
    make_engine,
    make_read_only_engine,
    read_only,
    refusal,
    run_query,
    upsert,
)
from .leases import LeaseTable
from .rows import UNLISTED, claim_rows, json_doc, json_text, pending_text, positions_of, totals_delta
from .tables import (
    RUN_ENDS,
    episodes,
    events,
    iso,
    leases,
    metadata,
    run_end_added,
    run_totals_ddl,
    shows,
    stage_totals,
    unique_keys,
    unique_values,
)

SQL_TIMEOUT_S = 30.0
"""How long a query on the index (``statekit sql``) may run unless told otherwise."""

SQL_NAMES = "episodes, events, shows and the view stage_counts"
"""The index's names in the SQL contract (README, SQL reference)."""

SQL_HINTS = {
    "empty": 'give one statement, e.g. statekit sql "SELECT stage, n FROM stage_counts"',
    "syntax": f"check the statement's syntax, one statement at a time (the README's SQL reference has examples); "
              f"the tables are {SQL_NAMES}",
    "unknown": f"the index's tables are {SQL_NAMES}; the README's SQL reference lists their columns",
    "write": "the index is read-only here: change state through statekit commands (create, advance, update, ...) "
             "or the Python API",
    "other": f"the README's SQL reference lists the tables ({SQL_NAMES}), their columns and example queries",
}
"""The hint of a refused query, by its ``QueryError.reason``."""



TOTALS = ("show_id", "stage", "episodes", "cost")
"""A ``stage_totals`` row's columns, in the order ``_apply`` builds them."""

TOTALS_2 = tuple(f"{name}_{i}" for i in range(2) for name in TOTALS)
"""The parameters of the two-row upsert of ``stage_totals`` (``dialect.upsert(..., rows=2)``)."""

KEPT_INDEXED = ("file_stamp", "priority", "pending", "created_at", "title")
"""Indexed columns (``episodes_files``, ``episodes_by_ready_for``, ``episodes_pending``,
``episodes_in_order``) that a write rarely changes: a file's stamp is set by ``sync``, not by a
write (a write's file is always racy-new), ``priority`` by ``prioritize``, ``pending`` is NULL
after every commit, ``created_at`` stays what the create made it, and ``title`` what an update
last set."""

GUARDS = (
    KEPT_INDEXED,
    (*KEPT_INDEXED, "stage", "stage_entered_at"),
    (*KEPT_INDEXED, "stage", "stage_entered_at", "ready_for"),
)
"""The columns a write's UPDATE of its episode row checks in its WHERE (``IS``: NULL
included) rather than sets, by what the write changes: a move (stage, its time and
``ready_for`` change), a write in the same stage whose ``ready_for`` changes (a run done,
an approval), any other. SQLite rewrites an index entry (and its page: one WAL frame more
per commit) when a column of the index is SET, even to the value it has; the guarded
UPDATE leaves those pages alone. It matches only a row that already holds the values it
leaves out, so its result is the full UPDATE's; a row that does not (a stale index, a
hand-set priority), matches nothing, and the full UPDATE runs instead."""

SHOW_ORDER = (episodes.c.show_id, episodes.c.position, episodes.c.created_at, episodes.c.episode_id)
"""Episodes in show order: the hand-set ones, then the rest by creation."""

AFTER = ("after_show", "after_position", "after_created", "after_episode")
"""The parameters of a page's start: the ``SHOW_ORDER`` values of the episode it follows."""


IN_ORDER = "INDEXED BY episodes_in_order"
"""A page of a stage that holds most episodes: walked in show order (``Index._common``)."""

PENDING = "INDEXED BY episodes_pending"
WITH_ERRORS = "INDEXED BY episodes_with_errors"
"""The marked rows, the rows with errors (of a show too): without statistics (a store grown by its
creates has none until a rebuild's ANALYZE; an index an upgrade made again has lost its own)
``episodes_in_order`` looks as good for ``show_id = ?`` to SQLite as these partial indexes of a
few rows, and a show's every row would be read (65 ms at 100,000 episodes, against 0.03)."""

BY_STAGE = "INDEXED BY episodes_by_stage"
"""SQLite plans from the statistics of the last ANALYZE: taken when most rows
sat in one stage, they make a scan of every row look cheaper than the index
for any stage. The questions about one stage's rows use the index all the same."""


def engine_for(url: str | URL, *, busy_timeout: float = 5.0, scratch: bool = False, **options: Any) -> Engine:
    return make_engine(url, busy_timeout=busy_timeout, scratch=scratch, json_serializer=json_text,
                       json_deserializer=orjson.loads, **options)


def read_only_engine_for(url: str | URL, *, busy_timeout: float = 5.0) -> Engine:
    """``engine_for``'s read-only twin (``dialect.make_read_only_engine``)."""
    return make_read_only_engine(url, busy_timeout=busy_timeout, json_serializer=json_text,
                                 json_deserializer=orjson.loads)


class Index:
    """One store's index database. Safe to use from many threads and processes."""

    def __init__(self, engine: Engine, pipeline: Pipeline, unique: Sequence[str] = ()) -> None:
        self.engine = engine
        self.pipeline = pipeline
        self.unique = tuple(unique)
        """The store's unique metadata keys: ``unique_values`` keeps their values."""
        self.dialect = dialect = engine.dialect.name
        self._put_episode = Compiled(upsert(dialect, episodes, ["show_id", "episode_id"], keep=["position"]), engine)
        self._put_event = Compiled(upsert(dialect, events, ["show_id", "episode_id", "version"]), engine)
        self._put_show = Compiled(upsert(dialect, shows, ["show_id"]), engine)
        self._add_run_end = Compiled(text(run_end_added(dialect)), engine)
        self._add_totals = Compiled(upsert(dialect, stage_totals, ["show_id", "stage"], add=["episodes", "cost"]),
                                    engine)
        self._add_totals_2 = Compiled(upsert(dialect, stage_totals, ["show_id", "stage"], add=["episodes", "cost"],
                                             rows=2), engine)
        """Two stages' totals in one statement (a move: the stage left, the stage entered)."""
        by_key = and_(episodes.c.show_id == bindparam("s"), episodes.c.episode_id == bindparam("e"))
        self._old_state = Compiled(select(episodes.c.stage, episodes.c.costs).where(by_key), engine)
        replaced = [c for c in episodes.columns if c.name not in ("show_id", "episode_id", "position")]
        self._replace_if_was = Compiled(
            episodes.update()
            .where(and_(by_key, episodes.c.file_sha256 == bindparam("was")))
            .values({c.name: bindparam("v_" + c.name) for c in replaced}),
            engine,
        )
        order = self._replace_if_was.order
        self._replace_from_row: Compiled | None = None
        if order is not None and not self._replace_if_was.fixed:
            # the same statement, its values picked from the row itself (no "v_" copy of each)
            self._replace_from_row = Compiled(
                episodes.update()
                .where(and_(episodes.c.show_id == bindparam("show_id"), episodes.c.episode_id == bindparam("episode_id"),
                            episodes.c.file_sha256 == bindparam("was")))
                .values({c.name: bindparam(c.name) for c in replaced}),
                engine,
            )
        self._replace_guarded: dict[tuple[str, ...], Compiled] = {}
        if self._replace_from_row is not None:
            # the same statement again, with the indexed columns the write leaves as they are
            # checked in its WHERE instead of set (see ``GUARDS``)
            for guards in GUARDS:
                self._replace_guarded[guards] = Compiled(
                    episodes.update()
                    .where(and_(episodes.c.show_id == bindparam("show_id"),
                                episodes.c.episode_id == bindparam("episode_id"),
                                episodes.c.file_sha256 == bindparam("was"),
                                *[episodes.c[g].is_not_distinct_from(bindparam(g)) for g in guards]))
                    .values({c.name: bindparam(c.name) for c in replaced if c.name not in guards}),
                    engine,
                )
        self._unlist_all = Compiled(
            episodes.update().where(and_(episodes.c.show_id == bindparam("s"), episodes.c.position != UNLISTED))
            .values(position=UNLISTED), engine)
        self._set_position = Compiled(episodes.update().where(by_key).values(position=bindparam("p")), engine)
        self._delete_episode = Compiled(delete(episodes).where(by_key), engine)
        self._delete_events = Compiled(
            delete(events).where(and_(events.c.show_id == bindparam("s"), events.c.episode_id == bindparam("e"))),
            engine)
        self._delete_show = Compiled(delete(shows).where(shows.c.show_id == bindparam("s")), engine)
        self._drop_claims = Compiled(delete(unique_values).where(and_(
            unique_values.c.show_id == bindparam("s"), unique_values.c.episode_id == bindparam("e"))), engine)
        self._put_claim = Compiled(unique_values.insert(), engine)
        self._holders = Compiled(
            select(unique_values.c.show_id, unique_values.c.episode_id)
            .where(and_(unique_values.c.key == bindparam("k"), unique_values.c.value_sha256 == bindparam("h")))
            .order_by(unique_values.c.show_id, unique_values.c.episode_id),
            engine)
        self._stamps_stmt = Compiled(
            select(episodes.c.show_id, joined(dialect, episodes.c.episode_id, "/"),
                   joined(dialect, episodes.c.file_stamp, "/")).group_by(episodes.c.show_id),
            engine,
        )
        self.queries: dict[str, Compiled] = {}
        """The questions about many episodes, compiled on first use, by name."""
        self._dbapi_error: type[Exception] = engine.dialect.loaded_dbapi.Error
        this = weakref.ref(self)  # (no cycle: an Index no one holds is freed, its connections closed, at once)
        self.leases = LeaseTable(engine, lambda: index._conn() if (index := this()) is not None else None)
        """The live leases of stage runs (coordination state, ``index.leases``)."""
        self.write_gate: Gate | None = None
        """Taken around each ``write`` (SQLite: the store's ``locks.Gate`` for its index writers,
        set by ``writes.Writer``), so writers wait in the kernel, not in SQLite's sleeps."""
        self._local = threading.local()
        self._connections: list[Any] = []
        self._connections_lock = threading.Lock()
        self._generation = 0

    def close(self) -> None:
        """Close this index's connections (it reconnects when used again)."""
        if self.write_gate is not None:
            self.write_gate.close()
        with self._connections_lock:
            conns, self._connections = self._connections, []
            self._generation += 1
        for conn in conns:
            try:
                conn.close()
            except (self._dbapi_error, SQLAlchemyError):
                pass  # another thread's connection, or one already gone
        self.engine.dispose()

    def _conn(self) -> Connection:
        """This thread's connection, kept open: opening an SQLite connection
        costs more than most of the queries on it. A forked child, or an index
        swapped under it, opens a new one."""
        local = self._local
        conn = getattr(local, "conn", None)
        if conn is None or local.pid != process_id() or local.generation != self._generation:
            conn = self.engine.connect()
            local.conn, local.pid, local.generation = conn, process_id(), self._generation
            with self._connections_lock:
                self._connections.append(conn)
        return conn

    @contextmanager
    def reading(self) -> Iterator[Connection]:
        """This thread's connection for reads; the read snapshot ends after."""
        conn = self._conn()
        try:
            yield conn
        finally:
            conn.rollback()
            if self.dialect != "sqlite":  # a read on the driver's cursor (``compare.raw_rows``) began one too
                conn.connection.driver_connection.rollback()

    def _writer(self) -> Any:
        """This thread's writing connection, raw (see ``Compiled``)."""
        return self._conn().connection.driver_connection

    # --- writing ------------------------------------------------------------------

    def write(
        self,
        *,
        rows: Iterable[Mapping[str, Any]] = (),
        event_rows: Iterable[Mapping[str, Any]] = (),
        show_rows: Iterable[Mapping[str, Any]] = (),
        removed: Iterable[tuple[str, str]] = (),
        removed_shows: Iterable[str] = (),
        positions: tuple[str, list[str]] | None = None,
    ) -> None:
        """Apply changes in one writing transaction, keeping ``stage_totals`` in
        step. ``positions``: (show, episode ids in show order).

        Raises ``IndexUnavailableError`` if the database fails the write."""
        gate = self.write_gate
        if gate is None:
            self._write(rows, event_rows, show_rows, removed, removed_shows, positions)
            return
        try:
            fd = gate.take()
        except LockTimeoutError as exc:  # a writer holds it past the lock timeout
            raise IndexUnavailableError(f"the index could not start a write: {exc.one_line()}") from exc
        except StatekitError:  # its file cannot be opened: SQLite's own wait for its lock does
            self._write(rows, event_rows, show_rows, removed, removed_shows, positions)
            return
        try:
            self._write(rows, event_rows, show_rows, removed, removed_shows, positions)
        finally:
            gate.let_go(fd)

    def _write(self, rows: Iterable[Mapping[str, Any]], event_rows: Iterable[Mapping[str, Any]],
               show_rows: Iterable[Mapping[str, Any]], removed: Iterable[tuple[str, str]],
               removed_shows: Iterable[str], positions: tuple[str, list[str]] | None) -> None:
        try:
            conn = self._writer()
            begin_write(conn, self.dialect)
        except self._dbapi_error as exc:
            raise IndexUnavailableError(f"the index could not start a write: {exc}") from exc
        ok = False
        try:
            self._apply(conn.cursor(), list(rows), list(event_rows), list(show_rows), list(removed),
                        list(removed_shows), positions)
            ok = True
        except self._dbapi_error as exc:
            raise IndexUnavailableError(f"the index refused a write: {exc}") from exc
        finally:
            try:
                end_write(conn, self.dialect, ok)
            except self._dbapi_error as exc:
                if ok:
                    raise IndexUnavailableError(f"the index could not commit: {exc}") from exc

    def _apply(self, cur: Any, rows: list[Mapping[str, Any]], event_rows: list[Mapping[str, Any]],
               show_rows: list[Mapping[str, Any]], removed: list[tuple[str, str]], removed_shows: list[str],
               positions: tuple[str, list[str]] | None) -> None:
        execute = cur.execute

        def run(stmt: Compiled, values: Mapping[str, Any]) -> Any:
            return execute(stmt.sql, stmt.params(values))

        deltas: dict[tuple[str, str], list[float]] = defaultdict(lambda: [0, 0.0])
        for row in rows:
            if self.unique:
                run(self._drop_claims, {"s": row["show_id"], "e": row["episode_id"]})
                for claim in claim_rows(self.unique, row["show_id"], row["episode_id"], row["data"]):
                    run(self._put_claim, claim)
            was = row.get("was")
            if was is not None:  # the row holds exactly the file this write replaced: no need to read it
                if self._replace_from_row is not None:
                    values = dict(row, data=json_text(row["data"]), costs=json_text(row["costs"]),
                                  pending=pending_text(row.get("pending")), was=was[0])
                    # was[3]: the replaced file's ready_for, when its stage stays (see ``GUARDS``)
                    guarded = self._replace_guarded[GUARDS[0 if row["stage"] != was[1] else
                                                          2 if len(was) > 3 and was[3] == row["ready_for"] else 1]]
                    replaced = execute(guarded.sql, guarded.params_of(values))
                    if replaced.rowcount != 1:  # the row does not hold what the guards keep: set every column
                        replaced = execute(self._replace_from_row.sql, self._replace_from_row.params_of(values))
                else:
                    values = {"v_" + k: v for k, v in row.items()}
                    values.update(v_data=json_text(row["data"]), v_costs=json_text(row["costs"]),
                                  v_pending=pending_text(row.get("pending")), s=row["show_id"],
                                  e=row["episode_id"], was=was[0])
                    replaced = run(self._replace_if_was, values)
                if replaced.rowcount == 1:
                    totals_delta(deltas, row["show_id"], (was[1], was[2]), (row["stage"], row["costs"]))
                    continue
            old = run(self._old_state, {"s": row["show_id"], "e": row["episode_id"]}).fetchone()
            totals_delta(deltas, row["show_id"], (old[0], json_doc(old[1])) if old else None,
                         (row["stage"], row["costs"]))
            values = dict(row, data=json_text(row["data"]), costs=json_text(row["costs"]),
                          pending=pending_text(row.get("pending")))
            if row["position"] is None:
                # a new episode follows the hand-set ones by creation (its show's order puts it in
                # place with ``positions`` if it is listed); an existing one keeps its position
                # through the upsert (SQLite checks NOT NULL before the conflict)
                values["position"] = UNLISTED if old is None else 0
            run(self._put_episode, values)
        for show, ep in removed:
            old = run(self._old_state, {"s": show, "e": ep}).fetchone()
            if old is not None:
                totals_delta(deltas, show, (old[0], json_doc(old[1])), None)
                run(self._delete_episode, {"s": show, "e": ep})
                run(self._delete_events, {"s": show, "e": ep})
                run(self._drop_claims, {"s": show, "e": ep})
        put_event = self._put_event
        for event in event_rows:
            execute(put_event.sql, put_event.params_of(dict(event, data=json_text(event["data"]))))
            if event["kind"] in RUN_ENDS:  # a run's end: counted in ``run_totals`` (an update's trigger took the old row off)
                run(self._add_run_end, {"s": event["show_id"], "e": event["episode_id"], "v": event["version"]})
        for show_row_ in show_rows:
            run(self._put_show, dict(show_row_, data=json_text(show_row_["data"])))
        for show in removed_shows:
            run(self._delete_show, {"s": show})
        totals = [(show, stage, int(n), cost) for (show, stage), (n, cost) in sorted(deltas.items()) if n or cost]
        if len(totals) == 2:  # a move: both stages in one statement, in the same order
            execute(self._add_totals_2.sql, self._add_totals_2.params_of(dict(zip(TOTALS_2, (*totals[0], *totals[1])))))
        else:
            for show, stage, n, cost in totals:  # one order for all: two moves cannot deadlock
                run(self._add_totals, {"show_id": show, "stage": stage, "episodes": n, "cost": cost})
        if positions is not None:
            show, ordered = positions
            run(self._unlist_all, {"s": show})
            for ep, i in positions_of(ordered).items():
                run(self._set_position, {"s": show, "e": ep, "p": i})

    def unique_current(self) -> bool:
        """True if ``unique_values`` was derived for the store's unique keys."""
        with self.reading() as conn:
            return set(conn.execute(select(unique_keys.c.key)).scalars()) == set(self.unique)

    def refresh_unique(self) -> bool:
        """Derive ``unique_values`` again, from the episode rows, if the store's
        unique keys are not the ones the rows were derived for (``unique:`` in
        statekit.yaml changed). One writing transaction; True if it ran. The
        caller holds the index lock (two refreshes would collide on a server)."""
        if self.unique_current():
            return False
        try:
            with self.engine.connect().execution_options(**WRITE) as conn, conn.begin():
                conn.execute(delete(unique_values))
                conn.execute(delete(unique_keys))
                if self.unique:
                    conn.execute(unique_keys.insert(), [{"key": k} for k in self.unique])
                    found = [claim for s, e, data in conn.execute(
                        select(episodes.c.show_id, episodes.c.episode_id, episodes.c.data))
                        for claim in claim_rows(self.unique, s, e, data)]
                    if found:
                        conn.execute(unique_values.insert(), found)
        except SQLAlchemyError as exc:
            raise IndexUnavailableError(f"the index could not record the unique keys: {exc}") from exc
        return True

    def holders(self, key: str, value_sha256: str) -> list[tuple[str, str]]:
        """The episodes whose indexed metadata holds this value of ``key``."""
        stmt = self._holders  # on the raw cursor: this runs inside every write that claims a value
        try:
            with self.reading():
                cursor = self._writer().cursor()
                cursor.execute(stmt.sql, stmt.params({"k": key, "h": value_sha256}))
                return [(s, e) for s, e in cursor.fetchall()]
        except (SQLAlchemyError, self._dbapi_error) as exc:
            raise IndexUnavailableError(f"the index could not look up a unique value: {exc}") from exc

    def version_of(self, show: str, ep: str) -> int | None:
        """The version the index holds for an episode (None: not indexed)."""
        try:
            with self.reading() as conn:
                return conn.execute(select(episodes.c.version).where(
                    and_(episodes.c.show_id == show, episodes.c.episode_id == ep))).scalar()
        except (SQLAlchemyError, self._dbapi_error) as exc:
            raise IndexUnavailableError(f"the index could not be read: {exc}") from exc

    def set_pending(self, show: str, ep: str, pending: Mapping[str, Any]) -> None:
        """Mark an indexed episode's file as holding a pending edit (``sync`` found one it
        could not adopt); the row keeps the committed version. A write clears the mark."""
        try:
            with self.engine.connect().execution_options(**WRITE) as conn, conn.begin():
                conn.execute(episodes.update().where(and_(episodes.c.show_id == show, episodes.c.episode_id == ep))
                             .values(pending=pending))
        except SQLAlchemyError as exc:
            raise IndexUnavailableError(f"the index could not mark a pending edit: {exc}") from exc

    def pending(self, show: str | None = None) -> dict[tuple[str, str], tuple[str, dict[str, Any]]]:
        """(its file's path, relative to the root; the ``pending`` column) of each episode whose
        file holds a pending hand edit: read through ``episodes_pending``, which has only them."""
        def build() -> Any:
            stmt = select(episodes.c.show_id, episodes.c.episode_id, episodes.c.path, episodes.c.pending).where(
                episodes.c.pending.is_not(None))
            return stmt if show is None else stmt.where(episodes.c.show_id == bindparam("show"))

        # asked by every query that returns episodes (``Queries.marked``): on the raw cursor, through the
        # partial index of the few marked rows, whatever the statistics say (``PENDING``)
        rows = self._raw_rows(f"pending:{show is None}", build, {"show": show}, hint=PENDING)
        return {(s, e): (path, json_doc(p)) for s, e, path, p in rows if json_doc(p) is not None}

    def remove_show(self, show: str) -> None:
        self.write(removed_shows=[show])

    def set_positions(self, show: str, ordered: list[str]) -> None:
        """Put the episodes a show orders by hand (show.yaml's ``order``) first,
        in that order; the rest follow by creation."""
        self.write(positions=(show, ordered))

    # --- reading --------------------------------------------------------------------

    def _raw_docs(self, name: str, build: Any, values: Mapping[str, Any], hint: str | None = None,
                  decoded: bool = True) -> list[Any]:
        """The ``data`` documents a query of episodes returns, run on the raw
        cursor (compiled once per ``name``: SQLAlchemy's per-row work costs more
        than the query); decoded from JSON text in SQLite, as is in PostgreSQL
        (``decoded=False``: as the driver gives them, JSON text in SQLite, for
        ``models.trusted_episode`` to read). ``hint``: the index SQLite reads the rows
        through (``BY_STAGE``, ``IN_ORDER``)."""
        rows = self._raw_rows(name, build, values, hint)
        return [json_doc(row[0]) for row in rows] if decoded else [row[0] for row in rows]

    def _raw_rows(self, name: str, build: Any, values: Mapping[str, Any], hint: str | None = None) -> list[Any]:
        """The rows of a query run on the raw cursor, compiled once per ``name`` (``_raw_docs``)."""
        stmt = self.queries.get(name)
        if stmt is None:
            stmt = self._hinted(build(), hint)
            self.queries[name] = stmt
        with self.reading():
            cursor = self._writer().cursor()
            cursor.execute(stmt.sql, stmt.params(values))
            return cursor.fetchall()

    def _hinted(self, stmt: Any, hint: str | None) -> Compiled:
        compiled = Compiled(stmt, self.engine)
        if hint is not None and self.dialect == "sqlite":  # the index SQLite reads ``episodes`` through
            compiled.sql = compiled.sql.replace("\nFROM episodes \n", f"\nFROM episodes {hint} \n", 1)
        return compiled

    def stage_rows(self, stmt: Any, stage: str | None, show: str | None, limit: int | None) -> list[Any]:
        """The rows of a select of ``episodes`` whose values are in it (a page of at most ``limit``
        in show order; None: a count), of ``stage`` (and ``show``) if given, on the raw cursor (times
        as the driver gives them: ISO text in SQLite). SQLite is told which index to read (whatever
        its statistics say): a page of a stage the way ``episode_data`` reads one (``_common``),
        the count of a stage's rows through ``episodes_by_stage``. (The dashboard's.)"""
        hint = None if stage is None else BY_STAGE if limit is None or not self._common(stage, show, limit) \
            else IN_ORDER
        compiled = self._hinted(stmt, hint)
        with self.reading():
            cursor = self._writer().cursor()
            cursor.execute(compiled.sql, compiled.params({}))
            return cursor.fetchall()

    def _at(self, moment: datetime) -> Any:
        """A time as a raw-cursor parameter (ISO text in SQLite)."""
        at = moment.astimezone(timezone.utc)
        return at if self.dialect == "postgresql" else iso(at)

    def episode_data(self, show: str | None = None, stage: str | None = None, *, decoded: bool = True,
                     limit: int | None = None, after: tuple[Any, ...] | None = None) -> list[Any]:
        """File data of episodes, in show order (``decoded``: see ``_raw_docs``). A page of them:
        at most ``limit``, those after ``after`` in that order (the ``order_key`` of the episode the
        page follows), which ``episodes_in_order`` finds at once however deep the page is."""
        values: dict[str, Any] = {"show": show, "stage": stage, "limit": limit}
        if after is not None:
            values.update(zip(AFTER, after))

        def build() -> Any:
            stmt = select(episodes.c.data).order_by(*SHOW_ORDER)
            if show is not None:
                stmt = stmt.where(episodes.c.show_id == bindparam("show"))
            if stage is not None:
                stmt = stmt.where(episodes.c.stage == bindparam("stage"))
            if after is not None:  # a row value with the show's own (a range of the index), bound as read
                start = 0 if show is None else 1
                stmt = stmt.where(text(f"({', '.join(f'episodes.{c.name}' for c in SHOW_ORDER[start:])}) > "
                                       f"({', '.join(':' + a for a in AFTER[start:])})"))
            return stmt.limit(bindparam("limit")) if limit is not None else stmt

        # a page of a stage that holds many of the episodes: read in show order until the page is full
        # (about limit * total / in-stage rows), rather than every row of the stage sorted
        hint = None if stage is None else IN_ORDER if limit is not None and self._common(stage, show, limit) \
            else BY_STAGE
        name = f"episodes:{show is None}:{stage is None}:{after is None}:{limit is None}:{hint}"
        return self._raw_docs(name, build, values, hint=hint, decoded=decoded)

    def _common(self, stage: str, show: str | None, limit: int) -> bool:
        """True if ``stage`` holds so many of the episodes (of ``show``) that a walk in show order
        fills a page of ``limit`` sooner than the stage's rows are sorted: in_stage² >= total * limit
        (the maintained totals, one small query)."""
        def build() -> Any:
            in_stage = func.sum(case((stage_totals.c.stage == bindparam("stage"), stage_totals.c.episodes), else_=0))
            stmt = select(in_stage, func.sum(stage_totals.c.episodes))
            return stmt if show is None else stmt.where(stage_totals.c.show_id == bindparam("show"))

        found = self._raw_rows(f"common:{show is None}", build, {"stage": stage, "show": show})
        in_stage, total = (int(n or 0) for n in found[0]) if found else (0, 0)
        return in_stage * in_stage >= total * limit > 0

    def order_key(self, show: str, ep: str) -> tuple[Any, ...] | None:
        """The ``SHOW_ORDER`` values of an indexed episode, as stored (None: not indexed)."""
        found = self._raw_rows("order_key", lambda: select(*SHOW_ORDER).where(
            episodes.c.show_id == bindparam("s"), episodes.c.episode_id == bindparam("e")), {"s": show, "e": ep})
        return tuple(found[0]) if found else None

    def created(self, show: str) -> dict[str, str]:
        """``created_at`` of each indexed episode of ``show`` (UTC text that sorts as time)."""
        stmt = select(episodes.c.episode_id, episodes.c.created_at).where(episodes.c.show_id == show)
        with self.reading() as conn:
            return {ep: iso(at) for ep, at in conn.execute(stmt)}

    def counts(self, show: str | None = None) -> dict[str, int]:
        stmt = select(stage_totals.c.stage, func.sum(stage_totals.c.episodes)).group_by(stage_totals.c.stage)
        if show is not None:
            stmt = stmt.where(stage_totals.c.show_id == show)
        out = dict.fromkeys(self.pipeline.stages, 0)
        with self.reading() as conn:
            for stage, n in conn.execute(stmt):
                if n:
                    out[stage] = int(n)
        return out

    def next(self, stage: str, limit: int, now: datetime, skip_shows: Sequence[str] = (), *,
             decoded: bool = True) -> list[Any]:
        """File data of the episodes ready for ``stage`` at ``now`` (not leased
        by a live worker, not waiting for a retry's backoff), higher priority
        first, then longest-waiting; none of the shows ``skip_shows`` (paused).
        A live worker's lease is its row in ``leases`` (renewed in the
        background), or with no row the lease its file records."""
        skip = sorted(set(skip_shows))

        def build() -> Any:
            at = bindparam("at")
            free = or_(and_(leases.c.show_id.is_(None),
                            or_(episodes.c.lease_expires_at.is_(None), episodes.c.lease_expires_at <= at)),
                       leases.c.expires_at <= at)
            stmt = select(episodes.c.data).select_from(
                episodes.outerjoin(leases, and_(leases.c.show_id == episodes.c.show_id,
                                                leases.c.episode_id == episodes.c.episode_id)))
            for show in skip:
                stmt = stmt.where(episodes.c.show_id != show)
            return (
                stmt
                .where(episodes.c.ready_for == bindparam("stage"))
                .where(free)
                .where(or_(episodes.c.due_at.is_(None), episodes.c.due_at <= at))
                .order_by(episodes.c.priority.desc(), episodes.c.stage_entered_at, episodes.c.show_id,
                          episodes.c.episode_id)
                .limit(bindparam("limit"))
            )

        return self._raw_docs("next:" + ",".join(skip), build, {"stage": stage, "at": self._at(now), "limit": limit},
                              decoded=decoded)

    def leased_data(self, now: datetime, *, decoded: bool = True) -> list[Any]:
        """File data of the episodes whose file records a lease that runs past ``now``: the few a
        live worker holds, read without a model for every other row (``decoded``: see ``_raw_docs``)."""
        return self._raw_docs("leased", lambda: select(episodes.c.data).where(
            episodes.c.lease_expires_at > bindparam("at")), {"at": self._at(now)}, decoded=decoded)

    def expired_leases(self, now: datetime) -> list[tuple[str, str]]:
        """Episodes whose run's lease ran out by ``now``: their worker stopped
        (candidates: ``Recovery.recover_one`` judges each under its lock)."""
        at = now.astimezone(timezone.utc)
        stmt = (select(episodes.c.show_id, episodes.c.episode_id)
                .where(episodes.c.lease_expires_at <= at)
                .order_by(episodes.c.lease_expires_at, episodes.c.show_id, episodes.c.episode_id))
        with self.reading() as conn:
            found = [(s, e) for s, e in conn.execute(stmt)]
        seen = set(found)  # and those whose lease row ran out (their file may say later, by another clock)
        return found + [key for key in self.leases.expired(now) if key not in seen]

    def costs(self, by: str, show: str | None = None) -> dict[str, float]:
        """Total cost per stage or per show (from the maintained totals)."""
        key = stage_totals.c.stage if by == "stage" else stage_totals.c.show_id
        stmt = select(key, func.sum(stage_totals.c.cost)).group_by(key).order_by(key)
        if show is not None:
            stmt = stmt.where(stage_totals.c.show_id == show)
        with self.reading() as conn:
            return {k: round(v or 0.0, 9) for k, v in conn.execute(stmt) if v}

    def with_errors(self, show: str | None = None, *, decoded: bool = True) -> list[Any]:
        def build() -> Any:
            # (0 written in the statement: SQLite takes a partial index only for a WHERE it can see implies the index's)
            stmt = select(episodes.c.data).where(episodes.c.error_count > literal_column("0")).order_by(
                episodes.c.updated_at.desc(), episodes.c.show_id, episodes.c.episode_id)
            return stmt if show is None else stmt.where(episodes.c.show_id == bindparam("show"))

        return self._raw_docs(f"errors:{show is None}", build, {"show": show}, hint=WITH_ERRORS, decoded=decoded)

    def stuck(self, since: datetime, show: str | None = None, *, decoded: bool = True) -> list[Any]:
        """Episodes in a non-terminal stage they entered before ``since``, oldest first."""
        stages = [s for s in self.pipeline.stages if s not in self.pipeline.terminal]

        def build() -> Any:
            stmt = (
                select(episodes.c.data)
                # the stages asked about by name: each one a range of the stage index
                .where(episodes.c.stage.in_([bindparam(f"stage{i}") for i in range(len(stages))]))
                .where(episodes.c.stage_entered_at < bindparam("since"))
                .order_by(episodes.c.stage_entered_at)
            )
            return stmt if show is None else stmt.where(episodes.c.show_id == bindparam("show"))

        values = {f"stage{i}": stage for i, stage in enumerate(stages)}
        return self._raw_docs(f"stuck:{show is None}", build, {**values, "since": self._at(since), "show": show},
                              hint=BY_STAGE, decoded=decoded)

    def status(self) -> list[dict[str, Any]]:
        """Per show: episodes per stage, cost so far, titles."""
        with self.reading() as conn:
            titles = dict(conn.execute(select(shows.c.show_id, shows.c.title)).all())
            rows = conn.execute(select(stage_totals.c.show_id, stage_totals.c.stage, stage_totals.c.episodes,
                                       stage_totals.c.cost)).all()
        per: dict[str, dict[str, Any]] = {}
        for show, stage, n, cost in rows:
            entry = per.setdefault(show, {"show_id": show, "title": titles.get(show, show), "stages": {},
                                          "episodes": 0, "cost": 0.0})
            if n:
                entry["stages"][stage] = int(n)
                entry["episodes"] += int(n)
            entry["cost"] += cost or 0.0
        pending = Counter(s for s, _e in self.pending())
        out = []
        for show in sorted(per):
            entry = per[show]
            entry["pending"] = pending.get(show, 0)
            done = sum(n for s, n in entry["stages"].items() if s in self.pipeline.terminal)
            entry["cost"] = round(entry["cost"], 9)
            entry["done"] = done
            entry["completion"] = round(100.0 * done / entry["episodes"], 1) if entry["episodes"] else 0.0
            entry["stages"] = {s: entry["stages"][s] for s in self.pipeline.stages if s in entry["stages"]}
            out.append(entry)
        return out

    def file_stamps(self) -> dict[str, tuple[set[str], set[str]]]:
        """For sync, per show: the ids of its indexed episodes, and
        ``"ep|size|mtime_ns"`` of those whose file stat can be trusted (a file
        checked too soon after it changed has no stamp: its stat could hide a
        later edit, the racy-clean case). The database joins each show's values
        into one string: far cheaper than a hundred thousand rows."""
        stmt = self._stamps_stmt
        with self.reading():
            cursor = self._writer().cursor()
            cursor.execute(stmt.sql, stmt.params({}))
            rows = cursor.fetchall()
        return {show: (set(ids.split("/")), set(stamps.split("/")) if stamps else set())
                for show, ids, stamps in rows}

    def sql(self, query: str, timeout: float = SQL_TIMEOUT_S) -> tuple[list[str], list[tuple[Any, ...]]]:
        """Run one read-only statement, stopped after ``timeout`` seconds; the
        database refuses writes. ``QueryError`` (its ``reason`` and hint say
        why) when the query is refused, ``QueryTimeoutError`` when stopped."""
        if not isinstance(query, str) or not query.strip():
            what = "is empty" if isinstance(query, str) else f"must be text, not {type(query).__name__}"
            raise QueryError(f"the SQL query {what}", reason="empty", hint=SQL_HINTS["empty"])
        try:
            query.encode()
        except UnicodeEncodeError as exc:  # a lone surrogate: no database can be sent it
            raise QueryError(f"the SQL query is not valid text: {exc.reason} at position {exc.start}",
                             reason="syntax", hint=SQL_HINTS["syntax"]) from exc
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout < math.inf:
            raise ValidationError(f"the query time limit must be a positive number of seconds, got {timeout!r}",
                                  field="timeout", hint="give e.g. --timeout 60 (Store.sql(query, timeout=60))")
        try:
            with read_only(self.engine, timeout) as conn:
                return run_query(conn, query)
        except (self._dbapi_error, DBAPIError) as exc:
            cause = exc.orig if isinstance(exc, DBAPIError) and exc.orig is not None else exc
            kind = refusal(cause)
            if kind == "timeout":
                raise QueryTimeoutError(f"the query was stopped after {timeout:g} seconds", timeout=timeout) from exc
            reason = " ".join(str(cause).split())
            raise QueryError(f"the index refused the query: {reason}", reason=kind, hint=SQL_HINTS[kind]) from exc


def create_schema(conn: Connection, *, triggers: bool = True) -> None:
    """Tables, indexes, the view and the triggers, as the Alembic revisions make them.
    ``triggers=False`` (a rebuild, whose events go in first): ``add_triggers`` adds them."""
    metadata.create_all(conn)
    from .tables import STAGE_COUNTS_VIEW

    conn.exec_driver_sql(STAGE_COUNTS_VIEW)
    if triggers:
        add_triggers(conn)


def add_triggers(conn: Connection) -> None:
    """The triggers that keep ``run_totals`` in step with the events (``tables.run_totals_ddl``)."""
    for statement in run_totals_ddl(conn.dialect.name):
        conn.exec_driver_sql(statement)


def revision_of(conn: Connection) -> str | None:
    """The Alembic revision an index database is at (None if unversioned)."""
    try:
        with conn.begin_nested() if conn.in_transaction() else conn.begin():
            return conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalar()
    except DBAPIError:  # no such table: an empty or foreign database
        return None
