"""The README's examples run as written (in a scratch directory)."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from collections import Counter, defaultdict
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from statekit.report import build_report

if TYPE_CHECKING:
    from statekit import Store

README = Path(__file__).resolve().parent.parent / "README.md"


def blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", README.read_text(), flags=re.S)


def test_python_examples_run_in_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {}
    code = blocks("python")
    assert len(code) >= 3
    for block in code:
        exec(compile(block, "README.md", "exec"), namespace)  # noqa: S102 - our own documentation
    store = namespace["store"]
    assert store.get("oliver", "ep001").stage == "audio"  # type: ignore[attr-defined]


def readme_worker() -> str:
    """The README's complete worker as written: its block's imports and ``outline_worker``."""
    block = next(b for b in blocks("python") if "def outline_worker(" in b)
    keep = [node for node in ast.parse(block).body if isinstance(node, (ast.Import, ast.ImportFrom))
            or (isinstance(node, ast.FunctionDef) and node.name == "outline_worker")]
    assert [n.name for n in keep if isinstance(n, ast.FunctionDef)] == ["outline_worker"]
    return "\n".join(ast.get_source_segment(block, node) or "" for node in keep)


# the process around it: open the store, say so, wait for the others, run the loop, report
WORKER_MAIN = """
import json as _json
import os as _os
import sys as _sys

_store = Store.open(_sys.argv[1])
print("ready", flush=True)
while not _os.path.exists(_sys.argv[3]):
    time.sleep(0.005)
print(_json.dumps({"succeeded": outline_worker(_store, owner=_sys.argv[2], idle_rounds=3)}), flush=True)
"""


@pytest.mark.slow
def test_the_readme_worker_loop_runs_in_six_processes_at_once(tmp_path: Path) -> None:
    from statekit import Store

    store = Store.init(tmp_path / "s", pipeline="podcast")
    keys = [("oliver", f"ep{i:03d}") for i in range(60)]
    for show, ep in keys:
        store.create(show, ep)
        store.advance(show, ep, "outline")
    script = tmp_path / "worker.py"
    script.write_text(readme_worker() + "\n" + WORKER_MAIN)
    go = tmp_path / "go"
    workers = [subprocess.Popen([sys.executable, str(script), store.root, f"outline-{i}", str(go)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(6)]
    try:
        for proc in workers:  # all six have the store open before any starts
            assert proc.stdout is not None and proc.stdout.readline() == "ready\n", proc.communicate()[1]
        go.touch()
        results = []
        for proc in workers:
            out, err = proc.communicate(timeout=600)
            assert proc.returncode == 0 and "Traceback" not in err, err[-3000:]  # no worker crashed
            results.append(json.loads(out)["succeeded"])
    finally:
        for proc in workers:
            if proc.poll() is None:
                proc.kill()
    assert sum(results) == len(keys)
    for show, ep in keys:  # each outline was written exactly once: one run, three paid sections
        episode = store.get(show, ep)
        assert episode.stage == "segments" and episode.costs == {"outline": 0.03}
        kinds = [e.kind for e in store.events(show, ep)]
        assert kinds == ["create", "advance", "start", "checkpoint", "checkpoint", "checkpoint", "finish"]
    assert store.load_checkpoint("oliver", "ep000", "outline") == {"sections": ["intro", "story", "outro"]}
    assert store.verify().clean


def test_pipeline_example_is_a_valid_pipeline(tmp_path: Path) -> None:
    from statekit import Store

    spec = tmp_path / "shots.yaml"
    spec.write_text(blocks("yaml")[0])
    store = Store.init(tmp_path / "s", pipeline=spec)
    assert store.pipeline.gates == ("final",)


SKIPPED_IN_SESSION = ("make ",)  # the quickstart's make targets: this suite is what `make test` runs


def shell_session() -> str:
    """Every ```sh block of the README, in order, as one bash script (make lines left out)."""
    lines = []
    for block in blocks("sh"):
        lines += [line for line in block.splitlines() if not line.lstrip().startswith(SKIPPED_IN_SESSION)]
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def session(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """The README's shell examples, run as a new user would: in an empty folder,
    statekit on the PATH, every command as written (``data/`` is the clone's)."""
    import os

    here = tmp_path_factory.mktemp("readme")
    script = shell_session().replace(" data/", f" {README.parent / 'data'}/")
    env = {k: v for k, v in os.environ.items() if k != "STATEKIT_ROOT"}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=here, env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, (done.stdout[-3000:], done.stderr[-3000:])
    return here, done.stdout


def test_shell_examples_run_as_written(session: tuple[Path, str]) -> None:
    here, out = session
    assert "report: " in out and "verify: ok" in out                    # the demo, into ./tour
    assert (here / "tour" / "progress.html").read_text().lower().startswith("<!doctype html")
    assert "refused, exit 2" in out                                    # the illegal move
    assert "exit 1: changed outside statekit" in out and "changed  oliver/ep001: title" in out
    assert "# my title" in (here / "podcasts/shows/oliver/episodes/ep001/episode.yaml").read_text()
    assert "exit 1: damage found" in out and "put back the committed version of oliver/ep001" in out  # runbook
    assert "imported 3" in out                                         # the schema-0 import


def test_every_statekit_command_in_the_reference_exists() -> None:
    from click.testing import CliRunner

    from statekit.cli import main

    reference = re.search(r"## Command line.*?```\n(.*?)```", README.read_text(), flags=re.S)
    assert reference is not None
    for line in reference.group(1).splitlines():
        words = [w for w in line.split()[1:3] if re.fullmatch(r"[a-z][a-z-]*", w)]
        command = words[:2] if words[0] in ("db", "asset", "cache") else words[:1]
        result = CliRunner().invoke(main, [*command, "--help"])
        assert result.exit_code == 0, (line, result.output)


def readme_queries() -> dict[int, str]:
    """The README's SQL reference queries, by their number."""
    found = {}
    for query in blocks("sql"):
        number = re.match(r"-- (\d+)\. ", query)
        assert number is not None, query
        found[int(number.group(1))] = query
    return found


@pytest.fixture(scope="module")
def aged(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store with days-old history (an injected clock) beside fresh changes:
    what the README's time-window queries must find or leave out."""
    from statekit import APIError, Store

    root = tmp_path_factory.mktemp("aged") / "store"
    then = datetime.now(timezone.utc) - timedelta(days=3)
    old = Store.init(root, clock=lambda: then)
    for ep in ("waiting", "dropped", "broken", "fresh"):
        old.create("old", ep)
    old.advance("old", "dropped", "skipped", message="not worth it")
    with old.run("old", "broken", "downloading", reraise=False) as run:
        run.checkpoint({"part": 1}, cost=0.5)
        raise APIError("archive down", status=503)
    old.close()
    store = Store.open(root)
    with store.run("old", "fresh", "downloading", reraise=False) as run:
        run.cost(0.25, note="bandwidth")
        raise ConnectionError("reset")
    store.close()
    return root


def api_answer(store: Store, number: int) -> Any:
    """What the API says about the README's query ``number`` (as that query's rows would hold it)."""
    episodes = store.list()
    events = [e for ep in episodes for e in store.events(ep.show_id, ep.episode_id)]
    now = datetime.now(timezone.utc)
    if number == 1:
        return {stage: n for stage, n in store.counts().items() if n}
    if number == 2:
        return {e["show_id"]: (e["episodes"], e["completion"],
                               round(100 * e["stages"].get("published", 0) / e["episodes"], 1))
                for e in store.status()}
    if number == 3:
        return store.costs(by="show")
    if number == 4:
        payments = Counter(e.stage for e in events if e.cost is not None)
        return {stage: (cost, payments[stage]) for stage, cost in store.costs(by="stage").items()}
    if number == 5:
        return {(e.show_id, e.episode_id, e.stage) for e in store.stuck(timedelta(days=2))}
    if number == 6:
        return Counter(e.from_stage for e in events if e.to_stage == "failed" and e.at > now - timedelta(days=1))
    if number == 7:
        return {day.date.isoformat(): day.by_stage["published"] for day in build_report(store).totals.throughput
                if day.by_stage.get("published")}
    if number == 8:
        visits: dict[str, list[float]] = defaultdict(list)
        for ep in episodes:
            moves = [e for e in store.events(ep.show_id, ep.episode_id) if e.to_stage is not None]
            for before, after in zip(moves, moves[1:]):
                if after.from_stage is not None:  # a restore over an unreadable file came from no known stage
                    visits[after.from_stage].append((after.at - before.at).total_seconds())
        return {stage: (sum(s) / len(s), len(s)) for stage, s in visits.items()}
    if number == 9:
        return {(e.show_id, e.episode_id): (e.stage, e.attempts_total, len(e.error_history)) for e in episodes}
    if number == 10:
        return {(e.show_id, e.episode_id, e.version, e.at.strftime("%Y-%m-%dT%H:%M:%S.%fZ"), tuple(e.fields or ()))
                for e in events if e.kind == "external_edit"}
    if number == 11:
        return Counter((extra["error_kind"], extra["action"]) for e in events
                       if e.kind in ("fail", "recovered") and e.at > now - timedelta(days=7)
                       for extra in [e.model_extra or {}])
    media: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0])
    for ep in episodes:
        for asset in ep.assets.values():
            media[(ep.show_id, asset.kind)][0] += 1
            media[(ep.show_id, asset.kind)][1] += asset.size
    return {key: tuple(v) for key, v in media.items()}


def check_answer(store: Store, number: int, rows: list[tuple[Any, ...]]) -> None:
    """Query ``number``'s rows (its answer, in its order) agree with the API."""
    want = api_answer(store, number)
    approx = pytest.approx
    if number in (1, 7):
        assert dict(rows) == want
    elif number == 2:
        assert {show for show, *_ in rows} == set(want)
        for show, total, done, published in rows:
            assert total == want[show][0] and [done, published] == approx(want[show][1:], abs=0.06)
    elif number == 3:  # the API leaves out shows that cost nothing
        assert {show: cost for show, cost in rows if cost} == approx({k: round(v, 4) for k, v in want.items()})
    elif number == 4:
        assert all(stage is not None for stage, *_ in rows)  # every cost names its stage
        assert {stage: n for stage, _cost, n in rows} == {k: n for k, (_v, n) in want.items()}
        assert {stage: cost for stage, cost, _n in rows} == approx({k: round(v, 4) for k, (v, _n) in want.items()})
    elif number == 5:
        assert {(show, ep, stage) for show, ep, stage, _days in rows} == want
        assert all(days > 2 for *_, days in rows)
    elif number in (6, 11):
        assert Counter({tuple(key) if len(key) > 1 else key[0]: n for *key, n in rows}) == want
    elif number == 8:
        assert {stage: n for stage, _avg, n in rows} == {k: n for k, (_avg, n) in want.items()}
        assert {stage: avg for stage, avg, _n in rows} == approx({k: avg for k, (avg, _n) in want.items()}, abs=0.06)
    elif number == 9:
        assert len(rows) == min(20, len(want))
        for show, ep, stage, attempts, errors in rows:
            assert want[(show, ep)] == (stage, attempts, errors)
        top = sorted(((a, e) for _stage, a, e in want.values()), reverse=True)[:20]
        assert [(a, e) for *_, a, e in rows] == top
    elif number == 10:
        assert {(show, ep, version, at, tuple(json.loads(fields))) for show, ep, version, at, fields in rows} == want
        assert [row[3] for row in rows] == sorted((row[3] for row in rows), reverse=True)  # newest first
    else:
        assert {(show, kind): (n, size) for show, kind, n, size in rows} == want
    if number in (1, 3, 4):  # ordered by the total, largest first
        totals = [row[1] for row in rows]
        assert totals == sorted(totals, reverse=True)


def test_each_sql_reference_query_answers_what_the_api_says(session: tuple[Path, str], aged: Path) -> None:
    from statekit import Store

    here, _ = session
    queries = readme_queries()
    assert sorted(queries) == list(range(1, 13))
    answers: dict[int, dict[str, list[tuple[Any, ...]]]] = defaultdict(dict)
    for name, root in (("tour/store", here / "tour/store"), ("podcasts", here / "podcasts"), ("aged", aged)):
        store = Store.open(root)
        for number, query in queries.items():
            columns, rows = store.sql(query)
            assert columns, query
            check_answer(store, number, rows)
            answers[number][name] = rows
    # the demo's own figures, for a reader to recognise
    assert dict(answers[1]["tour/store"]) == {"published": 173, "scheduled": 24, "skipped": 3}
    assert {stage for stage, *_ in answers[4]["tour/store"]} == {"converting", "uploading"}
    assert {stage for stage, *_ in answers[4]["aged"]} == {"downloading"}
    edits = answers[10]["podcasts"]
    assert edits[0][:2] == ("oliver", "ep001") and "title" in edits[0][4]
    assert {("transient_network", "retry"), ("interrupted", "retry"), ("permanent_file_corruption", "give_up")} <= {
        (kind, action) for kind, action, _n in answers[11]["tour/store"]}
    assert sum(n for _show, _kind, n, _bytes in answers[12]["tour/store"]) == 398
    assert answers[12]["podcasts"] == [("oliver", "audio", 1, 16)]
    # the aged store: what is days old is stuck, and out of the last day's failures
    assert {ep for _show, ep, _stage, _days in answers[5]["aged"]} == {"waiting", "broken"}
    assert answers[6]["aged"] == [("downloading", 1)]
    assert sorted(answers[11]["aged"]) == [("transient_network", "retry", 2)]
