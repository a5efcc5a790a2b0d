"""The event line of a write is written on the writer's thread; only its fsync goes to a
helper, started once the temp file is written, overlapping the file's own fsync. The contract still holds: the event is durable before
the rename, a failed fsync of the log stops the write (and cuts the line), and the calls a
disk without overlap sees come in the order they always did."""

from __future__ import annotations

import errno
import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from statekit import StorageError, Store
from statekit.files import Disk


class Recording(Disk):
    """Records each log write (with its thread), each fsync when it has finished, each rename when
    it starts; slows or fails the fsync of ``events.jsonl``."""

    def __init__(self, overlap: bool = True, slow_log: float = 0.0) -> None:
        self.overlap_syncs = overlap
        self.calls: list[tuple[str, str, int]] = []
        self.slow_log = slow_log
        self.fail_log_sync = False
        self.lock = threading.Lock()

    def _note(self, call: str, what: str) -> None:
        with self.lock:
            self.calls.append((call, what, threading.get_ident()))

    @staticmethod
    def _target(fd: int) -> str:
        return os.path.basename(os.readlink(f"/proc/self/fd/{fd}"))

    def open(self, path: str, flags: int, mode: int = 0o666, *, dir_fd: int | None = None) -> int:
        self._note("open", os.path.basename(path))
        return super().open(path, flags, mode, dir_fd=dir_fd)

    def mkstemp(self, directory: str, prefix: str, suffix: str, *, dir_fd: int | None = None) -> tuple[int, str]:
        self._note("mkstemp", prefix)
        return super().mkstemp(directory, prefix, suffix, dir_fd=dir_fd)

    def rename(self, src: str, dst: str, **kw: Any) -> None:
        self._note("rename-spare", os.path.basename(dst))
        super().rename(src, dst, **kw)

    def write(self, fd: int, data: memoryview) -> int:
        self._note("write", self._target(fd))
        return super().write(fd, data)

    def fsync(self, fd: int) -> None:
        target = self._target(fd)
        self._note("fsync-start", target)
        if target == "events.jsonl":
            if self.fail_log_sync:
                raise OSError(errno.EIO, os.strerror(errno.EIO))
            time.sleep(self.slow_log)  # a slow disk: the rename must still wait for it
        super().fsync(fd)
        self._note("fsync", target)

    def replace(self, src: str, dst: str, **kw: Any) -> None:
        self._note("replace", os.path.basename(dst))
        super().replace(src, dst, **kw)


def _store(tmp_path: Path, disk: Disk) -> Store:
    Store.init(tmp_path / "s", format="json").close()
    store = Store.open(tmp_path / "s", disk=disk)
    store.create("s", "e")
    return store


def test_the_events_fsync_is_done_before_the_rename_even_when_slow(tmp_path: Path) -> None:
    disk = Recording(slow_log=0.05)
    store = _store(tmp_path, disk)
    for stage in ("downloading", "failed", "downloading"):
        disk.calls.clear()
        store.advance("s", "e", stage, cost=0.5)
        calls = [(c, w) for c, w, _t in disk.calls]
        renamed = calls.index(("replace", "episode.json"))
        assert ("fsync", "events.jsonl") in calls[:renamed], calls
        # the line is written on the writer's thread, before the temp file; its fsync on a helper
        main = threading.get_ident()
        log_write = next(i for i, (c, w, t) in enumerate(disk.calls) if (c, w) == ("write", "events.jsonl"))
        assert disk.calls[log_write][2] == main
        temp = next(i for i, (c, _w, _t) in enumerate(disk.calls) if c in ("mkstemp", "rename-spare"))
        assert log_write < temp
        sync = next(t for c, w, t in disk.calls if (c, w) == ("fsync", "events.jsonl"))
        assert sync != main
        # ... started once the temp file is written, so both fsyncs reach the file system together
        temp_written = next(i for i, (c, w, _t) in enumerate(disk.calls) if c == "write" and w.endswith(".tmp"))
        log_sync = calls.index(("fsync-start", "events.jsonl"))
        assert temp_written < log_sync
    assert store.get("s", "e").version == 4 and store.verify().clean
    store.close()


def test_a_disk_that_does_not_overlap_sees_the_calls_in_their_old_order(tmp_path: Path) -> None:
    disk = Recording(overlap=False)
    store = _store(tmp_path, disk)
    disk.calls.clear()
    store.advance("s", "e", "downloading")
    calls = [(c, w) for c, w, _t in disk.calls if c != "fsync-start"]
    log = [i for i, (_c, w) in enumerate(calls) if w == "events.jsonl"]
    assert [calls[i][0] for i in log] == ["open", "write", "fsync"]
    temp = next(i for i, (c, _w) in enumerate(calls) if c in ("mkstemp", "rename-spare"))
    assert log[-1] < temp  # the whole append (its fsync too) before the temp file, as before
    assert all(t == threading.get_ident() for _c, _w, t in disk.calls)
    assert store.verify().clean
    store.close()


@pytest.mark.parametrize("overlap", [True, False])
def test_a_failed_fsync_of_the_log_stops_the_write_and_cuts_its_line(tmp_path: Path, overlap: bool) -> None:
    disk = Recording(overlap=overlap)
    store = _store(tmp_path, disk)
    path = Path(store.episode_path("s", "e"))
    log = path.with_name("events.jsonl")
    before, log_before = path.read_bytes(), log.read_bytes()
    disk.fail_log_sync = True
    for _ in range(3):  # the helper goes back to the idle ones each time
        with pytest.raises(StorageError) as caught:
            store.advance("s", "e", "downloading")
        assert caught.value.errno == errno.EIO and "append to" in str(caught.value)
        assert path.read_bytes() == before
        assert log.read_bytes() == log_before  # the line that could not be made durable is cut again
        assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]
    disk.fail_log_sync = False
    assert store.advance("s", "e", "downloading").version == 2
    assert [e.kind for e in store.events("s", "e")] == ["create", "advance"]
    assert store.verify().clean
    store.close()


def test_a_write_that_stops_after_its_line_leaves_an_uncommitted_tail_the_next_write_drops(tmp_path: Path) -> None:
    """The temp file cannot be made: the line written (and synced) stays as an uncommitted
    tail, the file is untouched, and the next write drops the tail."""

    class NoTemp(Recording):
        broken = False

        def mkstemp(self, directory: str, prefix: str, suffix: str, *, dir_fd: int | None = None
                    ) -> tuple[int, str]:
            if self.broken:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return super().mkstemp(directory, prefix, suffix, dir_fd=dir_fd)

        def rename(self, src: str, dst: str, **kw: Any) -> None:
            if self.broken:  # no spare backup reused either
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            super().rename(src, dst, **kw)

    disk = NoTemp()
    store = _store(tmp_path, disk)
    path = Path(store.episode_path("s", "e"))
    before = path.read_bytes()
    disk.broken = True
    with pytest.raises(StorageError):
        store.advance("s", "e", "downloading")
    assert path.read_bytes() == before
    assert len(path.with_name("events.jsonl").read_bytes().splitlines()) == 2  # the create's, and the tail
    assert [e.kind for e in store.events("s", "e")] == ["create"]
    disk.broken = False
    assert store.advance("s", "e", "downloading").version == 2
    assert len(path.with_name("events.jsonl").read_bytes().splitlines()) == 2
    assert store.verify().clean
    store.close()
