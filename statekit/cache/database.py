"""cache.db: its schema, the statements the other parts share, this
process's connection to it (with the lock that serializes its use), and the
machine's boot id (which tells a value file written before a crash)."""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from ..errors import (
    CorruptFileError,
    LockTimeoutError,
    SchemaVersionError,
    StatekitError,
    StorageError,
    UnsafePathError,
)
from .records import REASONS

SCHEMA = 1
"""``PRAGMA user_version`` of cache.db."""

SCHEMA_SQL = f"""
BEGIN IMMEDIATE;
CREATE TABLE IF NOT EXISTS entries (
    key TEXT PRIMARY KEY,        -- sha256 hex of the request
    kind TEXT NOT NULL,
    size INTEGER NOT NULL,       -- bytes of the value
    file INTEGER NOT NULL,       -- 1: the value is blobs/<key[:2]>/<key>; 0: it is in ``value``
    value BLOB,
    crc INTEGER,                 -- CRC-32 of a value file (NULL: the file was fsynced)
    boot TEXT,                   -- the boot that wrote (or last checked) the value file
    created_at REAL NOT NULL,    -- unix seconds
    last_used REAL NOT NULL,
    expires_at REAL NOT NULL,
    uses INTEGER NOT NULL DEFAULT 0,
    meta TEXT                    -- JSON object, or NULL
);
CREATE INDEX IF NOT EXISTS entries_last_used ON entries (last_used);
CREATE INDEX IF NOT EXISTS entries_expires_at ON entries (expires_at);
CREATE TABLE IF NOT EXISTS links (
    key TEXT NOT NULL,
    show_id TEXT NOT NULL,
    episode_id TEXT NOT NULL,
    PRIMARY KEY (key, show_id, episode_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
INSERT OR IGNORE INTO counters (name, value) VALUES
    ('entries', 0), ('bytes', 0), ('hits', 0), ('misses', 0),
    {", ".join(f"('evicted.{r}', 0)" for r in REASONS)};
CREATE TRIGGER IF NOT EXISTS entries_insert AFTER INSERT ON entries BEGIN
    UPDATE counters SET value = value + 1 WHERE name = 'entries';
    UPDATE counters SET value = value + new.size WHERE name = 'bytes';
END;
CREATE TRIGGER IF NOT EXISTS entries_resize AFTER UPDATE OF size ON entries BEGIN
    UPDATE counters SET value = value - old.size + new.size WHERE name = 'bytes';
END;
CREATE TRIGGER IF NOT EXISTS entries_delete AFTER DELETE ON entries BEGIN
    UPDATE counters SET value = value - 1 WHERE name = 'entries';
    UPDATE counters SET value = value - old.size WHERE name = 'bytes';
    DELETE FROM links WHERE key = old.key;
END;
PRAGMA user_version = {SCHEMA};
COMMIT;
"""

LOOKUP = "SELECT size, file, value, crc, boot, expires_at FROM entries WHERE key = ?"
LOOKUP_LINKED = """SELECT size, file, value, crc, boot, expires_at,
    EXISTS (SELECT 1 FROM links WHERE key = ?1 AND show_id = ?2 AND episode_id = ?3) FROM entries WHERE key = ?1"""
UPSERT = """
INSERT INTO entries (key, kind, size, file, value, crc, boot, created_at, last_used, expires_at, uses, meta)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 0, ?)
ON CONFLICT (key) DO UPDATE SET
    kind = excluded.kind, size = excluded.size, file = excluded.file, value = excluded.value,
    crc = excluded.crc, boot = excluded.boot, created_at = excluded.created_at,
    last_used = excluded.last_used, expires_at = excluded.expires_at, meta = excluded.meta
"""
LINK = "INSERT OR IGNORE INTO links (key, show_id, episode_id) VALUES (?, ?, ?)"
TOTAL_BYTES = "SELECT value FROM counters WHERE name = 'bytes'"

_INHERITED: list[sqlite3.Connection] = []
"""Connections a forked child inherited: never used or closed there (SQLite forbids both)."""


def current_boot_id() -> str | None:
    """This machine's boot id (Linux), or None where none is known."""
    try:
        with open("/proc/sys/kernel/random/boot_id", "rb") as f:
            text = f.read(100).strip().decode("ascii", "replace")
    except OSError:
        return None
    return text or None


class CacheDatabase:
    """This process's connection to cache.db, opened now (so a damaged or
    newer database fails at once) and again on first use after ``close`` or a
    fork (then ``reopened`` is called). ``lock`` serializes this process's
    use of the connection and of the uses gathered for it; every method but
    ``error`` expects the caller to hold it."""

    def __init__(self, path: str, timeout: float, reopened: Callable[[], None]) -> None:
        self.path = path
        self.timeout = timeout
        self.lock = threading.RLock()
        self._reopened = reopened
        self._conn: sqlite3.Connection | None = self._open()

    def _open(self) -> sqlite3.Connection:
        if os.path.islink(self.path):
            raise UnsafePathError(f"refusing to follow a symlink at {self.path}", path=self.path)
        try:
            conn = sqlite3.connect(self.path, timeout=self.timeout, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            raise self.error(exc) from exc
        try:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA:
                raise SchemaVersionError(f"{self.path}: cache schema {version} is newer than this statekit "
                                         f"({SCHEMA})", path=self.path, found=version, supported=SCHEMA,
                                         hint="upgrade statekit, or remove .statekit/cache (it is only a cache)")
            if conn.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                conn.execute("PRAGMA auto_vacuum = INCREMENTAL")  # takes effect only before the first table
                conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")  # a power cut may lose the last commits, never tear one
            conn.execute("PRAGMA journal_size_limit = 67108864")
            if version < SCHEMA:
                conn.executescript(SCHEMA_SQL)
        except sqlite3.Error as exc:
            conn.close()
            raise self.error(exc) from exc
        except BaseException:
            conn.close()
            raise
        return conn

    def connection(self) -> sqlite3.Connection:
        conn = self._conn
        if conn is None:  # after close(), or in a forked child
            conn = self._conn = self._open()
            self._reopened()
        return conn

    def after_fork(self) -> None:
        """In a forked child: never touch the parent's connection; open anew on first use."""
        if self._conn is not None:
            _INHERITED.append(self._conn)
        self._conn = None
        self.lock = threading.RLock()

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def error(self, exc: sqlite3.Error) -> StatekitError:
        """The statekit error for a failure of cache.db."""
        text = " ".join(str(exc).split())
        if isinstance(exc, sqlite3.OperationalError) and ("locked" in text or "busy" in text):
            return LockTimeoutError(f"the cache database {self.path} stayed locked for {self.timeout:g} s",
                                    path=self.path, timeout=self.timeout,
                                    hint="another process holds the cache; retry, or raise the lock timeout")
        if isinstance(exc, sqlite3.DatabaseError) and ("malformed" in text or "not a database" in text):
            return CorruptFileError(f"{self.path}: the cache database is damaged ({text})", path=self.path,
                                    hint="remove .statekit/cache (it is only a cache) to start an empty one")
        return StorageError(f"cache database {self.path}: {text}", path=self.path)

    @contextmanager
    def writing(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (the caller holds ``lock``)."""
        conn = self.connection()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    @contextmanager
    def reading(self) -> Iterator[sqlite3.Connection]:
        """One read transaction: a consistent snapshot (the caller holds ``lock``)."""
        conn = self.connection()
        conn.execute("BEGIN")
        try:
            yield conn
        finally:
            if conn.in_transaction:
                conn.execute("ROLLBACK")

    def vacuum(self) -> None:
        """Give free pages back to the file system, if no one is writing."""
        try:
            self.connection().execute("PRAGMA incremental_vacuum")
        except sqlite3.OperationalError:  # busy: the free pages are reused anyway
            pass
