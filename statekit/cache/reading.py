"""Reading an entry: one SELECT for a value kept in cache.db; for a value
file, a read checked against its row's size (and, the first time after a
reboot, its CRC-32). A file that does not match is looked at again under
the write lock and, still wrong, removed as damaged: a get returns the exact
bytes of some ``set`` of that key, or None."""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Callable
from typing import Literal

from ..errors import ValidationError
from .database import LOOKUP, LOOKUP_LINKED, CacheDatabase
from .eviction import Eviction
from .pins import Pins
from .records import CacheEntry, when
from .uses import Uses
from .values import ValueFiles

log = logging.getLogger("statekit")


class Reader:
    """Reads of one cache. ``boot``: the current boot's id (None: unknown;
    then value files were fsynced and no CRC is checked)."""

    def __init__(self, db: CacheDatabase, files: ValueFiles, uses: Uses, pins: Pins, eviction: Eviction,
                 time: Callable[[], float], boot: str | None) -> None:
        self._db = db
        self._files = files
        self._uses = uses
        self._pins = pins
        self._eviction = eviction
        self._time = time
        self._boot = boot

    def lookup(self, key: str, link: tuple[str, str] | None, want_path: bool) -> bytes | str | None:
        """The value under ``key`` (or, ``want_path``, its file's path), or
        None; counts a hit or a miss. The caller has checked the arguments."""
        now = self._time()
        db = self._db
        query, args = (LOOKUP, (key,)) if link is None else (LOOKUP_LINKED, (key, *link))
        for _attempt in range(3):
            with db.lock:
                row = db.connection().execute(query, args).fetchone()
                if row is None:
                    self._uses.miss()  # counted under the lock already held
                    return None
                new_link = None if link is None or row[6] else link  # written once, not on every get
                if not row[1] and not want_path and row[5] > now:  # inline: done here
                    self._uses.hit(key, now, new_link)
                    return row[2]  # type: ignore[no-any-return]
            size, in_file, value, crc, boot, expires_at = row[:6]
            if expires_at <= now and not self._serve_expired(key, link, now):
                break
            if not in_file:
                if want_path:
                    raise ValidationError(f"cache entry {key[:12]}... is kept inside the database, not in a file",
                                          field="key", hint="read it with get()")
                found: bytes | str | None = value
            else:
                found = self._read_file(key, size, crc, boot, want_path)
                if found is None:
                    status = self._recheck(key, want_path)
                    if status == "gone":
                        break
                    if status == "changed":
                        continue  # the entry changed under us: look it up again
                    found = status
            with db.lock:
                self._uses.hit(key, now, new_link)
            return found
        with db.lock:
            self._uses.miss()
        return None

    def _read_file(self, key: str, size: int, crc: int | None, boot: str | None, want_path: bool,
                   conn: sqlite3.Connection | None = None) -> bytes | str | None:
        """The value file's bytes (or its path) if it holds the value its row
        describes; None if not (or not any more). Its CRC is checked if it
        was written in another boot (the kernel may have lost its data).
        ``conn``: the write transaction the caller is in."""
        check_crc = boot is not None and boot != self._boot and crc is not None
        found = self._files.read(key, size, want_path, crc if check_crc else None)
        if found is not None and check_crc and self._boot is not None:
            # read back from the disk after a reboot: good from now on
            verified = "UPDATE entries SET boot = ? WHERE key = ? AND crc = ? AND size = ?"
            if conn is not None:
                conn.execute(verified, (self._boot, key, crc, size))
            else:
                with self._db.lock, self._db.writing() as own:
                    own.execute(verified, (self._boot, key, crc, size))
        return found

    def _recheck(self, key: str, want_path: bool) -> bytes | str | Literal["gone", "changed"]:
        """A value file did not match its row: look again holding the write
        lock (no file is renamed in or removed meanwhile). Still wrong: the
        entry is removed as damaged."""
        with self._db.lock:
            with self._db.writing() as conn:
                row = conn.execute(LOOKUP, (key,)).fetchone()
                if row is None:
                    return "gone"
                size, in_file, _value, crc, boot, _expires = row
                if not in_file:
                    return "changed"
                found = self._read_file(key, size, crc, boot, want_path, conn)
                if found is not None:
                    return found
                victim = self._eviction.victim(conn, key, "damaged")
                if victim is None:
                    return "gone"
                self._eviction.remove(conn, [victim])
            self._eviction.journal.append([victim])
        log.warning("statekit: cache entry %s had a damaged value file; removed", key)
        return "gone"

    def _serve_expired(self, key: str, link: tuple[str, str] | None, now: float) -> bool:
        """An expired entry: True to serve it (it is pinned), else it is removed."""
        if link is not None:
            with self._db.lock:
                self._uses.link(key, link)
        if self._pins.pinned(None, key) and key in self._pins.pinned(self._pins.active(), key):
            return True
        self._eviction.remove_one(key, "expired", expired_at=now)
        return False

    def entry(self, key: str) -> CacheEntry | None:
        """What the cache knows about ``key`` (no use is counted), or None."""
        with self._db.lock:
            self._uses.flush(quiet=True)
            with self._db.reading() as conn:
                row = conn.execute("SELECT kind, size, file, created_at, last_used, expires_at, uses, meta "
                                   "FROM entries WHERE key = ?", (key,)).fetchone()
                links = conn.execute("SELECT show_id, episode_id FROM links WHERE key = ? "
                                     "ORDER BY show_id, episode_id", (key,)).fetchall()
        if row is None:
            return None
        kind, size, in_file, created, used, expires, uses, meta = row
        return CacheEntry(key, kind, size, "file" if in_file else "inline", when(created), when(used),
                          when(expires), uses, [tuple(link) for link in links],
                          None if meta is None else json.loads(meta))
