"""The ledger is the default, and the index marks pending hand edits (issue 14).

``episodes.pending`` (revision 0009): rebuild and sync fill it, every write clears it,
``list``/``next``/``status`` (API and CLI) say which episodes have one, and ``verify``
reports a mark the file does not bear out.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml
from click.testing import CliRunner

from statekit import Store
from statekit.cli import main
from statekit.models import LEDGER_SCHEMA, PRE_LEDGER_SCHEMA


def edit(store: Store, ep: str, key: str, value: str) -> Path:
    path = Path(store.root, "shows", "s", "episodes", ep, "episode.yaml")
    path.write_text(re.sub(rf"(?m)^{key}: .*$", f"{key}: {value}", path.read_text()))
    return path


def marks(store: Store) -> dict[str, object]:
    return {e.episode_id: e.pending for e in store.list()}


def test_new_stores_keep_the_ledger_unless_asked_not_to(tmp_path: Path) -> None:
    assert Store.init(tmp_path / "a").config.schema_version == LEDGER_SCHEMA
    old = Store.init(tmp_path / "b", ledger=False)
    assert old.config.schema_version == PRE_LEDGER_SCHEMA and not old.writer.chained
    runner = CliRunner()
    assert runner.invoke(main, ["init", str(tmp_path / "c")]).exit_code == 0
    assert runner.invoke(main, ["init", "--no-ledger", str(tmp_path / "d")]).exit_code == 0
    assert runner.invoke(main, ["init", "--ledger", str(tmp_path / "e")]).exit_code == 0
    formats = {name: yaml.safe_load((tmp_path / name / "statekit.yaml").read_text())["schema_version"]
               for name in "cde"}
    assert formats == {"c": LEDGER_SCHEMA, "d": PRE_LEDGER_SCHEMA, "e": LEDGER_SCHEMA}
    store = Store.open(tmp_path / "c")
    store.create("s", "e")
    assert "doc" in json.loads((Path(store.root) / "shows/s/episodes/e/events.jsonl").read_text())


def test_rebuild_and_sync_mark_pending_edits_and_writes_clear_them(tmp_path: Path) -> None:
    store = Store.init(tmp_path / "s")
    for ep in ("a", "b", "c"):
        store.create("s", ep, title="t")
    edit(store, "a", "title", "by hand")
    assert marks(store) == {"a": None, "b": None, "c": None}  # the index has not looked yet
    report = store.rebuild_index()
    assert report.pending == ["s/a"]
    found = marks(store)
    assert found["a"] == {"path": str(Path(store.root, "shows/s/episodes/a/episode.yaml")), "fields": ["title"],
                          "error": None} and found["b"] is None
    assert [e.title for e in store.list()] == ["t", "t", "t"]  # the committed versions
    assert store.status()[0]["pending"] == 1
    assert store.sql("SELECT episode_id FROM episodes WHERE pending IS NOT NULL")[1] == [("a",)]
    # sync: an illegal move is refused and marked, a damaged file too; a valid edit is adopted
    edit(store, "b", "stage", "published")
    Path(store.root, "shows/s/episodes/c/episode.yaml").write_text("title: [unclosed\n")
    synced = store.sync()
    assert sorted(p.episode for p in synced.rejected) == ["s/b", "s/c"]
    assert [c["episode"] for c in synced.changed] == ["s/a"]
    found = marks(store)
    assert found["a"] is None
    assert found["b"]["fields"] == ["stage"]  # type: ignore[index]
    assert found["c"]["fields"] is None and "episode.yaml" in found["c"]["error"]  # type: ignore[index]
    assert [e.stage for e in store.list()] == ["discovered"] * 3  # the index keeps the committed stage
    assert store.status()[0]["pending"] == 2
    # a write clears the mark (reverting b, repairing c)
    store.revert("s", "b")
    store.repair()
    assert marks(store) == {"a": None, "b": None, "c": None}
    assert store.verify().clean


def test_verify_reports_a_mark_the_file_does_not_bear_out(tmp_path: Path) -> None:
    store = Store.init(tmp_path / "s")
    store.create("s", "e")
    store.index.set_pending("s", "e", {"fields": ["title"]})
    problems = store.verify().problems
    assert [(p.kind, p.episode) for p in problems] == [("index", "s/e")]
    assert "marks a pending hand edit" in problems[0].message
    store.rebuild_index()
    assert store.verify().clean


def test_the_cli_marks_pending_edits_in_list_next_and_status(tmp_path: Path) -> None:
    store = Store.init(tmp_path / "s")
    store.create("s", "a", title="t")
    store.create("s", "b", title="t")
    edit(store, "a", "title", "by hand")
    store.rebuild_index()
    store.close()
    runner = CliRunner()
    root = ["--root", str(tmp_path / "s")]
    listed = runner.invoke(main, [*root, "list"])
    assert listed.exit_code == 0
    assert re.search(r"s\s+a\s+discovered\s+1\*", listed.output) and not re.search(r"\bb\b.*1\*", listed.output)
    assert "1 episode(s) have a pending hand edit" in listed.output
    data = json.loads(runner.invoke(main, [*root, "list", "--json"]).output)
    assert data[0]["pending"]["fields"] == ["title"] and "pending" not in data[1]
    assert data[0]["title"] == "t"  # the committed version
    nexts = json.loads(runner.invoke(main, [*root, "next", "downloading", "--json"]).output)
    assert [e.get("pending") is not None for e in nexts] == [True, False]
    status = runner.invoke(main, [*root, "status"])
    assert "1 with a pending hand edit" in status.output
    assert json.loads(runner.invoke(main, [*root, "status", "--json"]).output)[0]["pending"] == 1


def test_adopting_an_edit_the_index_marked_moves_the_stage_totals(tmp_path: Path) -> None:
    # the rebuild indexes the committed stage under the edited file's hash; the adoption's index
    # write must not take that row for the edited file's stage (counts stayed at the old stage)
    for how in ("sync", "advance"):
        store = Store.init(tmp_path / how)
        for ep in ("a", "b"):
            store.create("s", ep)
        edit(store, "a", "stage", "downloading")
        store.rebuild_index()
        assert {k: v for k, v in store.counts().items() if v} == {"discovered": 2}  # the committed stages
        if how == "sync":
            store.sync()
            want = {"discovered": 1, "downloading": 1}
        else:
            store.advance("s", "a", "downloaded")  # adopts the edit first, then moves on
            want = {"discovered": 1, "downloaded": 1}
        assert {k: v for k, v in store.counts().items() if v} == want, how
        assert store.verify().clean, how
