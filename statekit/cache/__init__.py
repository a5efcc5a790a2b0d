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

The parts (each module one job; ``Cache`` composes them):

    records     keys, argument checks, the result types (pure)
    database    cache.db: schema, connection, lock, boot id
    values      the value files under blobs/ (write, move in, read, strays)
    uses        uses, hits and misses gathered in memory, and episode links
    pins        which entries an episode in progress holds
    eviction    expiry, the cap, what goes and why; evictions.jsonl
    stats       the numbers ``statekit cache stats`` shows
    reading     get / path: a lookup checked against the value file
    writing     set: the value file and its row in one transaction
    core        ``Cache``, and what a process does at fork and exit
"""

from .core import Cache
from .database import SCHEMA as SCHEMA
from .database import current_boot_id
from .eviction import MAX_EXPIRE_SECONDS as MAX_EXPIRE_SECONDS
from .records import MAX_META_BYTES as MAX_META_BYTES
from .records import REASONS as REASONS
from .records import CacheEntry, CacheReport, CacheStats, Removed, StrayFile, cache_key
from .records import Reason as Reason
from .uses import FLUSH_KEYS as FLUSH_KEYS
from .uses import FLUSH_SECONDS as FLUSH_SECONDS
from .values import COPY_CHUNK as COPY_CHUNK
from .values import STALE_TEMP_SECONDS as STALE_TEMP_SECONDS
from .writing import VALUE_FILE_MIN as VALUE_FILE_MIN

__all__ = ["Cache", "CacheEntry", "CacheReport", "CacheStats", "Removed", "StrayFile", "cache_key", "current_boot_id"]
