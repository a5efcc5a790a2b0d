"""Locks on a PostgreSQL server: the store's named locks as advisory locks.

A store whose index is on PostgreSQL (``index: {url}``) takes every lock
there instead of with ``flock`` on ``.statekit/locks/``: file locks are not
reliable on a network file system (fcntl(2), "Record locking and NFS"),
and machines that share the store's files need not share a lock manager.
``ServerLocks`` has the interface of ``locks.Locks`` (``hold``, ``episode``,
``show``, ``unique``, ``index``, ``objects``, ``fence``).

Advisory locks are scoped to a database; stores may still share one (each
in its own schema, ``?options=-csearch_path%3D...`` in the url), so a lock's
key is derived from the store's place on the server (its database and
schema: where its index's tables are) and the lock's name. Two stores on one
server never block each other; every machine of one store derives the same
keys, whatever host name it reaches the server by.

The locks are **session-scoped** (``pg_advisory_lock``): held by one
database connection per thread, from the lock's ``with`` block to its end,
across the file work in between, which runs outside any transaction. So the
connection must be the server's own session: behind a connection pooler in
transaction mode (PgBouncer's default) another client could be handed the
session and its locks; connect directly, or through a pooler in session mode.

A lock dies with its connection (a worker killed, a network cut): another
machine may then take it. ``fence`` (called by every commit right before
its rename) asks the server whether this connection still holds its locks;
the window that remains is the time between that answer and the rename
(microseconds, with no I/O between them but the rename itself).
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from .errors import IndexUnavailableError, LockTimeoutError

LOCK_SPACE = "statekit-lock:"
"""Prefix of every lock's name before it is hashed into an advisory lock key."""


def lock_key(name: str, store: str = "") -> int:
    """The signed 64-bit advisory lock key of the lock named ``name`` of the
    store whose index is at ``store`` (``database/schema`` on the server)."""
    label = f"{LOCK_SPACE}{store}:{name}" if store else LOCK_SPACE + name
    return int.from_bytes(hashlib.sha256(label.encode()).digest()[:8], "big", signed=True)


def libpq_url(url: str) -> str:
    """A SQLAlchemy URL (``postgresql+psycopg://``) as psycopg takes it."""
    from sqlalchemy.engine import make_url

    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


class ServerLocks:
    """The store's named locks as PostgreSQL advisory locks; ``timeout``:
    seconds to wait for one by default."""

    def __init__(self, url: str, timeout: float) -> None:
        self.url = url
        self.timeout = timeout
        self._local = threading.local()
        self.store_id: str | None = None
        """The store's place on the server (``database/schema``), read on the first connection."""

    def _conn(self) -> Any:
        """This thread's locking connection (autocommit; a forked child opens its own)."""
        local = self._local
        conn = getattr(local, "conn", None)
        if conn is None or local.pid != os.getpid() or conn.closed:
            import psycopg

            try:
                conn = psycopg.connect(libpq_url(self.url), autocommit=True, connect_timeout=10,
                                       application_name="statekit-locks")
            except psycopg.Error as exc:
                raise IndexUnavailableError(f"could not connect to the index's server to take a lock: "
                                            f"{' '.join(str(exc).split())}") from exc
            local.conn, local.pid, local.held = conn, os.getpid(), 0
            if self.store_id is None:
                try:
                    row = conn.execute("SELECT current_database(), current_schema()").fetchone()
                except psycopg.Error as exc:
                    self._drop()
                    raise IndexUnavailableError(f"could not ask the index's server where the store is: "
                                                f"{' '.join(str(exc).split())}") from exc
                assert row is not None
                self.store_id = f"{row[0]}/{row[1]}"
        return conn

    def _drop(self) -> None:
        conn = getattr(self._local, "conn", None)
        self._local.conn = None
        if conn is not None:
            try:
                conn.close()
            except Exception:  # noqa: BLE001  # already broken: the server released its locks
                pass

    @contextmanager
    def hold(self, parts: tuple[str, ...], name: str, what: str, timeout: float | None = None, *,
             shared: bool = False) -> Iterator[None]:
        """The advisory lock named ``<parts...>/<name>`` (exclusive, or
        ``shared`` with other shared holders), waited for at most ``timeout``
        seconds (``LockTimeoutError``)."""
        import psycopg

        wait = self.timeout if timeout is None else timeout
        label = "/".join((*parts, name))
        conn = self._conn()
        key = lock_key(label, self.store_id or "")
        kind = "_shared" if shared else ""
        try:
            # the server wakes a waiter the moment the lock is released; lock_timeout bounds the wait
            conn.execute(f"SET lock_timeout = {max(1, round(wait * 1000))}")
            conn.execute(f"SELECT pg_advisory_lock{kind}(%s::bigint)", (key,))
        except psycopg.errors.LockNotAvailable:
            raise LockTimeoutError(f"could not lock {what} within {wait:g} s", path=f"pg_advisory_lock:{label}",
                                   timeout=wait) from None
        except psycopg.Error as exc:
            self._drop()
            raise IndexUnavailableError(f"could not take the lock on {what}: {' '.join(str(exc).split())}") \
                from exc
        self._local.held += 1
        try:
            yield
        finally:
            self._local.held -= 1
            try:
                conn.execute(f"SELECT pg_advisory_unlock{kind}(%s::bigint)", (key,))
            except psycopg.Error:
                self._drop()  # the connection is gone, and its locks with it

    def fence(self) -> None:
        """Right before a commit's rename: this thread's connection still holds
        its locks. ``LockTimeoutError`` if it does not (the connection died,
        and another machine may hold the lock now): the commit is refused."""
        import psycopg

        local = self._local
        conn = getattr(local, "conn", None)
        if conn is None or getattr(local, "held", 0) == 0:
            return
        try:
            row = conn.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted "
                               "AND pid = pg_backend_pid()").fetchone()
            ok = row is not None and row[0] > 0
        except psycopg.Error:
            ok = False
        if not ok:
            self._drop()
            raise LockTimeoutError("lost the lock while writing: its connection to the index's server ended; "
                                   "the write was not committed", path="pg_advisory_lock", timeout=0.0,
                                   hint="retry: the episode is unchanged")

    def episode(self, show: str, ep: str) -> Any:
        return self.hold(("episodes", show), ep, f"episode {show}/{ep}")

    def show(self, show: str) -> Any:
        return self.hold(("shows",), show, f"show {show}")

    def unique(self, bucket: str) -> Any:
        return self.hold(("unique",), bucket, f"the unique values of bucket {bucket}")

    def index(self, timeout: float) -> Any:
        return self.hold((), "index", "the index (another rebuild is running)", timeout)

    def objects(self, *, exclusive: bool, timeout: float) -> Any:
        """The object folder's lock: shared by ``add_asset``, exclusive for ``gc``."""
        what = "the object folder (" + ("assets are being added" if exclusive else "a gc is running") + ")"
        return self.hold(("objects",), "folder", what, timeout, shared=not exclusive)

    def close(self) -> None:
        """Close this thread's locking connection."""
        self._drop()
