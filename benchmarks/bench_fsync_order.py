"""The two fsyncs of a durable write (event log, temp file) in four orders, system calls only.

    python benchmarks/bench_fsync_order.py [--rounds 24] [--ops 40] [--dir DIR]

What ``files.atomic_write`` does with the event line's fsync, modelled without statekit:
``early`` (the line written, its fsync started on a helper thread before the temp file is
made), ``late`` (started once the temp file is written, right before its own fsync: what
statekit does), ``helper_all`` (the helper opens, writes and fsyncs the log itself, as
statekit did before), ``serial`` (no helper: the file's fsync, then the log's). Each then
renames the temp file over the file and fsyncs the folder. Blocks of ``--ops`` writes
alternate for ``--rounds`` rounds; printed are the medians of the blocks' wall (median
write) and CPU (``process_time``) per write, and the medians of the per-round ratios.
On ext4, two fsyncs issued together can share one journal commit; one started alone
commits alone and the other may need a second.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable

LINE = b"x" * 890 + b"\n"
BODY = b"y" * 789 + b"\n"


class Helper:
    """One thread that runs one job at a time, handed over with two plain locks (as ``files._Syncer``)."""

    def __init__(self) -> None:
        self.go = threading.Lock()
        self.go.acquire()
        self.done = threading.Lock()
        self.done.acquire()
        self.job: Callable[[], None] = lambda: None
        threading.Thread(target=self._loop, daemon=True).start()

    def _loop(self) -> None:
        while True:
            self.go.acquire()
            self.job()
            self.done.release()

    def start(self, job: Callable[[], None]) -> None:
        self.job = job
        self.go.release()

    def wait(self) -> None:
        self.done.acquire()


def orders(folder: int) -> dict[str, Callable[[], None]]:
    helper = Helper()

    def log() -> int:
        fd = os.open("log", os.O_WRONLY | os.O_APPEND, dir_fd=folder)
        os.write(fd, LINE)
        return fd

    def temp() -> int:
        fd = os.open(".tmp", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644, dir_fd=folder)
        os.write(fd, BODY)
        return fd

    def finish(fd: int) -> None:
        os.close(fd)
        os.rename(".tmp", "file", src_dir_fd=folder, dst_dir_fd=folder)
        os.fsync(folder)

    def early() -> None:
        fd = log()
        helper.start(lambda: os.fsync(fd))
        f = temp()
        os.fsync(f)
        helper.wait()
        os.close(fd)
        finish(f)

    def late() -> None:
        fd = log()
        f = temp()
        helper.start(lambda: os.fsync(fd))
        os.fsync(f)
        helper.wait()
        os.close(fd)
        finish(f)

    def helper_all() -> None:
        def append() -> None:
            fd = log()
            os.fsync(fd)
            os.close(fd)

        helper.start(append)
        f = temp()
        os.fsync(f)
        helper.wait()
        finish(f)

    def serial() -> None:
        fd = log()
        f = temp()
        os.fsync(f)
        os.fsync(fd)
        os.close(fd)
        finish(f)

    return {"early": early, "late": late, "helper_all": helper_all, "serial": serial}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=24)
    parser.add_argument("--ops", type=int, default=40)
    parser.add_argument("--dir", default=None)
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="statekit-fsync-", dir=args.dir)
    folder = os.open(work, os.O_RDONLY | os.O_DIRECTORY)
    load = os.getloadavg()[0]
    try:
        open(os.path.join(work, "log"), "ab").close()
        runs = orders(folder)
        names = list(runs)
        wall: dict[str, list[float]] = {k: [] for k in names}
        cpu: dict[str, list[float]] = {k: [] for k in names}
        for r in range(args.rounds):
            for name in names[r % len(names):] + names[:r % len(names)]:
                run = runs[name]
                start_cpu = time.process_time()
                times = []
                for _ in range(args.ops):
                    start = time.perf_counter()
                    run()
                    times.append(time.perf_counter() - start)
                cpu[name].append((time.process_time() - start_cpu) / args.ops)
                wall[name].append(statistics.median(times))
    finally:
        os.close(folder)
        shutil.rmtree(work, ignore_errors=True)
    print(f"per write, medians of {args.rounds} rounds x {args.ops} (load {load:.2f} -> {os.getloadavg()[0]:.2f})")
    for name in names:
        print(f"  {name:10s} wall {statistics.median(wall[name]) * 1e6:6.0f} us  cpu {statistics.median(cpu[name]) * 1e6:5.0f} us")
    for a, b in (("late", "early"), ("late", "helper_all"), ("early", "helper_all"), ("serial", "late")):
        w = statistics.median(x / y for x, y in zip(wall[a], wall[b]))
        c = statistics.median(x / y for x, y in zip(cpu[a], cpu[b]))
        print(f"  {a}/{b}: wall {w:.3f}  cpu {c:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
