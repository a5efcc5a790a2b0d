"""A worker run as a real process by the crash and concurrency tests.

    python proc_worker.py cas ROOT SHOW EP N      N compare-and-set advances; prints a JSON summary
    python proc_worker.py writer ROOT SHOW EP     writes until killed; prints "ack VERSION" after each
"""

from __future__ import annotations

import json
import sys

from statekit import LockTimeoutError, Store, VersionConflictError


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


if __name__ == "__main__":
    mode, root, show, ep = sys.argv[1:5]
    s = Store.open(root)
    if mode == "cas":
        print(json.dumps(cas(s, show, ep, int(sys.argv[5]))))
    else:
        writer(s, show, ep)
