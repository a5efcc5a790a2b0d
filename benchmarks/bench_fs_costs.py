"""What this machine's file system charges for the calls statekit's writes make, one by one.

    python benchmarks/bench_fs_costs.py [--dir DIR] [--ops 300] [--rounds 5] [--json]

Each operation is run ``--ops`` times in a row in a fresh folder under ``--dir`` (put it on the
store's file system), the operations interleaved round by round; printed are the medians of
``--rounds`` of the wall time and of the CPU time (user + system: the kernel's own work, which
waiting for the disk is not) per call, the lowest and highest round's CPU, and each one's CPU as
a ratio to a ``link`` (a new name for a file that exists: no new inode).

Why: what a new inode costs drives several of the benchmarks' ratios, and on some machines it
is far from steady. Seen on the 2-core VM this project is tested on (2026-12-07, ext4 with
``discard``, Firecracker's kernel): a new file cost anywhere from about 20 to 1,000 us of CPU in the
kernel, from one minute to the next, named or not (``O_TMPFILE``), while a ``link`` stayed near
20 us and a ``rename`` near 30 us. statekit makes a new file where a write needs a new inode: an
episode's ``create`` makes three (its lock file, its event log, the temp file renamed to its
file) and a folder; each of its first three advances makes one (the temp file: there is no
backup old enough yet to reuse, ``backups.Backups.spare``), the first also its backup folder;
later advances make none. The bare baselines make one per call (``mkstemp``), so a drift in this
cost moves both sides of those ratios, by different amounts.
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

DATA = b"x" * 800
"""About an episode file's size."""


def operations(folder: str, ops: int) -> dict[str, tuple[Callable[[], None], Callable[[int], None]]]:
    """name -> (set-up, untimed; the call, timed with its index), each in its own sub-folder."""

    def sub(name: str) -> str:
        return os.path.join(folder, name)

    def fresh(name: str) -> Callable[[], None]:
        def setup() -> None:
            shutil.rmtree(sub(name), ignore_errors=True)
            os.mkdir(sub(name))
        return setup

    def with_files(name: str) -> Callable[[], None]:
        def setup() -> None:
            fresh(name)()
            for i in range(ops):
                with open(os.path.join(sub(name), f"f{i}"), "wb") as f:
                    f.write(DATA)
        return setup

    def named(i: int) -> None:
        os.close(os.open(os.path.join(sub("named"), f"f{i}"), os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600))

    def unnamed(i: int) -> None:
        os.close(os.open(sub("unnamed"), os.O_RDWR | os.O_TMPFILE, 0o600))

    def new_file_synced(i: int) -> None:
        fd = os.open(os.path.join(sub("new-synced"), f"f{i}"), os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        os.write(fd, DATA)
        os.fsync(fd)
        os.close(fd)

    def overwrite_synced(i: int) -> None:
        fd = os.open(os.path.join(sub("overwrite"), f"f{i}"), os.O_RDWR)
        os.pwrite(fd, DATA, 0)
        os.fsync(fd)
        os.close(fd)

    def mkdir(i: int) -> None:
        os.mkdir(os.path.join(sub("mkdir"), f"d{i}"))

    def link(i: int) -> None:
        os.link(os.path.join(sub("link"), f"f{i}"), os.path.join(sub("link"), f"l{i}"))

    def rename(i: int) -> None:
        os.rename(os.path.join(sub("rename"), f"f{i}"), os.path.join(sub("rename"), f"r{i}"))

    def unlink(i: int) -> None:
        os.unlink(os.path.join(sub("unlink"), f"f{i}"))

    found: dict[str, tuple[Callable[[], None], Callable[[int], None]]] = {
        "create a named file (O_CREAT)": (fresh("named"), named),
        "create a file with no name (O_TMPFILE)": (fresh("unnamed"), unnamed),
        "new named file, 800 B, fsync": (fresh("new-synced"), new_file_synced),
        "overwrite 800 B in place, fsync": (with_files("overwrite"), overwrite_synced),
        "mkdir": (fresh("mkdir"), mkdir),
        "link (a second name)": (with_files("link"), link),
        "rename": (with_files("rename"), rename),
        "unlink": (with_files("unlink"), unlink),
    }
    try:
        fresh("probe")()
        os.close(os.open(sub("probe"), os.O_RDWR | os.O_TMPFILE, 0o600))
    except (OSError, AttributeError):  # a file system (or platform) without O_TMPFILE
        del found["create a file with no name (O_TMPFILE)"]
    return found


def timed(setup: Callable[[], None], call: Callable[[int], None], ops: int) -> tuple[float, float]:
    """(wall, CPU) per call, in microseconds."""
    setup()
    start, cpu = time.perf_counter(), time.process_time()
    for i in range(ops):
        call(i)
    return (time.perf_counter() - start) / ops * 1e6, (time.process_time() - cpu) / ops * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", default=None, help="where to work (default: the system temp dir)")
    parser.add_argument("--ops", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.ops < 1 or args.rounds < 1:
        parser.error("--ops and --rounds must be at least 1")
    if args.dir is not None and not os.path.isdir(args.dir):
        parser.error(f"--dir {args.dir}: not a folder (give an existing folder on the file system to measure)")
    folder = tempfile.mkdtemp(prefix="bench-fs-", dir=args.dir)
    try:
        ops = operations(folder, args.ops)
        samples: dict[str, list[tuple[float, float]]] = {name: [] for name in ops}
        for r in range(args.rounds):
            for name in (list(ops) if r % 2 == 0 else list(reversed(ops))):
                samples[name].append(timed(*ops[name], args.ops))
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    medians = {name: (statistics.median(w for w, _ in s), statistics.median(c for _, c in s))
               for name, s in samples.items()}
    spread = {name: (min(c for _, c in s), max(c for _, c in s)) for name, s in samples.items()}
    base = medians["link (a second name)"][1]
    load = os.getloadavg()
    if args.json:
        print(json.dumps({"load": load, "ops": args.ops, "rounds": args.rounds,
                          "per_call_us": {n: {"wall": round(w, 1), "cpu": round(c, 1),
                                              "cpu_lowest": round(spread[n][0], 1),
                                              "cpu_highest": round(spread[n][1], 1)}
                                          for n, (w, c) in medians.items()}}, indent=2))
        return
    print(f"per call, medians of {args.rounds} rounds of {args.ops} (load {load[0]:.2f}); "
          f"CPU as a ratio to a link's")
    print(f"  {'':42}{'wall':>10}{'CPU':>10}{'CPU lowest-highest':>20}{'ratio':>9}")
    for name, (wall, cpu) in medians.items():
        low, high = spread[name]
        ratio = f"{cpu / base:8.1f}x" if base > 0 else "        -"
        print(f"  {name:42}{wall:8.0f}us{cpu:8.0f}us{low:10.0f}-{high:.0f} us{ratio}")


if __name__ == "__main__":
    sys.exit(main())
