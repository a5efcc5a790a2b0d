"""Leases that look after themselves (issue 15, the rest of item 4; item 2's
objects lock and per-store lock keys): ``store.run`` renews its lease in the
background, so a worker stuck in a stage keeps it and a killed one loses it
within its length; a rebuild keeps the live leases; with a PostgreSQL index the
objects lock is an advisory lock, and two stores on one server never block
each other.

Real processes; the PostgreSQL cases need STATEKIT_TEST_PG_URL (each works in
schemas of its own) and skip with a reason without it.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from statekit import Store
from statekit.index import engine_for
from statekit.index.tables import leases

PG = os.environ.get("STATEKIT_TEST_PG_URL")
REPO = Path(__file__).resolve().parent.parent
needs_pg = pytest.mark.skipif(not PG, reason="STATEKIT_TEST_PG_URL is not set (.ci/run sets it)")
ENV = dict(os.environ, PYTHONPATH=str(REPO))

HANG = r"""
import select, sys
from statekit import Store
root, lease, hang = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
store = Store.open(root)
run = store.run("s", "e000", "downloading", owner="stuck", lease_seconds=lease).__enter__()
print("started", run.run_id, flush=True)
# busy (or stuck) in the stage: no write of its own all this time, until the test writes a line (or `hang` s)
select.select([sys.stdin], [], [], hang)
run.__exit__(None, None, None)
print("done", flush=True)
"""


def schema_url(admin: object, name: str) -> str:
    assert PG is not None
    with admin.begin() as conn:  # type: ignore[attr-defined]
        conn.exec_driver_sql(f"CREATE SCHEMA {name}")
    sep = "&" if "?" in PG else "?"
    return f"{PG}{sep}options=-csearch_path%3D{name}"


@pytest.fixture
def pg_urls() -> Iterator[list[str]]:
    """Two PostgreSQL urls on one server and one database, each with a fresh schema (dropped after)."""
    assert PG is not None
    admin = engine_for(PG)
    names = ["statekit_l_" + uuid.uuid4().hex[:10] for _ in range(2)]
    try:
        yield [schema_url(admin, name) for name in names]
    finally:
        with admin.begin() as conn:
            for name in names:
                conn.exec_driver_sql(f"DROP SCHEMA IF EXISTS {name} CASCADE")
        admin.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=needs_pg)])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    """A store with one episode ready for ``downloading``: on SQLite, or with its index on PostgreSQL."""
    url = request.getfixturevalue("pg_urls")[0] if request.param == "postgresql" else None
    s = Store.init(tmp_path / "store", index_url=url)
    s.create("s", "e000")
    yield s
    s.close()


def start_hanging(store: Store, lease: float, hang: float) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen([sys.executable, "-c", HANG, store.root, str(lease), str(hang)], cwd=REPO, env=ENV,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], 60)
    line = proc.stdout.readline() if ready else ""
    assert line.startswith("started"), (line, proc.stderr.read() if proc.poll() is not None else "")
    return proc, line.split()[1]


def test_a_worker_stuck_in_a_stage_keeps_its_lease(store: Store) -> None:
    proc, run_id = start_hanging(store, lease=0.6, hang=2.2)
    try:
        time.sleep(1.8)  # three lease lengths without a write: only the background renewals keep it
        assert store.claim("downloading") is None
        assert store.next("downloading") == []
        assert store.recover().recovered == []
        holder, _ = store.index.leases.holder("s", "e000", store.clock())
        assert holder is not None and holder.run_id == run_id and holder.alive
        out, err = proc.communicate("go\n", timeout=60)  # its work is done: it finishes now
    finally:
        proc.kill()
    assert proc.returncode == 0 and out.split() == ["done"], err  # its finish was not refused
    ep = store.get("s", "e000")
    assert ep.stage == "downloaded"
    assert [e.kind for e in store.events("s", "e000")] == ["create", "start", "finish"]


def test_a_killed_worker_loses_its_lease_within_its_length(store: Store) -> None:
    lease = 1.5
    proc, run_id = start_hanging(store, lease=lease, hang=600)
    time.sleep(0.3)
    os.kill(proc.pid, signal.SIGKILL)
    killed = time.monotonic()
    proc.communicate(timeout=60)
    dead, at_kill = store.index.leases.holder("s", "e000", store.clock())
    assert dead is not None and dead.run_id == run_id
    # by the database's clock, what is left of the dead worker's lease is at most one lease length
    assert (dead.expires_at - at_kill).total_seconds() <= lease
    assert store.claim("downloading") is None  # not before its lease runs out
    taken = None
    while taken is None and time.monotonic() < killed + 30:  # a safeguard, not a measure
        taken = store.claim("downloading", owner="second")
        if taken is None:
            time.sleep(0.05)
    assert taken is not None and taken.episode_id == "e000"
    after, _ = store.index.leases.holder("s", "e000", store.clock())
    assert after is not None and after.owner == "second" and after.now >= dead.expires_at  # taken once it ran out
    with taken:
        pass
    kinds = [e.kind for e in store.events("s", "e000")]
    assert kinds == ["create", "start", "recovered", "start", "finish"]
    recovered = [e for e in store.events("s", "e000") if e.kind == "recovered"][0]
    assert run_id in str(recovered.model_dump())


def test_a_dropped_run_handle_stops_renewing(store: Store) -> None:
    store.run("s", "e000", "downloading", lease_seconds=0.3).__enter__()  # the handle is dropped at once
    deadline = time.monotonic() + 0.9  # three lease lengths: taken by then (looked for every 0.05 s until then)
    while (taken := store.claim("downloading", owner="second")) is None and time.monotonic() < deadline:
        time.sleep(0.05)
    taken = taken or store.claim("downloading", owner="second")
    assert taken is not None
    with taken:
        pass


def test_a_rebuild_keeps_a_live_runs_lease(store: Store) -> None:
    proc, run_id = start_hanging(store, lease=0.9, hang=2.5)
    try:
        report = store.rebuild_index()
        assert report.episodes == 1
        holder, _ = store.index.leases.holder("s", "e000", store.clock())  # there at once, not at the next renewal
        assert holder is not None and holder.run_id == run_id and holder.alive
        time.sleep(1.2)
        assert store.claim("downloading") is None
        out, err = proc.communicate("go\n", timeout=60)  # its work is done: it finishes now
    finally:
        proc.kill()
    assert proc.returncode == 0 and out.split() == ["done"], err
    assert [e.kind for e in store.events("s", "e000")] == ["create", "start", "finish"]


def test_a_rebuild_gives_a_live_lease_its_file_records_a_row(store: Store) -> None:
    run = store.run("s", "e000", "downloading", owner="w", lease_seconds=60, renew=False).__enter__()
    with store.index.engine.begin() as conn:  # the lease rows are lost (an index restored from elsewhere)
        conn.execute(leases.delete())
    store.rebuild_index()
    holder, _ = store.index.leases.holder("s", "e000", store.clock())
    file_lease = store.get("s", "e000").lease
    assert file_lease is not None and holder is not None
    assert (holder.run_id, holder.owner, holder.expires_at) == (run.run_id, "w", file_lease.expires_at)
    assert store.claim("downloading") is None
    run.__exit__(None, None, None)
    assert store.get("s", "e000").stage == "downloaded"


def test_a_lost_sqlite_index_is_rebuilt_with_the_files_live_leases(tmp_path: Path) -> None:
    store = Store.init(tmp_path / "store")
    store.create("s", "e000")
    run = store.run("s", "e000", "downloading", owner="w", lease_seconds=60, renew=False).__enter__()
    store.close()
    for name in os.listdir(Path(store.root, ".statekit")):
        if name.startswith("index.db"):
            os.unlink(Path(store.root, ".statekit", name))
    fresh = Store.open(store.root)
    fresh.rebuild_index()
    holder, _ = fresh.index.leases.holder("s", "e000", fresh.clock())
    assert holder is not None and holder.run_id == run.run_id and holder.alive
    assert fresh.claim("downloading") is None


# --- PostgreSQL: the objects lock and per-store keys ------------------------------------------------

TRY_ADD = r"""
import sys
from statekit import Store, LockTimeoutError
s = Store.open(sys.argv[1], lock_timeout=0.3)
try:
    s.add_asset("s", "e000", b"some audio", "audio", "take1")
    print("added")
except LockTimeoutError as exc:
    print("timeout", exc.one_line())
"""

TRY_ADVANCE = r"""
import sys
from statekit import Store, LockTimeoutError
s = Store.open(sys.argv[1], lock_timeout=0.3)
try:
    s.advance("s", "e000", "downloading")
    print("advanced")
except LockTimeoutError:
    print("timeout")
"""


def child(script: str, root: str) -> str:
    out = subprocess.run([sys.executable, "-c", script, root], capture_output=True, text=True, cwd=REPO, env=ENV,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


@needs_pg
def test_the_objects_lock_is_an_advisory_lock_on_postgres(tmp_path: Path, pg_urls: list[str]) -> None:
    store = Store.init(tmp_path / "store", index_url=pg_urls[0])
    store.create("s", "e000")
    with store.writer.locks.objects(exclusive=True, timeout=1.0):  # what gc holds
        assert child(TRY_ADD, store.root).startswith("timeout")
    with store.writer.locks.objects(exclusive=False, timeout=1.0):  # another add: shared
        assert child(TRY_ADD, store.root) == "added"
    assert not Path(store.root, ".statekit", "locks", "objects.lock").exists()
    assert store.get("s", "e000").assets["take1"].size == len(b"some audio")
    assert store.gc_objects().removed == []  # gc takes it exclusively, with nothing to remove


@needs_pg
def test_two_stores_on_one_server_do_not_block_each_other(tmp_path: Path, pg_urls: list[str]) -> None:
    a = Store.init(tmp_path / "a", index_url=pg_urls[0])
    b = Store.init(tmp_path / "b", index_url=pg_urls[1])
    for s in (a, b):
        s.create("s", "e000")  # the same show and episode names: the same lock names
    with a.writer.locks.episode("s", "e000"):
        assert child(TRY_ADVANCE, a.root) == "timeout"  # the lock is held, for store a
        assert child(TRY_ADVANCE, b.root) == "advanced"  # and store b is not blocked by it
    assert b.get("s", "e000").stage == "downloading" and a.get("s", "e000").stage == "discovered"
