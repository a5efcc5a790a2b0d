"""Interleaved A/B of CPU per durable ``advance`` between two checkouts of statekit.

    python benchmarks/ab_advance_cpu.py BASE_DIR NEW_DIR [--rounds 8] [--ops 200] [--format json|yaml]

Each round runs one child process per checkout in turn (the order alternates): it makes a
store, advances one episode back and forth (downloading <-> failed, with a cost and a
message, as ``bench_cpu.py``) 20 times to warm up, then ``--ops`` times, and reports the
CPU of the loop (``time.process_time``: user + system, every thread) and its wall time per
call (``--no-fsync``: with ``os.fsync`` stubbed, so the disk's noise is out and what is left is
the process's own work). Printed: the medians per checkout and the ratio new/base, with the load average.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile

CHILD = """
import os, sys, tempfile, time
sys.path.insert(0, sys.argv[1])
if sys.argv[5] == "1":  # fsync stubbed: the disk's noise out, the process's own CPU left
    os.fsync = lambda fd: None
from statekit import Store
fmt, ops = sys.argv[2], int(sys.argv[3])
root = tempfile.mkdtemp(prefix="statekit-ab-", dir=sys.argv[4])
store = Store.init(root, format=fmt)
store.create("bench", "ep1", title="Benchmark episode", metadata={"source": "https://archive.org/x"})
stages = ("downloading", "failed")
for i in range(20):
    store.advance("bench", "ep1", stages[i % 2], cost=0.001, message="benchmark step")
c, w = time.process_time(), time.perf_counter()
for i in range(ops):
    store.advance("bench", "ep1", stages[i % 2], cost=0.001, message="benchmark step")
c, w = time.process_time() - c, time.perf_counter() - w
store.close()
print(c / ops, w / ops)
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("base")
    parser.add_argument("new")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--ops", type=int, default=200)
    parser.add_argument("--format", choices=("json", "yaml"), default="json")
    parser.add_argument("--dir", default=None)
    parser.add_argument("--no-fsync", action="store_true", help="stub os.fsync (the disk's noise out)")
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="statekit-ab-", dir=args.dir)
    cpu: dict[str, list[float]] = {"base": [], "new": []}
    wall: dict[str, list[float]] = {"base": [], "new": []}
    load = os.getloadavg()[0]
    for r in range(args.rounds):
        order = [("base", args.base), ("new", args.new)]
        if r % 2:
            order.reverse()
        for name, src in order:
            out = subprocess.run([sys.executable, "-c", CHILD, os.path.abspath(src), args.format, str(args.ops), work,
                                  "1" if args.no_fsync else "0"],
                                 capture_output=True, text=True, check=True, env={**os.environ, "PYTHONPATH": ""})
            c, w = map(float, out.stdout.split())
            cpu[name].append(c)
            wall[name].append(w)
    subprocess.run(["rm", "-rf", work], check=False)
    b, n = statistics.median(cpu["base"]), statistics.median(cpu["new"])
    print(f"{args.format}: CPU per advance, medians of {args.rounds} rounds x {args.ops} (load {load:.2f} -> "
          f"{os.getloadavg()[0]:.2f})")
    print(f"  base {b * 1e6:6.0f} us  (wall {statistics.median(wall['base']) * 1e6:6.0f} us)")
    print(f"  new  {n * 1e6:6.0f} us  (wall {statistics.median(wall['new']) * 1e6:6.0f} us)   new/base {n / b:.3f}")
    print("  per round new/base:", " ".join(f"{x / y:.2f}" for x, y in zip(cpu["new"], cpu["base"])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
