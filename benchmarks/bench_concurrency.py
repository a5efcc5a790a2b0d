"""Many processes, one store: does throughput scale with writers on different episodes?

    python benchmarks/bench_concurrency.py [--procs 1 2 4 8 16] [--advances 200] [--repeats 5]
                                           [--no-counterfactual] [--dir DIR] [--json]

For each number of processes P, P real processes (forked from a forkserver
that has statekit imported, started and opened before the clock starts,
released together) each make ``--advances`` durable ``advance`` calls on an
episode of their own, in one store (one shared SQLite index). Figures are
medians over ``--repeats`` rounds, each a fresh store per level, the levels
alternating in order from round to round (a shared machine drifts):

- throughput: all advances / wall time (first start to last finish), and
  its ratio to 1 process;
- workers CPU: the workers' user+system CPU seconds / (wall time x cores);
  machine CPU: the same for every process on the machine (/proc/stat), so
  a machine shared with other work shows up as such;
- in fsync: the share of each write's time spent inside fsync calls (the
  event log's fsync runs on a helper thread alongside the file's, so both
  count: an upper bound; time waiting for a CPU after the disk answered
  counts too);
- in index: the share inside the index write (one SQLite transaction,
  including the wait for SQLite's write lock, which all processes share);
- fsync off (unless ``--no-counterfactual``): every level once more with
  fsync a no-op (through the ``statekit.files.Disk`` seam; not durable,
  measurement only): throughput without fsync / the durable throughput.

From those, each level is labelled by what limited it: ``fsync`` when
turning fsync off makes it at least 1.25x faster, else ``cpu`` when the
machine's cores were at least 85 % busy, else ``waiting``.

After every run each episode is checked: version = advances + 2 and
``verify()`` clean; the script exits 1 if any run was wrong.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from statekit import Store
from statekit.files import Disk

SHOW = "bench"
CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


class TimedDisk(Disk):
    """The real disk, timing fsync (or skipping it: the counterfactual)."""

    def __init__(self, sync: bool = True) -> None:
        self.sync = sync
        self.seconds = 0.0
        self.calls = 0
        self._lock = threading.Lock()

    def fsync(self, fd: int) -> None:
        start = time.perf_counter()
        if self.sync:
            os.fsync(fd)
        spent = time.perf_counter() - start
        with self._lock:
            self.seconds += spent
            self.calls += 1


def worker(root: str, ep: str, n: int, sync: bool, go: Any, conn: Connection) -> None:
    """One process: open the store, say ready, wait for go, advance ``n`` times."""
    disk = TimedDisk(sync)
    store = Store.open(root, disk=disk)
    index_write = store.index.write
    in_index = [0.0]

    def timed_write(**changes: Any) -> None:
        start = time.perf_counter()
        try:
            index_write(**changes)
        finally:
            in_index[0] += time.perf_counter() - start

    store.index.write = timed_write  # type: ignore[method-assign]
    stage = store.get(SHOW, ep).stage
    conn.send("ready")
    go.wait()
    cpu0, start = sum(os.times()[:2]), time.monotonic()
    for _ in range(n):
        stage = "failed" if stage == "downloading" else "downloading"
        store.advance(SHOW, ep, stage, cost=0.001, message="bench")
    end, cpu1 = time.monotonic(), sum(os.times()[:2])
    conn.send({"start": start, "end": end, "cpu_s": cpu1 - cpu0, "fsync_s": disk.seconds, "fsyncs": disk.calls,
               "index_s": in_index[0]})
    conn.close()


def machine_cpu() -> tuple[int, int] | None:
    """(busy, total) CPU ticks of the whole machine, every process (Linux: /proc/stat)."""
    try:
        with open("/proc/stat") as f:
            ticks = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)  # idle + iowait
    return sum(ticks) - idle, sum(ticks)


def one_run(ctx: Any, root: str, procs: int, n: int, sync: bool) -> dict[str, Any]:
    store = Store.init(root)
    eps = [f"e{i:02d}" for i in range(procs)]
    for ep in eps:
        store.create(SHOW, ep)
        store.advance(SHOW, ep, "downloading")
    go = ctx.Event()
    started = []
    for ep in eps:
        reader, writer = ctx.Pipe(duplex=False)
        proc = ctx.Process(target=worker, args=(store.root, ep, n, sync, go, writer), daemon=True)
        proc.start()
        writer.close()
        started.append((proc, reader))
    for proc, reader in started:
        if not reader.poll(120) or reader.recv() != "ready":
            raise RuntimeError(f"worker {proc.pid} did not start")
    go.set()
    machine0 = machine_cpu()
    results = []
    for proc, reader in started:
        results.append(reader.recv())
        proc.join()
        if proc.exitcode != 0:
            raise RuntimeError(f"worker {proc.pid} exited {proc.exitcode}")
    machine1 = machine_cpu()
    fresh = Store.open(store.root)
    correct = all(fresh.get(SHOW, ep).version == n + 2 == len(fresh.events(SHOW, ep)) for ep in eps)
    correct = correct and fresh.verify().clean
    wall = max(r["end"] for r in results) - min(r["start"] for r in results)
    loop = sum(r["end"] - r["start"] for r in results)
    return {
        "wall_s": wall,
        "advances_per_s": procs * n / wall,
        "cpu_use": sum(r["cpu_s"] for r in results) / (wall * CORES),
        "machine_cpu": (None if machine0 is None or machine1 is None or machine1[1] == machine0[1]
                        else (machine1[0] - machine0[0]) / (machine1[1] - machine0[1])),
        "fsync_share": sum(r["fsync_s"] for r in results) / loop,
        "fsyncs_per_advance": sum(r["fsyncs"] for r in results) / (procs * n),
        "index_share": sum(r["index_s"] for r in results) / loop,
        "ms_per_advance": loop / (procs * n) * 1000,
        "correct": correct,
    }


def summarize(procs: int, sync: bool, runs: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {"procs": procs, "fsync": sync}
    for key in ("advances_per_s", "wall_s", "cpu_use", "machine_cpu", "fsync_share", "fsyncs_per_advance",
                "index_share", "ms_per_advance"):
        values = [r[key] for r in runs if r[key] is not None]
        out[key] = round(statistics.median(values), 4) if values else None
    out["runs"] = [round(r["advances_per_s"], 1) for r in runs]
    out["correct"] = all(r["correct"] for r in runs)
    return out


def measure(ctx: Any, work: str, procs: list[int], n: int, repeats: int,
            modes: tuple[bool, ...]) -> dict[tuple[int, bool], dict[str, Any]]:
    """Every (P, fsync on/off) once per round, rounds repeated: a machine's
    drift (other work, the disk's cache) falls on all levels alike."""
    runs: dict[tuple[int, bool], list[dict[str, Any]]] = {(p, m): [] for p in procs for m in modes}
    for r in range(repeats):
        for p in procs if r % 2 == 0 else list(reversed(procs)):
            for m in modes:
                root = os.path.join(work, f"p{p}-{'sync' if m else 'nosync'}-{r}")
                runs[(p, m)].append(one_run(ctx, root, p, n, m))
                shutil.rmtree(root, ignore_errors=True)
    return {key: summarize(key[0], key[1], found) for key, found in runs.items()}


FSYNC_BOUND = 1.25
"""Throughput without fsync at least this many times the durable one: the writes were fsync-bound."""
CPU_BOUND = 0.85
"""The whole machine's CPUs at least this busy (every process, not only the workers): CPU-bound."""


def bound(lv: dict[str, Any]) -> str:
    """What limited a level, measured: ``fsync`` if turning fsync off made it
    faster by FSYNC_BOUND or more; else ``cpu`` if the machine's cores were
    CPU_BOUND busy; else ``waiting`` (locks, the shared index, the scheduler).
    Without the counterfactual run, a level whose writes spent half their time
    in fsync counts as ``fsync``."""
    speedup = lv.get("speedup_without_fsync")
    if speedup is not None and speedup >= FSYNC_BOUND or speedup is None and lv["fsync_share"] >= 0.5:
        return "fsync"
    if lv["machine_cpu"] is not None and lv["machine_cpu"] >= CPU_BOUND:
        return "cpu"
    return "waiting"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--procs", type=int, nargs="+", default=[1, 2, 4, 8, 16],
                        help="numbers of processes to run (default 1 2 4 8 16)")
    parser.add_argument("--advances", type=int, default=200, help="advances per process (default 200)")
    parser.add_argument("--repeats", type=int, default=5, help="rounds over every level; medians (default 5)")
    parser.add_argument("--no-counterfactual", action="store_true",
                        help="skip the runs with fsync turned off (half the time)")
    parser.add_argument("--dir", default=None, help="where to write (default: the system temp dir)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args()
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["statekit.store", "statekit.index.connect", "statekit.index.sync"])
    work = tempfile.mkdtemp(prefix="statekit-bench-", dir=args.dir)
    try:
        modes = (True,) if args.no_counterfactual else (True, False)
        found = measure(ctx, work, args.procs, args.advances, args.repeats, modes)
        levels = [found[(p, True)] for p in args.procs]
        nosync = [found[(p, False)] for p in args.procs if (p, False) in found]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    base = levels[0]["advances_per_s"]
    for lv in levels:
        lv["ratio"] = round(lv["advances_per_s"] / base, 3)
        off = next((x for x in nosync if x["procs"] == lv["procs"]), None)
        if off is not None:
            lv["speedup_without_fsync"] = round(off["advances_per_s"] / lv["advances_per_s"], 3)
        lv["bound"] = bound(lv)
    correct = all(lv["correct"] for lv in levels + nosync)
    if args.json:
        print(json.dumps({"cores": CORES, "advances": args.advances, "repeats": args.repeats, "levels": levels,
                          "without_fsync": nosync, "correct": correct}, indent=2))
    else:
        print(f"P processes x {args.advances} advances, each on its own episode of one store "
              f"({CORES} cores; medians of {args.repeats})")
        print(f"{'procs':>5}{'advances/s':>12}{'vs 1':>7}{'ms/advance':>12}{'workers CPU':>13}{'machine CPU':>13}"
              f"{'in fsync':>10}{'in index':>10}{'fsync off':>11}  bound by")
        for lv in levels:
            machine = "-" if lv["machine_cpu"] is None else f"{lv['machine_cpu'] * 100:.0f}%"
            off = lv.get("speedup_without_fsync")
            print(f"{lv['procs']:>5}{lv['advances_per_s']:>12.0f}{lv['ratio']:>6.2f}x{lv['ms_per_advance']:>12.2f}"
                  f"{lv['cpu_use'] * 100:>12.0f}%{machine:>13}{lv['fsync_share'] * 100:>9.0f}%"
                  f"{lv['index_share'] * 100:>9.0f}%{'-' if off is None else f'{off:.2f}x':>11}  {lv['bound']}"
                  f"{'' if lv['correct'] else '  WRONG'}")
        print(f"workers CPU: the workers' CPU time / (wall x {CORES} cores); machine CPU: every process's. "
              f"in fsync / in index: share of each write's time. fsync off: throughput with fsync a no-op "
              f"(not durable; measurement only) / the durable run.\nbound by: fsync = fsync off is at least "
              f"{FSYNC_BOUND}x faster; cpu = the machine's cores were at least {CPU_BOUND * 100:.0f}% busy; "
              "waiting = neither (locks, the shared index, the scheduler)")
    return 0 if correct else 1


if __name__ == "__main__":
    sys.exit(main())
