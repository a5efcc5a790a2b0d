"""The uses of entries (the LRU order and the counts), hits and misses,
gathered in memory and written in one transaction at most ``FLUSH_SECONDS``
after the first of them (or once ``FLUSH_KEYS`` keys have some): a get costs
one SELECT. Also the links from an entry to the episodes that used it."""

from __future__ import annotations

import logging
import sqlite3
import time

from .database import LINK, CacheDatabase

log = logging.getLogger("statekit")

FLUSH_SECONDS = 1.0
FLUSH_KEYS = 1000
"""Gathered uses are written once the oldest is this old, or this many keys have some."""


class Uses:
    """The uses gathered in this process for one cache.db (guarded by its lock)."""

    def __init__(self, db: CacheDatabase) -> None:
        self._db = db
        self._uses: dict[str, list[float]] = {}
        self._hits = 0
        self._misses = 0
        self._since = 0.0

    def hit(self, key: str, now: float, link: tuple[str, str] | None) -> None:
        """A get served ``key`` (for ``link``, an episode not yet linked to
        it). The caller holds the database's lock."""
        if link is not None:
            self.link(key, link)
        if not (self._uses or self._hits or self._misses):
            self._since = time.monotonic()
        use = self._uses.get(key)
        if use is None:
            self._uses[key] = [1, now]
        else:
            use[0] += 1
            if now > use[1]:
                use[1] = now
        self._hits += 1
        if len(self._uses) >= FLUSH_KEYS or time.monotonic() - self._since >= FLUSH_SECONDS:
            self.flush(quiet=True)

    def miss(self) -> None:
        """A get found nothing. The caller holds the database's lock."""
        if not (self._uses or self._hits or self._misses):
            self._since = time.monotonic()
        self._misses += 1
        if time.monotonic() - self._since >= FLUSH_SECONDS:
            self.flush(quiet=True)

    def link(self, key: str, link: tuple[str, str]) -> None:
        """Record that an episode used ``key`` (the caller holds the database's lock)."""
        with self._db.writing() as conn:
            if conn.execute("SELECT 1 FROM entries WHERE key = ?", (key,)).fetchone():
                conn.execute(LINK, (key, *link))

    def flush(self, quiet: bool) -> None:
        """Write what was gathered (the caller holds the database's lock).
        ``quiet``: a busy database is logged and retried later, not raised."""
        if not (self._uses or self._hits or self._misses):
            return
        uses, hits, misses = self._uses, self._hits, self._misses
        try:
            with self._db.writing() as conn:
                conn.executemany("UPDATE entries SET uses = uses + ?, last_used = max(last_used, ?) WHERE key = ?",
                                 [(int(n), t, k) for k, (n, t) in uses.items()])
                conn.executemany("UPDATE counters SET value = value + ? WHERE name = ?",
                                 ((hits, "hits"), (misses, "misses")))
        except sqlite3.OperationalError as exc:
            if not quiet:
                raise
            log.warning("statekit: cache uses not recorded yet (%s); will retry", exc)
            self._since = time.monotonic()
            return
        self._uses = {}
        self._hits = self._misses = 0

    def forget(self) -> None:
        """In a forked child: the parent's uses are the parent's to write."""
        self._uses = {}
        self._hits = self._misses = 0
