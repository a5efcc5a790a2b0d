"""Symlinks planted after a store is opened (issue 12, item 4).

A long-running worker holds one ``Store``. After it has used a folder once,
the folder is replaced by a symlink to a folder outside the root holding
files named like the ones statekit would write or delete there. Every write
that uses the folder must then succeed without following the link, or fail
with a one-line ``UnsafePathError`` naming the link and leave the episode
file and its log as they were; nothing outside the root may be created,
changed or deleted. A real-process race test swaps folders for symlinks in
a tight loop while another process advances.

Each test runs both ways statekit reaches a folder: Linux's ``openat2``
(one call, the kernel refusing symlinks) and the walk one component at a
time that every other system uses (and that reports what ``openat2`` refused).
"""

from __future__ import annotations

import errno
import hashlib
import multiprocessing
import os
import shutil
import stat
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from statekit import StatekitError, StorageError, Store, UnsafePathError, folders

SHOW, EP = "s", "e"
ASSET = b"asset bytes, added before the link is planted\n"
NEW_ASSET = b"other asset bytes, added after\n"
BAIT = b"outside the root: must never change\n"


@pytest.fixture(params=["openat2", "walk"])
def reach(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """How folders are reached in this test: the kernel's way, or the walk alone."""
    if request.param == "openat2" and not folders.openat2_available():
        pytest.skip("this system has no openat2")
    was = folders.use_openat2(request.param == "openat2")
    request.addfinalizer(lambda: folders.use_openat2(was))
    return str(request.param)


def use_walk(walk: bool) -> None:
    """In a child process: reach folders by the walk alone (as where the kernel has no openat2)."""
    if walk:
        folders.use_openat2(False)


def outside_state(folder: Path) -> dict[str, Any]:
    """Every entry under ``folder`` (links not followed): bytes, link target or kind."""
    state: dict[str, Any] = {}
    for parent, dirs, names in os.walk(folder):
        for name in dirs + names:
            path = os.path.join(parent, name)
            st = os.lstat(path)
            rel = os.path.relpath(path, folder)
            if stat.S_ISLNK(st.st_mode):
                state[rel] = ("link", os.readlink(path))
            elif stat.S_ISREG(st.st_mode):
                state[rel] = ("file", Path(path).read_bytes())
            else:
                state[rel] = ("kind", stat.S_IFMT(st.st_mode))
    return state


def worker_store(root: Path) -> Store:
    """A store whose worker has used every folder once:
    s/e at version 5 with three backups, a checkpoint, an asset (and its link), a run's temp file,
    a deletion (the trash), and a show lock."""
    store = Store.init(root)
    store.create(SHOW, EP, title="the episode")
    store.create(SHOW, "other", title="another")
    store.create(SHOW, "third")
    store.create(SHOW, "gone")
    store.delete(SHOW, "gone")
    store.advance(SHOW, EP, "downloading")
    store.save_checkpoint(SHOW, EP, "downloading", {"part": 1})
    store.add_asset(SHOW, EP, ASSET, name="a.wav")
    store.update(SHOW, EP, title="the episode, again")
    with store.run(SHOW, "other", "downloading") as run:
        Path(run.temp_path(".wav")).write_bytes(b"scratch")
    assert store.get(SHOW, EP).version == 5 and len(store.backups(SHOW, EP)) == 3
    return store


def asset_prefix(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:2]


@dataclass(frozen=True)
class Plant:
    inside: str
    """The folder (relative to the root) replaced by a symlink."""
    bait: Callable[[Path, Path], None]
    """Fills the outside folder (given it and the root) with what statekit would write or delete."""
    refused: tuple[str, ...]
    """Steps that must fail with UnsafePathError (every other step may succeed or be refused)."""


def _files(*names: str) -> Callable[[Path, Path], None]:
    def fill(outside: Path, _root: Path) -> None:
        for name in names:
            path = outside / name
            if name.endswith("/"):
                path.mkdir(parents=True, exist_ok=True)
            else:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(BAIT)
    return fill


def _copy_of(inside: str) -> Callable[[Path, Path], None]:
    def fill(outside: Path, root: Path) -> None:
        shutil.rmtree(outside)
        shutil.copytree(root / inside, outside, symlinks=True)
    return fill


EPISODE = f"shows/{SHOW}/episodes/{EP}"
WRITES = ("advance", "update", "save_checkpoint", "restore", "add_asset", "delete")

PLANTS = {
    # rotation would link the old file in here and delete an "old backup" named like these
    "backup-folder": Plant(f".statekit/backups/episodes/{SHOW}/{EP}",
                           _files(*(f"episode.v{n}.yaml" for n in range(1, 40))),
                           ("advance", "update", "save_checkpoint", "restore", "add_asset")),
    "backups-show-folder": Plant(f".statekit/backups/episodes/{SHOW}",
                                 _files(*(f"{EP}/episode.v{n}.yaml" for n in range(1, 40))),
                                 ("advance", "update", "restore")),
    # lock files would be created here
    "locks-folder": Plant(".statekit/locks", _files("episodes/s/", "shows/"), WRITES),
    "locks-show-folder": Plant(f".statekit/locks/episodes/{SHOW}", _files(), WRITES),
    "trash-folder": Plant(".statekit/trash", _files(f"{SHOW}/"), ("delete",)),
    "tmp-folder": Plant(".statekit/tmp", _files("runs/"), ("run temp_path",)),
    "objects-folder": Plant("objects", _files(f"{asset_prefix(NEW_ASSET)}/", f"{asset_prefix(ASSET)}/"),
                            ("add_asset",)),
    "episode-folder": Plant(EPISODE, _copy_of(EPISODE), WRITES),
    # a temp-named file here is what every write's clean-up would delete
    "checkpoints-folder": Plant(f"{EPISODE}/checkpoints",
                                _files(".downloading.json.abc123.tmp", "downloading.json"), ("save_checkpoint",)),
    "assets-folder": Plant(f"{EPISODE}/assets", _files("a.wav", ".a.wav.1.tmp"), ()),
}


def plant(root: Path, outside: Path, name: str) -> Path:
    """Replace the folder with a symlink to ``outside`` (baited first)."""
    spec = PLANTS[name]
    link = root / spec.inside
    outside.mkdir()
    spec.bait(outside, root)
    shutil.rmtree(link)
    link.symlink_to(outside, target_is_directory=True)
    return link


def steps(store: Store) -> list[tuple[str, Callable[[], Any]]]:
    """Writes that use every folder of s/e (each valid on a store without links)."""
    def advance() -> None:
        for _ in range(5):  # enough to rotate backups out
            stage = store.get(SHOW, EP).stage
            store.advance(SHOW, EP, "failed" if stage == "downloading" else "downloading", cost=0.01)

    def run_temp() -> None:
        with store.run(SHOW, "third", "downloading") as run:
            Path(run.temp_path(".wav")).write_bytes(b"scratch")

    return [
        ("advance", advance),
        ("update", lambda: store.update(SHOW, EP, title="renamed")),
        ("save_checkpoint", lambda: store.save_checkpoint(SHOW, EP, "downloading", {"part": 2})),
        ("restore", lambda: store.restore(SHOW, EP, 1)),
        ("remove_asset", lambda: store.remove_asset(SHOW, EP, "a.wav")),
        ("add_asset", lambda: store.add_asset(SHOW, EP, NEW_ASSET, name="a.wav")),
        ("run temp_path", run_temp),
        ("gc", lambda: store.gc(backups_older_than=timedelta(0))),
        ("gc_objects", store.gc_objects),
        ("gc_run_temp", store.gc_run_temp),
        ("delete", lambda: store.delete(SHOW, EP)),
    ]


def episode_bytes(root: Path) -> dict[str, bytes | None]:
    folder = root / EPISODE
    out: dict[str, bytes | None] = {}
    for name in ("episode.yaml", "events.jsonl"):
        try:
            out[name] = (folder / name).read_bytes()
        except OSError:
            out[name] = None
    return out


@pytest.mark.parametrize("name", list(PLANTS))
def test_a_symlink_planted_after_the_store_used_a_folder_is_never_followed(tmp_path: Path, name: str,
                                                                          reach: str) -> None:
    outside = tmp_path / "outside"
    store = worker_store(tmp_path / "store")
    root = Path(store.root)
    link = plant(root, outside, name)
    before = outside_state(outside)
    beside = sorted(os.listdir(tmp_path))
    outcomes: dict[str, str] = {}
    for label, fn in steps(store):
        files = episode_bytes(root)
        try:
            fn()
        except UnsafePathError as exc:
            outcomes[label] = "refused"
            assert "\n" not in exc.one_line(), exc.one_line()
            assert exc.path == str(link) and str(link) in str(exc), f"{label}: {exc.one_line()}"
            assert episode_bytes(root) == files, f"{label}: refused, but the episode file or its log changed"
        except StatekitError as exc:
            pytest.fail(f"{label}: {type(exc).__name__}: {exc.one_line()}")
        else:
            outcomes[label] = "ok"
        assert outside_state(outside) == before, f"{label} wrote or deleted outside the root ({outcomes})"
    assert sorted(os.listdir(tmp_path)) == beside, "new files beside the store"
    assert link.is_symlink() or not os.path.lexists(link), "the link was replaced by what it pointed to"
    assert [label for label in PLANTS[name].refused if outcomes[label] != "refused"] == [], outcomes
    store.close()


def test_a_run_whose_temp_folder_is_swapped_mid_run_writes_and_removes_nothing_outside(tmp_path: Path,
                                                                                      reach: str) -> None:
    """The run made its temp folder, then ``.statekit/tmp`` became a link to
    a folder holding one named like the run's: a second temp file is refused
    and the run's clean-up removes nothing there."""
    outside = tmp_path / "outside"
    store = worker_store(tmp_path / "store")
    root = Path(store.root)
    with store.run(SHOW, "third", "downloading", reraise=False) as run:
        first = Path(run.temp_path(".wav"))
        first.write_bytes(b"scratch")
        outside.mkdir()
        (outside / "runs" / run.run_id).mkdir(parents=True)
        (outside / "runs" / run.run_id / "precious.wav").write_bytes(BAIT)
        shutil.rmtree(root / ".statekit" / "tmp")
        (root / ".statekit" / "tmp").symlink_to(outside, target_is_directory=True)
        before = outside_state(outside)
        with pytest.raises(UnsafePathError) as refused:
            run.temp_path(".wav")
        assert refused.value.path == str(root / ".statekit" / "tmp")
    assert outside_state(outside) == before
    with pytest.raises(UnsafePathError):
        store.gc_run_temp()
    assert outside_state(outside) == before


# --- a real race: another process swaps folders for symlinks while a worker advances -------------------

RACED = (f".statekit/backups/episodes/{SHOW}/{EP}", f".statekit/locks/episodes/{SHOW}")


def swapper(root: str, outside: str, stop: Any, ready: Any) -> None:
    """Swap each raced folder for a symlink to ``outside`` and back, as fast as it can."""
    ready.set()
    n = 0
    while not stop.is_set():
        for inside in RACED:
            target = os.path.join(root, inside)
            aside = f"{target}.aside{n}"
            n += 1
            try:
                os.rename(target, aside)
            except OSError:
                aside = ""
            try:
                os.symlink(outside, target)
            except OSError:
                pass
            time.sleep(0.0002)
            try:
                if os.path.islink(target):
                    os.unlink(target)
                if aside:
                    os.rename(aside, target)
            except OSError:  # the worker made a new folder meanwhile: the old one stays aside
                pass


def advancer(root: str, seconds: float, walk: bool, results: Any) -> None:
    use_walk(walk)
    store = Store.open(root)
    outcomes: Counter[str] = Counter()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        stage = store.get(SHOW, EP).stage
        try:
            store.advance(SHOW, EP, "failed" if stage == "downloading" else "downloading", cost=0.01)
            outcomes["ok"] += 1
        except UnsafePathError:
            outcomes["refused"] += 1
        except StorageError as exc:
            # the swapper also renames the old folder back over one the worker just made, so a
            # write can find its folder deleted under it: a clean failure, nothing written
            outcomes["folder deleted" if exc.errno == errno.ENOENT else f"StorageError: {exc}"[:200]] += 1
        except Exception as exc:  # noqa: BLE001 - what the test looks for
            outcomes[f"{type(exc).__name__}: {exc}"[:200]] += 1
    store.close()
    results.put(dict(outcomes))


def test_a_folder_swapped_for_a_symlink_in_a_tight_loop_never_leads_outside(tmp_path: Path, reach: str) -> None:
    outside = tmp_path / "outside"
    store = Store.init(tmp_path / "store")
    root = Path(store.root)
    store.create(SHOW, EP)
    for _ in range(4):
        stage = store.get(SHOW, EP).stage
        store.advance(SHOW, EP, "failed" if stage == "downloading" else "downloading")
    store.close()
    outside.mkdir()
    for n in range(1, 2000):  # "old backups" rotation would delete, and the names links would take
        (outside / f"episode.v{n}.yaml").write_bytes(BAIT)
    before = outside_state(outside)
    ctx = multiprocessing.get_context("spawn")
    stop, ready, results = ctx.Event(), ctx.Event(), ctx.Queue()
    swap = ctx.Process(target=swapper, args=(str(root), str(outside), stop, ready))
    work = ctx.Process(target=advancer, args=(str(root), 3.0, reach == "walk", results))
    swap.start()
    try:
        assert ready.wait(30)
        work.start()
        outcomes = results.get(timeout=120)
        work.join(30)
    finally:
        stop.set()
        swap.join(30)
    assert outside_state(outside) == before, "written or deleted outside the root"
    assert not any(p.is_symlink() for p in root.rglob("*")), "the swapper left a link"
    unexpected = {k: v for k, v in outcomes.items() if k not in ("ok", "refused", "folder deleted")}
    assert not unexpected, unexpected
    assert outcomes.get("ok", 0) > 0 and outcomes.get("refused", 0) > 0, outcomes  # the race did happen
    reopened = Store.open(root)
    episode = reopened.get(SHOW, EP)
    assert [e.version for e in reopened.events(SHOW, EP)] == list(range(1, episode.version + 1))
    reopened.close()
