"""A worker process for the claim tests: claims episodes for a stage until
none is ready, appending "SHOW/EP PID RUN_ID" to OUT for each run it finishes.

    python -m tests.claim_worker ROOT STAGE OUT [SLEEP_S]

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
    store = Store.open(root)
    idle = 0
    while True:
        run = store.claim(stage, owner=f"{os.uname().nodename}:{os.getpid()}")
        if run is None:
            idle += 1
            if idle > 3:  # nothing ready, several times running: done
                return
            time.sleep(0.05)
            continue
        idle = 0
        with run:
            if pause:
                time.sleep(pause)
        fd = os.open(out, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, f"{run.show_id}/{run.episode_id} {os.getpid()} {run.run_id}\n".encode())
        finally:
            os.close(fd)


if __name__ == "__main__":
    main()
