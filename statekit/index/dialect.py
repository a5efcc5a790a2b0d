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
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
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


def make_engine(url: str | URL, *, busy_timeout: float = 5.0, scratch: bool = False, **options: Any) -> Engine:
    """An engine set up for statekit's index. ``busy_timeout``: how long a
    writer waits for another (each index transaction holds the lock well under
    a millisecond). ``scratch``: a database being built, not yet in use
    (SQLite then skips syncing it to disk)."""
    if make_url(url).get_backend_name() == "sqlite":
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


def finish_build(engine: Engine) -> None:
    """Statistics for the query planner; an SQLite build is made durable and
    put in WAL mode, ready to be swapped in."""
    raw = engine.raw_connection()
    try:
        if engine.dialect.name == "sqlite":
            raw.driver_connection.execute("ANALYZE")  # type: ignore[union-attr]
            raw.driver_connection.execute("PRAGMA journal_mode = WAL")  # type: ignore[union-attr]
            raw.driver_connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # type: ignore[union-attr]
            fd = os.open(engine.url.database or "", os.O_RDONLY)  # built without syncing: sync it once now
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        else:
            raw.cursor().execute("ANALYZE")
            raw.commit()
    finally:
        raw.close()


def _sqlite_begin(conn: Connection) -> None:
    mode = "IMMEDIATE" if conn.get_execution_options().get("statekit_write") else "DEFERRED"
    conn.exec_driver_sql(f"BEGIN {mode}")


def upsert(dialect: str, table: Table, keys: Sequence[str], *, add: Sequence[str] = (),
           keep: Sequence[str] = ()) -> Any:
    """An INSERT that updates the row when ``keys`` already exist: columns in
    ``add`` are incremented by the new values, those in ``keep`` left as they
    were, the others replaced. Parameters are named after the columns."""
    from sqlalchemy.dialects import postgresql, sqlite

    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    stmt: Any = insert(table).values({c.name: bindparam(c.name) for c in table.columns if not _generated(c)})
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

    def params(self, values: Mapping[str, Any]) -> Any:
        if self.fixed:
            values = {**self.fixed, **values}
        return [values.get(k) for k in self.order] if self.order is not None else dict(values)


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


@contextmanager
def read_only(engine: Engine) -> Iterator[Connection]:
    """A connection on which the database itself refuses every write."""
    if engine.dialect.name == "sqlite":
        path = engine.url.database or ""
        ro = create_engine(sqlite_read_only_url(path), poolclass=NullPool)

        @event.listens_for(ro, "connect")
        def _connect(dbapi_connection: sqlite3.Connection, _record: Any) -> None:
            dbapi_connection.isolation_level = None
            dbapi_connection.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
            dbapi_connection.execute("PRAGMA query_only = ON")
            dbapi_connection.set_authorizer(_no_attach)

        try:
            with ro.connect() as conn:
                yield conn
        finally:
            ro.dispose()
        return
    with engine.connect() as conn:
        conn.exec_driver_sql("SET TRANSACTION READ ONLY")
        try:
            yield conn
        finally:
            conn.rollback()


def _no_attach(action: int, *_args: Any) -> int:
    # Reading the index must not reach other database files either.
    if action in (sqlite3.SQLITE_ATTACH, sqlite3.SQLITE_DETACH):
        return sqlite3.SQLITE_DENY
    return sqlite3.SQLITE_OK


def replace_database(target: str, built: str) -> None:
    """Make the SQLite file ``target`` hold exactly what ``built`` holds.

    Other processes may have ``target`` open: the content is copied in with
    SQLite's online backup, one transaction that readers see all at once. A
    target that is missing or too damaged to copy into is replaced by rename.
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
    os.replace(built, target)


def database_path(engine: Engine) -> str | None:
    """The file of an SQLite index (None for a server database)."""
    return engine.url.database if engine.dialect.name == "sqlite" else None
