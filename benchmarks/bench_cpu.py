"""CPU per durable ``advance`` against a bare durable replace's, measured in the same run.

    python benchmarks/bench_cpu.py [--ops 200] [--rounds 5] [--dir DIR]

CPU is ``time.process_time()`` (user + system, every thread of the process: the
event log's fsync runs on a helper thread). The bare baseline is
``bench_scale.bare_create(..., replace=True)``: a temp file written and fsynced,
renamed over the file, the folder fsynced, one event line appended and fsynced.
Blocks of ``--ops`` calls alternate (bare, json, yaml) for ``--rounds`` rounds;
printed are the medians of the blocks' CPU per call and the ratio to bare
(issue 16's target: <= 1.5x). The load average is printed with them.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from bench_scale import bare_create  # noqa: E402

from statekit import Store  # noqa: E402


def advancing(root: str, fmt: str) -> Callable[[int], None]:
    store = Store.init(root, format=fmt)
    store.create("bench", "ep1", title="Benchmark episode", metadata={"source": "https://archive.org/x"})
    stages = ("downloading", "failed")
    return lambda i: store.advance("bench", "ep1", stages[i % 2], cost=0.001, message="benchmark step")  # type: ignore[func-returns-value]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ops", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--dir", default=None)
    args = parser.parse_args()
    load = os.getloadavg()[0]
    work = tempfile.mkdtemp(prefix="statekit-cpu-", dir=args.dir)
    try:
        bare = os.path.join(work, "bare")
        os.mkdir(bare)
        bare_create(bare, 0)
        runs: dict[str, Callable[[int], None]] = {"bare": lambda i: bare_create(bare, 0, replace=True)}
        for fmt in ("json", "yaml"):
            runs[fmt] = advancing(os.path.join(work, fmt), fmt)
        for fn in runs.values():  # warm up
            for i in range(20):
                fn(i)
        cpu: dict[str, list[float]] = {name: [] for name in runs}
        names = list(runs)
        for r in range(args.rounds):
            for name in names[r % len(names):] + names[:r % len(names)]:
                start = time.process_time()
                for i in range(args.ops):
                    runs[name](i)
                cpu[name].append((time.process_time() - start) / args.ops)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    base = statistics.median(cpu["bare"])
    print(f"CPU per call, medians of {args.rounds} blocks of {args.ops} (load average {load:.2f} at the start, "
          f"{os.getloadavg()[0]:.2f} at the end)")
    for name in names:
        med = statistics.median(cpu[name])
        ratio = "" if name == "bare" else f"   {med / base:.2f}x bare (target <= 1.5x)"
        print(f"  {name:5s} {med * 1e6:7.0f} us{ratio}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
