"""Random kill -9 of many worker processes sharing a set of episodes (issue 5).

Workers (``workers.py mix``) mix leased runs handed out by ``store.next()``
with plain compare-and-set writes on the same episodes; the test SIGKILLs a
random worker at random moments and starts a replacement that finishes the
dead worker's share. Afterwards nothing may be torn, lost or out of order:
every episode and checkpoint reads, every acknowledged write is in its log
with the version, kind and stage the worker was told, the logs are
contiguous legal walks of the pipeline, ``verify`` finds nothing but index
lag (which it documents ``sync`` repairs), ``sync`` makes the index equal a
fresh rebuild, and ``recover`` brings back every episode a dead worker held.

Figures of each run: printed (``-s``) and written to
``$STATEKIT_FIGURES_DIR/concurrency_kill.json`` when that is set.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import signal
import time
from collections import Counter
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any

from statekit import Store

from ..conftest import episode_file, index_rows
from .conftest import size
from .figures import report as record_figures
from .workers import FORBIDDEN, LOOP_PIPELINE, RUN_STAGES, spawn

SHOW = "kill"
LEASE = LOOP_PIPELINE["retry"]["lease_seconds"]


@dataclass
class Ack:
    show: str
    ep: str
    version: int
    stage: str
    kind: str
    worker: str


@dataclass
class Slot:
    """One of the N worker positions; a killed worker is replaced in its slot."""

    index: int
    target: int
    acked: int = 0
    incarnation: int = 0
    proc: Any = None
    conn: Connection | None = None
    ready: bool = False
    killed: bool = False
    owner: str = ""
    summaries: list[dict[str, int]] = field(default_factory=list)
    err_paths: list[Path] = field(default_factory=list)


class Fleet:
    """Runs the worker slots, reads their acknowledgements, kills on request."""

    def __init__(self, root: str, logs: Path, workers: int, per_worker: int, seed: int) -> None:
        self.root = root
        self.logs = logs
        self.seed = seed
        self.slots = [Slot(i, per_worker) for i in range(workers)]
        self.acks: list[Ack] = []
        self.kills = 0
        self.spawned = 0

    def spawn(self, slot: Slot) -> None:
        slot.incarnation += 1
        slot.owner = f"w{slot.index}.{slot.incarnation}"
        err = self.logs / f"{slot.owner}.err"
        slot.err_paths.append(err)
        slot.proc, slot.conn = spawn(
            ["mix", self.root, SHOW, str(slot.target - slot.acked),
             str(self.seed * 1000 + slot.index * 100 + slot.incarnation), slot.owner, str(LEASE)], err)
        slot.ready, slot.killed = False, False
        self.spawned += 1

    def live(self) -> list[Slot]:
        return [s for s in self.slots if s.proc is not None]

    def pump(self, timeout: float) -> None:
        """Read what the workers said; reap the ones that ended; replace the killed."""
        for slot in self.slots:
            if slot.proc is None and slot.acked < slot.target:
                self.spawn(slot)
        by_conn = {s.conn: s for s in self.live() if s.conn is not None}
        for conn in wait(list(by_conn), timeout):
            slot = by_conn[conn]  # type: ignore[index]
            try:
                self.hear(slot, slot.conn.recv_bytes().decode())  # type: ignore[union-attr]
                continue
            except EOFError:
                pass
            slot.proc.join()
            code = slot.proc.exitcode
            slot.conn.close()  # type: ignore[union-attr]
            slot.proc = slot.conn = None
            if not slot.killed:
                err = slot.err_paths[-1].read_text()
                assert code == 0, f"worker {slot.owner} exited {code}: {err}"
                assert slot.acked >= slot.target, (slot.owner, slot.acked, slot.target)
            elif code == 0 and slot.acked >= slot.target:  # it finished its share before the signal landed
                self.kills -= 1  # not a kill: another one is made instead
            else:
                assert code == -signal.SIGKILL, (slot.owner, code)

    def hear(self, slot: Slot, line: str) -> None:
        if line == "ready":
            slot.ready = True
        elif line.startswith("ack "):
            _, show, ep, version, stage, kind = line.split()
            self.acks.append(Ack(show, ep, int(version), stage, kind, slot.owner))
            slot.acked += 1
        elif line.startswith("done "):
            slot.summaries.append(json.loads(line[5:]))
        else:
            raise AssertionError(f"worker {slot.owner} said {line!r}")

    def kill_one(self, rng: random.Random) -> bool:
        victims = [s for s in self.live() if s.ready and not s.killed and s.acked < s.target]
        if not victims:
            return False
        victim = rng.choice(victims)
        os.kill(victim.proc.pid, signal.SIGKILL)
        victim.killed = True
        self.kills += 1
        return True


def make_store(root: Path, episodes: int) -> Store:
    store = Store.init(root, pipeline=LOOP_PIPELINE)
    for i in range(episodes):
        store.create(SHOW, f"e{i:02d}", title=f"episode {i}")
    return store


def replay(store: Store, ep: str) -> dict[int, tuple[str, str]]:
    """Check one episode's file and log; (stage, kind) after each version."""
    model = store.get(SHOW, ep)  # parses: no torn file
    events = store.events(SHOW, ep)
    assert [e.version for e in events] == list(range(1, model.version + 1)), f"{ep}: versions not contiguous"
    assert events[-1].sha256 == hashlib.sha256(episode_file(store, SHOW, ep).read_bytes()).hexdigest()
    stages: dict[int, tuple[str, str]] = {}
    stage: str | None = None
    for e in events:
        if e.to_stage is not None:
            if e.kind != "create":  # every move starts where the last one ended, along an edge of the graph
                assert e.from_stage == stage, (ep, e.version, e.kind, e.from_stage, stage)
                assert e.to_stage in store.pipeline.next_stages(stage), (ep, e.version, stage, e.to_stage)
            stage = e.to_stage
        assert stage is not None
        stages[e.version] = (stage, e.kind)
    assert stage == model.stage
    for name in model.checkpoints:  # every checkpoint the file records is intact
        assert store.load_checkpoint(SHOW, ep, name) is not None
    return stages


def hold_and_kill(root: str, logs: Path) -> str:
    """A last worker killed inside a run: ``recover`` has at least one lease to bring back."""
    store = Store.open(root)
    deadline = time.monotonic() + 3 * LEASE + 10  # every episode may still be leased by a killed worker
    ready: list = []
    while not ready:
        for stage in RUN_STAGES:
            ready = store.next(stage)
            if ready:
                break
        else:
            assert time.monotonic() < deadline, "no episode became ready for a run"
            time.sleep(0.05)
    ep = ready[0].episode_id
    proc, conn = spawn(["hold", root, SHOW, ep, stage, str(LEASE)], logs / "hold.err")
    line = conn.recv_bytes().decode() if conn.poll(60) else ""
    assert line.startswith(f"ack {SHOW} {ep} "), (line, (logs / "hold.err").read_text())
    os.kill(proc.pid, signal.SIGKILL)
    proc.join()
    conn.close()
    return ep


def test_random_kill_minus_nine_of_workers_sharing_episodes(tmp_path: Path) -> None:
    workers, per_worker, kills, episodes = size(4, 8), size(40, 200), size(10, 100), size(8, 12)
    seed = int(os.environ.get("STATEKIT_SEED", "20240505"))
    rng = random.Random(seed)
    store = make_store(tmp_path / "store", episodes)
    eps = [f"e{i:02d}" for i in range(episodes)]
    logs = tmp_path / "logs"
    logs.mkdir()
    fleet = Fleet(store.root, logs, workers, per_worker, seed)
    total = workers * per_worker
    # kill when the acknowledged writes pass these marks, each after a further random delay
    marks = sorted(rng.sample(range(max(1, total // 50), total * 9 // 10), kills))
    started = time.monotonic()
    kill_at: float | None = None
    while fleet.live() or any(s.acked < s.target for s in fleet.slots):
        assert time.monotonic() - started < 900, "the workers did not finish"
        fleet.pump(0.005)
        now = time.monotonic()
        if kill_at is None and fleet.kills < kills and len(fleet.acks) >= marks[fleet.kills]:
            kill_at = now + rng.uniform(0.0, 0.03)
        if kill_at is not None and now >= kill_at and fleet.kill_one(rng):
            kill_at = None
    seconds = time.monotonic() - started
    assert fleet.kills == kills
    held = hold_and_kill(store.root, logs)

    # nothing surfaced to any worker, nothing logged that should not be
    for slot in fleet.slots:
        for err in slot.err_paths:
            text = err.read_text()
            for bad in FORBIDDEN:
                assert bad not in text, f"{err.name}: {text[-2000:]}"

    # every file reads, every log is a contiguous legal walk, every acknowledged write is in it
    fresh = Store.open(store.root)
    stages = {ep: replay(fresh, ep) for ep in eps}
    versions = {ep: fresh.get(SHOW, ep).version for ep in eps}
    seen: set[tuple[str, int]] = set()
    for a in fleet.acks:
        assert (a.ep, a.version) not in seen, f"two workers were told they wrote {a.ep} version {a.version}"
        seen.add((a.ep, a.version))
        assert a.version <= versions[a.ep], f"acknowledged {a.ep} v{a.version} lost (file at {versions[a.ep]})"
        assert stages[a.ep][a.version] == (a.stage, a.kind), (a, stages[a.ep][a.version])
    assert len(fleet.acks) >= total

    # verify: only index lag (a worker killed between its file and its index write), which sync repairs
    before = fresh.verify()
    kinds = Counter(p.kind for p in before.problems)
    assert set(kinds) <= {"index"}, [p.message for p in before.problems if p.kind != "index"]
    synced = fresh.sync()
    assert fresh.verify().clean, [p.message for p in fresh.verify().problems]
    copy = tmp_path / "copy"
    shutil.copytree(store.root, copy)
    rebuilt = Store.open(copy)
    rebuilt.rebuild_index()
    assert index_rows(fresh) == index_rows(rebuilt)

    # every episode a dead worker still holds comes back once its lease has run out
    leased = {ep: m.lease for ep in eps if (m := fresh.get(SHOW, ep)).lease is not None}
    assert held in leased
    latest = max(lease.expires_at for lease in leased.values() if lease is not None)
    time.sleep(max(0.0, (latest - fresh.clock()).total_seconds()) + 0.05)
    report = fresh.recover()
    assert sorted(r["episode"] for r in report.recovered) == sorted(f"{SHOW}/{ep}" for ep in leased)
    assert report.problems == [] and report.gave_up == []
    for ep in leased:
        m = fresh.get(SHOW, ep)
        assert m.lease is None and m.stage == "failed" and m.error_history[-1].kind == "interrupted"
        assert ep in {e.episode_id for e in fresh.next(m.previous_stage or "", limit=100)}
        replay(fresh, ep)
    assert fresh.verify().clean

    summaries = [s for slot in fleet.slots for s in slot.summaries]
    counted = Counter[str]()
    for s in summaries:
        counted.update(s)
    kinds_logged = Counter(e.kind for ep in eps for e in fresh.events(SHOW, ep))
    record_figures("concurrency_kill", {
        "workers": workers, "transitions_per_worker": per_worker, "episodes": episodes, "seed": seed,
        "kills": fleet.kills, "finale_kills": 1, "processes_started": fleet.spawned, "seconds": round(seconds, 1),
        "acks_checked": len(fleet.acks), "acks_by_kind": dict(Counter(a.kind for a in fleet.acks)),
        "events_in_logs": sum(kinds_logged.values()), "events_by_kind": dict(kinds_logged),
        # writes that committed but whose worker was killed before it could say so (creates, the
        # recoveries, which no worker acknowledges, and the finale's acknowledged start left out)
        "committed_unacknowledged": sum(kinds_logged.values()) - len(fleet.acks) - episodes
        - kinds_logged["recovered"] - 1,
        "finished_worker_counters": dict(counted),
        "verify_before_sync": dict(kinds), "sync_report": str(synced),
        "leases_left_by_kills": len(leased) - 1, "recovered_at_end": len(report.recovered),
        "recovered_during_run": kinds_logged["recovered"] - len(report.recovered),
    })


def test_sync_restores_the_event_of_a_writer_killed_before_its_index_write(tmp_path: Path) -> None:
    """Regression (found by the test above): a writer killed after its file and
    event were durable but before its index write, then overtaken by another
    writer, left the index without that event; the later write moved the
    episode row on, so ``sync`` took the row as current and never restored the
    event (``verify`` kept reporting "the index's events differ")."""
    store = Store.init(tmp_path / "store")
    store.create("s", "e")
    proc, conn = spawn(["die-before-index", store.root, "s", "e", "downloading"], tmp_path / "err")
    proc.join(60)
    conn.close()
    assert proc.exitcode == -signal.SIGKILL, (tmp_path / "err").read_text()
    fresh = Store.open(store.root)
    assert fresh.get("s", "e").version == 2  # the killed write is durable
    fresh.advance("s", "e", "downloaded")  # another writer moves the episode (and its index row) on
    problems = [p.message for p in fresh.verify().problems]
    assert problems == ["s/e: the index's events differ from events.jsonl (run 'statekit sync')"]
    report = fresh.sync()
    assert report.reindexed == ["s/e"]
    assert fresh.verify().clean, [p.message for p in fresh.verify().problems]
    rows = index_rows(fresh)
    assert [r[2] for r in rows["events"]] == [1, 2, 3]
    fresh.rebuild_index()
    assert index_rows(fresh) == rows
