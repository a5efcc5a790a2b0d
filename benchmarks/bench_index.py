"""The index at scale: rebuild, sync and queries, against same-run baselines.

    python benchmarks/bench_index.py [--episodes 100000] [--query-episodes 1000000]
                                     [--dir DIR] [--rounds 2] [--json]

Targets (issue 3):

- rebuild of N YAML episodes with 5 events each: at most 2x the bare cost of
  walking, reading and parsing those files with the fastest parser (PyYAML's
  C loader, orjson for the event lines), and under 300 MB peak memory;
- sync with nothing changed: at most 2x a bare ``os.scandir`` + ``stat`` walk
  of the same tree; with 50 edited files, at most that plus reading those 50;
- counts, next and a cost-by-stage query on 1,000,000 indexed episodes:
  median under 50 ms each.

``--dir`` keeps the generated store (and reuses it on the next run).
Rebuilds and baselines run in fresh subprocesses (peak memory is theirs).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from make_store import make_store  # noqa: E402

from statekit import Store  # noqa: E402

PROBE = r"""
import json, os, resource, sys, time
sys.path.insert(0, {repo!r})
root, what = sys.argv[1], sys.argv[2]
start = time.perf_counter()
if what == "bare":
    import orjson, yaml
    shows = os.path.join(root, "shows")
    for show in sorted(os.listdir(shows)):
        folder = os.path.join(shows, show, "episodes")
        with os.scandir(folder) as entries:
            for entry in entries:
                with open(os.path.join(entry.path, "episode.yaml"), "rb") as f:
                    yaml.load(f.read(), Loader=yaml.CSafeLoader)
                with open(os.path.join(entry.path, "events.jsonl"), "rb") as f:
                    [orjson.loads(line) for line in f.read().splitlines()]
else:
    from statekit import Store
    store = Store.open(root)  # (a store without an index builds one here: not timed)
    start = time.perf_counter()
    report = store.rebuild_index()
    assert report.episodes and not report.problems, report
seconds = time.perf_counter() - start
print(json.dumps({{"seconds": seconds, "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}}))
"""


def probe(root: str, what: str) -> dict[str, float]:
    code = PROBE.format(repo=str(HERE.parent))
    out = subprocess.run([sys.executable, "-c", code, root, what], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def tree_walk(root: str) -> int:
    """A bare os.scandir + stat walk of the store's tree (the target's baseline)."""
    n = 0
    stack = [os.path.join(root, "shows")]
    while stack:
        with os.scandir(stack.pop()) as entries:
            for entry in entries:
                entry.stat(follow_symlinks=False)
                n += 1
                if entry.is_dir(follow_symlinks=False):
                    stack.append(entry.path)
    return n


def stat_walk(root: str) -> int:
    """The least a sync can do: every show, every episode folder, one stat of its file."""
    n = 0
    with os.scandir(os.path.join(root, "shows")) as shows:
        for show in shows:
            with os.scandir(os.path.join(show.path, "episodes")) as episodes:
                for ep in episodes:
                    os.stat(os.path.join(ep.path, "episode.yaml"))
                    n += 1
    return n


def timed(fn, *args):  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


def edit(root: str, rng: random.Random, count: int) -> list[str]:
    shows = sorted(os.listdir(os.path.join(root, "shows")))
    paths = []
    while len(paths) < count:
        show = rng.choice(shows)
        folder = os.path.join(root, "shows", show, "episodes")
        ep = rng.choice(os.listdir(folder))
        path = os.path.join(folder, ep, "episode.yaml")
        if path in paths:
            continue
        with open(path, encoding="utf-8") as f:
            text = f.read()
        with open(path, "w", encoding="utf-8") as f:
            f.write(text.replace("title: ", f"title: Edited {rng.random():.6f} ", 1))
        paths.append(path)
    return paths


def read_all(paths: list[str]) -> None:
    for path in paths:
        with open(path, "rb") as f:
            f.read()


def query_store(root: str, n: int) -> Store:
    """A store whose index holds ``n`` synthetic episodes (no files: queries only read the index)."""
    from datetime import datetime, timedelta, timezone

    from statekit.index import episode_row
    from statekit.index.rebuild import flush  # noqa: F401
    from statekit.index.rows import json_text
    from statekit.index.scan import REBUILD_BATCH, RebuildReport  # noqa: F401
    from statekit.index.tables import stage_totals
    from statekit.models import Episode

    shutil.rmtree(root, ignore_errors=True)  # synthetic: made afresh each run
    store = Store.init(root)
    rng = random.Random(11)
    stages = list(store.pipeline.stages)
    weights = [30, 1, 5, 1, 5, 1, 5, 5, 4, 40, 3]
    start = datetime(2026, 1, 1, tzinfo=timezone.utc)
    totals: dict[tuple[str, str], list[float]] = {}
    report = RebuildReport()
    with store.index.engine.connect() as conn, conn.begin():
        rows: list[dict] = []
        for i in range(n):
            show, ep = f"show{i % 100:03d}", f"ep{i:07d}"
            stage = rng.choices(stages, weights)[0]
            at = start + timedelta(seconds=rng.randint(0, 30_000_000))
            costs = {s: round(rng.random() * 0.05, 4) for s in ("downloading", "converting") if rng.random() < 0.6}
            model = Episode.model_construct(
                schema_version=1, show_id=show, episode_id=ep, title=f"Episode {i}", stage=stage,
                previous_stage="downloading" if stage == "failed" else None, version=3, created_at=at,
                updated_at=at, stage_entered_at=at, message=None, costs=costs,
                cost_total=round(sum(costs.values()), 9), attempts={stage: 1}, approvals={}, checkpoints={},
                error_history=[], metadata={"archive_identifier": f"hy0_{ep}", "tags": ["radio"]},
                files={"source_url": f"https://archive.org/download/{ep}.mp3"},
            )
            row = episode_row(model, model.model_dump(mode="json"), store.pipeline, path=f"shows/{show}/{ep}",
                              size=900, mtime_ns=0, sha256="0" * 64, checked_at_ns=0, position=i)
            rows.append(dict(row, data=json_text(row["data"]), costs=json_text(row["costs"])))  # flush takes text
            t = totals.setdefault((show, stage), [0, 0.0])
            t[0] += 1
            for s, c in costs.items():
                totals.setdefault((show, s), [0, 0.0])[1] += c
            if len(rows) >= 5000:
                flush(conn, rows, [], report)
        flush(conn, rows, [], report)
        conn.execute(stage_totals.insert(), [{"show_id": s, "stage": st, "episodes": int(v[0]), "cost": v[1]}
                                             for (s, st), v in totals.items()])
    from statekit.index.dialect import finish_build

    finish_build(store.index.engine)
    return store


def median_ms(fn, runs: int = 30) -> float:  # type: ignore[no-untyped-def]
    fn()  # warm
    return statistics.median(timed(fn) for _ in range(runs)) * 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=100_000)
    parser.add_argument("--query-episodes", type=int, default=1_000_000)
    parser.add_argument("--dir", default=None, help="keep the generated store here (reused when present)")
    parser.add_argument("--rounds", type=int, default=2, help="rebuild/baseline runs each (default 2)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    work = args.dir or tempfile.mkdtemp(prefix="statekit-bench-index-")
    root = os.path.join(work, "store")
    results: dict[str, object] = {"episodes": args.episodes, "query_episodes": args.query_episodes}
    try:
        if not os.path.exists(os.path.join(root, "statekit.yaml")):
            print(f"generating {args.episodes} episodes in {root} ...", file=sys.stderr)
            make_store(root, args.episodes)
            time.sleep(2.1)  # older than the racy window, as a store at rest is

        # rebuild vs walking, reading and parsing with the fastest parser
        bare, built = [], []
        for _ in range(args.rounds):
            bare.append(probe(root, "bare"))
            built.append(probe(root, "rebuild"))
        bare_s = statistics.median(b["seconds"] for b in bare)
        rebuild_s = statistics.median(b["seconds"] for b in built)
        results["rebuild"] = {"bare_s": round(bare_s, 2), "rebuild_s": round(rebuild_s, 2),
                              "ratio": round(rebuild_s / bare_s, 2), "target_ratio": 2.0,
                              "peak_mb": round(max(b["peak_mb"] for b in built), 1), "target_peak_mb": 300}

        # sync with nothing changed vs a bare scandir + stat walk
        store = Store.open(root)
        store.sync()
        tree_s = statistics.median(timed(tree_walk, root) for _ in range(5))
        walk_s = statistics.median(timed(stat_walk, root) for _ in range(5))
        sync_s = statistics.median(timed(store.sync) for _ in range(5))
        results["sync_unchanged"] = {"tree_walk_s": round(tree_s, 3), "sync_s": round(sync_s, 3),
                                     "ratio": round(sync_s / tree_s, 2), "target_ratio": 2.0,
                                     "minimal_walk_s": round(walk_s, 3),
                                     "ratio_to_minimal": round(sync_s / walk_s, 2)}

        # sync with 50 edited files vs that walk plus reading the 50
        rng = random.Random(5)
        runs = []
        for _ in range(3):
            paths = edit(root, rng, 50)
            read_s = timed(read_all, paths)
            sync_s = timed(store.sync)
            runs.append((sync_s, read_s))
        sync50 = statistics.median(r[0] for r in runs)
        read50 = statistics.median(r[1] for r in runs)
        results["sync_50_edited"] = {"tree_walk_s": round(tree_s, 3), "read_50_s": round(read50, 4),
                                     "sync_s": round(sync50, 3), "budget_s": round(2 * tree_s + read50, 3),
                                     "ok": sync50 <= 2 * tree_s + read50,
                                     "minimal_budget_s": round(2 * walk_s + read50, 3)}
        store.close()

        # queries on a million indexed episodes
        if args.query_episodes:
            print(f"indexing {args.query_episodes} synthetic episodes ...", file=sys.stderr)
            big = query_store(os.path.join(work, "million"), args.query_episodes)
            results["queries_ms"] = {
                "counts": round(median_ms(big.counts), 2),
                "next": round(median_ms(lambda: big.next("downloading", limit=10)), 2),
                "costs_by_stage": round(median_ms(lambda: big.costs(by="stage")), 2),
                "costs_by_show": round(median_ms(lambda: big.costs(by="show")), 2),
                "target_ms": 50,
            }
            big.close()
    finally:
        if not args.dir:
            shutil.rmtree(work, ignore_errors=True)

    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    r = results["rebuild"]
    print(f"rebuild of {args.episodes} episodes: {r['rebuild_s']}s vs bare walk+read+parse {r['bare_s']}s = "
          f"{r['ratio']}x (target <= 2x); peak {r['peak_mb']} MB (target < 300 MB)")
    s = results["sync_unchanged"]
    print(f"sync, nothing changed: {s['sync_s']}s vs scandir+stat walk of the tree {s['tree_walk_s']}s = "
          f"{s['ratio']}x (target <= 2x); vs one stat per episode file {s['minimal_walk_s']}s = "
          f"{s['ratio_to_minimal']}x")
    s = results["sync_50_edited"]
    print(f"sync, 50 edited: {s['sync_s']}s vs budget 2 x tree walk + read 50 = {s['budget_s']}s "
          f"({'ok' if s['ok'] else 'MISSED'}); the same budget from the minimal walk: {s['minimal_budget_s']}s")
    if "queries_ms" in results:
        q = results["queries_ms"]
        print(f"on {args.query_episodes} indexed episodes (median ms): counts {q['counts']}, next {q['next']}, "
              f"cost by stage {q['costs_by_stage']}, cost by show {q['costs_by_show']} (target < 50)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
