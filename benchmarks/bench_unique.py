"""What a unique metadata key costs a write, against the same write in a store without one.

    python benchmarks/bench_unique.py [--episodes 2000] [--ops 100] [--rounds 5] [--dir DIR] [--json]

Two stores of ``--episodes`` episodes each, one with ``unique:
[archive_identifier]``, measured in the same run, interleaved (machines are
noisy):

- ``update``: an episode takes a new identifier (the unique store takes the
  value's lock, asks the index who holds it, keeps its index row);
- ``advance``: a move that leaves metadata alone (no claim: the unique
  store should cost nothing more).

Ratios are plain median / unique median (1.0: no cost; higher is better).
Target: >= 0.8x for both (a write is fsync-bound: the lock, the lookup and
the index rows cost well under a millisecond; runs on a shared machine
scatter by about 10%).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from statekit import Store  # noqa: E402

KEY = "archive_identifier"
TARGETS = {"update": 0.8, "advance": 0.8}


def filled(root: str, episodes: int, unique: bool) -> Store:
    store = Store.init(root, unique=[KEY] if unique else [])
    for i in range(episodes):
        store.create("bench", f"e{i}", metadata={KEY: f"id-{i}", "size": i})
    return store


def operations(store: Store) -> dict[str, Callable[[], None]]:
    counter = itertools.count()
    stage = {"now": "discovered"}

    def update() -> None:
        store.update("bench", "e0", metadata={KEY: f"new-{next(counter)}", "size": 0})

    def advance() -> None:
        stage["now"] = "downloading" if stage["now"] != "downloading" else "failed"
        store.advance("bench", "e1", stage["now"], cost=0.001)

    return {"update": update, "advance": advance}


def timed(fn: Callable[[], None], n: int) -> list[float]:
    out = []
    for _ in range(n):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=2000, help="episodes in each store (default 2000)")
    parser.add_argument("--ops", type=int, default=100, help="writes per block (default 100)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5)")
    parser.add_argument("--dir", default=None, help="where to write (default: the system temp dir)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args()

    work = tempfile.mkdtemp(prefix="statekit-bench-unique-", dir=args.dir)
    try:
        stores = {name: filled(os.path.join(work, name), args.episodes, name == "unique")
                  for name in ("plain", "unique")}
        ops = {name: operations(store) for name, store in stores.items()}
        samples: dict[tuple[str, str], list[float]] = {(s, op): [] for s in stores for op in TARGETS}
        for (s, op) in samples:  # warm up
            timed(ops[s][op], 10)
        keys = list(samples)
        for r in range(args.rounds):
            for s, op in keys[r % len(keys):] + keys[: r % len(keys)]:
                samples[(s, op)] += timed(ops[s][op], args.ops)
        assert stores["unique"].verify().clean
        results = []
        for op, target in TARGETS.items():
            plain = statistics.median(samples[("plain", op)])
            unique = statistics.median(samples[("unique", op)])
            results.append({"op": op, "plain_us": round(plain * 1e6, 1), "unique_us": round(unique * 1e6, 1),
                            "ratio": round(plain / unique, 3), "target": target, "ok": plain / unique >= target})
    finally:
        shutil.rmtree(work, ignore_errors=True)

    if args.json:
        print(json.dumps({"episodes": args.episodes, "ops": args.ops, "rounds": args.rounds, "results": results},
                         indent=2))
    else:
        print(f"a unique key's cost per write ({args.episodes} episodes, {args.rounds} rounds x {args.ops}, medians)")
        print(f"{'op':<10}{'plain':>12}{'unique':>12}{'ratio':>9}{'target':>9}")
        for r in results:
            print(f"{r['op']:<10}{r['plain_us']:>10.0f}us{r['unique_us']:>10.0f}us{r['ratio']:>8.2f}x"
                  f"{'>=' + str(r['target']):>9}{'  ok' if r['ok'] else '  MISSED'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
