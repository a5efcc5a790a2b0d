"""Changing the pipeline graph while episodes sit in it (issue 19, item 5): the graph in
force is recorded and named by every event, a change's stranded episodes are listed before
and after it is saved, verify reports them, and ``pipeline migrate`` moves them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from statekit import Store
from statekit.errors import PipelineError, ValidationError
from statekit.graphs import graph_hash, stranding
from statekit.pipeline import ARCHIVE, load_pipeline
from statekit.taxonomy import ErrorKind
from tests.test_bulk import cli, fail_run, wait_for_lines
from tests.test_workers import REPO, fill, kind, shared  # noqa: F401  (fixtures: SQLite and PostgreSQL)


def renamed(old: str, new: str) -> dict:
    """The archive graph with stage ``old`` called ``new``."""
    data = ARCHIVE.to_config()
    swap = lambda s: new if s == old else s  # noqa: E731
    data["stages"] = {swap(k): [swap(t) for t in v] for k, v in data["stages"].items()}
    data["max_attempts"] = {swap(k): v for k, v in data.get("max_attempts", {}).items()}
    data.pop("runs", None)
    return data


def save_graph(root: str | Path, graph: dict) -> Path:
    """statekit.yaml with ``graph`` as its pipeline (what a person does in an editor)."""
    path = Path(root) / "statekit.yaml"
    config = yaml.safe_load(path.read_text())
    config["pipeline"] = graph
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def proposal(tmp_path: Path, graph: dict) -> Path:
    path = tmp_path / "proposed.yaml"
    path.write_text(yaml.safe_dump({"pipeline": graph}, sort_keys=False))
    return path


@pytest.fixture
def store(tmp_path: Path) -> Store:
    s = Store.init(tmp_path / "store")
    yield s
    s.close()


def walk(store: Store, key: str, *stages: str) -> None:
    for stage in stages:
        store.advance(*key.split("/"), stage)


def test_every_event_names_the_recorded_graph(store: Store) -> None:
    fill(store, 1)
    walk(store, "s/e000", "downloading")
    digest = graph_hash(store.pipeline)
    assert {e.model_extra["graph"] for e in store.events("s", "e000")} == {digest}
    recorded = Path(store.root, ".statekit", "pipelines", digest + ".yaml")
    assert load_pipeline(yaml.safe_load(recorded.read_text())["pipeline"]) == store.pipeline
    assert [g["hash"] for g in store.pipeline_history()] == [digest]


def test_stranding_rules() -> None:
    new = load_pipeline(renamed("converting", "transcoding"))
    assert "no longer has" in stranding(new, "converting", "downloaded", old=ARCHIVE)
    assert "'converting'" in stranding(new, "failed", "converting", old=ARCHIVE)  # its retry's way back is gone
    assert "'converting'" in stranding(new, "failed", "converting")  # judged without the old graph too
    assert stranding(new, "downloaded", "downloading", old=ARCHIVE) is None  # routed to the new name
    ended = ARCHIVE.to_config()
    ended["stages"] = {k: v for k, v in ended["stages"].items() if k not in ("scheduled", "published")}
    ended["stages"]["uploaded"] = []
    ended["terminal"] = ["uploaded", "skipped"]
    ended.pop("runs", None)
    assert "no next stages" in stranding(load_pipeline(ended), "uploaded", "uploading", old=ARCHIVE)
    assert stranding(new, "converted", "transcoding", old=ARCHIVE) is None
    # a stage added in between only routes episodes another way: not stranded
    added = ARCHIVE.to_config()
    added["stages"] = {**added["stages"], "converted": ["captioning", "skipped"], "captioning": ["uploading"]}
    added.pop("runs", None)
    assert stranding(load_pipeline(added), "converted", "converting", old=ARCHIVE) is None


def test_check_before_and_after_saving_then_migrate(store: Store, tmp_path: Path) -> None:
    keys = fill(store, 4)
    walk(store, keys[0], "downloading", "downloaded", "converting")           # in the renamed stage
    walk(store, keys[1], "downloading", "downloaded", "converting")
    fail_run(store, keys[1], "converting", ErrorKind.USER_INPUT_INVALID)     # waiting to retry it
    walk(store, keys[2], "downloading", "downloaded")                         # routed to the new name: fine
    new = renamed("converting", "transcoding")
    before = store.pipeline_check(proposal(tmp_path, new))
    assert [s["episode"] for s in before] == keys[:2]
    assert store.pipeline_check() == []  # nothing stranded by the graph in force

    save_graph(store.root, new)
    reopened = Store.open(store.root)
    after = reopened.pipeline_check()
    assert [s["episode"] for s in after] == keys[:2]
    assert reopened.get(*keys[0].split("/")).stage == "converting"  # readable: a stage of a recorded graph
    assert reopened.stranded_counts() == [{"show_id": "s", "stage": "converting", "n": 1},
                                          {"show_id": "s", "stage": "failed", "n": 1}]
    problems = reopened.verify().problems
    assert sorted(p.kind for p in problems) == ["stranded"] * 2  # old moves judged by their own graph: none flagged

    dry = reopened.pipeline_migrate({"converting": "transcoding"}, dry_run=True)
    assert len(dry.changed) == 2 and reopened.get(*keys[0].split("/")).stage == "converting"
    report = reopened.pipeline_migrate({"converting": "transcoding"}, note="renamed", by="ops")
    assert {c["episode"]: (c["from"], c["to"]) for c in report.changed} == {
        keys[0]: ("converting", "transcoding"), keys[1]: ("failed", "failed")}
    m0, m1 = reopened.get(*keys[0].split("/")), reopened.get(*keys[1].split("/"))
    assert m0.stage == "transcoding" and m1.previous_stage == "transcoding"
    for key in keys[:2]:
        last = reopened.events(*key.split("/"))[-1]
        assert last.kind == "pipeline_migrate" and last.message == "renamed"
        assert last.model_extra["graph"] == graph_hash(reopened.pipeline)
    assert not reopened.verify().problems
    assert reopened.pipeline_check() == [] and reopened.stranded_counts() == []
    # it works on: the retry goes to the new stage, the waiting one moves there
    reopened.retry_now(*keys[1].split("/"))
    assert keys[1] in {e.key for e in reopened.next("transcoding", 10)}
    walk(reopened, keys[2], "transcoding", "converted")
    reopened.rebuild_index()  # the index's ready_for, under the new graph
    assert keys[3] in {e.key for e in reopened.next("downloading", 10)}
    assert len(reopened.pipeline_history()) == 2


def test_migrate_refuses_bad_maps_and_skips_what_it_cannot_place(store: Store) -> None:
    fill(store, 1)
    walk(store, "s/e000", "downloading", "downloaded", "converting")
    save_graph(store.root, renamed("converting", "transcoding"))
    s = Store.open(store.root)
    with pytest.raises(ValidationError, match="still in the pipeline"):
        s.pipeline_migrate({"downloaded": "transcoding"})
    with pytest.raises(Exception, match="unknown stage"):
        s.pipeline_migrate({"converting": "nowhere"})
    with pytest.raises(ValidationError):
        s.pipeline_migrate({})
    report = s.pipeline_migrate({"encoding": "transcoding"})
    assert report.changed == [] and "does not name" in report.skipped[0]["reason"]
    assert s.get("s", "e000").version == 4


def test_verify_flags_a_move_its_own_graph_did_not_allow(store: Store) -> None:
    fill(store, 1)
    walk(store, "s/e000", "downloading")
    log = Path(store.root, "shows/s/episodes/e000/events.jsonl")
    lines = log.read_text().splitlines()
    lines[1] = lines[1].replace('"to_stage":"downloading"', '"to_stage":"published"')
    log.write_text("\n".join(lines) + "\n")
    moves = [p for p in store.verify().problems if p.kind == "move"]
    assert len(moves) == 1 and "'discovered' -> 'published'" in moves[0].message


def test_a_stage_no_graph_ever_had_is_still_invalid(store: Store) -> None:
    fill(store, 1)
    path = Path(store.episode_path("s", "e000"))
    path.write_text(path.read_text().replace("stage: discovered", "stage: nonsense"))
    got = store.get("s", "e000")  # the ledger: reads give the committed version, saying why the file is not it
    assert got.stage == "discovered" and got.pending is not None and "not a stage" in got.pending["error"]
    with pytest.raises(ValidationError, match="not a stage"):
        store.update("s", "e000", title="refused")
    unchained = Store.init(Path(store.root).parent / "old", "archive", ledger=False)  # the format before it
    fill(unchained, 1)
    path = Path(unchained.episode_path("s", "e000"))
    path.write_text(path.read_text().replace("stage: discovered", "stage: nonsense"))
    with pytest.raises(ValidationError, match="not a stage"):
        unchained.get("s", "e000")


def test_cli_check_migrate_status(store: Store, tmp_path: Path) -> None:
    fill(store, 2)
    walk(store, "s/e000", "downloading", "downloaded", "converting")
    new = renamed("converting", "transcoding")
    out = cli(store.root, "pipeline", "check", "--config", str(proposal(tmp_path, new)), code=1)
    assert "s/e000" in out.stdout and "1 episode(s) stranded by the proposed graph" in out.stdout
    bad = cli(store.root, "pipeline", "check", "--config", str(tmp_path / "missing.yaml"), code=2)
    assert bad.stderr.count("\n") == 1
    broken = tmp_path / "broken.yaml"
    broken.write_text("pipeline: {name: x, initial: a, stages: {a: [b]}}\n")
    bad = cli(store.root, "pipeline", "check", "--config", str(broken), code=2)
    assert bad.stderr.count("\n") == 1 and "unknown stage" in bad.stderr
    save_graph(store.root, new)
    assert "stranded by a pipeline change: 1 episode(s) (1 in converting)" in cli(store.root, "status").stdout
    assert json.loads(cli(store.root, "status", "--json").stdout)[0]["stranded"] == 1
    assert "stranded" in cli(store.root, "verify", code=1).stdout
    assert json.loads(cli(store.root, "pipeline", "check", "--json", code=1).stdout)["stranded"][0]["stage"] == \
        "converting"
    bad = cli(store.root, "pipeline", "migrate", "--map", "converting", code=2)
    assert bad.stderr.count("\n") == 1 and "OLD=NEW" in bad.stderr
    moved = json.loads(cli(store.root, "pipeline", "migrate", "--map", "converting=transcoding", "--json").stdout)
    assert [c["to"] for c in moved["changed"]] == ["transcoding"]
    cli(store.root, "verify")
    assert "stranded" not in cli(store.root, "status").stdout
    assert len(json.loads(cli(store.root, "pipeline", "history", "--json").stdout)) == 2


@pytest.mark.slow
def test_workers_under_the_old_graph_while_it_changes(shared: Store, tmp_path: Path) -> None:  # noqa: F811
    """Workers started under the old graph keep running while a person renames the stage
    they move episodes into: their moves carry the old graph's hash and are judged by it;
    the episodes they leave in the old stage are stranded until migrated."""
    keys = fill(shared, 24)
    out = tmp_path / "done.txt"
    env = dict(os.environ, PYTHONPATH=str(REPO), CLAIM_WORKER_IDLE="10")
    procs = [subprocess.Popen([sys.executable, "-m", "tests.claim_worker", shared.root, "downloading", str(out),
                               "0.03"], cwd=REPO, env=env) for _ in range(2)]
    try:
        wait_for_lines(out, 6, procs)
        deadline = time.monotonic() + 120  # each worker has finished a run: both run under the old graph
        while time.monotonic() < deadline and len({line.split()[1] for line in out.read_text().splitlines()}) < 2:
            time.sleep(0.02)
        save_graph(shared.root, renamed("downloaded", "fetched"))  # mid-run
        time.sleep(0.2)
    finally:
        for p in procs:
            assert p.wait(timeout=300) == 0
    fresh = Store.open(shared.root)
    old, new = graph_hash(shared.pipeline), graph_hash(fresh.pipeline)
    assert old != new
    assert all(fresh.get(*k.split("/")).stage == "downloaded" for k in keys)  # the old workers' target
    problems = fresh.verify().problems
    assert problems and {p.kind for p in problems} == {"stranded"}, problems  # no move flagged
    assert {e.model_extra["graph"] for k in keys for e in fresh.events(*k.split("/"))} == {old}
    assert fresh.stranded_counts() == [{"show_id": "s", "stage": "downloaded", "n": len(keys)}]
    assert len(fresh.pipeline_check()) == len(keys)
    report = fresh.pipeline_migrate({"downloaded": "fetched"}, note="rename")
    assert len(report.changed) == len(keys) and not report.skipped
    assert not fresh.verify().problems
    assert all(fresh.get(*k.split("/")).stage == "fetched" for k in keys)


def test_a_broken_proposal_names_its_problem(store: Store, tmp_path: Path) -> None:
    path = proposal(tmp_path, {"name": "x", "initial": "a", "stages": {"a": ["zzz"]}})
    with pytest.raises(PipelineError):
        store.pipeline_check(path)
