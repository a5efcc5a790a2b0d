"""Workers claiming runs: throughput by worker count, lost claims, takeover time.

    python benchmarks/bench_workers.py [--episodes 200] [--workers 1,2,4,8] [--kills 3] [--pg URL] [--json]

For SQLite and (with ``--pg`` or STATEKIT_TEST_PG_URL) PostgreSQL: a fresh
store of ``--episodes`` episodes, then N worker processes (``tests/claim_worker``)
claim and run ``downloading`` until nothing is ready. Reported per N: runs
per second and its ratio to 1 worker (same run, same machine), and lost
claims: starts that did not become the episode's only run (must be 0).

Then ``--kills`` times: a worker with a 3 s lease claims an episode and is
killed with ``kill -9`` mid-run; another worker is already waiting. The
median time from the kill to the episode's next ``start`` event is
reported (it is at most the lease plus one claim poll).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from statekit import Store  # noqa: E402
from statekit.index import engine_for  # noqa: E402


def schema_url(base: str) -> tuple[str, str]:
    schema = "statekit_bench_" + uuid.uuid4().hex[:8]
    with engine_for(base).begin() as conn:
        conn.exec_driver_sql(f"CREATE SCHEMA {schema}")
    sep = "&" if "?" in base else "?"
    return f"{base}{sep}options=-csearch_path%3D{schema}", schema


def drop_schema(base: str, schema: str) -> None:
    with engine_for(base).begin() as conn:
        conn.exec_driver_sql(f"DROP SCHEMA {schema} CASCADE")


def new_store(where: str, url: str | None, episodes: int) -> Store:
    store = Store.init(where, index_url=url)
    for i in range(episodes):
        store.create("s", f"e{i:04d}")
    return store


def workers(store: Store, url: str | None, n: int, out: Path, *, pause: float = 0.0, lease: float | None = None,
            started: Path | None = None) -> list[subprocess.Popen[bytes]]:
    env = dict(os.environ, PYTHONPATH=str(REPO), CLAIM_WORKER_IDLE="3" if lease is None else "400")
    if url:
        env["STATEKIT_INDEX_URL"] = url
    argv = [sys.executable, "-m", "tests.claim_worker", store.root, "downloading", str(out), str(pause)]
    if lease is not None:
        argv += [str(lease), str(started)]
    return [subprocess.Popen(argv, cwd=REPO, env=env, start_new_session=True) for _ in range(n)]


def throughput(base: str, url: str | None, episodes: int, n: int) -> dict[str, float]:
    store = new_store(os.path.join(base, f"store-{n}"), url, episodes)
    out = Path(base, f"done-{n}.txt")
    began = time.perf_counter()
    for p in workers(store, url, n, out):
        p.wait()
    seconds = time.perf_counter() - began
    done = Counter(line.split()[0] for line in out.read_text().splitlines())
    fresh = Store.open(store.root)
    starts = sum(1 for e in fresh.list() for ev in fresh.events(e.show_id, e.episode_id) if ev.kind == "start")
    lost = (starts - len(done)) + sum(c - 1 for c in done.values()) + (episodes - len(done))
    return {"workers": n, "seconds": round(seconds, 3), "runs_per_s": round(len(done) / seconds, 1),
            "lost_claims": lost}


def takeover(base: str, pg: str | None, kills: int) -> list[float]:
    times = []
    for k in range(kills):
        url, schema = schema_url(pg) if pg else (None, None)
        try:
            store = new_store(os.path.join(base, f"kill-{k}"), url, 1)
            started, done = Path(base, f"started-{k}.txt"), Path(base, f"kdone-{k}.txt")
            victim = workers(store, url, 1, done, pause=600, lease=3.0, started=started)[0]
            while not started.exists() or not started.read_text():
                time.sleep(0.01)
            rescuer = workers(store, url, 1, done, pause=0.0, lease=3.0, started=started)[0]
            time.sleep(0.5)  # the rescuer is up and polling
            os.killpg(victim.pid, signal.SIGKILL)
            victim.wait()
            killed = time.perf_counter()
            while len(started.read_text().splitlines()) < 2:
                time.sleep(0.01)
            times.append(time.perf_counter() - killed)
            rescuer.wait()
        finally:
            if pg and schema:
                drop_schema(pg, schema)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--episodes", type=int, default=200)
    parser.add_argument("--workers", default="1,2,4,8")
    parser.add_argument("--kills", type=int, default=3)
    parser.add_argument("--pg", default=os.environ.get("STATEKIT_TEST_PG_URL"))
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    counts = [int(n) for n in args.workers.split(",")]
    results: dict[str, dict[str, object]] = {}
    backends = [("sqlite", None)] + ([("postgresql", args.pg)] if args.pg else [])
    for name, pg in backends:
        with tempfile.TemporaryDirectory(prefix="bench-workers-") as base:
            rows = []
            for n in counts:
                url, schema = schema_url(pg) if pg else (None, None)
                try:
                    rows.append(throughput(base, url, args.episodes, n))
                finally:
                    if pg and schema:
                        drop_schema(pg, schema)
            one = rows[0]["runs_per_s"] or 1
            for row in rows:
                row["ratio_to_1"] = round(float(row["runs_per_s"]) / float(one), 2)
            kill_times = takeover(base, pg, args.kills)
            results[name] = {"runs": rows, "kill_to_running_s": [round(t, 2) for t in kill_times],
                             "median_kill_to_running_s": round(statistics.median(kill_times), 2) if kill_times else None}
    if args.json:
        print(json.dumps(results, indent=2))
        return
    for name, r in results.items():
        print(f"{name}:")
        for row in r["runs"]:  # type: ignore[union-attr]
            print(f"  {row['workers']} worker(s): {row['runs_per_s']:7.1f} runs/s  x{row['ratio_to_1']:.2f}  "
                  f"lost claims {row['lost_claims']}")
        if r["kill_to_running_s"]:  # (none with --kills 0)
            print(f"  kill -9 to running again (3 s lease): median {r['median_kill_to_running_s']} s "
                  f"{r['kill_to_running_s']}")


if __name__ == "__main__":
    main()
