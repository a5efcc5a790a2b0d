"""A process-safe cache of expensive results (TTS audio, downloaded media),
keyed by a hash of the request that produced them.

Layout, under ``ROOT/.statekit/cache/``::

    cache.db            SQLite (WAL): one row per entry, the episodes that used
                        it, and the counters (entries, bytes, hits, misses,
                        evictions by reason)
    blobs/<k[:2]>/<k>   the value of an entry set from a file, or of
                        VALUE_FILE_MIN bytes or more (smaller values are kept
                        inside cache.db, which keeps them whole by itself)
    evictions.jsonl     one JSON line per removed entry: at, key, kind, size,
                        reason (lru, expired, cleared, damaged, deleted),
                        last_used, uses

Why not ``diskcache``: it cannot pin the entries of episodes still in
progress, it does not say what it evicted or why, and its culling runs on
its own schedule. Why not the store's ``index.db``: the index is rebuilt
from the files (``rebuild-index``), which would drop the cache's rows; and
SQLAlchemy's per-statement cost is too high for a get of a few microseconds.

How it stays right under many processes and crashes:

- A value file is written to a temp file beside it (named with the
  writer's pid, so ``gc`` can tell a dead writer's leftovers), then renamed
  into place and its row committed in one SQLite write transaction, so the
  rename and the row change of two writers never interleave. A reader checks that the
  bytes it read have the size its row says; anything else (a file replaced
  or removed under it, a crash between rename and commit) is re-checked
  under the write lock and, if still wrong, removed as ``damaged``: a get
  returns the exact bytes of some ``set`` of that key, or None.
- Value files are not fsynced. A ``kill -9`` loses nothing the kernel has
  (the page cache survives it); only a kernel crash or power cut can lose
  written data, and that always changes the machine's boot id. Each row
  records the boot that wrote its file and a CRC-32 of its bytes; the first
  read in a later boot checks the CRC (once), so a file that lost its data
  is never served. Where no boot id is known, each value file is fsynced
  before its row is committed instead. (An fsync costs 1.5-3 ms here: 6x
  diskcache's set at 64 KiB; benchmarks/bench_cache.py shows both.)
- Uses (the LRU order and the counts) are gathered in memory and written in
  one transaction at most ``FLUSH_SECONDS`` after the first of them (on the
  next cache call), before any eviction, ``gc``, ``stats`` or ``entry``, at
  ``close()`` and at exit: a get costs one SELECT, like diskcache's. A
  process killed with ``kill -9`` loses its last second of use counts.

Pinning: an entry remembers the episodes that used it (``episode=`` on
``set``/``get``). While one of them is at a non-terminal stage of the
store's pipeline (asked of the store's index, only when something is about
to be removed), the entry is neither evicted nor expired (a get serves it
past its expiry). If the cache is over its cap and everything left is
pinned, a warning is logged and eviction stops. ``clear`` removes pinned
entries too: a person asked for it. Without a store (``in_progress`` not
given) nothing is pinned.
"""

from __future__ import annotations

import atexit
import errno
import hashlib
import json
import logging
import math
import os
import re
import sqlite3
import stat
import threading
import time
import weakref
import zlib
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import PurePath
from typing import TYPE_CHECKING, Any, Literal

from . import files as diskio
from . import folders
from .errors import (
    CorruptFileError,
    InvalidIdError,
    LockTimeoutError,
    SchemaVersionError,
    StatekitError,
    StorageError,
    UnsafePathError,
    ValidationError,
)
from .files import DISK, Disk
from .ids import check_id
from .models import CacheConfig, utcnow

if TYPE_CHECKING:
    from .store import Store

log = logging.getLogger("statekit")

SCHEMA = 1
"""``PRAGMA user_version`` of cache.db."""
VALUE_FILE_MIN = 32 * 1024
"""Values of this many bytes or more live in their own file (as in diskcache)."""
FLUSH_SECONDS = 1.0
FLUSH_KEYS = 1000
"""Gathered uses are written once the oldest is this old, or this many keys have some."""
STALE_TEMP_SECONDS = 3600.0
"""A temp file of a live process is left alone by ``gc`` for this long."""
MAX_META_BYTES = 64 * 1024
MAX_EXPIRE_SECONDS = 100 * 365 * 86400.0
COPY_CHUNK = 1 << 20

Reason = Literal["lru", "expired", "cleared", "damaged", "deleted"]
REASONS: tuple[Reason, ...] = ("lru", "expired", "cleared", "damaged", "deleted")

Keys = set[str]
Episodes = set[tuple[str, str]]
"""Aliases: inside ``Cache`` the name ``set`` is the method."""

_KEY = re.compile(r"[0-9a-f]{64}")
_TEMP = re.compile(r"\.([0-9a-f]{64})\.(\d+)\..*\.tmp")

_SCHEMA_SQL = f"""
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

_LOOKUP = "SELECT size, file, value, crc, boot, expires_at FROM entries WHERE key = ?"
_LOOKUP_LINKED = """SELECT size, file, value, crc, boot, expires_at,
    EXISTS (SELECT 1 FROM links WHERE key = ?1 AND show_id = ?2 AND episode_id = ?3) FROM entries WHERE key = ?1"""
_UPSERT = """
INSERT INTO entries (key, kind, size, file, value, crc, boot, created_at, last_used, expires_at, uses, meta)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 0, ?)
ON CONFLICT (key) DO UPDATE SET
    kind = excluded.kind, size = excluded.size, file = excluded.file, value = excluded.value,
    crc = excluded.crc, boot = excluded.boot, created_at = excluded.created_at,
    last_used = excluded.last_used, expires_at = excluded.expires_at, meta = excluded.meta
"""
_LINK = "INSERT OR IGNORE INTO links (key, show_id, episode_id) VALUES (?, ?, ?)"
_VICTIM_COLUMNS = "key, kind, size, file, last_used, uses"


def cache_key(request: Any) -> str:
    """The key of a request: sha256 (hex) of its canonical JSON (keys
    sorted, no spaces, UTF-8). ``ValidationError`` if it is not plain JSON."""
    try:
        text = json.dumps(request, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError, RecursionError) as exc:
        raise ValidationError(f"a cache request must be plain JSON data: {' '.join(str(exc).split())}",
                              field="request", hint="use str, int, float, bool, None, lists and dicts with str keys") from None
    return hashlib.sha256(text.encode()).hexdigest()


def current_boot_id() -> str | None:
    """This machine's boot id (Linux), or None where none is known."""
    try:
        with open("/proc/sys/kernel/random/boot_id", "rb") as f:
            text = f.read(100).strip().decode("ascii", "replace")
    except OSError:
        return None
    return text or None


# --- results -----------------------------------------------------------------


def _when(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, timezone.utc)


@dataclass(frozen=True)
class CacheEntry:
    """What the cache knows about one entry (``Cache.entry``)."""

    key: str
    kind: str
    size: int
    stored: Literal["inline", "file"]
    created_at: datetime
    last_used: datetime
    expires_at: datetime
    uses: int
    episodes: list[tuple[str, str]]
    meta: dict[str, Any] | None


@dataclass(frozen=True)
class Removed:
    """One entry a ``gc``, ``clear``, ``delete`` or eviction removed (or would remove)."""

    key: str
    kind: str
    size: int
    reason: Reason
    last_used: datetime
    uses: int

    def to_json(self) -> dict[str, Any]:
        return {"key": self.key, "kind": self.kind, "size": self.size, "reason": self.reason,
                "last_used": self.last_used.isoformat(), "uses": self.uses}


@dataclass(frozen=True)
class StrayFile:
    """A file in blobs/ that no entry owns, removed (or to be removed) by ``gc`` or ``clear``."""

    path: str
    """Relative to the store root."""
    size: int
    reason: Literal["orphan", "temp"]
    """``orphan``: a value file without its row; ``temp``: a dead writer's temp file."""

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "size": self.size, "reason": self.reason}


@dataclass
class CacheReport:
    """What ``gc`` or ``clear`` removed (or, with ``dry_run``, would remove)."""

    dry_run: bool
    removed: list[Removed] = field(default_factory=list)
    strays: list[StrayFile] = field(default_factory=list)
    freed: int = 0
    """Bytes of the removed values and stray files."""
    pinned_over_cap: bool = False
    """The cache is still over its cap: everything left is pinned."""

    def to_json(self) -> dict[str, Any]:
        return {"dry_run": self.dry_run, "removed": [r.to_json() for r in self.removed],
                "strays": [f.to_json() for f in self.strays],
                "freed": self.freed, "pinned_over_cap": self.pinned_over_cap}


@dataclass(frozen=True)
class CacheStats:
    entries: int
    bytes: int
    max_size: int
    kinds: dict[str, dict[str, int]]
    """kind -> {"entries": n, "bytes": b}."""
    pinned_entries: int
    pinned_bytes: int
    hits: int
    misses: int
    evictions: dict[str, int]
    """reason -> entries removed for it, since the cache was made."""

    def to_json(self) -> dict[str, Any]:
        return {"entries": self.entries, "bytes": self.bytes, "max_size": self.max_size, "kinds": self.kinds,
                "pinned": {"entries": self.pinned_entries, "bytes": self.pinned_bytes},
                "hits": self.hits, "misses": self.misses, "evictions": self.evictions}


@dataclass(frozen=True)
class _Victim:
    key: str
    kind: str
    size: int
    file: int
    last_used: float
    uses: int
    reason: Reason

    @classmethod
    def of(cls, row: tuple[Any, ...], reason: Reason) -> _Victim:
        key, kind, size, in_file, last_used, uses = row
        return cls(key, kind, size, in_file, last_used, uses, reason)

    def removed(self) -> Removed:
        return Removed(self.key, self.kind, self.size, self.reason, _when(self.last_used), self.uses)


# --- input checks -------------------------------------------------------------


def _check_key(key: object) -> str:
    if type(key) is str and _KEY.fullmatch(key):
        return key
    shown = repr(key) if len(repr(key)) <= 70 else repr(key)[:67] + "..."
    raise ValidationError(f"invalid cache key {shown}: expected 64 lowercase hex digits",
                          field="key", hint="make keys with statekit.cache.cache_key(request)")


def _check_kind(kind: object) -> str:
    try:
        return check_id(kind, "cache kind")
    except InvalidIdError as exc:
        raise ValidationError(exc.message, field="kind", hint="a kind is an id such as 'tts' or 'media'") from None


def _check_episode(episode: object) -> tuple[str, str]:
    if not isinstance(episode, tuple) or len(episode) != 2:
        raise ValidationError(f"episode must be a (show, episode) pair, got {episode!r:.60}", field="episode")
    try:
        return check_id(episode[0], "show id"), check_id(episode[1], "episode id")
    except InvalidIdError as exc:
        raise ValidationError(exc.message, field="episode", hint=exc.hint) from None


def _check_meta(meta: object) -> str | None:
    if meta is None:
        return None
    if not isinstance(meta, dict) or not all(isinstance(k, str) for k in meta):
        raise ValidationError(f"meta must be a dict with str keys, got {type(meta).__name__}", field="meta")
    try:
        text = json.dumps(meta, ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError, RecursionError) as exc:
        raise ValidationError(f"meta must be plain JSON data: {' '.join(str(exc).split())}", field="meta") from None
    if len(text) > MAX_META_BYTES:
        raise ValidationError(f"meta is {len(text)} bytes of JSON; at most {MAX_META_BYTES} are kept", field="meta")
    return text


# --- processes ----------------------------------------------------------------

_LIVE: weakref.WeakSet[Cache] = weakref.WeakSet()
_INHERITED: list[sqlite3.Connection] = []
"""Connections a forked child inherited: never used or closed there (SQLite forbids both)."""


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


# --- the cache ----------------------------------------------------------------------


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
        self._in_progress = in_progress
        self._time: Callable[[], float] = time.time if clock is None or clock is utcnow \
            else (lambda: clock().timestamp())
        self._disk = disk
        try:
            os.makedirs(self.root, exist_ok=True)
        except OSError as exc:
            raise diskio.storage_error(exc, self.root, "create directory") from exc
        self.directory = folders.ensure_dirs(disk, self.root, (".statekit", "cache"), durable=False)
        self.db_path = self.directory + "/cache.db"
        self._blobs = self.directory + "/blobs"
        self._log_path = self.directory + "/evictions.jsonl"
        self._lock = threading.RLock()
        self._made: Keys = set()
        self._uses: dict[str, list[float]] = {}
        self._hits = 0
        self._misses = 0
        self._since = 0.0
        self._warned_at = -1e9
        self._db: sqlite3.Connection | None = self._open()
        _LIVE.add(self)

    @classmethod
    def for_store(cls, store: Store, **options: Any) -> Cache:
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

    # --- the database ---------------------------------------------------------

    def _open(self) -> sqlite3.Connection:
        if os.path.islink(self.db_path):
            raise UnsafePathError(f"refusing to follow a symlink at {self.db_path}", path=self.db_path)
        try:
            conn = sqlite3.connect(self.db_path, timeout=self.timeout, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            raise self._db_error(exc) from exc
        try:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA:
                raise SchemaVersionError(f"{self.db_path}: cache schema {version} is newer than this statekit "
                                         f"({SCHEMA})", path=self.db_path, found=version, supported=SCHEMA,
                                         hint="upgrade statekit, or remove .statekit/cache (it is only a cache)")
            if conn.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                conn.execute("PRAGMA auto_vacuum = INCREMENTAL")  # takes effect only before the first table
                conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")  # a power cut may lose the last commits, never tear one
            conn.execute("PRAGMA journal_size_limit = 67108864")
            if version < SCHEMA:
                conn.executescript(_SCHEMA_SQL)
        except sqlite3.Error as exc:
            conn.close()
            raise self._db_error(exc) from exc
        except BaseException:
            conn.close()
            raise
        return conn

    def _conn(self) -> sqlite3.Connection:
        db = self._db
        if db is None:  # after close(), or in a forked child
            db = self._db = self._open()
            _LIVE.add(self)
        return db

    def _forked(self) -> None:
        """In a forked child: never touch the parent's connection; open anew on first use."""
        if self._db is not None:
            _INHERITED.append(self._db)
        self._db = None
        self._lock = threading.RLock()
        self._uses = {}
        self._hits = self._misses = 0

    def _db_error(self, exc: sqlite3.Error) -> StatekitError:
        text = " ".join(str(exc).split())
        if isinstance(exc, sqlite3.OperationalError) and ("locked" in text or "busy" in text):
            return LockTimeoutError(f"the cache database {self.db_path} stayed locked for {self.timeout:g} s",
                                    path=self.db_path, timeout=self.timeout,
                                    hint="another process holds the cache; retry, or raise the lock timeout")
        if isinstance(exc, sqlite3.DatabaseError) and ("malformed" in text or "not a database" in text):
            return CorruptFileError(f"{self.db_path}: the cache database is damaged ({text})", path=self.db_path,
                                    hint="remove .statekit/cache (it is only a cache) to start an empty one")
        return StorageError(f"cache database {self.db_path}: {text}", path=self.db_path)

    @contextmanager
    def _writing(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (the caller holds ``self._lock``)."""
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    @contextmanager
    def _reading(self) -> Iterator[sqlite3.Connection]:
        """One read transaction: a consistent snapshot (the caller holds ``self._lock``)."""
        conn = self._conn()
        conn.execute("BEGIN")
        try:
            yield conn
        finally:
            if conn.in_transaction:
                conn.execute("ROLLBACK")

    def close(self) -> None:
        """Write the gathered uses and close the database connection."""
        with self._lock:
            try:
                self._flush(quiet=True)
            finally:
                if self._db is not None:
                    self._db.close()
                    self._db = None
                _LIVE.discard(self)

    # --- paths --------------------------------------------------------------------

    def _blob(self, key: str) -> str:
        return f"{self._blobs}/{key[:2]}/{key}"

    def _blob_dir(self, key: str) -> str:
        directory = f"{self._blobs}/{key[:2]}"
        if directory not in self._made:
            folders.ensure_dirs(self._disk, self.directory, ("blobs", key[:2]), durable=False)
            self._made.add(directory)
        return directory

    # --- reading -----------------------------------------------------------------

    def get(self, key: str, *, episode: tuple[str, str] | None = None) -> bytes | None:
        """The value stored under ``key``, or None. Counts a use (and links
        ``episode`` to the entry, which pins it while the episode is in
        progress). An expired entry is removed and gives None, unless pinned."""
        _check_key(key)
        link = None if episode is None else _check_episode(episode)
        try:
            found = self._lookup(key, link, want_path=False)
        except sqlite3.Error as exc:
            raise self._db_error(exc) from exc
        return found  # type: ignore[return-value]

    def path(self, key: str, *, episode: tuple[str, str] | None = None) -> str | None:
        """A path to read the value of a file-backed entry (one set from a
        path, or of VALUE_FILE_MIN bytes or more), or None if there is no
        such entry; counts a use like ``get``. Read it soon: an entry that is
        not pinned may be evicted (its file removed) by another process.
        ``ValidationError`` for an entry kept inside the database (use ``get``)."""
        _check_key(key)
        link = None if episode is None else _check_episode(episode)
        try:
            found = self._lookup(key, link, want_path=True)
        except sqlite3.Error as exc:
            raise self._db_error(exc) from exc
        return found  # type: ignore[return-value]

    def _lookup(self, key: str, link: tuple[str, str] | None, want_path: bool) -> bytes | str | None:
        now = self._time()
        query, args = (_LOOKUP, (key,)) if link is None else (_LOOKUP_LINKED, (key, *link))
        for _attempt in range(3):
            with self._lock:
                row = self._conn().execute(query, args).fetchone()
                if row is None:
                    break
                new_link = None if link is None or row[6] else link  # written once, not on every get
                if not row[1] and not want_path and row[5] > now:  # inline: done here
                    self._note_use(key, now, new_link)
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
            self._note_use(key, now, new_link)
            return found
        self._note_miss()
        return None

    def _read_file(self, key: str, size: int, crc: int | None, boot: str | None, want_path: bool,
                   conn: sqlite3.Connection | None = None) -> bytes | str | None:
        """The value file's bytes (or its path) if it holds the value its row
        describes; None if not (or not any more). ``conn``: the write
        transaction the caller is in."""
        path = self._blob(key)
        check_crc = boot is not None and boot != self.boot and crc is not None
        try:
            if want_path and not check_crc:
                st = os.lstat(path)
                return path if stat.S_ISREG(st.st_mode) and st.st_size == size else None
            data = _read_exact(path, size)
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENXIO, errno.EISDIR):  # a symlink, socket or folder put there
                return None
            raise diskio.storage_error(exc, path, "read") from exc
        if data is None:
            return None
        if check_crc:
            if zlib.crc32(data) != crc:
                return None
            if self.boot is not None:  # read back from the disk after a reboot: good from now on
                verified = "UPDATE entries SET boot = ? WHERE key = ? AND crc = ? AND size = ?"
                if conn is not None:
                    conn.execute(verified, (self.boot, key, crc, size))
                else:
                    with self._lock, self._writing() as own:
                        own.execute(verified, (self.boot, key, crc, size))
        return path if want_path else data

    def _recheck(self, key: str, want_path: bool) -> bytes | str | Literal["gone", "changed"]:
        """A value file did not match its row: look again holding the write
        lock (no file is renamed in or removed meanwhile). Still wrong: the
        entry is removed as damaged."""
        with self._lock:
            with self._writing() as conn:
                row = conn.execute(_LOOKUP, (key,)).fetchone()
                if row is None:
                    return "gone"
                size, in_file, _value, crc, boot, _expires = row
                if not in_file:
                    return "changed"
                found = self._read_file(key, size, crc, boot, want_path, conn)
                if found is not None:
                    return found
                victim = self._victim(conn, key, "damaged")
                if victim is None:
                    return "gone"
                self._remove(conn, [victim])
            self._log([victim])
        log.warning("statekit: cache entry %s had a damaged value file; removed", key)
        return "gone"

    def _serve_expired(self, key: str, link: tuple[str, str] | None, now: float) -> bool:
        """An expired entry: True to serve it (it is pinned), else it is removed."""
        if link is not None:
            with self._lock:
                self._link(key, link)
        if self._pinned(None, key) and key in self._pinned(self._active(), key):
            return True
        with self._lock:
            with self._writing() as conn:
                victim = self._victim(conn, key, "expired", expired_at=now)
                if victim is not None:
                    self._remove(conn, [victim])
            if victim is not None:
                self._log([victim])
        return False

    def entry(self, key: str) -> CacheEntry | None:
        """What the cache knows about ``key`` (no use is counted), or None."""
        _check_key(key)
        try:
            with self._lock:
                self._flush(quiet=True)
                with self._reading() as conn:
                    row = conn.execute("SELECT kind, size, file, created_at, last_used, expires_at, uses, meta "
                                       "FROM entries WHERE key = ?", (key,)).fetchone()
                    links = conn.execute("SELECT show_id, episode_id FROM links WHERE key = ? "
                                         "ORDER BY show_id, episode_id", (key,)).fetchall()
        except sqlite3.Error as exc:
            raise self._db_error(exc) from exc
        if row is None:
            return None
        kind, size, in_file, created, used, expires, uses, meta = row
        return CacheEntry(key, kind, size, "file" if in_file else "inline", _when(created), _when(used),
                          _when(expires), uses, [tuple(link) for link in links],
                          None if meta is None else json.loads(meta))

    # --- uses ----------------------------------------------------------------------

    def _note_use(self, key: str, now: float, link: tuple[str, str] | None) -> None:
        with self._lock:
            if link is not None:
                self._link(key, link)
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
                self._flush(quiet=True)

    def _note_miss(self) -> None:
        with self._lock:
            if not (self._uses or self._hits or self._misses):
                self._since = time.monotonic()
            self._misses += 1
            if time.monotonic() - self._since >= FLUSH_SECONDS:
                self._flush(quiet=True)

    def _link(self, key: str, link: tuple[str, str]) -> None:
        """Record that an episode used ``key`` (the caller holds ``self._lock``)."""
        with self._writing() as conn:
            if conn.execute("SELECT 1 FROM entries WHERE key = ?", (key,)).fetchone():
                conn.execute(_LINK, (key, *link))

    def flush(self) -> None:
        """Write the uses, hits and misses gathered in this process."""
        try:
            with self._lock:
                self._flush(quiet=False)
        except sqlite3.Error as exc:
            raise self._db_error(exc) from exc

    def _flush(self, quiet: bool) -> None:
        if not (self._uses or self._hits or self._misses):
            return
        uses, hits, misses = self._uses, self._hits, self._misses
        try:
            with self._writing() as conn:
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
        _check_key(key)
        kind = _check_kind(kind)
        seconds = self._expiry(kind, expire)
        link = None if episode is None else _check_episode(episode)
        meta_text = _check_meta(meta)
        if isinstance(value, (bytes, bytearray, memoryview)):
            data = value if type(value) is bytes else bytes(value)
            self._check_size(len(data))
            if len(data) < VALUE_FILE_MIN:
                return self._store(key, kind, len(data), data, None, None, seconds, link, meta_text)
            tmp, crc = self._write_temp(key, data), (zlib.crc32(data) if self.boot is not None else None)
            size = len(data)
        elif isinstance(value, PurePath):
            tmp, size, crc = self._copy_temp(key, value)
        else:
            raise ValidationError(f"a cache value must be bytes or a pathlib.Path, not {type(value).__name__}",
                                  field="value")
        return self._store(key, kind, size, None, tmp, crc, seconds, link, meta_text)

    def get_or_set(self, key: str, make: Callable[[], bytes], *, kind: str = "media",
                   expire: float | timedelta | None = None, episode: tuple[str, str] | None = None,
                   meta: dict[str, Any] | None = None) -> bytes:
        """``get``; on a miss, ``make()`` the bytes, ``set`` them, return them.
        Two processes missing at once may both make the value; the last set wins."""
        _check_kind(kind)
        self._expiry(kind, expire)
        _check_meta(meta)
        found = self.get(key, episode=episode)
        if found is not None:
            return found
        made = make()
        if not isinstance(made, (bytes, bytearray, memoryview)):
            raise ValidationError(f"make() must return bytes, not {type(made).__name__}", field="value")
        self.set(key, made, kind=kind, expire=expire, episode=episode, meta=meta)
        return bytes(made)

    def _expiry(self, kind: str, expire: object) -> float:
        if expire is None:
            return self.config.expiry_days.get(kind, self.config.default_expiry_days) * 86400.0
        if isinstance(expire, timedelta):
            seconds = expire.total_seconds()
        elif type(expire) in (int, float):
            seconds = float(expire)  # type: ignore[arg-type]
        else:
            raise ValidationError(f"expire must be seconds or a timedelta, not {type(expire).__name__}",
                                  field="expire")
        if not math.isfinite(seconds) or not 0 < seconds <= MAX_EXPIRE_SECONDS:
            raise ValidationError(f"expire must be a positive time of at most 100 years, got {expire!r}",
                                  field="expire")
        return seconds

    def _check_size(self, size: int) -> None:
        if size > self.config.max_size:
            raise ValidationError(f"a value of {size} bytes is larger than the cache's max_size "
                                  f"({self.config.max_size} bytes)", field="value",
                                  hint="raise cache.max_size in statekit.yaml, or keep this file elsewhere")

    def _write_temp(self, key: str, data: bytes) -> str:
        """A temp file beside the value's file holding ``data`` (fsynced when
        there is no boot id to check it by after a crash)."""
        fd, tmp = self._temp(key)
        try:
            diskio.write_all(self._disk, fd, data)
            self._finish_temp(fd)
        except OSError as exc:
            self._discard_temp(fd, tmp)
            raise diskio.storage_error(exc, tmp, "write") from exc
        except BaseException:
            self._discard_temp(fd, tmp)
            raise
        return tmp

    def _copy_temp(self, key: str, source: PurePath) -> tuple[str, int, int | None]:
        try:
            src = os.open(source, os.O_RDONLY | diskio.O_CLOEXEC | diskio.O_NONBLOCK)
        except OSError as exc:
            raise ValidationError(f"cannot read the value file {source}: {exc.strerror or exc}",
                                  field="value") from None
        try:
            st = os.fstat(src)
            if not stat.S_ISREG(st.st_mode):
                raise ValidationError(f"the value file {source} is not a regular file", field="value")
            self._check_size(st.st_size)
            fd, tmp = self._temp(key)
            size, crc = 0, 0
            try:
                while chunk := os.read(src, COPY_CHUNK):
                    diskio.write_all(self._disk, fd, chunk)
                    crc = zlib.crc32(chunk, crc)
                    size += len(chunk)
                self._check_size(size)  # it grew while we copied it
                self._finish_temp(fd)
            except OSError as exc:
                self._discard_temp(fd, tmp)
                raise diskio.storage_error(exc, tmp, "write") from exc
            except BaseException:
                self._discard_temp(fd, tmp)
                raise
            return tmp, size, (crc if self.boot is not None else None)
        finally:
            os.close(src)

    def _temp(self, key: str) -> tuple[int, str]:
        prefix = f".{key}.{os.getpid()}."
        try:
            return self._disk.mkstemp(self._blob_dir(key), prefix, diskio.TEMP_SUFFIX)
        except FileNotFoundError:  # the folder was removed by hand: make it again
            self._made.discard(f"{self._blobs}/{key[:2]}")
            try:
                return self._disk.mkstemp(self._blob_dir(key), prefix, diskio.TEMP_SUFFIX)
            except OSError as exc:
                raise diskio.storage_error(exc, self._blob(key), "create a temp file for") from exc
        except OSError as exc:
            raise diskio.storage_error(exc, self._blob(key), "create a temp file for") from exc

    def _finish_temp(self, fd: int) -> None:
        if self.boot is None:
            self._disk.fsync(fd)
        self._disk.close(fd)  # some file systems report a write error only here

    def _discard_temp(self, fd: int, tmp: str) -> None:
        for undo in (lambda: os.close(fd), lambda: os.unlink(tmp)):
            try:
                undo()
            except OSError:
                pass

    def _store(self, key: str, kind: str, size: int, data: bytes | None, tmp: str | None, crc: int | None,
               seconds: float, link: tuple[str, str] | None, meta: str | None) -> None:
        """Commit one entry: rename its value file in (if any) and upsert its
        row in one write transaction; then evict if over the cap."""
        now = self._time()
        blob = self._blob(key)
        in_file = data is None
        try:
            with self._lock:
                try:
                    with self._writing() as conn:
                        if tmp is None:
                            old = conn.execute("SELECT file FROM entries WHERE key = ?", (key,)).fetchone()
                            if old is not None and old[0]:
                                self._unlink(blob)
                        else:
                            # out of the way first: ext4 flushes a file renamed over another
                            # (auto_da_alloc), 1.5 ms for 64 KiB; a reader meanwhile rechecks under our lock
                            self._unlink(blob)
                            try:
                                self._disk.replace(tmp, blob)
                            except OSError as exc:
                                raise diskio.storage_error(exc, blob, "write") from exc
                            tmp = None
                        try:
                            conn.execute(_UPSERT, (key, kind, size, in_file, data, crc,
                                                   self.boot if crc is not None else None,
                                                   now, now, now + seconds, meta))
                            if link is not None:
                                conn.execute(_LINK, (key, *link))
                        except BaseException:
                            if in_file:  # the file is in place but its row is not: take it out again
                                self._unlink(blob, quiet=True)
                            raise
                        total = conn.execute("SELECT value FROM counters WHERE name = 'bytes'").fetchone()[0]
                finally:
                    if tmp is not None:
                        try:
                            os.unlink(tmp)
                        except OSError:
                            pass
            if total > self.config.max_size:
                self._evict(now, protect=key)
        except sqlite3.Error as exc:
            raise self._db_error(exc) from exc

    def _unlink(self, path: str, quiet: bool = False) -> None:
        """Remove a value file, if it is there."""
        try:
            self._disk.unlink(path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            if not quiet:
                raise diskio.storage_error(exc, path, "remove") from exc

    # --- removing ----------------------------------------------------------------------

    def delete(self, key: str) -> bool:
        """Remove one entry (logged as ``deleted``); False if there was none."""
        _check_key(key)
        try:
            with self._lock:
                with self._writing() as conn:
                    victim = self._victim(conn, key, "deleted")
                    if victim is not None:
                        self._remove(conn, [victim])
                if victim is not None:
                    self._log([victim])
        except sqlite3.Error as exc:
            raise self._db_error(exc) from exc
        return victim is not None

    def gc(self, *, dry_run: bool = False) -> CacheReport:
        """Remove damaged entries (value file missing or of the wrong size),
        expired entries, then least recently used ones down to the cap, and
        stray files (values no entry owns, temp files of dead writers).
        Pinned entries stay (a warning if that leaves the cache over its
        cap). ``dry_run``: only report."""
        try:
            with self._lock:
                self._flush(quiet=True)
            report = self._sweep(self._time(), dry_run=dry_run, check_files=True, protect=None, strays=True)
        except sqlite3.Error as exc:
            raise self._db_error(exc) from exc
        if report.pinned_over_cap:
            self._warn_over_cap()
        return report

    def clear(self, *, kind: str | None = None, dry_run: bool = False) -> CacheReport:
        """Remove every entry (of ``kind``), pinned ones too, and (with no
        kind) stray files. ``dry_run``: only report."""
        if kind is not None:
            kind = _check_kind(kind)
        report = CacheReport(dry_run=dry_run)
        try:
            with self._lock:
                self._flush(quiet=True)
                with self._reading() if dry_run else self._writing() as conn:
                    where, args = ("WHERE kind = ?", (kind,)) if kind is not None else ("", ())
                    victims = [_Victim.of(row, "cleared") for row in conn.execute(
                        f"SELECT {_VICTIM_COLUMNS} FROM entries {where} ORDER BY last_used, key", args)]
                    stray = self._strays(conn) if kind is None else []
                    if not dry_run:
                        self._remove(conn, victims)
                        self._remove_strays(stray)
                if not dry_run:
                    self._log(victims)
                    self._vacuum()
        except sqlite3.Error as exc:
            raise self._db_error(exc) from exc
        report.removed = [v.removed() for v in victims]
        report.strays = stray
        report.freed = sum(v.size for v in victims) + sum(f.size for f in stray)
        return report

    def _evict(self, now: float, protect: str) -> None:
        """After a set passed the cap: expired, then least recently used
        entries go until the cache fits (never pinned ones, nor ``protect``)."""
        with self._lock:
            self._flush(quiet=True)
        report = self._sweep(now, dry_run=False, check_files=False, protect=protect, strays=False)
        if report.pinned_over_cap and time.monotonic() - self._warned_at > 60:  # once a minute, not every set
            self._warned_at = time.monotonic()
            self._warn_over_cap()

    def _warn_over_cap(self) -> None:
        log.warning("statekit: the cache holds more than its max_size (%d bytes), but every entry left is "
                    "pinned by an episode in progress", self.config.max_size)

    def _sweep(self, now: float, *, dry_run: bool, check_files: bool, protect: str | None,
               strays: bool) -> CacheReport:
        report = CacheReport(dry_run=dry_run)
        with self._lock:
            has_links = self._conn().execute("SELECT EXISTS (SELECT 1 FROM links)").fetchone()[0]
        active = self._active() if has_links else set()  # asked outside the lock: the index may be slow
        with self._lock:
            with self._reading() if dry_run else self._writing() as conn:
                pinned = self._pinned(active, None, conn)
                if protect is not None:
                    pinned.add(protect)
                victims, report.pinned_over_cap = self._choose(conn, now, pinned, check_files)
                stray = self._strays(conn) if strays else []
                if not dry_run:
                    self._remove(conn, victims)
                    self._remove_strays(stray)
            if not dry_run and (victims or stray):
                self._log(victims)
                if strays:
                    self._vacuum()
        report.removed = [v.removed() for v in victims]
        report.strays = stray
        report.freed = sum(v.size for v in victims) + sum(f.size for f in stray)
        return report

    def _choose(self, conn: sqlite3.Connection, now: float, pinned: Keys,
                check_files: bool) -> tuple[list[_Victim], bool]:
        """What to remove, in order: damaged, expired, then least recently
        used while over the cap. True too if the cap is still passed."""
        victims: list[_Victim] = []
        chosen: Keys = set()

        def take(row: tuple[Any, ...], reason: Reason) -> None:
            victims.append(_Victim.of(row, reason))
            chosen.add(row[0])

        if check_files:
            for row in conn.execute(f"SELECT {_VICTIM_COLUMNS} FROM entries WHERE file = 1 ORDER BY key"):
                try:
                    st = os.lstat(self._blob(row[0]))
                    whole = stat.S_ISREG(st.st_mode) and st.st_size == row[2]
                except (FileNotFoundError, NotADirectoryError):
                    whole = False
                if not whole:
                    take(row, "damaged")
        for row in conn.execute(f"SELECT {_VICTIM_COLUMNS} FROM entries WHERE expires_at <= ? "
                                "ORDER BY expires_at, key", (now,)):
            if row[0] not in chosen and row[0] not in pinned:
                take(row, "expired")
        total = conn.execute("SELECT value FROM counters WHERE name = 'bytes'").fetchone()[0]
        total -= sum(v.size for v in victims)
        if total > self.config.max_size:
            for row in conn.execute(f"SELECT {_VICTIM_COLUMNS} FROM entries ORDER BY last_used, key"):
                if row[0] in chosen or row[0] in pinned:
                    continue
                take(row, "lru")
                total -= row[2]
                if total <= self.config.max_size:
                    break
        return victims, total > self.config.max_size

    def _victim(self, conn: sqlite3.Connection, key: str, reason: Reason,
                expired_at: float | None = None) -> _Victim | None:
        query = f"SELECT {_VICTIM_COLUMNS} FROM entries WHERE key = ?"
        args: tuple[Any, ...] = (key,)
        if expired_at is not None:  # still expired (not set again meanwhile)
            query, args = query + " AND expires_at <= ?", (key, expired_at)
        row = conn.execute(query, args).fetchone()
        return None if row is None else _Victim.of(row, reason)

    def _remove(self, conn: sqlite3.Connection, victims: list[_Victim]) -> None:
        """Delete the rows and value files (inside the write transaction: no
        writer renames a file in meanwhile)."""
        counts: dict[str, int] = {}
        for v in victims:
            conn.execute("DELETE FROM entries WHERE key = ?", (v.key,))
            if v.file:
                self._unlink(self._blob(v.key))
            counts[v.reason] = counts.get(v.reason, 0) + 1
        conn.executemany("UPDATE counters SET value = value + ? WHERE name = ?",
                         [(n, f"evicted.{reason}") for reason, n in counts.items()])

    def _strays(self, conn: sqlite3.Connection) -> list[StrayFile]:
        """Files in blobs/ no entry owns: a value file without its row (a
        writer stopped between rename and commit), a temp file of a writer
        that is dead (or older than STALE_TEMP_SECONDS). Other names are not ours."""
        owned = {key for (key,) in conn.execute("SELECT key FROM entries WHERE file = 1")}
        found: list[StrayFile] = []
        try:
            folders = sorted(os.scandir(self._blobs), key=lambda e: e.name)
        except FileNotFoundError:
            return found
        for folder in folders:
            if not folder.is_dir(follow_symlinks=False) or len(folder.name) != 2:
                continue
            for item in sorted(os.scandir(folder.path), key=lambda e: e.name):
                if not item.is_file(follow_symlinks=False):
                    continue
                st = item.stat(follow_symlinks=False)
                if _KEY.fullmatch(item.name):
                    if item.name not in owned:
                        found.append(StrayFile(os.path.relpath(item.path, self.root), st.st_size, "orphan"))
                    continue
                temp = _TEMP.fullmatch(item.name)
                if temp and (not _alive(int(temp[2])) or time.time() - st.st_mtime > STALE_TEMP_SECONDS):
                    found.append(StrayFile(os.path.relpath(item.path, self.root), st.st_size, "temp"))
        return found

    def _remove_strays(self, strays: list[StrayFile]) -> None:
        for stray in strays:
            self._unlink(os.path.join(self.root, stray.path))

    def _vacuum(self) -> None:
        try:
            self._conn().execute("PRAGMA incremental_vacuum")
        except sqlite3.OperationalError:  # busy: the free pages are reused anyway
            pass

    def _log(self, victims: list[_Victim]) -> None:
        """Append one line per removed entry to evictions.jsonl (a record:
        a failure to write it is logged, the removal stands)."""
        if not victims:
            return
        at = _when(self._time()).isoformat()
        lines = b"".join(json.dumps({"at": at, **v.removed().to_json()}).encode() + b"\n" for v in victims)
        try:
            fd = self._disk.open(self._log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | diskio.O_NOFOLLOW
                                 | diskio.O_CLOEXEC, 0o666)
            try:
                diskio.write_all(self._disk, fd, lines)
            finally:
                os.close(fd)
        except OSError as exc:
            log.warning("statekit: could not log %d cache removal(s) to %s: %s", len(victims), self._log_path, exc)

    # --- pinning and stats ----------------------------------------------------------------

    def _active(self) -> Episodes | None:
        """The episodes in progress; None if that cannot be told."""
        if self._in_progress is None:
            return set()
        found = self._in_progress()
        return None if found is None else set(found)

    def _pinned(self, active: Episodes | None, key: str | None,
                conn: sqlite3.Connection | None = None) -> Keys:
        """Keys (all, or just ``key``) linked to an episode in ``active``
        (every linked key when ``active`` is None)."""
        if conn is None:
            with self._lock:
                return self._pinned(active, key, self._conn())
        if key is None:
            links = conn.execute("SELECT key, show_id, episode_id FROM links")
        else:
            links = conn.execute("SELECT key, show_id, episode_id FROM links WHERE key = ?", (key,))
        return {k for k, show, ep in links if active is None or (show, ep) in active}

    def stats(self) -> CacheStats:
        """Entries, bytes, the cap, per kind, pinned, hits and misses, evictions."""
        try:
            with self._lock:
                self._flush(quiet=True)
                has_links = self._conn().execute("SELECT EXISTS (SELECT 1 FROM links)").fetchone()[0]
            active = self._active() if has_links else set()
            with self._lock, self._reading() as conn:
                counters = dict(conn.execute("SELECT name, value FROM counters"))
                kinds = {kind: {"entries": n, "bytes": size or 0} for kind, n, size in conn.execute(
                    "SELECT kind, COUNT(*), SUM(size) FROM entries GROUP BY kind ORDER BY kind")}
                pinned = self._pinned(active, None, conn)
                sizes = dict(conn.execute("SELECT key, size FROM entries WHERE key IN "
                                          "(SELECT DISTINCT key FROM links)")) if pinned else {}
        except sqlite3.Error as exc:
            raise self._db_error(exc) from exc
        return CacheStats(
            entries=counters["entries"], bytes=counters["bytes"], max_size=self.config.max_size, kinds=kinds,
            pinned_entries=sum(1 for k in pinned if k in sizes), pinned_bytes=sum(sizes.get(k, 0) for k in pinned),
            hits=counters["hits"], misses=counters["misses"],
            evictions={reason: counters[f"evicted.{reason}"] for reason in REASONS})


def _read_exact(path: str, size: int) -> bytes | None:
    """The bytes of the regular file at ``path`` if it has exactly ``size``
    of them, else None. Never follows a symlink. (One read of the known
    size: reading "to the end" costs a buffer resize, 10x slower at 1 MB.)"""
    fd = os.open(path, os.O_RDONLY | diskio.O_NOFOLLOW | diskio.O_CLOEXEC | diskio.O_NONBLOCK)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size != size:
            return None
        data = os.read(fd, size)
        if len(data) < size:  # a short read: rare, but allowed
            parts = [data]
            got = len(data)
            while got < size and (chunk := os.read(fd, size - got)):
                parts.append(chunk)
                got += len(chunk)
            data = b"".join(parts)
        return data if len(data) == size else None
    finally:
        os.close(fd)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError as exc:  # EPERM: alive, someone else's
        return exc.errno == errno.EPERM
    return True


__all__ = ["Cache", "CacheEntry", "CacheReport", "CacheStats", "Removed", "StrayFile", "cache_key", "current_boot_id"]
