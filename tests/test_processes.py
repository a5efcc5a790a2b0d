"""Real processes: compare-and-set under contention, and kill -9 mid-write."""

from __future__ import annotations

import hashlib
import json
import os
import random
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from statekit import Store

from .conftest import episode_file

WORKER = str(Path(__file__).with_name("proc_worker.py"))
pytestmark = pytest.mark.slow


def spawn(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, WORKER, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def test_eight_processes_compare_and_set_on_one_episode(tmp_path: Path) -> None:
    store = Store.init(tmp_path / "s")
    store.create("s", "e")
    procs = [spawn("cas", store.root, "s", "e", "200") for _ in range(8)]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
        results.append(json.loads(out))
    ok = sum(r["ok"] for r in results)
    assert sum(r["lock_timeout"] for r in results) == 0
    assert sum(r["ok"] + r["conflict"] for r in results) == 1600
    final = store.get("s", "e")
    events = store.events("s", "e")
    assert final.version == ok + 1 == len(events)
    assert [e.version for e in events] == list(range(1, final.version + 1))
    # the moves alternate exactly: nobody advanced from a stage they had not seen
    moves = [(e.from_stage, e.to_stage) for e in events[1:]]
    assert all(dst == ("failed" if src == "downloading" else "downloading") for src, dst in moves)


def read_acks(proc: subprocess.Popen[str], until: float, most: int = 10**9) -> list[int]:
    return [int(line.split()[1]) for line in lines_of(proc, until, most=most)]


def check_consistent(store: Store, acked: int) -> int:
    ep = store.get("s", "e")  # parses: no torn file
    assert ep.version >= acked, "an acknowledged write was lost"
    events = store.events("s", "e")
    assert [e.version for e in events] == list(range(1, ep.version + 1))
    assert events[-1].sha256 == hashlib.sha256(episode_file(store, "s", "e").read_bytes()).hexdigest()
    if "downloading" in ep.checkpoints:  # a recorded checkpoint is intact
        assert store.load_checkpoint("s", "e", "downloading") is not None
    return ep.version


def test_kill_minus_nine_loses_nothing_and_tears_nothing(tmp_path: Path) -> None:
    store = Store.init(tmp_path / "s")
    store.create("s", "e")
    folder = Path(store.root, "shows/s/episodes/e")
    rng = random.Random(1234)
    acked = 0
    # 15 in the default suite (each at a random moment of a write), 100 with STATEKIT_STRESS=1
    kills = int(os.environ.get("STATEKIT_KILLS", "100" if os.environ.get("STATEKIT_STRESS") else "15"))
    leftovers_seen = 0
    for _ in range(kills):
        proc = spawn("writer", store.root, "s", "e")
        first = read_acks(proc, time.monotonic() + 30, most=1)  # wait until it is writing
        assert first, proc.stderr.read() if proc.stderr else ""
        acks = first + read_acks(proc, time.monotonic() + rng.uniform(0.0, 0.05))
        os.kill(proc.pid, signal.SIGKILL)
        rest, _ = proc.communicate()
        acks += [int(line.split()[1]) for line in rest.splitlines() if line.startswith("ack ")]
        acked = max([acked, *acks])
        fresh = Store.open(store.root)
        version = check_consistent(fresh, acked)
        leftovers_seen += len(list(folder.rglob(".*.tmp")))
        # the next write cleans up whatever the killed writer left
        after = fresh.update("s", "e", title=f"after {version}")
        assert after.version == version + 1
        assert list(folder.rglob(".*.tmp")) == []
        acked = after.version
    assert acked > kills  # the writers really wrote


def test_eight_writer_processes_keep_the_index_exact(tmp_path: Path) -> None:
    store = Store.init(tmp_path / "s")
    for i in range(8):
        store.create("s", f"own{i}")
    store.create("s", "shared")
    procs = [spawn("cas", store.root, "s", "shared" if i % 2 else f"own{i}", "120") for i in range(8)]
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
        assert "locked" not in err and "index missed" not in err, err  # nothing surfaced, nothing missed
        assert json.loads(out)["lock_timeout"] == 0
    from .conftest import index_rows

    fresh = Store.open(store.root)
    written = index_rows(fresh)
    assert fresh.verify().clean
    fresh.rebuild_index()
    assert index_rows(fresh) == written


def test_two_processes_opening_a_store_without_an_index_build_it_once(tmp_path: Path) -> None:
    store = Store.init(tmp_path / "s")
    for i in range(300):
        store.create("s", f"e{i:03d}")
    store.close()
    for suffix in ("", "-wal", "-shm"):
        Path(store.root, ".statekit", f"index.db{suffix}").unlink(missing_ok=True)
    code = ("import sys; from statekit import Store; "
            "print(sum(Store.open(sys.argv[1]).counts().values()))")
    procs = [subprocess.Popen([sys.executable, "-c", code, store.root], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(3)]
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        assert out.strip() == "300"
    assert Store.open(store.root).verify().clean


# --- leased runs in real processes ------------------------------------------------------------


def run_store(root: Path) -> Store:
    from statekit.pipeline import ARCHIVE

    config = ARCHIVE.to_config()
    config["max_attempts"]["downloading"] = 50  # the test kills on purpose: no give-up
    config["retry"] = {**config["retry"], "jitter": 0.0}
    return Store.init(root, pipeline=config)


def lines_of(proc: subprocess.Popen[str], until: float, stop: str | None = None, most: int = 10**9) -> list[str]:
    out: list[str] = []
    assert proc.stdout is not None
    while time.monotonic() < until and len(out) < most:
        ready, _, _ = select.select([proc.stdout], [], [], max(0.0, until - time.monotonic()))
        if not ready:
            break
        line = proc.stdout.readline()
        if not line:
            break
        out.append(line.strip())
        if stop is not None and line.startswith(stop):
            break
    return out


def last_checkpoint(lines: list[str]) -> int:
    return max([int(x.split()[1]) for x in lines if x.startswith("ckpt ")], default=0)


def test_a_worker_killed_inside_a_run_is_recovered_without_losing_work(tmp_path: Path) -> None:
    store = run_store(tmp_path / "s")
    store.create("s", "e")
    n, lease, cycles = 30, 1.0, 4
    rng = random.Random(77)
    acked = 0
    for cycle in range(cycles):
        proc = spawn("run", store.root, "s", "e", "downloading", str(n), str(lease), "0.02")
        seen = lines_of(proc, time.monotonic() + 30, stop="resume")
        assert seen and seen[-1].startswith("resume"), proc.stderr.read() if proc.stderr else ""
        assert int(seen[-1].split()[1]) >= acked  # it resumes from every checkpoint it was told about
        seen += lines_of(proc, time.monotonic() + rng.uniform(0.05, 0.15))
        os.kill(proc.pid, signal.SIGKILL)
        killed_at = time.monotonic()
        rest, _ = proc.communicate()
        seen += rest.splitlines()
        assert "done" not in seen
        acked = max(acked, last_checkpoint(seen))
        fresh = Store.open(store.root)
        ep = fresh.get("s", "e")
        assert ep.stage == "downloading" and ep.lease is not None  # it died holding the lease
        assert (fresh.load_checkpoint("s", "e", "downloading") or {}).get("i", 0) >= acked
        assert fresh.next("downloading") == []  # not before the lease runs out
        # its renewals died with it: the lease runs out within its length of the kill
        time.sleep(max(0.0, killed_at + lease + 0.05 - time.monotonic()))
        report = fresh.recover()
        assert [r["episode"] for r in report.recovered] == ["s/e"], cycle
        ep = fresh.get("s", "e")
        assert ep.stage == "failed" and ep.error_history[-1].kind == "interrupted"
        assert [e.key for e in fresh.next("downloading")] == ["s/e"]  # ready again at once
    proc = spawn("run", store.root, "s", "e", "downloading", str(n), str(lease), "0.0")
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert int(out.splitlines()[0].split()[1]) >= acked and out.splitlines()[-1] == "done"
    fresh = Store.open(store.root)
    ep = fresh.get("s", "e")
    events = fresh.events("s", "e")
    assert ep.stage == "downloaded" and fresh.load_checkpoint("s", "e", "downloading") == {"i": n}
    assert [e.kind for e in events].count("finish") == 1  # one success, never two
    assert [e.kind for e in events].count("recovered") == cycles
    assert ep.attempts["downloading"] == cycles + 1
    # every checkpoint was paid once; one whose episode write the kill cut off is not charged
    assert round((n - cycles) * 0.01, 9) <= ep.cost_total <= round(n * 0.01, 9)
    assert fresh.verify().clean


def test_a_stale_worker_is_rejected_after_another_took_over(tmp_path: Path) -> None:
    store = run_store(tmp_path / "s")
    store.create("s", "e")
    stale = spawn("stale", store.root, "s", "e", "downloading", "0.5", "0.5")
    assert lines_of(stale, time.monotonic() + 30, most=1) == ["started"]
    # the worker's machine freezes (its lease renewals with it: a busy worker would keep its lease)
    os.kill(stale.pid, signal.SIGSTOP)
    try:
        fresh = spawn("run", store.root, "s", "e", "downloading", "3", "30", "0.0")  # waits for the lease to run out
        out, err = fresh.communicate(timeout=60)
        assert fresh.returncode == 0 and out.splitlines()[-1] == "done", err
    finally:
        os.kill(stale.pid, signal.SIGCONT)
    late, err = stale.communicate(timeout=60)
    assert stale.returncode == 0, err
    assert late.split("\n")[:2] == ["rejected", "rejected finish"]
    ep = Store.open(store.root).get("s", "e")
    assert ep.stage == "downloaded" and ep.cost_total == 0.03  # nothing of the stale worker's got in
    kinds = [e.kind for e in Store.open(store.root).events("s", "e")]
    assert kinds == ["create", "start", "recovered", "start", "checkpoint", "checkpoint", "checkpoint", "finish"]


def test_the_show_order_is_right_under_concurrent_creates_and_deletes(tmp_path: Path) -> None:
    store = Store.init(tmp_path / "s")
    store.create("s", "first")
    show_file = Path(store.root, "shows/s/show.yaml")
    show_file.write_text(show_file.read_text().replace("order: []", "order: [c029, first]"))  # a hand-set head
    before = show_file.read_bytes()
    procs = [spawn("churn", store.root, "s", prefix, "30") for prefix in ("a", "b", "c", "d")]
    kept: list[str] = ["first"]
    deleted: list[str] = []
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
        result = json.loads(out)
        kept += result["kept"]
        deleted += result["deleted"]
    assert show_file.read_bytes() == before  # nobody rewrote it: no create or delete of one can be lost
    episodes = {e.episode_id: e for e in store.list(show="s")}
    assert set(episodes) == set(kept) and not set(deleted) & set(episodes)
    head = ["c029", "first"]  # c029 was listed before it existed; never deleted (the last one made)
    rest = sorted((e for e in episodes.values() if e.episode_id not in head),
                  key=lambda e: (e.created_at, e.episode_id))
    want = head + [e.episode_id for e in rest]
    assert store.get_show("s").episodes == want
    assert [e.episode_id for e in store.list(show="s")] == want  # the index agrees
    assert store.verify().clean
    store.rebuild_index()
    assert [e.episode_id for e in store.list(show="s")] == want  # and a rebuild from the files alone


def test_processes_racing_to_create_the_same_episodes_make_each_once(tmp_path: Path) -> None:
    """Four processes create the same 30 new episodes at once: each is made by exactly one of
    them, the others are told it exists, and no folder holds more than the episode and its one event."""
    store = Store.init(tmp_path / "s", format="json")
    store.create("s", "first")
    start = time.time() + 1.5  # after every process has opened the store
    procs = [spawn("race", store.root, "s", "30", str(start)) for _ in range(4)]
    outcomes: dict[str, list[str]] = {}
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
        for i, what in json.loads(out).items():
            outcomes.setdefault(i, []).append(what)
    assert len(outcomes) == 30 and all(sorted(o) == ["exists"] * 3 + ["won"] for o in outcomes.values())
    folder = Path(store.root, "shows/s/episodes")
    for i in range(30):
        assert sorted(os.listdir(folder / f"r{i:03d}")) == ["episode.json", "events.jsonl"]
        assert [e.kind for e in store.events("s", f"r{i:03d}")] == ["create"]
    assert len(store.list(show="s")) == 31
    assert store.verify().clean
