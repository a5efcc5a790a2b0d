"""The store's contract: layout, write path, events, checkpoints, shows."""

from __future__ import annotations

import json
import os
import re
import threading
from datetime import timezone
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from statekit import (
    CorruptFileError,
    EpisodeExistsError,
    EpisodeNotFoundError,
    LockTimeoutError,
    ShowNotFoundError,
    Store,
    StoreExistsError,
    StoreNotFoundError,
    UnknownStageError,
    UnsafePathError,
    ValidationError,
    VersionConflictError,
)
from statekit.files import DISK
from statekit.locks import hold_lock

from .conftest import episode_file, snapshot


def test_layout_on_disk(any_store: Store) -> None:
    any_store.create("oliver", "ep001", title="Journey to the Stars")
    root = Path(any_store.root)
    fmt = any_store.config.format
    assert (root / "statekit.yaml").is_file()
    assert (root / "shows/oliver/show.yaml").is_file()
    assert (root / f"shows/oliver/episodes/ep001/episode.{fmt}").is_file()
    assert (root / "shows/oliver/episodes/ep001/events.jsonl").is_file()
    assert (root / ".statekit/locks/episodes/oliver/ep001.lock").is_file()
    assert "schema_version" in (root / f"shows/oliver/episodes/ep001/episode.{fmt}").read_text()


def test_init_refuses_an_existing_store_and_open_needs_one(tmp_path: Path) -> None:
    Store.init(tmp_path / "s")
    with pytest.raises(StoreExistsError):
        Store.init(tmp_path / "s")
    with pytest.raises(StoreNotFoundError):
        Store.open(tmp_path / "nothing-here")
    assert Store.open(tmp_path / "s").pipeline.name == "archive"


def test_create_get_advance(any_store: Store) -> None:
    s = any_store
    ep = s.create("oliver", "ep001", title="Journey", metadata={"topic": "rockets"}, files={"notes": "n.txt"})
    assert (ep.stage, ep.version, ep.attempts) == ("discovered", 1, {"discovered": 1})
    assert ep.created_at.tzinfo is not None and ep.created_at.utcoffset() == timezone.utc.utcoffset(None)
    ep = s.advance("oliver", "ep001", "downloading", message="start", cost=0.25, expected_version=1)
    assert (ep.stage, ep.version, ep.message) == ("downloading", 2, "start")
    assert ep.costs == {"discovered": 0.25} and ep.cost_total == 0.25
    ep = s.advance("oliver", "ep001", "downloaded", cost=0.1)
    ep = s.advance("oliver", "ep001", "converting", cost=0.2)
    assert ep.cost_total == pytest.approx(0.55)
    assert ep.attempts["downloading"] == 1 and ep.attempts["converting"] == 1
    assert s.get("oliver", "ep001") == ep
    assert Store.open(s.root).get("oliver", "ep001") == ep  # a fresh process sees the same
    assert ep.updated_at >= ep.created_at and ep.stage_entered_at == ep.updated_at


def test_retries_count_attempts_and_costs_add_up(store: Store) -> None:
    store.create("s", "e")
    for _ in range(3):
        store.advance("s", "e", "downloading")
        store.advance("s", "e", "failed", cost=0.1)
    ep = store.get("s", "e")
    assert ep.attempts["downloading"] == 3 and ep.attempts["failed"] == 3
    assert ep.costs == {"downloading": pytest.approx(0.3)}
    assert ep.cost_total == 0.3  # rounded: no 0.30000000000000004 in files


def test_exactly_one_event_per_write_with_the_new_version(any_store: Store) -> None:
    s = any_store
    s.create("s", "e")
    s.advance("s", "e", "downloading", cost=1.5, message="go")
    s.update("s", "e", title="new")
    s.update("s", "e", title="new")  # no change: no write, no event
    s.save_checkpoint("s", "e", "downloading", {"bytes": 10})
    events = s.events("s", "e")
    assert [(e.version, e.kind) for e in events] == [(1, "create"), (2, "advance"), (3, "update"), (4, "checkpoint")]
    assert events[1].from_stage == "discovered" and events[1].to_stage == "downloading" and events[1].cost == 1.5
    assert events[2].fields == ["title"]
    assert s.get("s", "e").version == 4
    # each event carries the hash of the file it produced; the last one matches the file
    assert events[-1].sha256 == __import__("hashlib").sha256(episode_file(s, "s", "e").read_bytes()).hexdigest()


def test_version_conflict_is_compare_and_set(store: Store) -> None:
    ep = store.create("s", "e")
    store.advance("s", "e", "downloading", expected_version=ep.version)
    before = snapshot(store.root)
    with pytest.raises(VersionConflictError) as info:
        store.advance("s", "e", "failed", expected_version=ep.version)
    assert (info.value.expected, info.value.actual) == (1, 2)
    assert snapshot(store.root) == before


def test_version_is_checked_before_the_stage(store: Store) -> None:
    store.create("s", "e")
    with pytest.raises(VersionConflictError):
        store.advance("s", "e", "published", expected_version=7)


def test_update_replaces_fields_and_validates(store: Store) -> None:
    store.create("s", "e", metadata={"a": 1})
    ep = store.update("s", "e", metadata={"b": [1, 2]}, files={"audio": "x.mp3"}, title="T")
    assert ep.metadata == {"b": [1, 2]} and ep.files == {"audio": "x.mp3"} and ep.title == "T"
    before = snapshot(store.root)
    for bad in ({"metadata": {"x": float("nan")}}, {"files": {"a": 1}}, {"title": 5}, {"metadata": "x"}):
        with pytest.raises(ValidationError):
            store.update("s", "e", **bad)
    with pytest.raises(ValidationError):
        store.update("s", "e")
    assert snapshot(store.root) == before


def test_create_validates_its_input(store: Store) -> None:
    for bad in ({"title": 5}, {"metadata": ["a"]}, {"files": {"a": 1}}, {"metadata": {"x": float("inf")}}):
        with pytest.raises(ValidationError):
            store.create("s", "e", **bad)  # type: ignore[arg-type]
    assert not Path(store.root, "shows", "s").exists()


@pytest.mark.parametrize("bad", [-1, float("nan"), float("inf"), "3", True])
def test_bad_costs_are_refused(store: Store, bad: object) -> None:
    store.create("s", "e")
    with pytest.raises(ValidationError, match="cost"):
        store.advance("s", "e", "downloading", cost=bad)  # type: ignore[arg-type]
    assert store.get("s", "e").version == 1


def test_create_twice_is_refused(store: Store) -> None:
    store.create("s", "e")
    with pytest.raises(EpisodeExistsError):
        store.create("s", "e")


def test_not_found_errors(store: Store) -> None:
    with pytest.raises(ShowNotFoundError):
        store.get("nope", "e")
    store.create("s", "e")
    with pytest.raises(EpisodeNotFoundError):
        store.get("s", "nope")
    with pytest.raises(EpisodeNotFoundError):
        store.advance("s", "nope", "downloading")
    with pytest.raises(UnknownStageError):
        store.list(stage="nope")


def test_show_order_follows_creation_and_show_yaml_lists_only_a_hand_set_order(store: Store) -> None:
    for ep in ("ep3", "ep1", "ep2"):
        store.create("show", ep)
    assert store.get_show("show").episodes == ["ep3", "ep1", "ep2"]  # creation order
    show_file = Path(store.root, "shows/show/show.yaml")
    before = show_file.read_bytes()
    assert "schema_version: 2\n" in before.decode() and "order: []\n" in before.decode()
    where = store.delete("show", "ep1")
    assert show_file.read_bytes() == before  # neither a create nor a delete of an unlisted episode rewrites it
    assert store.get_show("show").episodes == ["ep3", "ep2"]
    assert Path(where, "episode.yaml").is_file()  # kept in the trash, not erased
    assert [e.episode_id for e in store.list(show="show")] == ["ep3", "ep2"]
    with pytest.raises(EpisodeNotFoundError):
        store.delete("show", "ep1")
    store.create("show", "ep1")  # the id can be used again, and is the newest
    assert store.get_show("show").episodes == ["ep3", "ep2", "ep1"]
    assert [e.episode_id for e in store.list(show="show")] == ["ep3", "ep2", "ep1"]


def test_a_hand_set_order_comes_first_and_the_rest_follow_creation(store: Store) -> None:
    store.create("show", "a")
    store.create("show", "b")
    show_file = Path(store.root, "shows/show/show.yaml")
    # a person orders two episodes by hand (one not there yet), with a comment
    text = show_file.read_text().replace("order: []\n", "# my order\norder:\n- b\n- ghost\n- later\n")
    show_file.write_text(text)
    assert store.get_show("show").episodes == ["b", "a"]
    store.sync()
    assert [e.episode_id for e in store.list(show="show")] == ["b", "a"]
    assert "ghost" not in show_file.read_text() and "# my order" in show_file.read_text()  # sync drops ids gone
    show_file.write_text(show_file.read_text().replace("- b\n", "- b\n- later\n"))
    store.create("show", "c")
    store.create("show", "later")  # listed by hand before it existed: it takes its place
    assert store.get_show("show").episodes == ["b", "later", "a", "c"]
    assert [e.episode_id for e in store.list(show="show")] == ["b", "later", "a", "c"]
    store.delete("show", "b")  # a listed one leaves the list
    text = show_file.read_text()
    assert "# my order" in text and "order:\n- later\n" in text
    assert [e.episode_id for e in store.list(show="show")] == ["later", "a", "c"]
    assert store.verify().clean
    rebuilt = store.rebuild_index()
    assert rebuilt.problems == [] and [e.episode_id for e in store.list(show="show")] == ["later", "a", "c"]


def test_create_show_with_title(store: Store) -> None:
    show = store.create_show("oliver", title="Oliver's Science Hour", metadata={"host": "Oliver"})
    assert show.title == "Oliver's Science Hour"
    store.create("oliver", "ep1")
    assert store.get_show("oliver").title == "Oliver's Science Hour"
    assert store.shows() == ["oliver"]


def test_list_and_counts(store: Store) -> None:
    store.create("a", "1")
    store.create("a", "2")
    store.create("b", "1")
    store.advance("a", "2", "downloading")
    assert [e.key for e in store.list()] == ["a/1", "a/2", "b/1"]
    assert [e.key for e in store.list(stage="downloading")] == ["a/2"]
    assert store.counts()["discovered"] == 2 and store.counts(show="a")["downloading"] == 1
    with pytest.raises(ShowNotFoundError):
        store.list(show="zzz")


# --- checkpoints ------------------------------------------------------------------


def test_checkpoints_save_load_and_resume(podcast: Store) -> None:
    s = podcast
    s.create("oliver", "ep001")
    assert s.resume_stage("oliver", "ep001") is None
    assert s.load_checkpoint("oliver", "ep001", "outline") is None
    s.save_checkpoint("oliver", "ep001", "outline", {"sections": ["intro", "rockets"]})
    s.save_checkpoint("oliver", "ep001", "segments", {"segments": [{"n": 1, "text": "ü"}]})
    assert s.load_checkpoint("oliver", "ep001", "outline") == {"sections": ["intro", "rockets"]}
    assert s.resume_stage("oliver", "ep001") == "segments"
    ep = s.get("oliver", "ep001")
    assert set(ep.checkpoints) == {"outline", "segments"} and ep.version == 3
    # damage the newest checkpoint: loading names the file, resume falls back
    path = Path(s.root, "shows/oliver/episodes/ep001/checkpoints/segments.json")
    path.write_text(path.read_text().replace('"n": 1', '"n": 2'))
    with pytest.raises(CorruptFileError) as info:
        s.load_checkpoint("oliver", "ep001", "segments")
    assert str(path) in str(info.value)
    assert s.resume_stage("oliver", "ep001") == "outline"
    path.write_bytes(b'{"trunc')
    with pytest.raises(CorruptFileError, match="segments.json"):
        s.load_checkpoint("oliver", "ep001", "segments")


def test_checkpoint_refuses_what_is_not_json(store: Store) -> None:
    store.create("s", "e")
    before = snapshot(store.root)
    for bad in ({"x": float("nan")}, {"x": object()}, ["not", "a", "mapping"], {1: "int key"}):
        with pytest.raises(ValidationError):
            store.save_checkpoint("s", "e", "downloading", bad)  # type: ignore[arg-type]
    with pytest.raises(UnknownStageError):
        store.save_checkpoint("s", "e", "nope", {})
    assert snapshot(store.root) == before


# --- hand edits --------------------------------------------------------------------


def test_a_hand_added_comment_survives_an_advance(store: Store) -> None:
    store.create("s", "e", title="Old")
    path = episode_file(store, "s", "e")
    text = path.read_text().replace("title: Old", "# checked by ana\ntitle: Old  # keep this title")
    path.write_text(text)
    store.advance("s", "e", "downloading", cost=0.5)
    store.advance("s", "e", "downloaded")
    after = path.read_text()
    assert "# checked by ana\ntitle: Old  # keep this title\n" in after
    assert store.get("s", "e").stage == "downloaded"


def test_hand_edited_key_order_survives(store: Store) -> None:
    store.create("s", "e", title="T")
    path = episode_file(store, "s", "e")
    lines = path.read_text().splitlines(keepends=True)
    title = next(line for line in lines if line.startswith("title:"))
    lines.remove(title)
    path.write_text(title + "".join(lines))  # the person moved title to the top
    store.advance("s", "e", "downloading")
    assert path.read_text().startswith("title: T\n")


def test_a_hand_edit_is_read_and_validated(store: Store) -> None:
    """A valid edit is pending until sync (or the next write) adopts it; reads give the
    committed version meanwhile. An invalid one refuses writes with file, line and field."""
    store.create("s", "e")
    path = episode_file(store, "s", "e")
    path.write_text(path.read_text().replace("title: ''", "title: Edited by hand"))
    pending = store.get("s", "e")
    assert pending.title == "" and pending.pending == {"path": str(path), "fields": ["title"], "error": None}
    assert [c["fields"] for c in store.sync().changed] == [["title"]]
    assert store.get("s", "e").title == "Edited by hand"
    path.write_text(path.read_text().replace("\nversion: 2", "\nversion: -3"))
    with pytest.raises(ValidationError) as info:
        store.update("s", "e", title="refused")
    assert info.value.field == "version" and info.value.line is not None
    assert f"{path}:{info.value.line}: version" in str(info.value)
    got = store.get("s", "e")  # the committed version, and why the file cannot be taken
    assert got.version == 2 and got.pending is not None and f"{path}:{info.value.line}: version" in got.pending["error"]


def refused(store: Store, show: str, ep: str, match: str) -> None:
    """The file cannot be taken: a write is refused (ValidationError matching ``match``)
    and a read gives the committed version, saying why."""
    with pytest.raises(ValidationError, match=match):
        store.update(show, ep, title="refused")
    pending = store.get(show, ep).pending
    assert pending is not None and pending["fields"] is None and re.search(match, pending["error"])


def test_a_typo_in_a_field_name_is_reported(store: Store) -> None:
    store.create("s", "e")
    path = episode_file(store, "s", "e")
    path.write_text(path.read_text().replace("title:", "titel:"))
    refused(store, "s", "e", "titel")


def test_cost_total_must_agree_with_costs(store: Store) -> None:
    store.create("s", "e")
    store.advance("s", "e", "downloading", cost=1.0)
    path = episode_file(store, "s", "e")
    path.write_text(path.read_text().replace("cost_total: 1.0", "cost_total: 5.0"))
    refused(store, "s", "e", "edit the per-stage costs")


def test_a_file_moved_to_another_directory_is_caught(store: Store) -> None:
    store.create("s", "e1")
    store.create("s", "e2")
    a, b = episode_file(store, "s", "e1"), episode_file(store, "s", "e2")
    b.write_bytes(a.read_bytes())
    refused(store, "s", "e2", "lives in s/e2")


def test_json_store_reads_yaml_leftovers_and_vice_versa(tmp_path: Path) -> None:
    j = Store.init(tmp_path / "j", format="json")
    j.create("s", "e")
    folder = Path(j.root, "shows/s/episodes/e")
    data = json.loads((folder / "episode.json").read_text())
    (folder / "episode.json").unlink()
    from statekit.codecs import YAML_CODEC

    (folder / "episode.yaml").write_bytes(YAML_CODEC.dump(data).raw)
    assert j.advance("s", "e", "downloading").version == 2
    assert (folder / "episode.yaml").exists() and not (folder / "episode.json").exists()


# --- events: the uncommitted tail ------------------------------------------------


def test_an_uncommitted_tail_is_hidden_and_dropped_by_the_next_write(store: Store) -> None:
    store.create("s", "e")
    log = Path(store.root, "shows/s/episodes/e/events.jsonl")
    committed = log.read_bytes()
    # a crash after the event was appended but before the file was replaced
    tail = {"version": 2, "at": "2026-01-01T00:00:00Z", "kind": "advance", "show_id": "s", "episode_id": "e",
            "to_stage": "downloading"}
    log.write_bytes(committed + json.dumps(tail).encode() + b"\n" + b'{"version":3,"at":"20')
    assert [e.version for e in store.events("s", "e")] == [1]
    ep = store.advance("s", "e", "skipped")
    events = store.events("s", "e")
    assert [(e.version, e.to_stage) for e in events] == [(1, "discovered"), (2, "skipped")]
    assert log.read_bytes().startswith(committed) and log.read_bytes().count(b"\n") == 2
    assert ep.version == 2


def test_a_damaged_committed_event_is_reported_not_dropped(store: Store) -> None:
    store.create("s", "e")
    store.advance("s", "e", "downloading")
    log = Path(store.root, "shows/s/episodes/e/events.jsonl")
    lines = log.read_bytes().splitlines(keepends=True)
    log.write_bytes(lines[0] + b"\x00garbage\n")  # version 2 (committed) is unreadable
    with pytest.raises(CorruptFileError, match="events.jsonl"):
        store.events("s", "e")
    with pytest.raises(CorruptFileError, match="events.jsonl"):
        store.advance("s", "e", "failed")
    assert store.get("s", "e").version == 2


def test_leftover_temp_files_are_removed_by_the_next_write(store: Store) -> None:
    store.create("s", "e")
    folder = Path(store.root, "shows/s/episodes/e")
    (folder / ".episode.yaml.abc123.tmp").write_text("half a write")
    (folder / "notes.txt").write_text("a person's file")
    store.advance("s", "e", "downloading")
    assert not list(folder.glob(".*.tmp"))
    assert (folder / "notes.txt").read_text() == "a person's file"


# --- locks ------------------------------------------------------------------------


def test_lock_timeout(tmp_path: Path) -> None:
    store = Store.init(tmp_path / "s", lock_timeout=0.2)
    store.create("s", "e")
    lock = Path(store.root, ".statekit/locks/episodes/s/e.lock")
    held = threading.Event()
    release = threading.Event()

    def holder() -> None:
        with hold_lock(DISK, str(lock), 5, "test"):
            held.set()
            release.wait(5)

    t = threading.Thread(target=holder)
    t.start()
    held.wait(5)
    try:
        with pytest.raises(LockTimeoutError) as info:
            store.advance("s", "e", "downloading")
        assert "s/e" in str(info.value)
    finally:
        release.set()
        t.join()
    assert store.advance("s", "e", "downloading").version == 2
    assert lock.exists()  # lock files are never deleted


def test_threads_serialize_on_one_episode(store: Store) -> None:
    store.create("s", "e")
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(10):
                store.update("s", "e", metadata={"t": threading.get_ident(), "n": os.urandom(4).hex()})
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert store.get("s", "e").version == 41
    assert [e.version for e in store.events("s", "e")] == list(range(1, 42))


# --- paths: nothing outside the root, no symlinks followed -----------------------------


def test_symlinked_directories_are_refused(store: Store, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    store.create("s", "e")
    shows = Path(store.root, "shows")
    (shows / "evil").symlink_to(outside, target_is_directory=True)
    with pytest.raises(UnsafePathError):
        store.create("evil", "e")
    victim = shows / "s" / "episodes" / "e"
    real = tmp_path / "moved"
    victim.rename(real)
    victim.symlink_to(real, target_is_directory=True)
    before = snapshot(real)
    with pytest.raises(UnsafePathError):
        store.advance("s", "e", "downloading")
    assert snapshot(real) == before
    assert list(outside.iterdir()) == []


def test_a_symlinked_episode_file_is_refused(store: Store, tmp_path: Path) -> None:
    store.create("s", "e")
    path = episode_file(store, "s", "e")
    target = tmp_path / "elsewhere.yaml"
    target.write_bytes(path.read_bytes())
    path.unlink()
    path.symlink_to(target)
    with pytest.raises(UnsafePathError):
        store.advance("s", "e", "downloading")
    assert path.is_symlink()


@settings(max_examples=30)
@given(show=st.text(max_size=20) | st.sampled_from(["..", "../x", "/tmp", "a/../..", "s"]),
       ep=st.text(max_size=20) | st.sampled_from(["..", "../../etc", "/etc/passwd", "e", "x\n"]))
def test_any_id_either_works_inside_the_root_or_is_refused(tmp_path_factory: pytest.TempPathFactory,
                                                           show: str, ep: str) -> None:
    base = tmp_path_factory.mktemp("ids")
    store = Store.init(base / "store")
    from statekit import InvalidIdError

    try:
        store.create(show, ep)
    except InvalidIdError:
        pass
    assert [p.name for p in base.iterdir()] == ["store"]  # nothing written beside the root
