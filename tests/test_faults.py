"""I/O errors injected at every step of a write, through the ``Disk`` seam.

For each system call a write makes, and each of ENOSPC, EIO and EROFS,
raised once or from then on (the default suite: one of the three at each
step, in turn, so each step fails once and for good and every errno is
raised; ``STATEKIT_STRESS=1``, as ``make stress``: all three at every step): the write raises a ``StorageError`` naming the
path and errno, the episode file is byte-identical to before, the lock is
released, and nothing that was acknowledged is missing (a healthy write
afterwards works, and the log and the file agree).
"""

from __future__ import annotations

import errno
import os
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from statekit import StorageError, Store
from statekit.files import Disk

from .conftest import episode_file, snapshot

ERRNOS = {"ENOSPC": errno.ENOSPC, "EIO": errno.EIO, "EROFS": errno.EROFS}
# the write path treats every errno alike (it only passes the code on): the default suite
# raises one of them at each step, in turn; make stress all three
ALL_ERRNOS = bool(os.environ.get("STATEKIT_STRESS"))


def errnos_at(step: int) -> list[tuple[str, int]]:
    codes = list(ERRNOS.items())
    return codes if ALL_ERRNOS else [codes[step % len(codes)]]
CALLS = ("open", "mkstemp", "write", "copy_range", "fsync", "close", "replace", "rename", "truncate", "unlink", "mkdir", "link")


class FaultyDisk(Disk):
    """Counts the calls that change the disk and fails the ``fail_at``-th.

    ``persistent``: that kind of call keeps failing afterwards (a disk that
    stays full, a flush that keeps failing). Steps come in a fixed order
    (no overlapping syncs on a helper thread)."""

    overlap_syncs = False

    def __init__(self) -> None:
        self.steps: list[str] = []
        self.fail_at: int | None = None
        self.errno = errno.EIO
        self.persistent = False
        self.broken: set[str] = set()
        self.failed: str | None = None

    def _step(self, name: str) -> None:
        self.steps.append(name)
        if name in self.broken or (self.fail_at is not None and len(self.steps) == self.fail_at + 1):
            if self.persistent:
                self.broken.add(name)
            self.failed = self.failed or f"{name}#{len(self.steps) - 1}"
            raise OSError(self.errno, os.strerror(self.errno))


def _wrap(name: str) -> Callable[..., Any]:
    original = getattr(Disk, name)

    def call(self: FaultyDisk, *args: Any, **kwargs: Any) -> Any:
        self._step(name)
        return original(self, *args, **kwargs)

    return call


for _name in CALLS:
    setattr(FaultyDisk, _name, _wrap(_name))


# The writes under test: each starts from the same store and changes episode s/e.
def op_advance(store: Store) -> Any:
    return store.advance("s", "e", "downloading", cost=0.5, message="go")


def op_update(store: Store) -> Any:
    return store.update("s", "e", title="renamed")


def op_checkpoint(store: Store) -> Any:
    return store.save_checkpoint("s", "e", "discovered", {"parts": [1, 2, 3]})


def op_run_start(store: Store) -> Any:
    return store.run("s", "e", "downloading", lease_seconds=60).__enter__()


def op_restore(store: Store) -> Any:
    return store.restore("s", "e", backup=1)


OPS = {"advance": op_advance, "update": op_update, "checkpoint": op_checkpoint, "run-start": op_run_start,
       "restore": op_restore}


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A store per format, with s/e at version 6 or 7 (three backups, so each write also
    rotates one out; in YAML, comments added by hand)."""
    out = {}
    for fmt in ("yaml", "json"):
        root = tmp_path_factory.mktemp(f"tpl-{fmt}") / "store"
        store = Store.init(root, format=fmt)
        store.create("s", "e", title="Episode")
        for n in range(5):
            store.update("s", "e", title=f"Episode, take {n}")
        if fmt == "yaml":
            path = episode_file(store, "s", "e")
            path.write_text("# a person's note\n" + path.read_text())
            store.sync()
        store.close()
        out[fmt] = root
    return out


def fresh(template: Path, tmp_path: Path, disk: Disk | None = None) -> Store:
    root = tmp_path / "store"
    if root.exists():
        shutil.rmtree(root)
    shutil.copytree(template, root)
    return Store.open(root, lock_timeout=0.5, disk=disk or Disk())


def count_steps(template: Path, tmp_path: Path, op: Callable[[Store], Any]) -> list[str]:
    disk = FaultyDisk()
    store = fresh(template, tmp_path, disk)
    disk.steps.clear()
    op(store)
    steps = list(disk.steps)
    store.close()
    return steps


def test_the_write_paths_make_the_calls_expected(template: dict[str, Path], tmp_path: Path) -> None:
    steps = count_steps(template["yaml"], tmp_path, op_advance)
    # the lock file, the event (open, write, fsync), the file (the backup rotation drops renamed in as the
    # temp file, opened, written (no truncate: the spare is not longer than the new bytes), fsync, close),
    # the backup link, the rename and the fsync of the directory (held open since the lock); the rotation
    # does not unlink the spare's name (gone already); the index writers' lock file, opened once per thread
    assert steps == ["open", "open", "write", "fsync", "rename", "open", "write", "fsync", "close",
                     "link", "replace", "fsync", "open"]
    assert count_steps(template["yaml"], tmp_path, op_advance)[-1] == "open"  # a new process: its own lock file


@pytest.mark.parametrize("fmt", ["yaml", "json"])
@pytest.mark.parametrize("op_name", list(OPS))
def test_a_fault_at_every_step_leaves_the_episode_as_it_was(
    template: dict[str, Path], tmp_path: Path, fmt: str, op_name: str,
) -> None:
    op = OPS[op_name]
    steps = count_steps(template[fmt], tmp_path, op)
    assert len(steps) >= 10
    checked = 0
    for step in range(len(steps)):
        for code_name, code in errnos_at(step):
            for persistent in (False, True):
                case = f"{op_name} {fmt}: {code_name} at step {step} ({steps[step]}), persistent={persistent}"
                disk = FaultyDisk()
                store = fresh(template[fmt], tmp_path, disk)
                path = episode_file(store, "s", "e")
                before_file = path.read_bytes()
                before = store.get("s", "e")
                disk.steps.clear()
                disk.fail_at, disk.errno, disk.persistent = step, code, persistent
                try:
                    result = op(store)
                except StorageError as exc:
                    assert exc.errno == code, case
                    assert exc.path and os.path.isabs(exc.path), case
                    assert code_name in str(exc) and exc.path in str(exc), case
                    assert path.read_bytes() == before_file, case  # byte-identical
                    assert not any(n.endswith(".tmp") for n in os.listdir(path.parent)), case
                    outcome = "refused"
                else:  # the fault hit a step after the write was durable (e.g. rotating backups): acknowledged
                    assert result is not None, case
                    assert store.get("s", "e").version == before.version + 1, case
                    outcome = "done"
                # the lock is free and the store whole: a healthy write goes through at once
                disk.fail_at, disk.broken = None, set()
                healthy = store.update("s", "e", metadata={"after": case})
                expected = before.version + (2 if outcome == "done" else 1)
                assert healthy.version == expected, case
                versions = [e.version for e in store.events("s", "e")]
                assert versions == list(range(1, expected + 1)), case
                report = store.verify()
                assert [p.message for p in report.problems if p.kind != "backup"] == [], case
                store.close()
                checked += 1
    assert checked == sum(len(errnos_at(step)) for step in range(len(steps))) * 2
    assert {code for step in range(len(steps)) for _, code in errnos_at(step)} == set(ERRNOS.values())


def test_a_failed_directory_sync_after_the_rename_is_undone(template: dict[str, Path], tmp_path: Path) -> None:
    steps = count_steps(template["yaml"], tmp_path, op_advance)
    dir_fsync = steps.index("replace") + 1  # fsync(dir) ends the write, then the rotation
    assert steps[dir_fsync] == "fsync"
    for backups in (3, 0):
        disk = FaultyDisk()
        store = fresh(template["yaml"], tmp_path, disk)
        if backups == 0:
            store.config = store.config.model_copy(update={"backups": 0})
        path = episode_file(store, "s", "e")
        before = path.read_bytes()
        inode = os.stat(path).st_ino
        disk.steps.clear()
        # without backups: no link, and a new temp file (mkstemp) instead of the spare (rename, open, truncate)
        disk.fail_at, disk.errno = dir_fsync - (0 if backups else 3), errno.EIO
        with pytest.raises(StorageError):
            op_advance(store)
        assert path.read_bytes() == before
        if backups:
            assert os.stat(path).st_ino == inode  # the very same file, renamed back
        store.close()


def test_a_failed_create_leaves_no_half_episode(template: dict[str, Path], tmp_path: Path) -> None:
    def create(store: Store) -> Any:
        return store.create("s", "new", title="New")

    steps = count_steps(template["yaml"], tmp_path, create)
    for step in range(len(steps)):
        for persistent in (False, True):
            disk = FaultyDisk()
            store = fresh(template["yaml"], tmp_path, disk)
            before = snapshot(store.root)
            disk.steps.clear()
            disk.fail_at, disk.errno, disk.persistent = step, errno.ENOSPC, persistent
            try:
                create(store)
                created = True
            except StorageError as exc:
                assert exc.errno == errno.ENOSPC
                created = False
            disk.fail_at, disk.broken = None, set()
            folder = Path(store.root, "shows/s/episodes/new")
            exists = (folder / "episode.yaml").exists()
            if not exists:  # nothing of it may be visible as an episode; the rest is cleaned by a retry
                assert store.get_show("s").episodes == ["e"]
                store.create("s", "new", title="New")
            assert store.get("s", "new").title == "New"
            assert [e.kind for e in store.events("s", "new")] == ["create"]
            assert store.get_show("s").episodes == ["e", "new"]
            assert store.verify().clean, (step, persistent, created)
            assert snapshot(store.root) != before
            store.close()


class OverlappingDisk(Disk):
    """A disk that overlaps its syncs on helper threads, as the real one does (the
    fault tests above take the steps in one fixed order): it records each fsync
    when it has finished and each rename when it starts, and fails the fsync of
    the folder ``fail_sync_of``."""

    overlap_syncs = True

    def __init__(self, fail_sync_of: str | None = None, slow_sync_of: str | None = None) -> None:
        self.log: list[tuple[str, str]] = []
        self.fail_sync_of = fail_sync_of
        self.slow_sync_of = slow_sync_of
        self.lock = threading.Lock()

    def fsync(self, fd: int) -> None:
        target = os.readlink(f"/proc/self/fd/{fd}")
        if target == self.fail_sync_of:
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        if target == self.slow_sync_of:
            time.sleep(0.3)  # a slow disk: the rename must still wait for it
        super().fsync(fd)
        with self.lock:
            self.log.append(("fsync", target))

    def replace(self, src: str, dst: str, **kw: Any) -> None:
        with self.lock:
            self.log.append(("replace", dst))
        super().replace(src, dst, **kw)


def test_a_new_episode_folder_is_synced_into_its_parent_before_the_files_rename(tmp_path: Path) -> None:
    """A create syncs the new folder's name into ``episodes/`` alongside the event's and
    the file's own fsyncs; all of them are done before the rename that commits it."""
    root = tmp_path / "store"
    Store.init(root).create("s", "e")
    episodes = os.path.realpath(root / "shows" / "s" / "episodes")
    disk = OverlappingDisk(slow_sync_of=episodes)
    store = Store.open(root, disk=disk)
    store.create("s", "new")
    renamed = next(i for i, (call, what) in enumerate(disk.log) if call == "replace" and what.endswith("new/episode.yaml"))
    assert ("fsync", episodes) in disk.log[:renamed]
    assert store.get("s", "new").version == 1 and store.verify().clean


def test_a_new_logs_name_is_synced_alongside_its_line_before_the_files_rename(tmp_path: Path) -> None:
    """The new episode folder's own fsync (the new log's name in it) runs on a helper thread
    beside the log's fsync, not after it; the rename still waits for both."""
    root = tmp_path / "store"
    Store.init(root).create("s", "e")
    folder = os.path.realpath(root / "shows" / "s" / "episodes") + "/new"
    disk = OverlappingDisk(slow_sync_of=folder + "/events.jsonl")
    store = Store.open(root, disk=disk)
    store.create("s", "new")
    renamed = next(i for i, (call, what) in enumerate(disk.log) if call == "replace" and what.endswith("new/episode.yaml"))
    synced = [call for call in disk.log[:renamed] if call[0] == "fsync"]
    assert ("fsync", folder) in synced and ("fsync", folder + "/events.jsonl") in synced
    # the folder's fsync did not wait for the log's slow one (0.3 s): it ended first
    assert synced.index(("fsync", folder)) < synced.index(("fsync", folder + "/events.jsonl"))
    assert store.get("s", "new").version == 1 and store.verify().clean
    store.close()


@pytest.mark.parametrize("folder", ["episodes", "episodes/new"])  # the new folder's name; the new log's
def test_a_failed_sync_of_a_new_name_aborts_the_create(tmp_path: Path, folder: str) -> None:
    root = tmp_path / "store"
    Store.init(root).create("s", "e")
    before = snapshot(root)
    failing = os.path.realpath(root / "shows" / "s" / "episodes") + folder[len("episodes"):]
    store = Store.open(root, disk=OverlappingDisk(fail_sync_of=failing))
    with pytest.raises(StorageError) as caught:
        store.create("s", "new")
    assert caught.value.errno == errno.EIO and "sync directory" in str(caught.value)
    assert snapshot(root) == before  # no folder, no event, no file left behind
    assert store.get_show("s").episodes == ["e"] and store.verify().clean
    store.close()
    again = Store.open(root)
    again.create("s", "new")
    assert [e.kind for e in again.events("s", "new")] == ["create"]
