"""Time only ``verify(full=True)`` on stores made once: wall, the parent's CPU and the workers'.

    python benchmarks/bench_verify_full.py STORE [STORE ...] [--runs 5] [--repo A --repo B] [--workers N]
    python benchmarks/bench_verify_full.py STORE [--repo A --repo B] --callgrind [--out FILE]

Each STORE is a store made by ``make_store.py`` (its index is built by the first open, not timed).
With several ``--repo`` checkouts, the runs are interleaved (A, B, A, B ...) and each repo's
median is printed: an A/B of two versions of statekit on the same files, on a noisy machine.
Each run is a fresh process (``Store.open``, one full verify, the memo removed first: cold).
``--callgrind``: instead, the instructions of one full verify in one process (``workers=1``: the
parent's work and every check; a store of 1-2k episodes takes a minute), counted by valgrind's
callgrind around the call only (``bench_instructions.py``'s way): an A/B that load cannot blur.
With ``--workers N`` (N > 1) the pool's forked workers are counted too (they inherit the counting;
their sum with the parent's: what the pool's hand-over costs is in it). Callgrind's CPU has no SHA
instructions: sha256 counts several times what it costs on a processor with them.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
from pathlib import Path

COUNTED = r"""
import os, subprocess, sys
sys.path.insert(0, sys.argv[1])
from statekit import Store
from statekit.index.verify import verify
store = Store.open(sys.argv[2])
store.counts()
workers = int(sys.argv[3])
verify(store.writer, full=True, workers=1)  # warm: imports, caches
subprocess.run(["callgrind_control", "-i", "on", str(os.getpid())], capture_output=True, check=False)
report = verify(store.writer, full=True, workers=workers)
subprocess.run(["callgrind_control", "-i", "off", str(os.getpid())], capture_output=True, check=False)
assert not report.problems, report.problems[:3]
print(report.checked)
"""


def counted(repo: str, root: str, out: str | None, workers: int = 1) -> tuple[int, int]:
    """(instructions of one full verify, episodes checked); with ``workers`` > 1, the parent's
    and every forked worker's (each process's own count, summed)."""
    run = subprocess.run(
        ["valgrind", "--tool=callgrind", "--instr-atstart=no",
         f"--callgrind-out-file={out + '.%p' if out else os.devnull}",
         str(Path(repo) / ".venv/bin/python"), "-c", COUNTED, repo, root, str(workers)],
        capture_output=True, text=True, env=dict(os.environ, PYTHONHASHSEED="0"), check=False)
    found = re.findall(r"Collected : (\d+)", run.stderr)
    if run.returncode or not found:
        raise SystemExit(run.stderr[-2000:])
    return sum(map(int, found)), int(run.stdout.split()[-1])


PROBE = r"""
import json, os, sys, time, logging
sys.path.insert(0, {repo!r})
from statekit import Store
root = sys.argv[1]
workers = None if sys.argv[2] == "-" else int(sys.argv[2])
from statekit.index.verify import verify as V
store = Store.open(root)
store.counts()
for name in ("verified.db", "verified.db-journal"):  # the memo cold, as a first verify finds it
    if os.path.exists(os.path.join(root, ".statekit", name)):
        os.unlink(os.path.join(root, ".statekit", name))
t0, c0 = time.perf_counter(), os.times()
report = V(store.writer, full=True, workers=workers)
t1, c1 = time.perf_counter(), os.times()
assert not report.problems, report.problems[:3]
print(json.dumps({{"wall": t1 - t0, "parent": (c1.user + c1.system) - (c0.user + c0.system),
                  "children": (c1.children_user + c1.children_system) - (c0.children_user + c0.children_system),
                  "checked": report.checked, "full": report.full}}))
"""


def one(repo: str, root: str, workers: str) -> dict[str, float]:
    out = subprocess.run([str(Path(repo) / ".venv/bin/python"), "-c", PROBE.format(repo=repo), root, workers],
                         check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("stores", nargs="+")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--repo", action="append", help="a checkout of statekit (default: this one)")
    parser.add_argument("--workers", default="-", help="processes (default: verify's own choice)")
    parser.add_argument("--callgrind", action="store_true", help="count instructions instead (valgrind)")
    parser.add_argument("--out", default=None, help="with --callgrind: keep callgrind's file (one repo)")
    args = parser.parse_args()
    repos = args.repo or [str(Path(__file__).resolve().parent.parent)]
    if args.callgrind:
        for root in args.stores:
            one(repos[0], root, "1")  # the index built before counting
            for repo in repos:
                n, checked = counted(repo, root, args.out, 1 if args.workers == "-" else int(args.workers))
                print(f"{root} {repo}: {n / checked:,.0f} instructions per episode ({checked} episodes, "
                      f"workers {args.workers}, callgrind)")
        return
    for root in args.stores:
        for repo in repos:  # the index built (and any migration) before timing
            one(repo, root, args.workers)
        got: dict[str, list[dict[str, float]]] = {repo: [] for repo in repos}
        for _ in range(args.runs):
            for repo in repos:
                got[repo].append(one(repo, root, args.workers))
        print(f"{root}  (load {os.getloadavg()[0]:.2f})")
        for repo in repos:
            runs = got[repo]
            med = {k: statistics.median(r[k] for r in runs) for k in ("wall", "parent", "children")}
            walls = " ".join(f"{r['wall']:.2f}" for r in runs)
            print(f"  {repo}: wall {med['wall']:.2f} s (runs {walls})  parent CPU {med['parent']:.2f} s  "
                  f"workers CPU {med['children']:.2f} s")


if __name__ == "__main__":
    main()
