"""What the live dashboard costs per request on a large store, against baselines
measured in the same run.

    python benchmarks/bench_dashboard.py [--episodes 20000] [--shows 20] [--rounds 15] [--json]

A store of ``--episodes`` generated episodes (``make_store``) is served in process
(Starlette's TestClient: the whole ASGI stack, no socket) by the dashboard on the
store opened read-only. Timed, each the median of ``--rounds``:

- ``healthz`` (baseline 1): the cheapest route through the same stack;
- ``version, cached``: what every open page asks each second (answered from memory
  for 0.5 s); ``version, fresh``: the same when the index has to be asked;
- ``build_report`` (baseline 2): what ``statekit report`` computes, called directly;
- ``overview``: the ``/`` page after a change (the report computed again and rendered);
- ``episodes page``: one stage's list with a search; ``episode page``: one episode,
  its file, log and history.

Prints each median and its ratio to its baseline, with the machine's load
(``os.getloadavg``): numbers from a busy shared machine are only comparable
within one run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from starlette.applications import Starlette  # noqa: E402
from starlette.testclient import TestClient  # noqa: E402

from benchmarks.make_store import make_store  # noqa: E402
from statekit import Store  # noqa: E402
from statekit.dashboard.pages import routes  # noqa: E402
from statekit.dashboard.view import Dashboard  # noqa: E402
from statekit.report.compute import build_report  # noqa: E402


def median_ms(rounds: int, before: Callable[[], None], call: Callable[[], object]) -> float:
    times = []
    for _ in range(rounds):
        before()
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--episodes", type=int, default=20000)
    parser.add_argument("--shows", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-dashboard-") as tmp:
        root = os.path.join(tmp, "store")
        make_store(root, args.episodes, shows=args.shows).close()
        Store.open(root).close()  # builds the index
        board = Dashboard(Store.open(root, read_only=True))
        show = board.store.shows()[0]
        ep = board.store.list(show=show)[0].episode_id

        def nothing() -> None:
            pass

        def stale_version() -> None:
            board.forget()  # the index is asked again

        with TestClient(Starlette(routes=routes(board))) as client:
            def get(path: str) -> Callable[[], object]:
                def call() -> object:
                    r = client.get(path)
                    assert r.status_code in (200, 404), (path, r.status_code)
                    return r
                return call

            client.get("/")  # warm: templates compiled, connections open
            base = median_ms(args.rounds, nothing, get("/healthz"))
            report = median_ms(args.rounds, nothing, lambda: build_report(board.store))
            rows = [
                ("healthz (baseline 1)", base, 1.0),
                ("version, cached", median_ms(args.rounds, nothing, get("/api/version")), None),
                ("version, fresh", median_ms(args.rounds, stale_version, get("/api/version")), None),
                ("build_report (baseline 2)", report, None),
                ("overview, report recomputed", median_ms(args.rounds, stale_version, get("/")), report),
                ("episodes page (stage + search)",
                 median_ms(args.rounds, nothing, get("/episodes?stage=published&q=ep1")), None),
                ("episode page", median_ms(args.rounds, nothing, get(f"/episodes/{show}/{ep}")), None),
            ]
        board.close()
    load = os.getloadavg()
    results = [{"what": what, "median_ms": round(ms, 3),
                "ratio": round(ms / (against if against not in (None, 1.0) else base), 2)}
               for what, ms, against in rows]
    if args.json:
        print(json.dumps({"episodes": args.episodes, "load": load, "results": results}, indent=2))
        return
    print(f"dashboard on {args.episodes:,} episodes, {args.rounds} rounds, load {load[0]:.2f} {load[1]:.2f} "
          f"{load[2]:.2f}")
    for r, (_, _, against) in zip(results, rows):
        basis = "build_report" if against not in (None, 1.0) else "healthz"
        print(f"  {r['what']:<34} {r['median_ms']:>9.2f} ms   {r['ratio']:>7.2f}x {basis}")


if __name__ == "__main__":
    main()
