"""The signals' durable state: ``.statekit/signals.db`` (SQLite, machine-owned).

- ``cursor``: per consumer (``alerts``, ``stream``) and episode, the
  version up to which its events were handled. Versions, not the index's
  row ids: those change on every rebuild and can commit out of order on
  PostgreSQL, while an episode's versions are its own total order.
- ``outbox``: alerts to deliver (pending until sent), their attempts and
  next try; ``key`` is the idempotency key sent with each message.
- ``streaks``: per stage, the current run of consecutive failures.
- ``meta``: a consumer's start (which versions it began after).

Every change is one ``BEGIN IMMEDIATE`` transaction, so processes (and
threads, each with its own connection) never interleave inside one.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS cursor (
    consumer TEXT NOT NULL, show_id TEXT NOT NULL, episode_id TEXT NOT NULL, version INTEGER NOT NULL,
    PRIMARY KEY (consumer, show_id, episode_id));
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT, key TEXT NOT NULL UNIQUE, kind TEXT NOT NULL,
    title TEXT NOT NULL, body TEXT NOT NULL, payload TEXT NOT NULL, created_at REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0, next_at REAL NOT NULL, claimed_until REAL,
    sent_at REAL, last_error TEXT);
CREATE TABLE IF NOT EXISTS streaks (
    stage TEXT PRIMARY KEY, id TEXT NOT NULL, count INTEGER NOT NULL, kinds TEXT NOT NULL,
    episodes TEXT NOT NULL, started_at TEXT NOT NULL, alerted INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""

CLAIM_SECONDS = 120.0
"""How long a process holds an alert it is sending before another may send it."""


def db_path(root: str) -> str:
    return os.path.join(root, ".statekit", "signals.db")


@dataclass
class Alert:
    """One row of the outbox."""

    id: int
    key: str
    kind: str
    title: str
    body: str
    payload: dict[str, Any]
    created_at: float
    attempts: int
    next_at: float
    sent_at: float | None
    last_error: str | None

    def as_dict(self) -> dict[str, Any]:
        return {"key": self.key, "kind": self.kind, "title": self.title, "created_at": self.created_at,
                "attempts": self.attempts, "next_at": self.next_at, "sent_at": self.sent_at,
                "last_error": self.last_error, "state": "sent" if self.sent_at is not None else "pending"}


class State:
    """The signals database of one store (one connection per thread)."""

    def __init__(self, root: str) -> None:
        self.path = db_path(root)
        self._local = threading.local()

    def connection(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None or getattr(self._local, "pid", None) != os.getpid():
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            conn = sqlite3.connect(self.path, timeout=30.0, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")  # a recorded alert survives a power cut too
            conn.executescript(SCHEMA)
            self._local.conn, self._local.pid = conn, os.getpid()
        return conn

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None and getattr(self._local, "pid", None) == os.getpid():
            conn.close()
        self._local.conn = None

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        conn = self.connection()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    # --- cursors -------------------------------------------------------------------

    def started(self, consumer: str) -> bool:
        row = self.connection().execute("SELECT 1 FROM meta WHERE key = ?", (f"started:{consumer}",)).fetchone()
        return row is not None

    def start(self, consumer: str, versions: Iterable[tuple[str, str, int]]) -> None:
        """Begin ``consumer`` after the given versions (what was committed
        before it was configured is not its business), once."""
        with self.transaction() as conn:
            if conn.execute("SELECT 1 FROM meta WHERE key = ?", (f"started:{consumer}",)).fetchone():
                return
            conn.executemany(
                "INSERT INTO cursor VALUES (?, ?, ?, ?) ON CONFLICT (consumer, show_id, episode_id) DO UPDATE SET version = max(version, excluded.version)",
                ((consumer, s, e, v) for s, e, v in versions))
            conn.execute("INSERT INTO meta VALUES (?, ?)", (f"started:{consumer}", str(time.time())))

    def cursors(self, consumer: str) -> dict[tuple[str, str], int]:
        rows = self.connection().execute("SELECT show_id, episode_id, version FROM cursor WHERE consumer = ?",
                                         (consumer,))
        return {(s, e): v for s, e, v in rows}

    @staticmethod
    def cursor_in(conn: sqlite3.Connection, consumer: str, show: str, ep: str) -> int:
        row = conn.execute("SELECT version FROM cursor WHERE consumer = ? AND show_id = ? AND episode_id = ?",
                           (consumer, show, ep)).fetchone()
        return int(row[0]) if row else 0

    def cursor(self, consumer: str, show: str, ep: str) -> int:
        return self.cursor_in(self.connection(), consumer, show, ep)

    @staticmethod
    def move_in(conn: sqlite3.Connection, consumer: str, show: str, ep: str, version: int) -> None:
        conn.execute("INSERT INTO cursor VALUES (?, ?, ?, ?) "
                     "ON CONFLICT (consumer, show_id, episode_id) DO UPDATE SET version = max(version, excluded.version)",
                     (consumer, show, ep, version))

    def move(self, consumer: str, show: str, ep: str, version: int) -> None:
        with self.transaction() as conn:
            self.move_in(conn, consumer, show, ep, version)

    # --- the outbox ------------------------------------------------------------------

    @staticmethod
    def enqueue_in(conn: sqlite3.Connection, key: str, kind: str, title: str, body: str,
                   payload: dict[str, Any]) -> None:
        """Record an alert to send (a key already there is not recorded twice)."""
        now = time.time()
        conn.execute("INSERT INTO outbox (key, kind, title, body, payload, created_at, next_at) "
                     "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (key) DO NOTHING",
                     (key, kind, title, body, json.dumps(payload, sort_keys=True), now, now))

    def claim_due(self, now: float, every: bool = False) -> list[Alert]:
        """Pending alerts due by ``now`` (all pending with ``every``), held by
        this process for ``CLAIM_SECONDS`` so no other sends them meanwhile."""
        with self.transaction() as conn:
            rows = conn.execute(
                "SELECT * FROM outbox WHERE sent_at IS NULL AND (next_at <= ? OR ?) "
                "AND (claimed_until IS NULL OR claimed_until < ?) ORDER BY id", (now, every, now)).fetchall()
            conn.executemany("UPDATE outbox SET claimed_until = ? WHERE id = ?",
                             ((now + CLAIM_SECONDS, r[0]) for r in rows))
        return [_alert(r) for r in rows]

    def sent(self, alert: Alert) -> None:
        with self.transaction() as conn:
            conn.execute("UPDATE outbox SET sent_at = ?, attempts = attempts + 1, claimed_until = NULL, "
                         "last_error = NULL WHERE id = ?", (time.time(), alert.id))

    def failed(self, alert: Alert, error: str, retry_in: float) -> None:
        with self.transaction() as conn:
            conn.execute("UPDATE outbox SET attempts = attempts + 1, next_at = ?, claimed_until = NULL, "
                         "last_error = ? WHERE id = ?", (time.time() + retry_in, error[:500], alert.id))

    def next_due(self) -> float | None:
        """When the earliest pending alert is due (None: none pending)."""
        row = self.connection().execute("SELECT min(next_at) FROM outbox WHERE sent_at IS NULL").fetchone()
        return row[0] if row else None

    def alerts(self, pending_only: bool = False, limit: int = 100) -> list[Alert]:
        """The outbox, newest first."""
        where = "WHERE sent_at IS NULL " if pending_only else ""
        rows = self.connection().execute(f"SELECT * FROM outbox {where}ORDER BY id DESC LIMIT ?", (limit,))
        return [_alert(r) for r in rows]

    def pending_count(self) -> int:
        return int(self.connection().execute("SELECT count(*) FROM outbox WHERE sent_at IS NULL").fetchone()[0])

    # --- meta ------------------------------------------------------------------------

    def get_meta(self, key: str) -> str | None:
        row = self.connection().execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def set_meta(self, key: str, value: str) -> None:
        with self.transaction() as conn:
            conn.execute("INSERT INTO meta VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                         (key, value))


def _alert(row: tuple[Any, ...]) -> Alert:
    id_, key, kind, title, body, payload, created, attempts, next_at, _claimed, sent, error = row
    return Alert(id_, key, kind, title, body, json.loads(payload), created, attempts, next_at, sent, error)
