"""The policy: how long an entry lives (per kind), the cap on the cache's
bytes, and what goes when: damaged entries, expired ones, then the least
recently used while over the cap, never a pinned one (``clear`` takes
pinned ones too: a person asked for it). Each removal is logged to
evictions.jsonl and counted by reason."""

from __future__ import annotations

import json
import logging
import math
import os
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from .. import files as diskio
from ..errors import ValidationError
from ..files import Disk
from ..models import CacheConfig
from .database import TOTAL_BYTES, CacheDatabase
from .pins import Pins
from .records import CacheReport, Keys, Reason, Removed, StrayFile, when
from .values import ValueFiles

log = logging.getLogger("statekit")

MAX_EXPIRE_SECONDS = 100 * 365 * 86400.0

_VICTIM_COLUMNS = "key, kind, size, file, last_used, uses"


@dataclass(frozen=True)
class Victim:
    """An entry chosen for removal, and why."""

    key: str
    kind: str
    size: int
    file: int
    last_used: float
    uses: int
    reason: Reason

    @classmethod
    def of(cls, row: tuple[Any, ...], reason: Reason) -> Victim:
        key, kind, size, in_file, last_used, uses = row
        return cls(key, kind, size, in_file, last_used, uses, reason)

    def removed(self) -> Removed:
        return Removed(self.key, self.kind, self.size, self.reason, when(self.last_used), self.uses)


class EvictionLog:
    """evictions.jsonl: one JSON line per removed entry (at, key, kind,
    size, reason, last_used, uses)."""

    def __init__(self, path: str, disk: Disk, time: Callable[[], float]) -> None:
        self.path = path
        self._disk = disk
        self._time = time

    def append(self, victims: list[Victim]) -> None:
        """A record: a failure to write it is logged, the removal stands."""
        if not victims:
            return
        at = when(self._time()).isoformat()
        lines = b"".join(json.dumps({"at": at, **v.removed().to_json()}).encode() + b"\n" for v in victims)
        try:
            fd = self._disk.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | diskio.O_NOFOLLOW
                                 | diskio.O_CLOEXEC, 0o666)
            try:
                diskio.write_all(self._disk, fd, lines)
            finally:
                os.close(fd)
        except OSError as exc:
            log.warning("statekit: could not log %d cache removal(s) to %s: %s", len(victims), self.path, exc)


class Eviction:
    """The policy of one cache (its ``CacheConfig``), acting on its
    database and value files. Methods taking ``conn`` run inside the
    caller's write transaction; the others take the database's lock."""

    def __init__(self, config: CacheConfig, db: CacheDatabase, files: ValueFiles, pins: Pins,
                 journal: EvictionLog) -> None:
        self.config = config
        self.journal = journal
        self._db = db
        self._files = files
        self._pins = pins
        self._warned_at = -1e9

    # --- limits ---------------------------------------------------------------------

    def expiry(self, kind: str, expire: object) -> float:
        """Seconds an entry of ``kind`` lives: ``expire`` (seconds or a
        timedelta), else the kind's ``expiry_days``."""
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

    def check_size(self, size: int) -> None:
        """``ValidationError`` for a value larger than the whole cache may be."""
        if size > self.config.max_size:
            raise ValidationError(f"a value of {size} bytes is larger than the cache's max_size "
                                  f"({self.config.max_size} bytes)", field="value",
                                  hint="raise cache.max_size in statekit.yaml, or keep this file elsewhere")

    # --- one entry -----------------------------------------------------------------

    def victim(self, conn: sqlite3.Connection, key: str, reason: Reason,
               expired_at: float | None = None) -> Victim | None:
        """``key``'s entry as a victim for ``reason`` (with ``expired_at``:
        only if it is still expired then, not set again meanwhile)."""
        query = f"SELECT {_VICTIM_COLUMNS} FROM entries WHERE key = ?"
        args: tuple[Any, ...] = (key,)
        if expired_at is not None:
            query, args = query + " AND expires_at <= ?", (key, expired_at)
        row = conn.execute(query, args).fetchone()
        return None if row is None else Victim.of(row, reason)

    def remove_one(self, key: str, reason: Reason, expired_at: float | None = None) -> bool:
        """Remove ``key``'s entry for ``reason`` in a transaction of its own,
        and log it; False if there was none (or it is no longer expired)."""
        with self._db.lock:
            with self._db.writing() as conn:
                victim = self.victim(conn, key, reason, expired_at)
                if victim is not None:
                    self.remove(conn, [victim])
            if victim is not None:
                self.journal.append([victim])
        return victim is not None

    def remove(self, conn: sqlite3.Connection, victims: list[Victim]) -> None:
        """Delete the rows and value files (inside the write transaction: no
        writer renames a file in meanwhile)."""
        counts: dict[str, int] = {}
        for v in victims:
            conn.execute("DELETE FROM entries WHERE key = ?", (v.key,))
            if v.file:
                self._files.remove(self._files.path(v.key))
            counts[v.reason] = counts.get(v.reason, 0) + 1
        conn.executemany("UPDATE counters SET value = value + ? WHERE name = ?",
                         [(n, f"evicted.{reason}") for reason, n in counts.items()])

    # --- many entries ----------------------------------------------------------------

    def evict(self, now: float, protect: str) -> None:
        """After a set passed the cap: expired, then least recently used
        entries go until the cache fits (never pinned ones, nor ``protect``)."""
        report = self.sweep(now, dry_run=False, check_files=False, protect=protect, strays=False)
        if report.pinned_over_cap and time.monotonic() - self._warned_at > 60:  # once a minute, not every set
            self._warned_at = time.monotonic()
            self.warn_over_cap()

    def warn_over_cap(self) -> None:
        log.warning("statekit: the cache holds more than its max_size (%d bytes), but every entry left is "
                    "pinned by an episode in progress", self.config.max_size)

    def sweep(self, now: float, *, dry_run: bool, check_files: bool, protect: str | None,
              strays: bool) -> CacheReport:
        """Remove (or, ``dry_run``, report) damaged entries (``check_files``),
        expired ones, the least recently used down to the cap, and (``strays``)
        stray files."""
        report = CacheReport(dry_run=dry_run)
        active = self._pins.active() if self._pins.any_links() else set()  # asked outside the lock: the index may be slow
        with self._db.lock:
            with self._db.reading() if dry_run else self._db.writing() as conn:
                pinned = self._pins.pinned(active, None, conn)
                if protect is not None:
                    pinned.add(protect)
                victims, report.pinned_over_cap = self._choose(conn, now, pinned, check_files)
                stray = self._strays(conn) if strays else []
                if not dry_run:
                    self.remove(conn, victims)
                    self._files.remove_strays(stray)
            if not dry_run and (victims or stray):
                self.journal.append(victims)
                if strays:
                    self._db.vacuum()
        report.removed = [v.removed() for v in victims]
        report.strays = stray
        report.freed = sum(v.size for v in victims) + sum(f.size for f in stray)
        return report

    def clear(self, kind: str | None, dry_run: bool) -> CacheReport:
        """Remove (or, ``dry_run``, report) every entry (of ``kind``), pinned
        ones too, and (with no kind) stray files."""
        report = CacheReport(dry_run=dry_run)
        with self._db.lock:
            with self._db.reading() if dry_run else self._db.writing() as conn:
                where, args = ("WHERE kind = ?", (kind,)) if kind is not None else ("", ())
                victims = [Victim.of(row, "cleared") for row in conn.execute(
                    f"SELECT {_VICTIM_COLUMNS} FROM entries {where} ORDER BY last_used, key", args)]
                stray = self._strays(conn) if kind is None else []
                if not dry_run:
                    self.remove(conn, victims)
                    self._files.remove_strays(stray)
            if not dry_run:
                self.journal.append(victims)
                self._db.vacuum()
        report.removed = [v.removed() for v in victims]
        report.strays = stray
        report.freed = sum(v.size for v in victims) + sum(f.size for f in stray)
        return report

    def _choose(self, conn: sqlite3.Connection, now: float, pinned: Keys,
                check_files: bool) -> tuple[list[Victim], bool]:
        """What to remove, in order: damaged, expired, then least recently
        used while over the cap. True too if the cap is still passed."""
        victims: list[Victim] = []
        chosen: Keys = set()

        def take(row: tuple[Any, ...], reason: Reason) -> None:
            victims.append(Victim.of(row, reason))
            chosen.add(row[0])

        if check_files:
            for row in conn.execute(f"SELECT {_VICTIM_COLUMNS} FROM entries WHERE file = 1 ORDER BY key"):
                if not self._files.whole(row[0], row[2]):
                    take(row, "damaged")
        for row in conn.execute(f"SELECT {_VICTIM_COLUMNS} FROM entries WHERE expires_at <= ? "
                                "ORDER BY expires_at, key", (now,)):
            if row[0] not in chosen and row[0] not in pinned:
                take(row, "expired")
        total = conn.execute(TOTAL_BYTES).fetchone()[0]
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

    def _strays(self, conn: sqlite3.Connection) -> list[StrayFile]:
        owned = {key for (key,) in conn.execute("SELECT key FROM entries WHERE file = 1")}
        return self._files.strays(owned)
