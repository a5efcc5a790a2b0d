"""What the operator controls cost a claim: pause file, limits, priority.

    python benchmarks/bench_controls.py [--episodes 300] [--repeat 3] [--pg URL] [--json]

For SQLite and (with ``--pg`` or STATEKIT_TEST_PG_URL) PostgreSQL, one process
claims and runs ``downloading`` on a fresh store of ``--episodes`` episodes
until nothing is ready, four ways in the same run:

- ``baseline``: no controls set;
- ``paused-other``: another stage paused for one show (the claim reads
  ``.statekit/paused.json`` and skips that show);
- ``limits``: ``downloading`` limited (concurrency and rate high enough never
  to refuse: the claim takes the stage's lock and counts live leases and
  starts in every transaction);
- ``priority``: every third episode prioritized (the order uses the index's
  priority column).

Reported: the median claims per second of ``--repeat`` runs (the four ways
interleaved) and its ratio
to the baseline (same run, same machine). The machine's load matters: quote
``uptime`` with the numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.bench_workers import drop_schema, schema_url  # noqa: E402
from statekit import Store  # noqa: E402

WAYS = ("baseline", "paused-other", "limits", "priority")


def one_run(way: str, episodes: int, url: str | None) -> float:
    with tempfile.TemporaryDirectory(prefix="bench-controls-") as where:
        store = Store.init(os.path.join(where, "store"), index_url=url)
        for i in range(episodes):
            store.create("s", f"e{i:04d}")
        store.create("other", "e0")
        if way == "limits":
            path = Path(store.root, "statekit.yaml")
            path.write_text(path.read_text() + 'limits: {downloading: {concurrency: 1000, rate: "100000/day"}}\n')
            store.close()
            store = Store.open(store.root)
        elif way == "paused-other":
            store.pause("converting", show="other")
        elif way == "priority":
            for i in range(0, episodes, 3):
                store.prioritize("s", f"e{i:04d}", i % 7)
        began = time.perf_counter()
        n = 0
        while (run := store.claim("downloading")) is not None:
            with run:
                pass
            n += 1
        seconds = time.perf_counter() - began
        store.close()
        return n / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--episodes", type=int, default=300)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--pg", default=os.environ.get("STATEKIT_TEST_PG_URL"))
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    results: dict[str, dict[str, dict[str, float]]] = {}
    for kind in ("sqlite", "postgresql") if args.pg else ("sqlite",):
        rates: dict[str, list[float]] = {way: [] for way in WAYS}
        for _ in range(args.repeat):  # the ways interleaved, so a change in the machine's load hits them alike
            for way in WAYS:
                url, schema = schema_url(args.pg) if kind == "postgresql" else (None, "")
                try:
                    rates[way].append(one_run(way, args.episodes, url))
                finally:
                    if schema:
                        drop_schema(args.pg, schema)
        medians = {way: statistics.median(r) for way, r in rates.items()}
        results[kind] = {way: {"claims_per_s": round(medians[way], 1),
                               "ratio_to_baseline": round(medians[way] / medians["baseline"], 3)} for way in WAYS}
    load = os.getloadavg()
    if args.json:
        print(json.dumps({"results": results, "load": load}, indent=2))
        return
    print(f"claims and runs of {args.episodes} episodes, one process, median of {args.repeat}; "
          f"load {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    for kind, ways in results.items():
        for way, r in ways.items():
            print(f"  {kind:<10} {way:<13} {r['claims_per_s']:>8.1f} claims/s  x{r['ratio_to_baseline']:.3f}")


if __name__ == "__main__":
    main()
