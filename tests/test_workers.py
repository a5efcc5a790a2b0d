"""Workers on many machines (issue 15): the index url, atomic claims, leases
that renew themselves and expire by the database's clock, advisory locks.

The PostgreSQL cases need STATEKIT_TEST_PG_URL (.ci/run sets it); each test
works in a schema of its own.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import yaml

from statekit import Store
from statekit.errors import LeaseExpiredError, NotReadyError, ValidationError
from statekit.index import engine_for

PG = os.environ.get("STATEKIT_TEST_PG_URL")
REPO = Path(__file__).resolve().parent.parent
needs_pg = pytest.mark.skipif(not PG, reason="STATEKIT_TEST_PG_URL is not set (.ci/run sets it)")


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=needs_pg)])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def shared(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> Store:
    """A store on SQLite, or with its index on PostgreSQL."""
    url = request.getfixturevalue("pg_url") if kind == "postgresql" else None
    store = Store.init(tmp_path / "store", index_url=url)
    yield store
    store.close()


def fill(store: Store, n: int, show: str = "s") -> list[str]:
    keys = []
    for i in range(n):
        store.create(show, f"e{i:03d}")
        keys.append(f"{show}/e{i:03d}")
    return keys


# --- 1. the index url ---------------------------------------------------------------


def test_a_plain_store_keeps_sqlite_and_its_config_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("STATEKIT_INDEX_URL", raising=False)
    store = Store.init(tmp_path / "plain")
    assert store.index_url is None and store.index.dialect == "sqlite"
    assert "index" not in yaml.safe_load(Path(store.root, "statekit.yaml").read_text())


@needs_pg
def test_postgres_store_from_yaml_and_env(tmp_path: Path, pg_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SK_TEST_INDEX", pg_url)
    store = Store.init(tmp_path / "store", index_url="${SK_TEST_INDEX}")
    written = yaml.safe_load(Path(store.root, "statekit.yaml").read_text())
    assert written["index"] == {"url": "${SK_TEST_INDEX}"}  # no secret in the file
    assert store.index.dialect == "postgresql"
    store.create("s", "a")
    assert [e.episode_id for e in Store.open(store.root).list()] == ["a"]
    # the environment overrides the file
    monkeypatch.delenv("SK_TEST_INDEX")
    with pytest.raises(ValidationError, match="SK_TEST_INDEX"):
        Store.open(store.root)
    monkeypatch.setenv("STATEKIT_INDEX_URL", pg_url)
    again = Store.open(store.root)
    assert again.index.dialect == "postgresql"
    assert [e.episode_id for e in again.list()] == ["a"]
    again.rebuild_index()
    assert [e.episode_id for e in again.list()] == ["a"] and again.verify().clean


def test_bad_index_url_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="PostgreSQL url"):
        Store.init(tmp_path / "store", index_url="mysql://x/y")
    assert not (tmp_path / "store").exists()


def test_cli_init_index_url_refuses_bad_url(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "statekit.cli", "init", str(tmp_path / "s"), "--index-url", "ftp://x"],
                          capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and "PostgreSQL url" in proc.stderr
    assert not (tmp_path / "s").exists()


# --- 3. claims ------------------------------------------------------------------------


def test_claim_takes_longest_waiting_and_runs(shared: Store) -> None:
    fill(shared, 3)
    run = shared.claim("downloading", owner="w1")
    assert run is not None and (run.show_id, run.episode_id, run.stage) == ("s", "e000", "downloading")
    assert shared.get("s", "e000").lease.run_id == run.run_id
    other = shared.claim("downloading", owner="w2")
    assert other is not None and other.episode_id == "e001"
    with run:
        run.checkpoint({"half": True})
    assert shared.get("s", "e000").stage == "downloaded"
    with other:
        pass
    last = shared.claim("downloading", show="s")
    assert last is not None and last.episode_id == "e002"
    with last:
        pass
    assert shared.claim("downloading") is None
    assert shared.index.leases.count() == 0  # every run gave its lease row back


def test_claim_does_not_take_an_episode_store_run_holds(shared: Store) -> None:
    fill(shared, 1)
    with shared.run("s", "e000", "downloading"):
        assert shared.claim("downloading") is None
        with pytest.raises(NotReadyError) as info, shared.run("s", "e000", "downloading"):
            pass
        assert info.value.reason == "leased"


def test_lease_renews_itself_and_expires_when_its_worker_stops(shared: Store) -> None:
    fill(shared, 1)
    run = shared.claim("downloading", lease_seconds=0.6)
    assert run is not None
    time.sleep(1.5)  # more than two lease lengths: only the background renewals keep it
    assert shared.claim("downloading") is None
    run._renewer.stop()  # the worker "dies": nobody renews any more  # noqa: SLF001
    time.sleep(0.8)
    taken = shared.claim("downloading", owner="second")
    assert taken is not None and taken.episode_id == "e000"
    with pytest.raises(LeaseExpiredError):
        run.checkpoint({"late": True})  # the first worker can no longer write
    with taken:
        pass
    kinds = [e.kind for e in shared.events("s", "e000")]
    assert kinds.count("start") == 2 and "recovered" in kinds and kinds[-1] == "finish"


def run_workers(store: Store, n: int, out: Path, env: dict[str, str], pause: float = 0.0,
                together: bool = False) -> list[str]:
    """``n`` claim workers until the stage is done; ``together``: none claims before all are started."""
    go = out.parent / f"{out.name}.go"
    if together:
        env = dict(env, CLAIM_WORKER_GO=str(go))
    procs = [subprocess.Popen([sys.executable, "-m", "tests.claim_worker", store.root, "downloading", str(out),
                               str(pause)], cwd=REPO, env=env) for _ in range(n)]
    if together:
        deadline = time.monotonic() + 120
        while len(list(out.parent.glob(f"{go.name}.ready.*"))) < n and time.monotonic() < deadline:
            assert all(p.poll() is None for p in procs), "a claim worker stopped before its start"
            time.sleep(0.02)
        go.touch()
    for p in procs:
        assert p.wait(timeout=300) == 0
    return out.read_text().splitlines() if out.exists() else []


def test_many_processes_claim_each_episode_exactly_once(shared: Store, tmp_path: Path) -> None:
    keys = fill(shared, 40)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    # all four claim at once, each run 0.02 s long (one worker alone would need 0.8 s for the 40)
    lines = run_workers(shared, 4, tmp_path / "done.txt", env, pause=0.02, together=True)
    done = Counter(line.split()[0] for line in lines)
    assert sorted(done) == keys and set(done.values()) == {1}, done  # no episode lost, none twice
    assert len({line.split()[1] for line in lines}) > 1  # the work was shared
    fresh = Store.open(shared.root)
    assert all(e.stage == "downloaded" for e in fresh.list())
    for key in keys:
        starts = [e for e in fresh.events(*key.split("/")) if e.kind == "start"]
        assert len(starts) == 1  # no claim lost to a race: every start succeeded first time


@needs_pg
def test_advisory_locks_not_files_on_postgres(tmp_path: Path, pg_url: str) -> None:
    store = Store.init(tmp_path / "store", index_url=pg_url)
    fill(store, 2)
    store.advance("s", "e000", "downloading")
    assert not (Path(store.root) / ".statekit" / "locks" / "episodes").exists()
    with store.writer.locks.episode("s", "e001"):
        proc = subprocess.run(
            [sys.executable, "-c", "import sys; from statekit import Store; s = Store.open(sys.argv[1], lock_timeout=0.3)\n"
             "try:\n s.advance('s', 'e001', 'downloading')\nexcept Exception as e: print(type(e).__name__)",
             store.root], capture_output=True, text=True, cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)))
        assert "LockTimeoutError" in proc.stdout, proc.stderr
    store.advance("s", "e001", "downloading")


@needs_pg
def test_a_lost_lock_connection_refuses_the_commit(tmp_path: Path, pg_url: str) -> None:
    store = Store.init(tmp_path / "store", index_url=pg_url)
    fill(store, 1)
    locks = store.writer.locks
    before = store.get("s", "e000")

    def kill_own_connection(m, now):  # the server ends the session holding the lock, mid-write
        pid = locks._local.conn.info.backend_pid  # this thread's locking session (only it: tests run in parallel)
        with engine_for(PG).connect() as admin:
            admin.exec_driver_sql("SELECT pg_terminate_backend(%(pid)s)", {"pid": pid})
            admin.commit()
        return m.model_copy(update={"version": m.version + 1, "title": "changed"}), {"kind": "update"}

    with pytest.raises(Exception, match="lost the lock"):
        store.writer.write("s", "e000", kill_own_connection)
    assert store.get("s", "e000") == before
    assert locks is store.writer.locks


# --- 5. the worker command ------------------------------------------------------------------

STAGE_SCRIPT = r"""
import json, os, subprocess, sys
ep = os.environ["STATEKIT_EPISODE"]
assert os.path.isdir(os.environ["STATEKIT_RUN_DIR"])
open(os.path.join(os.environ["STATEKIT_RUN_DIR"], "scratch.tmp"), "w").write("x")
with open(sys.argv[1], "a") as f:
    f.write(f"{os.environ['STATEKIT_SHOW']}/{ep} {os.environ['STATEKIT_STAGE']} {os.environ['STATEKIT_RUN_DIR']}\n")
sk = [sys.executable, "-m", "statekit.cli"]
subprocess.run([*sk, "checkpoint", json.dumps({"ep": ep})], check=True)
subprocess.run([*sk, "cost", "0.5", "--note", "api"], check=True)
if ep.endswith("1"):
    print("bad input: no audio track", file=sys.stderr)
    sys.exit(3)
"""


def test_worker_command_runs_a_stage_in_any_language(shared: Store, tmp_path: Path) -> None:
    fill(shared, 3)
    Path(shared.root, "statekit.yaml").write_text(Path(shared.root, "statekit.yaml").read_text()
                                                  + "worker:\n  exit_codes: {'3': user_input_invalid}\n")
    script = tmp_path / "stage.py"
    script.write_text(STAGE_SCRIPT)
    log = tmp_path / "ran.txt"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    if shared.index_url:
        env["STATEKIT_INDEX_URL"] = shared.index_url
    proc = subprocess.run([sys.executable, "-m", "statekit.cli", "--root", shared.root, "worker", "downloading",
                           "--idle-exit", "--", sys.executable, str(script), str(log)],
                          capture_output=True, text=True, cwd=REPO, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    ran = log.read_text().splitlines()
    assert sorted(line.split()[0] for line in ran) == ["s/e000", "s/e001", "s/e002"]
    assert all(not os.path.exists(line.split()[2]) for line in ran)  # the scratch folders are gone
    fresh = Store.open(shared.root)
    good, bad = fresh.get("s", "e000"), fresh.get("s", "e001")
    assert good.stage == "downloaded" and good.costs == {"downloading": 0.5}
    assert fresh.load_checkpoint("s", "e000", "downloading") == {"ep": "e000"}
    assert bad.stage == "failed" and bad.error_history[-1].kind == "user_input_invalid"
    assert "no audio track" in bad.error_history[-1].message
    # outside a run, the run commands say so in one line
    outside = subprocess.run([sys.executable, "-m", "statekit.cli", "--root", shared.root, "cost", "1"],
                             capture_output=True, text=True, cwd=REPO, env=env)
    assert outside.returncode == 2 and "not inside a statekit worker's run" in outside.stderr
    assert "Traceback" not in outside.stderr


def test_worker_sigterm_finishes_the_run_and_a_second_stops_it(shared: Store, tmp_path: Path) -> None:
    import signal

    fill(shared, 3)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    if shared.index_url:
        env["STATEKIT_INDEX_URL"] = shared.index_url
    marker = tmp_path / "started"
    cmd = [sys.executable, "-c", f"import time, pathlib; pathlib.Path({str(marker)!r}).touch(); time.sleep(1.0)"]
    worker = subprocess.Popen([sys.executable, "-m", "statekit.cli", "--root", shared.root, "worker", "downloading",
                               "--", *cmd], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 30
    while not marker.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=30) == 0
    stages = sorted(e.stage for e in Store.open(shared.root).list())
    assert stages == ["discovered", "discovered", "downloaded"]  # the current run finished, no other began

    marker.unlink()
    sleeper = [sys.executable, "-c", f"import time, pathlib; pathlib.Path({str(marker)!r}).touch(); time.sleep(60)"]
    worker = subprocess.Popen([sys.executable, "-m", "statekit.cli", "--root", shared.root, "worker", "downloading",
                               "--grace", "1", "--", *sleeper], cwd=REPO, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE)
    while not marker.exists() and time.monotonic() < deadline + 30:
        time.sleep(0.02)
    worker.send_signal(signal.SIGTERM)
    time.sleep(0.2)
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=30) == 0
    fresh = Store.open(shared.root)
    stopped = [e for e in fresh.list() if e.stage == "failed"]
    assert len(stopped) == 1 and stopped[0].error_history[-1].kind == "interrupted"
    assert stopped[0].lease is None and fresh.index.leases.count() == 0  # the lease was given back
