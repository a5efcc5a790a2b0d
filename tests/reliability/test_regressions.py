"""Bugs the crash matrix and the power-loss harness found, each pinned by a
direct test (RELIABILITY.md lists them)."""

from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path

from statekit import Store
from statekit.eventlog import event_line
from statekit.files import Disk

from ..conftest import episode_file, index_rows


def test_sync_drops_a_crashed_writes_event_tail_before_adopting_a_hand_edit(tmp_path: Path) -> None:
    """Found by the crash matrix (sync, killed before the event's fsync): a
    hand edit adopted over the tail of a crashed write built on that tail,
    so the log kept an event for a file that never existed and sync's
    index differed from a rebuild."""
    store = Store.init(tmp_path / "s")
    store.create("s", "e", title="Episode")
    path = episode_file(store, "s", "e")
    path.write_text(path.read_text().replace("title: Episode", "title: By hand"))
    log = path.parent / "events.jsonl"
    tail = {"schema_version": 1, "version": 2, "at": "2026-01-01T00:00:00Z", "show_id": "s", "episode_id": "e",
            "kind": "external_edit", "fields": ["title"], "sha256": "0" * 64}
    with open(log, "ab") as f:  # what a crash after the event's append and before the rename leaves
        f.write(event_line(tail))
    report = store.sync()
    assert [c["episode"] for c in report.changed] == ["s/e"]
    ep = store.get("s", "e")
    assert ep.version == 2 and ep.title == "By hand"
    events = [json.loads(line) for line in log.read_text().splitlines()]
    assert [e["version"] for e in events] == [1, 2] and events[-1]["sha256"] != "0" * 64
    synced = index_rows(store)
    copy = tmp_path / "copy"
    shutil.copytree(store.root, copy, ignore=shutil.ignore_patterns("index.db*"))
    assert index_rows(Store.open(copy)) == synced


def test_a_hand_lowered_version_the_index_saw_is_still_built_on(tmp_path: Path) -> None:
    """The other side of the rule above: an event the index saw was committed."""
    store = Store.init(tmp_path / "s")
    store.create("s", "e", title="Episode")
    store.update("s", "e", title="Second")
    path = episode_file(store, "s", "e")
    path.write_text(path.read_text().replace("version: 2", "version: 1").replace("title: Second", "title: Third"))
    store.sync()
    assert store.get("s", "e").version == 3
    assert [e.version for e in store.events("s", "e")] == [1, 2, 3]


def test_rebuild_orders_an_episode_show_yaml_does_not_list_yet_as_sync_does(tmp_path: Path) -> None:
    """Found by the crash matrix (create, killed before show.yaml's update):
    a rebuild gave the unlisted episode a position sync never would."""
    store = Store.init(tmp_path / "s")
    for ep in ("b", "a"):
        store.create("s", ep)
    show = Path(store.root, "shows", "s", "show.yaml")
    before = show.read_bytes()

    class NoShowUpdate(Disk):  # the create's show.yaml update fails (it is only logged): as if it stopped there
        def mkstemp(self, directory: str, prefix: str, suffix: str, *, dir_fd: int | None = None) -> tuple[int, str]:
            if directory == str(show.parent):
                raise OSError(errno.EIO, "injected")
            return super().mkstemp(directory, prefix, suffix, dir_fd=dir_fd)

    Store.open(store.root, disk=NoShowUpdate()).create("s", "c")
    assert show.read_bytes() == before
    store = Store.open(store.root)
    store.sync()
    synced = index_rows(store)
    store.rebuild_index()
    assert index_rows(store) == synced
    assert [e.episode_id for e in store.list("s")] == ["b", "a", "c"]


def test_repair_removes_temp_files_an_interrupted_migrate_left_in_its_backup(tmp_path: Path) -> None:
    """Found by the crash matrix (migrate, killed while copying the file to
    its backup folder): repair left the temp file there for good."""
    store = Store.init(tmp_path / "s")
    store.create("s", "e")
    folder = Path(store.root, ".statekit", "backups", "migrate-20260101T000000.000000Z", "shows", "s", "episodes",
                  "e")
    folder.mkdir(parents=True)
    (folder / "episode.yaml").write_text("kept\n")
    (folder / ".episode.yaml.abc123.tmp").write_text("half a copy")
    report = store.repair()
    assert any("remove temp file" in a and "migrate-" in a for a in report.actions)
    assert sorted(os.listdir(folder)) == ["episode.yaml"]


def test_the_cli_traceback_check_tells_a_crash_from_an_error_history_shown() -> None:
    """``cli_problems`` flags a Python traceback, on either stream, and not a worker's traceback
    kept as text in an episode's error history, which ``show`` prints inside a JSON value."""
    from .cli import Cli, cli_problems

    shown = ' error_history  [{"traceback": "Traceback (most recent call last):\\n  File ..."}]\n'
    crash = "Traceback (most recent call last):\n  File \"x.py\", line 1, in <module>\nKeyError: 'a'\n"
    def traceback_found(result: Cli) -> bool:
        return any(p.endswith(": a traceback") for p in cli_problems(result))

    assert not traceback_found(Cli(("show", "c/e"), 0, shown, ""))
    assert traceback_found(Cli(("show", "c/e"), 1, "", crash))
    assert traceback_found(Cli(("show", "c/e"), 0, crash, ""))
