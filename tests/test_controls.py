"""Operator controls (issue 19, items 1-3): pause and resume a stage, per-stage
limits enforced in the claim, and an episode's priority.

Worker processes are real (``statekit worker`` subprocesses). The PostgreSQL
cases need STATEKIT_TEST_PG_URL; each works in a schema of its own.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from click.testing import CliRunner

from statekit import ClaimRefused, Store
from statekit.cli import main
from statekit.errors import StatekitError

PG = os.environ.get("STATEKIT_TEST_PG_URL")
REPO = Path(__file__).resolve().parent.parent
needs_pg = pytest.mark.skipif(not PG, reason="STATEKIT_TEST_PG_URL is not set (.ci/run sets it)")

# a stage's work in any language: note its start and end (this machine's clock), take a while
JOB = ('echo "$STATEKIT_SHOW/$STATEKIT_EPISODE start $(date +%s.%N)" >> "$LOG"; sleep "$WORK"; '
       'echo "$STATEKIT_SHOW/$STATEKIT_EPISODE end $(date +%s.%N)" >> "$LOG"')


OPENED: list[Store] = []
"""Stores a test opened again: closed before its schema is dropped (a pooled connection would hold it)."""


def reopen(root: str) -> Store:
    store = Store.open(root)
    OPENED.append(store)
    return store


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=needs_pg)])
def shared(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    """A store on SQLite, or with its index on PostgreSQL (what machines share)."""
    url = request.getfixturevalue("pg_url") if request.param == "postgresql" else None
    store = Store.init(tmp_path / "store", index_url=url)
    yield store
    store.close()
    while OPENED:
        OPENED.pop().close()


def fill(store: Store, n: int, show: str = "s") -> list[str]:
    for i in range(n):
        store.create(show, f"e{i:03d}")
    return [f"{show}/e{i:03d}" for i in range(n)]


def set_limits(store: Store, text: str) -> Store:
    """Write ``limits:`` into statekit.yaml and open the store again (workers read it when they start)."""
    path = Path(store.root, "statekit.yaml")
    path.write_text(path.read_text() + f"limits: {text}\n")
    store.close()
    return reopen(store.root)


def env_for(store: Store, log: Path, work: float) -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(REPO), LOG=str(log), WORK=str(work))
    if store.index_url:
        env["STATEKIT_INDEX_URL"] = store.index_url
    return env


def start_worker(store: Store, env: dict[str, str], *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "statekit.cli", "--root", store.root, "worker", "downloading",
                             "--poll", "0.05", *extra, "--", "sh", "-c", JOB], cwd=REPO, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def intervals(log: Path) -> dict[str, list[float]]:
    """Each run's [start, end] as its command noted them."""
    runs: dict[str, list[float]] = {}
    for line in log.read_text().splitlines() if log.exists() else []:
        key, what, at = line.split()
        runs.setdefault(key, [0.0, 0.0])[0 if what == "start" else 1] = float(at)
    return runs


def most_at_once(runs: dict[str, list[float]]) -> int:
    edges = sorted([(s, 1) for s, _ in runs.values()] + [(e, -1) for _, e in runs.values()], key=lambda x: (x[0], x[1]))
    live = peak = 0
    for _, step in edges:
        live += step
        peak = max(peak, live)
    return peak


# --- 1. pause, drain, resume ---------------------------------------------------------------


def test_pause_stops_new_claims_while_running_ones_finish(shared: Store, tmp_path: Path) -> None:
    """Three worker processes; the stage is paused mid-way: nothing new starts,
    the runs already going finish, the workers wait and say why; resume lets them finish the rest."""
    keys = fill(shared, 24)
    log = tmp_path / "ran.txt"
    env = env_for(shared, log, 0.3)
    workers = [start_worker(shared, env) for _ in range(3)]
    try:
        deadline = time.monotonic() + 60
        while len(intervals(log)) < 4 and time.monotonic() < deadline:
            time.sleep(0.02)
        done = shared.pause("downloading", by="ops", note="quota")
        assert done.new and done.pause.show is None
        paused_at = time.time()
        deadline = time.monotonic() + 30  # the stage drains: every run that began finishes
        while not all(end > 0 for _, end in intervals(log).values()) and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)
        settled = intervals(log)
        assert all(end > 0 for _, end in settled.values()) and len(settled) < len(keys)
        time.sleep(0.5)  # each worker looks again every 0.05 s (--poll): ten looks each, and nothing may start
        assert intervals(log) == settled  # and nothing new started while paused
        # at most one claim per worker can have read the file just before the pause and start after it
        assert sum(start > paused_at for start, _ in settled.values()) <= len(workers)
        assert shared.next("downloading") == [] and shared.claim("downloading") is None
        assert len(shared.list(stage="discovered")) == len(keys) - len(settled)
        shared.resume("downloading", by="ops")
        deadline = time.monotonic() + 120
        while len(shared.list(stage="downloaded")) < len(keys) and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        for w in workers:
            w.terminate()
    outputs = [w.communicate(timeout=60) for w in workers]
    assert sorted(intervals(log)) == keys  # each episode ran once, none lost
    assert any("waiting: stage 'downloading' is paused for every show" in e for _, e in outputs), outputs
    lines = shared.controls.store_events()
    assert [(x["kind"], x["stage"], x["by"]) for x in lines] == [("pause", "downloading", "ops"),
                                                                  ("resume", "downloading", "ops")]


def test_pause_one_show_and_idle_exit(shared: Store, tmp_path: Path) -> None:
    fill(shared, 3, show="a")
    fill(shared, 3, show="b")
    shared.pause("downloading", show="a")
    assert {e.show_id for e in shared.next("downloading")} == {"b"}
    refused = shared.try_claim("downloading", show="a")
    assert isinstance(refused, ClaimRefused) and refused.reason == "paused" and "show a" in refused.message
    log = tmp_path / "ran.txt"
    proc = start_worker(shared, env_for(shared, log, 0), "--idle-exit")
    _, errors = proc.communicate(timeout=120)
    assert proc.returncode == 0, errors
    assert sorted(k.split("/")[0] for k in intervals(log)) == ["b", "b", "b"]
    # the whole stage paused: --idle-exit stops at once, saying why
    shared.pause("downloading")
    proc = start_worker(shared, env_for(shared, log, 0), "--idle-exit")
    _, errors = proc.communicate(timeout=120)
    assert proc.returncode == 0 and "is paused for every show" in errors
    with pytest.raises(StatekitError, match="paused for every show, not show by show"):
        shared.resume("downloading", show="a")
    assert [p.show for p in shared.resume("downloading")] == ["a", None]
    assert len(shared.next("downloading")) == 3


def test_a_pause_is_durable_survives_a_rebuild_and_shows_in_status(tmp_path: Path) -> None:
    store = Store.init(tmp_path / "store")
    fill(store, 2)
    store.pause("downloading", note="platform quota")
    assert store.pause("downloading").new is False  # already paused: nothing written again
    store.rebuild_index()
    fresh = reopen(store.root)  # another process (or machine) reads the same file
    assert [p.stage for p in fresh.paused()] == ["downloading"]
    assert fresh.claim("downloading") is None and fresh.next("downloading") == []
    result = CliRunner().invoke(main, ["--root", store.root, "status"])
    assert result.exit_code == 0 and "paused" in result.output and "platform quota" in result.output
    result = CliRunner().invoke(main, ["--root", store.root, "controls", "--json"])
    assert json.loads(result.output)["paused"][0]["note"] == "platform quota"
    assert len(fresh.controls.store_events()) == 1
    result = CliRunner().invoke(main, ["--root", store.root, "report"])
    assert "PAUSED downloading for every show" in result.output and "platform quota" in result.output
    result = CliRunner().invoke(main, ["--root", store.root, "report", "--format", "json"])
    assert json.loads(result.output)["paused"][0]["stage"] == "downloading"
    result = CliRunner().invoke(main, ["--root", store.root, "report", "--format", "html"])
    assert "<b>Paused</b> (statekit pause): downloading for every show" in result.output
    store.resume("downloading")
    result = CliRunner().invoke(main, ["--root", store.root, "report", "--format", "json"])
    assert "paused" not in json.loads(result.output)  # a report without pauses keeps format 1's keys


def test_pause_and_resume_refuse_bad_input_in_one_line(tmp_path: Path) -> None:
    store = Store.init(tmp_path / "store")
    fill(store, 1)
    runner = CliRunner()
    for args, words in ((["pause", "nosuch"], "unknown stage"), (["pause", "downloading", "--show", "zz"], "not found"),
                        (["pause", "../x"], "stage"), (["prioritize", "s/e000", "high"], "not a valid integer"),
                        (["prioritize", "s/e000", "99999999999"], "priority must be"),
                        (["prioritize", "s/nosuch", "3"], "not found")):
        result = runner.invoke(main, ["--root", store.root, *args])
        assert result.exit_code == 2 and words in result.output and "Traceback" not in result.output, args
        assert len(result.output.strip().splitlines()) == 1
    assert store.paused() == [] and store.get("s", "e000").version == 1
    assert not Path(store.root, ".statekit", "store-events.jsonl").exists()
    Path(store.root, ".statekit", "paused.json").write_text("{not json")
    result = runner.invoke(main, ["--root", store.root, "next", "downloading"])
    assert result.exit_code == 2 and "paused.json" in result.output  # a damaged file never means "not paused"


# --- 2. per-stage limits ------------------------------------------------------------------


@pytest.mark.parametrize("text, words", [
    ('{uploading: {rate: "6/fortnight"}}', "rate must look like"),
    ("{published: {concurrency: 1}}", "not a stage workers run"),
    ("{uploading: {}}", "neither concurrency nor rate"),
    ("{uploading: {concurrency: 0}}", "concurrency"),
    ("{uploading: {concurrency: true}}", "concurrency"),
])
def test_bad_limits_are_one_clear_error(tmp_path: Path, text: str, words: str) -> None:
    store = Store.init(tmp_path / "store")
    path = Path(store.root, "statekit.yaml")
    path.write_text(path.read_text() + f"limits: {text}\n")
    result = CliRunner().invoke(main, ["--root", store.root, "status"])
    assert result.exit_code == 2 and words in result.output and "statekit.yaml" in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_concurrency_limit_holds_across_worker_processes(shared: Store, tmp_path: Path) -> None:
    """Four workers, concurrency 2: never more than two runs at once (each run's
    command notes its start and end), every episode done once, refused workers say why."""
    keys = fill(shared, 12)
    store = set_limits(shared, "{downloading: {concurrency: 2}}")
    log = tmp_path / "ran.txt"
    workers = [start_worker(store, env_for(store, log, 0.25), "--idle-exit") for _ in range(4)]
    outputs = [w.communicate(timeout=180) for w in workers]
    assert all(w.returncode == 0 for w in workers), outputs
    runs = intervals(log)
    assert sorted(runs) == keys
    assert most_at_once(runs) <= 2
    assert any("concurrency limit" in e for _, e in outputs)
    assert all(e.stage == "downloaded" for e in reopen(store.root).list())


def test_racing_for_the_last_slot_one_wins(shared: Store) -> None:
    """Concurrency 1: with a run live, every claim (here and in other processes) is refused."""
    fill(shared, 3)
    store = set_limits(shared, "{downloading: {concurrency: 1}}")
    run = store.claim("downloading")
    assert run is not None
    refused = store.try_claim("downloading")
    assert isinstance(refused, ClaimRefused) and refused.reason == "concurrency"
    code = ("import sys; from statekit import Store; s = Store.open(sys.argv[1]); "
            "print(repr(s.try_claim('downloading')))")
    env = dict(os.environ, PYTHONPATH=str(REPO), **({"STATEKIT_INDEX_URL": store.index_url} if store.index_url else {}))
    procs = [subprocess.Popen([sys.executable, "-c", code, store.root], env=env, cwd=REPO, text=True,
                              stdout=subprocess.PIPE) for _ in range(4)]
    assert all("reason='concurrency'" in p.communicate(timeout=60)[0] for p in procs)
    with run:
        pass
    second = store.claim("downloading")  # the slot is free again once the run ended
    assert second is not None
    with second:
        pass


def test_rate_limit_counts_starts_in_the_sliding_window(shared: Store, tmp_path: Path) -> None:
    """Rate 3/minute: three worker processes start exactly three runs, then all wait, saying when the next may start."""
    fill(shared, 8)
    store = set_limits(shared, '{downloading: {rate: "3/minute"}}')
    log = tmp_path / "ran.txt"
    workers = [start_worker(store, env_for(store, log, 0.05)) for _ in range(3)]
    try:
        deadline = time.monotonic() + 60
        while len(store.list(stage="downloaded")) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)  # time enough for any fourth start (a worker past the limit claims at its next look, 0.05 s)
    finally:
        for w in workers:
            w.terminate()
    outputs = [w.communicate(timeout=60) for w in workers]
    assert len(intervals(log)) == 3, outputs
    assert any("rate limit: 3 runs started in the last minute, at most 3" in e for _, e in outputs)
    refused = store.try_claim("downloading")
    assert isinstance(refused, ClaimRefused) and refused.reason == "rate"
    assert refused.retry_after is not None and 50 < refused.retry_after <= 60
    result = CliRunner().invoke(main, ["--root", store.root, "controls", "--json"])
    assert json.loads(result.output)["limits"] == [
        {"stage": "downloading", "concurrency": None, "live": 0, "rate": "3/minute", "started": 3}]


def test_rate_window_slides_and_survives_a_rebuild(tmp_path: Path) -> None:
    now = [datetime(2026, 12, 1, 12, 0, tzinfo=timezone.utc)]
    store = Store.init(tmp_path / "store")
    fill(store, 6)
    store = set_limits(store, '{downloading: {rate: "2/hour"}}')
    store.clock = lambda: now[0]
    for _ in range(2):
        run = store.claim("downloading")
        assert run is not None
        with run:
            pass
        now[0] += timedelta(minutes=10)
    refused = store.try_claim("downloading")
    assert isinstance(refused, ClaimRefused) and refused.reason == "rate"
    assert refused.retry_after == pytest.approx(40 * 60)  # the first start leaves the window then
    store.rebuild_index()  # the starts come back from the start events the files record
    assert isinstance(store.try_claim("downloading"), ClaimRefused)
    now[0] += timedelta(minutes=40, seconds=1)
    run = store.claim("downloading")  # one start has left the window
    assert run is not None
    with run:
        pass
    assert isinstance(store.try_claim("downloading"), ClaimRefused)


# --- 3. priority -----------------------------------------------------------------------------


def test_priority_orders_claims_before_the_longest_waiting(shared: Store) -> None:
    fill(shared, 5)
    shared.prioritize("s", "e003", 10, note="sponsor asked")
    shared.prioritize("s", "e001", 5)
    shared.prioritize("s", "e000", -1)
    assert [e.episode_id for e in shared.next("downloading")] == ["e003", "e001", "e002", "e004", "e000"]
    event = shared.events("s", "e003")[-1]
    assert event.kind == "prioritize" and event.message == "sponsor asked"
    order = []
    while (run := shared.claim("downloading")) is not None:
        order.append(run.episode_id)
        with run:
            pass
    assert order == ["e003", "e001", "e002", "e004", "e000"]
    assert shared.get("s", "e003").priority == 10
    columns, rows = shared.sql("SELECT episode_id, priority FROM episodes ORDER BY priority DESC, episode_id")
    assert rows[0] == ("e003", 10) and rows[-1] == ("e000", -1)


def test_priority_by_hand_is_adopted_by_sync(tmp_path: Path) -> None:
    store = Store.init(tmp_path / "store")
    fill(store, 3)
    path = Path(store.episode_path("s", "e002"))
    assert "priority" not in path.read_text()  # a file without a priority stays as it was
    path.write_text(path.read_text() + "priority: 7  # rush: the sponsor's episode\n")
    store.sync()
    assert store.next("downloading")[0].episode_id == "e002"
    assert store.events("s", "e002")[-1].kind == "external_edit"
    assert "# rush" in path.read_text()


def test_priority_with_worker_processes(shared: Store, tmp_path: Path) -> None:
    """One worker process takes the episodes in priority order."""
    fill(shared, 6)
    for ep, n in (("e005", 3), ("e002", 2)):
        shared.prioritize("s", ep, n)
    log = tmp_path / "ran.txt"
    proc = start_worker(shared, env_for(shared, log, 0), "--idle-exit")
    _, errors = proc.communicate(timeout=120)
    assert proc.returncode == 0, errors
    order = [line.split()[0] for line in log.read_text().splitlines() if " start " in line]
    assert order == ["s/e005", "s/e002", "s/e000", "s/e001", "s/e003", "s/e004"]
