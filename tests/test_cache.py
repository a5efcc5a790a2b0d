"""The cache (issue 6): values round-trip, LRU and expiry with pins, the
eviction log, gc/clear reports, damage and crash handling, real processes,
and the ``statekit cache`` commands."""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import multiprocessing
import os
import signal
import sqlite3
import subprocess
import sys
import threading
from concurrent.futures import ProcessPoolExecutor
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from statekit import Store, ValidationError
from statekit.cache import VALUE_FILE_MIN, Cache, cache_key
from statekit.cli import main
from statekit.errors import CorruptFileError, SchemaVersionError, StorageError
from statekit.files import Disk
from statekit.models import CacheConfig

KB = 1024
BOOT = "boot-1"


class Clock:
    """A fake clock: stands still until moved."""

    def __init__(self) -> None:
        self.now = datetime(2026, 1, 1, tzinfo=timezone.utc)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


def key(n: Any) -> str:
    return cache_key({"n": n})


def value_for(k: str, tag: str, size: int) -> bytes:
    """A value that proves what it is: the sha256 of the rest, then the key, tag and padding."""
    body = (k + ":" + tag + ":").encode()
    body += b"x" * max(0, size - 32 - len(body))
    return hashlib.sha256(body).digest() + body


def is_value_of(data: bytes, k: str) -> bool:
    return hashlib.sha256(data[32:]).digest() == data[:32] and data[32:96].decode() == k


def make_cache(root: Path, clock: Clock | None = None, **config: Any) -> Cache:
    return Cache(root, config=CacheConfig(**config), clock=clock, boot_id=BOOT)


def evictions(root: Path) -> list[dict[str, Any]]:
    path = root / ".statekit" / "cache" / "evictions.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def blob_files(root: Path) -> dict[str, int]:
    blobs = root / ".statekit" / "cache" / "blobs"
    return {p.name: p.stat().st_size for p in blobs.rglob("*") if p.is_file()} if blobs.exists() else {}


def db_rows(root: Path) -> list[tuple[Any, ...]]:
    """The entries table as it is on disk (key, size, file, length of the inline value)."""
    with sqlite3.connect(root / ".statekit" / "cache" / "cache.db") as conn:
        return conn.execute("SELECT key, size, file, length(value) FROM entries ORDER BY key").fetchall()


def check_consistent(root: Path) -> None:
    """Totals match the rows; every value file is exactly as big as its row
    says; no file is left that no row owns."""
    rows = db_rows(root)
    with Cache(root, boot_id=BOOT) as cache:
        stats = cache.stats()
        assert (stats.entries, stats.bytes) == (len(rows), sum(r[1] for r in rows))
        report = cache.gc(dry_run=True)
        assert not report.strays and not [r for r in report.removed if r.reason == "damaged"], report
    files = blob_files(root)
    assert files == {k: size for k, size, in_file, _ in rows if in_file}
    assert all(length == size for _k, size, in_file, length in rows if not in_file)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "store"


@pytest.fixture
def clock() -> Clock:
    return Clock()


# --- values ---------------------------------------------------------------------------


def test_values_round_trip_inline_and_in_files(root: Path, tmp_path: Path) -> None:
    with make_cache(root) as cache:
        small, large = b"tts audio", os.urandom(VALUE_FILE_MIN)
        cache.set(key(1), small, kind="tts")
        cache.set(key(2), large)
        cache.set(key(3), bytearray(b"from a bytearray"))
        cache.set(key(4), memoryview(b""))
        media = tmp_path / "video.mp4"
        media.write_bytes(os.urandom(3000))
        cache.set(key(5), media, kind="media", meta={"url": "https://example.org/v.mp4"})
        assert cache.get(key(1)) == small and cache.get(key(2)) == large
        assert cache.get(key(3)) == b"from a bytearray" and cache.get(key(4)) == b""
        assert cache.get(key(5)) == media.read_bytes()
        assert Path(cache.path(key(5)) or "").read_bytes() == media.read_bytes()  # a path set stays a file
        assert Path(cache.path(key(2)) or "").read_bytes() == large
        assert cache.get(key(6)) is None and cache.path(key(6)) is None
        with pytest.raises(ValidationError, match="kept inside the database"):
            cache.path(key(1))
        one, five = cache.entry(key(1)), cache.entry(key(5))
        assert one is not None and five is not None
        assert (one.kind, one.size, one.stored) == ("tts", len(small), "inline")
        assert (five.stored, five.meta) == ("file", {"url": "https://example.org/v.mp4"})
        cache.set(key(2), b"now small")  # a file-backed entry replaced by an inline one: its file goes
        assert cache.get(key(2)) == b"now small"
    check_consistent(root)
    assert sorted(blob_files(root)) == [key(5)]


def test_cache_key_is_the_hash_of_canonical_json() -> None:
    assert cache_key({"voice": "alloy", "text": "hi"}) == cache_key({"text": "hi", "voice": "alloy"})
    assert cache_key({"text": "hi"}) == hashlib.sha256(b'{"text":"hi"}').hexdigest()
    assert cache_key({"text": "hi"}) != cache_key({"text": "hi "})
    for bad in ({"x": b"bytes"}, {"x": float("nan")}, {1: "a", "b": 2}):
        with pytest.raises(ValidationError, match="plain JSON"):
            cache_key(bad)


def test_uses_hits_misses_and_episodes_are_counted(root: Path, clock: Clock) -> None:
    with make_cache(root, clock) as cache:
        cache.set(key(1), b"a")
        clock.advance(hours=1)
        for _ in range(3):
            assert cache.get(key(1), episode=("oliver", "ep001")) == b"a"
        cache.get(key(2))
        entry = cache.entry(key(1))
        assert entry is not None and entry.uses == 3 and entry.last_used == clock.now
        assert entry.created_at == clock.now - timedelta(hours=1)
        assert entry.episodes == [("oliver", "ep001")]
        stats = cache.stats()
        assert (stats.hits, stats.misses, stats.entries, stats.bytes) == (3, 1, 1, 1)
        cache.get(key(1))
        cache.delete(key(1))  # its links go with it; a new entry under the key is linked again by its next use
        cache.set(key(1), b"b")
        cache.get(key(1), episode=("oliver", "ep001"))
        relinked = cache.entry(key(1))
        assert relinked is not None and relinked.episodes == [("oliver", "ep001")]
        cache.delete(key(1))
        cache.set(key(1), b"a")
        for _ in range(4):
            cache.get(key(1))
    with make_cache(root, clock) as again:  # the uses gathered in memory were written at close
        entry = again.entry(key(1))
        assert entry is not None and entry.uses == 4
        assert again.stats().hits == 9


# --- expiry, LRU, pins -------------------------------------------------------------------


def test_expiry_defaults_per_kind(root: Path, clock: Clock) -> None:
    with make_cache(root, clock, default_expiry_days=7) as cache:
        cache.set(key("tts"), b"t", kind="tts")
        cache.set(key("media"), b"m", kind="media")
        cache.set(key("other"), b"o", kind="thumbnail")
        cache.set(key("short"), b"s", kind="tts", expire=60)
        cache.set(key("delta"), b"d", kind="tts", expire=timedelta(days=2))
        expires = {n: e.expires_at - clock.now for n in ("tts", "media", "other", "short", "delta")
                   if (e := cache.entry(key(n))) is not None}
        assert expires == {"tts": timedelta(days=90), "media": timedelta(days=30), "other": timedelta(days=7),
                           "short": timedelta(seconds=60), "delta": timedelta(days=2)}
        clock.advance(days=30)
        assert cache.get(key("media")) is None and cache.entry(key("media")) is None  # expired: removed
        assert cache.get(key("tts")) == b"t"
        assert [(line["key"], line["reason"]) for line in evictions(root)] == [(key("media"), "expired")]
        report = cache.gc()
        assert sorted(r.key for r in report.removed) == sorted([key("other"), key("short"), key("delta")])
        assert {r.reason for r in report.removed} == {"expired"} and report.freed == 3
        assert cache.stats().evictions["expired"] == 4


def test_lru_eviction_past_the_cap_with_the_log(root: Path, clock: Clock) -> None:
    with make_cache(root, clock, max_size=100 * KB) as cache:
        for n in range(3):
            cache.set(key(n), value_for(key(n), "v", 30 * KB), kind="tts")
            clock.advance(minutes=1)
        cache.get(key(0))  # 0 is now the most recently used; 1 the least
        clock.advance(minutes=1)
        cache.set(key(3), value_for(key(3), "v", 30 * KB), kind="tts")
        assert [n for n in range(4) if cache.entry(key(n))] == [0, 2, 3]
        [line] = evictions(root)
        assert line == {"at": clock.now.isoformat(), "key": key(1), "kind": "tts", "size": 30 * KB,
                        "reason": "lru", "last_used": (clock.now - timedelta(minutes=3)).isoformat(), "uses": 0}
        cache.set(key(4), value_for(key(4), "v", 60 * KB))  # two must go for this one
        assert [n for n in range(5) if cache.entry(key(n))] == [3, 4]
        assert [line["key"] for line in evictions(root)][1:] == [key(2), key(0)]
        assert cache.stats().bytes == 90 * KB and cache.stats().evictions["lru"] == 3
    check_consistent(root)


def test_pinned_entries_are_neither_evicted_nor_expired(tmp_path: Path, clock: Clock) -> None:
    store = Store.init(tmp_path / "store")
    store.create("oliver", "ep001")
    store.create("oliver", "ep002")
    cache = Cache.for_store(store, config=CacheConfig(max_size=100 * KB), clock=clock, boot_id=BOOT)
    with cache:
        for n, episode in (("pinned", ("oliver", "ep001")), ("a", None), ("b", None)):
            cache.set(key(n), value_for(key(n), "v", 40 * KB), episode=episode, expire=60 if episode else None)
            clock.advance(minutes=1)
        # over the cap: the least recently used entry is pinned, so the next one went
        assert [n for n in ("pinned", "a", "b") if cache.entry(key(n))] == ["pinned", "b"]
        assert [line["key"] for line in evictions(tmp_path / "store")] == [key("a")]
        assert is_value_of(cache.get(key("b"), episode=("oliver", "ep002")) or b"", key("b"))  # a get pins too
        clock.advance(minutes=1)
        cache.set(key("c"), value_for(key("c"), "v", 40 * KB))  # all the rest is pinned: kept, over the cap
        stats = cache.stats()
        assert (stats.entries, stats.pinned_entries, stats.pinned_bytes) == (3, 2, 80 * KB)
        clock.advance(days=1)  # "pinned" expired a day ago, but its episode is still in progress
        assert is_value_of(cache.get(key("pinned")) or b"", key("pinned"))
        report = cache.gc()
        assert [r.key for r in report.removed] == [key("c")] and not report.pinned_over_cap
        store.advance("oliver", "ep001", "skipped")  # a terminal stage: no longer pinned
        assert cache.get(key("pinned")) is None
        assert [line["reason"] for line in evictions(tmp_path / "store")] == ["lru", "lru", "expired"]
        assert cache.entry(key("b")) is not None


def test_new_entry_is_not_evicted_by_its_own_set(tmp_path: Path, clock: Clock) -> None:
    store = Store.init(tmp_path / "store")
    store.create("oliver", "ep001")
    with Cache.for_store(store, config=CacheConfig(max_size=100 * KB), clock=clock, boot_id=BOOT) as cache:
        cache.set(key(1), value_for(key(1), "v", 60 * KB), episode=("oliver", "ep001"))
        cache.set(key(2), value_for(key(2), "v", 60 * KB))  # the rest is pinned: over the cap, kept
        assert cache.entry(key(1)) and cache.entry(key(2))
        report = cache.gc()  # an explicit gc does take the unpinned one
        assert [(r.key, r.reason) for r in report.removed] == [(key(2), "lru")] and not report.pinned_over_cap


def test_everything_pinned_warns_and_stops(tmp_path: Path, clock: Clock, caplog: pytest.LogCaptureFixture) -> None:
    store = Store.init(tmp_path / "store")
    store.create("oliver", "ep001")
    with Cache.for_store(store, config=CacheConfig(max_size=100 * KB), clock=clock, boot_id=BOOT) as cache:
        for n in range(3):
            cache.set(key(n), value_for(key(n), "v", 40 * KB), episode=("oliver", "ep001"))
        with caplog.at_level(logging.WARNING, logger="statekit"):
            report = cache.gc()
        assert report.removed == [] and report.pinned_over_cap
        assert "every entry left is pinned" in caplog.text
        assert cache.stats().entries == 3


def test_unknown_progress_pins_every_linked_entry(root: Path, clock: Clock) -> None:
    cache = Cache(root, config=CacheConfig(max_size=50 * KB), clock=clock, boot_id=BOOT, in_progress=lambda: None)
    with cache:
        cache.set(key(1), value_for(key(1), "v", 40 * KB), episode=("s", "e"))
        clock.advance(minutes=1)
        cache.set(key(2), value_for(key(2), "v", 40 * KB))
        clock.advance(minutes=1)
        cache.set(key(3), b"x")
        assert cache.entry(key(1)) is not None and cache.entry(key(2)) is None


# --- gc, clear, delete -----------------------------------------------------------------------


def test_gc_dry_run_reports_and_changes_nothing(root: Path, clock: Clock) -> None:
    with make_cache(root, clock, max_size=100 * KB) as cache:
        cache.set(key("old"), b"o" * 10, expire=300)
        cache.set(key("big1"), value_for(key("big1"), "v", 45 * KB))
        clock.advance(minutes=2)
        cache.get(key("old"))
        cache.set(key("big2"), value_for(key("big2"), "v", 45 * KB))
        cache.set(key("gone"), value_for(key("gone"), "v", 33 * KB))  # evicts big1 (LRU)
        clock.advance(minutes=10)
        Path(cache.path(key("gone")) or "").unlink()  # a value file lost
        stray = root / ".statekit" / "cache" / "blobs" / "ab" / ("ab" + "0" * 62)
        stray.parent.mkdir(parents=True, exist_ok=True)
        stray.write_bytes(b"s" * 100)  # a value file no entry owns
        dead = stray.parent / f".{'ab' + '0' * 62}.999999999.x.tmp"
        dead.write_bytes(b"t" * 7)  # a temp file of a dead writer
        (stray.parent / "notes.txt").write_text("not ours")
        before = (db_rows(root), blob_files(root))
        preview = cache.gc(dry_run=True)
        assert (db_rows(root), blob_files(root)) == before
        assert [(r.key, r.reason) for r in preview.removed] == [(key("gone"), "damaged"), (key("old"), "expired")]
        assert sorted(list(f.to_json().values()) for f in preview.strays) == sorted(
            [[str(stray.relative_to(root)), 100, "orphan"], [str(dead.relative_to(root)), 7, "temp"]])
        assert preview.freed == 33 * KB + 10 + 100 + 7 and preview.dry_run
        done = cache.gc()
        assert [r.to_json() for r in done.removed] == [r.to_json() for r in preview.removed]
        assert done.freed == preview.freed and not done.dry_run
        assert (stray.parent / "notes.txt").exists()
        assert cache.gc().removed == []
        assert [line["reason"] for line in evictions(root)] == ["lru", "damaged", "expired"]


def test_gc_evicts_down_to_the_cap_after_config_shrinks(root: Path, clock: Clock) -> None:
    with make_cache(root, clock) as cache:
        for n in range(5):
            cache.set(key(n), value_for(key(n), "v", 20 * KB))
            clock.advance(seconds=1)
    with make_cache(root, clock, max_size=50 * KB) as cache:
        report = cache.gc()
        assert [r.key for r in report.removed] == [key(0), key(1), key(2)]
        assert {r.reason for r in report.removed} == {"lru"} and report.freed == 60 * KB
        assert cache.stats().bytes == 40 * KB


def test_clear_by_kind_dry_run_and_all(root: Path, clock: Clock) -> None:
    with make_cache(root, clock) as cache:
        cache.set(key(1), b"t" * 10, kind="tts", episode=("s", "e"))
        cache.set(key(2), value_for(key(2), "v", 40 * KB), kind="media")
        cache.set(key(3), b"t" * 5, kind="tts")
        preview = cache.clear(kind="tts", dry_run=True)
        assert sorted(r.key for r in preview.removed) == sorted([key(1), key(3)]) and preview.freed == 15
        assert cache.stats().entries == 3
        cache.clear(kind="tts")
        assert cache.stats().kinds == {"media": {"entries": 1, "bytes": 40 * KB}}
        report = cache.clear()
        assert [r.key for r in report.removed] == [key(2)] and report.freed == 40 * KB
        assert cache.stats().entries == 0 and blob_files(root) == {}
        assert [line["reason"] for line in evictions(root)] == ["cleared"] * 3
        assert cache.stats().evictions["cleared"] == 3


def test_delete(root: Path) -> None:
    with make_cache(root) as cache:
        cache.set(key(1), value_for(key(1), "v", 40 * KB))
        assert cache.delete(key(1)) and not cache.delete(key(1))
        assert cache.get(key(1)) is None and blob_files(root) == {}
        assert evictions(root)[0]["reason"] == "deleted"


def test_get_or_set_makes_once(root: Path) -> None:
    calls = []

    def make() -> bytes:
        calls.append(1)
        return b"speech"

    with make_cache(root) as cache:
        assert cache.get_or_set(key(1), make, kind="tts") == b"speech"
        assert cache.get_or_set(key(1), make, kind="tts") == b"speech"
        assert len(calls) == 1
        with pytest.raises(ValidationError, match="must return bytes"):
            cache.get_or_set(key(2), lambda: "text", kind="tts")  # type: ignore[arg-type,return-value]
        with pytest.raises(ValidationError):
            cache.get_or_set(key(2), make, kind="Bad Kind")
        assert len(calls) == 1 and cache.entry(key(2)) is None


# --- bad input, damage, faults ----------------------------------------------------------------


@pytest.mark.parametrize("call", [
    lambda c: c.set("abc", b"v"),
    lambda c: c.set(key(1).upper(), b"v"),
    lambda c: c.set(key(1) + "\n", b"v"),
    lambda c: c.get(123),
    lambda c: c.set(key(1), b"v", expire=-5),
    lambda c: c.set(key(1), b"v", expire=0),
    lambda c: c.set(key(1), b"v", expire=float("nan")),
    lambda c: c.set(key(1), b"v", expire=timedelta(days=-1)),
    lambda c: c.set(key(1), b"v", expire="30d"),
    lambda c: c.set(key(1), "text, not bytes"),
    lambda c: c.set(key(1), 42),
    lambda c: c.set(key(1), b"v", kind="TTS"),
    lambda c: c.set(key(1), b"v", kind="../x"),
    lambda c: c.set(key(1), b"v", kind=""),
    lambda c: c.set(key(1), b"v", episode=("oliver",)),
    lambda c: c.set(key(1), b"v", episode=("oliver", "../ep")),
    lambda c: c.get(key(1), episode="oliver/ep001"),
    lambda c: c.set(key(1), b"v", meta={"x": float("inf")}),
    lambda c: c.set(key(1), b"v", meta=["not", "a", "dict"]),
    lambda c: c.set(key(1), b"v" * (200 * KB)),
    lambda c: c.set(key(1), Path("/no/such/file")),
    lambda c: c.clear(kind="Bad"),
])
def test_bad_input_is_refused_and_changes_nothing(root: Path, call: Any) -> None:
    with make_cache(root, max_size=100 * KB) as cache:
        cache.set(key(1), b"before")
        cache.set(key(2), value_for(key(2), "v", 40 * KB))
        cache.flush()
        before = (db_rows(root), blob_files(root), cache.stats())
        with pytest.raises(ValidationError) as raised:
            call(cache)
        assert "\n" not in raised.value.one_line()
        assert (db_rows(root), blob_files(root), cache.stats()) == before


def test_a_damaged_value_file_is_a_miss_and_removed(root: Path) -> None:
    with make_cache(root) as cache:
        cache.set(key(1), value_for(key(1), "v", 40 * KB))
        cache.set(key(2), value_for(key(2), "v", 40 * KB))
        Path(cache.path(key(1)) or "").write_bytes(b"torn")
        target = Path(cache.path(key(2)) or "")
        target.unlink()
        target.symlink_to(Path(cache.path(key(1)) or ""))  # never followed
        assert cache.get(key(1)) is None and cache.get(key(2)) is None
        assert cache.entry(key(1)) is None and cache.entry(key(2)) is None
        assert [line["reason"] for line in evictions(root)] == ["damaged", "damaged"]
        assert cache.stats().evictions["damaged"] == 2 and cache.stats().bytes == 0
        assert blob_files(root) == {} and not target.is_symlink()


class PausingDisk(Disk):
    """Stops a set between the rename of its value file and its commit, until released."""

    def __init__(self) -> None:
        self.renamed = threading.Event()
        self.release = threading.Event()

    def replace(self, src: str, dst: str) -> None:
        super().replace(src, dst)
        self.renamed.set()
        assert self.release.wait(10)


def test_a_reader_racing_a_writer_gets_the_new_value_not_a_miss(root: Path) -> None:
    old, new = value_for(key(1), "old", 40 * KB), value_for(key(1), "new", 50 * KB)
    with make_cache(root) as reader:
        reader.set(key(1), old)
        disk = PausingDisk()
        with Cache(root, disk=disk, boot_id=BOOT) as writer:
            setting = threading.Thread(target=writer.set, args=(key(1), new))
            setting.start()
            assert disk.renamed.wait(10)  # the new file is in place; its row is not committed yet
            threading.Timer(0.3, disk.release.set).start()
            assert reader.get(key(1)) == new  # the size did not match the old row: looked again under the lock
            setting.join()
        assert evictions(root) == [] and reader.get(key(1)) == new
    check_consistent(root)


def test_after_a_reboot_each_value_file_is_checked_once(root: Path) -> None:
    good, bad = value_for(key(1), "v", 40 * KB), value_for(key(2), "v", 40 * KB)
    with make_cache(root) as cache:
        cache.set(key(1), good)
        cache.set(key(2), bad)
        path = Path(cache.path(key(2)) or "")
    path.write_bytes(bytes(len(bad)))  # what a power cut can leave: the right size, zeros inside
    with Cache(root, boot_id="boot-2") as rebooted:
        assert rebooted.get(key(1)) == good
        assert rebooted.get(key(2)) is None  # its CRC did not match: never served
        assert evictions(root)[-1]["reason"] == "damaged"
    with sqlite3.connect(root / ".statekit" / "cache" / "cache.db") as conn:
        assert conn.execute("SELECT boot FROM entries WHERE key = ?", (key(1),)).fetchone() == ("boot-2",)


class CountingDisk(Disk):
    def __init__(self) -> None:
        self.fsyncs = 0

    def fsync(self, fd: int) -> None:
        self.fsyncs += 1
        super().fsync(fd)


def test_without_a_boot_id_value_files_are_fsynced(root: Path) -> None:
    disk = CountingDisk()
    with Cache(root, disk=disk, boot_id=None) as durable:
        durable.set(key(1), value_for(key(1), "v", 40 * KB))
        durable.set(key(2), b"small: inside SQLite, which keeps it whole")
        assert disk.fsyncs == 1 and durable.get(key(1)) == value_for(key(1), "v", 40 * KB)
    disk = CountingDisk()
    with Cache(root, disk=disk, boot_id=BOOT) as fast:
        fast.set(key(3), value_for(key(3), "v", 40 * KB))
        assert disk.fsyncs == 0


class FullDisk(Disk):
    def write(self, fd: int, data: memoryview) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")


def test_a_failed_write_leaves_the_old_value(root: Path) -> None:
    with make_cache(root) as cache:
        cache.set(key(1), value_for(key(1), "old", 40 * KB))
    with Cache(root, disk=FullDisk(), boot_id=BOOT) as full:
        with pytest.raises(StorageError, match="ENOSPC"):
            full.set(key(1), value_for(key(1), "new", 50 * KB))
        assert full.get(key(1)) == value_for(key(1), "old", 40 * KB)
    assert list(blob_files(root)) == [key(1)]  # no temp file left
    check_consistent(root)


def test_a_damaged_or_newer_database_is_refused(tmp_path: Path) -> None:
    damaged = tmp_path / "a"
    (damaged / ".statekit" / "cache").mkdir(parents=True)
    (damaged / ".statekit" / "cache" / "cache.db").write_bytes(b"this is not a database" * 100)
    with pytest.raises(CorruptFileError, match="damaged"):
        Cache(damaged)
    newer = tmp_path / "b"
    Cache(newer).close()
    with sqlite3.connect(newer / ".statekit" / "cache" / "cache.db") as conn:
        conn.execute("PRAGMA user_version = 99")
    with pytest.raises(SchemaVersionError, match="newer"):
        Cache(newer)


# --- threads and processes -----------------------------------------------------------------

KEYS = [key(n) for n in range(16)]
SIZES = (1 * KB, 40 * KB, 120 * KB)


def churn(root: str, seed: int, ops: int, max_size: int, shared: Any = None) -> tuple[int, int, int]:
    """Random sets, gets, deletes and gcs on a shared cache; returns (gets
    that returned something other than a value set for the key, hits, sets)."""
    import random

    rng = random.Random(seed)
    wrong = hits = sets = 0
    with shared or Cache(root, config=CacheConfig(max_size=max_size), boot_id=BOOT) as cache:
        for i in range(ops):
            k = rng.choice(KEYS)
            roll = rng.random()
            found: bytes | None = None
            if roll < 0.45:
                cache.set(k, value_for(k, f"{seed}.{i}", rng.choice(SIZES)), kind=rng.choice(("tts", "media")))
                sets += 1
            elif roll < 0.85:
                found = cache.get(k)
            elif roll < 0.95:
                try:
                    where = cache.path(k)
                    found = None if where is None else Path(where).read_bytes()
                except ValidationError:  # kept inside the database: no path
                    found = cache.get(k)
                except FileNotFoundError:  # evicted by another process between path() and the read
                    found = None
            elif roll < 0.98:
                cache.delete(k)
            else:
                cache.gc()
            if found is not None:
                hits += 1
                wrong += not is_value_of(found, k)
    return wrong, hits, sets


def test_threads_share_one_cache(root: Path) -> None:
    results: list[tuple[int, int, int]] = []
    cache = make_cache(root, max_size=600 * KB)

    def run(seed: int) -> None:
        results.append(churn(str(root), seed, 150, 600 * KB, shared=NoClose(cache)))

    threads = [threading.Thread(target=run, args=(seed,)) for seed in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    cache.close()
    assert len(results) == 4 and sum(r[0] for r in results) == 0 and sum(r[1] for r in results) > 0
    check_consistent(root)


class NoClose:
    """A cache shared by threads: leaving one thread's ``with`` does not close it."""

    def __init__(self, cache: Cache) -> None:
        self.cache = cache

    def __enter__(self) -> Cache:
        return self.cache

    def __exit__(self, *exc: object) -> None:
        pass


@pytest.mark.slow
def test_processes_share_the_cache_without_torn_or_wrong_values(root: Path) -> None:
    """4 processes x 300 random operations on 16 keys, evicting all the time
    (the cap holds about 8 values), opening the cache at the same moment."""
    ctx = multiprocessing.get_context("spawn")
    # (not multiprocessing.Pool: its terminate() on leaving ``with`` races the pool's own
    # repopulation and once left the test waiting forever on a worker it had just started)
    with ProcessPoolExecutor(4, mp_context=ctx) as pool:
        results = list(pool.map(churn, [str(root)] * 4, range(4), [300] * 4, [1000 * KB] * 4, timeout=300))
    assert sum(r[0] for r in results) == 0, results
    assert sum(r[1] for r in results) > 50 and sum(r[2] for r in results) > 400
    with make_cache(root) as cache:
        for k in KEYS:
            found = cache.get(k)
            assert found is None or is_value_of(found, k)
        assert cache.stats().evictions["lru"] > 0
    check_consistent(root)


def test_a_forked_child_opens_its_own_connection(root: Path) -> None:
    with make_cache(root) as cache:
        cache.set(key("parent"), b"from the parent")
        cache.get(key("parent"))
        child = multiprocessing.get_context("fork").Process(target=_child_uses, args=(cache,))
        child.start()
        child.join(30)
        assert child.exitcode == 0
        assert cache.get(key("child")) == b"from the child"
        assert cache.stats().hits == 3  # two gets here, one in the child
        entry = cache.entry(key("parent"))
        assert entry is not None and entry.uses == 2


def _child_uses(cache: Cache) -> None:
    assert cache.get(key("parent")) == b"from the parent"  # the inherited object works, on a new connection
    cache.set(key("child"), b"from the child")
    cache.close()


CRASHING_WRITER = r"""
import os, sys, time
from statekit.cache import Cache
from statekit.files import Disk

root, where, key, size = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])

class Stop(Disk):
    def replace(self, src, dst):
        os.replace(src, dst)
        if where == "after-rename":
            print("stopped", flush=True); time.sleep(60)

    def write(self, fd, data):
        if where == "mid-write":
            n = os.write(fd, data[: len(data) // 2])
            print("stopped", flush=True); time.sleep(60)
            return n
        return os.write(fd, data)

cache = Cache(root, disk=Stop(), boot_id="boot-1")
if where == "loop":
    i = 0
    while True:
        i += 1
        for k in (key, "f" * 64):
            body = f"{k}:{i}:".encode().ljust(size - 32, b"x")
            import hashlib
            cache.set(k, hashlib.sha256(body).digest() + body)
        print("ack", i, flush=True)
else:
    body = f"{key}:new:".encode().ljust(size - 32, b"x")
    import hashlib
    cache.set(key, hashlib.sha256(body).digest() + body)
    print("finished", flush=True)
"""


def kill_when(root: Path, where: str, k: str, size: int, after: str) -> None:
    """Run a writer in a real process; kill -9 it once it prints ``after``."""
    proc = subprocess.Popen([sys.executable, "-c", CRASHING_WRITER, str(root), where, k, str(size)],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith(after):
                break
        else:
            pytest.fail(f"the writer ended before {after!r}")
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait(30)


@pytest.mark.slow
@pytest.mark.parametrize("where", ["after-rename", "mid-write"])
def test_kill_9_mid_set_never_serves_a_half_value(root: Path, where: str) -> None:
    old = value_for(key(1), "old", 40 * KB)
    with make_cache(root) as cache:
        cache.set(key(1), old)
    kill_when(root, where, key(1), 100 * KB, "stopped")  # an existing key
    kill_when(root, where, key(2), 100 * KB, "stopped")  # a new key
    with make_cache(root) as cache:
        found = cache.get(key(1))
        # after the rename the file holds the new value but the row the old one: a miss, never a mix
        assert found == (old if where == "mid-write" else None)
        assert cache.get(key(2)) is None
        report = cache.gc()
        # after the rename: the new key's file has no row; mid-write: each dead writer left a temp file
        assert len(report.strays) == (1 if where == "after-rename" else 2), report.strays
    check_consistent(root)


@pytest.mark.slow
def test_kill_9_at_random_moments_keeps_the_cache_consistent(root: Path) -> None:
    import random
    import time

    rng = random.Random(6)
    for _ in range(3):
        proc = subprocess.Popen([sys.executable, "-c", CRASHING_WRITER, str(root), "loop", key(1), str(300 * KB)],
                                stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None
        proc.stdout.readline()
        time.sleep(rng.uniform(0, 0.05))
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
        with make_cache(root) as cache:
            for k in (key(1), "f" * 64):
                found = cache.get(k)
                assert found is None or (hashlib.sha256(found[32:]).digest() == found[:32]
                                         and found[32:96].decode() == k)
            cache.gc()
        check_consistent(root)


# --- the command line --------------------------------------------------------------------


def cli(*args: str, code: int = 0) -> str:
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    assert result.exit_code == code, (args, result.output)
    return result.output


@pytest.fixture
def store_root(tmp_path: Path) -> Path:
    store = Store.init(tmp_path / "store")
    store.create("oliver", "ep001")
    with Cache.for_store(store) as cache:
        cache.set(key("tts"), b"t" * 2000, kind="tts", episode=("oliver", "ep001"))
        cache.set(key("media"), value_for(key("media"), "v", 50 * KB), kind="media")
        cache.set(key("old"), b"o" * 10, kind="media", expire=0.001)
        cache.get(key("tts"))
        cache.get(key("missing"))
    return tmp_path / "store"


def test_cli_cache_stats(store_root: Path) -> None:
    data = json.loads(cli("--root", str(store_root), "cache", "stats", "--json"))
    assert data["entries"] == 3 and data["bytes"] == 2000 + 50 * KB + 10
    assert data["kinds"] == {"media": {"entries": 2, "bytes": 50 * KB + 10}, "tts": {"entries": 1, "bytes": 2000}}
    assert data["pinned"] == {"entries": 1, "bytes": 2000} and (data["hits"], data["misses"]) == (1, 1)
    assert data["max_size"] == 10 * 1024**3 and data["evictions"]["lru"] == 0
    text = cli("--root", str(store_root), "cache", "stats")
    for word in ("entries", "size", "pinned", "hits / misses", "evictions", "tts", "media", "10.7 GB"):
        assert word in text, word


def test_cli_cache_gc_and_clear(store_root: Path) -> None:
    before = db_rows(store_root)
    preview = cli("--root", str(store_root), "cache", "gc", "--dry-run")
    assert "would remove" in preview and "expired" in preview and "would free 10 B" in preview
    assert db_rows(store_root) == before
    done = cli("--root", str(store_root), "cache", "gc")
    assert "removed 1 entries, freed 10 B" in done
    assert "nothing to remove" in cli("--root", str(store_root), "cache", "gc")
    preview = cli("--root", str(store_root), "cache", "clear", "--kind", "tts", "--dry-run")
    assert "would remove 1 entries, would free 2.0 kB" in preview and len(db_rows(store_root)) == 2
    done = cli("--root", str(store_root), "cache", "clear")
    assert "cleared" in done and "removed 2 entries, freed 53.2 kB" in done
    assert db_rows(store_root) == []


def test_cli_cache_user_errors_are_one_line(store_root: Path) -> None:
    result = CliRunner().invoke(main, ["--root", str(store_root), "cache", "clear", "--kind", "Not A Kind"])
    assert result.exit_code == 2 and "Traceback" not in result.output
    lines = [line for line in (result.stderr or result.output).splitlines() if line.strip()]
    assert len(lines) == 1 and "invalid cache kind" in lines[0]
    for command in ("stats", "clear", "gc"):
        own_help = main.commands["cache"].commands[command].help  # type: ignore[attr-defined]
        assert " ".join(own_help.split()[:5]) in " ".join(cli("cache", command, "--help").split())


def test_the_store_opens_its_cache_once_and_closes_it(tmp_path: Path) -> None:
    from statekit import Store
    from statekit.cache import cache_key

    store = Store.init(tmp_path / "store")
    key = cache_key({"voice": "alloy", "text": "hello"})
    assert store.cache is store.cache
    store.cache.set(key, b"audio", kind="tts")
    store.close()
    assert store.cache.get(key) == b"audio"  # opened again after close
    store.close()
