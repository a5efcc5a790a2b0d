"""Retention, measured on the demo store aged artificially (issue 18, part 3).

    python benchmarks/bench_compact.py [--store DIR] [--rounds 3] [--json]

Makes the ``make demo`` store (or copies ``--store``), sets every file under
``shows/`` 40 days back (the "aged" store), then, on fresh copies, alternating
round by round:

1. **Space**: the bytes of the event logs and checkpoints before and after
   ``statekit compact`` (what it prints), and the whole ``shows/`` tree.
2. **Compaction time** against a baseline measured in the same run: the same
   files read, gzipped (level 9) and written beside themselves with no fsync,
   no lock and no check (``gzip -9 -k`` in Python). The ratio is what the
   durability (fsync of each file and folder), the locks and the read-back
   check cost.
3. **Reading**: ``store.events`` of every episode on the compacted store
   against the plain one (the gzip is read whole and inflated in memory).
4. **The first write after compaction** (it makes the log plain again,
   durably) against a write to a plain log.

Medians over the rounds; the machine's load is printed beside them.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from statekit import Store  # noqa: E402
from statekit.demo import run_demo  # noqa: E402

DAY = 86400


def age(root: Path, days: float = 40) -> None:
    then = time.time() - days * DAY
    for folder, _dirs, names in os.walk(root / "shows"):
        for name in names:
            os.utime(os.path.join(folder, name), (then, then), follow_symlinks=False)


def kept_files(root: Path) -> list[Path]:
    """The files compaction may compress: every events.jsonl and checkpoint."""
    out = []
    for folder, _dirs, names in os.walk(root / "shows"):
        for name in names:
            if name == "events.jsonl" or (folder.endswith("/checkpoints") and name.endswith(".json")):
                out.append(Path(folder, name))
    return out


def tree_bytes(root: Path) -> int:
    return sum(os.lstat(os.path.join(f, n)).st_size for f, _d, ns in os.walk(root / "shows") for n in ns)


def kept_blocks(root: Path) -> int:
    """Bytes the disk allocates to the logs and checkpoints, in either form (small files take whole blocks)."""
    return sum(os.lstat(os.path.join(f, n)).st_blocks * 512 for f, _d, ns in os.walk(root / "shows") for n in ns
               if n.startswith("events.jsonl") or (f.endswith("/checkpoints") and ".json" in n))


def baseline(root: Path) -> float:
    start = time.perf_counter()
    for path in kept_files(root):
        data = gzip.compress(path.read_bytes(), compresslevel=9, mtime=0)
        Path(str(path) + ".gz").write_bytes(data)
    return time.perf_counter() - start


def read_all(store: Store) -> float:
    keys = [(e.show_id, e.episode_id) for e in store.list()]
    start = time.perf_counter()
    for show, ep in keys:
        store.events(show, ep)
    return time.perf_counter() - start


def first_write(store: Store, keys: list[tuple[str, str]]) -> list[float]:
    times = []
    for show, ep in keys:
        start = time.perf_counter()
        store.update(show, ep, metadata={**store.get(show, ep).metadata, "bench": True})
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--store", help="A store to copy instead of running the demo.")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-compact-", dir=os.environ.get("STATEKIT_BENCH_DIR")))
    try:
        if args.store:
            template = work / "template"
            shutil.copytree(args.store, template, symlinks=True)
        else:
            print("running the demo (about a minute) ...", file=sys.stderr)
            run_demo(work / "demo")
            template = work / "demo" / "store"
        age(template)
        results: dict[str, list[float]] = {"baseline_s": [], "compact_s": [], "read_plain_s": [],
                                           "read_compacted_s": [], "write_plain_ms": [], "write_inflating_ms": []}
        space: dict[str, int] = {}
        for n in range(args.rounds):
            plain_copy, compact_copy = work / f"plain{n}", work / f"compact{n}"
            shutil.copytree(template, plain_copy, symlinks=True)
            shutil.copytree(template, compact_copy, symlinks=True)
            results["baseline_s"].append(baseline(plain_copy))
            for path in kept_files(plain_copy):
                os.unlink(str(path) + ".gz")
            store = Store.open(compact_copy)
            before_tree, before_blocks = tree_bytes(compact_copy), kept_blocks(compact_copy)
            start = time.perf_counter()
            report = store.compact()
            results["compact_s"].append(time.perf_counter() - start)
            space = {"episodes": report.checked, "compacted_episodes": len(report.compacted),
                     "files": sum(len(c.files) for c in report.compacted), "bytes_before": report.bytes_before,
                     "bytes_after": report.bytes_after, "bytes_saved": report.saved,
                     "shows_tree_before": before_tree, "shows_tree_after": tree_bytes(compact_copy),
                     "allocated_before": before_blocks, "allocated_after": kept_blocks(compact_copy)}
            plain = Store.open(plain_copy)
            results["read_plain_s"].append(read_all(plain))
            results["read_compacted_s"].append(read_all(Store.open(compact_copy)))
            keys = [(c.show_id, c.episode_id) for c in report.compacted][n * 10:(n + 1) * 10]
            results["write_plain_ms"] += [t * 1000 for t in first_write(plain, keys)]
            results["write_inflating_ms"] += [t * 1000 for t in first_write(store, keys)]
            shutil.rmtree(plain_copy)
            shutil.rmtree(compact_copy)
        med = {k: statistics.median(v) for k, v in results.items()}
        out = {
            "space": space,
            "saved_pct_of_logs_and_checkpoints": round(100 * space["bytes_saved"] / space["bytes_before"], 1),
            "saved_pct_of_shows_tree": round(100 * (1 - space["shows_tree_after"] / space["shows_tree_before"]), 1),
            "medians": {k: round(v, 4) for k, v in med.items()},
            "ratios": {"compact_vs_gzip_baseline": round(med["compact_s"] / med["baseline_s"], 2),
                       "read_compacted_vs_plain": round(med["read_compacted_s"] / med["read_plain_s"], 2),
                       "first_write_after_compaction_vs_plain": round(
                           med["write_inflating_ms"] / med["write_plain_ms"], 2)},
            "rounds": args.rounds,
            "load": os.getloadavg(),
        }
        if args.json:
            print(json.dumps(out, indent=2))
            return
        s = space
        print(f"demo store aged 40 days: {s['episodes']} episodes, {s['compacted_episodes']} finished ones compacted "
              f"({s['files']} files)")
        print(f"  logs and checkpoints: {s['bytes_before']:,} -> {s['bytes_after']:,} bytes, "
              f"{s['bytes_saved']:,} saved ({out['saved_pct_of_logs_and_checkpoints']}%)")
        print(f"  on disk (whole blocks): {s['allocated_before']:,} -> {s['allocated_after']:,} bytes allocated "
              f"({100 * (1 - s['allocated_after'] / s['allocated_before']):.1f}% less)")
        print(f"  shows/ as a whole:    {s['shows_tree_before']:,} -> {s['shows_tree_after']:,} bytes "
              f"({out['saved_pct_of_shows_tree']}% less; the rest is episode files and media)")
        print(f"  compact {med['compact_s']:.2f} s vs gzip -9 of the same files {med['baseline_s']:.2f} s: "
              f"x{out['ratios']['compact_vs_gzip_baseline']}")
        print(f"  events() of every episode: compacted {med['read_compacted_s']:.3f} s vs plain "
              f"{med['read_plain_s']:.3f} s: x{out['ratios']['read_compacted_vs_plain']}")
        print(f"  first write after compaction {med['write_inflating_ms']:.1f} ms vs to a plain log "
              f"{med['write_plain_ms']:.1f} ms: x{out['ratios']['first_write_after_compaction_vs_plain']}")
        print(f"  medians of {args.rounds} rounds; load average {', '.join(f'{x:.2f}' for x in out['load'])}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
