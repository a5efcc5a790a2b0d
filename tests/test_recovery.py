"""Rotating backups, restore, gc, repair, and what verify checks beyond the index."""

from __future__ import annotations

import errno
import json
import os
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from statekit import (
    CorruptFileError,
    EpisodeNotFoundError,
    NotReadyError,
    ShowNotFoundError,
    StorageError,
    Store,
    ValidationError,
)
from statekit.files import Disk

from .conftest import episode_file, snapshot


def backup_dir(store: Store, show: str = "s", ep: str = "e") -> Path:
    return Path(store.root, ".statekit", "backups", "episodes", show, ep)


def damage_checkpoint(path: Path, **data: object) -> None:
    """Change a checkpoint's data without updating its sha256 (bit rot, a bad edit)."""
    body = json.loads(path.read_text())
    body["data"].update(data)
    path.write_text(json.dumps(body))


def walk_back_and_forth(store: Store, n: int, show: str = "s", ep: str = "e") -> list[bytes]:
    """n writes; returns the file's bytes before each of them."""
    path = episode_file(store, show, ep)
    seen = []
    for i in range(n):
        seen.append(path.read_bytes())
        store.advance(show, ep, "downloading" if i % 2 == 0 else "failed")
    return seen


# --- rotating backups -----------------------------------------------------------------------


def test_each_overwrite_keeps_the_old_file_and_only_the_newest_three(any_store: Store) -> None:
    store = any_store
    store.create("s", "e")
    before = walk_back_and_forth(store, 5)  # versions 1..5 replaced
    ext = store.config.format
    assert sorted(os.listdir(backup_dir(store))) == [f"episode.v{v}.{ext}" for v in (3, 4, 5)]
    for version in (3, 4, 5):
        assert (backup_dir(store) / f"episode.v{version}.{ext}").read_bytes() == before[version - 1]
    found = store.backups("s", "e")
    assert [(b.number, b.version, b.problem) for b in found] == [(1, 5, None), (2, 4, None), (3, 3, None)]


def test_rotation_stays_at_three_over_many_writes_and_clears_stragglers(store: Store) -> None:
    store.create("s", "e")
    walk_back_and_forth(store, 20)
    assert sorted(os.listdir(backup_dir(store))) == [f"episode.v{v}.yaml" for v in (18, 19, 20)]
    (backup_dir(store) / "episode.v5.yaml").write_bytes(b"left by a version that jumped")
    walk_back_and_forth(store, 12)  # versions 21..32: the listing at a multiple of 16 clears it
    assert sorted(os.listdir(backup_dir(store))) == [f"episode.v{v}.yaml" for v in (30, 31, 32)]


def test_a_16th_version_after_a_gap_keeps_the_newest_three_backups(any_store: Store) -> None:
    # found by tests/reliability/test_model.py: a restore over an unreadable file keeps no backup of it,
    # so the versions jump; the write that then keeps version 16 lists the folder, and the spare it
    # reuses as its temp file must be one that listing drops (the oldest), not the one 3 versions back
    store = any_store
    ext = store.config.format
    store.create("s", "e")
    walk_back_and_forth(store, 14)  # version 15; backups of 12, 13, 14
    assert sorted(os.listdir(backup_dir(store))) == [f"episode.v{v}.{ext}" for v in (12, 13, 14)]
    episode_file(store, "s", "e").write_bytes(b"\x00\x01garbage")
    assert store.restore("s", "e").version == 16  # over the unreadable version 15: kept in the trash
    assert [b.version for b in store.backups("s", "e")] == [14, 13, 12]
    kept = {v: (backup_dir(store) / f"episode.v{v}.{ext}").read_bytes() for v in (13, 14)}
    store.advance("s", "e", "failed")  # version 16 -> 17: 16 is kept, 12 falls out
    assert [b.version for b in store.backups("s", "e")] == [16, 14, 13]
    assert {v: (backup_dir(store) / f"episode.v{v}.{ext}").read_bytes() for v in (13, 14)} == kept
    walk_back_and_forth(store, 16)  # and rotation goes on by name, through version 32's listing
    assert [b.version for b in store.backups("s", "e")] == [32, 31, 30]
    assert store.verify().clean


def test_a_backup_never_shares_the_live_file(store: Store) -> None:
    store.create("s", "e")
    store.advance("s", "e", "downloading")
    path = episode_file(store, "s", "e")
    backup = backup_dir(store) / "episode.v1.yaml"
    assert os.stat(path).st_ino != os.stat(backup).st_ino
    kept = backup.read_bytes()
    with open(path, "r+b") as f:  # an editor that writes in place
        f.write(b"#")
    assert backup.read_bytes() == kept


def test_a_write_reuses_the_backup_rotation_drops_as_its_file(any_store: Store) -> None:
    store = any_store
    store.create("s", "e")
    before = walk_back_and_forth(store, 4)  # backups of versions 2, 3, 4
    ext = store.config.format
    oldest = backup_dir(store) / f"episode.v2.{ext}"
    reused = os.stat(oldest).st_ino
    os.chmod(oldest, 0o600)  # the live file gets a new file's mode, not the spare's
    live = episode_file(store, "s", "e")
    previous = live.read_bytes()
    store.advance("s", "e", "downloading")
    assert os.stat(live).st_ino == reused  # no new file made, none freed
    assert os.stat(live).st_mode & 0o777 == 0o666 & ~current_umask()
    assert store.get("s", "e").version == 6 and store.verify().clean
    assert sorted(os.listdir(backup_dir(store))) == [f"episode.v{v}.{ext}" for v in (3, 4, 5)]
    assert (backup_dir(store) / f"episode.v5.{ext}").read_bytes() == previous
    assert [(backup_dir(store) / f"episode.v{v}.{ext}").read_bytes() for v in (3, 4)] == before[2:4]
    assert not [n for n in os.listdir(live.parent) if n.endswith(".tmp")]


def test_a_spare_backup_with_another_link_or_a_symlink_is_never_written_through(store: Store,
                                                                                 tmp_path: Path) -> None:
    store.create("s", "e")
    walk_back_and_forth(store, 5)  # backups of versions 3, 4, 5
    outside = tmp_path / "outside.yaml"
    os.link(backup_dir(store) / "episode.v3.yaml", outside)  # e.g. a snapshot made with cp -al
    kept = outside.read_bytes()
    store.advance("s", "e", "failed")  # version 6 -> 7: the spare is v3
    assert outside.read_bytes() == kept and os.stat(outside).st_nlink == 1  # rotation dropped its name only
    target = tmp_path / "target.yaml"
    target.write_bytes(b"not the store's")
    (backup_dir(store) / "episode.v4.yaml").unlink()
    os.symlink(target, backup_dir(store) / "episode.v4.yaml")
    store.advance("s", "e", "downloading")  # version 7 -> 8: the spare is a symlink
    assert target.read_bytes() == b"not the store's"
    assert sorted(os.listdir(backup_dir(store))) == ["episode.v5.yaml", "episode.v6.yaml", "episode.v7.yaml"]
    assert store.get("s", "e").version == 8 and store.verify().clean


def current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def test_backups_zero_keeps_none_and_leaves_nothing_behind(tmp_path: Path) -> None:
    store = Store.init(tmp_path / "s", backups=0)
    store.create("s", "e")
    walk_back_and_forth(store, 3)
    assert not backup_dir(store).exists()
    assert sorted(os.listdir(episode_file(store, "s", "e").parent)) == ["episode.yaml", "events.jsonl"]
    assert store.backups("s", "e") == []


def test_backups_setting_is_checked(tmp_path: Path) -> None:
    for bad in (-1, 101, "3"):
        with pytest.raises(ValidationError):
            Store.init(tmp_path / f"s{bad}", backups=bad)  # type: ignore[arg-type]


# --- a damaged file, and restore ------------------------------------------------------------------


@pytest.fixture
def unchained(tmp_path: Path) -> Store:
    """A store before the ledger: reads refuse a damaged file naming a backup, and repair
    restores backups (a ledger store's repair takes the log's version: tests/test_ledger.py)."""
    return Store.init(tmp_path / "old", ledger=False)


def test_a_damaged_file_names_the_newest_valid_backup_and_nothing_changes(unchained: Store) -> None:
    store = unchained
    store.create("s", "e")
    walk_back_and_forth(store, 3)
    (backup_dir(store) / "episode.v3.yaml").write_text("stage: [torn")  # the newest backup is damaged too
    path = episode_file(store, "s", "e")
    path.write_text(path.read_text()[:40])
    before = snapshot(store.root)
    with pytest.raises((CorruptFileError, ValidationError)) as info:
        store.get("s", "e")
    assert "newest valid backup: .statekit/backups/episodes/s/e/episode.v2.yaml (version 2)" in str(info.value)
    assert "statekit restore s/e" in info.value.hint and info.value.context["episode_id"] == "e"
    with pytest.raises((CorruptFileError, ValidationError)):
        store.advance("s", "e", "downloading")
    assert snapshot(store.root) == before


def test_restore_puts_a_backup_back_as_a_new_version(store: Store) -> None:
    store.create("s", "e", title="first")
    store.update("s", "e", title="second")
    store.update("s", "e", title="third")
    assert store.get("s", "e").version == 3
    restored = store.restore("s", "e", backup=2)  # version 1: "first"
    assert restored.title == "first" and restored.version == 4
    assert store.get("s", "e").title == "first"
    last = store.events("s", "e")[-1]
    assert last.kind == "restore" and last.message == "restored backup 2 (version 1)"
    assert store.list()[0].title == "first" and store.verify().clean
    assert store.backups("s", "e")[0].version == 3  # what restore replaced is kept as well
    assert store.restore("s", "e").title == "third"  # the newest: the file before the restore


def test_restore_over_an_unreadable_file_keeps_it_in_the_trash(store: Store) -> None:
    store.create("s", "e")
    store.advance("s", "e", "downloading")
    path = episode_file(store, "s", "e")
    path.write_bytes(b"\x00\x01garbage")
    restored = store.restore("s", "e")
    assert restored.stage == "discovered" and restored.version == 3
    (kept,) = Path(store.root, ".statekit", "trash", "s").iterdir()
    assert kept.name.endswith(".unreadable.yaml") and kept.read_bytes() == b"\x00\x01garbage"
    assert store.verify().clean


def test_restore_keeps_the_comments_of_the_backup(store: Store) -> None:
    store.create("s", "e")
    path = episode_file(store, "s", "e")
    path.write_text("# checked by ana\n" + path.read_text())
    store.sync()
    store.update("s", "e", title="x")
    path.write_text(path.read_text().replace("# checked by ana\n", ""))
    store.sync()
    store.restore("s", "e", backup=2)
    assert path.read_text().startswith("# checked by ana\n")


def test_restore_refuses_what_it_cannot_do(store: Store) -> None:
    store.create("s", "e")
    with pytest.raises(ValidationError, match="has no backups"):
        store.restore("s", "e")
    store.advance("s", "e", "downloading")
    (backup_dir(store) / "episode.v1.yaml").write_text("nonsense: [")
    before = snapshot(store.root)
    for bad in (0, -1, 2, "1", 1.0):
        with pytest.raises(ValidationError):
            store.restore("s", "e", backup=bad)  # type: ignore[arg-type]
    with pytest.raises(CorruptFileError, match="cannot be restored"):
        store.restore("s", "e", backup=1)
    with pytest.raises(Exception, match="not found"):
        store.restore("s", "nope")
    assert snapshot(store.root) == before


def test_a_deleted_episode_takes_its_backups_to_the_trash(store: Store) -> None:
    store.create("s", "e", title="old")
    store.update("s", "e", title="older")
    store.delete("s", "e")
    assert not backup_dir(store).exists()
    assert any(p.name.endswith(".backups") for p in Path(store.root, ".statekit", "trash", "s").iterdir())
    store.create("s", "e", title="new")
    assert store.backups("s", "e") == []


# --- gc ---------------------------------------------------------------------------------------


def test_gc_removes_old_backups_but_keeps_the_last_of_an_unreadable_episode(store: Store) -> None:
    for ep in ("a", "b"):
        store.create("s", ep)
        walk_back_and_forth(store, 3, ep=ep)
    week_ago = (datetime.now(timezone.utc) - timedelta(days=8)).timestamp()
    for ep in ("a", "b"):
        for f in backup_dir(store, ep=ep).iterdir():
            if not f.name.startswith("episode.v3"):
                os.utime(f, (week_ago, week_ago))
    episode_file(store, "s", "b").write_text("broken: [")
    for f in backup_dir(store, ep="b").iterdir():
        os.utime(f, (week_ago, week_ago))
    before = snapshot(store.root)
    planned = store.gc(backups_older_than=timedelta(days=7), dry_run=True)
    assert snapshot(store.root) == before
    removed = store.gc(backups_older_than=timedelta(days=7))
    assert removed == planned
    assert sorted(os.listdir(backup_dir(store, ep="a"))) == ["episode.v3.yaml"]
    assert sorted(os.listdir(backup_dir(store, ep="b"))) == ["episode.v3.yaml"]  # the newest stays: b needs it
    assert store.gc(backups_older_than=timedelta(days=7)) == []
    with pytest.raises(ValidationError):
        store.gc(backups_older_than=timedelta(days=-1))


# --- repair ---------------------------------------------------------------------------------------


def test_repair_fixes_every_kind_of_damage_and_touches_nothing_valid(unchained: Store) -> None:
    store = unchained
    for ep in ("bad", "tail", "temp", "ok"):
        store.create("s", ep)
        store.advance("s", ep, "downloading")
    store.save_checkpoint("s", "temp", "downloading", {"n": 1})
    store.save_checkpoint("s", "ok", "downloading", {"n": 2})
    root = Path(store.root)
    episode_file(store, "s", "bad").write_text("stage: {{{")
    tail_log = root / "shows/s/episodes/tail/events.jsonl"
    committed = tail_log.read_bytes()
    with open(tail_log, "ab") as f:  # the event of a write that never replaced its file, then a torn line
        f.write(json.dumps({"version": 3, "kind": "advance", "at": "2026-01-01T00:00:00Z"}).encode() + b"\n{\"ver")
    temp_dir = root / "shows/s/episodes/temp"
    (temp_dir / ".episode.yaml.x1.tmp").write_bytes(b"half")
    (temp_dir / "checkpoints" / ".downloading.json.x2.tmp").write_bytes(b"half")
    (root / "shows/s/.show.yaml.x3.tmp").write_bytes(b"half")
    checkpoint = temp_dir / "checkpoints" / "downloading.json"
    damage_checkpoint(checkpoint, n=7)
    ok_before = {k: v for k, v in snapshot(root).items() if "/ok/" in k or k.startswith(".statekit/backups/episodes/s/ok")}

    dry = store.repair(dry_run=True)
    assert len(dry.actions) == 6 and dry.problems == []  # restore, tail, 3 temp files, checkpoint
    report = store.repair()
    text = "\n".join(report.actions)
    assert "restore s/bad from backup 1 (version 1)" in text
    assert "drop the uncommitted event tail of s/tail" in text
    assert text.count("remove temp file") == 3
    assert "move the damaged checkpoint shows/s/episodes/temp/checkpoints/downloading.json" in text
    assert report.problems == []
    assert tail_log.read_bytes() == committed
    assert not checkpoint.exists() and store.load_checkpoint("s", "temp", "downloading") is None
    assert store.get("s", "bad").stage == "discovered"  # version 1: the only one ever replaced
    assert store.verify().clean
    assert {k: v for k, v in snapshot(root).items() if "/ok/" in k
            or k.startswith(".statekit/backups/episodes/s/ok")} == ok_before
    again = store.repair()
    assert again.actions == [] and again.problems == []


def test_repair_says_what_it_cannot_fix_and_leaves_it(unchained: Store) -> None:
    store = unchained
    store.create("s", "e")
    path = episode_file(store, "s", "e")
    path.write_text("stage: {{{")  # no backup exists: version 1 was never overwritten
    before = snapshot(store.root)
    report = store.repair()
    assert report.actions == []
    assert len(report.problems) >= 1 and "no valid backup to restore" in report.problems[0]
    assert snapshot(store.root) == before


def test_repair_repairs_the_index(store: Store) -> None:
    store.create("s", "e")
    with store.index.engine.begin() as conn:
        conn.exec_driver_sql("DELETE FROM episodes")
    assert not store.verify().clean
    report = store.repair()
    assert any("index s/e again" in a for a in report.actions)
    assert any("rebuild the index" in a for a in report.actions)  # the stage totals had drifted too
    assert store.verify().clean


# --- verify -----------------------------------------------------------------------------------------


def test_verify_checks_checkpoints_and_backups(store: Store) -> None:
    store.create("s", "e")
    store.save_checkpoint("s", "e", "discovered", {"x": 1})
    store.advance("s", "e", "downloading")
    report = store.verify()
    assert report.clean and report.checkpoints == 1 and report.backups == 2
    damage_checkpoint(Path(store.root, "shows/s/episodes/e/checkpoints/discovered.json"), x=2)
    (backup_dir(store) / "episode.v1.yaml").write_text("- not an episode")
    kinds = {p.kind for p in store.verify().problems}
    assert kinds == {"checkpoint", "backup"}


def test_a_damaged_checkpoint_makes_resume_start_afresh(store: Store, caplog: pytest.LogCaptureFixture) -> None:
    store.create("s", "e")
    with store.run("s", "e", "downloading", reraise=False) as run:
        run.checkpoint({"part": 1})
        raise TimeoutError("slow")
    damage_checkpoint(Path(store.root, "shows/s/episodes/e/checkpoints/downloading.json"), part=9)
    store.retry_now("s", "e")
    with store.run("s", "e", "downloading") as run:
        assert run.resume is None
    assert "ignoring the damaged checkpoint" in caplog.text


# --- advance and leases --------------------------------------------------------------------------------


def test_advance_cannot_move_an_episode_a_live_run_holds(tmp_path: Path) -> None:
    now = [datetime(2026, 1, 1, tzinfo=timezone.utc)]
    store = Store.init(tmp_path / "s", clock=lambda: now[0])
    store.create("s", "e")
    store.run("s", "e", "downloading", lease_seconds=30).__enter__()
    before = snapshot(store.root)
    with pytest.raises(NotReadyError, match="cannot be moved meanwhile"):
        store.advance("s", "e", "downloaded")
    with pytest.raises(NotReadyError, match="cannot be deleted meanwhile"):
        store.delete("s", "e")
    assert snapshot(store.root) == before
    now[0] += timedelta(seconds=31)  # the worker is gone: a person may move it on
    ep = store.advance("s", "e", "downloaded")
    assert ep.lease is None and ep.stage == "downloaded"


def test_restore_respects_a_live_run(tmp_path: Path) -> None:
    now = [datetime(2026, 1, 1, tzinfo=timezone.utc)]
    store = Store.init(tmp_path / "s", clock=lambda: now[0])
    store.create("s", "e")
    store.update("s", "e", title="second")
    store.run("s", "e", "downloading", lease_seconds=30).__enter__()
    before = snapshot(store.root)
    with pytest.raises(NotReadyError, match="cannot be restored meanwhile"):
        store.restore("s", "e")
    assert snapshot(store.root) == before and store.next("downloading") == []


class FailingDirSync(Disk):
    """Fails the fsync of one folder (after ``armed`` is set)."""

    def __init__(self, folder: str) -> None:
        self.folder, self.armed = folder, False

    def fsync(self, fd: int) -> None:
        if self.armed and os.path.samestat(os.fstat(fd), os.stat(self.folder)):
            raise OSError(errno.EIO, "injected")
        super().fsync(fd)


def test_a_failed_restore_over_a_damaged_file_puts_the_damaged_bytes_back(tmp_path: Path) -> None:
    store = Store.init(tmp_path / "s")
    store.create("s", "e")
    store.update("s", "e", title="second")
    path = episode_file(store, "s", "e")
    path.write_bytes(b"\x00damaged")
    disk = FailingDirSync(str(path.parent))
    reopened = Store.open(store.root, disk=disk)
    disk.armed = True
    with pytest.raises(StorageError, match="EIO"):
        reopened.restore("s", "e")
    assert path.read_bytes() == b"\x00damaged"  # never deleted: the person still has their file
    disk.armed = False
    restored = reopened.restore("s", "e")  # backup 1: version 1, from before the update
    assert restored.title == "" and restored.stage == "discovered"
    assert [e.version for e in reopened.events("s", "e")] == list(range(1, restored.version + 1))


def test_a_backup_folder_another_process_moved_away_is_made_again(tmp_path: Path) -> None:
    worker = Store.init(tmp_path / "s")
    worker.create("s", "e")
    worker.update("s", "e", title="kept by the worker")
    other = Store.open(worker.root)
    other.delete("s", "e")  # its backups go to the trash with it
    other.create("s", "e", title="new")
    assert worker.update("s", "e", title="newer").version == 2
    assert [b.version for b in worker.backups("s", "e")] == [1]


class FailingBackupMove(Disk):
    def rename(self, src: str, dst: str, **dir_fds: int | None) -> None:
        if os.sep + "backups" + os.sep in src:
            raise OSError(errno.EIO, "injected")
        super().rename(src, dst, **dir_fds)


def test_a_delete_whose_backups_cannot_follow_is_still_a_whole_delete(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = Store.init(tmp_path / "s")
    store.create("s", "e")
    store.create("s", "keep")
    store.update("s", "e", title="second")
    faulty = Store.open(store.root, disk=FailingBackupMove())
    faulty.delete("s", "e")
    assert "could not follow it to the trash" in caplog.text
    assert [e.key for e in faulty.list()] == ["s/keep"] and faulty.get_show("s").episodes == ["keep"]
    assert faulty.verify().clean
    assert store.create("s", "e").version == 1  # the stale backups go to the trash now
    assert store.backups("s", "e") == []


def test_backups_of_an_episode_that_does_not_exist_is_an_error(store: Store) -> None:
    store.create("s", "e")
    with pytest.raises(EpisodeNotFoundError):
        store.backups("s", "nope")
    with pytest.raises(ShowNotFoundError):
        store.backups("nope", "e")
    assert store.backups("s", "e") == []


def test_gc_refuses_an_age_beyond_the_calendar(store: Store) -> None:
    with pytest.raises(ValidationError, match="too large"):
        store.gc(backups_older_than=timedelta(days=900_000))


class NoHardLinks(Disk):
    def link(self, src: str, dst: str, **dir_fds: int | None) -> None:
        raise OSError(errno.EPERM, "Operation not permitted")


def test_a_file_system_without_hard_links_writes_on_without_backups(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = Store.init(tmp_path / "s", disk=NoHardLinks())
    store.create("s", "e")
    assert store.advance("s", "e", "downloading").version == 2
    assert "cannot hard-link" in caplog.text
    assert store.backups("s", "e") == [] and store.verify().clean
