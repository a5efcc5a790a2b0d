"""Where an ``advance`` spends its time when several processes write at once: per-phase times.

    python benchmarks/bench_procs_phases.py [--procs 1,2,4] [--per-proc 200] [--rounds 2] [--format json|yaml]

Each process advances its own episodes of one show (as ``bench_scale --procs`` does: each
episode twice), with timers wrapped around the write path's phases: the whole ``atomic_write``
(the file's, the log's and the folder's fsyncs), the index write (``Writer.index_quietly``) and,
within it, the wait for the index writers' gate (``Gate.take``). The episodes are read once
before the clock starts (the writer's cache holds them, as a worker that has just claimed them).
Printed per advance, means over the processes, medians of ``--rounds``: wall, CPU (user +
system, all threads), and each phase; advances per second of all the processes together and
its ratio to one process. The timers cost a few microseconds each: compare the counts of
processes with each other, not with ``bench_scale``'s figures.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from bench_scale import json_of_each  # noqa: E402  (worker processes started together)

WORKER = r"""
import json, sys, time
sys.path.insert(0, {repo!r})
from statekit import Store
import statekit.files as files, statekit.writes as writes, statekit.locks as locks
spent = {{}}
def timed(owner, name, key):
    original = getattr(owner, name)
    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            spent[key] = spent.get(key, 0.0) + time.perf_counter() - start
    setattr(owner, name, wrapper)
timed(files, "atomic_write", "fsyncs (atomic_write)")
timed(writes.Writer, "index_quietly", "index write")
timed(locks.Gate, "take", "  of it the gate's wait")
root, prefix, n, start_at = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
store = Store.open(root)
episodes = [f"{{prefix}}{{i:05d}}" for i in range(n)]
for ep in episodes:
    store.get("procs", ep)
while time.time() < start_at:
    time.sleep(0.001)
spent.clear()
wall, cpu = time.perf_counter(), time.process_time()
for ep in episodes:
    store.advance("procs", ep, "downloading")
for ep in episodes:
    store.advance("procs", ep, "failed")
print(json.dumps({{"wall": time.perf_counter() - wall, "cpu": time.process_time() - cpu, **spent}}))
"""


def run(top: str, n: int, per_proc: int, fmt: str) -> dict[str, float]:
    from statekit import Store

    root = os.path.join(top, f"procs{n}")
    shutil.rmtree(root, ignore_errors=True)
    store = Store.init(root, format=fmt)
    for p in range(n):
        for i in range(per_proc):
            store.create("procs", f"p{p}x{i:05d}")
    store.close()
    start_at = time.time() + 1.0
    results = json_of_each([[sys.executable, "-c", WORKER.format(repo=str(HERE.parent)), root, f"p{p}x",
                             str(per_proc), str(start_at)] for p in range(n)], "a worker process")
    shutil.rmtree(root)
    writes = 2 * per_proc
    out = {key: statistics.mean(r.get(key, 0.0) for r in results) / writes * 1e6 for key in results[0]}
    out["advances/s"] = n * writes / max(r["wall"] for r in results)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--procs", default="1,2,4", help="counts of processes (default 1,2,4)")
    parser.add_argument("--per-proc", type=int, default=200, help="episodes each process advances twice")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--format", choices=["yaml", "json"], default="json")
    args = parser.parse_args()
    counts = [int(c) for c in args.procs.split(",")]
    samples: dict[int, list[dict[str, float]]] = {n: [] for n in counts}
    with tempfile.TemporaryDirectory(dir=os.environ.get("STATEKIT_BENCH_DIR")) as top:
        for r in range(args.rounds):
            for n in counts if r % 2 == 0 else counts[::-1]:
                samples[n].append(run(top, n, args.per_proc, args.format))
    print(f"an advance's phases, per advance, medians of {args.rounds} rounds ({args.format}; "
          f"load {os.getloadavg()[0]:.2f})")
    keys = ["wall", "cpu", "fsyncs (atomic_write)", "index write", "  of it the gate's wait"]
    print(f"  {'':26}" + "".join(f"{n:>6} proc{'s' if n > 1 else ' '}" for n in counts))
    for key in keys:
        print(f"  {key:26}" + "".join(f"{statistics.median(s[key] for s in samples[n]):8.0f} us" for n in counts))
    one = statistics.median(s["advances/s"] for s in samples[counts[0]])
    print(f"  {'advances/s (all)':26}" + "".join(
        f"{statistics.median(s['advances/s'] for s in samples[n]):8.0f}   " for n in counts))
    print(f"  {'ratio to ' + str(counts[0]):26}" + "".join(
        f"{statistics.median(s['advances/s'] for s in samples[n]) / one:8.2f}x  " for n in counts))


if __name__ == "__main__":
    main()
