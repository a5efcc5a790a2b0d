"""Bulk changes and the graph in force, measured against baselines from the same run.

    python benchmarks/bench_bulk.py [--episodes 300] [--rounds 5] [--dir DIR] [--json]

1. ``requeue`` of N episodes (one write each, through the write path, chosen by a
   read-only WHERE clause) against N plain ``advance`` calls: the ratio is what
   selecting, re-reading and deciding under the lock cost per episode.
2. ``statekit status``'s new question (how many episodes are stranded: ``stranded_counts``)
   against ``status()`` itself, on a store where nothing is stranded (the common
   case: only suspects are read) and right after a stage was renamed (every
   episode's last event names the old graph: each one is judged).
3. ``pipeline check`` right after the rename (every episode's last event is judged).
4. ``verify`` with moves judged by their graphs is part of every verify; shown: its
   time per episode.

Medians of ``--rounds``; the machine's load (``uptime``) is printed with them.
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

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from statekit import Store  # noqa: E402


def timed(work: Callable[[], object]) -> float:
    start = time.perf_counter()
    work()
    return time.perf_counter() - start


def warm(work: Callable[[], object], times: int = 7) -> float:
    """The median of several calls (the first pays for compiling the SQL)."""
    work()
    return statistics.median(timed(work) for _ in range(times))


def fill(store: Store, n: int) -> None:
    for i in range(n):
        store.create("bench", f"e{i:05d}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--episodes", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--dir", default=None)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    top = tempfile.mkdtemp(prefix="bench-bulk-", dir=args.dir)
    n = args.episodes
    rows: dict[str, list[float]] = {"advance": [], "requeue": [], "status": [], "check_clean": [],
                                    "check_renamed": [], "status_renamed": [], "pipeline_check_renamed": [], "verify_per_episode": []}
    try:
        for r in range(args.rounds):
            store = Store.init(os.path.join(top, f"s{r}"))
            fill(store, n)
            keys = [("bench", f"e{i:05d}") for i in range(n)]
            # 1. the baseline: N advances; then one requeue moving the same N back
            rows["advance"].append(timed(lambda store=store, keys=keys: [store.advance(s, e, "downloading") for s, e in keys]))
            rows["requeue"].append(timed(lambda store=store: store.requeue("stage = 'downloading'", to="discovered",
                                                                            note="bench")))
            # 2. status, and the stranded question status now asks
            rows["status"].append(warm(store.status))
            rows["check_clean"].append(warm(store.stranded_counts))
            config = Path(store.root, "statekit.yaml")
            data = yaml.safe_load(config.read_text())
            data["pipeline"]["stages"] = {("fetching" if k == "downloading" else k): [
                "fetching" if t == "downloading" else t for t in v] for k, v in data["pipeline"]["stages"].items()}
            data["pipeline"]["max_attempts"] = {("fetching" if k == "downloading" else k): v
                                                for k, v in data["pipeline"].get("max_attempts", {}).items()}
            data["pipeline"].pop("runs", None)
            config.write_text(yaml.safe_dump(data, sort_keys=False))
            renamed = Store.open(store.root)
            rows["status_renamed"].append(warm(renamed.status))
            rows["check_renamed"].append(warm(renamed.stranded_counts))
            rows["pipeline_check_renamed"].append(warm(renamed.pipeline_check, 3))
            rows["verify_per_episode"].append(timed(renamed.verify) / n)
            store.close()
            renamed.close()
    finally:
        shutil.rmtree(top, ignore_errors=True)
    med = {k: statistics.median(v) for k, v in rows.items()}
    load = os.getloadavg()
    result = {
        "episodes": n, "rounds": args.rounds, "load": [round(x, 2) for x in load],
        "median_s": {k: round(v, 5) for k, v in med.items()},
        "requeue_per_episode_vs_advance": round(med["requeue"] / med["advance"], 3),
        "stranded_check_vs_status_clean": round(med["check_clean"] / med["status"], 3),
        "stranded_check_vs_status_after_rename": round(med["check_renamed"] / med["status_renamed"], 3),
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"{n} episodes, median of {args.rounds} rounds, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    print(f"  {n} advances            {med['advance']:.3f} s   (baseline)")
    print(f"  requeue of {n}          {med['requeue']:.3f} s   x{result['requeue_per_episode_vs_advance']} of the "
          "advances")
    print(f"  status()                {med['status'] * 1000:.1f} ms (baseline)")
    print(f"  stranded check, clean   {med['check_clean'] * 1000:.1f} ms  "
          f"x{result['stranded_check_vs_status_clean']} of status")
    print(f"  stranded check, renamed {med['check_renamed'] * 1000:.1f} ms  "
          f"x{result['stranded_check_vs_status_after_rename']} of status")
    print(f"  pipeline check, renamed {med['pipeline_check_renamed'] * 1000:.1f} ms (every episode judged, "
          f"{med['pipeline_check_renamed'] / n * 1e6:.0f} us each)")
    print(f"  verify per episode      {med['verify_per_episode'] * 1000:.2f} ms")


if __name__ == "__main__":
    main()
