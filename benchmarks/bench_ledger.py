"""What the ledger costs: ``verify`` of a store of N episodes, and the cold one-shot CLI
``statekit advance``, for two checkouts side by side (issue 14's budget).

    python benchmarks/bench_ledger.py BEFORE_PYTHON AFTER_PYTHON [--episodes 10000] [--runs 20]

Each PYTHON is a virtual environment's interpreter with that checkout installed (the
checkout before the ledger, e.g. a worktree of main or 219cb7c with its own ``make``;
and this one). For each, a store of N episodes is written through that checkout's own
API (create, then four advances: five events each, chained or not as that checkout's
default store is), then:

- ``verify``: the median of 3 runs, each in a fresh process (the index opened first,
  not timed), both stores verified alternately;
- ``advance``: ``python -m statekit.cli --root STORE advance SHOW/EP downloading`` as a
  new process, wall time, on a fresh episode each run, the two checkouts interleaved
  run by run (``--runs`` of each).

Prints medians and the ratio after/before, and the machine's load (``os.getloadavg``):
on a shared machine, quote those with the numbers.
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

MAKE = r"""
import sys, time
from statekit import Store
root, n, spare = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
store = Store.init(root)
t = time.perf_counter()
for i in range(n):
    ep = f"ep{i:06d}"
    store.create("show", ep, title=f"episode {i}", metadata={"n": i})
    for stage in ("downloading", "downloaded", "converting", "converted"):
        store.advance("show", ep, stage, cost=0.01)
for i in range(spare):
    store.create("cli", f"c{i:04d}")
store.close()
print(time.perf_counter() - t)
"""

SPARE = r"""
import sys
from statekit import Store
store = Store.open(sys.argv[1])
for i in range(int(sys.argv[3])):
    store.create("cli", f"{sys.argv[2]}{i:04d}")
store.close()
"""

VERIFY = r"""
import json, sys, time
from statekit import Store
store = Store.open(sys.argv[1])
store.counts()
t = time.perf_counter()
report = store.verify()
seconds = time.perf_counter() - t
assert report.clean, report.problems[:3]
print(json.dumps({"seconds": seconds, "format": store.config.schema_version}))
"""


def run(python: str, code: str, *args: str) -> str:
    return subprocess.run([python, "-c", code, *args], capture_output=True, text=True, check=True).stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before")
    parser.add_argument("after")
    parser.add_argument("--episodes", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--dir", default=None, help="where the stores go (default: a temp folder)")
    args = parser.parse_args()
    top = args.dir or tempfile.mkdtemp(prefix="bench-ledger-")
    pythons = {"before": args.before, "after": args.after}
    roots = {k: os.path.join(top, k) for k in pythons}
    out: dict[str, object] = {"episodes": args.episodes, "load_start": os.getloadavg()}
    for name, python in pythons.items():
        if not os.path.exists(os.path.join(roots[name], "statekit.yaml")):
            made = float(run(python, MAKE, roots[name], str(args.episodes), str(args.runs)))
            out[f"{name}_made_s"] = round(made, 1)
            print(f"{name}: made {args.episodes} episodes in {made:.1f} s", file=sys.stderr)
    verify: dict[str, list[float]] = {k: [] for k in pythons}
    formats = {}
    for _ in range(3):
        for name, python in pythons.items():
            result = json.loads(run(python, VERIFY, roots[name]))
            verify[name].append(result["seconds"])
            formats[name] = result["format"]
    print(json.dumps({"verify_s": verify, "load": os.getloadavg()}), file=sys.stderr)
    prefix = f"r{int(time.time())}x"  # fresh episodes for this run's advances
    for name, python in pythons.items():
        run(python, SPARE, roots[name], prefix, str(args.runs))
    advance: dict[str, list[float]] = {k: [] for k in pythons}
    for i in range(args.runs):
        for name, python in pythons.items():
            start = time.perf_counter()
            subprocess.run([python, "-m", "statekit.cli", "--root", roots[name], "advance", f"cli/{prefix}{i:04d}",
                            "downloading"], check=True, capture_output=True)
            advance[name].append(time.perf_counter() - start)
    for name in pythons:
        out[f"{name}_store_format"] = formats[name]
        out[f"{name}_verify_s"] = round(statistics.median(verify[name]), 3)
        out[f"{name}_verify_runs"] = [round(v, 3) for v in verify[name]]
        out[f"{name}_advance_ms"] = round(1000 * statistics.median(advance[name]), 1)
    out["verify_after_over_before"] = round(out["after_verify_s"] / out["before_verify_s"], 3)  # type: ignore[operator]
    out["advance_after_over_before"] = round(out["after_advance_ms"] / out["before_advance_ms"], 3)  # type: ignore[operator]
    out["load_end"] = os.getloadavg()
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
