"""Cache get and set against diskcache, same payloads, same run.

    python benchmarks/bench_cache.py [--ops 200] [--rounds 5] [--dir DIR] [--json] [--strict]

For each payload size (1 KiB, 64 KiB, 1 MiB) every cache gets the same keys
and the same bytes, in interleaved blocks (machines are noisy): ``--ops``
sets of distinct keys (overwrites after the first round), then ``--ops``
gets of them. Medians of the per-call times over all rounds.

Runs:

- ``statekit``: ``statekit.cache.Cache`` as a store opens it (value files
  checked by CRC after a reboot, not fsynced; see the module docstring).
- ``diskcache``: ``diskcache.Cache(dir)`` with its defaults (no bookkeeping on
  a get: its default eviction is least-recently-*stored*). The target: issue
  6 asks statekit's get and set medians to be within 1.5x of these.
- ``diskcache-lru``: diskcache doing what statekit does on a get (records the
  access time for LRU, counts hits and misses): ``eviction_policy=
  "least-recently-used"``, ``statistics=True``. For comparison only.
- ``statekit-fsync``: statekit as it runs where no boot id is known (each
  value file fsynced before its row commits): the price of the other design.
  For comparison only.

Ratios are run median / diskcache median: lower is better; <= 1.5 meets the target.
Needs ``diskcache`` (pip install diskcache); statekit itself does not use it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from statekit.cache import Cache, cache_key, current_boot_id  # noqa: E402

TARGET = 1.5
SIZES = {"1KiB": 1024, "64KiB": 64 * 1024, "1MiB": 1024 * 1024}


def open_caches(work: str) -> dict[str, Any]:
    import diskcache

    return {
        "statekit": Cache(os.path.join(work, "statekit")),
        "diskcache": diskcache.Cache(os.path.join(work, "diskcache")),
        "diskcache-lru": diskcache.Cache(os.path.join(work, "diskcache-lru"),
                                         eviction_policy="least-recently-used", statistics=True),
        "statekit-fsync": Cache(os.path.join(work, "statekit-fsync"), boot_id=None),
    }


def timed(calls: Callable[[int], object], n: int) -> list[float]:
    out = []
    for i in range(n):
        start = time.perf_counter()
        calls(i)
        out.append(time.perf_counter() - start)
    return out


def bench(caches: dict[str, Any], size: int, ops: int, rounds: int) -> dict[str, dict[str, list[float]]]:
    keys = [cache_key({"bench": size, "i": i}) for i in range(ops)]
    payload = os.urandom(size)
    samples: dict[str, dict[str, list[float]]] = {name: {"set": [], "get": []} for name in caches}
    names = list(caches)
    for name in names:  # warm up: first writes create folders and pages
        cache = caches[name]
        timed(lambda i, c=cache: c.set(keys[i], payload), min(ops, 20))
    for r in range(rounds):
        order = names[r % len(names):] + names[: r % len(names)]
        for name in order:
            cache = caches[name]
            samples[name]["set"] += timed(lambda i, c=cache: c.set(keys[i], payload), ops)
        for name in order:
            cache = caches[name]
            got = timed(lambda i, c=cache: c.get(keys[i]), ops)
            samples[name]["get"] += got
        assert caches["statekit"].get(keys[0]) == payload and caches["diskcache"].get(keys[0]) == payload
    return samples


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ops", type=int, default=200, help="calls per block (default 200)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5)")
    parser.add_argument("--dir", default=None, help="where to write (default: the system temp dir)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--strict", action="store_true", help="exit 1 if a target is missed")
    args = parser.parse_args()
    try:
        import diskcache  # noqa: F401
    except ImportError:
        print("bench_cache.py needs diskcache: pip install diskcache", file=sys.stderr)
        return 2

    work = tempfile.mkdtemp(prefix="statekit-bench-cache-", dir=args.dir)
    results = []
    try:
        caches = open_caches(work)
        try:
            for label, size in SIZES.items():
                samples = bench(caches, size, args.ops, args.rounds)
                for op in ("set", "get"):
                    base = statistics.median(samples["diskcache"][op])
                    for name in caches:
                        times = samples[name][op]
                        med = statistics.median(times)
                        target = TARGET if name == "statekit" else None
                        results.append({
                            "size": label, "op": op, "run": name, "median_us": round(med * 1e6, 1),
                            "mean_us": round(statistics.fmean(times) * 1e6, 1),
                            "ratio": round(med / base, 3), "target": target,
                            "ok": None if target is None else med / base <= target,
                        })
        finally:
            for cache in caches.values():
                cache.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)

    if args.json:
        print(json.dumps({"ops": args.ops, "rounds": args.rounds, "boot_id": current_boot_id() is not None,
                          "results": results}, indent=2))
    else:
        print(f"cache get/set vs diskcache ({args.rounds} rounds x {args.ops} calls, medians; "
              f"boot id {'known: value files CRC-checked after a reboot' if current_boot_id() else 'unknown: fsync'})")
        print(f"{'size':<7}{'op':<5}{'run':<16}{'median':>11}{'mean':>11}{'vs diskcache':>14}{'target':>8}")
        for r in results:
            verdict = "" if r["ok"] is None else ("  ok" if r["ok"] else "  MISSED")
            target = "" if r["target"] is None else f"<={r['target']}"
            print(f"{r['size']:<7}{r['op']:<5}{r['run']:<16}{r['median_us']:>9.1f}us{r['mean_us']:>9.1f}us"
                  f"{r['ratio']:>13.2f}x{target:>8}{verdict}")
    missed = [r for r in results if r["ok"] is False]
    return 1 if args.strict and missed else 0


if __name__ == "__main__":
    sys.exit(main())
