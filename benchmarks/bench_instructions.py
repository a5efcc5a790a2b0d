"""Instructions per durable ``advance`` (or ``create``), counted by valgrind's callgrind: an A/B that load cannot blur.

    python benchmarks/bench_instructions.py [--ops 200] [--format json|yaml] [--op advance|create|run]
                                            [--repo PATH ...] [--out FILE]

A shared machine makes CPU and wall times of a change of a few per cent
unreadable; the instructions the process executes are the same run after
run (within about 0.01 %). The store advances one episode back and forth
(downloading <-> failed, with a cost and a message), as ``bench_cpu.py``
does (``--op create``: it creates new episodes in one show, with some already there; ``--op run``:
each operation is a worker's run of a stage that ends well, its start and its finish); only the loop is counted (callgrind's instrumentation is switched on
and off around it with ``callgrind_control``), and the count per advance
is printed. System calls are not counted (the kernel's work is not
instructions of the process): count them with ``strace -c``. Needs
``valgrind`` (Debian's package); takes about 10 s for 200 advances.
``--out`` keeps callgrind's file for ``callgrind_annotate`` (of the first ``--repo``). ``--repo``: the
statekit checkouts to count, one after the other (default: this one).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent

CHILD = """
import os, subprocess, sys
sys.path.insert(0, sys.argv[1])
from statekit import Store
fmt, ops, root, op = sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5]
store = Store.init(root, format=fmt)
store.create("bench", "ep1", title="Benchmark episode", metadata={"source": "https://archive.org/x"})
stages = ("downloading", "failed")
for i in range(20):  # warm: caches, the index connection, the helper threads
    store.advance("bench", "ep1", stages[i % 2], cost=0.001, message="benchmark step")
    store.create("bench", f"warm{i:03d}", title="Benchmark episode", metadata={"source": "https://archive.org/x"})
if op == "run":  # each operation a worker's run of a stage that ends well: its start and finish written
    for i in range(ops):
        store.create("bench", f"run{i:05d}", title="Benchmark episode", metadata={"source": "https://archive.org/x"})
subprocess.run(["callgrind_control", "-i", "on", str(os.getpid())], capture_output=True, check=False)
for i in range(ops):
    if op == "run":
        with store.run("bench", f"run{i:05d}", "downloading"):
            pass
    elif op == "create":
        store.create("bench", f"new{i:05d}", title="Benchmark episode", metadata={"source": "https://archive.org/x"})
    else:
        store.advance("bench", "ep1", stages[i % 2], cost=0.001, message="benchmark step")
subprocess.run(["callgrind_control", "-i", "off", str(os.getpid())], capture_output=True, check=False)
store.close()
"""


def count(args: argparse.Namespace, repo: str, keep: str | None) -> int:
    """Count one checkout's instructions per operation and print them; 1 if valgrind failed."""
    work = tempfile.mkdtemp(prefix="statekit-instr-", dir=args.dir)
    out = keep or os.path.join(work, "callgrind.out")
    try:
        run = subprocess.run(
            ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}", sys.executable,
             "-c", CHILD, repo, args.format, str(args.ops), os.path.join(work, "store"), args.op],
            capture_output=True, text=True, env=dict(os.environ, PYTHONHASHSEED="0"), check=False)
        found = re.search(r"Collected : (\d+)", run.stderr)
        if run.returncode or found is None:
            print(run.stderr[-2000:], file=sys.stderr)
            return 1
        print(f"{repo} {args.format}: {int(found.group(1)) // args.ops:,} instructions per {args.op} "
              f"({args.ops} operations, callgrind)")
    finally:
        if keep is None:
            shutil.rmtree(work, ignore_errors=True)
        else:
            shutil.rmtree(os.path.join(work, "store"), ignore_errors=True)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ops", type=int, default=200)
    parser.add_argument("--format", choices=("json", "yaml"), default="json")
    parser.add_argument("--op", choices=("advance", "create", "run"), default="advance")
    parser.add_argument("--repo", action="append", help="statekit checkouts to count (default: this one)")
    parser.add_argument("--out", default=None, help="keep callgrind's output file here")
    parser.add_argument("--dir", default=None, help="where the store is made (default: the system temp dir)")
    args = parser.parse_args()
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        parser.error("needs valgrind (apt-get install valgrind)")
    for n, repo in enumerate(args.repo or [str(HERE.parent)]):
        if count(args, repo, args.out if n == 0 else None):
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
