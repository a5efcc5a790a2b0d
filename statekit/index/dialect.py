"""Everything that depends on the database engine, in one place.

SQLite is the default (``.statekit/index.db``); the rest of the index speaks
SQLAlchemy Core only, so a PostgreSQL URL works through the same code. What
differs lives here: connection set-up (WAL, busy timeout, synchronous=NORMAL,
``BEGIN IMMEDIATE`` for writers), upserts, read-only sessions, and swapping a
freshly built database in.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from operator import itemgetter
from typing import Any
from urllib.parse import quote

from sqlalchemy import Table, bindparam, create_engine, event, func
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.pool import NullPool

BUSY_TIMEOUT_S = 30.0
"""How long swapping in a rebuilt index waits for the writers of the old one."""

WRITE = {"statekit_write": True}
"""Execution options of a writing transaction (``BEGIN IMMEDIATE`` in SQLite:
take the write lock up front, so two writers never deadlock upgrading)."""


def sqlite_url(path: str) -> URL:
    """The address of the SQLite file at ``path``, whatever characters its
    folders' names hold (``?``, ``#``, ``%``: never parsed as URL syntax)."""
    return URL.create("sqlite+pysqlite", database=path)


def sqlite_read_only_url(path: str) -> URL:
    """The address opening ``path`` read-only: an SQLite ``file:`` URI, with
    the path percent-quoted so that SQLite's URI parser gives it back as it is."""
    return URL.create("sqlite+pysqlite", database="file:" + quote(os.fsencode(path)),
                      query={"mode": "ro", "uri": "true"})


def bind_none_directly() -> None:
    """Bind ``None`` as NULL without the sqlite3 module's adaptation protocol.

    The module binds an int, float or str as it is, but looks up an adapter
    for any other value, None included: a registry miss, then ``__adapt__``
    asked of its ``PrepareProtocol`` type, whose failure formats an
    ``AttributeError`` message that is thrown away (about 3,500 instructions
    per NULL; an episode row binds five to eight). An adapter registered for
    ``NoneType`` that returns None is found at the first look, and None binds
    as NULL, as before. Registered once per process, and never over one the
    application registered itself."""
    key = (type(None), sqlite3.PrepareProtocol)
    if key not in sqlite3.adapters:
        sqlite3.register_adapter(type(None), _NOTHING.get)  # a C method: None for any key, no Python frame


_NOTHING: dict[object, None] = {}


def make_engine(url: str | URL, *, busy_timeout: float = 5.0, scratch: bool = False, **options: Any) -> Engine:
    """An engine set up for statekit's index. ``busy_timeout``: how long a
    writer waits for another (each index transaction holds the lock well under
    a millisecond). ``scratch``: a database being built, not yet in use
    (SQLite then skips syncing it to disk)."""
    if make_url(url).get_backend_name() == "sqlite":
        bind_none_directly()
        # no pool: each thread keeps its own writing connection, and opening a
        # reading one costs less than a pool's bookkeeping
        engine = create_engine(url, poolclass=NullPool, **options)
        # a scratch database is written once and thrown away on failure: no journal, no syncing
        journal, synchronous = ("OFF", "OFF") if scratch else ("WAL", "NORMAL")

        def connect(dbapi_connection: sqlite3.Connection, _record: Any) -> None:
            # statekit emits BEGIN itself (see _sqlite_begin), so the sqlite3 module must not
            dbapi_connection.isolation_level = None
            cursor = dbapi_connection.cursor()
            cursor.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
            cursor.execute(f"PRAGMA journal_mode = {journal}")
            # the index is derived from the files: a power cut may lose its last commits, never corrupt it
            cursor.execute(f"PRAGMA synchronous = {synchronous}")
            if scratch:
                cursor.execute("PRAGMA cache_size = -32768")  # 32 MB while building
            cursor.close()

        event.listen(engine, "connect", connect)
        event.listen(engine, "begin", _sqlite_begin)
        return engine
    return create_engine(url, pool_pre_ping=True, **options)


def make_read_only_engine(url: str | URL, *, busy_timeout: float = 5.0, **options: Any) -> Engine:
    """An engine on which the database itself refuses every write: SQLite opened
    ``mode=ro`` (no journal, lock or WAL file is made by it) with ``query_only``;
    PostgreSQL sessions with ``default_transaction_read_only``."""
    url = make_url(url)
    if url.get_backend_name() != "sqlite":
        return create_engine(url, pool_pre_ping=True,
                             connect_args={"options": "-c default_transaction_read_only=on"}, **options)
    engine = create_engine(sqlite_read_only_url(url.database or ""), poolclass=NullPool, **options)

    def connect(dbapi_connection: sqlite3.Connection, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        dbapi_connection.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
        dbapi_connection.execute("PRAGMA query_only = ON")

    event.listen(engine, "connect", connect)
    event.listen(engine, "begin", _sqlite_begin)
    return engine


def finish_build(engine: Engine) -> None:
    """Statistics for the query planner; an SQLite build is put in WAL mode, ready
    to be swapped in (``replace_database`` makes it durable if it is renamed in)."""
    raw = engine.raw_connection()
    try:
        if engine.dialect.name == "sqlite":
            raw.driver_connection.execute("ANALYZE")  # type: ignore[union-attr]
            raw.driver_connection.execute("PRAGMA journal_mode = WAL")  # type: ignore[union-attr]
            raw.driver_connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # type: ignore[union-attr]
        else:
            raw.cursor().execute("ANALYZE")
            raw.commit()
    finally:
        raw.close()


def _sqlite_begin(conn: Connection) -> None:
    mode = "IMMEDIATE" if conn.get_execution_options().get("statekit_write") else "DEFERRED"
    conn.exec_driver_sql(f"BEGIN {mode}")


def upsert(dialect: str, table: Table, keys: Sequence[str], *, add: Sequence[str] = (),
           keep: Sequence[str] = (), rows: int = 0) -> Any:
    """An INSERT that updates the row when ``keys`` already exist: columns in
    ``add`` are incremented by the new values, those in ``keep`` left as they
    were, the others replaced. Parameters are named after the columns; with
    ``rows``, that many rows in one statement, their parameters ``<column>_<i>``
    (their keys must differ: PostgreSQL updates a row once per statement)."""
    from sqlalchemy.dialects import postgresql, sqlite

    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    columns = [c.name for c in table.columns if not _generated(c)]
    stmt: Any = insert(table)
    if rows:
        stmt = stmt.values([{name: bindparam(f"{name}_{i}") for name in columns} for i in range(rows)])
    else:
        stmt = stmt.values({name: bindparam(name) for name in columns})
    changes = {
        c.name: (table.c[c.name] + stmt.excluded[c.name]) if c.name in add else stmt.excluded[c.name]
        for c in table.columns
        if c.name not in keys and c.name not in keep and not _generated(c)
    }
    return stmt.on_conflict_do_update(index_elements=list(keys), set_=changes)


def _generated(column: Any) -> bool:
    """A surrogate key the database numbers itself (events.id)."""
    return bool(column.primary_key and column.autoincrement is True)


class Compiled:
    """A statement compiled once for one engine, run on a raw DB-API cursor
    with values named after its parameters (the hot path of every store
    write: SQLAlchemy's per-execution machinery costs more than SQLite)."""

    def __init__(self, stmt: Any, engine: Engine) -> None:
        compiled = stmt.compile(dialect=engine.dialect)
        self.sql = compiled.string
        self.order = tuple(compiled.positiontup) if compiled.positional else None
        self.fixed = {k: v for k, v in compiled.params.items() if v is not None}  # literals in the statement
        order = self.order
        self._all: Callable[[Mapping[str, Any]], Any] | None = None
        if order and not self.fixed:  # every value, in order, picked in C (see ``params_of``)
            pick = itemgetter(*order)
            self._all = pick if len(order) > 1 else (lambda values: (pick(values),))

    def params(self, values: Mapping[str, Any]) -> Any:
        if self.fixed:
            values = {**self.fixed, **values}
        return [values.get(k) for k in self.order] if self.order is not None else dict(values)

    def params_of(self, values: Mapping[str, Any]) -> Any:
        """``params`` for ``values`` that name (nearly) every parameter (the write path's rows):
        picked in one C call; a missing one is None, as in ``params``."""
        if self._all is not None:
            try:
                return self._all(values)
            except KeyError:
                pass
        return self.params(values)


def joined(dialect: str, expression: Any, separator: str) -> Any:
    """An aggregate joining a group's values into one string (NULLs skipped)."""
    if dialect == "postgresql":
        return func.string_agg(expression, separator)
    return func.group_concat(expression, separator)


def begin_write(dbapi_connection: Any, dialect: str) -> None:
    if dialect == "sqlite":
        dbapi_connection.execute("BEGIN IMMEDIATE")


def end_write(dbapi_connection: Any, dialect: str, ok: bool) -> None:
    if dialect == "sqlite":
        if dbapi_connection.in_transaction:
            dbapi_connection.execute("COMMIT" if ok else "ROLLBACK")
    elif ok:
        dbapi_connection.commit()
    else:
        dbapi_connection.rollback()


PROGRESS_STEPS = 10_000
"""SQLite steps of a query between two looks at its deadline (well under a millisecond)."""

PG_MAX_TIMEOUT_MS = 2_147_483_647
"""The largest statement_timeout PostgreSQL takes (an int of milliseconds, about 24 days)."""


@contextmanager
def read_only(engine: Engine, timeout: float) -> Iterator[Connection]:
    """A connection on which the database itself refuses every write, and
    stops a statement still running ``timeout`` seconds after it opened."""
    if engine.dialect.name == "sqlite":
        deadline = time.monotonic() + timeout
        ro = create_engine(sqlite_read_only_url(engine.url.database or ""), poolclass=NullPool)

        @event.listens_for(ro, "connect")
        def _connect(dbapi_connection: sqlite3.Connection, _record: Any) -> None:
            dbapi_connection.isolation_level = None
            # waiting for a rebuilt index to be swapped in counts against the limit too
            dbapi_connection.execute(f"PRAGMA busy_timeout = {int(min(timeout, BUSY_TIMEOUT_S) * 1000)}")
            dbapi_connection.execute("PRAGMA query_only = ON")
            dbapi_connection.set_authorizer(_reading_only)
            # a true result makes SQLite interrupt the statement (SQLITE_INTERRUPT)
            dbapi_connection.set_progress_handler(lambda: time.monotonic() > deadline, PROGRESS_STEPS)

        try:
            with ro.connect() as conn:
                yield conn
        finally:
            ro.dispose()
        return
    with engine.connect() as conn:
        conn.exec_driver_sql("SET TRANSACTION READ ONLY")
        milliseconds = min(PG_MAX_TIMEOUT_MS, max(1, round(timeout * 1000)))
        conn.exec_driver_sql(f"SET LOCAL statement_timeout = {milliseconds}")
        try:
            yield conn
        finally:
            conn.rollback()


def run_query(conn: Connection, query: str) -> tuple[list[str], list[tuple[Any, ...]]]:
    """Run ``query`` as it is written (no parameters: ``%`` and ``?`` mean what
    SQL says) as exactly one statement: (column names, rows)."""
    cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
    try:
        if conn.dialect.driver == "psycopg":
            # a prepared statement holds one command: "SELECT 1; COMMIT; DELETE ..." cannot end the read-only transaction
            cursor.execute(query, prepare=True)
        else:
            cursor.execute(query)  # the sqlite3 module refuses a second statement itself
        if cursor.description is None:
            return [], []
        return [d[0] for d in cursor.description], [tuple(row) for row in cursor.fetchall()]
    finally:
        cursor.close()


READING_PRAGMAS = frozenset({
    "table_info", "table_xinfo", "table_list", "index_info", "index_xinfo", "index_list", "foreign_key_list",
    "foreign_key_check", "integrity_check", "quick_check",
})
"""Pragmas that read what their argument names (``PRAGMA table_info(episodes)``)."""


def _reading_only(action: int, arg1: str | None, arg2: str | None, *_args: Any) -> int:
    # Reading the index must not reach other database files, nor change a setting
    # (PRAGMA journal_mode = DELETE, PRAGMA query_only = OFF).
    if action in (sqlite3.SQLITE_ATTACH, sqlite3.SQLITE_DETACH):
        return sqlite3.SQLITE_DENY
    if action == sqlite3.SQLITE_PRAGMA and arg2 is not None and (arg1 or "").lower() not in READING_PRAGMAS:
        return sqlite3.SQLITE_DENY
    return sqlite3.SQLITE_OK


_SQLSTATES = {
    "57014": "timeout",  # query_canceled: statement_timeout
    "25006": "write",  # read_only_sql_transaction
    "42P01": "unknown",  # undefined_table
    "42703": "unknown",  # undefined_column
    "3F000": "unknown",  # invalid_schema_name
    "42601": "syntax",  # syntax_error, and several statements in one query
}
_SQLITE_CODES = {sqlite3.SQLITE_INTERRUPT: "timeout", sqlite3.SQLITE_READONLY: "write", sqlite3.SQLITE_AUTH: "write"}


def refusal(exc: BaseException) -> str:
    """Why the database refused a query (``exc``, a DB-API error): "timeout",
    "write", "unknown" (a table or column), "syntax" or "other"."""
    state = getattr(exc, "sqlstate", None)
    if isinstance(state, str):
        return _SQLSTATES.get(state, "other")
    code = getattr(exc, "sqlite_errorcode", None)
    if code is None:
        # raised by the sqlite3 module itself: a second statement, or ? parameters
        return "syntax" if isinstance(exc, sqlite3.ProgrammingError) else "other"
    kind = _SQLITE_CODES.get(code & 0xFF)
    if kind is not None:
        return kind
    # SQLite gives every mistake in a statement one code (SQLITE_ERROR): its message tells them apart
    text = str(exc)
    if text.startswith(("no such table:", "no such column:")):
        return "unknown"
    if text.endswith("syntax error") or text.startswith(("incomplete input", "unrecognized token:")):
        return "syntax"
    return "other"


def replace_database(target: str, built: str) -> None:
    """Make the SQLite file ``target`` hold exactly what ``built`` holds.

    Other processes may have ``target`` open: the content is copied in with
    SQLite's online backup, one transaction that readers see all at once (as
    durable as any commit of the index: ``built``, thrown away after, is never
    synced). A target that is missing or too damaged to copy into is replaced
    by rename, ``built`` synced first (it was written without syncing).
    (Not by rename in every case: a process holding the old file open keeps
    using ``target-wal`` and ``target-shm`` by name, which a new file's readers
    would share: SQLite's "do not rename a database in use".)
    """
    if os.path.exists(target):
        try:
            source = sqlite3.connect(built)
            dest = sqlite3.connect(target, timeout=BUSY_TIMEOUT_S)
            try:
                source.backup(dest)
            finally:
                dest.close()
                source.close()
            os.unlink(built)
            return
        except sqlite3.DatabaseError:
            for suffix in ("-wal", "-shm"):  # a damaged index: start clean
                if os.path.exists(target + suffix):
                    os.unlink(target + suffix)
    fd = os.open(built, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(built, target)


def database_path(engine: Engine) -> str | None:
    """The file of an SQLite index (None for a server database)."""
    return engine.url.database if engine.dialect.name == "sqlite" else None
