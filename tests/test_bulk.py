"""Bulk retry and requeue (issue 19, item 4): the index selects, the write path changes
each episode (one event with the operator's note), a dry run changes nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import Counter
from datetime import timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner

from statekit import Store
from statekit.bulk import check_where
from statekit.cli import main
from statekit.errors import QueryError, UnknownStageError, ValidationError
from statekit.taxonomy import ErrorKind
from tests.test_workers import REPO, fill, kind, shared  # noqa: F401  (fixtures: SQLite and PostgreSQL)


def cli(root: str | Path, *args: str, code: int = 0) -> subprocess.CompletedProcess[str]:
    """The command line in this process (click's runner: the same parsing, errors and output as
    ``statekit``; test_cli runs the real console script), stdout and stderr apart."""
    result = CliRunner().invoke(main, ["--root", str(root), *args], catch_exceptions=False)
    done = subprocess.CompletedProcess(["statekit", *args], result.exit_code, result.stdout, result.stderr)
    assert done.returncode == code, (done.stdout, done.stderr)
    return done


class Flaky(Exception):
    def __init__(self, error_kind: ErrorKind) -> None:
        super().__init__(f"failed as {error_kind.value}")
        self.statekit_kind = error_kind


def fail_run(store: Store, key: str, stage: str, error_kind: ErrorKind) -> None:
    with store.run(*key.split("/"), stage, reraise=False):
        raise Flaky(error_kind)


@pytest.fixture
def store(tmp_path: Path) -> Store:
    s = Store.init(tmp_path / "store")
    yield s
    s.close()


def failures(store: Store) -> dict[str, str]:
    """Five episodes, each failed in 'downloading' a different way (and one converting)."""
    keys = fill(store, 6)
    fail_run(store, keys[0], "downloading", ErrorKind.TRANSIENT_NETWORK)        # backoff
    fail_run(store, keys[1], "downloading", ErrorKind.USER_INPUT_INVALID)       # held
    fail_run(store, keys[2], "downloading", ErrorKind.PERMANENT_FILE_CORRUPTION)  # gave up -> skipped
    store.advance(*keys[4].split("/"), "downloading")
    store.advance(*keys[4].split("/"), "downloaded")
    store.advance(*keys[4].split("/"), "converting")
    fail_run(store, keys[4], "converting", ErrorKind.USER_INPUT_INVALID)       # held, another stage
    return {"backoff": keys[0], "hold": keys[1], "give_up": keys[2], "untouched": keys[3], "other": keys[4]}


def test_retry_a_stage_releases_backoff_hold_and_give_up_one_event_each(store: Store) -> None:
    k = failures(store)
    before = {key: store.get(*key.split("/")) for key in k.values()}
    assert before[k["give_up"]].stage == "skipped" and before[k["give_up"]].attempts["downloading"] == 1
    dry = store.retry("downloading", note="network fixed", by="ops", dry_run=True)
    assert dry.dry_run and sorted(c["episode"] for c in dry.changed) == sorted([k["backoff"], k["hold"], k["give_up"]])
    assert {key: store.get(*key.split("/")).version for key in k.values()} == {
        key: m.version for key, m in before.items()}  # a dry run writes nothing

    report = store.retry("downloading", note="network fixed", by="ops")
    assert {c["episode"]: c["action"] for c in report.changed} == {
        k["backoff"]: "backoff", k["hold"]: "hold", k["give_up"]: "give_up"}
    for key in (k["backoff"], k["hold"], k["give_up"]):
        m = store.get(*key.split("/"))
        assert m.version == before[key].version + 1 and m.hold is None and m.due_at is None
        last = store.events(*key.split("/"))[-1]
        assert last.kind == "retry" and last.message == "network fixed" and last.model_extra["by"] == "ops"
    gave_up = store.get(*k["give_up"].split("/"))
    assert gave_up.stage == "failed" and gave_up.previous_stage == "downloading"
    assert gave_up.attempts["downloading"] == 0  # a fresh budget of attempts
    ready = {e.key for e in store.next("downloading", 20)}
    assert {k["backoff"], k["hold"], k["give_up"], k["untouched"]} <= ready
    assert store.get(*k["other"].split("/")).hold is not None  # another stage: not touched
    again = store.retry("downloading")
    assert again.changed == [] and again.selected == 0  # nothing left to release
    assert not store.verify().problems


def test_retry_filters_kind_show_since(store: Store) -> None:
    k = failures(store)
    only_held = store.retry("downloading", kind="user_input_invalid", dry_run=True)
    assert [c["episode"] for c in only_held.changed] == [k["hold"]]
    assert store.retry("downloading", show="nobody", dry_run=True).changed == []
    later = store.clock() + timedelta(hours=1)
    assert store.retry("downloading", since=later, dry_run=True).changed == []
    with pytest.raises(ValidationError, match="unknown error kind"):
        store.retry("downloading", kind="gremlins")
    with pytest.raises(UnknownStageError):
        store.retry("nosuchstage")


def test_requeue_moves_what_the_query_selects_and_skips_with_reasons(store: Store) -> None:
    keys = fill(store, 5)
    for key in keys[:3]:
        for stage in ("downloading", "downloaded", "converting", "converted"):
            store.advance(*key.split("/"), stage)
    dry = store.requeue("stage = 'converted' AND episode_id <> 'e002'", to="converting", note="bad codec",
                        dry_run=True)
    assert [c["episode"] for c in dry.changed] == keys[:2]
    assert all(store.get(*key.split("/")).stage == "converted" for key in keys[:3])
    report = store.requeue("stage = 'converted' AND episode_id <> 'e002'", to="converting", note="bad codec")
    assert [(c["episode"], c["from"], c["to"]) for c in report.changed] == [
        (key, "converted", "converting") for key in keys[:2]]
    for key in keys[:2]:
        m = store.get(*key.split("/"))
        last = store.events(*key.split("/"))[-1]
        assert m.stage == "converting" and m.attempts["converting"] == 2
        assert (last.kind, last.from_stage, last.to_stage, last.message) == (
            "requeue", "converted", "converting", "bad codec")
    assert store.get("s", "e002").stage == "converted"
    # released where they are: nothing to release here, so each is left alone with the reason
    same = store.requeue("stage = 'discovered'")
    assert same.changed == [] and len(same.skipped) == 2 and "already ready" in same.skipped[0]["reason"]
    # an operator's move is recorded, not judged: verify stays clean
    assert not store.verify().problems


@pytest.mark.parametrize("clause, why", [
    ("1); DELETE FROM episodes; --", "closes more"),
    ("stage = 'a'; DROP TABLE episodes", "';'"),
    ("1 -- and the rest", "comment"),
    ("1 /* hidden */", "comment"),
    ("(stage = 'a'", "not closed"),
    ("stage = 'a", "not closed"),
    ("1) UNION SELECT show_id, episode_id FROM events WHERE (1", "closes more"),
    ("   ", "empty"),
])
def test_requeue_refuses_anything_but_one_expression(store: Store, clause: str, why: str) -> None:
    fill(store, 1)
    with pytest.raises(QueryError, match=why):
        store.requeue(clause, to="downloading")
    assert store.get("s", "e000").version == 1


def test_where_clause_parsing_keeps_quoted_text() -> None:
    assert check_where("title = 'it''s (a) ; -- test'") == "title = 'it''s (a) ; -- test'"
    assert check_where('"stage" IN (SELECT stage FROM episodes WHERE error_count > 0)')


def test_requeue_is_read_only_and_one_line_on_the_cli(store: Store) -> None:
    fill(store, 2)
    bad = cli(store.root, "requeue", "--query", "1); DELETE FROM episodes; --", "--to", "downloading", code=2)
    assert bad.stderr.count("\n") == 1 and "single SQL expression" in bad.stderr and not bad.stdout
    bad = cli(store.root, "requeue", "--query", "no_such_column = 1", code=2)
    assert bad.stderr.count("\n") == 1 and "no_such_column" in bad.stderr
    bad = cli(store.root, "requeue", "--query", "1 = 1", "--to", "nowhere", code=2)
    assert bad.stderr.count("\n") == 1 and "nowhere" in bad.stderr
    dry = json.loads(cli(store.root, "requeue", "--query", "1 = 1", "--to", "downloading", "--dry-run",
                         "--json").stdout)
    assert dry["dry_run"] and len(dry["changed"]) == 2
    assert Store.open(store.root).get("s", "e000").stage == "discovered"
    done = cli(store.root, "requeue", "--query", "1 = 1", "--to", "downloading", "--note", "go")
    assert "2 selected, 2 requeued, 0 left alone" in done.stdout
    bad = cli(store.root, "retry", "--stage", "downloading", "--since", "yesterday-ish", code=2)
    assert bad.stderr.count("\n") == 1 and "--since" in bad.stderr
    bad = cli(store.root, "retry", "s/e000", "--stage", "downloading", code=2)
    assert bad.stderr.count("\n") == 1


def test_retry_stage_on_the_cli(store: Store) -> None:
    k = failures(store)
    out = json.loads(cli(store.root, "retry", "--stage", "downloading", "--note", "fixed", "--json").stdout)
    assert sorted(c["episode"] for c in out["changed"]) == sorted([k["backoff"], k["hold"], k["give_up"]])
    assert "0 selected" in cli(store.root, "retry", "--stage", "downloading").stdout


def workers(root: str, n: int, out: Path) -> list[subprocess.Popen[bytes]]:
    env = dict(os.environ, PYTHONPATH=str(REPO), CLAIM_WORKER_IDLE="10")
    return [subprocess.Popen([sys.executable, "-m", "tests.claim_worker", root, "downloading", str(out), "0.02"],
                             cwd=REPO, env=env) for _ in range(n)]


def wait_for_lines(out: Path, n: int, procs: list[subprocess.Popen[bytes]]) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and any(p.poll() is None for p in procs):
        if out.exists() and len(out.read_text().splitlines()) >= n:
            return
        time.sleep(0.02)


@pytest.mark.slow
def test_requeue_while_workers_run_loses_no_work_and_no_write(shared: Store, tmp_path: Path) -> None:  # noqa: F811
    keys = fill(shared, 30)
    out = tmp_path / "done.txt"
    procs = workers(shared.root, 3, out)
    changed: Counter[str] = Counter()
    skipped: list[str] = []
    try:
        for round_ in range(3):  # while they run: finished ones back to downloading, running ones left alone
            wait_for_lines(out, 4 * (round_ + 1), procs)
            report = shared.requeue("stage IN ('downloading', 'downloaded')", to="downloading", note="redo")
            changed.update(c["episode"] for c in report.changed)
            skipped += [s["reason"] for s in report.skipped]
    finally:
        for p in procs:
            assert p.wait(timeout=300) == 0
    for p in workers(shared.root, 2, out):  # a second round runs what the last requeue sent back
        assert p.wait(timeout=300) == 0
    fresh = Store.open(shared.root)
    runs = Counter(line.split()[0] for line in out.read_text().splitlines())
    for key in keys:
        m = fresh.get(*key.split("/"))
        events = fresh.events(*key.split("/"))
        requeues = [e for e in events if e.kind == "requeue"]
        assert m.stage == "downloaded", key
        assert len(requeues) == changed[key]  # one event per change, none lost, none doubled
        assert all(e.message == "redo" for e in requeues)
        assert runs[key] == 1 + changed[key]  # every requeued episode was run again
        assert [e.version for e in events] == list(range(1, m.version + 1))
    assert sum(changed.values()) > 0
    assert all("being run" in why or "already ready" in why for why in skipped)
    assert not fresh.verify().problems


def test_a_bar_on_a_terminal_and_nothing_when_piped(store: Store) -> None:
    from tests.test_progress import run as run_in_pty

    fill(store, 30)
    code, out, err = run_in_pty(store.root, ["requeue", "--query", "1 = 1", "--to", "downloading", "--dry-run"],
                                terminal=True)
    assert code == 0 and b"requeueing" in err and "━".encode() in err, err[:300]
    assert "30 selected, 30 would requeue" in out
    code, out, err = run_in_pty(store.root, ["requeue", "--query", "1 = 1", "--to", "downloading"], terminal=False)
    assert code == 0 and b"requeueing" not in err and b"\x1b[" not in err
    assert "30 selected, 30 requeued" in out


def test_the_api_reports_progress_to_a_callback(store: Store) -> None:
    fill(store, 5)
    seen: list[tuple[int, int]] = []
    store.requeue("1 = 1", to="downloading", progress=lambda done, total: seen.append((done, total)))
    assert seen[0] == (0, 5) and seen[-1] == (5, 5)
