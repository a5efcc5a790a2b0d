"""A create makes its episode's folder itself and skips what an empty new folder cannot
hold (an interrupted write's temp files, a log); a folder that was there already is
looked at as any episode folder is."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from statekit import Store
from statekit.errors import UnsafePathError
from statekit.eventlog import write_event
from statekit.files import DISK, TEMP_PREFIX, TEMP_SUFFIX, Disk
from statekit.folders import make_folder


def test_a_new_folder_is_made_and_told_apart_from_one_that_was_there(tmp_path: Path) -> None:
    parent = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fd, made = make_folder(DISK, parent, f"{tmp_path}/ep1")
        os.close(fd)
        assert made and (tmp_path / "ep1").is_dir()
        (tmp_path / "ep1" / "note").write_text("here before")
        fd, made = make_folder(DISK, parent, f"{tmp_path}/ep1")
        try:
            assert not made and os.listdir(fd) == ["note"]  # the same folder, opened
        finally:
            os.close(fd)
        (tmp_path / "elsewhere").mkdir()
        (tmp_path / "link").symlink_to(tmp_path / "elsewhere")
        with pytest.raises(UnsafePathError):
            make_folder(DISK, parent, f"{tmp_path}/link")
    finally:
        os.close(parent)


class SwappingDisk(Disk):
    """Makes the folder, then puts a symlink in its place before the caller opens it."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def mkdir(self, path: str, *, dir_fd: int | None = None) -> None:
        super().mkdir(path, dir_fd=dir_fd)
        name = path[path.rfind("/") + 1:]
        os.rmdir(name, dir_fd=dir_fd)
        os.symlink(self.target, name, dir_fd=dir_fd)


def test_a_folder_swapped_for_a_symlink_after_its_mkdir_is_refused(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    parent_path = tmp_path / "episodes"
    parent_path.mkdir()
    parent = os.open(parent_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        with pytest.raises(UnsafePathError):
            make_folder(SwappingDisk(outside), parent, f"{parent_path}/ep1")
    finally:
        os.close(parent)
    assert list(outside.iterdir()) == []


def test_a_log_expected_new_that_is_there_is_appended_to_after_its_committed_lines(tmp_path: Path) -> None:
    store = Store.init(tmp_path / "store", format="json")
    store.create("s", "e")
    folder = Path(store.root, "shows/s/episodes/e")
    log = folder / "events.jsonl"
    committed = log.read_bytes()
    log.write_bytes(committed + b'{"version": 2, "torn')  # an uncommitted tail
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        appended = write_event(DISK, str(log), b'{"version": 2}\n', 1, None, dir_fd=fd, new=True)
        appended.close()
    finally:
        os.close(fd)
    assert log.read_bytes() == committed + b'{"version": 2}\n'  # the tail cut, the committed line kept


def test_a_create_into_a_folder_left_behind_cleans_it_as_any_write_does(tmp_path: Path) -> None:
    store = Store.init(tmp_path / "store", format="json")
    store.create("s", "first")
    store.create("s", "e")
    folder = Path(store.root, "shows/s/episodes/e")
    events = (folder / "events.jsonl").read_bytes()
    leftover = folder / f"{TEMP_PREFIX}episode.json.abc{TEMP_SUFFIX}"
    # a create that stopped before its rename (kill -9): its folder, its event, its temp file
    (folder / "episode.json").unlink()
    leftover.write_bytes(b"{half")
    store.close()
    store = Store.open(tmp_path / "store")
    created = store.create("s", "e", title="again")
    assert created.version == 1 and created.title == "again"
    assert not leftover.exists()  # swept, as a folder that was there is
    assert (folder / "events.jsonl").read_bytes().count(b"\n") == 1  # the uncommitted event cut, one left
    assert (folder / "events.jsonl").read_bytes() != events
    assert [e.version for e in store.events("s", "e")] == [1]
    assert [p.message for p in store.verify().problems] == []


def test_a_new_folder_holds_only_the_episode_and_its_log(tmp_path: Path) -> None:
    store = Store.init(tmp_path / "store", format="yaml")
    store.create("s", "e")
    assert sorted(os.listdir(Path(store.root, "shows/s/episodes/e"))) == ["episode.yaml", "events.jsonl"]
    assert store.get("s", "e").version == 1
    assert [p.message for p in store.verify().problems] == []


def test_background_work_raises_once_and_runs_inline_when_no_helper_is_free(monkeypatch: pytest.MonkeyPatch) -> None:
    from statekit import files

    ran: list[str] = []

    def fails() -> None:
        ran.append(threading.current_thread().name)
        raise OSError(5, "Input/output error")

    job = files.Background(fails)
    with pytest.raises(OSError):
        job.result()
    job.result()  # told once
    job.wait()
    assert ran == ["statekit-sync"]  # on a helper thread
    monkeypatch.setattr(files._Syncer, "_IDLE", [])
    monkeypatch.setattr(files._Syncer, "LIMIT", files._Syncer._made)  # none free, none more to make
    job = files.Background(fails)
    assert ran[-1] == threading.current_thread().name  # done at once, here
    job.wait()
    with pytest.raises(OSError):
        job.result()
