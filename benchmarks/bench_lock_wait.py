"""What waiting for a lock costs: the helper thread that blocks in ``flock()`` for a waiter.

    python benchmarks/bench_lock_wait.py [--waits 3000] [--holds 1500] [--rounds 5] [--repo PATH ...]

Two measures, each in fresh processes, the ``--repo`` checkouts of statekit interleaved round by
round (an A/B of two commits on the same machine in the same minutes):

- ``handover``: a waiter (``locks._LockWaiter``) for a lock nobody holds, ``--waits`` times in one
  process: the CPU and the wall time of handing the wait to a helper thread and being told it has
  the lock (the part of every contended wait that is not the wait itself);
- ``contended``: two processes taking one lock file (``locks.hold_lock``) ``--holds`` times each,
  holding it about 100 us (a sleep: an index write's length), as the index's writers in two
  worker processes take its gate: holds per second of the pair, and CPU per hold (both
  processes' user + system time over all their holds), with the share of takes that had to wait.

Medians of ``--rounds``; ratios of each repo to the first. Lower CPU is better.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from bench_scale import json_of_each  # noqa: E402  (worker processes started together)

HANDOVER = r"""
import json, os, sys, time
sys.path.insert(0, sys.argv[1])
from filelock import unlock_descriptor
from statekit.locks import _LockWaiter
n, path = int(sys.argv[2]), sys.argv[3]
fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
for _ in range(50):  # (warm up)
    assert _LockWaiter(fd).wait(5)
    unlock_descriptor(fd)
cpu, wall = time.process_time(), time.perf_counter()
for _ in range(n):
    assert _LockWaiter(fd).wait(5)
    unlock_descriptor(fd)
print(json.dumps({"cpu_us": (time.process_time() - cpu) / n * 1e6, "wall_us": (time.perf_counter() - wall) / n * 1e6}))
"""

CONTENDED = r"""
import json, os, sys, time
sys.path.insert(0, sys.argv[1])
from statekit.files import DISK
from statekit import locks
n, path, start_at = int(sys.argv[2]), sys.argv[3], float(sys.argv[4])
waited = 0
original = locks._LockWaiter.__init__
def counted(self, fd):
    global waited
    waited += 1
    original(self, fd)
locks._LockWaiter.__init__ = counted
while time.time() < start_at:
    time.sleep(0.001)
cpu, wall = time.process_time(), time.perf_counter()
for _ in range(n):
    with locks.hold_lock(DISK, path, 30, "the benchmark's lock"):
        time.sleep(0.0001)
    time.sleep(0.0002)  # the rest of a write (its fsyncs) outside the lock
print(json.dumps({"cpu": time.process_time() - cpu, "wall": time.perf_counter() - wall, "waited": waited}))
"""


def handover(repo: str, waits: int, folder: str) -> dict[str, float]:
    out = subprocess.run([sys.executable, "-c", HANDOVER, repo, str(waits), os.path.join(folder, "h.lock")],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout)  # type: ignore[no-any-return]


def contended(repo: str, holds: int, folder: str) -> dict[str, float]:
    start_at = time.time() + 1.0
    path = os.path.join(folder, "c.lock")
    results = json_of_each([[sys.executable, "-c", CONTENDED, repo, str(holds), path, str(start_at)]] * 2,
                           "a contending process")
    return {"holds_per_s": 2 * holds / max(r["wall"] for r in results),
            "cpu_us": sum(r["cpu"] for r in results) / (2 * holds) * 1e6,
            "waited": sum(r["waited"] for r in results) / (2 * holds)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--waits", type=int, default=3000)
    parser.add_argument("--holds", type=int, default=1500)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repo", action="append", help="statekit checkouts to compare (default: this one)")
    args = parser.parse_args()
    repos = args.repo or [str(HERE.parent)]
    hand: dict[str, list[dict[str, float]]] = {r: [] for r in repos}
    cont: dict[str, list[dict[str, float]]] = {r: [] for r in repos}
    with tempfile.TemporaryDirectory() as folder:
        for i in range(args.rounds):
            for repo in repos if i % 2 == 0 else repos[::-1]:
                hand[repo].append(handover(repo, args.waits, folder))
                cont[repo].append(contended(repo, args.holds, folder))

    def med(samples: list[dict[str, float]], key: str) -> float:
        return statistics.median(s[key] for s in samples)

    print(f"lock waits, medians of {args.rounds} rounds (load {os.getloadavg()[0]:.2f})")
    first = repos[0]
    for repo in repos:
        h_cpu, c_cpu = med(hand[repo], "cpu_us"), med(cont[repo], "cpu_us")
        print(f"  {repo}")
        print(f"    handover   {h_cpu:6.1f} us CPU ({h_cpu / med(hand[first], 'cpu_us'):.2f}x)  "
              f"{med(hand[repo], 'wall_us'):6.1f} us wall per wait")
        print(f"    contended  {med(cont[repo], 'holds_per_s'):6.0f} holds/s "
              f"({med(cont[repo], 'holds_per_s') / med(cont[first], 'holds_per_s'):.2f}x)  "
              f"{c_cpu:6.1f} us CPU per hold ({c_cpu / med(cont[first], 'cpu_us'):.2f}x)  "
              f"{med(cont[repo], 'waited'):.0%} of takes waited")


if __name__ == "__main__":
    main()
