"""``bench_writes`` of two checkouts, interleaved: is one slower than the other?

    python benchmarks/compare_writes.py BEFORE_DIR AFTER_DIR [--runs 9] [--dir DIR]

Each run is ``BEFORE_DIR/benchmarks/bench_writes.py --json`` (then AFTER's, in
alternating order), so both see the same machine load. For each format it
prints the median over the runs of each checkout's ratio to its own run's
``bare+sqlite`` baseline, and after/before (1.0: no difference; 0.95: the
after checkout's advance is about 5 % slower). Make the checkouts with
``git worktree add --detach DIR COMMIT``; both run with this interpreter.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

FORMATS = ("json", "yaml", "yaml+comments")


def run(checkout: Path, where: str | None) -> dict[str, float]:
    cmd = [sys.executable, "benchmarks/bench_writes.py", "--json"] + (["--dir", where] if where else [])
    out = subprocess.run(cmd, cwd=checkout, capture_output=True, text=True, check=True).stdout
    return {r["run"]: r["ratio"] for r in json.loads(out)["results"] if r.get("run") in FORMATS}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path)
    parser.add_argument("--runs", type=int, default=9, help="runs per checkout (default 9)")
    parser.add_argument("--dir", default=None, help="where the benchmark writes (default: the system temp dir)")
    args = parser.parse_args()
    for checkout in (args.before, args.after):
        if not (checkout / "benchmarks" / "bench_writes.py").is_file():
            parser.error(f"{checkout} has no benchmarks/bench_writes.py: give two statekit checkouts")
    ratios: dict[Path, dict[str, list[float]]] = {args.before: {}, args.after: {}}
    for i in range(args.runs):
        for checkout in (args.before, args.after) if i % 2 == 0 else (args.after, args.before):
            for fmt, ratio in run(checkout, args.dir).items():
                ratios[checkout].setdefault(fmt, []).append(ratio)
        print(f"run {i + 1}/{args.runs} done", file=sys.stderr)
    for fmt in FORMATS:
        before = statistics.median(ratios[args.before][fmt])
        after = statistics.median(ratios[args.after][fmt])
        print(f"{fmt:14} before {before:.3f}  after {after:.3f}  after/before {after / before:.3f}"
              f"  (ratios to bare+sqlite, medians of {args.runs})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
