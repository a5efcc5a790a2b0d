"""add_asset of a large file, measured against a plain copy plus a hash of it.

    python benchmarks/bench_assets.py [--mb 100] [--rounds 9] [--dir DIR] [--json] [--strict]

Each round gives the source file new content (its first bytes change, so
neither side can skip work by finding the content stored already), then
times, alternating which goes first:

- ``copy+hash`` (the baseline): ``shutil.copyfile`` (sendfile in the
  kernel) and ``hashlib.file_digest`` of the source: two passes, nothing
  synced;
- ``copy+fsync+hash``: the same, with the copy fsynced (what a durable copy
  costs at least);
- ``add_asset``: one pass that hashes while it copies, fsync, rename into
  ``objects/``, folder fsync, the sidecar, and the episode's durable write.

Target (issue 6): the median ``add_asset`` within 1.3x of ``copy+hash``.
The objects and copies are deleted after every round, so the page cache
and the disk see the same load each time.
"""

from __future__ import annotations

import argparse
import hashlib
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

from statekit import Store  # noqa: E402
from statekit.assets import object_path  # noqa: E402

TARGET = 1.3


def make_source(path: Path, size: int) -> None:
    block = hashlib.sha256(b"statekit").digest() * 32768  # 1 MiB of varied bytes
    with open(path, "wb") as f:
        written = 0
        while written < size:
            f.write(block[: size - written])
            written += len(block)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mb", type=int, default=100, help="size of the file in MB (10^6 bytes)")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--dir", default=None, help="where to work (default: a temp dir on the repo's disk)")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--strict", action="store_true", help="exit 1 if the target is missed")
    args = parser.parse_args()

    base = Path(args.dir or tempfile.mkdtemp(prefix="bench-assets-", dir=Path(__file__).resolve().parent.parent))
    base.mkdir(parents=True, exist_ok=True)
    try:
        source = base / "source.wav"
        make_source(source, args.mb * 1_000_000)
        store = Store.init(base / "store")
        store.create("bench", "e")
        copy = base / "copy.wav"

        def copy_hash(sync: bool) -> Callable[[], None]:
            def run() -> None:
                shutil.copyfile(source, copy)
                if sync:
                    fd = os.open(copy, os.O_RDONLY)
                    os.fsync(fd)
                    os.close(fd)
                with open(source, "rb") as f:
                    hashlib.file_digest(f, "sha256").hexdigest()
            return run

        def add() -> None:
            store.add_asset("bench", "e", source, name="audio.wav")

        link = base / "store" / "shows" / "bench" / "episodes" / "e" / "assets" / "audio.wav"

        def cleanup() -> None:  # the link in the episode folder too: else it keeps the last round's data alive
            for path in (copy, link):
                if path.exists():
                    path.unlink()
            record = store.get("bench", "e").assets.get("audio.wav")
            if record is not None:
                for path in (object_path(store.root, record.sha256), object_path(store.root, record.sha256) + ".json"):
                    if os.path.exists(path):
                        os.unlink(path)

        cases: dict[str, Callable[[], None]] = {
            "copy+hash": copy_hash(False), "copy+fsync+hash": copy_hash(True), "add_asset": add}
        times: dict[str, list[float]] = {name: [] for name in cases}
        for r in range(args.rounds + 1):  # round 0 warms up and is not counted
            order = list(cases) if r % 2 else list(reversed(cases))
            for name in order:
                with open(source, "r+b") as f:  # new content: nothing can be found stored already
                    f.write(f"round {r} {name} {time.time_ns()}".encode().ljust(64, b"."))
                os.sync()
                started = time.perf_counter()
                cases[name]()
                elapsed = time.perf_counter() - started
                cleanup()
                if r:
                    times[name].append(elapsed)
        medians = {name: statistics.median(t) for name, t in times.items()}
        ratio = medians["add_asset"] / medians["copy+hash"]
        result = {
            "mb": args.mb, "rounds": args.rounds,
            "median_ms": {name: round(m * 1000, 1) for name, m in medians.items()},
            "add_asset_vs_copy_hash": round(ratio, 3),
            "add_asset_vs_durable_copy_hash": round(medians["add_asset"] / medians["copy+fsync+hash"], 3),
            "target": TARGET, "met": ratio <= TARGET,
        }
        if args.json:
            print(json.dumps(result, indent=2))
        else:
            print(f"add_asset of {args.mb} MB, {args.rounds} rounds (medians)")
            for name, m in medians.items():
                print(f"  {name:<16} {m * 1000:8.1f} ms   {m / medians['copy+hash']:.2f}x copy+hash")
            print(f"target: add_asset <= {TARGET}x copy+hash: {'met' if result['met'] else 'MISSED'} "
                  f"({ratio:.2f}x; {result['add_asset_vs_durable_copy_hash']:.2f}x a durable copy+hash)")
        return 1 if args.strict and not result["met"] else 0
    finally:
        if args.dir is None:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
