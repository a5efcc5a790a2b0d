"""Unique metadata keys (``unique:`` in statekit.yaml), a stage move plus
fields in one write (``advance(..., metadata=, files=)``), and ``episode_path``."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from statekit import (
    DuplicateError,
    EpisodeNotFoundError,
    InvalidIdError,
    InvalidTransitionError,
    ShowNotFoundError,
    Store,
    ValidationError,
)
from statekit.cli import main

from .conftest import episode_file, index_rows, snapshot

KEY = "archive_identifier"
LEGACY = Path(__file__).resolve().parent.parent / "data" / "legacy" / "processed"
WORKER = str(Path(__file__).with_name("proc_worker.py"))


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store.init(tmp_path / "store", unique=[KEY])


def ident(value: Any, **more: Any) -> dict[str, Any]:
    return {KEY: value, **more}


def claims(store: Store) -> list[tuple[str, str, str]]:
    """What the index holds of the unique values: (key, show, episode)."""
    conn = sqlite3.connect(os.path.join(store.root, ".statekit", "index.db"))
    try:
        return sorted(conn.execute("SELECT key, show_id, episode_id FROM unique_values").fetchall())
    finally:
        conn.close()


def edit(store: Store, show: str, ep: str, old: str, new: str) -> Path:
    """A person's edit of the episode file, as an editor saves it."""
    path = episode_file(store, show, ep)
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new))
    return path


# --- create, update, advance, import, sync: each refuses a duplicate ----------------------------


def test_create_refuses_a_duplicate_naming_the_episode_that_has_it(store: Store) -> None:
    store.create("oliver", "ep001", metadata=ident("hy0_2004-04-14"))
    before = snapshot(store.root)
    with pytest.raises(DuplicateError) as caught:
        store.create("other", "ep009", metadata=ident("hy0_2004-04-14", topic="x"))
    exc = caught.value
    assert (exc.key, exc.value, exc.other) == (KEY, "hy0_2004-04-14", "oliver/ep001")
    assert (exc.show_id, exc.episode_id, exc.field) == ("other", "ep009", f"metadata.{KEY}")
    line = exc.one_line()
    assert "\n" not in line and "oliver/ep001" in line and KEY in line
    # nothing written: no file, no folder for the new show, nothing in the index
    assert snapshot(store.root) == before
    assert not Path(store.root, "shows", "other").exists()
    assert [e.key for e in store.list()] == ["oliver/ep001"]
    assert store.verify().clean


def test_values_that_differ_and_missing_values_are_no_duplicates(store: Store) -> None:
    store.create("s", "a", metadata=ident("x"))
    store.create("s", "b", metadata=ident("y"))
    store.create("s", "c", metadata={"topic": "no identifier"})
    store.create("s", "d", metadata={"topic": "no identifier either"})
    store.create("s", "e", metadata=ident(None))
    store.create("s", "f", metadata=ident(None))
    store.create("s", "g")
    assert claims(store) == [(KEY, "s", "a"), (KEY, "s", "b")]
    assert store.verify().clean


@pytest.mark.parametrize(("first", "second", "duplicate"), [
    (1, 1.0, True),                                   # a number is its value
    (2**53, float(2**53), True),
    (0, -0.0, True),
    (1.5, 1.5, True),
    (True, 1, False),                                 # a boolean is not a number
    ("1", 1, False),                                  # text is not a number
    ("A", "a", False),                                # text compares exactly: case counts
    ("a", "a ", False),
    ("caf\u00e9", "cafe\u0301", False),                  # no Unicode normalisation: as written
    ({"a": 1, "b": [1, 2]}, {"b": [1.0, 2], "a": 1}, True),   # mappings by content, key order aside
    ([1, 2], [2, 1], False),                          # lists in order
    ("", "", True),                                   # empty text is a value (only null is none)
])
def test_values_compare_as_json(store: Store, first: Any, second: Any, duplicate: bool) -> None:
    store.create("s", "a", metadata=ident(first))
    if duplicate:
        with pytest.raises(DuplicateError):
            store.create("s", "b", metadata=ident(second))
    else:
        assert store.create("s", "b", metadata=ident(second)).metadata[KEY] == second


def test_update_refuses_a_duplicate_and_keeps_its_own_value(store: Store) -> None:
    store.create("s", "a", metadata=ident("x"))
    b = store.create("s", "b", metadata=ident("y"))
    before = snapshot(store.root)
    with pytest.raises(DuplicateError, match="s/a"):
        store.update("s", "b", metadata=ident("x"))
    assert snapshot(store.root) == before
    # its own value again (another field changes): no conflict with itself
    assert store.update("s", "b", metadata=ident("y", topic="t")).version == b.version + 1
    # giving a value up frees it
    store.update("s", "a", metadata=ident("z"))
    assert store.update("s", "b", metadata=ident("x")).metadata[KEY] == "x"
    assert claims(store) == [(KEY, "s", "a"), (KEY, "s", "b")]
    assert store.verify().clean


def test_other_writes_are_not_refused_for_a_duplicate_already_on_disk(tmp_path: Path) -> None:
    """A store before the ledger, where a hand edit is absorbed by the next write."""
    store = Store.init(tmp_path / "old", unique=[KEY], ledger=False)
    store.create("s", "a", metadata=ident("x"))
    store.create("s", "b", metadata=ident("y"))
    edit(store, "s", "b", f"{KEY}: y", f"{KEY}: x")
    store.rebuild_index()  # indexes the files as they are, duplicate included
    # writes that do not claim a new value go on; only the value is a problem, and verify says so
    store.advance("s", "b", "downloading", cost=0.5)
    store.update("s", "b", title="renamed")
    problems = store.verify().problems
    assert [p.kind for p in problems] == ["duplicate"]


def test_a_write_over_a_pending_edit_that_takes_a_held_value_is_refused(store: Store) -> None:
    """In a ledger store the next write adopts a pending hand edit first: one that brings in a
    value another episode holds is refused (file and line), and the write with it."""
    store.create("s", "a", metadata=ident("x"))
    store.create("s", "b", metadata=ident("y"))
    path = edit(store, "s", "b", f"{KEY}: y", f"{KEY}: x")
    store.rebuild_index()
    before = snapshot(store.root)
    with pytest.raises(DuplicateError, match=f"{path}:\\d+: metadata {KEY}"):
        store.advance("s", "b", "downloading", cost=0.5)
    assert snapshot(store.root) == before
    assert store.get("s", "b").metadata[KEY] == "y"  # the committed version
    store.revert("s", "b")
    assert store.advance("s", "b", "downloading").version == 3
    assert store.verify().clean


def test_advance_with_metadata_refuses_a_duplicate_and_does_not_move(store: Store) -> None:
    store.create("s", "a", metadata=ident("x"))
    store.create("s", "b")
    before = snapshot(store.root)
    with pytest.raises(DuplicateError, match="s/a"):
        store.advance("s", "b", "downloading", metadata=ident("x"))
    assert snapshot(store.root) == before
    assert store.get("s", "b").stage == "discovered"


def test_import_rejects_a_duplicate_and_imports_the_rest(store: Store, tmp_path: Path) -> None:
    legacy = tmp_path / "legacy"
    shutil.copytree(LEGACY, legacy)
    files = sorted(legacy.rglob("*.yaml"))
    clash = files[2].read_text().replace(f"{KEY}: hy0_hooting_yard_2004-04-28", f"{KEY}: hy0_hooting_yard_2004-04-14")
    files[2].write_text(clash)
    store.create("elsewhere", "already", metadata=ident("hy0_hooting_yard_2004-04-21"))
    report = store.import_legacy(legacy, "hy")
    assert [r["episode"] for r in report.imported] == ["hy/hy0_hooting_yard_2004-04-14"]
    reasons = {Path(r["file"]).name: r["reason"] for r in report.rejected}
    assert sorted(reasons) == [files[1].name, files[2].name]
    assert "elsewhere/already" in reasons[files[1].name]
    assert "hy/hy0_hooting_yard_2004-04-14" in reasons[files[2].name]
    assert not Path(store.root, "shows", "hy", "episodes", "hy0_hooting_yard_2004-04-28").exists()
    assert store.verify().clean


def test_sync_refuses_a_hand_edit_that_takes_another_episodes_value(store: Store) -> None:
    store.create("s", "a", metadata=ident("x"))
    b = store.create("s", "b", metadata=ident("y"))
    path = edit(store, "s", "b", f"{KEY}: y", f"{KEY}: x  # copied from a")
    edited = path.read_bytes()
    report = store.sync()
    assert [(p.episode, p.field) for p in report.rejected] == [("s/b", f"metadata.{KEY}")]
    message = report.rejected[0].message
    assert message.startswith(f"{path}:") and "s/a" in message and report.rejected[0].line is not None
    assert path.read_bytes() == edited  # the file is left as the person wrote it
    assert store.list(show="s")[1].metadata[KEY] == "y"  # the index keeps the last good state
    assert [e.version for e in store.events("s", "b")] == [b.version]
    # an edit to a free value is adopted
    edit(store, "s", "b", f"{KEY}: x  # copied from a", f"{KEY}: w")
    assert [c["episode"] for c in store.sync().changed] == ["s/b"]
    assert store.verify().clean


def test_sync_refuses_a_copied_in_episode_folder_with_a_taken_value(store: Store) -> None:
    store.create("s", "a", metadata=ident("x"))
    folder = Path(store.root, "shows", "s", "episodes")
    shutil.copytree(folder / "a", folder / "copy")
    edit(store, "s", "copy", "episode_id: a", "episode_id: copy")
    report = store.sync()
    assert [p.episode for p in report.rejected] == ["s/copy"] and "s/a" in report.rejected[0].message
    assert [e.key for e in store.list()] == ["s/a"]


def test_two_unsynced_hand_edits_to_one_value_the_first_adopted_wins(store: Store) -> None:
    store.create("s", "a", metadata=ident("p"))
    store.create("s", "b", metadata=ident("q"))
    edit(store, "s", "a", f"{KEY}: p", f"{KEY}: x")
    edit(store, "s", "b", f"{KEY}: q", f"{KEY}: x")
    report = store.sync()
    adopted = [c["episode"] for c in report.changed]
    assert len(adopted) == 1 and len(report.rejected) == 1  # in the order sync met them
    assert {adopted[0], report.rejected[0].episode} == {"s/a", "s/b"} and adopted[0] in report.rejected[0].message
    # the refused edit stays on disk as the person wrote it: verify names it, and the duplicate
    # (the index holds the committed version, as every path does: no drift)
    assert sorted(p.kind for p in store.verify().problems) == ["duplicate", "edited"]


def test_a_stale_index_row_never_refuses_a_write(store: Store) -> None:
    store.create("s", "a", metadata=ident("x"))
    # the index still says s/a holds x; its file (the truth) no longer does
    edit(store, "s", "a", f"{KEY}: x", f"{KEY}: moved-on")
    assert store.create("s", "b", metadata=ident("x")).metadata[KEY] == "x"
    # the hand edit is still adopted afterwards (its new value is free)
    assert [c["episode"] for c in store.sync().changed] == ["s/a"]
    assert store.verify().clean


def test_a_deleted_episodes_value_is_free_again(store: Store) -> None:
    store.create("s", "a", metadata=ident("x"))
    store.delete("s", "a")
    assert claims(store) == []
    store.create("s", "b", metadata=ident("x"))
    shutil.rmtree(Path(store.root, "shows", "s", "episodes", "b"))  # deleted by hand, not synced yet
    store.create("s", "c", metadata=ident("x"))


def test_verify_reports_duplicates_on_disk(store: Store) -> None:
    store.create("s", "a", metadata=ident("x"))
    store.create("t", "b", metadata=ident("y"))
    edit(store, "t", "b", f"{KEY}: y", f"{KEY}: x")
    store.rebuild_index()
    problems = [p for p in store.verify().problems if p.kind != "edited"]  # t/b is also a pending hand edit
    assert [(p.kind, p.episode, p.field) for p in problems] == [("duplicate", "t/b", f"metadata.{KEY}")]
    assert "s/a, t/b" in problems[0].message
    out = CliRunner().invoke(main, ["--root", store.root, "verify"])
    assert out.exit_code == 1 and "s/a, t/b" in out.output


def test_verify_reports_an_index_whose_unique_values_drifted(store: Store) -> None:
    store.create("s", "a", metadata=ident("x"))
    conn = sqlite3.connect(os.path.join(store.root, ".statekit", "index.db"))
    with conn:
        conn.execute("DELETE FROM unique_values")
    conn.close()
    problems = store.verify().problems
    assert [p.kind for p in problems] == ["index"] and "unique values" in problems[0].message
    store.repair()
    assert store.verify().clean and claims(store) == [(KEY, "s", "a")]


def test_the_index_keeps_exactly_what_a_rebuild_derives(store: Store) -> None:
    store.create("s", "a", metadata=ident("x"))
    store.create("s", "b", metadata=ident(2))
    store.update("s", "b", metadata=ident(3, more=True))
    store.advance("s", "a", "downloading", metadata={"other": 1})
    store.create("t", "c", metadata=ident("x"))
    edit(store, "t", "c", f"{KEY}: x", f"{KEY}: hand")
    store.sync()
    store.delete("s", "b")
    kept = claims(store)
    assert kept == [(KEY, "t", "c")]
    store.rebuild_index()
    assert claims(store) == kept


# --- the configuration ----------------------------------------------------------------------


@pytest.mark.parametrize("unique", [["a.b"], ["has space"], [""], ["x", "x"], "archive_identifier", [7]])
def test_bad_unique_keys_are_refused_with_one_line(tmp_path: Path, unique: Any) -> None:
    with pytest.raises(ValidationError) as caught:
        Store.init(tmp_path / "s", unique=unique)
    assert "unique" in caught.value.one_line() and "\n" not in caught.value.one_line()
    assert not (tmp_path / "s").exists()


def test_unique_is_written_to_and_read_from_statekit_yaml(tmp_path: Path) -> None:
    Store.init(tmp_path / "s", unique=[KEY, "isbn"])
    assert "unique: [archive_identifier, isbn]" in (tmp_path / "s" / "statekit.yaml").read_text()
    assert Store.open(tmp_path / "s").config.unique == [KEY, "isbn"]


def test_a_hand_edited_unique_list_is_checked(tmp_path: Path) -> None:
    Store.init(tmp_path / "s")
    config = tmp_path / "s" / "statekit.yaml"
    config.write_text(config.read_text().replace("unique: []", "unique: [bad key]"))
    with pytest.raises(ValidationError, match=r"statekit.yaml:\d+: unique"):
        Store.open(tmp_path / "s")


def test_adding_a_unique_key_later_indexes_the_values_already_there(tmp_path: Path) -> None:
    plain = Store.init(tmp_path / "s")
    plain.create("s", "a", metadata=ident("x"))
    plain.create("s", "b", metadata=ident("x"))  # no unique key yet: allowed
    plain.create("s", "c", metadata=ident("y"))
    plain.close()
    config = tmp_path / "s" / "statekit.yaml"
    config.write_text(config.read_text().replace("unique: []", f"unique: [{KEY}]"))
    store = Store.open(tmp_path / "s")
    assert claims(store) == [(KEY, "s", "a"), (KEY, "s", "b"), (KEY, "s", "c")]
    with pytest.raises(DuplicateError, match="s/c"):
        store.create("s", "d", metadata=ident("y"))
    assert [p.kind for p in store.verify().problems] == ["duplicate"]  # a and b, from before
    store.close()
    config.write_text(config.read_text().replace(f"unique: [{KEY}]", "unique: []"))
    again = Store.open(tmp_path / "s")
    assert claims(again) == []
    again.create("s", "d", metadata=ident("y"))
    assert again.verify().clean


def test_an_index_from_before_unique_keys_is_upgraded_and_filled(store: Store) -> None:
    from alembic import command
    from alembic.config import Config

    from statekit.index.connect import migrations_dir

    store.create("s", "a", metadata=ident("x"))
    expected = index_rows(store)
    config = Config()
    config.set_main_option("script_location", migrations_dir())
    with store.index.engine.connect() as conn, conn.begin():
        config.attributes["connection"] = conn
        command.downgrade(config, "0002")
    store.close()
    reopened = Store.open(store.root)
    assert index_rows(reopened) == expected
    assert claims(reopened) == [(KEY, "s", "a")]
    with pytest.raises(DuplicateError):
        reopened.create("s", "b", metadata=ident("x"))


# --- advance with fields: one write -------------------------------------------------------


def test_advance_with_metadata_and_files_is_one_event(tmp_path: Path) -> None:
    store = Store.init(tmp_path / "s")
    ep = store.create("s", "e", metadata={"a": 1}, files={"audio": "a.mp3"})
    moved = store.advance("s", "e", "downloading", message="go", cost=0.25, metadata={"a": 1, "b": [2]},
                          files={"audio": "b.mp3"}, expected_version=ep.version)
    assert moved.version == ep.version + 1
    assert (moved.stage, moved.metadata, moved.files) == ("downloading", {"a": 1, "b": [2]}, {"audio": "b.mp3"})
    assert moved.attempts["downloading"] == 1 and moved.costs == {"discovered": 0.25}
    events = store.events("s", "e")
    assert len(events) == 2
    last = events[-1]
    assert (last.kind, last.from_stage, last.to_stage, last.fields, last.cost, last.message) == (
        "advance", "discovered", "downloading", ["metadata", "files"], 0.25, "go")
    assert store.get("s", "e") == moved and store.verify().clean
    # a field given unchanged is not named
    again = store.advance("s", "e", "downloaded", metadata={"a": 1, "b": [2]}, files={"audio": "c.mp3"})
    assert store.events("s", "e")[-1].fields == ["files"] and again.version == moved.version + 1
    # nothing given: a plain move, as before
    store.advance("s", "e", "converting")
    assert store.events("s", "e")[-1].fields is None


def test_advance_with_bad_fields_or_an_illegal_move_writes_nothing(tmp_path: Path) -> None:
    store = Store.init(tmp_path / "s")
    store.create("s", "e")
    before = snapshot(store.root)
    with pytest.raises(ValidationError, match="metadata"):
        store.advance("s", "e", "downloading", metadata={"x": float("nan")})
    with pytest.raises(ValidationError, match="files"):
        store.advance("s", "e", "downloading", files={"audio": 3})  # type: ignore[dict-item]
    with pytest.raises(ValidationError, match="metadata"):
        store.advance("s", "e", "downloading", metadata=["not", "a", "mapping"])  # type: ignore[arg-type]
    with pytest.raises(InvalidTransitionError):
        store.advance("s", "e", "published", metadata={"x": 1})
    assert snapshot(store.root) == before


# --- episode_path ---------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["yaml", "json"])
def test_episode_path_is_the_episodes_file(tmp_path: Path, fmt: str) -> None:
    store = Store.init(tmp_path / "s", format=fmt)
    store.create("oliver", "ep001")
    path = store.episode_path("oliver", "ep001")
    assert path == os.path.join(store.root, "shows", "oliver", "episodes", "ep001", f"episode.{fmt}")
    assert str(episode_file(store, "oliver", "ep001")) == path and os.path.isfile(path)
    with pytest.raises(EpisodeNotFoundError):
        store.episode_path("oliver", "ep002")
    with pytest.raises(ShowNotFoundError):
        store.episode_path("nobody", "ep001")
    for bad in ("../oliver", "Oliver", "", "a/b"):
        with pytest.raises(InvalidIdError):
            store.episode_path(bad, "ep001")
        with pytest.raises(InvalidIdError):
            store.episode_path("oliver", bad)
    store.delete("oliver", "ep001")
    with pytest.raises(EpisodeNotFoundError):
        store.episode_path("oliver", "ep001")


# --- the command line ---------------------------------------------------------------------


def cli(*args: str, code: int = 0) -> str:
    result = CliRunner().invoke(main, list(args))
    assert result.exit_code == code, (args, result.output)
    assert "Traceback" not in result.output
    return result.output


def one_line_error(*args: str) -> str:
    lines = [line for line in cli(*args, code=2).splitlines() if line.strip()]
    assert len(lines) == 1, lines
    return lines[0]


def test_cli_init_create_advance_with_unique_keys(tmp_path: Path) -> None:
    root = str(tmp_path / "s")
    assert "unique archive_identifier" in cli("init", root, "--unique", KEY)
    cli("--root", root, "create", "s/a", "--set-meta", f"{KEY}=x", "--set-meta", "year:=2004")
    store = Store.open(root)
    assert store.get("s", "a").metadata == {KEY: "x", "year": 2004}
    line = one_line_error("--root", root, "create", "t/b", "--set-meta", f"{KEY}=x")
    assert "s/a" in line and KEY in line
    assert not Path(root, "shows", "t").exists()
    cli("--root", root, "create", "s/b", "--set-meta", f"{KEY}=y")
    line = one_line_error("--root", root, "advance", "s/b", "downloading", "--set-meta", f"{KEY}=x")
    assert "s/a" in line and store.get("s", "b").stage == "discovered"
    # a move plus a key: the other keys kept, one event
    out = cli("--root", root, "advance", "s/a", "downloading", "--set-meta", "bytes:=41104384")
    assert "discovered -> downloading (version 2)" in out
    assert store.get("s", "a").metadata == {KEY: "x", "year": 2004, "bytes": 41104384}
    assert store.events("s", "a")[-1].fields == ["metadata"]
    assert "discovered -> downloading, changed metadata" in cli("--root", root, "show", "s/a")
    assert store.verify().clean


@pytest.mark.parametrize("bad", ["novalue", "=x", ":=1", "year:=20 04", "year:={"])
def test_cli_set_meta_refuses_bad_syntax_with_one_line(tmp_path: Path, bad: str) -> None:
    root = str(tmp_path / "s")
    cli("init", root)
    line = one_line_error("--root", root, "create", "s/a", "--set-meta", bad)
    assert "set-meta" in line
    assert not Path(root, "shows", "s").exists()


def test_cli_init_refuses_a_bad_unique_key(tmp_path: Path) -> None:
    line = one_line_error("init", str(tmp_path / "s"), "--unique", "a.b")
    assert "a.b" in line
    assert not (tmp_path / "s" / "statekit.yaml").exists()


def test_cli_import_and_sync_report_duplicates_and_exit_1(tmp_path: Path) -> None:
    root = str(tmp_path / "s")
    cli("init", root, "--unique", KEY)
    cli("--root", root, "create", "old/one", "--set-meta", f"{KEY}=hy0_hooting_yard_2004-04-21")
    out = cli("--root", root, "import", str(LEGACY), "--show", "hy", code=1)
    assert "imported 2" in out and "rejected 1" in out and "old/one" in out
    store = Store.open(root)
    edit(store, "old", "one", f"{KEY}: hy0_hooting_yard_2004-04-21", f"{KEY}: hy0_hooting_yard_2004-04-14")
    out = cli("--root", root, "sync", code=1)
    assert "rejected" in out and "hy/hy0_hooting_yard_2004-04-14" in out


# --- real processes racing for the same values -----------------------------------------------


def race(root: str, op: str, shows: list[str], n: int) -> list[dict[str, str]]:
    start = time.time() + 3.0  # every process is up and has opened the store by then
    procs = [subprocess.Popen([sys.executable, WORKER, "claim", root, show, op, str(n), str(start)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for show in shows]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
        results.append(json.loads(out))
    return results


def check_one_winner_each(store: Store, results: list[dict[str, str]], shows: list[str], n: int) -> None:
    for i in range(n):
        outcomes = [r[str(i)] for r in results]
        assert sorted(outcomes) == ["duplicate"] * (len(shows) - 1) + ["won"], (i, outcomes)
        winner = shows[outcomes.index("won")]
        holders = [e.key for e in store.list() if e.metadata.get(KEY) == f"v{i}"]
        assert holders == [f"{winner}/e{i}"]
    report = store.verify()
    assert report.clean, [p.message for p in report.problems]


@pytest.mark.slow
def test_processes_creating_episodes_with_the_same_values_one_wins_each(tmp_path: Path) -> None:
    store = Store.init(tmp_path / "s", unique=[KEY])
    shows, n = [f"p{k}" for k in range(5)], 10
    results = race(store.root, "create", shows, n)
    check_one_winner_each(store, results, shows, n)
    # nothing half-written: a loser left no episode folder, and every episode has its one event
    on_disk = sorted(f"{show}/{ep}" for show in shows if Path(store.root, "shows", show).exists()
                     for ep in os.listdir(Path(store.root, "shows", show, "episodes")))
    assert on_disk == sorted(e.key for e in store.list()) and len(on_disk) == n
    assert all(len(store.events(e.show_id, e.episode_id)) == 1 for e in store.list())


@pytest.mark.slow
@pytest.mark.parametrize("op", ["update", "advance"])
def test_processes_updating_episodes_to_the_same_values_one_wins_each(tmp_path: Path, op: str) -> None:
    store = Store.init(tmp_path / "s", unique=[KEY])
    shows, n = [f"p{k}" for k in range(4)], 8
    for show in shows:
        for i in range(n):
            store.create(show, f"e{i}")
    results = race(store.root, op, shows, n)
    check_one_winner_each(store, results, shows, n)
    for e in store.list():  # a loser's episode is as it was: version 1, never moved
        won = e.metadata.get(KEY) is not None
        assert e.version == (2 if won else 1)
        assert e.stage == ("downloading" if won and op == "advance" else "discovered")
