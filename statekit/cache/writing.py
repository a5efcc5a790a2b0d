"""Writing an entry: a small value goes into its row; a larger one (or one
set from a file) is written to a temp file, renamed into place and its row
committed in one SQLite write transaction, so the rename and the row change
of two writers never interleave. Then, if the cache passed its cap, it is
evicted down to it."""

from __future__ import annotations

import sqlite3
import zlib
from collections.abc import Callable
from datetime import timedelta
from pathlib import PurePath
from typing import Any

from ..errors import ValidationError
from .database import LINK, TOTAL_BYTES, UPSERT, CacheDatabase
from .eviction import Eviction
from .records import check_episode, check_key, check_kind, check_meta
from .uses import Uses
from .values import ValueFiles

VALUE_FILE_MIN = 32 * 1024
"""Values of this many bytes or more live in their own file (as in diskcache)."""


class Writer:
    """Writes of one cache. ``boot``: the current boot's id (None: unknown;
    then value files are fsynced and carry no CRC)."""

    def __init__(self, db: CacheDatabase, files: ValueFiles, uses: Uses, eviction: Eviction,
                 time: Callable[[], float], boot: str | None) -> None:
        self._db = db
        self._files = files
        self._uses = uses
        self._eviction = eviction
        self._time = time
        self._boot = boot

    def set(self, key: str, value: bytes | bytearray | memoryview | PurePath, *, kind: str,
            expire: float | timedelta | None, episode: tuple[str, str] | None,
            meta: dict[str, Any] | None) -> None:
        """``Cache.set``: check everything, then store."""
        check_key(key)
        kind = check_kind(kind)
        seconds = self._eviction.expiry(kind, expire)
        link = None if episode is None else check_episode(episode)
        meta_text = check_meta(meta)
        if isinstance(value, (bytes, bytearray, memoryview)):
            data = value if type(value) is bytes else bytes(value)
            self._eviction.check_size(len(data))
            if len(data) < VALUE_FILE_MIN:
                return self._store(key, kind, len(data), data, None, None, seconds, link, meta_text)
            tmp, crc = self._files.write(key, data), (zlib.crc32(data) if self._boot is not None else None)
            size = len(data)
        elif isinstance(value, PurePath):
            tmp, size, copied_crc = self._files.copy(key, value, self._eviction.check_size)
            crc = copied_crc if self._boot is not None else None
        else:
            raise ValidationError(f"a cache value must be bytes or a pathlib.Path, not {type(value).__name__}",
                                  field="value")
        return self._store(key, kind, size, None, tmp, crc, seconds, link, meta_text)

    def _store(self, key: str, kind: str, size: int, data: bytes | None, tmp: str | None, crc: int | None,
               seconds: float, link: tuple[str, str] | None, meta: str | None) -> None:
        """Commit one entry: rename its value file in (if any) and upsert its
        row in one write transaction; then evict if over the cap."""
        now = self._time()
        in_file = data is None
        try:
            with self._db.lock:
                try:
                    with self._db.writing() as conn:
                        if tmp is None:
                            old = conn.execute("SELECT file FROM entries WHERE key = ?", (key,)).fetchone()
                            if old is not None and old[0]:
                                self._files.remove(self._files.path(key))
                        else:
                            self._files.move_in(tmp, key)
                            tmp = None
                        try:
                            conn.execute(UPSERT, (key, kind, size, in_file, data, crc,
                                                  self._boot if crc is not None else None,
                                                  now, now, now + seconds, meta))
                            if link is not None:
                                conn.execute(LINK, (key, *link))
                        except BaseException:
                            if in_file:  # the file is in place but its row is not: take it out again
                                self._files.remove(self._files.path(key), quiet=True)
                            raise
                        total = conn.execute(TOTAL_BYTES).fetchone()[0]
                finally:
                    if tmp is not None:
                        self._files.discard(tmp)
            if total > self._eviction.config.max_size:
                with self._db.lock:
                    self._uses.flush(quiet=True)
                self._eviction.evict(now, protect=key)
        except sqlite3.Error as exc:
            raise self._db.error(exc) from exc
