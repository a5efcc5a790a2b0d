"""``Cache``: the public face of the cache, composed of its parts (the
database, the value files, the gathered uses, the pins, the eviction policy,
a reader and a writer); each method checks its arguments, calls a part and
turns a SQLite failure into a statekit error. Also what every process does
with its open caches at a fork and at exit."""

from __future__ import annotations

import atexit
import logging
import os
import sqlite3
import time
import weakref
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta
from pathlib import PurePath
from typing import Any, Protocol

from .. import files as diskio
from .. import folders
from ..errors import StatekitError, ValidationError
from ..files import DISK, Disk
from ..models import CacheConfig, StoreConfig, utcnow
from ..pipeline import Pipeline
from .database import CacheDatabase, current_boot_id
from .eviction import Eviction, EvictionLog
from .pins import Pins
from .reading import Reader
from .records import CacheEntry, CacheReport, CacheStats, Episodes, check_episode, check_key, check_kind, check_meta
from .stats import count
from .uses import Uses
from .values import ValueFiles
from .writing import Writer

log = logging.getLogger("statekit")

# --- processes ----------------------------------------------------------------

_LIVE: weakref.WeakSet[Cache] = weakref.WeakSet()
"""Caches open in this process: forgotten in a forked child, flushed at exit."""


def _after_fork() -> None:
    for cache in list(_LIVE):
        cache._forked()


def _flush_all() -> None:
    for cache in list(_LIVE):
        try:
            cache.flush()
        except (StatekitError, sqlite3.Error) as exc:
            log.warning("statekit: cache uses not recorded at exit: %s", exc)


os.register_at_fork(after_in_child=_after_fork)
atexit.register(_flush_all)


def _registrar(cache: Cache) -> Callable[[], None]:
    """Puts ``cache`` back in ``_LIVE`` when its database opens again (a weak
    reference: the database must not keep its cache alive)."""
    ref = weakref.ref(cache)

    def register() -> None:
        found = ref()
        if found is not None:
            _LIVE.add(found)

    return register


# --- the cache ----------------------------------------------------------------------


class OwningStore(Protocol):
    """What ``Cache.for_store`` reads of a ``statekit.Store`` (the cache
    does not import the store: the store is the layer above)."""

    @property
    def root(self) -> str: ...
    @property
    def config(self) -> StoreConfig: ...
    @property
    def pipeline(self) -> Pipeline: ...
    @property
    def clock(self) -> Callable[[], datetime]: ...
    @property
    def disk(self) -> Disk: ...
    def sql(self, query: str, timeout: float = 30.0) -> tuple[list[str], list[tuple[Any, ...]]]: ...


class Cache:
    """The cache of one store (``Cache.for_store``), or of any folder.

    ``root``: the store's root (the cache lives in ``root/.statekit/cache``).
    ``in_progress``: returns the (show, episode) pairs still in progress, or
    None if it cannot tell (then every entry an episode used is pinned);
    asked only when something is about to be removed. ``clock``: the time
    (tests pass a fake one). ``boot_id``: the current boot's id ("auto":
    read it; None: unknown, so value files are fsynced). Safe to share
    between threads; each process opens its own database connection.
    """

    def __init__(self, root: str | os.PathLike[str], *, config: CacheConfig | None = None,
                 in_progress: Callable[[], Iterable[tuple[str, str]] | None] | None = None,
                 clock: Callable[[], datetime] | None = None, disk: Disk = DISK, timeout: float = 5.0,
                 boot_id: str | None = "auto") -> None:
        self.root = os.path.abspath(os.fspath(root))
        self.config = config or CacheConfig()
        self.timeout = timeout
        self.boot = current_boot_id() if boot_id == "auto" else boot_id
        now: Callable[[], float] = time.time if clock is None or clock is utcnow \
            else (lambda: clock().timestamp())
        self._time = now
        try:
            os.makedirs(self.root, exist_ok=True)
        except OSError as exc:
            raise diskio.storage_error(exc, self.root, "create directory") from exc
        self.directory = folders.ensure_dirs(disk, self.root, (".statekit", "cache"), durable=False)
        self.db_path = self.directory + "/cache.db"
        files = ValueFiles(self.root, self.directory, disk, fsync=self.boot is None)
        self._db = db = CacheDatabase(self.db_path, timeout, reopened=_registrar(self))
        self._uses = uses = Uses(db)
        self._pins = pins = Pins(db, in_progress)
        self._eviction = eviction = Eviction(self.config, db, files, pins,
                                             EvictionLog(self.directory + "/evictions.jsonl", disk, now))
        self._reader = Reader(db, files, uses, pins, eviction, now, self.boot)
        self._writer = Writer(db, files, uses, eviction, now, self.boot)
        _LIVE.add(self)

    @classmethod
    def for_store(cls, store: OwningStore, **options: Any) -> Cache:
        """The store's cache: its ``cache:`` settings, its clock, and its
        index to tell which episodes are still in progress."""
        terminal = frozenset(store.pipeline.terminal)

        def in_progress() -> Episodes | None:
            from sqlalchemy.exc import SQLAlchemyError

            try:
                _columns, rows = store.sql("SELECT show_id, episode_id, stage FROM episodes")
            except (StatekitError, SQLAlchemyError, OSError) as exc:
                log.warning("statekit: the index cannot say which episodes are in progress (%s); "
                            "every cache entry an episode used is kept", exc)
                return None
            return {(show, ep) for show, ep, stage in rows if stage not in terminal}

        options.setdefault("config", store.config.cache)
        options.setdefault("clock", store.clock)
        options.setdefault("timeout", store.config.lock_timeout)
        options.setdefault("disk", store.disk)  # the store's I/O seam (fault-injection tests)
        return cls(store.root, in_progress=in_progress, **options)

    def __repr__(self) -> str:
        return f"Cache({self.root!r})"

    def __enter__(self) -> Cache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _forked(self) -> None:
        """In a forked child: drop the parent's connection and uses."""
        self._db.after_fork()
        self._uses.forget()

    def close(self) -> None:
        """Write the gathered uses and close the database connection."""
        with self._db.lock:
            try:
                self._uses.flush(quiet=True)
            finally:
                self._db.close()
                _LIVE.discard(self)

    # --- reading -----------------------------------------------------------------

    def get(self, key: str, *, episode: tuple[str, str] | None = None) -> bytes | None:
        """The value stored under ``key``, or None. Counts a use (and links
        ``episode`` to the entry, which pins it while the episode is in
        progress). An expired entry is removed and gives None, unless pinned."""
        check_key(key)
        link = None if episode is None else check_episode(episode)
        try:
            found = self._reader.lookup(key, link, want_path=False)
        except sqlite3.Error as exc:
            raise self._db.error(exc) from exc
        return found  # type: ignore[return-value]

    def path(self, key: str, *, episode: tuple[str, str] | None = None) -> str | None:
        """A path to read the value of a file-backed entry (one set from a
        path, or of VALUE_FILE_MIN bytes or more), or None if there is no
        such entry; counts a use like ``get``. Read it soon: an entry that is
        not pinned may be evicted (its file removed) by another process.
        ``ValidationError`` for an entry kept inside the database (use ``get``)."""
        check_key(key)
        link = None if episode is None else check_episode(episode)
        try:
            found = self._reader.lookup(key, link, want_path=True)
        except sqlite3.Error as exc:
            raise self._db.error(exc) from exc
        return found  # type: ignore[return-value]

    def entry(self, key: str) -> CacheEntry | None:
        """What the cache knows about ``key`` (no use is counted), or None."""
        check_key(key)
        try:
            return self._reader.entry(key)
        except sqlite3.Error as exc:
            raise self._db.error(exc) from exc

    def flush(self) -> None:
        """Write the uses, hits and misses gathered in this process."""
        try:
            with self._db.lock:
                self._uses.flush(quiet=False)
        except sqlite3.Error as exc:
            raise self._db.error(exc) from exc

    # --- writing -------------------------------------------------------------------

    def set(self, key: str, value: bytes | bytearray | memoryview | PurePath, *, kind: str = "media",
            expire: float | timedelta | None = None, episode: tuple[str, str] | None = None,
            meta: dict[str, Any] | None = None) -> None:
        """Store ``value`` (bytes, or a ``pathlib.Path`` whose file is copied
        in) under ``key``, replacing what was there. ``expire``: seconds or a
        timedelta (default: the kind's ``expiry_days``). ``episode``: the
        (show, episode) it is for (pins it while that episode is in
        progress). Evicts least recently used entries if the cache passes
        its ``max_size``. Invalid input raises ``ValidationError`` and
        changes nothing."""
        self._writer.set(key, value, kind=kind, expire=expire, episode=episode, meta=meta)

    def get_or_set(self, key: str, make: Callable[[], bytes], *, kind: str = "media",
                   expire: float | timedelta | None = None, episode: tuple[str, str] | None = None,
                   meta: dict[str, Any] | None = None) -> bytes:
        """``get``; on a miss, ``make()`` the bytes, ``set`` them, return them.
        Two processes missing at once may both make the value; the last set wins."""
        check_kind(kind)
        self._eviction.expiry(kind, expire)
        check_meta(meta)
        found = self.get(key, episode=episode)
        if found is not None:
            return found
        made = make()
        if not isinstance(made, (bytes, bytearray, memoryview)):
            raise ValidationError(f"make() must return bytes, not {type(made).__name__}", field="value")
        self.set(key, made, kind=kind, expire=expire, episode=episode, meta=meta)
        return bytes(made)

    # --- removing ----------------------------------------------------------------------

    def delete(self, key: str) -> bool:
        """Remove one entry (logged as ``deleted``); False if there was none."""
        check_key(key)
        try:
            return self._eviction.remove_one(key, "deleted")
        except sqlite3.Error as exc:
            raise self._db.error(exc) from exc

    def gc(self, *, dry_run: bool = False) -> CacheReport:
        """Remove damaged entries (value file missing or of the wrong size),
        expired entries, then least recently used ones down to the cap, and
        stray files (values no entry owns, temp files of dead writers).
        Pinned entries stay (a warning if that leaves the cache over its
        cap). ``dry_run``: only report."""
        try:
            with self._db.lock:
                self._uses.flush(quiet=True)
            report = self._eviction.sweep(self._time(), dry_run=dry_run, check_files=True, protect=None,
                                          strays=True)
        except sqlite3.Error as exc:
            raise self._db.error(exc) from exc
        if report.pinned_over_cap:
            self._eviction.warn_over_cap()
        return report

    def clear(self, *, kind: str | None = None, dry_run: bool = False) -> CacheReport:
        """Remove every entry (of ``kind``), pinned ones too, and (with no
        kind) stray files. ``dry_run``: only report."""
        if kind is not None:
            kind = check_kind(kind)
        try:
            with self._db.lock:
                self._uses.flush(quiet=True)
                return self._eviction.clear(kind, dry_run)
        except sqlite3.Error as exc:
            raise self._db.error(exc) from exc

    # --- stats ------------------------------------------------------------------------

    def stats(self) -> CacheStats:
        """Entries, bytes, the cap, per kind, pinned, hits and misses, evictions."""
        try:
            return count(self._db, self._uses, self._pins, self.config.max_size)
        except sqlite3.Error as exc:
            raise self._db.error(exc) from exc
