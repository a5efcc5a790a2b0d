"""Pinning: an entry linked to an episode still in progress is neither
evicted nor expired. Which episodes are in progress is asked (of the store's
index) only when something is about to be removed."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterable

from .database import CacheDatabase
from .records import Episodes, Keys


class Pins:
    """``in_progress``: returns the (show, episode) pairs still in progress,
    or None if it cannot tell (then every entry an episode used is pinned).
    Without it nothing is pinned."""

    def __init__(self, db: CacheDatabase,
                 in_progress: Callable[[], Iterable[tuple[str, str]] | None] | None) -> None:
        self._db = db
        self._in_progress = in_progress

    def any_links(self) -> bool:
        """Some entry is linked to an episode (so asking the index is worth it)."""
        with self._db.lock:
            return bool(self._db.connection().execute("SELECT EXISTS (SELECT 1 FROM links)").fetchone()[0])

    def active(self) -> Episodes | None:
        """The episodes in progress; None if that cannot be told."""
        if self._in_progress is None:
            return set()
        found = self._in_progress()
        return None if found is None else set(found)

    def pinned(self, active: Episodes | None, key: str | None, conn: sqlite3.Connection | None = None) -> Keys:
        """Keys (all, or just ``key``) linked to an episode in ``active``
        (every linked key when ``active`` is None). ``conn``: the transaction
        the caller is in."""
        if conn is None:
            with self._db.lock:
                return self.pinned(active, key, self._db.connection())
        if key is None:
            links = conn.execute("SELECT key, show_id, episode_id FROM links")
        else:
            links = conn.execute("SELECT key, show_id, episode_id FROM links WHERE key = ?", (key,))
        return {k for k, show, ep in links if active is None or (show, ep) in active}
