"""The ledger (issue 14): a hash-chained log whose patches rebuild every version, and
one rule for committed vs pending that every path applies."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from statekit import Store, UnsafePathError, ValidationError
from statekit.cli import main
from statekit.eventlog import line_hash

from .conftest import episode_file, snapshot

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store.init(tmp_path / "store", ledger=True)


@pytest.fixture(params=["yaml", "json"])
def any_store(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    return Store.init(tmp_path / "store", format=request.param, ledger=True)


def log_of(store: Store, show: str = "s", ep: str = "e") -> Path:
    return Path(store.root, "shows", show, "episodes", ep, "events.jsonl")


def lines_of(store: Store, show: str = "s", ep: str = "e") -> list[dict[str, object]]:
    return [json.loads(line) for line in log_of(store, show, ep).read_text().splitlines()]


def busy(store: Store) -> None:
    store.create("s", "e", title="first")
    store.advance("s", "e", "downloading", cost=0.5, metadata={"k": [1, 2]})
    store.update("s", "e", title="second", metadata={"k": [1, 2, 3]})
    with store.run("s", "e", "downloading") as run:
        run.checkpoint({"part": 1}, cost=0.25)
    store.update("s", "e", metadata={})


def test_every_line_is_chained_and_the_log_rebuilds_every_version(any_store: Store) -> None:
    busy(any_store)
    raw = log_of(any_store).read_bytes().splitlines(keepends=True)
    lines = [json.loads(r) for r in raw]
    assert "doc" in lines[0] and "prev" not in lines[0] and "patch" not in lines[0]
    for before, line in zip(raw, lines[1:]):
        assert line["prev"] == line_hash(before) and "patch" in line and "doc" not in line
    assert max(len(r) for r in raw[1:]) < 1500  # a patch, not the whole document
    history = any_store.history("s", "e")
    assert [h.version for h in history] == list(range(1, len(lines) + 1))
    assert history[-1] == any_store.get("s", "e")
    assert [h.title for h in history][:3] == ["first", "first", "second"]
    assert any_store.version("s", "e", 3).metadata == {"k": [1, 2, 3]}
    assert any_store.verify().clean


def test_a_changed_older_event_is_caught_by_verify(store: Store) -> None:
    busy(store)
    log = log_of(store)
    text = log.read_text().splitlines(keepends=True)
    text[1] = text[1].replace('"cost":0.5', '"cost":50.0')  # a cheaper past, after the fact
    log.write_text("".join(text))
    problems = store.verify().problems
    assert any(p.kind == "chain" and ":3:" in p.message for p in problems), problems
    store.rebuild_index()
    assert any(p.kind == "chain" for p in store.verify().problems)


def forge(lines: list[dict[str, object]]) -> str:
    """The lines with every prev recomputed: a forger who knows the chain rule."""
    out = []
    for line in lines:
        if out:
            line["prev"] = hashlib.sha256(out[-1].encode()).hexdigest()
        out.append(json.dumps(line, separators=(",", ":")))
    return "".join(x + "\n" for x in out)


def test_a_forged_log_whose_moves_contradict_each_other_is_caught(store: Store) -> None:
    busy(store)
    lines = lines_of(store)
    lines[1]["from_stage"] = "converted"  # a move that starts where no move ended
    log_of(store).write_text(forge(lines))
    messages = [p.message for p in store.verify().problems]
    assert any("a move from 'converted', but the episode was at 'discovered'" in m for m in messages), messages


def test_a_forged_patch_is_caught_by_replaying_the_log(store: Store) -> None:
    busy(store)
    lines = lines_of(store)
    lines[2]["patch"] = [{"op": "replace", "path": "/title", "value": "forged"}]
    log_of(store).write_text(forge(lines))
    assert any("replaying the log does not give" in p.message for p in store.verify().problems)


def test_verify_compares_the_index_events_with_the_log(store: Store) -> None:
    busy(store)
    store.index.write(event_rows=[{**row, "cost": 99.0} if row["version"] == 2 else row for row in [
        __import__("statekit.index.rows", fromlist=["event_row"]).event_row(line) for line in lines_of(store)]])
    assert any(p.kind == "index" and "events differ" in p.message for p in store.verify().problems)


# --- one rule: committed vs pending ------------------------------------------------------


def test_a_hand_edit_then_a_write_is_adopted_first_with_its_own_event(store: Store) -> None:
    store.create("s", "e")
    path = episode_file(store, "s", "e")
    path.write_text(path.read_text().replace("title: ''", "title: by hand"))
    assert store.get("s", "e").pending["fields"] == ["title"]  # type: ignore[index]
    ep = store.advance("s", "e", "downloading")
    events = store.events("s", "e")
    assert [e.kind for e in events] == ["create", "external_edit", "advance"]
    assert events[1].fields == ["title"] and ep.title == "by hand"
    assert store.verify().clean


def test_an_illegal_hand_edited_stage_is_never_committed_by_any_path(store: Store) -> None:
    store.create("s", "e")
    store.create("s", "other")
    path = episode_file(store, "s", "e")
    path.write_text(path.read_text().replace("stage: discovered", "stage: published"))
    synced = store.sync()
    assert [p.kind for p in synced.rejected] == ["illegal-move"]
    with pytest.raises(ValidationError, match="stage: the hand edit moves 'discovered' -> 'published'") as info:
        store.update("s", "e", title="x")
    assert info.value.line is not None and str(path) in str(info.value)
    assert store.get("s", "e").stage == "discovered"
    report = store.rebuild_index()
    assert report.pending == ["s/e"]
    assert store.counts()["published"] == 0 and store.counts()["discovered"] == 2
    assert store.list(stage="discovered")[0].episode_id == "e"
    assert store.status()[0]["done"] == 0
    result = CliRunner().invoke(main, ["--root", store.root, "show", "s/e"])
    assert result.exit_code == 0 and "pending hand edit" in result.output and "published" in result.output


def test_repair_puts_back_the_last_committed_version_from_the_log(store: Store) -> None:
    store.create("s", "e")
    for title in ("v2", "v3", "v4", "v5", "v6", "v7"):
        store.update("s", "e", title=title)
    path = episode_file(store, "s", "e")
    path.write_text("title: [unclosed\n")  # damaged at version 7
    report = store.repair()
    ep = store.get("s", "e")
    assert ep.title == "v7" and ep.version == 8 and ep.pending is None  # not backup 6: nothing lost
    assert store.events("s", "e")[-1].kind == "repair"
    assert any("put back the committed version" in a for a in report.actions)
    trash = Path(store.root, ".statekit", "trash", "s")
    assert any(p.read_text() == "title: [unclosed\n" for p in trash.iterdir())  # the person's file, kept
    assert store.verify().clean


def test_repair_puts_back_a_refused_edit_too(store: Store) -> None:
    store.create("s", "e")
    path = episode_file(store, "s", "e")
    path.write_text(path.read_text().replace("stage: discovered", "stage: published"))
    store.repair()
    assert store.get("s", "e").stage == "discovered" and store.get("s", "e").pending is None
    assert store.verify().clean


def test_revert_throws_a_pending_edit_away(store: Store) -> None:
    store.create("s", "e", title="kept")
    path = episode_file(store, "s", "e")
    path.write_text("# a note\n" + path.read_text().replace("title: kept", "title: unwanted"))
    runner = CliRunner()
    result = runner.invoke(main, ["--root", store.root, "diff", "s/e"])
    assert result.exit_code == 0 and "unwanted" in result.output and "kept" in result.output
    result = runner.invoke(main, ["--root", store.root, "revert", "s/e"])
    assert result.exit_code == 0, result.output
    ep = store.get("s", "e")
    assert ep.title == "kept" and ep.version == 2 and ep.pending is None
    assert store.events("s", "e")[-1].kind == "revert"
    result = runner.invoke(main, ["--root", store.root, "revert", "s/e"])
    assert result.exit_code == 2 and "no pending edit" in result.output
    assert store.verify().clean


def test_show_at_a_version_and_diff_between_versions(store: Store) -> None:
    busy(store)
    runner = CliRunner()
    result = runner.invoke(main, ["--root", store.root, "show", "s/e", "--at", "2", "--json"])
    assert result.exit_code == 0, result.output
    shown = json.loads(result.output)
    assert shown["episode"]["version"] == 2 and shown["episode"]["stage"] == "downloading"
    assert [e["version"] for e in shown["events"]] == [1, 2]
    result = runner.invoke(main, ["--root", store.root, "diff", "s/e", "2", "3", "--json"])
    changes = {c["field"]: (c["before"], c["after"]) for c in json.loads(result.output)}
    assert changes["title"] == ("first", "second") and changes["metadata"] == ({"k": [1, 2]}, {"k": [1, 2, 3]})
    result = runner.invoke(main, ["--root", store.root, "show", "s/e", "--at", "99"])
    assert result.exit_code == 2 and "no committed version 99" in result.output


def test_a_comment_only_edit_is_kept_by_the_next_write_without_an_event(store: Store) -> None:
    store.create("s", "e")
    path = episode_file(store, "s", "e")
    path.write_text("# keep me\n" + path.read_text())
    assert store.get("s", "e").pending["fields"] == []  # type: ignore[index]
    store.advance("s", "e", "downloading")
    assert path.read_text().startswith("# keep me\n")
    assert [e.kind for e in store.events("s", "e")] == ["create", "advance"]
    assert store.verify().clean


def test_an_unreadable_edit_reads_as_the_committed_version_and_refuses_writes(store: Store) -> None:
    store.create("s", "e", title="kept")
    path = episode_file(store, "s", "e")
    path.write_text(path.read_text().replace("title:", "titel:"))
    committed = store.get("s", "e")
    assert committed.title == "kept" and committed.pending["fields"] is None  # type: ignore[index]
    assert "titel" in committed.pending["error"]  # type: ignore[index]
    before = snapshot(store.root)
    with pytest.raises(ValidationError, match="titel") as info:
        store.update("s", "e", title="x")
    assert "statekit revert s/e" in (info.value.hint or "") and snapshot(store.root) == before


def test_a_duplicate_in_a_pending_edit_refuses_the_next_write_until_reverted(tmp_path: Path) -> None:
    from statekit import DuplicateError

    unique = Store.init(tmp_path / "u", ledger=True, unique=["archive_identifier"])
    unique.create("s", "a", metadata={"archive_identifier": "x"})
    unique.create("s", "b", metadata={"archive_identifier": "y"})
    path = episode_file(unique, "s", "b")
    path.write_text(path.read_text().replace("archive_identifier: y", "archive_identifier: x"))
    with pytest.raises(DuplicateError, match=r"episode\.yaml:\d+: metadata archive_identifier"):
        unique.advance("s", "b", "downloading")  # the edit is adopted first, and refused
    unique.revert("s", "b")
    assert unique.advance("s", "b", "downloading").metadata == {"archive_identifier": "y"}
    assert unique.verify().clean


def test_repair_puts_back_version_1_from_the_log_when_no_backup_exists(store: Store) -> None:
    store.create("s", "e", title="one")
    episode_file(store, "s", "e").write_text("stage: {{{")  # version 1 was never overwritten: no backup
    report = store.repair()
    assert report.problems == [] and store.get("s", "e").title == "one" and store.verify().clean


# --- hard links ---------------------------------------------------------------------------


def test_a_hard_linked_log_is_reported_and_never_appended_through(store: Store, tmp_path: Path) -> None:
    store.create("s", "e")
    other = tmp_path / "elsewhere.jsonl"
    os.link(log_of(store), other)
    before = other.read_bytes()
    with pytest.raises(UnsafePathError, match="hard links"):
        store.advance("s", "e", "downloading")
    assert other.read_bytes() == before and store.get("s", "e").version == 1
    assert any(p.kind == "hardlink" for p in store.verify().problems)


# --- old stores -------------------------------------------------------------------------------


OLD_MAIN = "219cb7c"  # main before the house and the ledger


def old_statekit(tmp_path: Path) -> Path:
    """statekit as today's main (before the ledger) shipped it, from git."""
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("needs the repository's git history (a clone) to unpack the release before the ledger")
    found = subprocess.run(["git", "-C", str(REPO), "cat-file", "-t", OLD_MAIN], capture_output=True, text=True)
    if found.returncode != 0:
        pytest.skip(f"commit {OLD_MAIN} is not in this clone's history")
    target = tmp_path / "old"
    target.mkdir()
    archive = subprocess.run(["git", "-C", str(REPO), "archive", OLD_MAIN, "statekit", "migrations"],
                             capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(target)], input=archive, check=True)
    (target / "statekit" / "_migrations").symlink_to(target / "migrations")
    return target


def run_old(old: Path, code: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(old)}
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120,
                          cwd=old)  # not the repository: its statekit would come first on sys.path


def test_a_store_written_before_the_ledger_keeps_working_and_migrate_seals_it(tmp_path: Path) -> None:
    old = old_statekit(tmp_path)
    root = tmp_path / "store"
    made = run_old(old, f"""
from statekit import Store
s = Store.init({str(root)!r})
s.create("s", "e", title="old")
s.advance("s", "e", "downloading", cost=1.0)
s.create("s", "f")
""")
    assert made.returncode == 0, made.stderr
    store = Store.open(root)
    assert store.config.schema_version == 4 and store.get("s", "e").title == "old"
    store.update("s", "e", title="written by the new release")  # an old store: events as before, no chain
    assert "prev" not in lines_of(store)[-1] and store.verify().clean
    dry = store.migrate(dry_run=True, ledger=True)
    assert sorted(dry.sealed) == ["s/e", "s/f"] and dry.store_format == (4, 5)
    before_seal = log_of(store).read_bytes()
    store.migrate(ledger=True)
    seal = lines_of(store)[-1]
    assert seal["kind"] == "seal" and seal["log_sha256"] == hashlib.sha256(before_seal).hexdigest()
    assert seal["prev"] == line_hash(before_seal.splitlines(keepends=True)[-1])
    assert store.verify().clean
    reopened = Store.open(root)
    reopened.advance("s", "e", "downloaded")
    assert "patch" in lines_of(reopened)[-1] and reopened.history("s", "e")[0].version == 4
    assert reopened.verify().clean
    # the release before the ledger refuses the store now: it cannot write an unchained event into it
    refused = run_old(old, f"from statekit import Store\nStore.open({str(root)!r}).advance('s', 'e', 'converting')")
    assert refused.returncode != 0 and "SchemaVersionError" in refused.stderr
    assert Store.open(root).get("s", "e").stage == "downloaded"


def test_a_new_store_is_refused_by_the_release_before_the_ledger(tmp_path: Path) -> None:
    old = old_statekit(tmp_path)
    root = tmp_path / "store"
    Store.init(root, ledger=True).create("s", "e")
    files = snapshot(root)
    refused = run_old(old, f"from statekit import Store\nStore.open({str(root)!r}).advance('s', 'e', 'downloading')")
    assert refused.returncode != 0 and "newer than this statekit supports" in refused.stderr
    assert snapshot(root) == files


def test_a_changed_schema_version_on_the_last_line_is_reported(store: Store) -> None:
    """No later line names the last line's hash yet, so the chain alone cannot see a change
    there; every line of a chained log must be a chained event (found by the corpus: the
    last line's schema_version set to 0 still read)."""
    busy(store)
    log = log_of(store)
    lines = log.read_text().splitlines()
    lines[-1] = lines[-1].replace('"schema_version":2', '"schema_version":0')
    log.write_text("\n".join(lines) + "\n")
    problems = [p for p in store.verify().problems if p.kind == "chain"]
    assert problems and f"{log}:{len(lines)}: schema_version 0 in a chained log" in problems[0].message
