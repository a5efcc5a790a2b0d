"""Schema versions: old files load, new ones are refused, migrate and import."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from statekit import SchemaVersionError, Store, ValidationError
from statekit.codecs import YAML_CODEC
from statekit.models import EPISODE_SCHEMA, STORE_SCHEMA

from .conftest import episode_file, snapshot

LEGACY = Path(__file__).resolve().parent.parent / "data" / "legacy" / "processed"


def legacy_data(name: str) -> dict:
    path = LEGACY / "2004" / name
    return YAML_CODEC.load(path.read_bytes(), str(path))


def test_import_brings_schema_0_files_in_and_loses_nothing(store: Store) -> None:
    report = store.import_legacy(LEGACY, "hooting-yard")
    assert [r["episode"] for r in report.imported] == [
        "hooting-yard/hy0_hooting_yard_2004-04-14",
        "hooting-yard/hy0_hooting_yard_2004-04-21",
        "hooting-yard/hy0_hooting_yard_2004-04-28",
    ]
    assert report.rejected == [] and report.skipped == []

    ep = store.get("hooting-yard", "hy0_hooting_yard_2004-04-21")
    assert ep.schema_version == EPISODE_SCHEMA and ep.version == 1 and ep.stage == "failed"
    assert ep.attempts == {"downloading": 3}
    assert ep.message == "Download failed after 3 attempts: Read timed out."
    assert ep.updated_at.isoformat().startswith("2024-09-15T09:27:51.662311+00:00")
    assert [e.message for e in ep.error_history] == ["HTTPSConnectionPool(host='archive.org', port=443): Read timed out."] * 2
    assert "ReadTimeout" in (ep.error_history[0].traceback or "")
    assert ep.files == {"source_url": legacy_data("hy0_hooting_yard_2004-04-21.yaml")["files"]["source_url"]}

    published = store.get("hooting-yard", "hy0_hooting_yard_2004-04-28")
    legacy = legacy_data("hy0_hooting_yard_2004-04-28.yaml")
    # every key without a place of its own is kept under metadata, unknown ones too
    for key in ("archive_identifier", "date", "youtube", "metrics", "notes"):
        assert published.metadata[key] == legacy[key]
    assert "legacy_episode_id" not in published.metadata  # the id was valid as it was
    assert published.attempts == {"downloading": 1, "converting": 1, "uploading": 1}
    assert [e.kind for e in store.events("hooting-yard", "hy0_hooting_yard_2004-04-28")] == ["import"]
    # the show's order is creation order: the files' own created_at, then id
    imported = [store.get("hooting-yard", r["episode"].split("/")[1]) for r in report.imported]
    assert store.get_show("hooting-yard").episodes == [
        e.episode_id for e in sorted(imported, key=lambda e: (e.created_at, e.episode_id))]


def test_legacy_ids_that_are_not_valid_ids_are_normalised(store: Store, tmp_path: Path) -> None:
    folder = tmp_path / "legacy"
    folder.mkdir()
    (folder / "x.yaml").write_text("episode_id: HY0 Hooting/Yard\nstage: discovered\ntitle: t\n")
    report = store.import_legacy(folder, "hy")
    assert report.imported == [{"file": "x.yaml", "episode": "hy/hy0-hooting-yard"}]
    assert store.get("hy", "hy0-hooting-yard").metadata["legacy_episode_id"] == "HY0 Hooting/Yard"


def test_import_twice_skips_what_is_already_there(store: Store) -> None:
    store.import_legacy(LEGACY, "hy")
    before = snapshot(store.root)
    again = store.import_legacy(LEGACY, "hy")
    assert again.imported == [] and len(again.skipped) == 3
    assert snapshot(store.root) == before


def test_import_rejects_bad_files_and_keeps_going(store: Store, tmp_path: Path) -> None:
    folder = tmp_path / "legacy"
    shutil.copytree(LEGACY, folder)
    (folder / "2004" / "broken.yaml").write_text("title: [unclosed\n")
    (folder / "2004" / "odd-stage.yaml").write_text("episode_id: odd\nstage: teleported\n")
    (folder / "2004" / "modern.yaml").write_text("schema_version: 1\nstage: discovered\n")
    report = store.import_legacy(folder, "hy")
    assert len(report.imported) == 3
    reasons = {r["file"]: r["reason"] for r in report.rejected}
    assert "invalid YAML" in reasons["2004/broken.yaml"]
    assert "teleported" in reasons["2004/odd-stage.yaml"]
    assert "not a schema-0 file" in reasons["2004/modern.yaml"]


def test_a_schema_0_file_in_the_store_loads_and_migrate_rewrites_it(tmp_path: Path) -> None:
    # a store before the ledger reads the file as it is (a ledger store reads the committed version:
    # a copied-in file is a pending edit; 'statekit import' brings legacy files in there)
    store = Store.init(tmp_path / "old", ledger=False)
    store.create("hy", "old")
    path = episode_file(store, "hy", "old")
    original = (LEGACY / "2004" / "hy0_hooting_yard_2004-04-14.yaml").read_bytes()
    path.write_bytes(b"# copied from the old pipeline\n" + original)
    ep = store.get("hy", "old")  # migrated in memory, file untouched
    assert ep.schema_version == EPISODE_SCHEMA and ep.stage == "converted" and ep.version == 0
    assert path.read_bytes().endswith(original)

    dry = store.migrate(dry_run=True)
    assert [(f["episode"], f["from"], f["to"]) for f in dry.files] == [("hy/old", 0, EPISODE_SCHEMA)]
    assert path.read_bytes().endswith(original)

    done = store.migrate()
    assert done.backup_dir is not None
    backup = Path(done.backup_dir, "shows/hy/episodes/old/episode.yaml")
    assert backup.read_bytes().endswith(original)  # the original, kept
    text = path.read_text()
    assert text.startswith("# copied from the old pipeline\n")  # the person's comment survives
    assert f"schema_version: {EPISODE_SCHEMA}" in text
    ep = store.get("hy", "old")
    assert ep.version == 1 and ep.metadata["archive_identifier"] == "hy0_hooting_yard_2004-04-14"
    assert store.events("hy", "old")[-1].kind == "migrate"
    assert store.migrate(dry_run=True).files == []


@pytest.mark.parametrize("bad", ["999", "'x'", "-1", "true", "1.5"])
def test_a_bad_or_newer_schema_version_is_refused_never_rewritten(store: Store, bad: str) -> None:
    store.create("s", "e")
    path = episode_file(store, "s", "e")
    path.write_text(path.read_text().replace(f"schema_version: {EPISODE_SCHEMA}", f"schema_version: {bad}"))
    before = snapshot(store.root)
    if bad == "999":  # newer: refused (a newer statekit may have written it)
        with pytest.raises(SchemaVersionError) as info:
            store.get("s", "e")
        assert str(path) in str(info.value)
    else:  # damaged: reads give the committed version, and say why the file is not it
        pending = store.get("s", "e").pending
        assert pending is not None and str(path) in pending["error"] and "schema_version" in pending["error"]
    with pytest.raises(SchemaVersionError):
        store.advance("s", "e", "downloading")
    with pytest.raises(SchemaVersionError):
        store.migrate()
    assert snapshot(store.root) == before


def test_missing_schema_version_on_a_current_file_is_reported(store: Store) -> None:
    store.create("s", "e")
    path = episode_file(store, "s", "e")
    path.write_text(path.read_text().replace(f"schema_version: {EPISODE_SCHEMA}\n", ""))
    with pytest.raises(SchemaVersionError, match="schema_version is missing"):
        store.advance("s", "e", "downloading")
    pending = store.get("s", "e").pending  # the committed version, and why the file is not it
    assert pending is not None and "schema_version is missing" in pending["error"]


def test_newer_store_config_is_refused(tmp_path: Path) -> None:
    store = Store.init(tmp_path / "s")
    config = Path(store.root, "statekit.yaml")
    config.write_text(re.sub(r"schema_version: \d+", f"schema_version: {STORE_SCHEMA + 1}", config.read_text()))
    with pytest.raises(SchemaVersionError, match="newer"):
        Store.open(tmp_path / "s")


def test_import_needs_a_directory(store: Store, tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="not a directory"):
        store.import_legacy(tmp_path / "missing", "hy")


@pytest.mark.parametrize("old", [1, 2])
def test_an_older_schema_file_loads_and_migrate_rewrites_it_at_the_current_one(store: Store, old: int) -> None:
    store.create("s", "e", title="Old")
    path = episode_file(store, "s", "e")
    newer = {1: ("lease:", "due_at:", "hold:", "stage_done:", "assets:", "uploads:"), 2: ("assets:", "uploads:")}
    lines = [line for line in path.read_text().splitlines() if not line.startswith(newer[old])]
    text = "\n".join(lines).replace(f"schema_version: {EPISODE_SCHEMA}", f"schema_version: {old}") + "\n"
    path.write_text("# kept by hand\n" + text)
    ep = store.get("s", "e")
    assert ep.schema_version == EPISODE_SCHEMA == 3
    assert ep.lease is None and ep.due_at is None and not ep.stage_done and ep.assets == {} and ep.uploads == {}
    assert [(f["from"], f["to"]) for f in store.migrate(dry_run=True).files] == [(old, 3)]
    store.migrate()
    text = path.read_text()
    assert text.startswith("# kept by hand\n") and "schema_version: 3" in text and "stage_done: false" in text
    assert "assets: {}" in text and "uploads: {}" in text
    assert store.get("s", "e").title == "Old"


def test_a_store_config_of_schema_1_still_opens(tmp_path: Path) -> None:
    store = Store.init(tmp_path / "s")
    config = Path(store.root, "statekit.yaml")
    data = YAML_CODEC.load(config.read_bytes(), str(config))
    for key in ("failure_stage", "give_up_stage", "runs", "retry"):
        del data["pipeline"][key]
    del data["backups"]
    data["schema_version"] = 1
    config.write_bytes(YAML_CODEC.dump_plain(data))
    reopened = Store.open(store.root)
    assert reopened.pipeline.runs == store.pipeline.runs and reopened.config.backups == 3


def test_migrate_rewrites_a_schema_1_show_yaml_keeping_the_order(store: Store) -> None:
    for ep in ("e1", "e2", "e3", "e4", "e5"):
        store.create("s", ep)
    show_file = Path(store.root, "shows/s/show.yaml")
    text = show_file.read_text()
    assert "schema_version: 2" in text and "order: []" in text
    # the schema-1 form: every episode listed; a person moved e4 to the front and commented
    old = (text.replace("schema_version: 2", "schema_version: 1")
           .replace("order: []\n", "# by hand\nepisodes:\n- e4\n- e1\n- e2\n- e3\n- e5\n"))
    show_file.write_text(old)
    want = ["e4", "e1", "e2", "e3", "e5"]
    assert store.get_show("s").episodes == want  # read as it is: the list comes first
    store.create("s", "e6")  # a create does not rewrite a schema-1 file either
    assert show_file.read_text() == old
    want.append("e6")
    assert store.get_show("s").episodes == want
    dry = store.migrate(dry_run=True)
    assert [(f["path"], f["from"], f["to"]) for f in dry.files] == [("shows/s/show.yaml", 1, 2)]
    done = store.migrate()
    assert Path(done.backup_dir, "shows/s/show.yaml").read_text() == old  # the original, kept
    text = show_file.read_text()
    # only the head out of creation order stays listed (e4 before e1); the rest follow creation
    assert "schema_version: 2" in text and "# by hand" in text and "order:\n- e4\n" in text and "e1" not in text
    assert store.get_show("s").episodes == want
    assert [e.episode_id for e in store.list(show="s")] == want
    assert store.migrate(dry_run=True).files == []
    assert store.verify().clean
    store.rebuild_index()
    assert [e.episode_id for e in store.list(show="s")] == want


def test_a_schema_2_show_yaml_with_an_episodes_list_is_refused_with_a_hint(store: Store) -> None:
    store.create("s", "e1")
    show_file = Path(store.root, "shows/s/show.yaml")
    show_file.write_text(show_file.read_text().replace("order: []", "episodes: [e1]"))
    with pytest.raises(ValidationError, match="no 'episodes' list") as caught:
        store.create("s", "e2")
    assert "order:" in (caught.value.hint or "")
