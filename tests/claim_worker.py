"""A worker process for the claim tests: claims episodes for a stage until
none is ready, appending "SHOW/EP PID RUN_ID" to OUT for each run it finishes.

    python -m tests.claim_worker ROOT STAGE OUT [SLEEP_S [LEASE_S [STARTED]]]

CLAIM_WORKER_IDLE: how many looks (0.05 s apart) find nothing before it stops (3).
CLAIM_WORKER_DONE: a file; once it exists, the first look that finds nothing stops the worker
(the test has seen all the work done: no need to wait out the idle looks).
CLAIM_WORKER_GO: a file; the worker, once its store is open, writes GO.ready.PID and claims
nothing until GO exists (the test starts every worker's claims at once: process start-up
under load can let the first worker do all the work before the others look).
STARTED, if given, gets "SHOW/EP HOST PID" as each run starts (before its work).

The index comes from statekit.yaml or STATEKIT_INDEX_URL, as for any worker.
"""

from __future__ import annotations

import os
import sys
import time

from statekit import Store


def main() -> None:
    root, stage, out = sys.argv[1:4]
    pause = float(sys.argv[4]) if len(sys.argv) > 4 else 0.0
    lease = float(sys.argv[5]) if len(sys.argv) > 5 else None
    started = sys.argv[6] if len(sys.argv) > 6 else None
    store = Store.open(root)
    go = os.environ.get("CLAIM_WORKER_GO")
    if go:
        note(f"{go}.ready.{os.getpid()}", "")
        deadline = time.monotonic() + 120
        while not os.path.exists(go) and time.monotonic() < deadline:
            time.sleep(0.01)
    idle = 0
    while True:
        run = store.claim(stage, owner=f"{os.uname().nodename}:{os.getpid()}", lease_seconds=lease)
        if run is None:
            idle += 1
            if idle > int(os.environ.get("CLAIM_WORKER_IDLE", "3")):  # nothing ready, several looks running: done
                return
            done = os.environ.get("CLAIM_WORKER_DONE")
            if done and os.path.exists(done):
                return
            time.sleep(0.05)
            continue
        idle = 0
        if started:
            note(started, f"{run.show_id}/{run.episode_id} {os.uname().nodename} {os.getpid()}\n")
        with run:
            if pause:
                time.sleep(pause)
        note(out, f"{run.show_id}/{run.episode_id} {os.getpid()} {run.run_id} {os.uname().nodename}\n")


def note(path: str, line: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


if __name__ == "__main__":
    main()
