"""The cache's numbers: entries and bytes (all, per kind, pinned), the cap,
hits and misses, and evictions by reason."""

from __future__ import annotations

from .database import CacheDatabase
from .pins import Pins
from .records import REASONS, CacheStats
from .uses import Uses


def count(db: CacheDatabase, uses: Uses, pins: Pins, max_size: int) -> CacheStats:
    """Write the gathered uses, then read the counters in one snapshot. The
    index is asked which episodes are in progress only if some entry is
    linked to one (and outside the lock: it may be slow)."""
    with db.lock:
        uses.flush(quiet=True)
        has_links = pins.any_links()
    active = pins.active() if has_links else set()
    with db.lock, db.reading() as conn:
        counters = dict(conn.execute("SELECT name, value FROM counters"))
        kinds = {kind: {"entries": n, "bytes": size or 0} for kind, n, size in conn.execute(
            "SELECT kind, COUNT(*), SUM(size) FROM entries GROUP BY kind ORDER BY kind")}
        pinned = pins.pinned(active, None, conn)
        sizes = dict(conn.execute("SELECT key, size FROM entries WHERE key IN "
                                  "(SELECT DISTINCT key FROM links)")) if pinned else {}
    return CacheStats(
        entries=counters["entries"], bytes=counters["bytes"], max_size=max_size, kinds=kinds,
        pinned_entries=sum(1 for k in pinned if k in sizes), pinned_bytes=sum(sizes.get(k, 0) for k in pinned),
        hits=counters["hits"], misses=counters["misses"],
        evictions={reason: counters[f"evicted.{reason}"] for reason in REASONS})
