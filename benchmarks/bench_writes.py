"""Durable ``advance`` throughput against the bare system-call sequence it must perform.

    python benchmarks/bench_writes.py [--ops 200] [--rounds 6] [--dir DIR] [--json] [--strict]

Two baselines, measured in the same run and interleaved with the store runs
(machines are noisy), with the same byte sizes statekit writes:

- ``bare``: write a temp file in the episode's directory, fsync, rename over
  the file, fsync the directory, append one event line, fsync it;
- ``bare+sqlite``: the same, plus one SQLite WAL commit of one upsert and one
  insert (``synchronous=NORMAL``), as the index needs.

Each store run advances one episode back and forth (downloading <-> failed,
with a cost), as a worker would, with the index updated in the loop.

Targets: issue 3 (index in the loop): JSON >= 0.6x and YAML >= 0.35x of
``bare+sqlite``. Issue 2 set JSON >= 0.7x, YAML >= 0.4x (with comments kept)
of ``bare`` before the index existed; issue 16 sets JSON >= 0.8x and YAML
>= 0.6x of ``bare``, index in the loop (the "issue 16" column).
Ratios are baseline median / store median; higher is better.
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

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import sqlite3  # noqa: E402

from statekit import Store  # noqa: E402

TARGETS = {"json": 0.6, "yaml": 0.35, "yaml+comments": 0.35}  # against bare+sqlite
WITHOUT_INDEX = {"json": 0.7, "yaml": 0.4, "yaml+comments": 0.4}  # issue 2, against bare
AGAINST_BARE = {"json": 0.8, "yaml": 0.6}  # issue 16: against bare, the index in the loop


def bare_sequence(folder: str, file_bytes: bytes, event_bytes: bytes) -> Callable[[], None]:
    """The minimum a durable write with an event log must do."""
    target = os.path.join(folder, "episode.yaml")
    log = os.path.join(folder, "events.jsonl")

    def once() -> None:
        fd, tmp = tempfile.mkstemp(prefix=".episode.yaml.", suffix=".tmp", dir=folder)
        os.write(fd, file_bytes)
        os.fsync(fd)
        os.close(fd)
        os.replace(tmp, target)
        dfd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        os.fsync(dfd)
        os.close(dfd)
        lfd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        os.write(lfd, event_bytes)
        os.fsync(lfd)
        os.close(lfd)

    return once


def with_sqlite_commit(folder: str, once: Callable[[], None]) -> Callable[[], None]:
    """``once`` plus one WAL commit of one upsert and one insert."""
    conn = sqlite3.connect(os.path.join(folder, "baseline.db"), isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    conn.execute("CREATE TABLE rows (k TEXT PRIMARY KEY, stage TEXT, version INTEGER, data TEXT)")
    conn.execute("CREATE TABLE log (id INTEGER PRIMARY KEY, k TEXT, version INTEGER, data TEXT)")
    state = {"version": 0}
    payload = "x" * 700

    def both() -> None:
        once()
        state["version"] += 1
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("INSERT INTO rows VALUES ('ep1', 'failed', ?, ?) ON CONFLICT (k) DO UPDATE SET "
                     "stage = excluded.stage, version = excluded.version, data = excluded.data",
                     (state["version"], payload))
        conn.execute("INSERT INTO log (k, version, data) VALUES ('ep1', ?, ?)", (state["version"], payload[:200]))
        conn.execute("COMMIT")

    return both


def store_advance(root: str, fmt: str, comments: bool) -> tuple[Callable[[], None], Store, Path]:
    store = Store.init(root, format=fmt)
    store.create("bench", "ep1", title="Benchmark episode", metadata={"source": "https://archive.org/x"})
    store.advance("bench", "ep1", "downloading")
    path = Path(store.root, "shows/bench/episodes/ep1", f"episode.{fmt}")
    if comments:
        text = path.read_text().replace("title:", "# reviewed by ana on 2026-11-02\ntitle:", 1)
        path.write_text(text.replace("Benchmark episode", "Benchmark episode  # the final title", 1))
    state = {"stage": "downloading"}

    def once() -> None:
        state["stage"] = "failed" if state["stage"] == "downloading" else "downloading"
        store.advance("bench", "ep1", state["stage"], cost=0.001, message="benchmark step")

    return once, store, path


def timed(fn: Callable[[], None], n: int) -> list[float]:
    out = []
    for _ in range(n):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ops", type=int, default=200, help="writes per block (default 200)")
    parser.add_argument("--rounds", type=int, default=6, help="interleaved rounds (default 6)")
    parser.add_argument("--dir", default=None, help="where to write (default: the system temp dir)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--strict", action="store_true", help="exit 1 if a target is missed")
    args = parser.parse_args()

    work = tempfile.mkdtemp(prefix="statekit-bench-", dir=args.dir)
    try:
        runs: dict[str, Callable[[], None]] = {}
        files: dict[str, Path] = {}
        for name, fmt, comments in (("json", "json", False), ("yaml", "yaml", False),
                                    ("yaml+comments", "yaml", True)):
            runs[name], _store, files[name] = store_advance(os.path.join(work, name), fmt, comments)
        runs["json"]()  # sizes of what statekit really writes, for the baseline
        sample = files["yaml"].read_bytes()
        log = files["json"].with_name("events.jsonl").read_bytes().splitlines(keepends=True)[-1]
        bare_dir = os.path.join(work, "bare")
        both_dir = os.path.join(work, "bare+sqlite")
        os.makedirs(bare_dir)
        os.makedirs(both_dir)
        runs = {"bare": bare_sequence(bare_dir, sample, log),
                "bare+sqlite": with_sqlite_commit(both_dir, bare_sequence(both_dir, sample, log)), **runs}

        samples: dict[str, list[float]] = {name: [] for name in runs}
        names = list(runs)
        for fn in runs.values():  # warm up caches and the file system
            timed(fn, 20)
        for r in range(args.rounds):
            order = names[r % len(names):] + names[: r % len(names)]
            for name in order:
                samples[name] += timed(runs[name], args.ops)
        assert b"# reviewed by ana" in files["yaml+comments"].read_bytes(), "comments were not kept"

        bare = statistics.median(samples["bare"])
        base = statistics.median(samples["bare+sqlite"])
        results = []
        for name in names:
            med = statistics.median(samples[name])
            ratio = base / med
            target = TARGETS.get(name)
            target_bare = AGAINST_BARE.get(name)
            results.append({
                "run": name, "median_us": round(med * 1e6, 1), "ops_per_s": round(1 / med, 1),
                "ratio": round(ratio, 3), "ratio_vs_bare": round(bare / med, 3), "target": target,
                "ok": None if target is None else ratio >= target, "target_vs_bare": target_bare,
                "ok_vs_bare": None if target_bare is None else bare / med >= target_bare,
            })
    finally:
        shutil.rmtree(work, ignore_errors=True)

    if args.json:
        print(json.dumps({"ops": args.ops, "rounds": args.rounds, "results": results}, indent=2))
    else:
        print(f"durable advance, index in the loop ({args.rounds} rounds x {args.ops} writes, medians)")
        print(f"{'run':<15}{'median':>12}{'writes/s':>10}{'vs bare+sqlite':>16}{'target':>8}{'vs bare':>10}"
              f"{'issue 16':>10}")
        for r in results:
            verdict = "" if r["ok"] is None else ("  ok" if r["ok"] else "  MISSED")
            target = "" if r["target"] is None else f">={r['target']}"
            bare_target = "" if r["target_vs_bare"] is None else f">={r['target_vs_bare']}"
            bare_verdict = "" if r["ok_vs_bare"] is None else ("  ok" if r["ok_vs_bare"] else "  MISSED")
            print(f"{r['run']:<15}{r['median_us']:>10.0f}us{r['ops_per_s']:>10.0f}{r['ratio']:>15.2f}x"
                  f"{target:>8}{r['ratio_vs_bare']:>9.2f}x{verdict:8}{bare_target:>6}{bare_verdict}")
    missed = [r for r in results if r["ok"] is False or r["ok_vs_bare"] is False]
    return 1 if args.strict and missed else 0


if __name__ == "__main__":
    sys.exit(main())
