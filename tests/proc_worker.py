"""A worker run as a real process by the crash and concurrency tests.

    python proc_worker.py cas ROOT SHOW EP N      N compare-and-set advances; prints a JSON summary
    python proc_worker.py writer ROOT SHOW EP     writes until killed; prints "ack VERSION" after each
    python proc_worker.py run ROOT SHOW EP STAGE N LEASE PAUSE
                                                  a leased run of STAGE saving checkpoints 1..N (resuming
                                                  from an earlier attempt's); prints "resume I", "ckpt I", "done"
    python proc_worker.py stale ROOT SHOW EP STAGE LEASE SLEEP
                                                  starts a run, sleeps past its lease, then tries to write
    python proc_worker.py churn ROOT SHOW PREFIX N
                                                  creates SHOW/PREFIX<i> for i < N, deleting every third one it
                                                  made; prints {"kept": [...], "deleted": [...]}
    python proc_worker.py claim ROOT SHOW OP N START
                                                  at time START, for i < N: gives SHOW/e<i> the archive_identifier
                                                  v<i> by OP (create, update or advance); prints {i: won|duplicate}
    python proc_worker.py race ROOT SHOW N START  at time START, creates SHOW/r<i> for i < N, as the other
                                                  racers do; prints {i: won|exists}
"""

from __future__ import annotations

import json
import os
import sys
import time

from statekit import (
    DuplicateError,
    EpisodeExistsError,
    LeaseExpiredError,
    LockTimeoutError,
    NotReadyError,
    Store,
    VersionConflictError,
)


def cas(store: Store, show: str, ep: str, n: int) -> dict[str, int]:
    done = {"ok": 0, "conflict": 0, "lock_timeout": 0}
    for _ in range(n):
        current = store.get(show, ep)
        target = "failed" if current.stage == "downloading" else "downloading"
        try:
            store.advance(show, ep, target, expected_version=current.version)
            done["ok"] += 1
        except VersionConflictError:
            done["conflict"] += 1
        except LockTimeoutError:
            done["lock_timeout"] += 1
    return done


def writer(store: Store, show: str, ep: str) -> None:
    i = 0
    while True:
        i += 1
        current = store.get(show, ep)
        if i % 5 == 0:
            new = store.save_checkpoint(show, ep, "downloading", {"i": i, "blob": "x" * (i % 700)})
        elif i % 7 == 0:
            new = store.update(show, ep, metadata={"i": i, "note": "y" * (i % 300)})
        else:
            target = "failed" if current.stage == "downloading" else "downloading"
            new = store.advance(show, ep, target, cost=0.001, message=f"write {i}")
        sys.stdout.write(f"ack {new.version}\n")
        sys.stdout.flush()


def say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def run(store: Store, show: str, ep: str, stage: str, n: int, lease: float, pause: float) -> None:
    deadline = time.monotonic() + 60
    while True:  # wait until the episode is ready (a dead worker's lease must run out first)
        try:
            handle = store.run(show, ep, stage, owner=f"pid{os.getpid()}", lease_seconds=lease).__enter__()
            break
        except NotReadyError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)
    with_handle = handle
    start = (with_handle.resume or {}).get("i", 0)
    say(f"resume {start}")
    try:
        for i in range(start + 1, n + 1):
            time.sleep(pause)
            with_handle.checkpoint({"i": i}, cost=0.01)
            say(f"ckpt {i}")
    except BaseException as exc:
        with_handle.__exit__(type(exc), exc, exc.__traceback__)
        raise
    with_handle.__exit__(None, None, None)
    say("done")


def stale(store: Store, show: str, ep: str, stage: str, lease: float, sleep: float) -> None:
    handle = store.run(show, ep, stage, owner="stale", lease_seconds=lease).__enter__()
    say("started")
    time.sleep(sleep)
    try:
        handle.checkpoint({"i": 999}, cost=5.0)
        say("accepted")
    except LeaseExpiredError:
        say("rejected")
    try:
        handle.__exit__(None, None, None)
        say("finished")
    except VersionConflictError:  # LeaseExpiredError is one
        say("rejected finish")


def claim(store: Store, show: str, op: str, n: int, start: float) -> dict[int, str]:
    time.sleep(max(0.0, start - time.time()))  # every process starts at once
    done = {}
    for i in range(n):
        ep, metadata = f"e{i}", {"archive_identifier": f"v{i}", "by": show}
        try:
            if op == "create":
                store.create(show, ep, metadata=metadata)
            elif op == "update":
                store.update(show, ep, metadata=metadata)
            else:
                store.advance(show, ep, "downloading", metadata=metadata)
            done[i] = "won"
        except DuplicateError:
            done[i] = "duplicate"
    return done


def race(store: Store, show: str, n: int, start: float) -> dict[int, str]:
    time.sleep(max(0.0, start - time.time()))  # every process starts at once
    done = {}
    for i in range(n):
        try:
            store.create(show, f"r{i:03d}")
            done[i] = "won"
        except EpisodeExistsError:
            done[i] = "exists"
    return done


def churn(store: Store, show: str, prefix: str, n: int) -> dict[str, list[str]]:
    kept: list[str] = []
    deleted: list[str] = []
    for i in range(n):
        ep = f"{prefix}{i:03d}"
        store.create(show, ep)
        kept.append(ep)
        if i % 3 == 2:
            gone = kept.pop(len(kept) // 2)
            store.delete(show, gone)
            deleted.append(gone)
    return {"kept": kept, "deleted": deleted}


if __name__ == "__main__":
    mode, root, show, ep = sys.argv[1:5]
    s = Store.open(root)
    if mode == "cas":
        print(json.dumps(cas(s, show, ep, int(sys.argv[5]))))
    elif mode == "run":
        run(s, show, ep, sys.argv[5], int(sys.argv[6]), float(sys.argv[7]), float(sys.argv[8]))
    elif mode == "churn":
        print(json.dumps(churn(s, show, ep, int(sys.argv[5]))))
    elif mode == "claim":
        print(json.dumps(claim(s, show, ep, int(sys.argv[5]), float(sys.argv[6]))))
    elif mode == "race":
        print(json.dumps(race(s, show, int(ep), float(sys.argv[5]))))
    elif mode == "stale":
        stale(s, show, ep, sys.argv[5], float(sys.argv[6]), float(sys.argv[7]))
    else:
        writer(s, show, ep)
