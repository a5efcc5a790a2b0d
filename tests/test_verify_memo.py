"""What ``verify`` remembers of clean episodes (``statekit/index/verified.py``).

After a clean verify, each test changes one input of one episode's check (or of the
store) and the next verify, using what it remembered, must report exactly what a
full verify reports; the other episodes must come from the memo (so the test shows
the memo was in use, and the change was seen anyway).
"""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from statekit import Store
from statekit.cli import main
from statekit.index.verified import memo_path
from statekit.index.verify import verify
from tests.test_graphs import renamed, save_graph

EPISODES = ["s/a", "s/b", "s/c", "s/d"]


def made(store: Store) -> Store:
    """Four episodes: one with a checkpoint and backups, two sharing a metadata value,
    one moved on; a clean verify remembers all four."""
    store.create("s", "a", title="A")
    store.advance("s", "a", "downloading")
    store.save_checkpoint("s", "a", "downloading", {"part": 1})
    store.update("s", "a", title="A two")  # the last event: a patch of the title
    store.create("s", "b", metadata={"isrc": "X1"})
    store.create("s", "c", metadata={"isrc": "X1"})
    store.create("s", "d")
    store.advance("s", "d", "downloading")
    store.advance("s", "d", "downloaded")
    first = store.verify()
    assert first.clean and (first.full, first.unchanged) == (4, 0), first
    again = store.verify()
    assert again.clean and (again.full, again.unchanged) == (0, 4), again
    return store


@pytest.fixture
def memo_store(tmp_path: Path) -> Store:
    return made(Store.init(tmp_path / "store"))


def ep_dir(store: Store, ep: str) -> Path:
    return Path(store.root, "shows", "s", "episodes", ep)


def warm_equals_full(store: Store, unchanged: int | None = 3) -> list[tuple[str, str | None]]:
    """The verify that may use the memo reports what a full one does; (kind, episode) of each problem."""
    warm = store.verify()
    full = store.verify(full=True)
    assert warm.problems == full.problems
    assert (warm.checked, warm.checkpoints, warm.backups, warm.assets) == \
        (full.checked, full.checkpoints, full.backups, full.assets)
    assert full.full == full.checked and full.unchanged == 0
    if unchanged is not None:
        assert warm.unchanged == unchanged, warm
    assert warm.problems, "the change was not found at all"
    return [(p.kind, p.episode) for p in warm.problems]


def sql(store: Store, statement: str) -> None:
    conn = sqlite3.connect(os.path.join(store.root, ".statekit", "index.db"))
    with conn:
        conn.execute(statement)
    conn.close()


def test_a_byte_of_the_file(memo_store: Store) -> None:
    path = ep_dir(memo_store, "b") / "episode.yaml"
    path.write_bytes(path.read_bytes().replace(b"title: ''", b"title: 'b'"))
    assert warm_equals_full(memo_store) == [("edited", "s/b")]


def test_the_last_lines_patch_which_the_chain_does_not_cover(memo_store: Store) -> None:
    log = ep_dir(memo_store, "a") / "events.jsonl"
    lines = log.read_bytes().splitlines(keepends=True)
    assert b'"A two"' in lines[-1]
    lines[-1] = lines[-1].replace(b'"A two"', b'"A tw0"')
    log.write_bytes(b"".join(lines))
    found = warm_equals_full(memo_store)
    assert ("chain", "s/a") in found


def test_a_checkpoint(memo_store: Store) -> None:
    path = ep_dir(memo_store, "a") / "checkpoints" / "downloading.json"
    path.write_bytes(path.read_bytes().replace(b'"part":1', b'"part":2').replace(b'"part": 1', b'"part": 2'))
    assert warm_equals_full(memo_store) == [("checkpoint", "s/a")]


def test_a_backup(memo_store: Store) -> None:
    folder = Path(memo_store.root, ".statekit", "backups", "episodes", "s", "a")
    backup = sorted(folder.iterdir())[0]
    backup.write_bytes(b"title: [unclosed\n")
    assert warm_equals_full(memo_store) == [("backup", "s/a")]


def test_a_hard_link_added(memo_store: Store, tmp_path: Path) -> None:
    os.link(ep_dir(memo_store, "c") / "episode.yaml", tmp_path / "another-name.yaml")
    assert warm_equals_full(memo_store) == [("hardlink", "s/c")]


def test_the_index_rows_data(memo_store: Store) -> None:
    sql(memo_store, "UPDATE episodes SET data = json_set(data, '$.title', 'zzz') WHERE episode_id = 'd'")
    found = warm_equals_full(memo_store)
    assert ("index", "s/d") in found


def test_an_index_event_row(memo_store: Store) -> None:
    sql(memo_store, "UPDATE events SET message = 'forged' WHERE episode_id = 'd' AND version = 2")
    assert warm_equals_full(memo_store) == [("index", "s/d")]


def test_the_pending_mark(memo_store: Store) -> None:
    memo_store.index.set_pending("s", "c", {"fields": ["title"]})
    assert warm_equals_full(memo_store) == [("index", "s/c")]


def test_the_pipeline_graph(memo_store: Store) -> None:
    save_graph(memo_store.root, renamed("downloaded", "fetched"))  # d is at downloaded: stranded now
    reopened = Store.open(memo_store.root)
    found = warm_equals_full(reopened, unchanged=0)  # the graph is in every check: nothing is used
    assert ("stranded", "s/d") in found


def test_the_unique_keys(memo_store: Store) -> None:
    path = Path(memo_store.root, "statekit.yaml")
    config = yaml.safe_load(path.read_text())
    config["unique"] = ["isrc"]
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    found = warm_equals_full(Store.open(memo_store.root), unchanged=0)
    assert ("duplicate", "s/c") in found


@pytest.mark.parametrize("damage", ["deleted", "garbage", "empty"])
def test_the_memo_file_deleted_or_damaged(memo_store: Store, damage: str) -> None:
    path = Path(memo_path(memo_store.root))
    ep = ep_dir(memo_store, "b") / "episode.yaml"
    ep.write_bytes(ep.read_bytes().replace(b"title: ''", b"title: 'b'"))
    if damage == "deleted":
        path.unlink()
    else:
        path.write_bytes(b"" if damage == "empty" else b"not a database at all " * 100)
    found = warm_equals_full(memo_store, unchanged=0)
    assert found == [("edited", "s/b")]
    # and the memo was made again: a and c and d are remembered, b is not
    assert memo_store.verify().unchanged == 3


def test_a_damaged_episode_is_never_remembered(memo_store: Store) -> None:
    (ep_dir(memo_store, "b") / "episode.yaml").write_text("title: [unclosed\n")
    for _ in range(2):
        report = memo_store.verify()
        assert [(p.kind, p.episode) for p in report.problems] == [("invalid", "s/b")]
        assert (report.full, report.unchanged) == (1, 3)
    conn = sqlite3.connect(memo_path(memo_store.root))
    remembered = {row[0] for row in conn.execute("SELECT episode FROM clean")}
    conn.close()
    assert remembered == {"s/a", "s/c", "s/d"}


def test_an_episode_gone_and_one_added(memo_store: Store) -> None:
    memo_store.delete("s", "c")
    memo_store.create("s", "e")
    report = memo_store.verify()
    assert report.clean and (report.full, report.unchanged) == (1, 3)
    conn = sqlite3.connect(memo_path(memo_store.root))
    remembered = {row[0] for row in conn.execute("SELECT episode FROM clean")}
    conn.close()
    assert remembered == {"s/a", "s/b", "s/d", "s/e"}


@pytest.mark.parametrize("fmt", ["yaml", "json"])
def test_a_pool_and_one_process_agree_with_the_memo_or_without(tmp_path: Path, fmt: str) -> None:
    store = made(Store.init(tmp_path / "store", format=fmt))
    for i in range(40):
        store.create("t", f"e{i:02d}", metadata={"i": i})
    (ep_dir(store, "b") / f"episode.{fmt}").write_text("damaged {[")
    cold_one = verify(store.writer, workers=1, full=True)
    cold_pool = verify(store.writer, workers=2, full=True)
    assert cold_pool == cold_one and cold_one.full == 44
    warm_pool = verify(store.writer, workers=2)
    warm_one = verify(store.writer, workers=1)
    assert warm_pool == warm_one and warm_one.problems == cold_one.problems
    assert (warm_one.full, warm_one.unchanged) == (1, 43)


def test_a_store_opened_read_only_never_writes_the_memo(tmp_path: Path) -> None:
    store = Store.init(tmp_path / "store")
    store.create("s", "a")
    store.close()
    reader = Store.open(tmp_path / "store", read_only=True)
    for _ in range(2):
        report = reader.verify()
        assert report.clean and (report.full, report.unchanged) == (1, 0)
    assert not os.path.exists(memo_path(str(tmp_path / "store")))
    # a memo written by a writing store is used by the reader
    Store.open(tmp_path / "store").verify()
    assert Store.open(tmp_path / "store", read_only=True).verify().unchanged == 1


def test_cli_full_and_json(memo_store: Store) -> None:
    runner = CliRunner()
    root = memo_store.root
    text = runner.invoke(main, ["--root", root, "verify"])
    assert text.exit_code == 0 and "4 episodes checked (0 in full, 4 unchanged since the last clean verify)" \
        in text.output
    full = runner.invoke(main, ["--root", root, "verify", "--full", "--json"])
    assert full.exit_code == 0, full.output
    data = json.loads(full.output)
    assert (data["clean"], data["checked"], data["full"], data["unchanged"]) == (True, 4, 4, 0)
    (ep_dir(memo_store, "b") / "episode.yaml").write_text("title: [unclosed\n")
    bad = runner.invoke(main, ["--root", root, "verify", "--json"])
    assert bad.exit_code == 1
    data = json.loads(bad.output)
    assert (data["full"], data["unchanged"]) == (1, 3)
    assert [(p["kind"], p["episode"]) for p in data["problems"]] == [("invalid", "s/b")]


def test_with_the_index_on_postgresql(tmp_path: Path, pg_url: str) -> None:
    """The rows read through the driver's cursor (data as text, times as timestamps) digest and
    compare as on SQLite: clean, remembered, and a changed row or event row is seen."""
    store = made(Store.init(tmp_path / "store", index_url=pg_url))
    from statekit.index import engine_for

    engine = engine_for(pg_url)
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql("UPDATE events SET message = 'forged' WHERE episode_id = 'd' AND version = 2")
        assert warm_equals_full(store) == [("index", "s/d")]
        store.rebuild_index()
        assert store.verify().clean
        with engine.begin() as conn:
            conn.exec_driver_sql("UPDATE episodes SET data = jsonb_set(data, '{title}', '\"zzz\"') "
                                 "WHERE episode_id = 'b'")
        assert ("index", "s/b") in warm_equals_full(store)
    finally:
        engine.dispose()
        store.close()


def test_a_symlink_in_place_of_the_memo_is_never_followed(memo_store: Store, tmp_path: Path) -> None:
    path = Path(memo_path(memo_store.root))
    outside = tmp_path / "outside.db"
    path.rename(outside)
    before = outside.read_bytes()
    path.symlink_to(outside)
    for _ in range(2):
        report = memo_store.verify()
        assert report.clean and (report.full, report.unchanged) == (4, 0)  # not read through the link either
    assert outside.read_bytes() == before and path.is_symlink()


def test_a_root_whose_path_a_uri_would_misread(tmp_path: Path) -> None:
    store = Store.init(tmp_path / "a store?mode=rw#1%20")
    store.create("s", "a")
    assert store.verify().full == 1
    assert store.verify().unchanged == 1
