"""What the live dashboard costs per request on a large store, against baselines
measured in the same run.

    python benchmarks/bench_dashboard.py [--episodes 20000] [--shows 20] [--rounds 15] [--json]
    python benchmarks/bench_dashboard.py --browser [--episodes 2000] [--rounds 9]

A store of ``--episodes`` generated episodes (``make_store``) is served in process
(Starlette's TestClient: the whole ASGI stack, no socket) by the dashboard on the
store opened read-only. Timed, each the median of ``--rounds``:

- ``healthz`` (baseline 1): the cheapest route through the same stack;
- ``version, cached``: what every open page asks twice a second (answered from memory
  for 0.5 s); ``version, fresh``: the same when the index has to be asked;
- ``build_report`` (baseline 2): what ``statekit report`` computes, called directly;
- ``overview``: the ``/`` page after a change (the report computed again and rendered);
- ``episodes page``: one stage's list with a search; ``episode page``: one episode,
  its file, log and history.

``--browser``: how long after a commit an open page shows it. A real ``statekit serve``
process and Debian's headless ``chromium`` (Playwright); each round this process
deletes one episode (a commit that changes the counts), then waits for the page's count of that stage to change
without a reload. The baseline is the page's poll interval (0.5 s): the target is an
update within 2 s of a change.

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


def browser_latency(episodes: int, shows: int, rounds: int) -> None:
    import re
    import shutil
    import subprocess

    from playwright.sync_api import expect, sync_playwright

    from statekit.dashboard.pages import POLL_MS

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        sys.exit("no chromium: apt-get install chromium")
    with tempfile.TemporaryDirectory(prefix="bench-dashboard-") as tmp:
        root = os.path.join(tmp, "store")
        make_store(root, episodes, shows=shows).close()
        store = Store.open(root)
        stage = store.list()[0].stage
        moving = store.list(stage=stage)[:rounds]
        proc = subprocess.Popen([sys.executable, "-m", "statekit.cli", "--root", root, "serve", "--port", "0"],
                                stdout=subprocess.PIPE, text=True)
        try:
            found = re.search(r"(http://\S+?)/ ", proc.stdout.readline() if proc.stdout else "")
            assert found, "serve printed no address"
            times = []
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu"])
                page = browser.new_page()
                page.goto(found.group(1) + "/", wait_until="load")
                cell = page.locator(f'tr[data-stage="{stage}"] .n')
                for m in moving:
                    shown = int(cell.inner_text())
                    store.delete(m.show_id, m.episode_id)
                    committed = time.perf_counter()
                    expect(cell).to_have_text(str(shown - 1), timeout=30_000)
                    times.append(time.perf_counter() - committed)
                browser.close()
        finally:
            proc.terminate()
            proc.wait(30)
            store.close()
    load = os.getloadavg()
    median = statistics.median(times)
    print(f"dashboard update after a commit, {episodes:,} episodes, {rounds} rounds, load {load[0]:.2f} "
          f"{load[1]:.2f} {load[2]:.2f}")
    print(f"  median {median:.2f} s, max {max(times):.2f} s   {median / (POLL_MS / 1000):.2f}x the poll interval "
          f"({POLL_MS} ms)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--episodes", type=int, default=20000)
    parser.add_argument("--shows", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--browser", action="store_true", help="time a commit until an open page shows it")
    args = parser.parse_args()
    if args.browser:
        browser_latency(args.episodes, args.shows, args.rounds)
        return
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
