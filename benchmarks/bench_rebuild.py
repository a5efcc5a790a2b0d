"""Rebuild against the bare walk + read + parse of the same files, on one store made once.

    python benchmarks/bench_rebuild.py DIR [--episodes 10000] [--format json] [--runs 5] [--repo PATH ...]

Makes the store in DIR (one show, 5 events an episode, as ``bench_scale``) unless it is
there, then runs, interleaved, the bare walk (orjson / C YAML loader) and ``rebuild-index``
of each ``--repo`` (a checkout of statekit: A/B of two branches on the same files), each in
a fresh process. Prints the medians of wall time, CPU (the process and its children; the parent's
alone) and the ratios to the bare walk, with the load average.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from bench_scale import BARE_WALK  # noqa: E402  (the same bare walk as bench_scale's)

PROBE = r"""
import json, os, resource, sys, time
sys.path.insert(0, {repo!r})
root, what = sys.argv[1], sys.argv[2]
def cpu():
    s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime
def own():
    s = resource.getrusage(resource.RUSAGE_SELF)
    return s.ru_utime + s.ru_stime
if what == "bare":
    import orjson, yaml
    start, c0, p0 = time.perf_counter(), cpu(), own()
""" + BARE_WALK.lstrip("\n") + r"""else:
    from statekit import Store
    store = Store.open(root)
    store.counts()  # the index is open (not timed)
    start, c0, p0 = time.perf_counter(), cpu(), own()
    report = store.rebuild_index()
    assert not report.problems, report.problems[:3]
print(json.dumps({{"seconds": time.perf_counter() - start, "cpu": cpu() - c0, "parent_cpu": own() - p0,
                  "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "worker_peak_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}}))
"""


def probe(repo: str, root: str, what: str) -> dict[str, float]:
    out = subprocess.run([sys.executable, "-c", PROBE.format(repo=repo), root, what],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dir")
    parser.add_argument("--episodes", type=int, default=10_000)
    parser.add_argument("--format", choices=["yaml", "json"], default="json")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--repo", action="append", help="statekit checkouts to compare (default: this one)")
    args = parser.parse_args()
    repos = args.repo or [str(HERE.parent)]
    if not os.path.exists(os.path.join(args.dir, "statekit.yaml")):
        from make_store import make_store

        from statekit import Store

        make_store(args.dir, args.episodes, shows=1, events=5, fmt=args.format).close()
        Store.open(args.dir).counts()
    samples: dict[str, list[dict[str, float]]] = {"bare": [], **{r: [] for r in repos}}
    for i in range(args.runs):
        order = ["bare", *repos]
        if i % 2:
            order.reverse()
        for what in order:
            samples[what].append(probe(repos[0], args.dir, "bare") if what == "bare"
                                 else probe(what, args.dir, "rebuild"))
    load = os.getloadavg()
    bare_s = statistics.median(s["seconds"] for s in samples["bare"])
    bare_c = statistics.median(s["cpu"] for s in samples["bare"])
    print(f"{args.format} {args.episodes} episodes, {args.runs} runs, load {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    print(f"  bare      wall {bare_s:6.3f} s  cpu {bare_c:6.3f} s")
    for r in repos:
        wall = statistics.median(s["seconds"] for s in samples[r])
        c = statistics.median(s["cpu"] for s in samples[r])
        parent = statistics.median(s["parent_cpu"] for s in samples[r])
        peak = max(s["peak_mb"] for s in samples[r])
        worker_peak = max(s.get("worker_peak_mb", 0) for s in samples[r])
        walls = " ".join(f"{s['seconds'] / b['seconds']:.2f}" for s, b in zip(samples[r], samples["bare"]))
        print(f"  {r}: wall {wall:6.3f} s ({wall / bare_s:.2f}x; each run {walls})  cpu {c:6.3f} s "
              f"({c / bare_c:.2f}x; the parent's {parent:.3f} s)  peak {peak:.0f} MB (a worker's {worker_peak:.0f} MB)")


if __name__ == "__main__":
    main()
