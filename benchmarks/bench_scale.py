"""One show of 1k, 10k (and with --full 100k) episodes: per-call costs, and ratios to same-run baselines.

    python benchmarks/bench_scale.py [--full] [--sizes 1000,10000] [--calls 100] [--format yaml|json]
                                     [--runs 3] [--no-ledger] [--procs] [--procs-only] [--proc-rounds 3] [--json]

``--format json``: the store's files are JSON (the bare baseline then parses them
with orjson). The store is a ledger store, its logs chained as statekit writes them
(``verify`` checks every chain and replays it); ``--no-ledger``: a store before the
ledger (format 4, unchained logs).

Targets (issue 16), each against a baseline measured in the same run:

- create: cost per call independent of the show's size; at 100k, creates/s
  >= 0.5x a bare durable create (mkdir, temp file, fsync, rename, directory
  fsync, an fsynced event append);
- advance: per-call cost flat; printed against a bare durable replace;
- get, counts, next, list(stage=) of up to 100 rows, a page of 100 anywhere in
  the show (``list(show, limit=100, after=...)``; ``list_stage_page_100``: of the
  stage nearly every episode is in), with_errors and a failed-list
  (30 episodes with a failed run each, at every size), stuck (about 100 rows):
  <= 2 ms median, flat;
- dashboard_stage: the live dashboard's page of a stage of a few rows (the failed ones) in the
  show, with its count;
- the list questions again on the same index without the query planner's statistics (a store
  filled by its creates has none; only a rebuild runs ANALYZE): flagged SLOW above 2 ms;
- metrics: a Prometheus scrape (``/metrics``), no target of the issue's: flat (its run and
  failure counters read ``run_totals``; the leases and the oldest-waiting gauges the partial
  indexes of revision 0012 and steps of ``episodes_by_ready_for``);
- sync with nothing changed: against a bare stat walk of the episode files;
- verify, rebuild: against a bare walk + read + parse of the same files
  (PyYAML's C loader or orjson, and orjson for the event lines); rebuild
  <= 1.3x, its peak memory < 300 MB; verify twice: ``verify_full`` (``--full``,
  the memo cold) then ``verify`` on the unchanged store (what the first
  remembered is used: 50k <= 5 s);
- --procs: advances per second of 1, 2 and 4 processes on their own episodes
  (>= 1.6x of 1 process at 2, >= 1.8x at 4), next to bare durable replaces per second
  of 1, 2 and 4 processes in the same run (the machine's own ceiling: fsync contention);
  --procs-only measures only that.

Any operation whose per-call (per-episode for sync, verify, rebuild) cost
grows more than 2x from the smallest size to the largest is flagged GROWS.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from make_store import make_store  # noqa: E402

from statekit import Store  # noqa: E402
from statekit.index.rows import RACY_NS  # noqa: E402

BARE_WALK = r"""
    for show in sorted(os.listdir(os.path.join(root, "shows"))):
        folder = os.path.join(root, "shows", show, "episodes")
        with os.scandir(folder) as entries:
            for entry in entries:
                for name in ("episode.yaml", "episode.json"):
                    try:
                        with open(os.path.join(entry.path, name), "rb") as f:
                            raw = f.read()
                    except FileNotFoundError:
                        continue
                    yaml.load(raw, Loader=yaml.CSafeLoader) if name.endswith("yaml") else orjson.loads(raw)
                with open(os.path.join(entry.path, "events.jsonl"), "rb") as f:
                    [orjson.loads(line) for line in f.read().splitlines()]
"""
"""The bare baseline of a rebuild or a verify (a child's code, inside ``if what == "bare":``): every
show's episode folders walked, each file read and parsed (C YAML loader, orjson), each log's lines."""

PROBE = r"""
import json, os, resource, sys, time
sys.path.insert(0, {repo!r})
root, what = sys.argv[1], sys.argv[2]
if what == "bare":
    import orjson, yaml
    start = time.perf_counter()
""" + BARE_WALK.lstrip("\n") + r"""else:
    from statekit import Store
    store = Store.open(root)
    store.counts()  # the index is open (not timed)
    start = time.perf_counter()
    report = store.rebuild_index() if what == "rebuild" else store.verify(full=what == "verify_full")
    assert not report.problems, report.problems[:3]
seconds = time.perf_counter() - start
print(json.dumps({{"seconds": seconds, "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}}))
"""

WORKER = r"""
import sys, time
sys.path.insert(0, {repo!r})
from statekit import Store
root, prefix, n, start_at = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
store = Store.open(root)
eps = [f"{{prefix}}{{i:05d}}" for i in range(n)]
store.counts()
while time.time() < start_at:
    time.sleep(0.001)
t = time.perf_counter()
for ep in eps:
    store.advance("procs", ep, "downloading")
for ep in eps:
    store.advance("procs", ep, "failed")
print(time.perf_counter() - t)
"""


FAILED = 30
"""Episodes with recorded errors (a failed run each) in the store at every size."""


def probe(root: str, what: str) -> dict[str, float]:
    out = subprocess.run([sys.executable, "-c", PROBE.format(repo=str(HERE.parent)), root, what],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def json_of_each(argvs: list[list[str]], what: str) -> list[dict[str, float]]:
    """Start the commands ``argvs`` at once; the JSON object each printed, in their order
    (``SystemExit`` naming ``what`` if one failed). The other benchmarks' worker processes."""
    procs = [subprocess.Popen(argv, stdout=subprocess.PIPE, text=True) for argv in argvs]
    results = []
    for proc in procs:
        stdout, _ = proc.communicate()
        if proc.returncode:
            raise SystemExit(f"{what} failed ({proc.returncode})")
        results.append(json.loads(stdout))
    return results


def per_call(fn: Callable[[int], object], calls: int) -> float:
    """Median seconds of ``fn(i)`` over ``calls`` calls."""
    times = []
    for i in range(calls):
        start = time.perf_counter()
        fn(i)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bare_create(folder: str, i: int, replace: bool = False) -> None:
    """What a durable create (or replace) must do at least: its folder, the
    file through a temp file (fsync, rename, directory fsync), an fsynced event."""
    path = os.path.join(folder, f"e{i:06d}")
    if not replace:
        os.mkdir(path)
    fd = os.open(path, os.O_RDONLY)
    try:
        line = b'{"schema_version":1,"version":1,"kind":"create","at":"2026-01-01T00:00:00.000000Z"}\n'
        log = os.open(os.path.join(path, "events.jsonl"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.write(log, line)
        os.fsync(log)
        os.close(log)
        tmp = os.path.join(path, ".episode.yaml.tmp")
        f = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.write(f, b"x: 1\n" * 60)
        os.fsync(f)
        os.close(f)
        os.rename(tmp, os.path.join(path, "episode.yaml"))
        os.fsync(fd)
    finally:
        os.close(fd)


def bare_walk(root: str) -> None:
    folder = os.path.join(root, "shows", "show0000", "episodes")
    with os.scandir(folder) as entries:
        for entry in entries:
            for name in ("episode.yaml", "episode.json"):
                try:
                    os.stat(os.path.join(entry.path, name))
                    break
                except FileNotFoundError:
                    continue


def measure(size: int, calls: int, fmt: str, top: str, ledger: bool = True) -> dict[str, float]:
    root = os.path.join(top, f"n{size}")
    make_store(root, size, shows=1, events=5, fmt=fmt, ledger=ledger).close()
    # files changed within RACY_NS of the index's look are hashed again by every sync (the
    # racy-clean rule): a store made a moment ago would measure that, not a sync of a quiet store
    time.sleep(RACY_NS / 1e9)
    store = Store.open(root)  # builds the index (not timed)
    store.counts()
    show = "show0000"
    ids = [f"ep{i:06d}" for i in range(size)]
    rng = random.Random(size)
    out: dict[str, float] = {}
    bare = os.path.join(top, f"bare{size}")
    os.mkdir(bare)
    out["bare_create"] = per_call(lambda i: bare_create(bare, i), calls)
    out["bare_replace"] = per_call(lambda i: bare_create(bare, i, replace=True), calls)
    out["create"] = per_call(lambda i: store.create(show, f"new{i:05d}"), calls)
    out["advance"] = per_call(lambda i: store.advance(show, f"new{i:05d}", "downloading"), calls)
    out["get"] = per_call(lambda i: store.get(show, rng.choice(ids)), calls)
    out["counts"] = per_call(lambda i: store.counts(show), calls)
    out["next"] = per_call(lambda i: store.next("downloading", 10), calls)
    out["list_stage_100"] = per_call(lambda i: store.list(stage="downloading"), calls)
    # a page of 100 anywhere in the show (``list --limit 100 --after``): read where it starts
    out["list_page_100"] = per_call(lambda i: store.list(show, limit=100, after=f"{show}/{rng.choice(ids[:-100])}"),
                                    calls)
    assert len(store.list(show, limit=100, after=f"{show}/{ids[0]}")) == 100
    # and of the stage nearly every generated episode is in (walked in show order, not sorted)
    out["list_stage_page_100"] = per_call(
        lambda i: store.list(show, stage="converted", limit=100, after=f"{show}/{rng.choice(ids[:-200])}"), calls)
    assert len(store.list(show, stage="converted", limit=100, after=f"{show}/{ids[0]}")) == 100
    assert len(store.list(stage="downloading")) == calls
    logging.getLogger("statekit").setLevel(logging.ERROR)  # the failures below are not news
    for i in range(FAILED):  # episodes with recorded errors, the same number at every size (not timed)
        store.create(show, f"bad{i:05d}")
        with store.run(show, f"bad{i:05d}", "downloading", reraise=False, renew=False):
            raise ConnectionError("the archive's server hung up")
    out["with_errors"] = per_call(lambda i: store.with_errors(show), calls)
    out["list_failed"] = per_call(lambda i: store.list(stage="failed"), calls)
    # the generated episodes entered their stage an hour apart from 2026-01-01: about 100 are older than this
    older = datetime.now(timezone.utc) - (datetime(2026, 1, 1, tzinfo=timezone.utc) + timedelta(hours=100))
    out["stuck_100"] = per_call(lambda i: store.stuck(older, show), calls)
    # the live dashboard's page of a stage of a few rows (the failed ones) in the show, with its count
    from statekit.dashboard.view import Dashboard

    board = Dashboard(Store.open(root, read_only=True))
    out["dashboard_stage"] = per_call(lambda i: board.episodes(show=show, stage="failed"), calls)
    # a Prometheus scrape (``statekit serve``'s /metrics), each value read from the index
    from statekit.signals.metrics import exposition

    out["metrics"] = per_call(lambda i: exposition(store.writer, "bench"), max(3, calls // 10))
    assert b'statekit_failures_total{kind="transient_network",stage="downloading"}' in exposition(store.writer, "x")
    assert len(store.with_errors(show)) == FAILED and len(store.list(stage="failed")) == FAILED
    assert 90 <= len(store.stuck(older, show)) <= 110, len(store.stuck(older, show))
    # the same questions of the index without the query planner's statistics: a store filled by its
    # creates has none (its index was made empty; only a rebuild runs ANALYZE)
    store.close()
    db = sqlite3.connect(os.path.join(root, ".statekit", "index.db"))
    db.execute("DELETE FROM sqlite_stat1")
    db.commit()
    db.close()
    store = Store.open(root)
    store.counts()
    for op, ask in (("list_page_100", lambda i: store.list(show, limit=100, after=f"{show}/{rng.choice(ids[:-100])}")),
                    ("list_stage_page_100", lambda i: store.list(show, stage="converted", limit=100,
                                                                 after=f"{show}/{rng.choice(ids[:-200])}")),
                    ("list_stage_100", lambda i: store.list(stage="downloading")),
                    ("next", lambda i: store.next("downloading", 10)),
                    ("with_errors", lambda i: store.with_errors(show)),
                    ("list_failed", lambda i: store.list(stage="failed")),
                    ("stuck_100", lambda i: store.stuck(older, show)),
                    ("dashboard_stage", lambda i: board.episodes(show=show, stage="failed"))):
        out[f"{op}_unanalyzed"] = per_call(ask, calls)
    board.close()
    start = time.perf_counter()
    bare_walk(root)
    out["bare_stat_walk"] = time.perf_counter() - start
    store.close()
    store = Store.open(root)
    store.counts()
    start = time.perf_counter()
    report = store.sync()
    out["sync"] = time.perf_counter() - start
    assert not report.added and not report.changed, report
    store.close()
    out["bare_parse"] = min(probe(root, "bare")["seconds"] for _ in range(2))
    # verify twice: in full with a cold memo (it remembers what it found clean), then on the unchanged store
    out["verify_full"] = probe(root, "verify_full")["seconds"]
    out["verify"] = probe(root, "verify")["seconds"]
    rebuilt = probe(root, "rebuild")
    out["rebuild"], out["rebuild_peak_mb"] = rebuilt["seconds"], rebuilt["peak_mb"]
    shutil.rmtree(root)
    shutil.rmtree(bare)
    return out


BARE_WORKER = r"""
import sys, time
sys.path.insert(0, {bench!r})
from bench_scale import bare_create
folder, n, start_at = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
for i in range(n):
    bare_create(folder, i)
while time.time() < start_at:
    time.sleep(0.001)
t = time.perf_counter()
for _ in range(2):
    for i in range(n):
        bare_create(folder, i, replace=True)
print(time.perf_counter() - t)
"""


def processes(top: str, per_proc: int = 200, rounds: int = 3) -> dict[str, dict[int, float]]:
    """Advances per second of 1, 2 and 4 processes, each on its own episodes of one show, and
    bare durable replaces per second (``bare_create(..., replace=True)``: temp file, fsync, rename,
    directory fsync, an fsynced event append) of 1, 2 and 4 processes, each in its own folders:
    the machine's own ceiling. Medians of ``rounds`` runs, statekit and bare interleaved."""
    root = os.path.join(top, "procs")
    store = Store.init(root)
    for p in range(4):
        for i in range(per_proc):
            store.create("procs", f"p{p}x{i:05d}")
    store.close()
    samples: dict[str, dict[int, list[float]]] = {"statekit": {}, "bare": {}}
    for r in range(rounds):
        for n in (1, 2, 4):
            for kind in (("statekit", "bare") if r % 2 == 0 else ("bare", "statekit")):
                start_at = time.time() + 1.0
                if kind == "statekit":
                    argv = [[sys.executable, "-c", WORKER.format(repo=str(HERE.parent)), root, f"p{p}x",
                             str(per_proc), str(start_at)] for p in range(n)]
                else:
                    folders = [os.path.join(top, f"bare-procs-{r}-{n}-{p}") for p in range(n)]
                    for folder in folders:
                        os.mkdir(folder)
                    argv = [[sys.executable, "-c", BARE_WORKER.format(bench=str(HERE)), folder, str(per_proc),
                             str(start_at)] for folder in folders]
                procs = [subprocess.Popen(a, stdout=subprocess.PIPE, text=True) for a in argv]
                seconds = [float(p.communicate()[0]) for p in procs]
                samples[kind].setdefault(n, []).append(n * 2 * per_proc / max(seconds))
                if kind == "bare":
                    for folder in folders:
                        shutil.rmtree(folder)
    shutil.rmtree(root)
    return {kind: {n: statistics.median(v) for n, v in by_n.items()} for kind, by_n in samples.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="also 100,000 episodes")
    parser.add_argument("--calls", type=int, default=100)
    parser.add_argument("--format", choices=["yaml", "json"], default="yaml")
    parser.add_argument("--no-ledger", dest="ledger", action="store_false",
                        help="a store before the ledger (unchained logs)")
    parser.add_argument("--sizes", default="", help="comma-separated sizes instead of 1000,10000[,100000]")
    parser.add_argument("--procs", action="store_true", help="also throughput of 1, 2 and 4 processes")
    parser.add_argument("--procs-only", action="store_true", help="only the throughput of 1, 2 and 4 processes")
    parser.add_argument("--proc-rounds", type=int, default=3, help="runs of each process count (medians)")
    parser.add_argument("--runs", type=int, default=1,
                        help="runs at each size (a new store each); every figure is the median of the runs")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.runs < 1 or args.calls < 1:
        parser.error("--runs and --calls must be at least 1")
    sizes = [int(x) for x in args.sizes.split(",")] if args.sizes else \
        [1_000, 10_000] + ([100_000] if args.full else [])
    results: dict[str, object] = {"load": os.getloadavg()[0], "format": args.format, "ledger": args.ledger}
    if args.procs_only:
        with tempfile.TemporaryDirectory(prefix="bench_scale-") as top:
            results["procs"] = processes(top, rounds=args.proc_rounds)
        if args.json:
            print(json.dumps(results))
        else:
            print_procs(results["procs"], args.proc_rounds)  # type: ignore[arg-type]
            print(f"load average at the start: {results['load']:.2f}, at the end: {os.getloadavg()[0]:.2f}")
        return
    with tempfile.TemporaryDirectory(prefix="bench_scale-") as top:
        for size in sizes:
            runs = [measure(size, args.calls, args.format, top, args.ledger) for _ in range(args.runs)]
            results[str(size)] = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
            if args.runs > 1:
                results[f"{size}_runs"] = runs
            if not args.json:
                print_size(size, results[str(size)], args.runs)  # type: ignore[arg-type]
        if args.procs:
            results["procs"] = processes(top, rounds=args.proc_rounds)
    small, large = results[str(sizes[0])], results[str(sizes[-1])]
    growth = {}
    for op in ("create", "advance", "get", "counts", "next", "list_stage_100", "list_page_100",
               "list_stage_page_100", "with_errors", "list_failed", "stuck_100", "dashboard_stage", "metrics", "sync", "verify_full", "verify",
               "rebuild"):
        scale = 1 if op not in ("sync", "verify_full", "verify", "rebuild") else sizes[-1] / sizes[0]
        growth[op] = large[op] / scale / small[op]  # type: ignore[index]
    results["growth"] = growth
    if args.json:
        print(json.dumps(results))
        return
    print(f"\ngrowth of the per-call cost from {sizes[0]:,} to {sizes[-1]:,} episodes (per episode for "
          "sync, verify, rebuild):")
    for op, g in growth.items():
        print(f"  {op:16s} {g:5.2f}x{'   GROWS' if g > 2 else ''}")
    if args.procs:
        print_procs(results["procs"], args.proc_rounds)  # type: ignore[arg-type]
    print(f"format {args.format}{'' if args.ledger else ', no ledger'}; load average at the start: "
          f"{results['load']:.2f}, at the end: {os.getloadavg()[0]:.2f}")


def print_procs(rates: dict[str, dict[int, float]], rounds: int) -> None:
    """Each kind's rate at 1, 2 and 4 processes, and its speed-up over 1 process."""
    print(f"\nprocesses on their own episodes (medians of {rounds} runs; target: statekit >= 1.6x at 2, >= 1.8x at 4)")
    for kind, label in (("statekit", "advances/s"), ("bare", "bare durable replaces/s")):
        by_n = rates[kind]
        print(f"  {label:24s} " + ", ".join(f"{n}: {r:6.0f} ({r / by_n[1]:.2f}x)" for n, r in by_n.items()))
    print("  statekit / bare:          " + ", ".join(
        f"{n}: {rates['statekit'][n] / rates['bare'][n]:.2f}x" for n in rates["statekit"]))


def print_size(size: int, r: dict[str, float], runs: int = 1) -> None:
    ms = {k: v * 1000 for k, v in r.items() if k != "rebuild_peak_mb"}
    print(f"\n{size:,} episodes in one show" + (f" (each figure the median of {runs} runs)" if runs > 1 else ""))
    print(f"  create   {ms['create']:7.2f} ms   bare durable create {ms['bare_create']:.2f} ms   "
          f"creates/s ratio {r['bare_create'] / r['create']:.2f}x (target >= 0.5x)")
    print(f"  advance  {ms['advance']:7.2f} ms   bare durable replace {ms['bare_replace']:.2f} ms   "
          f"ratio {r['bare_replace'] / r['advance']:.2f}x")
    for op in ("get", "counts", "next", "list_stage_100", "list_page_100", "list_stage_page_100", "with_errors",
               "list_failed", "stuck_100", "dashboard_stage", "metrics"):
        unanalyzed = ms.get(f"{op}_unanalyzed")
        print(f"  {op:14s} {ms[op]:7.3f} ms median" + ("" if unanalyzed is None else
              f"   without statistics {unanalyzed:7.3f} ms" + ("   SLOW (> 2 ms)" if unanalyzed > 2 else "")))
    print(f"  sync (nothing changed) {ms['sync']:8.1f} ms   bare stat walk {ms['bare_stat_walk']:.1f} ms   "
          f"{r['sync'] / r['bare_stat_walk']:.2f}x")
    print(f"  verify --full {r['verify_full']:7.2f} s    bare parse {r['bare_parse']:.2f} s   "
          f"{r['verify_full'] / r['bare_parse']:.2f}x (cold memo)")
    print(f"  verify   {r['verify']:7.2f} s    {r['verify'] / r['bare_parse']:.2f}x the bare parse (unchanged store: "
          "the memo of the first)")
    print(f"  rebuild  {r['rebuild']:7.2f} s    {r['rebuild'] / r['bare_parse']:.2f}x the bare parse (target <= 1.3x), "
          f"peak {r['rebuild_peak_mb']:.0f} MB (target < 300 MB)")


if __name__ == "__main__":
    main()
